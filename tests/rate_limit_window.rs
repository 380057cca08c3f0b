//! Property test of the pure sliding window: exactness and earliest
//! admission, over arbitrary arrivals, costs, cancellations and gates
//! (a cancel or a gate re-books the waiters behind it in one sweep: they
//! must land exactly where a fresh booking would put them).

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{
    Booking, Costs, Decision, Dimension, Limits, SlidingWindow,
};

#[derive(Clone, Debug)]
enum Op {
    /// A request arrives `gap` ms after the previous op, with these tokens.
    Arrive { gap: u64, tokens: u64 },
    /// The n-th still-pending reservation (modulo) is cancelled.
    Cancel { gap: u64, pick: usize },
    /// A gate closes for `len` ms (a 429's Retry-After).
    Gate { gap: u64, len: u64 },
    /// The n-th live reservation (modulo) is corrected down to `tokens`
    /// (a `TokenUsage` lower than the estimate).
    Correct { gap: u64, pick: usize, tokens: u64 },
    /// A request arrives with a `now` `back` ms before the latest one (two
    /// threads read the clock, and the later reader locks first).
    Late { back: u64, tokens: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..400, 0u64..120).prop_map(|(gap, tokens)| Op::Arrive { gap, tokens }),
        1 => (0u64..400, any::<usize>()).prop_map(|(gap, pick)| Op::Cancel { gap, pick }),
        1 => (0u64..400, 0u64..3_000).prop_map(|(gap, len)| Op::Gate { gap, len }),
        1 => (0u64..400, any::<usize>(), 0u64..120)
            .prop_map(|(gap, pick, tokens)| Op::Correct { gap, pick, tokens }),
        1 => (0u64..5, 0u64..120).prop_map(|(back, tokens)| Op::Late { back, tokens }),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Admitted {
    id: u64,
    at: Instant,
    tokens: u64,
    live: bool,
}

/// Cost of live admissions in `(t - w, t]` for one dimension.
fn used(log: &[Admitted], t: Instant, w: Duration, tokens: bool) -> u64 {
    log.iter()
        .filter(|a| a.live && a.at <= t && a.at + w > t)
        .map(|a| if tokens { a.tokens } else { 1 })
        .sum()
}

/// Whether `tokens` (and one request) fit at `t` beside the live
/// admissions other than `skip`.
fn fits(
    log: &[Admitted],
    skip: u64,
    t: Instant,
    w: Duration,
    limits: (u64, u64),
    tokens: u64,
) -> bool {
    let others: Vec<Admitted> = log.iter().copied().filter(|a| a.id != skip).collect();
    used(&others, t, w, false) < limits.0
        && (tokens == 0 || used(&others, t, w, true) + tokens <= limits.1)
}

/// After a cancel or a gate at `now`: every waiting reservation sits at the
/// earliest instant it fits after the ones before it (and after the gate),
/// as a fresh booking in order would put it. With `strict` false (a
/// correction freed room since: a correction does not re-book the waiters,
/// so they may sit later than the earliest), only the order is checked.
fn rebooked_earliest(
    log: &[Admitted],
    now: Instant,
    gate: Option<Instant>,
    w: Duration,
    limits: (u64, u64),
    strict: bool,
) -> Result<(), TestCaseError> {
    let mut before = now.max(gate.unwrap_or(now));
    let mut booked: Vec<Admitted> = log
        .iter()
        .copied()
        .filter(|a| a.live && a.at <= now)
        .collect();
    let mut waiting: Vec<Admitted> = log
        .iter()
        .copied()
        .filter(|a| a.live && a.at > now)
        .collect();
    waiting.sort_by_key(|a| a.id);
    for a in waiting {
        prop_assert!(
            a.at >= before,
            "{:?} before its predecessor or the gate",
            a.id
        );
        if strict && a.at > before {
            let t = a.at - Duration::from_nanos(1);
            prop_assert!(
                !fits(&booked, a.id, t, w, limits, a.tokens),
                "{:?} could go earlier",
                a.id
            );
        }
        before = a.at;
        booked.push(a);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn never_over_admits_and_never_admits_late(
        rpw in 1u64..6,
        tpw in 50u64..300,
        win_ms in 100u64..2_000,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let w = Duration::from_millis(win_ms);
        let limits = Limits::new()
            .window(Dimension::Requests, w, rpw)
            .window(Dimension::Tokens, w, tpw);
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(&limits, t0);
        let mut now = t0;
        let mut log: Vec<Admitted> = Vec::new();
        let mut gate: Option<Instant> = None;
        // The latest `now` a decision saw: the window dropped what left
        // by then, so it books nothing earlier (a late caller waits).
        let mut seen = t0;
        for op in ops {
            let (arrival, tokens) = match op {
                Op::Arrive { gap, tokens } => {
                    now += Duration::from_millis(gap);
                    (Some(now), tokens)
                }
                Op::Late { back, tokens } => {
                    let at = now.checked_sub(Duration::from_millis(back)).unwrap_or(t0).max(t0);
                    (Some(at), tokens)
                }
                _ => (None, 0),
            };
            match op {
                Op::Arrive { .. } | Op::Late { .. } => {
                    let now = arrival.expect("an arrival").max(seen);
                    seen = now;
                    let costs = Costs::tokens(tokens);
                    match window.acquire(&costs, now, None) {
                        Decision::Admitted(Booking { id, at, .. }) => {
                            prop_assert!(at >= now);
                            // Earliest: one nanosecond earlier (but not before
                            // `now` or an earlier live reservation) it must not fit.
                            let base = log.iter().filter(|a| a.live).map(|a| a.at).fold(now, Instant::max);
                            let base = gate.map_or(base, |g| base.max(g));
                            prop_assert!(at >= base, "overtook an earlier reservation");
                            if at > base {
                                let t = at - Duration::from_nanos(1);
                                let fits = used(&log, t, w, false) < rpw
                                    && (tokens == 0 || used(&log, t, w, true) + tokens <= tpw);
                                prop_assert!(!fits, "admitted at {:?} but fits at {:?}", at - t0, t - t0);
                            }
                            log.push(Admitted { id, at, tokens, live: true });
                        }
                        Decision::Never { cost, capacity } => {
                            prop_assert!(tokens > tpw);
                            prop_assert_eq!((cost, capacity), (tokens, tpw));
                        }
                        Decision::TooLate(_) => prop_assert!(false, "no deadline was given"),
                    }
                }
                Op::Cancel { gap, pick } => {
                    now += Duration::from_millis(gap);
                    // Only a request still waiting (admission in the future) can be cancelled.
                    let pending: Vec<usize> = (0..log.len()).filter(|&i| log[i].live && log[i].at > now).collect();
                    if !pending.is_empty() {
                        let i = pending[pick % pending.len()];
                        window.cancel(log[i].id, now);
                        log[i].live = false;
                        // Those booked after it may move earlier, never later.
                        // (Entries already out of every window may be pruned.)
                        for a in log.iter_mut().filter(|a| a.live) {
                            let Some(at) = window.booked_at(a.id) else {
                                prop_assert!(a.at + w <= now, "a held reservation was lost");
                                continue;
                            };
                            prop_assert!(at <= a.at && at >= now.min(a.at));
                            a.at = at;
                        }
                        rebooked_earliest(&log, now, gate, w, (rpw, tpw), true)?;
                    }
                }
                Op::Gate { gap, len } => {
                    now += Duration::from_millis(gap);
                    let until = now + Duration::from_millis(len);
                    window.gate(until, now);
                    gate = Some(gate.map_or(until, |g| g.max(until)));
                    // Waiters move behind the gate (never earlier than
                    // they were: without learning, a gate only delays).
                    for a in log.iter_mut().filter(|a| a.live) {
                        let Some(at) = window.booked_at(a.id) else {
                            prop_assert!(a.at + w <= now, "a held reservation was lost");
                            continue;
                        };
                        if a.at > now {
                            prop_assert!(at >= until, "{:?} not behind the gate", a.id);
                            prop_assert!(at >= a.at, "{:?} moved earlier", a.id);
                        } else {
                            prop_assert_eq!(at, a.at, "an admitted request moved");
                        }
                        a.at = at;
                    }
                    rebooked_earliest(&log, now, gate, w, (rpw, tpw), true)?;
                }
                Op::Correct { gap, pick, tokens } => {
                    now += Duration::from_millis(gap);
                    let live: Vec<usize> = (0..log.len()).filter(|&i| log[i].live).collect();
                    if !live.is_empty() {
                        let i = live[pick % live.len()];
                        let lower = tokens.min(log[i].tokens);
                        window.correct_and_move_waiters(log[i].id, &Costs::tokens(lower), now);
                        // A reservation already pruned (out of every
                        // window) keeps its old charge in the model: it no
                        // longer counts anywhere.
                        if window.booked_at(log[i].id).is_some() {
                            log[i].tokens = lower;
                        }
                        // The waiters move earlier, never later, each to the
                        // earliest instant it now fits.
                        for a in log.iter_mut().filter(|a| a.live) {
                            let Some(at) = window.booked_at(a.id) else {
                                prop_assert!(a.at + w <= now, "a held reservation was lost");
                                continue;
                            };
                            prop_assert!(at <= a.at, "{:?} moved later on a lower charge", a.id);
                            prop_assert!(at >= now.min(a.at), "{:?} moved into the past", a.id);
                            a.at = at;
                        }
                        rebooked_earliest(&log, now, gate, w, (rpw, tpw), true)?;
                    }
                }
            }
            // Exactness: no interval [s, s + w) holds more than the limits;
            // the worst intervals start at an admission.
            for a in log.iter().filter(|a| a.live) {
                let end = a.at + w - Duration::from_nanos(1);
                prop_assert!(used(&log, end, w, false) <= rpw);
                prop_assert!(used(&log, end, w, true) <= tpw);
            }
        }
    }
}
