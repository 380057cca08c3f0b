//! The retry decision after one failed attempt (retry after which wait, or
//! give up and why), and the error the caller gets when it gives up. Pure
//! but for the budget, the random draw and the events it reports.

use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::config::Config;
use crate::classify::{Classification, Classifier, ErrorClass};
use crate::error::Origin;
use crate::events::Event;
use crate::Error;

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

/// A failed attempt: an error response or an error.
pub(crate) enum Failure<B> {
    Response(Response<B>),
    Error(Error),
}

impl<C> Config<C> {
    /// Decides after a failure classified as `c`; `retryable` is the
    /// default rule's answer (the predicate, when set, replaces it).
    /// Updates `attempts` and reports what it decided.
    #[cfg(test)]
    pub(crate) fn decide(
        &self,
        c: &Classification,
        retryable: bool,
        attempts: &mut Attempts,
        now: Instant,
    ) -> Decision {
        self.decide_for(c, retryable, attempts, now, None)
    }

    /// [`decide`](Self::decide) for a failed attempt of `origin` (its key
    /// and model, for the events), when known.
    pub(crate) fn decide_for(
        &self,
        c: &Classification,
        retryable: bool,
        attempts: &mut Attempts,
        now: Instant,
        origin: Option<&Origin>,
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
                        key: origin.map(|o| &o.key),
                        model: origin.and_then(Origin::model),
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
                        key: origin.map(|o| &o.key),
                        model: origin.and_then(Origin::model),
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::retry::config::SERVER_JITTER_MAX;
    use crate::retry::Backoff;
    use crate::Provider;

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
