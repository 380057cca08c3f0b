use std::time::Duration;

use crate::classify::{Classification, ErrorClass};

/// How far back the breaker looks when it computes its failure and
/// slow-call rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureWindow {
    /// The outcomes of the last `n` calls (1 to [`FailureWindow::MAX_COUNT`];
    /// values outside are clamped). Costs no clock read per call.
    Count(u32),
    /// The outcomes of the calls that ended in the last duration, kept in
    /// [`FailureWindow::BUCKETS`] buckets of a tenth of it each (so an outcome
    /// leaves the window between 90 % and 100 % of the duration after it
    /// was recorded, as Polly's sampling window does). Reads the clock once
    /// per recorded call. At least 10 ms.
    Time(Duration),
}

impl FailureWindow {
    /// The largest count window (its ring takes one byte per call).
    pub const MAX_COUNT: u32 = 100_000;
    /// The number of buckets of a time window.
    pub const BUCKETS: u32 = 10;
}

/// The policy of a breaker: thresholds, window and open times.
///
/// Every setter takes and returns `self`; [`Config::default`] documents the
/// defaults and why they were chosen. The same config drives the pure state
/// machine [`Circuit`](super::Circuit) and the tower layer
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// Out-of-range values never panic: rates outside `(0, 1]` or NaN disable
/// their threshold, counts are clamped to at least 1, absurd durations
/// saturate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_call_rate: Option<f64>,
    pub(crate) slow_call_duration: Duration,
    pub(crate) window: FailureWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) open_duration: Duration,
    pub(crate) backoff_factor: f64,
    pub(crate) backoff_max: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) probe_timeout: Duration,
    pub(crate) count_rate_limited: bool,
    pub(crate) quota_open_duration: Duration,
    pub(crate) auth_open_duration: Duration,
    pub(crate) max_trip_open: Duration,
}

/// The defaults, chosen for LLM traffic: tens of calls per second at most,
/// often far fewer, each call already retried by the retry layer below the
/// breaker (so one failure the breaker sees is several failed attempts).
///
/// | setting | default | Resilience4j | Polly v8 | why |
/// |---|---|---|---|---|
/// | [`failure_rate`](Config::failure_rate) | 0.5 | 0.5 | 0.1 | half the calls failing after retries is an outage, not noise |
/// | [`window`](Config::window) | `Count(20)` | `Count(100)` | `Time(30 s)` | 100 LLM calls can take minutes; a count window costs no clock read |
/// | [`minimum_calls`](Config::minimum_calls) | 10 | 100 | 100 | enough calls for a rate to mean something at 1 call/s |
/// | [`open_duration`](Config::open_duration) | 10 s | 60 s | 5 s | recovery is noticed within 10 s; 3 probes per 10 s cost the provider nothing |
/// | [`open_backoff`](Config::open_backoff) | off | off | off | turn on for long outages and many clients |
/// | [`half_open_probes`](Config::half_open_probes) | 3 | 10 | 1 | one lucky answer does not close it; 10 would take long at low volume |
/// | [`probe_timeout`](Config::probe_timeout) | 5 min | none (`maxWaitDurationInHalfOpenState` 0) | none | above a long LLM call (a minute or two for a long output, more for a reasoning model) and its retries, so a slow but healthy provider still closes it; a hung probe blocks its key 5 min at most (the stack's attempt timeout, 10 min, would cut it later) |
/// | [`slow_call_rate`](Config::slow_call_rate) | off | 1.0 | — | an LLM call's time grows with its output, which the breaker cannot see |
/// | [`slow_call_duration`](Config::slow_call_duration) | 60 s | 60 s | — | used once a slow-call rate is set |
/// | [`count_rate_limited`](Config::count_rate_limited) | false | — | — | a 429 is the rate limiter's job, not a sign of ill health |
/// | [`quota_open_duration`](Config::quota_open_duration) | 5 min | — | — | when the provider gives no reset; an empty wallet does not refill in seconds |
/// | [`auth_open_duration`](Config::auth_open_duration) | 5 min | — | — | `auth` (401) only: a revoked key does not heal in 30 s; a 403 or 404 never opens it |
/// | [`max_trip_open`](Config::max_trip_open) | 1 h | — | — | nothing learned from a provider is forever: one probe an hour costs nothing and heals a bogus or wrong reset (a quota reset "tomorrow") |
impl Default for Config {
    fn default() -> Self {
        Config {
            failure_rate: Some(0.5),
            slow_call_rate: None,
            slow_call_duration: Duration::from_secs(60),
            window: FailureWindow::Count(20),
            minimum_calls: 10,
            open_duration: Duration::from_secs(10),
            backoff_factor: 1.0,
            backoff_max: Duration::from_secs(10),
            half_open_probes: 3,
            probe_timeout: Duration::from_secs(300),
            count_rate_limited: false,
            quota_open_duration: Duration::from_secs(300),
            auth_open_duration: Duration::from_secs(300),
            max_trip_open: Duration::from_secs(3600),
        }
    }
}

/// Upper bound of every open time, so that `now + duration` cannot overflow.
pub(crate) const MAX_OPEN: Duration = Duration::from_secs(7 * 24 * 3600);

fn valid_rate(rate: f64) -> Option<f64> {
    (rate > 0.0 && rate <= 1.0).then_some(rate)
}

impl Config {
    /// The defaults (see the table on [`Config::default`]).
    pub fn new() -> Self {
        Config::default()
    }

    /// Open when at least this share of the calls in the window failed
    /// (default 0.5). A value outside `(0, 1]` disables the failure rate
    /// (quota and auth still open the breaker).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = valid_rate(rate);
        self
    }

    /// Open when at least this share of the calls in the window were slower
    /// than [`slow_call_duration`](Config::slow_call_duration) (default
    /// off). A value outside `(0, 1]` disables it.
    pub fn slow_call_rate(mut self, rate: f64) -> Self {
        self.slow_call_rate = valid_rate(rate);
        self
    }

    /// A call that takes longer than this (from the call to its response)
    /// is slow (default 60 s).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = duration;
        self
    }

    /// The sliding window (default `FailureWindow::Count(20)`).
    pub fn window(mut self, window: FailureWindow) -> Self {
        self.window = match window {
            FailureWindow::Count(n) => FailureWindow::Count(n.clamp(1, FailureWindow::MAX_COUNT)),
            FailureWindow::Time(d) => {
                FailureWindow::Time(d.clamp(Duration::from_millis(10), MAX_OPEN))
            }
        };
        self
    }

    /// How many calls the window must hold before its rates can open the
    /// breaker (default 10; at least 1; a count window uses the smaller of
    /// this and its size).
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n.max(1);
        self
    }

    /// How long the breaker stays open after the rates tripped it, before
    /// it lets probes through (default 10 s).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration.min(MAX_OPEN);
        self
    }

    /// Grow the open duration by `factor` on each trip that follows a failed
    /// probe, up to `max` (default off: factor 1). It falls back to
    /// [`open_duration`](Config::open_duration) once the breaker closes.
    /// A factor below 1 or NaN means no growth.
    pub fn open_backoff(mut self, factor: f64, max: Duration) -> Self {
        self.backoff_factor = if factor >= 1.0 && factor.is_finite() {
            factor
        } else {
            1.0
        };
        self.backoff_max = max.min(MAX_OPEN);
        self
    }

    /// How many probe calls the half-open breaker lets through (default 3;
    /// at least 1). All of them must succeed to close it; one failure opens
    /// it again. Calls beyond them fail fast.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n.max(1);
        self
    }

    /// How long a half-open probe may run before it counts as failed
    /// (default 5 min; at least 1 ms, at most 7 days). A probe that never
    /// answers would otherwise keep its slot forever, and the breaker would
    /// stay half-open rejecting every call. At the deadline the circuit
    /// opens again as for a failed probe (class [`ErrorClass::Timeout`],
    /// with the usual open duration and backoff), every slot is free, and
    /// the probe's late outcome is ignored. The call itself is not
    /// cancelled (put a timeout inside the breaker for that), and no timer
    /// runs: the deadline is checked by the next call of the key or the
    /// next outcome, so [`state`](super::CircuitBreaker::state) may read
    /// half-open until then.
    ///
    /// Meanwhile a call rejected because every slot is taken gets the time
    /// until the earliest probe's deadline as its
    /// [`retry_after`](crate::Error::retry_after).
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout.clamp(Duration::from_millis(1), MAX_OPEN);
        self
    }

    /// Whether a rate-limited answer (429 `rate_limit_exceeded`, slow down)
    /// counts as a failure (default `false`: pacing is the rate limiter's
    /// job, and a 429 proves the provider is up).
    pub fn count_rate_limited(mut self, count: bool) -> Self {
        self.count_rate_limited = count;
        self
    }

    /// How long a quota-exhausted answer opens the breaker when the
    /// provider gives no reset time (default 5 min; at most
    /// [`max_trip_open`](Config::max_trip_open)).
    pub fn quota_open_duration(mut self, duration: Duration) -> Self {
        self.quota_open_duration = duration.min(MAX_OPEN);
        self
    }

    /// How long an authentication failure (401, [`ErrorClass::Auth`]: an
    /// invalid or revoked API key) opens the breaker (default 5 min). A
    /// permission failure (403) does not open it: it is about one model or
    /// resource, not the key.
    pub fn auth_open_duration(mut self, duration: Duration) -> Self {
        self.auth_open_duration = duration.min(MAX_OPEN);
        self
    }

    /// The longest a trip keeps the breaker open (default 1 h), whatever
    /// the open time it carries: a quota reset the provider gave (a
    /// `Retry-After` of a day, a daily quota's reset),
    /// [`quota_open_duration`](Config::quota_open_duration),
    /// [`auth_open_duration`](Config::auth_open_duration), or an
    /// [`CallOutcome::trip`] made by hand. After it the breaker half-opens and
    /// probes as usual: if the quota is still spent, the probe's answer
    /// opens it again. Nothing learned from a provider sticks for longer,
    /// so a wrong or bogus reset heals within this time, at the cost of a
    /// few probes. Longer values are cut to 7 days.
    pub fn max_trip_open(mut self, duration: Duration) -> Self {
        self.max_trip_open = duration.min(MAX_OPEN);
        self
    }

    /// Whether the slow-call rate is on.
    pub(crate) fn slow_calls_enabled(&self) -> bool {
        self.slow_call_rate.is_some()
    }

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
