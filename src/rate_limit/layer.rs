//! [`RateLimitLayer`]: the limiter's configuration.

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::calibrate::Calibration;
use super::estimate::JsonEstimator;
use super::limits::Limits;
use super::memory::MemoryStore;
use super::service::{RateLimit, Shared};
use crate::classify::Provider;
use crate::events::Events;
use crate::key::{Key, SingleKey};

/// Applies [`RateLimit`] to a service: an exact sliding-window limiter over
/// requests and tokens, keyed, learning from the provider's headers.
///
/// Each [`layer`](Layer::layer) call makes a new limiter (a new, empty
/// [`MemoryStore`] with the layer's settings); the clones of the service it
/// returns share it. To share one quota between services built separately,
/// give them the same store with [`store`](Self::store) (see the crate's
/// [builder convention](crate#building-layers-one-convention)).
///
/// Defaults: one key for everything ([`SingleKey`]), classifier
/// [`Provider::Auto`], estimator [`JsonEstimator`], no max wait (a request
/// waits as long as the window needs, which is bounded by the longest
/// window), a wait on a key's gate bounded by 60 s
/// ([`max_gate_wait`](Self::max_gate_wait)), events to a fresh [`Events`],
/// the in-memory store with 10,000 keys (a soft bound, see
/// [`MemoryStore`]), each admission counted 250 ms longer than its window
/// (at most a twentieth of it; [`arrival_margin`](Self::arrival_margin)),
/// headers only ever tighten limits and what they teach expires (see
/// [`learned_ttl`](Self::learned_ttl)).
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let limiter = RateLimitLayer::new(
///     Limits::new().requests_per_minute(1).tokens_per_minute(200_000),
/// )
/// .max_wait(Duration::from_secs(30));
/// let mut svc = ServiceBuilder::new().layer(limiter).service(tower::service_fn(
///     |_req: http::Request<String>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) },
/// ));
/// let request = || http::Request::new(String::from(r#"{"messages":[]}"#));
/// svc.ready().await.unwrap().call(request()).await.unwrap();
/// // The next request would wait 60 s for the window, longer than
/// // `max_wait`: it fails at once, and reserves nothing.
/// let error = svc.ready().await.unwrap().call(request()).await.unwrap_err();
/// assert!(error.is_rate_limit_timeout());
/// # }
/// ```
#[derive(Debug)]
pub struct RateLimitLayer<K = SingleKey, C = Provider, E = JsonEstimator, St = MemoryStore> {
    key_fn: K,
    classifier: C,
    estimator: E,
    store: St,
    /// Makes the store of one [`layer`](Layer::layer) call: a new empty
    /// [`MemoryStore`] with the layer's settings, or a clone of the store
    /// given to [`store`](RateLimitLayer::store) (shared on purpose).
    make_store: fn(&St) -> St,
    /// Whether `store` is the layer's own settings (not a store given to
    /// [`store`](RateLimitLayer::store)).
    own_store: bool,
    events: Events,
    max_wait: Option<Duration>,
    max_gate_wait: Duration,
    estimate: bool,
    refund_failed: bool,
    calibrate: bool,
}

impl<K: Clone, C: Clone, E: Clone, St: Clone> Clone for RateLimitLayer<K, C, E, St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            estimator: self.estimator.clone(),
            store: self.store.clone(),
            make_store: self.make_store,
            own_store: self.own_store,
            events: self.events.clone(),
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: self.estimate,
            refund_failed: self.refund_failed,
            calibrate: self.calibrate,
        }
    }
}

/// The default bound on a wait on a key's gate
/// ([`RateLimitLayer::max_gate_wait`]): 60 s, the same as the retry
/// layer's default cap on a server-given wait
/// ([`DEFAULT_MAX_RETRY_AFTER`](crate::retry::DEFAULT_MAX_RETRY_AFTER)).
pub const DEFAULT_MAX_GATE_WAIT: Duration = crate::retry::DEFAULT_MAX_RETRY_AFTER;

impl RateLimitLayer {
    /// A limiter where every key has `limits`.
    pub fn new(limits: Limits) -> Self {
        let estimate = limits.counts_tokens();
        RateLimitLayer {
            key_fn: SingleKey,
            classifier: Provider::Auto,
            estimator: JsonEstimator::default(),
            store: MemoryStore::new(limits),
            make_store: MemoryStore::empty_like,
            own_store: true,
            events: Events::new(),
            max_wait: None,
            max_gate_wait: DEFAULT_MAX_GATE_WAIT,
            estimate,
            refund_failed: true,
            calibrate: true,
        }
    }
}

impl<K, C, E> RateLimitLayer<K, C, E, MemoryStore> {
    /// The store the setters below configure: the layer's own settings
    /// (copied first if a clone of this layer holds them too, so that the
    /// clone keeps its own), or the store given to [`store`](Self::store),
    /// which they change in place for every holder of it (see
    /// [`MemoryStore`]).
    fn own_store(&self) -> MemoryStore {
        if self.own_store && !self.store.is_unshared() {
            self.store.empty_like()
        } else {
            self.store.clone()
        }
    }

    /// Gives each key its own limits (called once per new key).
    pub fn key_limits(mut self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        self.store = self.own_store().key_limits(f);
        self.estimate = true;
        self
    }

    /// Whether the provider's `limit` headers may raise the configured
    /// limits (default `false`: headers only ever tighten). Either way a
    /// learned limit of 0 is ignored, a learned limit is never below a
    /// tenth of the configured one nor above 100 times it, and it expires
    /// (see [`learned_ttl`](Self::learned_ttl) and the
    /// [module docs](super#what-is-learned-and-for-how-long)).
    pub fn learn_limits(mut self, yes: bool) -> Self {
        self.store = self.own_store().learn_limits(yes);
        self
    }

    /// How long a limit learned from a provider's header holds after the
    /// provider last said it; then the configured limit is back in force
    /// (default: the limit's window, at most 10 minutes: 60 s for a
    /// per-minute limit, 10 min for a per-day one).
    pub fn learned_ttl(mut self, ttl: Duration) -> Self {
        self.store = self.own_store().learned_ttl(ttl);
        self
    }

    /// The soft bound on the keys held (default 10,000): keys whose
    /// windows still count are never dropped to make room, so the map may
    /// grow to 4 times this; past that a new key's request fails with
    /// [`Error::is_too_many_keys`](crate::Error::is_too_many_keys). See
    /// [`MemoryStore`].
    pub fn max_keys(mut self, n: usize) -> Self {
        self.store = self.own_store().max_keys(n);
        self
    }

    /// How much longer than its window each admission counts, for every
    /// limit (default [`default_arrival_margin`](super::default_arrival_margin):
    /// 250 ms, at most a twentieth of the window).
    ///
    /// The provider counts a request when it arrives, the limiter when it
    /// sends it. If a request spends longer on the way than one sent a
    /// window after it, the provider sees both in one window although the
    /// limiter never had them in one: a 429. Holding each admission
    /// `margin` longer absorbs that difference in latency (not the latency
    /// itself: a constant delay shifts both windows alike), at the cost of
    /// `margin / window` of the throughput (0.4 % for 250 ms on a minute).
    /// `Duration::ZERO` counts each admission for exactly its window.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_llm_resilience::rate_limit::{Dimension, Limits, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let second = Duration::from_secs(1);
    /// let margin = Duration::from_millis(100);
    /// let limiter = RateLimitLayer::new(Limits::new().window(Dimension::Requests, second, 1))
    ///     .arrival_margin(margin);
    /// let mut svc = ServiceBuilder::new().layer(limiter).service(tower::service_fn(
    ///     |_req: http::Request<String>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) },
    /// ));
    /// let start = tokio::time::Instant::now();
    /// for _ in 0..2 {
    ///     svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
    /// }
    /// // The second request was sent a window and the margin after the first.
    /// assert_eq!(start.elapsed(), second + margin);
    /// # }
    /// ```
    ///
    /// Configures the in-memory store; a store given to
    /// [`store`](Self::store) keeps its own margin
    /// ([`MemoryStore::arrival_margin`], `RedisStoreBuilder::arrival_margin`).
    pub fn arrival_margin(mut self, margin: Duration) -> Self {
        self.store = self.own_store().arrival_margin(margin);
        self
    }

    /// Keys unused this long may be evicted when the map is full, even if
    /// their windows still count something (default: never; idle keys
    /// whose windows are empty are always evictable). A timeout shorter
    /// than the longest window forgets usage: an evicted key starts again
    /// with an empty window.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.store = self.own_store().idle_timeout(d);
        self
    }
}

impl<K, C, E, St> RateLimitLayer<K, C, E, St> {
    /// Whether an attempt the provider refused or failed gives its charge
    /// back (default `true`): a rate-limited answer (429), a server error
    /// or overload (5xx, 529), or a connection that failed before any
    /// response. Providers do not count refused requests, and a 5xx is
    /// seldom counted; keeping such charges holds quota idle for a whole
    /// window (in `examples/goodput` a 5 % fault mix wasted about 6 % of
    /// the token quota). If a provider does count them, its `remaining`
    /// headers tighten the window again. Timeouts keep their charge: the
    /// provider may still be working on the request.
    pub fn refund_failed(mut self, yes: bool) -> Self {
        self.refund_failed = yes;
        self
    }

    /// Whether the limiter learns how far its input estimates run above
    /// the usage responses report, and scales new estimates down by that
    /// (default `true`). A correction fixes a request's charge when its
    /// body ends; until then an estimate 3x too high holds room nobody
    /// uses, and a waiting request needs room for its whole estimate. The
    /// factor only lowers input estimates, never below a quarter
    /// ([`MIN_ESTIMATE_FACTOR`](super::MIN_ESTIMATE_FACTOR)), follows the
    /// largest recent ratio (up at once, down by a sixteenth of the gap
    /// per response), never touches the output estimate (a declared
    /// `max_tokens` is charged at admission), and expires
    /// [`ESTIMATE_FACTOR_TTL`](super::ESTIMATE_FACTOR_TTL) (10 min) after
    /// the last report. One factor per limiter, across its keys;
    /// [`RateLimit::estimate_factor`] shows it.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // A provider that reports 100 input tokens for what we estimate at 300.
    /// let provider = tower::service_fn(|_req: http::Request<String>| async {
    ///     let body = r#"{"usage":{"prompt_tokens":100,"completion_tokens":5}}"#;
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(body.to_owned()))
    /// });
    /// let mut svc = tower::Layer::layer(
    ///     &RateLimitLayer::new(Limits::new().tokens_per_minute(100_000)),
    ///     provider,
    /// );
    /// for _ in 0..100 {
    ///     let mut request = http::Request::new(String::new());
    ///     request.extensions_mut().insert(TokenEstimate::new(300, 5));
    ///     let response = svc.ready().await.unwrap().call(request).await.unwrap();
    ///     http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    /// }
    /// // New input estimates count a third.
    /// assert!((svc.estimate_factor() - 1.0 / 3.0).abs() < 0.01);
    /// # }
    /// ```
    ///
    /// [`RateLimit::estimate_factor`]: super::RateLimit::estimate_factor
    pub fn calibrate_estimates(mut self, yes: bool) -> Self {
        self.calibrate = yes;
        self
    }

    /// Picks each request's key (default [`SingleKey`]).
    pub fn key_fn<K2>(self, key_fn: K2) -> RateLimitLayer<K2, C, E, St> {
        RateLimitLayer {
            key_fn,
            classifier: self.classifier,
            estimator: self.estimator,
            store: self.store,
            make_store: self.make_store,
            own_store: self.own_store,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: self.estimate,
            refund_failed: self.refund_failed,
            calibrate: self.calibrate,
        }
    }

    /// What responses mean (default [`Provider::Auto`]).
    pub fn classifier<C2>(self, classifier: C2) -> RateLimitLayer<K, C2, E, St> {
        RateLimitLayer {
            key_fn: self.key_fn,
            classifier,
            estimator: self.estimator,
            store: self.store,
            make_store: self.make_store,
            own_store: self.own_store,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: self.estimate,
            refund_failed: self.refund_failed,
            calibrate: self.calibrate,
        }
    }

    /// Estimates token costs when the request has no [`TokenEstimate`](super::TokenEstimate)
    /// (default [`JsonEstimator`]).
    pub fn estimator<E2>(self, estimator: E2) -> RateLimitLayer<K, C, E2, St> {
        RateLimitLayer {
            key_fn: self.key_fn,
            classifier: self.classifier,
            estimator,
            store: self.store,
            make_store: self.make_store,
            own_store: self.own_store,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: self.estimate,
            refund_failed: self.refund_failed,
            calibrate: self.calibrate,
        }
    }

    /// Where the windows live (default: a new [`MemoryStore`] for each
    /// [`layer`](Layer::layer) call). The store given here is a handle:
    /// every service built from this layer, and everything else that holds
    /// a clone of the store, shares its windows (one quota).
    pub fn store<St2: Clone>(self, store: St2) -> RateLimitLayer<K, C, E, St2> {
        RateLimitLayer {
            key_fn: self.key_fn,
            classifier: self.classifier,
            estimator: self.estimator,
            store,
            make_store: Clone::clone,
            own_store: false,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: true,
            refund_failed: self.refund_failed,
            calibrate: self.calibrate,
        }
    }

    /// The longest a request may wait for admission, for any reason (the
    /// window or a gate); past it, the call fails at once with a
    /// rate-limit-timeout error and reserves nothing (default: no limit;
    /// the window's own waits are bounded by the longest window, a gate's
    /// by [`max_gate_wait`](Self::max_gate_wait)).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = Some(d);
        self
    }

    /// The longest a request may wait on its key's gate (closed by a 429's
    /// `Retry-After`) (default [`DEFAULT_MAX_GATE_WAIT`], 60 s; pass
    /// `Duration::MAX` to wait out any gate).
    ///
    /// A request that would wait on the gate longer fails at once with
    /// [`Error::is_rate_limit_timeout`](crate::Error::is_rate_limit_timeout)
    /// (class rate limited, [`retry_after`](crate::Error::retry_after) the
    /// gate's remaining time, so that a retry layer above sees the
    /// server's wait) and keeps no reservation, and
    /// [`Event::GateWaitRefused`](crate::events::Event::GateWaitRefused) is
    /// reported. A request already waiting when a later gate closes is
    /// moved behind the gate, and fails the same way if that is past the
    /// bound. Without the bound a `retry-after: 86400` would hold every
    /// request of the key for a day, silently.
    pub fn max_gate_wait(mut self, d: Duration) -> Self {
        self.max_gate_wait = d;
        self
    }

    /// Where waits, 429s and learned limits are reported (default: a fresh
    /// [`Events`]).
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }
}

impl<S, K, C, E, St> Layer<S> for RateLimitLayer<K, C, E, St>
where
    K: Clone,
    C: Clone,
    E: Clone,
    St: Clone,
{
    type Service = RateLimit<S, K, C, E, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Arc::new(Shared {
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            estimator: self.estimator.clone(),
            store: Arc::new((self.make_store)(&self.store)),
            events: self.events.clone(),
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            estimate: self.estimate,
            refund_failed: self.refund_failed,
            calibration: Calibration::new(self.calibrate),
        });
        RateLimit::from_shared(inner, shared)
    }
}
