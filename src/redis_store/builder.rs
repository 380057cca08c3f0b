//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`] and their
//! defaults, and `build`, which opens the connection lazily and spawns the
//! background task. Kept apart from the store so that what a user sets
//! reads in one place.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch;
use super::connect::{self, Tls};
use super::core::{Conn, Core, KeyLimits};
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
    tls: Tls,
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
            .field("tls_settings", &self.tls.is_set())
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
            tls: Tls::default(),
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

    /// Trusts the certificates of `pem` (one or more, PEM), instead of
    /// the system's roots, for a `rediss://` server whose certificate a
    /// private CA signed. The PEM is read when the store is built (one
    /// without a certificate, or malformed, fails `build`).
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Shows this client certificate chain and its key (both PEM) to a
    /// `rediss://` server that asks for one (mutual TLS: `redis-server`
    /// asks by default, `tls-auth-clients yes`).
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The store, connected lazily to one server at `url`
    /// (`redis://host:port/db`; with feature `redis-tls`, TLS as
    /// `rediss://host:port/db`, see [TLS](crate::redis_store#tls)). Fails
    /// only on a malformed URL (or TLS setting, or a `rediss://` URL
    /// without feature `redis-tls`) or outside a Tokio runtime (the store
    /// spawns its background task): an unreachable server is a fault
    /// handled per decision, so a process may start while Redis is down.
    pub fn build(self, url: &str) -> Result<RedisStore, Error> {
        in_runtime()?;
        let conn = connect::single(url, &self.tls, self.timeout)?;
        Ok(self.finish(conn))
    }

    /// The store, connected lazily to the Redis Cluster that `nodes`
    /// belong to (one or more of its nodes' URLs, `redis://host:port`, or
    /// with feature `redis-tls` all `rediss://`; the others are found from
    /// the cluster's slot map). Each decision runs on the primary of its
    /// key's hash slot, a batch of decisions as one call per slot, and the
    /// function library is loaded on every primary (see
    /// [Redis Cluster](crate::redis_store#redis-cluster)). Fails as
    /// [`build`](Self::build) does, or when `nodes` is empty.
    ///
    /// ```
    /// use tower_llm_resilience::rate_limit::Limits;
    /// use tower_llm_resilience::redis_store::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let limits = Limits::new().requests_per_minute(500);
    /// let store = RedisStore::builder(limits.clone())
    ///     .build_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
    /// // Connected lazily: nothing was sent yet.
    /// assert!(store.is_ok());
    /// let none: [&str; 0] = [];
    /// assert!(RedisStore::builder(limits).build_cluster(none).is_err());
    /// # }
    /// ```
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn build_cluster<I, S>(self, nodes: I) -> Result<RedisStore, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        in_runtime()?;
        let conn = connect::cluster(nodes, &self.tls, self.timeout)?;
        Ok(self.finish(conn))
    }

    /// The store over `conn`, with its background tasks spawned.
    fn finish(self, conn: Conn) -> RedisStore {
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
        RedisStore {
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
        }
    }
}

/// The store spawns its background tasks: outside a Tokio runtime that
/// is an error, not a panic.
fn in_runtime() -> Result<(), Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::store_unavailable(
            "RedisStore::build (and build_cluster) must be called inside a Tokio runtime",
        ));
    }
    Ok(())
}
