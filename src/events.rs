//! What the layers did, for logs, alerts and a run's summary.
//!
//! Every layer reports through an [`Events`] handle: each [`Event`] goes to
//! `tracing` (target `tower_llm_resilience`), to the user's listener when
//! one is set, and into shared [`Counters`]. An `Event` is built only on the
//! paths where something happened (a wait, a 429, a retry, a transition),
//! never on the plain success path, and it borrows instead of cloning.
//! Events carry [`Key`]s, which are names or fingerprints, never an API key.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::classify::ErrorClass;
use crate::key::Key;

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
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The limiter holds a request until the window has room.
    RateLimitWait {
        /// The request's key.
        key: &'a Key,
        /// How long it will wait (the earliest admission).
        wait: Duration,
    },
    /// A request that waited was admitted.
    RateLimitAdmitted {
        /// The request's key.
        key: &'a Key,
        /// How long it waited.
        waited: Duration,
    },
    /// The provider answered 429 (or another rate-limit signal).
    RateLimitedResponse {
        /// The request's key.
        key: &'a Key,
        /// Its class (rate limited, slow down, quota exhausted).
        class: ErrorClass,
        /// The wait the server asked for.
        retry_after: Option<Duration>,
    },
    /// The limiter changed its view of a limit from response headers.
    LimitLearned {
        /// The key whose limit changed.
        key: &'a Key,
        /// `"requests"`, `"tokens"`, `"input_tokens"` or `"output_tokens"`.
        dimension: &'static str,
        /// The limit now in force.
        limit: u64,
        /// What the provider says remains.
        remaining: Option<u64>,
    },
    /// A quota is exhausted: calls of the key stop until the given time.
    QuotaExhausted {
        /// The key out of quota.
        key: &'a Key,
        /// How long until the quota resets, when known.
        until: Option<Duration>,
    },
    /// The retry layer will send the request again.
    RetryScheduled {
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
        /// How long the gate stays closed, from now.
        until: Duration,
    },
    /// A request was refused at once because it would wait on its key's
    /// gate longer than the limiter's bound (`max_gate_wait`); it failed
    /// with a rate-limit timeout carrying the wait.
    GateWaitRefused {
        /// The request's key.
        key: &'a Key,
        /// How long it would have waited.
        wait: Duration,
    },
    /// A circuit breaker changed state.
    CircuitTransition {
        /// The breaker's key.
        key: &'a Key,
        /// The state before.
        from: CircuitState,
        /// The state after.
        to: CircuitState,
        /// The class that caused an opening, if any.
        class: Option<ErrorClass>,
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
        Event::RateLimitWait { key, wait } => {
            debug!(target: T, %key, wait_ms = wait.as_millis() as u64, "rate limit: waiting")
        }
        Event::RateLimitAdmitted { key, waited } => {
            debug!(target: T, %key, waited_ms = waited.as_millis() as u64, "rate limit: admitted")
        }
        Event::RateLimitedResponse {
            key,
            class,
            retry_after,
        } => info!(
            target: T, %key, %class, retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "provider rate-limited a request"
        ),
        Event::LimitLearned {
            key,
            dimension,
            limit,
            remaining,
        } => {
            debug!(target: T, %key, dimension, limit, remaining, "rate limit learned")
        }
        Event::QuotaExhausted { key, until } => warn!(
            target: T, %key, until_s = until.map(|d| d.as_secs()), "quota exhausted"
        ),
        Event::GateClosed { key, until } => info!(
            target: T, %key, until_ms = until.as_millis() as u64, "rate limit: gate closed"
        ),
        Event::GateWaitRefused { key, wait } => warn!(
            target: T, %key, wait_ms = wait.as_millis() as u64,
            "rate limit: refused a wait on the gate longer than its bound"
        ),
        Event::RetryScheduled {
            attempt,
            class,
            wait,
            server_chose,
        } => debug!(
            target: T, attempt, %class, wait_ms = wait.as_millis() as u64, server_chose, "retry scheduled"
        ),
        Event::RetryGaveUp {
            attempts,
            class,
            reason,
        } => {
            info!(target: T, attempts, %class, reason, "retry gave up")
        }
        Event::CircuitTransition {
            key,
            from,
            to,
            class,
        } => warn!(
            target: T, %key, %from, %to, class = class.map(ErrorClass::as_str), "circuit breaker transition"
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
            wait: Duration::from_secs(1),
        });
        clone.emit(Event::RateLimitAdmitted {
            key: &key,
            waited: Duration::from_millis(1500),
        });
        events.emit(Event::RetryScheduled {
            attempt: 2,
            class: ErrorClass::RateLimited,
            wait: Duration::from_secs(1),
            server_chose: true,
        });
        events.emit(Event::CircuitTransition {
            key: &key,
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
