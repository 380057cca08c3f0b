use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::config::Config;
use super::spike::SpikeAlert;
use super::{Backoff, Retry, RetryBudget, RetryPolicy, RetrySpike};
use crate::classify::{Classification, ErrorClass, Provider};
use crate::events::Events;

/// Retries failed requests the way the provider asks: see the
/// [module docs](super) for the rules and the defaults.
///
/// Each builder method documents its default. Build the service with
/// [`Layer::layer`], or a [`RetryPolicy`] for tower's own `Retry` with
/// [`policy`](Self::policy). Each service (or policy) built from the layer
/// has its own budget, random generator and spike window, shared by its
/// clones; a budget given to [`budget`](Self::budget) and the
/// [`events`](Self::events) are handles, shared by every service built with
/// them (see the crate's [builder
/// convention](crate#building-layers-one-convention)).
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::retry::{Backoff, Jitter, RetryLayer};
/// use tower_llm_resilience::ErrorClass;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let layer = RetryLayer::new()
///     .max_attempts(3)
///     .max_attempts_for(ErrorClass::RateLimited, 6)
///     .backoff(Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).jitter(Jitter::Equal))
///     .max_retry_after(Duration::from_secs(30))
///     .deadline(Duration::from_secs(120));
/// // A provider that always fails with a 500.
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let mut svc = layer.layer(tower::service_fn(move |_req: http::Request<String>| {
///     seen.fetch_add(1, Ordering::Relaxed);
///     let response = http::Response::builder().status(500).body(String::new());
///     async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
/// }));
/// let error = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap_err();
/// assert_eq!(calls.load(Ordering::Relaxed), 3); // max_attempts(3)
/// assert_eq!(error.status(), Some(http::StatusCode::INTERNAL_SERVER_ERROR)); // the last answer
/// # }
/// ```
pub struct RetryLayer<C = Provider> {
    config: Config<C>,
}

impl RetryLayer {
    /// A layer with the defaults and the [`Provider::Auto`] classifier.
    pub fn new() -> Self {
        RetryLayer {
            config: Config::new(Provider::Auto),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<C> RetryLayer<C> {
    /// Uses `classifier` to decide what a response or error means (default
    /// [`Provider::Auto`]).
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        let c = self.config;
        RetryLayer {
            config: Config {
                classifier,
                max_attempts: c.max_attempts,
                per_class: c.per_class,
                backoff: c.backoff,
                max_retry_after: c.max_retry_after,
                server_jitter: c.server_jitter,
                deadline: c.deadline,
                budget: c.budget,
                own_budget: c.own_budget,
                seed: c.seed,
                budget_exempt_retry_after: c.budget_exempt_retry_after,
                predicate: c.predicate,
                rng: c.rng,
                events: c.events,
                spike: c.spike,
                most_attempts: c.most_attempts,
            },
        }
    }

    /// Attempts in all (the first one included) for every class without its
    /// own limit (default [`DEFAULT_MAX_ATTEMPTS`](super::DEFAULT_MAX_ATTEMPTS),
    /// 4). `1` never retries; `0` is read as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Attempts in all for one class, e.g. more for a 429 whose wait the
    /// server tells than for a 5xx (defaults:
    /// [`DEFAULT_RATE_LIMITED_ATTEMPTS`](super::DEFAULT_RATE_LIMITED_ATTEMPTS),
    /// 10, for `rate_limited` and `slow_down`). It does not make a class
    /// retryable; see [`retry_if`](Self::retry_if) for that.
    pub fn max_attempts_for(mut self, class: ErrorClass, attempts: u32) -> Self {
        let attempts = attempts.max(1);
        match self.config.per_class.iter_mut().find(|(c, _)| *c == class) {
            Some(entry) => entry.1 = attempts,
            None => self.config.per_class.push((class, attempts)),
        }
        self
    }

    /// The backoff when the server gives no wait (default
    /// [`Backoff::default`]: 500 ms doubling to 8 s, equal jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The longest server-given wait (`Retry-After`, `retry-after-ms`,
    /// Gemini's `RetryInfo`) the layer sleeps through (default
    /// [`DEFAULT_MAX_RETRY_AFTER`](super::DEFAULT_MAX_RETRY_AFTER), 60 s).
    /// Above it the layer does not retry and returns at once an error for
    /// which [`is_retry_after_too_long`](crate::Error::is_retry_after_too_long)
    /// holds and whose [`retry_after`](crate::Error::retry_after) is the
    /// server's wait.
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.config.max_retry_after = cap;
        self
    }

    /// The share of a server-given wait added as jitter, drawn uniformly in
    /// `[0, ratio * wait)` and at most 1 s (default
    /// [`DEFAULT_SERVER_JITTER`](super::DEFAULT_SERVER_JITTER), 0.1). `0`
    /// waits exactly what the server said. Clamped to `0..=1`.
    pub fn server_jitter(mut self, ratio: f64) -> Self {
        self.config.server_jitter = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// An overall deadline across attempts, counted from the first one: no
    /// attempt starts whose earliest start (now plus the wait) is past it;
    /// the caller gets an error for which
    /// [`is_deadline_exceeded`](crate::Error::is_deadline_exceeded) holds
    /// (default: none; attempts and waits bound the time).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// The retry budget (default [`RetryBudget::default`]: 20 % of requests
    /// plus 1 retry per second over 10 s). Only retries the server paces do
    /// not draw from it: a `rate_limited` or `slow_down` answer whose wait is
    /// at least [`budget_exempt_retry_after`](Self::budget_exempt_retry_after)
    /// (any wait above zero by default); every other retry (5xx, overload,
    /// timeout, connect, a `Retry-After: 0`) does. When it is spent the
    /// caller gets an error for which
    /// [`is_retry_budget_exhausted`](crate::Error::is_retry_budget_exhausted)
    /// holds. The default budget is made anew for each service; a budget
    /// given here is a handle: pass the same one to several layers (or
    /// `layer()` calls) to share it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self.config.own_budget = false;
        self
    }

    /// The shortest server-given wait on a rate-limited answer that exempts
    /// its retry from the [`budget`](Self::budget) (default
    /// [`DEFAULT_BUDGET_EXEMPT_RETRY_AFTER`](super::DEFAULT_BUDGET_EXEMPT_RETRY_AFTER),
    /// 1 ms: any wait above zero; see there why not more). Retries of
    /// other classes draw from the budget whatever the server's wait.
    /// `Duration::ZERO` exempts a `Retry-After: 0` too;
    /// `Duration::from_secs(1)` budgets the sub-second waits of a sliding
    /// window.
    pub fn budget_exempt_retry_after(mut self, floor: Duration) -> Self {
        self.config.budget_exempt_retry_after = floor;
        self
    }

    /// Turns the retry budget off.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Replaces the rule that says whether a failure may be retried (default:
    /// [`Classification::is_retryable`], which follows `x-should-retry`, and
    /// [`Error::is_retryable`](crate::Error::is_retryable) for errors). The
    /// attempt limits, cap, deadline and budget still apply.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_llm_resilience::retry::RetryLayer;
    /// use tower_llm_resilience::ErrorClass;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // Also retry 404s (a model that is still being deployed).
    /// let layer = RetryLayer::new()
    ///     .retry_if(|c| c.is_retryable() || c.class == Some(ErrorClass::NotFound));
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let seen = calls.clone();
    /// let mut svc = layer.layer(tower::service_fn(move |_req: http::Request<String>| {
    ///     let status = if seen.fetch_add(1, Ordering::Relaxed) == 0 { 404 } else { 200 };
    ///     let response = http::Response::builder().status(status).body(String::new());
    ///     async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
    /// }));
    /// let response = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(calls.load(Ordering::Relaxed), 2); // the 404 was retried
    /// # }
    /// ```
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&Classification) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config.predicate = Some(Arc::new(predicate));
        self
    }

    /// Seeds the jitter's random generator, for reproducible runs (default:
    /// seeded from the operating system).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Reports `RetryScheduled` and `RetryGaveUp` events (default: none).
    /// A first failure that is simply not retryable is not reported.
    pub fn events(mut self, events: Events) -> Self {
        self.config.events = Some(events);
        self
    }

    /// Calls `alert` once per `window` when at least `threshold` retries
    /// were scheduled in it (fixed windows starting at the first retry),
    /// e.g. to page someone when retries spike. Called on the task that
    /// scheduled the retry: keep it quick.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_llm_resilience::retry::RetryLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let alerted = Arc::new(AtomicU64::new(0));
    /// let alert = alerted.clone();
    /// let layer = RetryLayer::new().on_retry_spike(2, Duration::from_secs(60), move |spike| {
    ///     eprintln!("{} retries in {:?}", spike.retries, spike.window);
    ///     alert.store(spike.retries, Ordering::Relaxed);
    /// });
    /// // Two 500s, then a success: two retries in the window.
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let seen = calls.clone();
    /// let mut svc = layer.layer(tower::service_fn(move |_req: http::Request<String>| {
    ///     let status = if seen.fetch_add(1, Ordering::Relaxed) < 2 { 500 } else { 200 };
    ///     let response = http::Response::builder().status(status).body(String::new());
    ///     async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
    /// }));
    /// svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
    /// assert_eq!(alerted.load(Ordering::Relaxed), 2);
    /// # }
    /// ```
    pub fn on_retry_spike(
        mut self,
        threshold: u64,
        window: Duration,
        alert: impl Fn(RetrySpike) + Send + Sync + 'static,
    ) -> Self {
        self.config.spike = Some(SpikeAlert::new(threshold, window, alert));
        self
    }

    /// The same rules as a [`tower::retry::Policy`] for tower's own
    /// `Retry` (which cannot return the typed errors; see [`RetryPolicy`]).
    pub fn policy(&self) -> RetryPolicy<C>
    where
        C: Clone,
    {
        RetryPolicy::from_config(Arc::new(self.config.clone().finished()))
    }
}

impl<C: Clone> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        RetryLayer {
            config: self.config.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_config(inner, Arc::new(self.config.clone().finished()))
    }
}
