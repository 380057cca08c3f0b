use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Config, FailureWindow, MAX_OPEN};
use super::outcome::{CallOutcome, OutcomeKind};
use super::window::{Outcomes, Totals};
use crate::classify::ErrorClass;
use crate::events::CircuitState;

/// The state machine of one breaker, with no tower and no clock of its own:
/// every method that depends on time takes `now`.
///
/// - **Closed**: [`try_acquire`](Circuit::try_acquire) always admits; each
///   [`on_result`](Circuit::on_result) is recorded in the window; once the
///   window holds the minimum number of calls and the failure rate (or the
///   slow-call rate) reaches its threshold, the circuit opens.
/// - **Open**: calls are rejected with the time left, until the open
///   duration has passed; the first call after it moves the circuit to
///   half-open (as Resilience4j does without its automatic transition).
/// - **Half-open**: [`Config::half_open_probes`] probes are admitted, the
///   rest rejected (with the time until the earliest probe's deadline);
///   one failed (or slow) probe opens the circuit again, with the open
///   duration grown by [`Config::open_backoff`]; when all probes succeeded
///   it closes. A probe whose outcome says nothing (a 400, a dropped call:
///   [`release`](Circuit::release)) gives its slot back. A probe still
///   unanswered [`Config::probe_timeout`] after it was admitted has failed
///   (class [`ErrorClass::Timeout`]): the circuit opens again as for a
///   failed probe, which frees every slot, and the probe's late outcome
///   belongs to an old generation and is ignored. There is no timer: the
///   deadlines are checked by [`try_acquire`](Circuit::try_acquire) and
///   [`on_result`](Circuit::on_result), at their `now`.
/// - A [`CallOutcome::trip`] (quota exhausted, invalid API key) opens it at
///   once from any state, for the time the outcome carries, at most
///   [`Config::max_trip_open`] (1 h by default); then it half-opens as
///   usual.
///
/// Every transition starts a new generation and clears the window; the
/// outcome of a call admitted in an earlier generation is not recorded
/// (a slow call admitted before the circuit opened does not count as a
/// probe), except a trip, which always applies.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_llm_resilience::circuit_breaker::{Circuit, Config, CallOutcome, FailureWindow};
/// use tower_llm_resilience::events::CircuitState;
/// use tower_llm_resilience::ErrorClass;
///
/// let config = Config::new().window(FailureWindow::Count(4)).minimum_calls(4);
/// let now = Instant::now();
/// let mut circuit = Circuit::new(config, now);
/// for _ in 0..4 {
///     let (permit, _) = circuit.try_acquire(now);
///     let failure = CallOutcome::failure(ErrorClass::Overloaded, Duration::from_millis(80));
///     circuit.on_result(permit.unwrap(), failure, now);
/// }
/// assert_eq!(circuit.state(), CircuitState::Open);
/// let (rejected, _) = circuit.try_acquire(now);
/// assert_eq!(rejected.unwrap_err().retry_after(), Some(Duration::from_secs(10)));
/// ```
#[derive(Debug)]
pub struct Circuit {
    config: Config,
    state: State,
    window: Outcomes,
    generation: u64,
    /// Trips by the rates since the circuit last closed (for the backoff).
    trips: u32,
    last_failure: ErrorClass,
    /// The half-open probes in flight: `(slot, deadline)`. Empty in the
    /// other states; its capacity is kept from one half-open state to the
    /// next.
    probes: Vec<(u32, Instant)>,
    /// The slot number of the next probe of this generation.
    next_slot: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, class: ErrorClass },
    HalfOpen { succeeded: u32, class: ErrorClass },
}

/// Leave to make one call, from [`Circuit::try_acquire`]; give it back with
/// [`Circuit::on_result`] or [`Circuit::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
    probe: bool,
    /// Which probe of its generation (0 for a call of the closed state).
    slot: u32,
}

impl Permit {
    /// A permit of the closed state of generation `generation`, made
    /// without the lock (the service's fast path).
    pub(crate) const fn closed(generation: u64) -> Self {
        Permit {
            generation,
            probe: false,
            slot: 0,
        }
    }

    /// The generation it belongs to.
    pub(crate) const fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the call is a half-open probe.
    pub const fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Why a call may not go now, from [`Circuit::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    class: ErrorClass,
    retry_after: Option<Duration>,
}

impl Rejected {
    /// Why the circuit opened: [`ErrorClass::QuotaExhausted`],
    /// [`ErrorClass::Auth`], or the class of the failure that tripped it
    /// ([`ErrorClass::Timeout`] when the slow-call rate did).
    pub const fn class(&self) -> ErrorClass {
        self.class
    }

    /// How long until the circuit may let a probe through: while open, the
    /// time left; while half-open with every probe slot taken, the time
    /// until the earliest probe's deadline ([`Config::probe_timeout`]
    /// after it was admitted, the latest instant at which a slot frees or
    /// the circuit opens again), but at most
    /// [`Config::open_duration`]: probes usually answer within seconds,
    /// and a caller told to come back in five minutes would miss the
    /// recovery. A caller that holds work until the circuit may accept it
    /// (a batch driver) can sleep that long. `None` only when no deadline
    /// is known.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// A change of state, for events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// The class that opened it (`Some` when `to` is open).
    pub class: Option<ErrorClass>,
    /// How long it stays open (`Some` when `to` is open).
    pub open_for: Option<Duration>,
}

impl Circuit {
    /// A closed circuit with `config`; `now` starts a time window.
    pub fn new(config: Config, now: Instant) -> Self {
        Circuit {
            config,
            state: State::Closed,
            window: Outcomes::new(config.window, now),
            generation: 0,
            trips: 0,
            last_failure: ErrorClass::ServerError,
            probes: Vec::new(),
            next_slot: 0,
        }
    }

    /// Its config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state now (an open circuit whose time is up stays open until the
    /// next [`try_acquire`](Circuit::try_acquire); a half-open circuit with
    /// a probe past its deadline stays half-open until the next
    /// `try_acquire` or [`on_result`](Circuit::on_result)).
    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// The number of transitions so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// State, generation and whether the window is full of plain
    /// successes, in one word, for the service's lock-free paths.
    pub(crate) fn packed(&self) -> u64 {
        let code = match self.state {
            State::Closed => CLOSED,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        };
        let clean = if self.state == State::Closed && self.window.is_full_and_clean() {
            CLEAN
        } else {
            0
        };
        self.generation << 3 | clean | code
    }

    /// Asks to make one call now. An open circuit whose time is up turns
    /// half-open here, and a half-open circuit with a probe past its
    /// deadline opens again here (the transition is returned).
    pub fn try_acquire(&mut self, now: Instant) -> (Result<Permit, Rejected>, Option<Transition>) {
        if let Some(transition) = self.expire_probes(now) {
            let rejected = match self.state {
                State::Open { until, class } => Rejected {
                    class,
                    retry_after: Some(until.saturating_duration_since(now)),
                },
                _ => unreachable!("an expired probe opens the circuit"),
            };
            return (Err(rejected), Some(transition));
        }
        let mut transition = None;
        if let State::Open { until, class } = self.state {
            if now < until {
                let rejected = Rejected {
                    class,
                    retry_after: Some(until - now),
                };
                return (Err(rejected), None);
            }
            transition = Some(self.set(State::HalfOpen {
                succeeded: 0,
                class,
            }));
        }
        let result = match self.state {
            State::Closed => Ok(Permit::closed(self.generation)),
            State::HalfOpen { succeeded, class } => {
                let in_flight = u32::try_from(self.probes.len()).unwrap_or(u32::MAX);
                if in_flight.saturating_add(succeeded) < self.config.half_open_probes {
                    let slot = self.next_slot;
                    self.next_slot = slot.wrapping_add(1);
                    self.probes
                        .push((slot, deadline(now, self.config.probe_timeout)));
                    Ok(Permit {
                        generation: self.generation,
                        probe: true,
                        slot,
                    })
                } else {
                    // Probes usually decide within an open interval; their
                    // deadline is only the latest a slot frees.
                    let earliest = self.probes.iter().map(|&(_, d)| d).min();
                    Err(Rejected {
                        class,
                        retry_after: earliest.map(|d| {
                            d.saturating_duration_since(now)
                                .min(self.config.open_duration)
                        }),
                    })
                }
            }
            State::Open { .. } => unreachable!("an open circuit turned half-open above"),
        };
        (result, transition)
    }

    /// A half-open circuit one of whose probes is still unanswered at its
    /// deadline opens again: that probe failed with a timeout. The other
    /// probes' outcomes then belong to an old generation.
    fn expire_probes(&mut self, now: Instant) -> Option<Transition> {
        if !matches!(self.state, State::HalfOpen { .. }) {
            return None;
        }
        if self.probes.iter().any(|&(_, d)| d <= now) {
            return self.open_by_rates(ErrorClass::Timeout, now);
        }
        None
    }

    /// Forgets the deadline of the probe `permit` admitted.
    fn finish_probe(&mut self, permit: Permit) {
        if let Some(i) = self.probes.iter().position(|&(s, _)| s == permit.slot) {
            self.probes.swap_remove(i);
        }
    }

    /// Records the outcome of the call `permit` allowed, at `now`.
    pub fn on_result(
        &mut self,
        permit: Permit,
        outcome: CallOutcome,
        now: Instant,
    ) -> Option<Transition> {
        self.record(permit, outcome, || now)
    }

    /// [`on_result`](Circuit::on_result) reading the clock only when the
    /// outcome must be placed in time or opens the circuit.
    pub(crate) fn record(
        &mut self,
        permit: Permit,
        outcome: CallOutcome,
        now: impl FnOnce() -> Instant,
    ) -> Option<Transition> {
        if let OutcomeKind::Trip { class, open_for } = outcome.kind {
            return self.trip(class, open_for, now());
        }
        let mut clock = LazyNow::new(now);
        if matches!(self.state, State::HalfOpen { .. }) {
            // A probe past its deadline failed, whatever answers after it
            // (this one included).
            if let Some(transition) = self.expire_probes(clock.get()) {
                return Some(transition);
            }
        }
        if permit.generation != self.generation {
            return None;
        }
        let slow_on = self.config.slow_calls_enabled();
        let (failure, slow, class) = match outcome.kind {
            OutcomeKind::Success { elapsed } => (
                false,
                slow_on && elapsed > self.config.slow_call_duration,
                None,
            ),
            OutcomeKind::Failure { class, elapsed } => (
                true,
                slow_on && elapsed > self.config.slow_call_duration,
                Some(class),
            ),
            OutcomeKind::Ignored => {
                self.release(permit);
                return None;
            }
            OutcomeKind::Trip { .. } => unreachable!("handled above"),
        };
        if let Some(class) = class {
            self.last_failure = class;
        }
        match &mut self.state {
            State::Closed => {
                let at = matches!(self.config.window, FailureWindow::Time(_)).then(|| clock.get());
                let totals = self.window.record(failure, slow, at);
                let tripped = self.tripped(totals)?;
                self.open_by_rates(tripped, clock.get())
            }
            State::HalfOpen { succeeded, .. } => {
                // Of this generation: a probe. Its deadline goes.
                if let Some(i) = self.probes.iter().position(|&(s, _)| s == permit.slot) {
                    self.probes.swap_remove(i);
                }
                if failure || slow {
                    let class = if failure {
                        self.last_failure
                    } else {
                        ErrorClass::Timeout
                    };
                    self.open_by_rates(class, clock.get())
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_probes {
                        self.trips = 0;
                        Some(self.set(State::Closed))
                    } else {
                        None
                    }
                }
            }
            State::Open { .. } => None,
        }
    }

    /// Gives back the slot of a call that ended without an outcome (its
    /// future was dropped). Only a half-open probe holds a slot.
    pub fn release(&mut self, permit: Permit) {
        if permit.generation != self.generation || !permit.probe {
            return;
        }
        if matches!(self.state, State::HalfOpen { .. }) {
            self.finish_probe(permit);
        }
    }

    /// Whether the window's totals open the circuit, and with which class.
    fn tripped(&self, t: Totals) -> Option<ErrorClass> {
        let minimum = self.config.minimum_calls.min(self.window.capacity()).max(1);
        if t.calls < minimum {
            return None;
        }
        let rate = |n: u32| f64::from(n) / f64::from(t.calls);
        if let Some(threshold) = self.config.failure_rate {
            if t.failures > 0 && rate(t.failures) >= threshold {
                return Some(self.last_failure);
            }
        }
        if let Some(threshold) = self.config.slow_call_rate {
            if t.slow > 0 && rate(t.slow) >= threshold {
                return Some(ErrorClass::Timeout);
            }
        }
        None
    }

    fn open_by_rates(&mut self, class: ErrorClass, now: Instant) -> Option<Transition> {
        self.trips = self.trips.saturating_add(1);
        let open_for = self.open_duration();
        Some(self.open(class, open_for, now))
    }

    /// The open duration of the current trip, grown by the backoff.
    fn open_duration(&self) -> Duration {
        let c = &self.config;
        let base = c.open_duration;
        if c.backoff_factor <= 1.0 || self.trips <= 1 {
            return base;
        }
        let exponent = i32::try_from(self.trips - 1).unwrap_or(i32::MAX);
        let grown = base.as_secs_f64() * c.backoff_factor.powi(exponent);
        let cap = c.backoff_max.max(base);
        Duration::try_from_secs_f64(grown).map_or(cap, |d| d.min(cap))
    }

    fn trip(&mut self, class: ErrorClass, open_for: Duration, now: Instant) -> Option<Transition> {
        // A server-given time (a quota reset a day away) never sticks: the
        // circuit probes again after `max_trip_open` at the latest.
        let open_for = open_for.min(self.config.max_trip_open).min(MAX_OPEN);
        if let State::Open { until, .. } = &mut self.state {
            // Already open: keep it open at least until this trip ends.
            let new_until = deadline(now, open_for);
            if new_until > *until {
                *until = new_until;
            }
            return None;
        }
        Some(self.open(class, open_for, now))
    }

    fn open(&mut self, class: ErrorClass, open_for: Duration, now: Instant) -> Transition {
        let mut t = self.set(State::Open {
            until: deadline(now, open_for),
            class,
        });
        t.class = Some(class);
        t.open_for = Some(open_for);
        t
    }

    fn set(&mut self, state: State) -> Transition {
        let from = self.state();
        self.state = state;
        self.generation = self.generation.wrapping_add(1) & (u64::MAX >> 3);
        self.window.reset();
        self.probes.clear();
        self.next_slot = 0;
        Transition {
            from,
            to: self.state(),
            class: None,
            open_for: None,
        }
    }
}

/// Reads the clock at most once, when first asked.
struct LazyNow<F> {
    read: Option<F>,
    at: Option<Instant>,
}

impl<F: FnOnce() -> Instant> LazyNow<F> {
    fn new(read: F) -> Self {
        LazyNow {
            read: Some(read),
            at: None,
        }
    }

    fn get(&mut self) -> Instant {
        if let Some(at) = self.at {
            return at;
        }
        let at = match self.read.take() {
            Some(read) => read(),
            None => Instant::now(),
        };
        self.at = Some(at);
        at
    }
}

const CLOSED: u64 = 0;
const CLEAN: u64 = 4;

/// Whether a packed word says closed.
pub(crate) const fn is_closed(packed: u64) -> bool {
    packed & 3 == CLOSED
}

/// Whether a packed word says closed, with a count window full of plain
/// successes: one more plain success of the same generation would change
/// nothing (every slot of the ring holds the same flags, so which one it
/// overwrites does not matter), and can be skipped without the lock.
pub(crate) const fn is_closed_and_clean(packed: u64, generation: u64) -> bool {
    packed & 3 == CLOSED && packed & CLEAN != 0 && packed >> 3 == generation
}

/// The generation of a packed word.
pub(crate) const fn generation_of(packed: u64) -> u64 {
    packed >> 3
}

fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit open ({})", self.class)
    }
}
