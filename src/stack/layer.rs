use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use crate::circuit_breaker::{self, CircuitBreaker, CircuitBreakerLayer};
use crate::classify::{Classify, ClassifyLayer, PeekedBody, Provider};
use crate::events::Events;
use crate::key::{Key, SingleKey};
use crate::rate_limit::{
    JsonEstimator, Limits, MemoryStore, RateLimit, RateLimitLayer, ResponseBody,
};
use crate::retry::{Retry, RetryLayer};
use crate::stream::{IdleTimeout, IdleTimeoutBody};

/// The service [`LlmLayer`] builds around an HTTP client `S`.
pub type LlmService<S, K = SingleKey, C = Provider, St = MemoryStore> =
    CircuitBreaker<Retry<RateLimit<IdleTimeout<Classify<S, C>>, K, C, JsonEstimator, St>, C>, K, C>;

/// The body of a response from [`LlmService`]: the HTTP client's body `B`,
/// frame by frame, behind the stack's watchers (the idle timeout, the
/// limiter's usage and mid-stream failure watch, the breaker's verdict at
/// the body's end). Its error is the crate's
/// [`Error`](crate::Error): a stream that fails midway
/// ([`is_stream_failure`](crate::Error::is_stream_failure)) says how much
/// it had delivered.
pub type LlmBody<B, K = SingleKey, C = Provider, St = MemoryStore> = circuit_breaker::ResponseBody<
    ResponseBody<IdleTimeoutBody<PeekedBody<B>>, K, C, JsonEstimator, St>,
    C,
>;

/// How long one attempt may wait for the provider's response headers by
/// default: ten minutes, as the OpenAI and Anthropic SDKs allow (a long
/// completion takes minutes; a provider that never answers must not hold a
/// request forever).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a response body may go without a frame by default: five
/// minutes. A streamed completion sends a chunk every few tens of
/// milliseconds and Anthropic pings an idle stream; a reasoning model may
/// think for minutes between its headers and its first chunk, so the
/// default is generous, and half the attempt timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Stacks the crate's layers in the order of its design, from one provider
/// profile and a few limits: circuit breaker outermost (a dead or unpaid
/// provider fails fast before retries burn time), then retry (each attempt
/// takes a rate-limit permit, so a retry storm cannot exceed the quota),
/// then the rate limiter next to the wire (it learns from every response),
/// then a timeout on each attempt (inside the limiter, so that waiting for
/// the window does not count), then [`ClassifyLayer`] (it reads error
/// bodies' codes for all of them).
///
/// Every layer shares the classifier, the [`Events`] (one summary for the
/// whole stack) and, for the limiter and the breaker, the key function.
///
/// Defaults: the [`Provider`] given to [`new`](Self::new); no limit (set
/// at least [`requests_per_minute`](Self::requests_per_minute), and
/// [`tokens_per_minute`](Self::tokens_per_minute) when the provider limits
/// tokens); one key for all requests ([`SingleKey`]); and each layer's own
/// defaults: [`RetryLayer`] (4 attempts, 10 for 429s, server waits up to
/// 60 s honoured), [`CircuitBreakerLayer`] (opens at 50 % failures over
/// 20 calls, at once on an exhausted quota or an invalid key, never longer
/// than an hour on the provider's word), [`RateLimitLayer`] (no max wait,
/// gate waits bounded at 60 s, admissions held 250 ms past their window
/// (at most 5 % of it), headers only tighten and what they teach expires,
/// failed attempts refunded), an attempt timeout of
/// [`DEFAULT_ATTEMPT_TIMEOUT`] (10 min), [`ClassifyLayer`] (8 KiB of error
/// bodies).
///
/// Each call of [`layer`](Layer::layer) makes a new limiter and new
/// breakers; the clones of the service it returns share them. Layer once,
/// clone the service.
///
/// The request body must be `Clone` (to replay it; see
/// [`BufferBodyLayer`](crate::retry::BufferBodyLayer) otherwise) and
/// readable by the [`JsonEstimator`] (`String`, `Bytes`, `Vec<u8>`).
#[derive(Clone)]
pub struct LlmLayer<K = SingleKey, C = Provider, St = MemoryStore> {
    classifier: C,
    key_fn: K,
    limits: Limits,
    events: Events,
    max_wait: Option<Duration>,
    max_gate_wait: Option<Duration>,
    calibrate_estimates: bool,
    learn_limits: bool,
    learned_ttl: Option<Duration>,
    arrival_margin: Option<Duration>,
    attempt_timeout: Duration,
    idle_timeout: Duration,
    key_limits: Option<Arc<KeyLimits>>,
    make_store: Arc<MakeStore<St>>,
    classify: ClassifyLayer<C>,
    retry: RetryLayer<C>,
    breaker: CircuitBreakerLayer<K, C>,
}

/// Makes the limiter's store from the limits and the in-memory store's
/// settings at [`Layer::layer`] time, so that the setters may come in any
/// order.
type MakeStore<St> = dyn Fn(&Limits, &MemorySettings) -> St + Send + Sync;

/// Each key's limits, from [`LlmLayer::key_limits`].
type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// What [`LlmLayer`] sets on its in-memory store (a store given to
/// [`LlmLayer::store`] keeps its own).
struct MemorySettings {
    learn_limits: bool,
    learned_ttl: Option<Duration>,
    arrival_margin: Option<Duration>,
    key_limits: Option<Arc<KeyLimits>>,
}

impl<K: fmt::Debug, C: fmt::Debug, St> fmt::Debug for LlmLayer<K, C, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmLayer")
            .field("classifier", &self.classifier)
            .field("key_fn", &self.key_fn)
            .field("limits", &self.limits)
            .field("max_wait", &self.max_wait)
            .field("max_gate_wait", &self.max_gate_wait)
            .field("calibrate_estimates", &self.calibrate_estimates)
            .field("learn_limits", &self.learn_limits)
            .field("learned_ttl", &self.learned_ttl)
            .field("arrival_margin", &self.arrival_margin)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("key_limits", &self.key_limits.is_some())
            .field("classify", &self.classify)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl LlmLayer {
    /// The stack for `provider`'s signals, with no limit yet (for a
    /// classifier of your own, see [`classifier`](Self::classifier)).
    pub fn new(provider: Provider) -> Self {
        let classifier = provider;
        let events = Events::new();
        LlmLayer {
            classifier,
            key_fn: SingleKey,
            limits: Limits::new(),
            events: events.clone(),
            max_wait: None,
            max_gate_wait: None,
            calibrate_estimates: true,
            learn_limits: false,
            learned_ttl: None,
            arrival_margin: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            key_limits: None,
            make_store: Arc::new(|limits: &Limits, settings: &MemorySettings| {
                let mut store =
                    MemoryStore::new(limits.clone()).learn_limits(settings.learn_limits);
                if let Some(ttl) = settings.learned_ttl {
                    store = store.learned_ttl(ttl);
                }
                if let Some(margin) = settings.arrival_margin {
                    store = store.arrival_margin(margin);
                }
                if let Some(f) = &settings.key_limits {
                    let f = Arc::clone(f);
                    store = store.key_limits(move |key| f(key));
                }
                store
            }),
            classify: ClassifyLayer::new().classifier(classifier),
            retry: RetryLayer::new()
                .classifier(classifier)
                .events(events.clone()),
            breaker: CircuitBreakerLayer::new()
                .classifier(classifier)
                .events(events),
        }
    }
}

impl<K, C, St> LlmLayer<K, C, St> {
    /// Limits `n` requests per minute (RPM).
    pub fn requests_per_minute(mut self, n: u64) -> Self {
        self.limits = self.limits.requests_per_minute(n);
        self
    }

    /// Limits `n` tokens (input and output) per minute (TPM).
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.limits = self.limits.tokens_per_minute(n);
        self
    }

    /// Limits `n` requests per day (RPD).
    pub fn requests_per_day(mut self, n: u64) -> Self {
        self.limits = self.limits.requests_per_day(n);
        self
    }

    /// Limits `n` tokens per day (TPD).
    pub fn tokens_per_day(mut self, n: u64) -> Self {
        self.limits = self.limits.tokens_per_day(n);
        self
    }

    /// Limits `n` input tokens per minute (Anthropic's ITPM).
    pub fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.limits = self.limits.input_tokens_per_minute(n);
        self
    }

    /// Limits `n` output tokens per minute (Anthropic's OTPM).
    pub fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.limits = self.limits.output_tokens_per_minute(n);
        self
    }

    /// Replaces every limit set so far (for windows of any length, see
    /// [`Limits::window`]). Give the provider's own windows: the limiter
    /// holds each admission a little longer (see
    /// [`arrival_margin`](Self::arrival_margin)).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The longest a request may wait for the limiter before it fails with
    /// [`Error::is_rate_limit_timeout`](crate::Error::is_rate_limit_timeout)
    /// (default: no maximum; the wait is bounded by the longest window).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// The longest a request may wait on its key's Retry-After gate before
    /// it fails at once with
    /// [`Error::is_rate_limit_timeout`](crate::Error::is_rate_limit_timeout),
    /// carrying the server's wait (default
    /// [`DEFAULT_MAX_GATE_WAIT`](crate::rate_limit::DEFAULT_MAX_GATE_WAIT),
    /// 60 s; see [`RateLimitLayer::max_gate_wait`]).
    pub fn max_gate_wait(mut self, wait: Duration) -> Self {
        self.max_gate_wait = Some(wait);
        self
    }

    /// Whether the limiter learns how far its input estimates run above
    /// the usage responses report and scales new ones down by that
    /// (default `true`; bounded, expiring: see
    /// [`RateLimitLayer::calibrate_estimates`]).
    pub fn calibrate_estimates(mut self, yes: bool) -> Self {
        self.calibrate_estimates = yes;
        self
    }

    /// How long a limit learned from the provider's headers holds after the
    /// provider last said it (default: the limit's window, at most 10 min;
    /// see [`RateLimitLayer::learned_ttl`]). Configures the in-memory store
    /// only: a store given to [`store`](Self::store) has its own.
    pub fn learned_ttl(mut self, ttl: Duration) -> Self {
        self.learned_ttl = Some(ttl);
        self
    }

    /// How much longer than its window the limiter counts each admission
    /// (default
    /// [`default_arrival_margin`](crate::rate_limit::default_arrival_margin):
    /// 250 ms, at most a twentieth of the window), so that a request slower
    /// on its way to the provider than one sent a window later does not
    /// meet it there; see [`RateLimitLayer::arrival_margin`]. Configures
    /// the in-memory store only: a store given to [`store`](Self::store)
    /// has its own.
    pub fn arrival_margin(mut self, margin: Duration) -> Self {
        self.arrival_margin = Some(margin);
        self
    }

    /// How long one attempt may wait for the provider's response headers
    /// (default [`DEFAULT_ATTEMPT_TIMEOUT`], 10 min). Past it the attempt
    /// fails as [`ErrorClass::Timeout`](crate::ErrorClass::Timeout), which
    /// the retry layer retries; waiting for the rate limiter does not count.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long a response body may go without a frame once its headers
    /// arrived (default [`DEFAULT_IDLE_TIMEOUT`], 5 min). Past it the body
    /// ends with an [`Error`](crate::Error) that
    /// [`is_timeout`](crate::Error::is_timeout) and says how much was
    /// delivered: a stalled stream is a timeout, not a hang. It is not
    /// retried (the caller already holds the response), and the breaker
    /// counts it as a failure.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Gives each key its own limits, in place of the ones set on this
    /// layer (default: every key has those): `f` is called once, when a
    /// key's windows are made. With [`ByModel`](crate::key::ByModel) as
    /// the [`key_fn`](Self::key_fn), each model its own RPM and TPM (see
    /// there for an example); with a tuple of key functions, read the
    /// model from [`Key::parts`]. Configures the in-memory store only: a
    /// store given to [`store`](Self::store) has its own
    /// ([`MemoryStore::key_limits`]).
    pub fn key_limits(mut self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        self.key_limits = Some(Arc::new(f));
        self
    }

    /// Whether the provider's limit headers may raise the configured limits
    /// (default `false`: they only tighten).
    pub fn learn_limits(mut self, yes: bool) -> Self {
        self.learn_limits = yes;
        self
    }

    /// Sends every layer's events to `events` (default: a fresh handle,
    /// shared by the layers; read it with [`events`](Self::events_handle)).
    pub fn events(mut self, events: Events) -> Self {
        self.events = events.clone();
        self.retry = self.retry.events(events.clone());
        self.breaker = self.breaker.events(events);
        self
    }

    /// The events handle every layer reports to, for a run's summary
    /// (`layer.events_handle().counters().snapshot()`).
    pub fn events_handle(&self) -> &Events {
        &self.events
    }

    /// Configures the retry layer.
    pub fn retry(mut self, f: impl FnOnce(RetryLayer<C>) -> RetryLayer<C>) -> Self {
        self.retry = f(self.retry);
        self
    }

    /// Configures the circuit breaker.
    pub fn circuit_breaker(
        mut self,
        f: impl FnOnce(CircuitBreakerLayer<K, C>) -> CircuitBreakerLayer<K, C>,
    ) -> Self {
        self.breaker = f(self.breaker);
        self
    }

    /// Configures the classification layer next to the wire.
    pub fn classify(mut self, f: impl FnOnce(ClassifyLayer<C>) -> ClassifyLayer<C>) -> Self {
        self.classify = f(self.classify);
        self
    }

    /// What responses and errors mean, for every layer of the stack
    /// (default: the [`Provider`] given to [`new`](Self::new); see
    /// [`Classifier`](crate::Classifier) for one of your own). The layers'
    /// other settings are kept.
    pub fn classifier<C2: Clone>(self, classifier: C2) -> LlmLayer<K, C2, St> {
        LlmLayer {
            classifier: classifier.clone(),
            key_fn: self.key_fn,
            limits: self.limits,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            calibrate_estimates: self.calibrate_estimates,
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            arrival_margin: self.arrival_margin,
            attempt_timeout: self.attempt_timeout,
            idle_timeout: self.idle_timeout,
            key_limits: self.key_limits,
            make_store: self.make_store,
            classify: self.classify.classifier(classifier.clone()),
            retry: self.retry.classifier(classifier.clone()),
            breaker: self.breaker.classifier(classifier),
        }
    }

    /// One quota (and one breaker) per key (default [`SingleKey`]): e.g.
    /// [`ByHeader::api_key`](crate::key::ByHeader::api_key).
    pub fn key_fn<K2: Clone>(self, key_fn: K2) -> LlmLayer<K2, C, St> {
        LlmLayer {
            classifier: self.classifier,
            key_fn: key_fn.clone(),
            limits: self.limits,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            calibrate_estimates: self.calibrate_estimates,
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            arrival_margin: self.arrival_margin,
            attempt_timeout: self.attempt_timeout,
            idle_timeout: self.idle_timeout,
            key_limits: self.key_limits,
            make_store: self.make_store,
            classify: self.classify,
            retry: self.retry,
            breaker: self.breaker.key_fn(key_fn),
        }
    }

    /// Keeps the limiter's windows in `store` (e.g. a store shared by
    /// several processes) instead of a new in-memory store per
    /// [`layer`](Layer::layer) call. The store holds its own limits;
    /// [`learn_limits`](Self::learn_limits) configures only the in-memory
    /// default, and the limits set here still decide whether token costs
    /// are estimated.
    pub fn store<St2>(self, store: St2) -> LlmLayer<K, C, St2>
    where
        St2: Clone + Send + Sync + 'static,
    {
        LlmLayer {
            classifier: self.classifier,
            key_fn: self.key_fn,
            limits: self.limits,
            events: self.events,
            max_wait: self.max_wait,
            max_gate_wait: self.max_gate_wait,
            calibrate_estimates: self.calibrate_estimates,
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            arrival_margin: self.arrival_margin,
            attempt_timeout: self.attempt_timeout,
            idle_timeout: self.idle_timeout,
            key_limits: self.key_limits,
            make_store: Arc::new(move |_: &Limits, _: &MemorySettings| store.clone()),
            classify: self.classify,
            retry: self.retry,
            breaker: self.breaker,
        }
    }
}

impl<S, K, C, St> Layer<S> for LlmLayer<K, C, St>
where
    K: Clone,
    C: Clone,
    St: Clone,
{
    type Service = LlmService<S, K, C, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let settings = MemorySettings {
            learn_limits: self.learn_limits,
            learned_ttl: self.learned_ttl,
            arrival_margin: self.arrival_margin,
            key_limits: self.key_limits.clone(),
        };
        let store = (self.make_store)(&self.limits, &settings);
        let mut rate_limit = RateLimitLayer::new(self.limits.clone())
            .store(store)
            .key_fn(self.key_fn.clone())
            .classifier(self.classifier.clone())
            .events(self.events.clone())
            .calibrate_estimates(self.calibrate_estimates);
        if let Some(wait) = self.max_wait {
            rate_limit = rate_limit.max_wait(wait);
        }
        if let Some(wait) = self.max_gate_wait {
            rate_limit = rate_limit.max_gate_wait(wait);
        }
        let classified = self.classify.layer(inner);
        let timed =
            IdleTimeout::new(classified, self.idle_timeout).headers_timeout(self.attempt_timeout);
        let limited = rate_limit.layer(timed);
        let retried = self.retry.layer(limited);
        self.breaker.layer(retried)
    }
}
