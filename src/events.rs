//! What the layers did, for logs, alerts and a run's summary.
//!
//! Every layer reports through an [`Events`] handle: each [`Event`] goes to
//! `tracing` (target `tower_llm_resilience`), to the user's listener when
//! one is set, and into shared [`Counters`]. An `Event` is built only on the
//! paths where something happened (a wait, a 429, a retry, a transition),
//! never on the plain success path, and it borrows instead of cloning.
//! Events carry [`Key`]s, which are names or fingerprints, never an API key,
//! and the request's model when it is known (see [`Event`]).
//!
//! # Observed
//!
//! While the events are *observed* (a listener is set, or a `tracing`
//! subscriber wants the crate's `llm.attempt` span), the rate limiter also
//! reports every attempt's end ([`Event::AttemptEnded`]: duration, class,
//! token usage) and what each response said remains of a quota
//! ([`Event::QuotaReported`]), and reads the model from the request's
//! body when its key names none. Unobserved, a request pays one branch
//! for all of it and allocates nothing; observed, one small allocation per
//! attempt (see the `metrics` feature's `MetricsListener` for a listener
//! that makes metrics of them).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::classify::ErrorClass;
use crate::key::Key;
use crate::rate_limit::TokenUsage;

mod attempt;
mod models;

pub(crate) use self::attempt::{model_of, Attempt, RequestSpan};
use self::models::ModelNames;

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls fail fast without reaching the provider.
    Open,
    /// A set number of probe calls may pass to test the provider.
    HalfOpen,
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        })
    }
}

/// One thing a layer did.
///
/// Every event names the [`Key`] it concerns and the model, when known:
/// the model a [`ByModel`](crate::key::ByModel) key names
/// ([`Key::model`]), else, while the events are observed (a listener is
/// set, or a `tracing` subscriber wants the crate's spans), the body's
/// `"model"` as the limiter's estimator reads it. The retry layer's events
/// take both from the failed attempt, as the rate limiter below reported
/// it (`None` without one).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The limiter holds a request until the window has room.
    RateLimitWait {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// How long it will wait (the earliest admission).
        wait: Duration,
    },
    /// A request that waited was admitted.
    RateLimitAdmitted {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// How long it waited.
        waited: Duration,
    },
    /// A request that waited for the limiter left before it was admitted:
    /// dropped by its caller, refused on a gate past the bound, or its
    /// inner service failed. With [`RateLimitAdmitted`](Event::RateLimitAdmitted)
    /// it ends every [`RateLimitWait`](Event::RateLimitWait), so that
    /// waits minus both is the number waiting.
    RateLimitWaitEnded {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// How long it had waited.
        waited: Duration,
    },
    /// The provider answered 429 (or another rate-limit signal).
    RateLimitedResponse {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// Its class (rate limited, slow down, quota exhausted).
        class: ErrorClass,
        /// The wait the server asked for.
        retry_after: Option<Duration>,
    },
    /// The limiter changed its view of a limit from response headers.
    LimitLearned {
        /// The key whose limit changed.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// `"requests"`, `"tokens"`, `"input_tokens"` or `"output_tokens"`.
        dimension: &'static str,
        /// The limit now in force.
        limit: u64,
        /// What the provider says remains.
        remaining: Option<u64>,
    },
    /// A response said what remains of a limit (`x-ratelimit-remaining-*`,
    /// `anthropic-ratelimit-*-remaining`). Reported only while the events
    /// are observed (see [`Event`]).
    QuotaReported {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// `"requests"`, `"tokens"`, `"input_tokens"` or `"output_tokens"`.
        dimension: &'static str,
        /// What the provider says remains.
        remaining: u64,
        /// The limit it reports, if any.
        limit: Option<u64>,
    },
    /// A quota is exhausted: calls of the key stop until the given time.
    QuotaExhausted {
        /// The key out of quota.
        key: &'a Key,
        /// The model, when known.
        model: Option<&'a str>,
        /// How long until the quota resets, when known.
        until: Option<Duration>,
    },
    /// The retry layer will send the request again.
    RetryScheduled {
        /// The failed attempt's key, as the rate limiter below it
        /// reported it (`None` without one).
        key: Option<&'a Key>,
        /// The failed attempt's model, when known.
        model: Option<&'a str>,
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The class of the failure that caused it.
        class: ErrorClass,
        /// The wait before it.
        wait: Duration,
        /// Whether the server chose the wait (`Retry-After`).
        server_chose: bool,
    },
    /// The retry layer stopped retrying.
    RetryGaveUp {
        /// The failed attempt's key, as the rate limiter below it
        /// reported it (`None` without one).
        key: Option<&'a Key>,
        /// The failed attempt's model, when known.
        model: Option<&'a str>,
        /// Attempts made.
        attempts: u32,
        /// The class of the last failure.
        class: ErrorClass,
        /// Why: `"max_attempts"`, `"not_retryable"`, `"budget"`,
        /// `"deadline"`, `"retry_after_too_long"`.
        reason: &'static str,
    },
    /// A rate-limit response closed the key's gate: no request of the key
    /// is admitted before it opens (requests already waiting move behind
    /// it).
    GateClosed {
        /// The key whose gate closed.
        key: &'a Key,
        /// The model, when known.
        model: Option<&'a str>,
        /// How long the gate stays closed, from now.
        until: Duration,
    },
    /// A request was refused at once because it would wait on its key's
    /// gate longer than the limiter's bound (`max_gate_wait`); it failed
    /// with a rate-limit timeout carrying the wait.
    GateWaitRefused {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// How long it would have waited.
        wait: Duration,
    },
    /// A circuit breaker changed state.
    CircuitTransition {
        /// The breaker's key.
        key: &'a Key,
        /// The model the key names ([`Key::model`]), if any: a breaker
        /// belongs to its key, not to one request.
        model: Option<&'a str>,
        /// The state before.
        from: CircuitState,
        /// The state after.
        to: CircuitState,
        /// The class that caused an opening, if any.
        class: Option<ErrorClass>,
    },
    /// An attempt the rate limiter sent ended: its response's body ended
    /// (read to its end, failed midway or dropped), or it failed before a
    /// response. Reported only while the events are observed (see
    /// [`Event`]), once per attempt.
    AttemptEnded {
        /// The request's key.
        key: &'a Key,
        /// The request's model, when known.
        model: Option<&'a str>,
        /// From the send to the end of the response's body (or the
        /// failure); the wait for the limiter does not count.
        duration: Duration,
        /// The failure's class (a failed response, a transport error, a
        /// stream that failed midway); `None` for a success, also for a
        /// body its caller dropped before its end.
        class: Option<ErrorClass>,
        /// The token usage the response reported, if any.
        usage: Option<TokenUsage>,
    },
}

type Listener = dyn Fn(&Event<'_>) + Send + Sync;

/// Where a layer reports its [`Event`]s; cheap to clone, clones share the
/// listener and the [`Counters`]. Give one `Events` to every layer of a
/// stack to get one summary for all of them.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_llm_resilience::events::{Event, Events};
/// use tower_llm_resilience::ErrorClass;
///
/// let retries = Arc::new(AtomicU32::new(0));
/// let seen = retries.clone();
/// let events = Events::new().with_listener(move |event| {
///     if let Event::RetryScheduled { .. } = event {
///         seen.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// // A layer given a clone reports to the same listener and counters.
/// let layer_events = events.clone();
/// layer_events.emit(Event::RetryScheduled {
///     key: None,
///     model: None,
///     attempt: 2,
///     class: ErrorClass::Overloaded,
///     wait: Duration::from_millis(500),
///     server_chose: false,
/// });
/// assert_eq!(retries.load(Ordering::Relaxed), 1);
/// assert_eq!(events.counters().snapshot().retries, 1);
/// ```
#[derive(Clone, Default)]
pub struct Events {
    listener: Option<Arc<Listener>>,
    counters: Arc<Counters>,
    models: Arc<ModelNames>,
}

impl Events {
    /// A handle with no listener and fresh counters.
    pub fn new() -> Self {
        Events::default()
    }

    /// Calls `listener` for every event (on the task that caused it: keep it
    /// quick and non-blocking).
    pub fn with_listener(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The counters this handle adds to.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Whether a listener is set: events reported only while observed
    /// ([`Event::AttemptEnded`], [`Event::QuotaReported`]) go out, and
    /// the model is read from requests that do not name it in their key.
    pub fn has_listener(&self) -> bool {
        self.listener.is_some()
    }

    /// The key that names `model`, shared by every request for it: no
    /// allocation once a model was seen (up to a bound of names).
    pub(crate) fn model_key(&self, model: &str) -> Key {
        self.models.get(model)
    }

    /// Reports one event.
    pub fn emit(&self, event: Event<'_>) {
        self.counters.count(&event);
        trace(&event);
        if let Some(listener) = &self.listener {
            listener(&event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("listener", &self.listener.is_some())
            .field("counters", &self.counters)
            .finish()
    }
}

fn trace(event: &Event<'_>) {
    use tracing::{debug, info, warn};
    const T: &str = "tower_llm_resilience";
    match *event {
        Event::RateLimitWait { key, model, wait } => {
            debug!(target: T, %key, model, wait_ms = wait.as_millis() as u64, "rate limit: waiting")
        }
        Event::RateLimitAdmitted { key, model, waited } => {
            debug!(target: T, %key, model, waited_ms = waited.as_millis() as u64, "rate limit: admitted")
        }
        Event::RateLimitWaitEnded { key, model, waited } => debug!(
            target: T, %key, model, waited_ms = waited.as_millis() as u64,
            "rate limit: left the queue before its admission"
        ),
        Event::RateLimitedResponse {
            key,
            model,
            class,
            retry_after,
        } => info!(
            target: T, %key, model, %class, retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "provider rate-limited a request"
        ),
        Event::LimitLearned {
            key,
            model,
            dimension,
            limit,
            remaining,
        } => {
            debug!(target: T, %key, model, dimension, limit, remaining, "rate limit learned")
        }
        Event::QuotaReported {
            key,
            model,
            dimension,
            remaining,
            limit,
        } => tracing::trace!(
            target: T, %key, model, dimension, remaining, limit, "rate limit: provider's remaining quota"
        ),
        Event::QuotaExhausted { key, model, until } => warn!(
            target: T, %key, model, until_s = until.map(|d| d.as_secs()), "quota exhausted"
        ),
        Event::GateClosed { key, model, until } => info!(
            target: T, %key, model, until_ms = until.as_millis() as u64, "rate limit: gate closed"
        ),
        Event::GateWaitRefused { key, model, wait } => warn!(
            target: T, %key, model, wait_ms = wait.as_millis() as u64,
            "rate limit: refused a wait on the gate longer than its bound"
        ),
        Event::RetryScheduled {
            key,
            model,
            attempt,
            class,
            wait,
            server_chose,
        } => debug!(
            target: T, key = key.map(tracing::field::display), model, attempt, %class,
            wait_ms = wait.as_millis() as u64, server_chose, "retry scheduled"
        ),
        Event::RetryGaveUp {
            key,
            model,
            attempts,
            class,
            reason,
        } => info!(
            target: T, key = key.map(tracing::field::display), model, attempts, %class, reason,
            "retry gave up"
        ),
        Event::CircuitTransition {
            key,
            model,
            from,
            to,
            class,
        } => warn!(
            target: T, %key, model, %from, %to, class = class.map(ErrorClass::as_str),
            "circuit breaker transition"
        ),
        Event::AttemptEnded {
            key,
            model,
            duration,
            class,
            usage,
        } => tracing::trace!(
            target: T, %key, model, duration_ms = duration.as_millis() as u64,
            class = class.map(ErrorClass::as_str),
            input_tokens = usage.map(|u| u.input_tokens),
            output_tokens = usage.map(|u| u.output_tokens),
            "attempt ended"
        ),
    }
}

/// Running totals of what the layers did, for a run's summary. All counts
/// are monotonic; read them with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    rate_limit_waits: AtomicU64,
    rate_limit_wait_nanos: AtomicU64,
    rate_limited_responses: AtomicU64,
    limits_learned: AtomicU64,
    quota_exhausted: AtomicU64,
    retries: AtomicU64,
    retries_server_chose: AtomicU64,
    gave_up: AtomicU64,
    circuit_opened: AtomicU64,
    gates_closed: AtomicU64,
    gate_waits_refused: AtomicU64,
}

impl Counters {
    fn count(&self, event: &Event<'_>) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Relaxed);
        };
        match *event {
            Event::RateLimitWait { .. } => add(&self.rate_limit_waits, 1),
            Event::RateLimitAdmitted { waited, .. } => add(
                &self.rate_limit_wait_nanos,
                u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            ),
            Event::RateLimitedResponse { .. } => add(&self.rate_limited_responses, 1),
            Event::LimitLearned { .. } => add(&self.limits_learned, 1),
            Event::QuotaExhausted { .. } => add(&self.quota_exhausted, 1),
            Event::GateClosed { .. } => add(&self.gates_closed, 1),
            Event::GateWaitRefused { .. } => add(&self.gate_waits_refused, 1),
            Event::RetryScheduled { server_chose, .. } => {
                add(&self.retries, 1);
                if server_chose {
                    add(&self.retries_server_chose, 1);
                }
            }
            Event::RetryGaveUp { .. } => add(&self.gave_up, 1),
            Event::CircuitTransition { to, .. } => {
                if to == CircuitState::Open {
                    add(&self.circuit_opened, 1);
                }
            }
            // Reported only while observed: not in the summary, which
            // counts the same whether or not anyone listens.
            Event::RateLimitWaitEnded { .. }
            | Event::QuotaReported { .. }
            | Event::AttemptEnded { .. } => {}
        }
    }

    /// The totals now.
    pub fn snapshot(&self) -> Summary {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Summary {
            rate_limit_waits: get(&self.rate_limit_waits),
            rate_limit_wait_time: Duration::from_nanos(get(&self.rate_limit_wait_nanos)),
            rate_limited_responses: get(&self.rate_limited_responses),
            limits_learned: get(&self.limits_learned),
            quota_exhausted: get(&self.quota_exhausted),
            retries: get(&self.retries),
            retries_server_chose: get(&self.retries_server_chose),
            gave_up: get(&self.gave_up),
            circuit_opened: get(&self.circuit_opened),
            gates_closed: get(&self.gates_closed),
            gate_waits_refused: get(&self.gate_waits_refused),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Requests the limiter held back.
    pub rate_limit_waits: u64,
    /// Total time requests spent waiting for the limiter.
    pub rate_limit_wait_time: Duration,
    /// Rate-limit responses (429s) seen.
    pub rate_limited_responses: u64,
    /// Limit changes learned from headers.
    pub limits_learned: u64,
    /// Quota-exhausted signals seen.
    pub quota_exhausted: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Retries whose wait the server chose.
    pub retries_server_chose: u64,
    /// Requests the retry layer gave up on.
    pub gave_up: u64,
    /// Times a circuit breaker opened.
    pub circuit_opened: u64,
    /// Times a rate-limit response closed a key's gate.
    pub gates_closed: u64,
    /// Requests refused because they would wait on a gate longer than the
    /// limiter's bound.
    pub gate_waits_refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn listener_and_counters_see_every_event() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let events =
            Events::new().with_listener(move |e| log.lock().unwrap().push(format!("{e:?}")));
        let key = Key::from_static("k");
        let clone = events.clone();
        clone.emit(Event::RateLimitWait {
            key: &key,
            model: None,
            wait: Duration::from_secs(1),
        });
        clone.emit(Event::RateLimitAdmitted {
            key: &key,
            model: Some("gpt-4o"),
            waited: Duration::from_millis(1500),
        });
        events.emit(Event::RetryScheduled {
            key: Some(&key),
            model: None,
            attempt: 2,
            class: ErrorClass::RateLimited,
            wait: Duration::from_secs(1),
            server_chose: true,
        });
        events.emit(Event::CircuitTransition {
            key: &key,
            model: None,
            from: CircuitState::Closed,
            to: CircuitState::Open,
            class: Some(ErrorClass::ServerError),
        });
        let s = events.counters().snapshot();
        assert_eq!(s.rate_limit_waits, 1);
        assert_eq!(s.rate_limit_wait_time, Duration::from_millis(1500));
        assert_eq!(
            (s.retries, s.retries_server_chose, s.circuit_opened),
            (1, 1, 1)
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
    }
}
