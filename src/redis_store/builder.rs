//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`] and their
//! defaults, and `build`, which opens the connection lazily and spawns the
//! background task. Kept apart from the store so that what a user sets
//! reads in one place.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch;
use super::core::{Core, KeyLimits};
use super::fault::{fallback_store, FaultPolicy};
use super::gates::Gates;
use super::layout::Shape;
use super::ops;
use super::store::{Inner, RedisStore};
use super::token::random_u64;
use crate::key::Key;
use crate::rate_limit::Limits;
use crate::Error;

/// The default key prefix: every key of the store starts with
/// `{tlr:` (tower-llm-resilience).
pub const DEFAULT_PREFIX: &str = "tlr";

/// The bounded queue of corrections, gates and learns.
const QUEUE: usize = 1024;

/// The longest [`RedisStoreBuilder::learned_ttl`] and
/// [`RedisStoreBuilder::arrival_margin`].
const MAX_LEARNED_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Builds a [`RedisStore`]; every setting has a default.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStoreBuilder {
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    learned_ttl: Option<Duration>,
    arrival_margin: Option<Duration>,
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
            .field("arrival_margin", &self.arrival_margin)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("policy", &self.policy)
            .finish()
    }
}

impl RedisStore {
    /// A builder with `limits` for every key and the documented defaults.
    pub fn builder(limits: Limits) -> RedisStoreBuilder {
        RedisStoreBuilder {
            limits,
            key_limits: None,
            learn_limits: false,
            learned_ttl: None,
            arrival_margin: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_millis(250),
            retry_interval: Duration::from_secs(1),
            policy: FaultPolicy::FailClosed,
        }
    }
}

impl RedisStoreBuilder {
    /// Gives each key its own limits (as
    /// [`MemoryStore::key_limits`](crate::rate_limit::MemoryStore::key_limits));
    /// called on every decision, so keep it cheap.
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

    /// How much longer than its window each admission counts (default
    /// [`default_arrival_margin`](crate::rate_limit::default_arrival_margin):
    /// 250 ms, at most a twentieth of the window), as
    /// [`MemoryStore::arrival_margin`](crate::rate_limit::MemoryStore::arrival_margin):
    /// the provider counts a request when it arrives, the limiter when it
    /// admits it. It costs `margin / window` of the throughput, and
    /// external usage learned from a `remaining` header counts that much
    /// longer too. Cut to a year. Every process on a key must set the
    /// same (the fault policy's local store takes it too).
    ///
    /// On Redis the admission is the script's instant on the server's
    /// clock: the request leaves this process when the answer is back (or
    /// its wait after that), so the margin also covers that return trip.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_llm_resilience::rate_limit::Limits;
    /// use tower_llm_resilience::redis_store::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = RedisStore::builder(Limits::new().requests_per_minute(60))
    ///     .arrival_margin(Duration::from_millis(100))
    ///     .build("redis://127.0.0.1:6379/")
    ///     .unwrap();
    /// // Connected lazily: nothing was sent yet.
    /// assert!(format!("{store:?}").contains("arrival_margin: Some(100ms)"));
    /// # }
    /// ```
    pub fn arrival_margin(mut self, margin: Duration) -> Self {
        self.arrival_margin = Some(margin.min(MAX_LEARNED_TTL));
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
        let fallback = fallback_store(
            self.policy,
            &self.limits,
            self.key_limits.clone(),
            self.learn_limits,
            self.arrival_margin,
        );
        let margin = self.arrival_margin;
        let shape = Arc::new(Shape::new(&self.limits, |w| {
            margin.unwrap_or_else(|| crate::rate_limit::default_arrival_margin(w))
        }));
        let core = Arc::new(Core {
            conn,
            limits: self.limits,
            key_limits: self.key_limits,
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            arrival_margin: self.arrival_margin,
            shape,
            prefix: self.prefix,
            timeout: self.timeout,
            retry_interval: self.retry_interval,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            no_functions: AtomicBool::new(false),
            warned_old_layout: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (cancels, cancels_rx) = mpsc::unbounded_channel();
        let (acquires, acquires_rx) = mpsc::unbounded_channel();
        tokio::spawn(ops::run(core.clone(), rx, cancels_rx));
        tokio::spawn(batch::run(core.clone(), acquires_rx));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                core,
                fallback,
                policy: self.policy,
                acquires,
                ops: tx,
                cancels,
                token_base: random_u64(),
                tokens: AtomicU64::new(0),
                gates: Gates::default(),
            }),
        })
    }
}
