//! Model-based test of the pure state machine: random configs, random
//! sequences of calls, outcomes, dropped calls and time steps, checked
//! step by step against a small reference model written from the spec
//! (whole history kept, rates recomputed from scratch; probe deadlines and
//! the cap on trips included).

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_llm_resilience::circuit_breaker::{CallOutcome, Circuit, Config, FailureWindow, Permit};
use tower_llm_resilience::events::CircuitState;
use tower_llm_resilience::ErrorClass;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Success,
    Failure(ErrorClass),
    Ignored,
    Trip(ErrorClass, u64),
}

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    /// Completes the in-flight call at `index % len` with `kind` after
    /// `elapsed_ms`.
    Complete(usize, Kind, u64),
    /// Drops the in-flight call at `index % len`.
    Drop(usize),
    Advance(u64),
}

#[derive(Clone, Copy, Debug)]
struct Params {
    window: FailureWindow,
    minimum: u32,
    failure_rate: f64,
    slow_rate: Option<f64>,
    slow_ms: u64,
    open_ms: u64,
    factor: f64,
    max_ms: u64,
    probes: u32,
    probe_timeout_ms: u64,
    max_trip_ms: u64,
}

impl Params {
    fn config(&self) -> Config {
        let mut c = Config::new()
            .window(self.window)
            .minimum_calls(self.minimum)
            .failure_rate(self.failure_rate)
            .slow_call_duration(Duration::from_millis(self.slow_ms))
            .open_duration(Duration::from_millis(self.open_ms))
            .open_backoff(self.factor, Duration::from_millis(self.max_ms))
            .half_open_probes(self.probes)
            .probe_timeout(Duration::from_millis(self.probe_timeout_ms))
            .max_trip_open(Duration::from_millis(self.max_trip_ms));
        if let Some(rate) = self.slow_rate {
            c = c.slow_call_rate(rate);
        }
        c
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MState {
    Closed,
    Open { until: Instant, class: ErrorClass },
    HalfOpen { ok: u32, class: ErrorClass },
}

/// The reference: the spec, written plainly.
struct Model {
    p: Params,
    origin: Instant,
    state: MState,
    /// `(time, failure, slow)` of every outcome recorded since the last
    /// transition.
    history: Vec<(Instant, bool, bool)>,
    epoch: u64,
    trips: u32,
    last_failure: ErrorClass,
    /// The probes in flight: `(id, deadline)`.
    probes: Vec<(u64, Instant)>,
    next_id: u64,
}

#[derive(Clone, Copy, Debug)]
struct MCall {
    epoch: u64,
    probe: bool,
    id: u64,
}

impl Model {
    fn public(&self) -> CircuitState {
        match self.state {
            MState::Closed => CircuitState::Closed,
            MState::Open { .. } => CircuitState::Open,
            MState::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn go(&mut self, state: MState) {
        self.state = state;
        self.epoch += 1;
        self.history.clear();
        self.probes.clear();
    }

    /// A probe unanswered at its deadline has failed with a timeout.
    fn expire(&mut self, now: Instant) -> bool {
        if matches!(self.state, MState::HalfOpen { .. })
            && self.probes.iter().any(|&(_, d)| d <= now)
        {
            self.trips += 1;
            self.open(ErrorClass::Timeout, self.open_for(), now);
            return true;
        }
        false
    }

    /// `base × factor^(trips − 1)`, capped at `max(max, base)`.
    fn open_for(&self) -> Duration {
        let base = Duration::from_millis(self.p.open_ms);
        let cap = Duration::from_millis(self.p.max_ms).max(base);
        if self.trips <= 1 {
            return base;
        }
        let grown = base.as_secs_f64() * self.p.factor.powi(self.trips as i32 - 1);
        Duration::from_secs_f64(grown).min(cap)
    }

    fn acquire(&mut self, now: Instant) -> Result<MCall, Option<Duration>> {
        if self.expire(now) {
            let MState::Open { until, .. } = self.state else {
                unreachable!()
            };
            return Err(Some(until - now));
        }
        if let MState::Open { until, class } = self.state {
            if now < until {
                return Err(Some(until - now));
            }
            self.go(MState::HalfOpen { ok: 0, class });
        }
        let epoch = self.epoch;
        match self.state {
            MState::Closed => Ok(MCall {
                epoch,
                probe: false,
                id: 0,
            }),
            MState::HalfOpen { ok, .. } => {
                if self.probes.len() as u32 + ok < self.p.probes {
                    let id = self.next_id;
                    self.next_id += 1;
                    let deadline = now + Duration::from_millis(self.p.probe_timeout_ms);
                    self.probes.push((id, deadline));
                    Ok(MCall {
                        epoch,
                        probe: true,
                        id,
                    })
                } else {
                    let earliest = self.probes.iter().map(|&(_, d)| d).min().unwrap();
                    // at most the open duration: probes usually decide sooner
                    Err(Some(
                        (earliest - now).min(Duration::from_millis(self.p.open_ms)),
                    ))
                }
            }
            MState::Open { .. } => unreachable!(),
        }
    }

    fn window_totals(&self, now: Instant) -> (u32, u32, u32) {
        let in_window: Vec<_> = match self.p.window {
            FailureWindow::Count(n) => {
                let skip = self.history.len().saturating_sub(n as usize);
                self.history[skip..].to_vec()
            }
            FailureWindow::Time(d) => {
                let bucket = (d / 10).as_nanos();
                let idx = |t: Instant| (t - self.origin).as_nanos() / bucket;
                let current = idx(now);
                self.history
                    .iter()
                    .filter(|(t, ..)| idx(*t) + 9 >= current)
                    .copied()
                    .collect()
            }
        };
        let calls = in_window.len() as u32;
        let failures = in_window.iter().filter(|e| e.1).count() as u32;
        let slow = in_window.iter().filter(|e| e.2).count() as u32;
        (calls, failures, slow)
    }

    fn open(&mut self, class: ErrorClass, open_for: Duration, now: Instant) {
        self.go(MState::Open {
            until: now + open_for,
            class,
        });
    }

    fn complete(&mut self, call: MCall, kind: Kind, elapsed: Duration, now: Instant) {
        if let Kind::Trip(class, ms) = kind {
            let open_for = Duration::from_millis(ms.min(self.p.max_trip_ms));
            let until = now + open_for;
            match &mut self.state {
                MState::Open { until: u, .. } => *u = (*u).max(until),
                _ => self.open(class, open_for, now),
            }
            return;
        }
        if self.expire(now) {
            return;
        }
        if call.epoch != self.epoch {
            return;
        }
        let slow = self.p.slow_rate.is_some() && elapsed > Duration::from_millis(self.p.slow_ms);
        let failure = match kind {
            Kind::Success => false,
            Kind::Failure(class) => {
                self.last_failure = class;
                true
            }
            Kind::Ignored => {
                self.drop_call(call);
                return;
            }
            Kind::Trip(..) => unreachable!(),
        };
        match self.state {
            MState::Closed => {
                self.history.push((now, failure, slow));
                let (calls, failures, slows) = self.window_totals(now);
                let minimum = match self.p.window {
                    FailureWindow::Count(n) => self.p.minimum.min(n),
                    FailureWindow::Time(_) => self.p.minimum,
                };
                if calls < minimum {
                    return;
                }
                let by_failures =
                    failures > 0 && failures as f64 / calls as f64 >= self.p.failure_rate;
                let by_slow = self
                    .p
                    .slow_rate
                    .is_some_and(|r| slows > 0 && slows as f64 / calls as f64 >= r);
                let class = if by_failures {
                    self.last_failure
                } else if by_slow {
                    ErrorClass::Timeout
                } else {
                    return;
                };
                self.trips += 1;
                self.open(class, self.open_for(), now);
            }
            MState::HalfOpen { ref mut ok, .. } => {
                self.probes.retain(|&(id, _)| id != call.id);
                if failure || slow {
                    let class = if failure {
                        self.last_failure
                    } else {
                        ErrorClass::Timeout
                    };
                    self.trips += 1;
                    self.open(class, self.open_for(), now);
                } else {
                    *ok += 1;
                    if *ok == self.p.probes {
                        self.trips = 0;
                        self.go(MState::Closed);
                    }
                }
            }
            MState::Open { .. } => {}
        }
    }

    fn drop_call(&mut self, call: MCall) {
        if call.epoch == self.epoch && call.probe {
            self.probes.retain(|&(id, _)| id != call.id);
        }
    }
}

fn class() -> impl Strategy<Value = ErrorClass> {
    prop_oneof![
        Just(ErrorClass::ServerError),
        Just(ErrorClass::Overloaded),
        Just(ErrorClass::Timeout),
        Just(ErrorClass::Connect),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Success),
        6 => class().prop_map(Kind::Failure),
        2 => Just(Kind::Ignored),
        1 => (prop_oneof![Just(ErrorClass::QuotaExhausted), Just(ErrorClass::Auth)], 1u64..60_000)
            .prop_map(|(c, ms)| Kind::Trip(c, ms)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Acquire),
        5 => (any::<usize>(), kind(), 0u64..3_000).prop_map(|(i, k, e)| Op::Complete(i, k, e)),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => prop_oneof![0u64..500, 0u64..40_000].prop_map(Op::Advance),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (
        prop_oneof![
            (1u32..25).prop_map(FailureWindow::Count),
            (1u64..30).prop_map(|s| FailureWindow::Time(Duration::from_secs(s))),
        ],
        1u32..15,
        prop_oneof![Just(0.2), Just(0.5), Just(1.0)],
        prop_oneof![Just(None), Just(Some(0.5)), Just(Some(1.0))],
        100u64..2_000,
        (
            1u64..20_000,
            prop_oneof![Just(1.0), Just(2.0), Just(1.5)],
            1u64..120_000,
        ),
        (1u32..5, 100u64..60_000, 1u64..120_000),
    )
        .prop_map(
            |(
                window,
                minimum,
                failure_rate,
                slow_rate,
                slow_ms,
                (open_ms, factor, max_ms),
                (probes, probe_timeout_ms, max_trip_ms),
            )| {
                Params {
                    window,
                    minimum,
                    failure_rate,
                    slow_rate,
                    slow_ms,
                    open_ms,
                    factor,
                    max_ms,
                    probes,
                    probe_timeout_ms,
                    max_trip_ms,
                }
            },
        )
}

fn check(p: Params, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let origin = Instant::now();
    let mut now = origin;
    let mut circuit = Circuit::new(p.config(), now);
    let mut model = Model {
        p,
        origin,
        state: MState::Closed,
        history: Vec::new(),
        epoch: 0,
        trips: 0,
        last_failure: ErrorClass::ServerError,
        probes: Vec::new(),
        next_id: 0,
    };
    let mut in_flight: Vec<(Permit, MCall)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire => {
                let (got, _) = circuit.try_acquire(now);
                let want = model.acquire(now);
                match (got, want) {
                    (Ok(permit), Ok(call)) => {
                        prop_assert_eq!(permit.is_probe(), call.probe, "step {}", step);
                        in_flight.push((permit, call));
                    }
                    (Err(rejected), Err(retry_after)) => {
                        prop_assert_eq!(rejected.retry_after(), retry_after, "step {}", step);
                        let want_class = match model.state {
                            MState::Open { class, .. } | MState::HalfOpen { class, .. } => class,
                            MState::Closed => unreachable!("closed never rejects"),
                        };
                        prop_assert_eq!(rejected.class(), want_class, "step {}", step);
                    }
                    (got, want) => {
                        prop_assert!(false, "step {}: got {:?}, model {:?}", step, got, want)
                    }
                }
            }
            Op::Complete(i, kind, elapsed_ms) if !in_flight.is_empty() => {
                let (permit, call) = in_flight.remove(i % in_flight.len());
                let elapsed = Duration::from_millis(elapsed_ms);
                let outcome = match kind {
                    Kind::Success => CallOutcome::success(elapsed),
                    Kind::Failure(c) => CallOutcome::failure(c, elapsed),
                    Kind::Ignored => CallOutcome::ignored(),
                    Kind::Trip(c, ms) => CallOutcome::trip(c, Duration::from_millis(ms)),
                };
                let t = circuit.on_result(permit, outcome, now);
                let before = model.public();
                model.complete(call, kind, elapsed, now);
                if let Some(t) = t {
                    prop_assert_eq!(t.from, before, "step {}", step);
                    prop_assert_eq!(t.to, model.public(), "step {}", step);
                }
            }
            Op::Drop(i) if !in_flight.is_empty() => {
                let (permit, call) = in_flight.remove(i % in_flight.len());
                circuit.release(permit);
                model.drop_call(call);
            }
            Op::Advance(ms) => now += Duration::from_millis(ms),
            Op::Complete(..) | Op::Drop(_) => {}
        }
        prop_assert_eq!(
            circuit.state(),
            model.public(),
            "step {}: {:?}",
            step,
            model.state
        );
        prop_assert_eq!(circuit.generation(), model.epoch, "step {}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn the_breaker_follows_the_model(p in params(), ops in prop::collection::vec(op(), 1..200)) {
        check(p, ops)?;
    }
}

fn closed_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Acquire),
        3 => (any::<usize>(), prop_oneof![Just(Kind::Success), class().prop_map(Kind::Failure)], 0u64..3_000)
            .prop_map(|(i, k, e)| Op::Complete(i, k, e)),
        2 => (0u64..2_000).prop_map(Op::Advance),
    ]
}

fn time_params() -> impl Strategy<Value = Params> {
    (
        1u64..10,
        2u32..12,
        prop_oneof![Just(0.3), Just(0.5), Just(0.7)],
    )
        .prop_map(|(secs, minimum, failure_rate)| Params {
            window: FailureWindow::Time(Duration::from_secs(secs)),
            minimum,
            failure_rate,
            slow_rate: None,
            slow_ms: 1_000,
            open_ms: 5_000,
            factor: 1.0,
            max_ms: 5_000,
            probes: 2,
            probe_timeout_ms: 300_000,
            max_trip_ms: 3_600_000,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Time windows, where what leaves the window decides.
    #[test]
    fn time_windows_follow_the_model(p in time_params(), ops in prop::collection::vec(closed_op(), 1..300)) {
        check(p, ops)?;
    }
}

/// Absurd inputs never panic or overflow.
#[test]
fn absurd_config_and_outcomes() {
    let now = Instant::now();
    let config = Config::new()
        .failure_rate(f64::NAN)
        .slow_call_rate(-1.0)
        .window(FailureWindow::Count(0))
        .minimum_calls(0)
        .open_duration(Duration::MAX)
        .open_backoff(f64::INFINITY, Duration::MAX)
        .half_open_probes(0)
        .quota_open_duration(Duration::MAX);
    let mut c = Circuit::new(config, now);
    for _ in 0..10 {
        let (p, _) = c.try_acquire(now);
        c.on_result(
            p.unwrap(),
            CallOutcome::failure(ErrorClass::ServerError, Duration::MAX),
            now,
        );
    }
    assert_eq!(c.state(), CircuitState::Closed, "a NaN rate never trips");
    let (p, _) = c.try_acquire(now);
    c.on_result(
        p.unwrap(),
        CallOutcome::trip(ErrorClass::QuotaExhausted, Duration::MAX),
        now,
    );
    let (r, _) = c.try_acquire(now);
    let wait = r.unwrap_err().retry_after().unwrap();
    assert!(wait <= Duration::from_secs(7 * 24 * 3600), "{wait:?}");
    let config = Config::new()
        .window(FailureWindow::Time(Duration::ZERO))
        .minimum_calls(1)
        .open_duration(Duration::from_secs(1))
        .open_backoff(1e300, Duration::MAX);
    let mut c = Circuit::new(config, now);
    let mut t = now;
    for _ in 0..100 {
        let (p, _) = c.try_acquire(t);
        if let Ok(p) = p {
            c.on_result(
                p,
                CallOutcome::failure(ErrorClass::ServerError, Duration::ZERO),
                t,
            );
        }
        t += Duration::from_secs(8 * 24 * 3600);
    }
    assert_eq!(c.state(), CircuitState::Open);
}
