//! What one call's result means to a breaker: [`CallOutcome`], and
//! [`Config::outcome`], the rule that turns a call's classification into
//! one (which classes count, which trip the breaker at once, which say
//! nothing about the provider's health).

use std::time::Duration;

use super::Config;
use crate::classify::{Classification, ErrorClass};

impl Config {
    /// What one call's result means to the breaker: `classification` is the
    /// call's (success when its class is `None`), `elapsed` its duration.
    ///
    /// - provider faults (server error, overloaded, timeout, connect) are
    ///   failures, and so are rate-limited answers when
    ///   [`count_rate_limited`](Config::count_rate_limited) is on;
    /// - `quota_exhausted` opens at once, until the provider's reset
    ///   (`retry_after`, else the largest reset among the rate limits it
    ///   reports as spent) or for
    ///   [`quota_open_duration`](Config::quota_open_duration); the circuit
    ///   caps it at [`max_trip_open`](Config::max_trip_open);
    /// - `auth` (401, an invalid or revoked API key: every request of the
    ///   key will fail) opens at once for
    ///   [`auth_open_duration`](Config::auth_open_duration);
    /// - `permission` (403: a model or resource this key may not use),
    ///   `not_found` (404, `model_not_found`) and the caller's other faults
    ///   (invalid request, context length) end that request only: they say
    ///   nothing about the provider's health, and the key's other requests
    ///   (other models) may well be allowed. They are not recorded at all,
    ///   and neither are cancellations and unknown errors.
    pub fn outcome(&self, classification: &Classification, elapsed: Duration) -> CallOutcome {
        let Some(class) = classification.class else {
            return CallOutcome::success(elapsed);
        };
        match class {
            ErrorClass::QuotaExhausted => CallOutcome::trip(
                class,
                quota_reset(classification).unwrap_or(self.quota_open_duration),
            ),
            ErrorClass::Auth => CallOutcome::trip(class, self.auth_open_duration),
            ErrorClass::RateLimited | ErrorClass::SlowDown if self.count_rate_limited => {
                CallOutcome::failure(class, elapsed)
            }
            c if c.is_provider_fault() => CallOutcome::failure(class, elapsed),
            _ => CallOutcome::ignored(),
        }
    }
}

/// When a spent quota comes back, as the provider said.
fn quota_reset(c: &Classification) -> Option<Duration> {
    if let Some(wait) = c.retry_after {
        return Some(wait);
    }
    let l = &c.limits;
    [l.requests, l.tokens, l.input_tokens, l.output_tokens]
        .into_iter()
        .flatten()
        .filter(|s| s.remaining == Some(0))
        .filter_map(|s| s.reset)
        .max()
}

/// What one call's result means to a [`Circuit`](super::Circuit); made by
/// [`Config::outcome`] or by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOutcome {
    pub(crate) kind: OutcomeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutcomeKind {
    Success {
        elapsed: Duration,
    },
    Failure {
        class: ErrorClass,
        elapsed: Duration,
    },
    Ignored,
    Trip {
        class: ErrorClass,
        open_for: Duration,
    },
}

impl CallOutcome {
    /// Whether this is a success that is not slow under `config`.
    pub(crate) fn is_plain_success(&self, config: &Config) -> bool {
        match self.kind {
            OutcomeKind::Success { elapsed } => {
                !(config.slow_calls_enabled() && elapsed > config.slow_call_duration)
            }
            _ => false,
        }
    }

    /// The provider answered well, after `elapsed`.
    pub const fn success(elapsed: Duration) -> Self {
        CallOutcome {
            kind: OutcomeKind::Success { elapsed },
        }
    }

    /// The provider failed with `class` after `elapsed`: counts toward the
    /// failure rate.
    pub const fn failure(class: ErrorClass, elapsed: Duration) -> Self {
        CallOutcome {
            kind: OutcomeKind::Failure { class, elapsed },
        }
    }

    /// Says nothing about the provider's health (a 400, a cancelled call):
    /// not recorded; a probe slot it held is given back.
    pub const fn ignored() -> Self {
        CallOutcome {
            kind: OutcomeKind::Ignored,
        }
    }

    /// Open at once, for `open_for` (at most
    /// [`Config::max_trip_open`]), whatever the rates say (quota, auth).
    pub const fn trip(class: ErrorClass, open_for: Duration) -> Self {
        CallOutcome {
            kind: OutcomeKind::Trip { class, open_for },
        }
    }
}
