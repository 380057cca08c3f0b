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
//! once. Every decision is **one atomic Lua script** (`EVALSHA`, with a
//! fallback to `EVAL` after a restart) and its time is the Redis server's
//! (`TIME`): processes with skewed clocks cannot over-admit. The script
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
//!   clients of the API key, or low estimates), per configured limit. The
//!   difference counts until the provider's reset, at most one window.
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
//! all):
//!
//! - `{<prefix>:<key>}:s`: a hash with the gate, the FIFO tail, the next
//!   reservation id, and per limit its running sum, learned limit (with
//!   its expiry) and external usage;
//! - `{<prefix>:<key>}:l:<dim>:<window µs>`: one list per limit, the
//!   admissions still inside the window (`at,id,cost`);
//! - `{<prefix>:<key>}:k:<token>`: one small string per recent acquire,
//!   the reservation id it made (see below).
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
//! plus one second. An idle limiter leaves nothing behind. The prefix
//! defaults to [`DEFAULT_PREFIX`]. All processes sharing a prefix must
//! configure the same limits for a key.
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
//! records token -> reservation id under `{<prefix>:<key>}:k:<token>` for
//! as long as the reservation counts (at most 10 minutes). When the call
//! fails or times out, or its future is dropped, before its decision
//! reached the caller, the store cancels by token: it gives the
//! reservation back if the script ran, and otherwise leaves a marker (10
//! minutes) so that the script, should it still arrive, reserves nothing.
//! A cancel by token is a cancel: never dropped for room, retried while
//! Redis is down (for up to 10 minutes).
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

mod ops;
mod scripts;
mod store;

pub use self::store::{FaultPolicy, RedisStore, RedisStoreBuilder, ServerDecision, DEFAULT_PREFIX};
