//! [`RedisStore`]: the limiter's windows in Redis.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ops::{self, Cancel, Op};
use super::scripts;
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::rate_limit::{
    Costs, Decision, Dimension, Limit, Limits, MemoryStore, Reservation, Store,
};
use crate::Error;

/// The default key prefix: every key of the store starts with
/// `{tlr:` (tower-llm-resilience).
pub const DEFAULT_PREFIX: &str = "tlr";

/// Numbers above this lose precision in Lua's doubles: costs, limits and
/// durations are clamped to it (2^53 - 1, about 285 years in µs).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// Reservations made by the local fallback store carry this bit in their
/// id (Redis ids stay below 2^53), so that cancel and correct find them.
const LOCAL: u64 = 1 << 63;

const QUEUE: usize = 1024;

/// How long the server keeps the token of an acquire (the reservation it
/// made, for a cancel by token from a caller that never got the answer),
/// at most; and how long such a cancel is retried.
pub(super) const TOKEN_TTL: Duration = Duration::from_secs(600);

/// At most this many keys' gates are remembered for `watch`.
const MAX_GATES: usize = 10_000;

/// The default [`RedisStoreBuilder::learned_ttl`] is the limit's window,
/// at most this long.
const DEFAULT_LEARNED_TTL_MAX: Duration = Duration::from_secs(600);

/// The longest [`RedisStoreBuilder::learned_ttl`].
const MAX_LEARNED_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// What a [`RedisStore`] does when Redis is unreachable, slow or failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub enum FaultPolicy {
    /// Refuse: the request fails at once (within the timeout) with an
    /// error for which [`Error::is_store_unavailable`] is true. The quota
    /// is never exceeded; availability follows Redis's.
    FailClosed,
    /// Fall back to a local in-memory limiter whose every limit is the
    /// configured one divided by `processes` (at least 1 each), so that
    /// the expected number of processes together stay within the quota.
    FailOpen {
        /// How many processes are expected to share the quota.
        processes: u64,
    },
}

/// Builds a [`RedisStore`]; every setting has a default.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStoreBuilder {
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    learned_ttl: Option<Duration>,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    policy: FaultPolicy,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("limits", &self.limits)
            .field("key_limits", &self.key_limits.is_some())
            .field("learn_limits", &self.learn_limits)
            .field("learned_ttl", &self.learned_ttl)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("policy", &self.policy)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// Gives each key its own limits (as
    /// [`MemoryStore::key_limits`]); called on every decision, so keep it
    /// cheap.
    pub fn key_limits(mut self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        self.key_limits = Some(Arc::new(f));
        self
    }

    /// Whether a provider's `limit` header may raise the configured limit
    /// (default `false`: headers only ever tighten), never above 100 times
    /// the configured one (see the [module docs](crate::redis_store)).
    pub fn learn_limits(mut self, yes: bool) -> Self {
        self.learn_limits = yes;
        self
    }

    /// How long a limit learned from a provider's header holds after the
    /// provider last said it, before the configured limit is back in force
    /// (default: the limit's window, at most 10 minutes). Cut to a year.
    pub fn learned_ttl(mut self, ttl: Duration) -> Self {
        self.learned_ttl = Some(ttl.min(MAX_LEARNED_TTL));
        self
    }

    /// The namespace of every key (default [`DEFAULT_PREFIX`]); processes
    /// share a quota when they share the prefix and the limiter key.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one call to Redis may take before the [`FaultPolicy`]
    /// applies (default 250 ms: a decision is one round trip, normally well
    /// under a millisecond on a LAN).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long decisions skip Redis and go straight to
    /// the [`FaultPolicy`] (default 1 s): a dead server then costs one
    /// timeout per interval instead of one per request.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// What happens when Redis fails (default [`FaultPolicy::FailClosed`]).
    pub fn fault_policy(mut self, policy: FaultPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The store, connected lazily to `url` (`redis://host:port/db`;
    /// TLS `rediss://` is not enabled). Fails only on a malformed URL or
    /// outside a Tokio runtime (the store spawns its background task):
    /// an unreachable server is a fault handled per decision, so a process
    /// may start while Redis is down.
    pub fn build(self, url: &str) -> Result<RedisStore, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::store_unavailable(
                "RedisStore::build must be called inside a Tokio runtime",
            ));
        }
        let client = redis::Client::open(url).map_err(Error::store_unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(Error::store_unavailable)?;
        let fallback = match self.policy {
            FaultPolicy::FailClosed => None,
            FaultPolicy::FailOpen { processes } => {
                let n = processes.max(1);
                let mut m =
                    MemoryStore::new(divide(&self.limits, n)).learn_limits(self.learn_limits);
                if let Some(f) = self.key_limits.clone() {
                    m = m.key_limits(move |k| divide(&f(k), n));
                }
                Some(m)
            }
        };
        let core = Arc::new(Core {
            conn,
            limits: self.limits,
            key_limits: self.key_limits,
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            prefix: self.prefix,
            timeout: self.timeout,
            retry_interval: self.retry_interval,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (cancels, cancels_rx) = mpsc::unbounded_channel();
        tokio::spawn(ops::run(core.clone(), rx, cancels_rx));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                core,
                fallback,
                policy: self.policy,
                ops: tx,
                cancels,
                token_base: random_u64(),
                tokens: AtomicU64::new(0),
                gates: Gates::default(),
            }),
        })
    }
}

fn divide(limits: &Limits, n: u64) -> Limits {
    limits.iter().fold(Limits::new(), |acc, l| {
        acc.window(l.dimension, l.window, (l.limit / n).max(1))
    })
}

/// The limiter's state in Redis, shared by every process that uses the
/// same prefix: see the [module docs](crate::redis_store).
///
/// Clones share one connection (multiplexed) and one background task.
/// Each `acquire` is one script round trip and a few small allocations (a
/// boxed future, the key names, its token's among them), which the round
/// trip dwarfs.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    fallback: Option<MemoryStore>,
    policy: FaultPolicy,
    /// Corrections, gates, learns: dropped when full.
    ops: mpsc::Sender<Op>,
    /// Cancels: never dropped for room (bounded by the requests in flight).
    cancels: mpsc::UnboundedSender<Cancel>,
    /// Tokens of acquires: random per store, then counted.
    token_base: u64,
    tokens: AtomicU64,
    /// The gates this process closed, for `watch`.
    gates: Gates,
}

/// The Retry-After gates this process closed (it saw the 429), by key:
/// bounded ([`MAX_GATES`]) and expiring, so that `watch` can hold a
/// reservation booked before the gate closed until the gate's end.
#[derive(Default)]
struct Gates {
    map: Mutex<HashMap<Key, Instant, foldhash::fast::RandomState>>,
}

impl Gates {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, Instant, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes `key`'s gate until `until`; a later gate extends it, an
    /// earlier one never shortens it.
    fn close(&self, key: &Key, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        let mut map = self.lock();
        if let Some(end) = map.get_mut(key) {
            *end = (*end).max(until);
            return;
        }
        if map.len() >= MAX_GATES {
            map.retain(|_, end| *end > now);
        }
        if map.len() >= MAX_GATES {
            // Forget the gate that opens first: it matters least.
            if let Some(k) = map
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        map.insert(key.clone(), until);
    }

    /// The end of `key`'s gate, if it is closed at `now`.
    fn end(&self, key: &Key, now: Instant) -> Option<Instant> {
        let mut map = self.lock();
        match map.get(key) {
            Some(end) if *end > now => Some(*end),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
}

impl Inner {
    fn cancel(&self, c: Cancel) {
        if self.cancels.send(c).is_err() {
            tracing::debug!(
                target: "tower_llm_resilience",
                "redis store: background task gone, cancel dropped"
            );
        }
    }

    /// A token no other acquire of any process uses (a bijective mix of a
    /// random base and a counter).
    fn token(&self) -> u64 {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        mix(self.token_base.wrapping_add(n))
    }
}

/// The splitmix64 finalizer: a bijection of `u64` that scatters counters.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits: std's `RandomState` is seeded by the OS, mixed with the
/// process id and the time.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Held while an acquire's script call is in flight: if the call fails or
/// times out, or the future is dropped, before the decision reached its
/// caller, the script may have run (or may still run) on the server, so
/// whatever it reserved under the token is cancelled. A no-op on the
/// server when the script never ran.
struct Abandoned<'a> {
    inner: &'a Inner,
    key: &'a Key,
    token: u64,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.cancel(Cancel::Token {
                key: self.key.clone(),
                token: self.token,
                issued: Instant::now(),
            });
        }
    }
}

/// What the background task shares with the store (not the queue's
/// sender, so that dropping the last store ends the task).
pub(super) struct Core {
    conn: ConnectionManager,
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    pub(super) learn_limits: bool,
    learned_ttl: Option<Duration>,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` until which Redis is not asked (0: up).
    down_until: AtomicU64,
}

/// A decision with the Redis server's clock, for logs and diagnostics:
/// what [`RedisStore::decide`] returns.
#[derive(Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct ServerDecision {
    /// The decision, on the caller's clock (as [`Store::acquire`]).
    pub decision: Decision,
    /// The server's time of the decision, in µs since the Unix epoch
    /// (`None`: decided by the local fallback store).
    pub server_now_us: Option<u64>,
    /// The server's admission instant (for `Admitted` and `TooLate`), in
    /// µs since the Unix epoch.
    pub server_at_us: Option<u64>,
}

impl RedisStore {
    /// A builder with `limits` for every key and the documented defaults.
    pub fn builder(limits: Limits) -> RedisStoreBuilder {
        RedisStoreBuilder {
            limits,
            key_limits: None,
            learn_limits: false,
            learned_ttl: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_millis(250),
            retry_interval: Duration::from_secs(1),
            policy: FaultPolicy::FailClosed,
        }
    }

    /// The fault policy in force.
    pub fn fault_policy(&self) -> FaultPolicy {
        self.inner.policy
    }

    /// Whether decisions currently skip Redis after a recent failure.
    pub fn is_degraded(&self) -> bool {
        !self.inner.core.available()
    }

    /// Waits until every fire-and-forget operation issued before this call
    /// has run (or was dropped), and every cancel still waiting for Redis
    /// was tried once more (even while the store is degraded): for tests
    /// and an orderly shutdown. A cancel that fails again stays pending.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// [`Store::acquire`] with the server's clock in the answer: the same
    /// decision, plus when the server decided and admitted it.
    pub async fn decide(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<ServerDecision, Error> {
        decide(self.inner.clone(), key.clone(), *costs, now, deadline).await
    }

    /// The fallback store and its own view of a reservation it made.
    fn local(&self, r: &Reservation) -> Option<(&MemoryStore, Reservation)> {
        if r.id & LOCAL == 0 {
            return None;
        }
        let m = self.inner.fallback.as_ref()?;
        Some((
            m,
            Reservation {
                id: r.id & !LOCAL,
                ..r.clone()
            },
        ))
    }

    fn enqueue(&self, op: Op) {
        if let Err(e) = self.inner.ops.try_send(op) {
            tracing::debug!(
                target: "tower_llm_resilience",
                "redis store: background queue full or closed, operation dropped: {e}"
            );
        }
    }
}

async fn decide(
    inner: Arc<Inner>,
    key: Key,
    costs: Costs,
    now: Instant,
    deadline: Option<Instant>,
) -> Result<ServerDecision, Error> {
    let core = &inner.core;
    let failure = if core.available() {
        let mut guard = Abandoned {
            inner: &inner,
            key: &key,
            token: inner.token(),
            armed: true,
        };
        match core.acquire(&key, &costs, now, deadline, guard.token).await {
            Ok(d) => {
                // The decision reaches the caller in this same poll.
                guard.armed = false;
                return Ok(d);
            }
            // The guard cancels by token: the script may have run.
            Err(e) => e,
        }
    } else {
        Error::store_unavailable("redis store degraded after a recent failure")
    };
    let Some(fallback) = &inner.fallback else {
        return Err(failure);
    };
    let decision = match fallback.acquire(&key, &costs, now, deadline).await? {
        Decision::Admitted(mut r) => {
            r.id |= LOCAL;
            Decision::Admitted(r)
        }
        other => other,
    };
    Ok(ServerDecision {
        decision,
        server_now_us: None,
        server_at_us: None,
    })
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_SAFE)
}

pub(super) fn safe(n: u64) -> u64 {
    n.min(MAX_SAFE)
}

fn code(d: Dimension) -> char {
    match d {
        Dimension::Requests => 'r',
        Dimension::Tokens => 't',
        Dimension::InputTokens => 'i',
        Dimension::OutputTokens => 'o',
    }
}

fn cost_of(d: Dimension, c: &Costs) -> u64 {
    match d {
        Dimension::Requests => c.requests,
        Dimension::Tokens => c.total_tokens(),
        Dimension::InputTokens => c.input_tokens,
        Dimension::OutputTokens => c.output_tokens,
    }
}

pub(super) fn tag(l: &Limit) -> String {
    format!("{}:{}", code(l.dimension), micros(l.window))
}

impl Core {
    pub(super) fn limits_of(&self, key: &Key) -> Limits {
        match &self.key_limits {
            Some(f) => f(key),
            None => self.limits.clone(),
        }
    }

    /// How long a limit learned for `limit` holds after the provider said it.
    pub(super) fn learned_ttl(&self, limit: &Limit) -> Duration {
        self.learned_ttl
            .unwrap_or_else(|| limit.window.min(DEFAULT_LEARNED_TTL_MAX))
    }

    pub(super) fn hash_key(&self, key: &Key) -> String {
        format!("{{{}:{}}}:s", self.prefix, key)
    }

    pub(super) fn log_key(&self, key: &Key, tag: &str) -> String {
        format!("{{{}:{}}}:l:{}", self.prefix, key, tag)
    }

    pub(super) fn token_key(&self, key: &Key, token: u64) -> String {
        format!("{{{}:{}}}:k:{:016x}", self.prefix, key, token)
    }

    /// When Redis is asked again after a failure (`None`: it is up).
    pub(super) fn down_until(&self) -> Option<Instant> {
        if self.available() {
            return None;
        }
        let ms = self.down_until.load(Ordering::Relaxed);
        self.epoch.checked_add(Duration::from_millis(ms))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    pub(super) fn available(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || self.elapsed_ms() >= until
    }

    fn mark_down(&self) {
        let ms = u64::try_from(self.retry_interval.as_millis()).unwrap_or(u64::MAX);
        let until = self.elapsed_ms().saturating_add(ms).max(1);
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                target: "tower_llm_resilience",
                "redis store unavailable; applying the fault policy for {:?}",
                self.retry_interval
            );
        }
    }

    fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0
            && self.down_until.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!(target: "tower_llm_resilience", "redis store reachable again");
        }
    }

    /// Runs one script invocation under the timeout; a failure marks Redis
    /// down for the retry interval.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark_down();
                Err(Error::store_unavailable(e))
            }
            Err(_) => {
                self.mark_down();
                Err(Error::store_unavailable(format!(
                    "redis did not answer within {:?}",
                    self.timeout
                )))
            }
        }
    }

    async fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
        token: u64,
    ) -> Result<ServerDecision, Error> {
        let limits = self.limits_of(key);
        let mut inv = scripts::acquire().prepare_invoke();
        inv.key(self.hash_key(key));
        let rel = deadline.map_or(-1, |d| micros(d.saturating_duration_since(now)) as i64);
        inv.arg(rel).arg(limits.iter().count());
        for l in limits.iter() {
            let tag = tag(l);
            inv.key(self.log_key(key, &tag));
            inv.arg(tag)
                .arg(micros(l.window))
                .arg(safe(l.limit))
                .arg(safe(cost_of(l.dimension, costs)));
        }
        inv.key(self.token_key(key, token));
        inv.arg(TOKEN_TTL.as_millis() as u64);
        let r: Vec<i64> = self.run(&inv).await?;
        // Waits count from when the answer arrived: never early.
        let received = Instant::now();
        let get = |i: usize| {
            r.get(i)
                .copied()
                .map_or(0, |v| u64::try_from(v).unwrap_or(0))
        };
        let after = |us: u64| {
            received
                .checked_add(Duration::from_micros(us))
                .unwrap_or(received + Duration::from_secs(86_400 * 365))
        };
        let (decision, at) = match r.first() {
            Some(0) => (
                Decision::Admitted(Reservation {
                    key: key.clone(),
                    id: get(1),
                    at: if get(2) == 0 { now } else { after(get(2)) },
                    costs: *costs,
                }),
                Some(get(3)),
            ),
            Some(1) => (Decision::TooLate(after(get(1))), Some(get(3))),
            Some(2) => (
                Decision::Never {
                    cost: get(1),
                    capacity: get(2),
                },
                None,
            ),
            _ => {
                return Err(Error::store_unavailable(
                    "redis store: unexpected answer from the acquire script",
                ))
            }
        };
        Ok(ServerDecision {
            decision,
            server_now_us: Some(get(4)),
            server_at_us: at,
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.core;
        f.debug_struct("RedisStore")
            .field("limits", &c.limits)
            .field("key_limits", &c.key_limits.is_some())
            .field("learn_limits", &c.learn_limits)
            .field("learned_ttl", &c.learned_ttl)
            .field("prefix", &c.prefix)
            .field("timeout", &c.timeout)
            .field("retry_interval", &c.retry_interval)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Store for RedisStore {
    type Acquire = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send + 'static>>;

    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire {
        let inner = self.inner.clone();
        let key = key.clone();
        let costs = *costs;
        Box::pin(async move {
            decide(inner, key, costs, now, deadline)
                .await
                .map(|d| d.decision)
        })
    }

    fn cancel(&self, reservation: &Reservation) {
        match self.local(reservation) {
            Some((m, r)) => m.cancel(&r),
            None => self.inner.cancel(Cancel::Reservation(reservation.clone())),
        }
    }

    /// For a reservation of the local fallback, the fallback's answer.
    /// For one of Redis (which never re-books a reservation, see the
    /// module docs): the end of a gate this process closed (it saw the
    /// 429) after the reservation was booked, when it ends after the
    /// reservation's instant; else `None`, the booking stands. A gate
    /// closed by another process reaches only later acquires.
    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        if let Some((m, r)) = self.local(reservation) {
            return m.watch(&r, waker);
        }
        self.inner
            .gates
            .end(&reservation.key, Instant::now())
            .filter(|end| *end > reservation.at)
    }

    fn unwatch(&self, reservation: &Reservation) {
        if let Some((m, r)) = self.local(reservation) {
            m.unwatch(&r);
        }
    }

    fn correct(&self, reservation: &Reservation, actual: &Costs, now: Instant) {
        match self.local(reservation) {
            Some((m, r)) => m.correct(&r, actual, now),
            None => self.enqueue(Op::Correct(reservation.clone(), *actual)),
        }
    }

    /// The end of a gate this process closed (it saw the 429), so that
    /// the limiter refuses at once a wait on it longer than its bound; a
    /// gate closed by another process is known only to the script, and a
    /// wait on it is bounded by the limiter's `max_wait` alone.
    fn gate_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        self.inner.gates.end(key, now)
    }

    fn gate(&self, key: &Key, until: Instant) {
        self.inner.gates.close(key, until);
        if let Some(m) = &self.inner.fallback {
            // Kept locally too, for the decisions made while Redis is down.
            m.gate(key, until);
        }
        self.enqueue(Op::Gate(key.clone(), until));
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        now: Instant,
    ) -> Option<u64> {
        self.enqueue(Op::Learn {
            key: key.clone(),
            dimension,
            window,
            state,
            now,
        });
        None
    }
}

#[cfg(test)]
#[path = "../../tests/redis_support/mod.rs"]
#[allow(unreachable_pub)]
mod test_server;

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel by token may reach the server before its acquire does (a
    /// reconnect after a timeout: the two travel on different
    /// connections): the acquire then reserves nothing.
    #[tokio::test]
    async fn a_cancel_by_token_that_overtakes_its_acquire_leaves_nothing_reserved() {
        let Some(server) = test_server::RedisServer::start(
            "a_cancel_by_token_that_overtakes_its_acquire_leaves_nothing_reserved",
        ) else {
            return;
        };
        let limits = Limits::new().window(Dimension::Requests, Duration::from_secs(60), 1);
        let store = RedisStore::builder(limits)
            .prefix("overtaken")
            .build(&server.url())
            .unwrap();
        let core = &store.inner.core;
        let key = Key::new("k");
        let one = Costs::new(0, 0);
        let by_token = |token| Cancel::Token {
            key: key.clone(),
            token,
            issued: Instant::now(),
        };
        let token = store.inner.token();
        ops::cancel(core, &by_token(token)).await.unwrap();
        let late = core.acquire(&key, &one, Instant::now(), None, token).await;
        assert!(late.is_err(), "cancelled before it ran: {late:?}");
        // The whole limit (1) is still free; then a cancel by token after
        // its acquire ran gives it back, twice is harmless.
        let token = store.inner.token();
        let d = core.acquire(&key, &one, Instant::now(), None, token).await;
        assert!(matches!(d.unwrap().decision, Decision::Admitted(r) if r.at <= Instant::now()));
        ops::cancel(core, &by_token(token)).await.unwrap();
        ops::cancel(core, &by_token(token)).await.unwrap();
        for _ in 0..2 {
            let now = Instant::now();
            let token = store.inner.token();
            let d = core.acquire(&key, &one, now, Some(now), token).await;
            assert!(
                matches!(d.unwrap().decision, Decision::Admitted(_)),
                "freed"
            );
            ops::cancel(core, &by_token(token)).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gates_are_bounded_and_expire() {
        let g = Gates::default();
        let now = Instant::now();
        let key = |i: usize| Key::new(format!("k{i}"));
        for i in 0..MAX_GATES + 5 {
            g.close(&key(i), now + Duration::from_secs(1 + i as u64));
        }
        assert_eq!(g.lock().len(), MAX_GATES);
        assert_eq!(g.end(&key(0), now), None, "the first to open is forgotten");
        assert_eq!(
            g.end(&key(MAX_GATES + 4), now),
            Some(now + Duration::from_secs(MAX_GATES as u64 + 5))
        );
        // An earlier gate never shortens one.
        g.close(&key(MAX_GATES + 4), now + Duration::from_secs(1));
        assert_eq!(
            g.end(&key(MAX_GATES + 4), now),
            Some(now + Duration::from_secs(MAX_GATES as u64 + 5))
        );
        tokio::time::advance(Duration::from_secs(MAX_GATES as u64 + 10)).await;
        let now = Instant::now();
        assert_eq!(g.end(&key(MAX_GATES + 4), now), None, "expired");
        g.close(&Key::new("new"), now + Duration::from_secs(1));
        assert_eq!(g.lock().len(), MAX_GATES, "room is made only when full");
        g.close(&Key::new("newer"), now + Duration::from_secs(1));
        assert_eq!(g.lock().len(), 2, "the expired ones are dropped when full");
    }

    #[test]
    fn tokens_are_distinct() {
        let mut seen: Vec<u64> = (0..10_000u64).map(|n| mix(7u64.wrapping_add(n))).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn fail_open_divides_every_limit_and_keeps_at_least_one() {
        let l = Limits::new()
            .requests_per_minute(10)
            .tokens_per_minute(1_000)
            .window(Dimension::Requests, Duration::from_secs(1), 2);
        let d: Vec<_> = divide(&l, 3).iter().map(|l| l.limit).collect();
        assert_eq!(d, [3, 333, 1]);
    }

    #[test]
    fn tags_name_dimension_and_window_in_microseconds() {
        let l = Limits::new()
            .requests_per_minute(1)
            .input_tokens_per_minute(1)
            .window(Dimension::OutputTokens, Duration::from_millis(1_500), 1)
            .tokens_per_day(1);
        let tags: Vec<_> = l.iter().map(tag).collect();
        assert_eq!(
            tags,
            ["r:60000000", "i:60000000", "o:1500000", "t:86400000000"]
        );
    }

    #[test]
    fn numbers_are_clamped_for_lua() {
        assert_eq!(safe(u64::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
    }
}
