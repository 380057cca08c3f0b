//! The retry decision (pure), its configuration, and [`RetryPolicy`], the
//! `tower::retry::Policy` built on it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::{Instant, Sleep};

use super::backoff::{scale, unit};
use super::replay::replay;
use super::spike::SpikeAlert;
use super::{Backoff, RetryBudget};
use crate::classify::{Classification, Classifier, ErrorClass};
use crate::events::{Event, Events};
use crate::{BoxError, Error};

/// Default attempts (first + retries) for every retryable class: 4, one more
/// than openai-python's and anthropic-sdk-python's 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default attempts for `rate_limited` and `slow_down`: 10. A 429 means a
/// window is full; with the default backoff as a floor under the server's
/// wait, 9 retries span about 24 s on average and at most about 48 s plus
/// the server's waits: enough to ride out a per-minute limit (OpenAI's and
/// Anthropic's are per minute), where 2 retries give up within seconds.
pub const DEFAULT_RATE_LIMITED_ATTEMPTS: u32 = 10;
/// Default cap on a server-given wait: 60 s. anthropic-sdk-python and older
/// openai-python releases honour `Retry-After` up to 60 s; a longer wait
/// usually means a per-day limit or a quota, which the caller should see at
/// once rather than sleep through.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default jitter added to a server-given wait: up to 10 % of it, and at
/// most [`SERVER_JITTER_MAX`], so that clients told the same instant do not
/// all return at once.
pub const DEFAULT_SERVER_JITTER: f64 = 0.1;
/// The largest jitter ever added to a server-given wait: 1 s.
pub const SERVER_JITTER_MAX: Duration = Duration::from_secs(1);
/// Default for [`RetryLayer::budget_exempt_retry_after`]: 1 ms, that is,
/// any server-given wait above zero. Only a rate-limited answer
/// (`rate_limited`, `slow_down`) whose wait is at least this long is exempt
/// from the [`RetryBudget`]: the provider is pacing the key (a sliding
/// window says to the millisecond when a slot frees; the rate limiter's
/// gate holds the key's requests until then), and each such retry still
/// waits at least its backoff and counts against the attempts for its
/// class. `Retry-After: 0` paces nothing, and a wait on a 5xx or an
/// overload does not stop other requests from piling on: those retries
/// draw from the budget like any other.
///
/// Why not 1 s: a provider's sliding window answers a 429 with the exact
/// time until its oldest request leaves, often a few milliseconds
/// (OpenAI's and Azure's `retry-after-ms`). With a 1 s floor those retries
/// spend the budget, and in `examples/retry_comparison.rs` (200 requests
/// at 8/s against 5/s, retry layer alone) 60 requests are lost instead of
/// none. Raise it with [`RetryLayer::budget_exempt_retry_after`] to budget
/// short waits too.
///
/// [`RetryLayer::budget_exempt_retry_after`]: super::RetryLayer::budget_exempt_retry_after
pub const DEFAULT_BUDGET_EXEMPT_RETRY_AFTER: Duration = Duration::from_millis(1);

type Predicate = dyn Fn(&Classification) -> bool + Send + Sync;

/// Everything the retry layer and [`RetryPolicy`] decide with; shared by
/// clones behind an `Arc`.
pub(crate) struct Config<C> {
    pub(crate) classifier: C,
    pub(crate) max_attempts: u32,
    pub(crate) per_class: Vec<(ErrorClass, u32)>,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) server_jitter: f64,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) budget_exempt_retry_after: Duration,
    pub(crate) predicate: Option<Arc<Predicate>>,
    pub(crate) rng: Arc<Mutex<SmallRng>>,
    pub(crate) events: Option<Events>,
    pub(crate) spike: Option<SpikeAlert>,
}

impl<C: Clone> Clone for Config<C> {
    fn clone(&self) -> Self {
        Config {
            classifier: self.classifier.clone(),
            max_attempts: self.max_attempts,
            per_class: self.per_class.clone(),
            backoff: self.backoff,
            max_retry_after: self.max_retry_after,
            server_jitter: self.server_jitter,
            deadline: self.deadline,
            budget: self.budget.clone(),
            budget_exempt_retry_after: self.budget_exempt_retry_after,
            predicate: self.predicate.clone(),
            rng: self.rng.clone(),
            events: self.events.clone(),
            spike: self.spike.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Config<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("classifier", &self.classifier)
            .field("max_attempts", &self.max_attempts)
            .field("per_class", &self.per_class)
            .field("backoff", &self.backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("server_jitter", &self.server_jitter)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .field("budget_exempt_retry_after", &self.budget_exempt_retry_after)
            .field("predicate", &self.predicate.is_some())
            .field("events", &self.events)
            .field("spike", &self.spike)
            .finish()
    }
}

/// The bookkeeping of one request across its attempts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Attempts {
    /// Attempts made so far (0 until the first one is recorded).
    pub(crate) made: u32,
    /// When the first attempt started (read only when a deadline is set).
    pub(crate) started: Option<Instant>,
    /// The previous wait (for decorrelated jitter).
    pub(crate) previous: Duration,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Retry { wait: Duration, server_chose: bool },
    GiveUp(GiveUp),
}

/// Why the retry layer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveUp {
    NotRetryable,
    MaxAttempts,
    Budget,
    Deadline,
    RetryAfterTooLong,
}

impl GiveUp {
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::MaxAttempts => "max_attempts",
            GiveUp::Budget => "budget",
            GiveUp::Deadline => "deadline",
            GiveUp::RetryAfterTooLong => "retry_after_too_long",
        }
    }
}

impl<C> Config<C> {
    pub(crate) fn new(classifier: C) -> Self {
        Config {
            classifier,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            per_class: vec![
                (ErrorClass::RateLimited, DEFAULT_RATE_LIMITED_ATTEMPTS),
                (ErrorClass::SlowDown, DEFAULT_RATE_LIMITED_ATTEMPTS),
            ],
            backoff: Backoff::default(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            server_jitter: DEFAULT_SERVER_JITTER,
            deadline: None,
            budget: Some(RetryBudget::default()),
            budget_exempt_retry_after: DEFAULT_BUDGET_EXEMPT_RETRY_AFTER,
            predicate: None,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(process_seed()))),
            events: None,
            spike: None,
        }
    }

    /// The attempts allowed for `class`.
    pub(crate) fn max_attempts_for(&self, class: ErrorClass) -> u32 {
        self.per_class
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(self.max_attempts, |(_, n)| *n)
    }

    /// Whether any class may be retried at all (else no replay copy is kept).
    pub(crate) fn may_retry(&self) -> bool {
        self.max_attempts > 1 || self.per_class.iter().any(|(_, n)| *n > 1)
    }

    /// Bookkeeping for a new request: a budget deposit, and the start time
    /// when a deadline is set.
    pub(crate) fn first_attempt(&self) -> Attempts {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        Attempts {
            made: 0,
            started: self.deadline.map(|_| Instant::now()),
            previous: Duration::ZERO,
        }
    }

    /// Decides after a failure classified as `c`; `retryable` is the
    /// default rule's answer (the predicate, when set, replaces it).
    /// Updates `attempts` and reports what it decided.
    pub(crate) fn decide(
        &self,
        c: &Classification,
        retryable: bool,
        attempts: &mut Attempts,
        now: Instant,
    ) -> Decision {
        let made = attempts.made.max(1);
        attempts.made = made;
        let class = c.class.unwrap_or(ErrorClass::Other);
        let decision = self.decide_inner(c, class, retryable, attempts, now);
        match decision {
            Decision::Retry { wait, server_chose } => {
                attempts.made = made.saturating_add(1);
                attempts.previous = wait;
                if let Some(events) = &self.events {
                    events.emit(Event::RetryScheduled {
                        attempt: attempts.made,
                        class,
                        wait,
                        server_chose,
                    });
                }
                if let Some(spike) = &self.spike {
                    spike.record(now);
                }
            }
            Decision::GiveUp(why) => {
                // A first failure that is simply not retryable (a 400) is not
                // a retry giving up: it is not reported.
                let report = !(why == GiveUp::NotRetryable && made == 1);
                if let (true, Some(events)) = (report, &self.events) {
                    events.emit(Event::RetryGaveUp {
                        attempts: made,
                        class,
                        reason: why.reason(),
                    });
                }
            }
        }
        decision
    }

    fn decide_inner(
        &self,
        c: &Classification,
        class: ErrorClass,
        retryable: bool,
        attempts: &Attempts,
        now: Instant,
    ) -> Decision {
        let retryable = match &self.predicate {
            Some(predicate) => predicate(c),
            None => retryable,
        };
        if !retryable {
            return Decision::GiveUp(GiveUp::NotRetryable);
        }
        if attempts.made >= self.max_attempts_for(class) {
            return Decision::GiveUp(GiveUp::MaxAttempts);
        }
        let backoff = {
            let mut rng = match self.rng.lock() {
                Ok(rng) => rng,
                Err(poisoned) => poisoned.into_inner(),
            };
            let retry = attempts.made.saturating_sub(1);
            self.backoff.wait(retry, attempts.previous, &mut *rng)
        };
        // The server's wait is a floor: a request refused again and again
        // still backs off, so it does not burn its attempts on the short
        // waits of a sliding window that is full.
        let (wait, server_chose) = match c.retry_after {
            Some(server) if server > self.max_retry_after => {
                return Decision::GiveUp(GiveUp::RetryAfterTooLong)
            }
            Some(server) => {
                let server = self.server_wait(server);
                (server.max(backoff), server >= backoff)
            }
            None => (backoff, false),
        };
        if let (Some(deadline), Some(started)) = (self.deadline, attempts.started) {
            let past = match now.checked_add(wait) {
                Some(earliest) => earliest.saturating_duration_since(started) > deadline,
                None => true,
            };
            if past {
                return Decision::GiveUp(GiveUp::Deadline);
            }
        }
        // The budget guards against retries that multiply the load on a
        // provider. A retry is exempt only when a server-given wait really
        // paces it: a rate-limited answer (the limiter's gate holds the
        // key's requests until then) with a wait of at least the floor.
        // A 5xx, an overload, a timeout, a connect failure, and any retry
        // told `Retry-After: 0` (or less than the floor), withdraw from it.
        if !self.is_paced(c, class) {
            if let Some(budget) = &self.budget {
                if !budget.withdraw() {
                    return Decision::GiveUp(GiveUp::Budget);
                }
            }
        }
        Decision::Retry { wait, server_chose }
    }

    /// Whether the retry of a failure classified as `c` (of class `class`)
    /// is paced by the server, and so exempt from the budget: a
    /// rate-limited answer with a wait of at least the floor.
    fn is_paced(&self, c: &Classification, class: ErrorClass) -> bool {
        matches!(class, ErrorClass::RateLimited | ErrorClass::SlowDown)
            && c.retry_after
                .is_some_and(|wait| wait >= self.budget_exempt_retry_after)
    }

    /// The server's wait plus up to `server_jitter` of it (at most
    /// [`SERVER_JITTER_MAX`]).
    pub(crate) fn server_wait(&self, server: Duration) -> Duration {
        if self.server_jitter <= 0.0 {
            return server;
        }
        let draw = {
            let mut rng = match self.rng.lock() {
                Ok(rng) => rng,
                Err(poisoned) => poisoned.into_inner(),
            };
            unit(&mut *rng)
        };
        let extra = scale(server, self.server_jitter * draw).min(SERVER_JITTER_MAX);
        server.saturating_add(extra)
    }

    /// The error returned when the layer gives up on a failure.
    pub(crate) fn give_up_error<B>(
        &self,
        why: GiveUp,
        failure: Failure<B>,
        c: Classification,
    ) -> Error
    where
        C: Classifier,
    {
        let typed = match why {
            GiveUp::NotRetryable | GiveUp::MaxAttempts => None,
            GiveUp::Budget => Some(Error::retry_budget_exhausted(c)),
            GiveUp::Deadline => Some(Error::deadline_exceeded(c)),
            GiveUp::RetryAfterTooLong => Some(Error::retry_after_too_long(c, self.max_retry_after)),
        };
        match (typed, failure) {
            (None, Failure::Response(response)) => {
                Error::from_error_response(&response, &self.classifier)
            }
            (None, Failure::Error(error)) => error,
            (Some(typed), Failure::Error(error)) => typed.with_source(error),
            (Some(typed), Failure::Response(_)) => typed,
        }
    }
}

/// What a response means: the classification [`ClassifyLayer`] stored, else
/// for an error status ([`Classifier::is_error_status`]) the classifier's
/// answer. Any other status without a stored classification is a success
/// without classifying it, so that the success path scans no header.
///
/// [`ClassifyLayer`]: crate::classify::ClassifyLayer
pub(crate) fn classify_response<C: Classifier, B>(
    classifier: &C,
    response: &Response<B>,
) -> Classification {
    match response.extensions().get::<Classification>() {
        Some(c) => *c,
        None if !classifier.is_error_status(response.status()) => Classification::success(),
        None => classifier.classify(response.status(), response.headers(), None),
    }
}

/// Whether a response is a success, without building a [`Classification`]
/// (a few hundred bytes) on the success path; same rule as
/// [`classify_response`].
pub(crate) fn is_success<C: Classifier, B>(classifier: &C, response: &Response<B>) -> bool {
    match response.extensions().get::<Classification>() {
        Some(c) => c.is_success(),
        None => !classifier.is_error_status(response.status()),
    }
}

/// A failed attempt: an error response or an error.
pub(crate) enum Failure<B> {
    Response(Response<B>),
    Error(Error),
}

/// How an inner service's error type tells [`RetryPolicy`] what it means.
///
/// Implemented for this crate's [`Error`] (its own classification), for
/// [`BoxError`] (this crate's `Error` inside one, else the classifier's
/// [`classify_error`](Classifier::classify_error)), the error types of the
/// stacks this crate builds, and for `Infallible`.
pub trait ClassifiableError {
    /// The classification of this error, and whether it may be retried.
    fn classify_with<C: Classifier>(&self, classifier: &C) -> (Classification, bool);
}

impl ClassifiableError for Error {
    fn classify_with<C: Classifier>(&self, _: &C) -> (Classification, bool) {
        (*self.classification(), self.is_retryable())
    }
}

impl ClassifiableError for std::convert::Infallible {
    fn classify_with<C: Classifier>(&self, _: &C) -> (Classification, bool) {
        match *self {}
    }
}

impl ClassifiableError for BoxError {
    fn classify_with<C: Classifier>(&self, classifier: &C) -> (Classification, bool) {
        match self.downcast_ref::<Error>() {
            Some(ours) => ours.classify_with(classifier),
            None => {
                let c = classifier.classify_error(&**self);
                (c, c.is_retryable())
            }
        }
    }
}

/// The retry rules as a [`tower::retry::Policy`], for tower's own
/// [`tower::retry::Retry`].
///
/// It makes the same decisions as [`Retry`](super::Retry) (classes,
/// backoff, `Retry-After` with its cap, attempts, deadline, budget,
/// events), but tower's `Retry` can only hand back the last result as it
/// is: when the policy gives up on a 429 the caller gets that 429
/// response, not a typed [`Error`] such as
/// [`is_retry_after_too_long`](Error::is_retry_after_too_long). Use
/// [`RetryLayer`](super::RetryLayer) for the typed errors.
///
/// tower clones the policy for each request; the clone keeps that request's
/// attempts and start time, and shares everything else (budget, RNG,
/// events) with the original.
///
/// ```
/// use tower::retry::RetryLayer as TowerRetryLayer;
/// use tower_llm_resilience::retry::RetryLayer;
///
/// let policy = RetryLayer::new().max_attempts(3).seed(7).policy();
/// let layer = TowerRetryLayer::new(policy);
/// # let _ = layer;
/// ```
pub struct RetryPolicy<C = crate::Provider> {
    config: Arc<Config<C>>,
    attempts: Attempts,
}

impl<C> RetryPolicy<C> {
    pub(crate) fn from_config(config: Arc<Config<C>>) -> Self {
        RetryPolicy {
            config,
            attempts: Attempts::default(),
        }
    }
}

impl<C> Clone for RetryPolicy<C> {
    fn clone(&self) -> Self {
        RetryPolicy {
            config: self.config.clone(),
            attempts: self.attempts,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.config)
            .field("attempts", &self.attempts.made)
            .finish()
    }
}

impl<C, B, ResB, E> tower::retry::Policy<Request<B>, Response<ResB>, E> for RetryPolicy<C>
where
    C: Classifier,
    B: Clone,
    E: ClassifiableError,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let (c, retryable) = match result {
            Ok(response) => {
                if is_success(&self.config.classifier, response) {
                    return None;
                }
                let c = classify_response(&self.config.classifier, response);
                if c.is_success() {
                    return None;
                }
                (c, c.is_retryable())
            }
            Err(error) => error.classify_with(&self.config.classifier),
        };
        let now = Instant::now();
        match self.config.decide(&c, retryable, &mut self.attempts, now) {
            Decision::Retry { wait, .. } => Some(tokio::time::sleep(wait)),
            Decision::GiveUp(_) => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        // tower calls this on the service's policy before each first
        // attempt (then clones the policy into the request's future), and on
        // the future's clone before each retry.
        if self.attempts.made == 0 {
            self.attempts = self.config.first_attempt();
        }
        Some(replay(request))
    }
}

/// A seed that differs between processes (std's `RandomState` is keyed
/// from the OS per process) and between layers of one process, so that
/// clients started together do not draw the same jitter.
pub(crate) fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAYERS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(LAYERS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;
    use proptest::prelude::*;

    fn config() -> Config<Provider> {
        let mut c = Config::new(Provider::Auto);
        c.rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(3)));
        c
    }

    proptest! {
        #[test]
        fn every_decision_is_bounded(
            server in proptest::option::of(any::<u64>()),
            attempt in any::<u32>(),
            cap_ms in any::<u64>(),
            jitter in any::<f64>(),
            deadline in proptest::option::of(any::<u64>()),
            class in 0usize..ErrorClass::ALL.len(),
        ) {
            let mut config = config();
            config.max_retry_after = Duration::from_millis(cap_ms);
            config.server_jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
            config.deadline = deadline.map(Duration::from_millis);
            config.budget = None;
            let mut c = Classification::failure(ErrorClass::ALL[class]);
            c.retry_after = server.map(|ms| Duration::from_millis(ms).min(crate::classify::MAX_SERVER_WAIT));
            let now = Instant::now();
            let mut attempts = Attempts { made: attempt, started: Some(now), previous: Duration::MAX };
            match config.decide(&c, c.is_retryable(), &mut attempts, now) {
                Decision::Retry { wait, .. } => match c.retry_after {
                    Some(server) => {
                        prop_assert!(server <= config.max_retry_after);
                        prop_assert!(wait >= server);
                        let jitter = SERVER_JITTER_MAX.min(server.mul_f64(config.server_jitter));
                        prop_assert!(wait <= (server + jitter).max(config.backoff.cap()));
                    }
                    None => prop_assert!(wait <= config.backoff.cap()),
                },
                Decision::GiveUp(GiveUp::RetryAfterTooLong) => {
                    prop_assert!(c.retry_after.unwrap() > config.max_retry_after);
                }
                Decision::GiveUp(_) => {}
            }
        }
    }

    #[test]
    fn huge_waits_never_panic() {
        let mut config = config();
        config.max_retry_after = Duration::MAX;
        config.server_jitter = 1.0;
        config.deadline = Some(Duration::MAX);
        config.backoff = Backoff::new(Duration::MAX, Duration::MAX);
        let now = Instant::now();
        for _ in 0..100 {
            let c =
                Classification::failure(ErrorClass::RateLimited).with_retry_after(Duration::MAX);
            let mut a = Attempts {
                made: 1,
                started: Some(now),
                previous: Duration::MAX,
            };
            // now + Duration::MAX overflows an Instant: past any deadline.
            assert_eq!(
                config.decide(&c, true, &mut a, now),
                Decision::GiveUp(GiveUp::Deadline)
            );
        }
        config.deadline = None;
        let c = Classification::failure(ErrorClass::ServerError);
        let mut a = Attempts {
            made: u32::MAX - 1,
            ..Attempts::default()
        };
        config.max_attempts = u32::MAX;
        assert!(matches!(
            config.decide(&c, true, &mut a, now),
            Decision::Retry { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn decision_order() {
        let config = config();
        let now = Instant::now();
        let mut a = Attempts::default();
        let c = Classification::failure(ErrorClass::RateLimited)
            .with_retry_after(Duration::from_secs(2));
        match config.decide(&c, true, &mut a, now) {
            Decision::Retry { wait, server_chose } => {
                assert!(server_chose && wait >= Duration::from_secs(2));
                assert!(wait <= Duration::from_millis(2200));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.made, 2);
        let mut a = Attempts {
            made: 10,
            ..Attempts::default()
        };
        assert_eq!(
            config.decide(&c, true, &mut a, now),
            Decision::GiveUp(GiveUp::MaxAttempts)
        );
        let c = Classification::failure(ErrorClass::ServerError);
        let mut a = Attempts {
            made: 4,
            ..Attempts::default()
        };
        assert_eq!(
            config.decide(&c, true, &mut a, now),
            Decision::GiveUp(GiveUp::MaxAttempts)
        );
        let mut a = Attempts::default();
        assert_eq!(
            config.decide(&c, false, &mut a, now),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
    }
}
