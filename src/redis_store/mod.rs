//! A Redis store for the rate limiter: one provider quota shared by many
//! processes (feature `redis`).
//!
//! A provider's quota belongs to an API key, not to a process. With several
//! workers on one key, each local limiter would admit the whole quota;
//! [`RedisStore`] keeps the limiter's windows in Redis instead, so that the
//! union of all processes' admissions respects the limit.
//!
//! # Semantics
//!
//! The same as [`MemoryStore`](crate::rate_limit::MemoryStore): an exact
//! sliding window per limit, first-come first-served reservations at the
//! earliest instant that fits, cost correction, the shared Retry-After
//! gate, learning from the provider's headers, oversize requests refused at
//! once, the [arrival margin](RedisStoreBuilder::arrival_margin), and
//! `remaining` headers compared with the window as of the request's
//! admission. Every decision is made by **one atomic Lua script** (a
//! function of one library, `FCALL`, which the store loads on first use
//! and after a restart; `EVALSHA` on a server without functions, before
//! Redis 7), which takes the decisions that this process's callers ask for
//! meanwhile in the same call (see [Cost per decision](#cost-per-decision)),
//! and its time is the Redis server's (`TIME`): processes with skewed
//! clocks cannot over-admit. The script
//! answers "admitted now" or "admitted in *wait*", and the caller sleeps
//! exactly that long instead of polling Redis. The wait is counted from
//! when the answer arrived (not from the `now` passed in, as the trait's
//! time contract allows), so a process never starts early by the network
//! latency.
//!
//! One difference, on purpose: when a reservation is cancelled, the
//! in-memory store re-books the reservations waiting behind it earlier and
//! wakes their requests. A remote store cannot tell a waiting request in
//! another process its new instant without a round trip, and re-booking
//! without telling it would let that request start later than booked, and
//! so over-admit. So the Redis store never moves a reservation: the room a
//! cancellation frees goes to the requests booked after it.
//!
//! # What is learned, and for how long
//!
//! From a provider's answers (fed in by the limiter through `learn` and
//! `gate`), the store learns three things per key, shared by every process
//! on the key, each with a floor, a bound and an expiry:
//!
//! - **A limit** (`x-ratelimit-limit-*`), per configured limit. A limit of
//!   0 is ignored (a provider's glitch must not shut a key). A learned
//!   limit never goes below `max(1, configured / 10)`, and never above the
//!   configured one, or, with
//!   [`learn_limits`](RedisStoreBuilder::learn_limits), above
//!   `configured * 100`. It holds for
//!   [`learned_ttl`](RedisStoreBuilder::learned_ttl) (default: the limit's
//!   window, at most 10 minutes) after the provider last said it, each
//!   repeated header refreshing it; then the configured limit is back in
//!   force. A request is refused as over capacity only when it exceeds the
//!   *configured* limit: one that fits the configured limit but not a
//!   lower learned one waits until the learned limit expires (or until
//!   room frees under it), it is never refused for it.
//! - **Usage we did not see** (`remaining` lower than we count: other
//!   clients of the API key, or low estimates), per configured limit, by
//!   the rule of [`SlidingWindow::learn`](crate::rate_limit::SlidingWindow::learn):
//!   `remaining` is compared with what the limit held **as of the
//!   request's admission**, every process's reservations booked ahead of
//!   it included (the reservation carries it: [`Reservation::used`](crate::rate_limit::Reservation::used)),
//!   not with the window when the response comes back. The difference
//!   replaces what an earlier admission's response taught, counts until
//!   the provider's reset measured from the admission (at most one
//!   window) plus the arrival margin, and a response of an older admission
//!   than one already compared is stale. Without a reservation (or with
//!   one of the fault policy's local store) it is compared as of now.
//!   Where Redis's clock makes it differ from the in-memory store: the
//!   admission is the script's instant on the server, and the request
//!   leaves this process only when the answer is back (or its wait after
//!   that), so the provider counts it later than the admission by the
//!   return trip as well as the trip to the provider; the margin covers
//!   both. The reset is measured from that server instant. A limit past
//!   the reservation's snapshot (a key with more than
//!   [`UsedAtAdmission::CAPACITY`](crate::rate_limit::UsedAtAdmission::CAPACITY)
//!   limits) has its `remaining` not compared (the in-memory store reads
//!   its own log's snapshot instead).
//! - **A Retry-After gate**: nothing of the key is admitted before its
//!   end, which the limiter takes from the 429 (bounded by the classifier).
//!   The script holds the acquires made after it closed. The reservations
//!   this process had booked before are held by
//!   [`watch`](crate::rate_limit::Store::watch): it answers the end of a
//!   gate this process closed (it saw the 429) when that is after the
//!   reservation's instant, so the waiting request sleeps until then. The
//!   store remembers the gates of at most 10,000 keys, each until it
//!   opens. Reservations that other processes had booked before the gate
//!   closed are not held (they learn of it only on their next acquire).
//!
//! # Keys
//!
//! Every key of one limiter key shares one hash tag, `{<prefix>:<key>}`, so
//! that a Redis Cluster keeps them in one slot (one script touches them
//! all; see [Redis Cluster](#redis-cluster)), and the prefix `:4:` of this
//! key layout (no name is one of an older layout's). The hash is named
//! after the key's limits grouped by window (the limits of one window,
//! requests and tokens per minute, are one group, `rt:60000000`; several
//! groups are joined by `,`), so that processes configured differently
//! for one key keep apart:
//!
//! - `{<prefix>:<key>}:4:<groups>`: a hash with the state (one field `s`:
//!   the gate, the FIFO tail, the next reservation id, per group its
//!   cursors (below) and per limit its running sum, numbers packed as
//!   binary doubles, which Lua reads far faster than decimal text), per
//!   limit its learned limit (with its expiry) and external usage, and the
//!   admissions still inside a window, by reservation id (their instant,
//!   their cost in each limit and their acquire's token: one entry per
//!   reservation, for all the limits), each with its token's record
//!   (token -> reservation id, see below);
//! - `{<prefix>:<key>}:4:<groups>:q`: a sorted set of the reservations
//!   booked ahead of their acquire (the FIFO queue), to find the tail
//!   after a cancel;
//! - `{<prefix>:<key>}:4:<groups>:k:<token>`: a tombstone left by a cancel
//!   by token (see below).
//!
//! A limiter key made by [`ByHeader`](crate::key::ByHeader) is a keyed
//! fingerprint of the API key, under a secret that is random per process
//! by default: **workers that share a quota through Redis and key by
//! `ByHeader` must all set the same
//! [`ByHeader::fingerprint_secret`](crate::key::ByHeader::fingerprint_secret)**
//! (kept like an API key), or each names the same API key differently and
//! believes it has the whole quota.
//!
//! Every key carries an expiry: as long as anything in it still counts,
//! plus one second (and up to 250 ms more: the expiry is pushed forward
//! in steps, so that most decisions touch no expiry). An idle limiter
//! leaves nothing behind. The prefix defaults to [`DEFAULT_PREFIX`]. All
//! processes sharing a prefix must configure the same limits and the same
//! arrival margin for a key (processes whose limits differ count
//! separately, and together may exceed the quota).
//!
//! # Cost per decision
//!
//! Redis runs every script in its one thread, so a script's cost is paid
//! by every process on the server. No script reads a whole window (a
//! per-day limit holds a day of entries): the work per decision does not
//! grow with the window's traffic.
//!
//! - **Batches.** One task per store (and its clones) sends the decisions:
//!   the first one waiting and every other that waits by then, up to 32
//!   in one `FCALL`, with at most 2 calls in flight. A call costs Redis
//!   more than a decision (the command, each argument, the clock), so 16
//!   callers cost it a fraction of 16 calls: one `TIME`, one read and one
//!   write of each key however many of its decisions the call holds. A
//!   caller alone waits for nothing: its decision goes at once. The
//!   decisions of a call are made in order, each as if alone at the
//!   call's server time. A call may hold several limiter keys; on a
//!   Redis Cluster, it goes as one call per hash slot (see
//!   [Redis Cluster](#redis-cluster)).
//! - An acquire that fits runs 2 Redis commands for its key (read the
//!   state, write it with the entry and the token's record), and one
//!   `TIME` for its call. Expired entries are dropped oldest first, each
//!   once, reading up to 8 at a time: amortised O(1).
//! - Reservation ids are consecutive per key and their instants never
//!   decrease with the id, so an entry is read by its id in O(1): a
//!   correction or a cancel changes its entry and the running sums by the
//!   difference.
//! - An acquire that fits by the running sum (the common case) reads no
//!   entry. One that waits starts from a "free" cursor (the entries that
//!   no longer count at the queue's tail, with their sum) and reads only
//!   the entries that must leave the window before it fits, not the queue
//!   before it; its snapshot of the usage as of its admission is that
//!   cursor's, moved to its instant.
//! - `learn` compares `remaining` with the usage as of the reservation's
//!   admission, which the reservation carries, and reads only the
//!   reservation's entry (for its instant); without a reservation, with
//!   the usage started by now: a "used" cursor (the entries started, with
//!   their sum) that every script moves forward over the entries started
//!   since the previous one.
//! - A key's hash is made a hash table at once (a field longer than
//!   Redis's list encoding takes): Redis otherwise keeps a hash of a few
//!   hundred fields as a list that every read and write searches from the
//!   front, the costliest size of all.
//!
//! The test `redis_work_per_decision_does_not_grow_with_the_window` counts
//! the commands each script runs (`INFO commandstats`) at 100, 10,000 and
//! 100,000 entries; `benches/redis_store.rs` shows Redis's own time per
//! decision (`SLOWLOG`) at the same sizes, and decisions per second with
//! the CPU each side spends per decision.
//!
//! # TLS
//!
//! With feature `redis-tls`, a `rediss://host:port/db` URL connects over
//! TLS (the redis crate's rustls support, with rustls's `ring` provider:
//! no OpenSSL, no aws-lc-sys). The server's certificate is checked against
//! the system's roots, or against
//! [`tls_root_certificates`](RedisStoreBuilder::tls_root_certificates) (a
//! private CA); [`tls_client_certificate`](RedisStoreBuilder::tls_client_certificate)
//! answers a server that asks for the client's (`redis-server` does by
//! default). rustls needs a process-wide crypto provider: the store
//! installs `ring`'s when it builds a `rediss://` store and none is
//! installed yet (an application that installed its own keeps it). A
//! handshake that fails (an unknown CA, a refused client) is a fault like
//! an unreachable server: the [`FaultPolicy`] applies. Without the
//! feature, a `rediss://` URL fails `build`.
//!
//! ```
//! # #[cfg(feature = "redis-tls")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tower_llm_resilience::rate_limit::Limits;
//! use tower_llm_resilience::redis_store::RedisStore;
//! # let ca_pem = {
//! #     let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
//! #     p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
//! #     p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
//! # };
//!
//! // let ca_pem = std::fs::read("/etc/redis/ca.pem")?;
//! let limits = Limits::new().requests_per_minute(500);
//! let store = RedisStore::builder(limits.clone())
//!     .tls_root_certificates(ca_pem)
//!     .build("rediss://redis.internal:6380/");
//! // Connected lazily: nothing was sent yet.
//! assert!(store.is_ok());
//! // Roots that hold no certificate are a mistake to say at once.
//! let wrong = RedisStore::builder(limits)
//!     .tls_root_certificates("/etc/redis/ca.pem")
//!     .build("rediss://redis.internal:6380/");
//! assert!(wrong.is_err());
//! # }
//! # #[cfg(not(feature = "redis-tls"))]
//! # fn main() {}
//! ```
//!
//! # Redis Cluster
//!
//! With feature `redis-cluster`,
//! [`build_cluster`](RedisStoreBuilder::build_cluster) takes some of the
//! cluster's nodes (`redis://` or, with `redis-tls`, `rediss://`) and
//! connects through the redis crate's cluster client, which finds the
//! others, sends each call to the primary of its slot, follows `MOVED` and
//! `ASK`, and reads the slot map again after a failover.
//!
//! - **Key placement.** Redis Cluster places a key by the text between its
//!   first `{` and the next `}` when there is one: every key of a limiter
//!   key is named `{<prefix>:<key>}...`, so all of them (the state hash,
//!   the queue, the tombstones) are in one slot, which a script that
//!   touches them together requires, and different limiter keys spread
//!   over the slots, so over the primaries. One limiter key is served by
//!   one primary: a cluster spreads many keys' load, not one hot key's. A
//!   prefix or a key with a `}` in it still keeps each limiter key in one
//!   slot (the tag then ends there), but may put many keys in one.
//! - **Batches** go as one `FCALL` per hash slot (the decisions of one
//!   slot together, in their order), all sent at once: those to one node
//!   share its connection.
//! - **The function library** is loaded on every primary at the first
//!   `Function not found` (`FUNCTION LOAD REPLACE`, routed to all
//!   primaries, so that a node that has it does not fail the load for one
//!   that lacks it: the library is named after its code, so the
//!   replacement is the same code), and again whenever a node lacks it: a
//!   replica promoted by a failover, a node added, a node restarted
//!   without persistence. On servers without functions, scripts go as
//!   `EVALSHA`, and the redis crate loads one missing on `NOSCRIPT` on
//!   every primary.
//! - **Health is the store's, not a node's.** A failed call marks the
//!   whole store down for the [retry interval](RedisStoreBuilder::retry_interval),
//!   as on one server: while one primary is unreachable, the keys of the
//!   others go through the [`FaultPolicy`] too (for an interval at a
//!   time), not only that node's.
//! - Sentinel is not supported; a failover within a cluster is the redis
//!   crate's (a decision in flight during one may fail with the timeout,
//!   and the fault policy applies).
//!
//! # Upgrading from an older version
//!
//! The key layout changed three times: versions before issue #12 kept
//! each window as a list (`:l:` keys) under a state hash named `:s`;
//! layout 2 kept one entries hash per limit under `:s2`; layout 3 (before
//! issue #13's usage as of admission) kept its keys under `:3:`, with
//! acquire tokens in generations of their own. This version's keys
//! (layout 4) have other names: processes of different layouts never read
//! or write each other's keys, so none can corrupt another's counts, but
//! **they also do not see each other's admissions**: while two versions
//! run on one quota, each admits the whole of it. Stop the old processes
//! before starting new ones (or give each version its share of the
//! limits while both run). A new process that creates a key's state while
//! an old process holds state for the same key logs a warning once
//! (`tracing`, target `tower_llm_resilience`). The old keys expire on
//! their own. The function library is named after a hash of its code
//! (`tlr4_<hash>`), so versions never replace each other's; an old library
//! stays on the server (a few kilobytes) until `FUNCTION DELETE`.
//!
//! # Faults
//!
//! Each script call has a timeout ([`RedisStoreBuilder::timeout`], default
//! 250 ms). When Redis is unreachable, slow or failing, the
//! [`FaultPolicy`] decides:
//!
//! - [`FaultPolicy::FailClosed`] (default): the request fails with an
//!   [`Error`](crate::Error) for which
//!   [`is_store_unavailable`](crate::Error::is_store_unavailable) is true,
//!   within the timeout;
//! - [`FaultPolicy::FailOpen`]: the request goes through a local
//!   [`MemoryStore`](crate::rate_limit::MemoryStore) whose limits are the
//!   configured ones divided by the expected number of processes.
//!
//! After a failure, Redis is not asked again for
//! [`retry_interval`](RedisStoreBuilder::retry_interval) (default 1 s), so a
//! dead server costs one timeout per interval, not one per request. The
//! connection manager reconnects on its own; the next decision after the
//! interval goes back to Redis. Whatever a timed-out acquire may have
//! reserved on the server is given back (see below).
//!
//! # Fire-and-forget operations
//!
//! `cancel`, `correct`, `gate` and `learn` never block a request: one
//! background task runs them. They may reach Redis after a later `acquire`
//! of the same process.
//!
//! - **Cancels are never dropped for room**: they go through their own
//!   unbounded channel, whose size is bounded by the requests in flight
//!   (a reservation is cancelled at most once), and run first, in the
//!   order they were issued. A cancel that fails (Redis down) is kept and
//!   tried again once Redis is asked again, until its reservation can no
//!   longer count (its window slid past it); at most 65,536 wait at once.
//!   A lost cancel would hold quota idle for a whole window, 24 hours for
//!   a per-day limit.
//! - **Corrections, gates and learns** go through a bounded queue (1024),
//!   in the order they were issued by this store (and its clones). When
//!   the queue is full, or Redis fails, they are dropped (logged at
//!   `debug`): a lost correction only makes the limiter more conservative
//!   until the window slides, a lost gate or learn leaves the limiter as
//!   informed as before. A cancel and a correction of one reservation may
//!   run in either order; either way the reservation is gone.
//!
//! [`RedisStore::flush`] waits until everything queued before it ran, and
//! tries every pending cancel once more. `learn` cannot return the
//! server's answer synchronously: it returns `None`, so the limiter's
//! `LimitLearned` event does not fire with this store.
//!
//! # An acquire whose answer is lost
//!
//! A script call that times out may still run on the server (it was
//! sent; Redis was only slow), and a limiter future dropped while the call
//! is in flight never sees its answer: either way, a reservation may exist
//! that nobody will use or cancel. So each acquire carries a token, unique
//! to it (64 random bits per store, then a counter, mixed), and the script
//! records token -> reservation id beside the reservation's entry, which
//! carries the token too, so that the record goes when the entry does:
//! it lasts exactly as long as the reservation counts, with no key and no
//! expiry of its own. When the call fails or times out, or its future is
//! dropped, before its decision reached the caller, the store cancels by
//! token: it gives the reservation back if the script ran, and either way
//! leaves a tombstone (10 minutes) so that the script, should it still
//! arrive, reserves nothing, and a repeated cancel does nothing. A cancel
//! by token is a cancel: never dropped for room, retried while Redis is
//! down (for up to 10 minutes).
//!
//! # Example
//!
//! ```no_run
//! use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer};
//! use tower_llm_resilience::redis_store::{FaultPolicy, RedisStore};
//!
//! # async fn f() -> Result<(), tower_llm_resilience::Error> {
//! let limits = Limits::new().requests_per_minute(500).tokens_per_minute(200_000);
//! let store = RedisStore::builder(limits.clone())
//!     .prefix("myapp-openai")
//!     .fault_policy(FaultPolicy::FailOpen { processes: 4 })
//!     .build("redis://127.0.0.1:6379/")?;
//! let layer = RateLimitLayer::new(limits).store(store);
//! # let _ = layer; Ok(()) }
//! ```

// One job per file: `builder` (settings, defaults, build), `store` (the
// handle and its `Store` impl), `core` (the connection, health, how a
// script is called), `batch` (the acquire calls: decisions in batches),
// `layout` (key names, limits grouped by window), `fault` (the fault
// policy and its local store), `ops` (the background task: cancels,
// corrections, gates, learns), `token` (acquire tokens, the
// cancel-by-token guard), `gates` (the local record of gates for
// `watch`), `scripts` (the Lua of `lua/`, as a function library or as
// scripts).
mod batch;
mod builder;
mod connect;
mod core;
mod fault;
mod gates;
mod layout;
mod ops;
mod scripts;
mod store;
mod token;

pub use self::builder::{RedisStoreBuilder, DEFAULT_PREFIX};
pub use self::fault::FaultPolicy;
pub use self::store::{RedisStore, ServerDecision};
