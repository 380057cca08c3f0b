//! Property test of the pure sliding window: exactness and earliest
//! admission, over arbitrary arrivals, costs and cancellations.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Admission, Costs, Dimension, Limits, Window};

#[derive(Clone, Debug)]
enum Op {
    /// A request arrives `gap` ms after the previous op, with these tokens.
    Arrive { gap: u64, tokens: u64 },
    /// The n-th still-pending reservation (modulo) is cancelled.
    Cancel { gap: u64, pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..400, 0u64..120).prop_map(|(gap, tokens)| Op::Arrive { gap, tokens }),
        1 => (0u64..400, any::<usize>()).prop_map(|(gap, pick)| Op::Cancel { gap, pick }),
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
        let mut window = Window::new(&limits, t0);
        let mut now = t0;
        let mut log: Vec<Admitted> = Vec::new();
        for op in ops {
            match op {
                Op::Arrive { gap, tokens } => {
                    now += Duration::from_millis(gap);
                    let costs = Costs::tokens(tokens);
                    match window.acquire(&costs, now, None) {
                        Admission::Reserved { id, at } => {
                            prop_assert!(at >= now);
                            // Earliest: one nanosecond earlier (but not before
                            // `now` or an earlier live reservation) it must not fit.
                            let base = log.iter().filter(|a| a.live).map(|a| a.at).fold(now, Instant::max);
                            prop_assert!(at >= base, "overtook an earlier reservation");
                            if at > base {
                                let t = at - Duration::from_nanos(1);
                                let fits = used(&log, t, w, false) < rpw
                                    && (tokens == 0 || used(&log, t, w, true) + tokens <= tpw);
                                prop_assert!(!fits, "admitted at {:?} but fits at {:?}", at - t0, t - t0);
                            }
                            log.push(Admitted { id, at, tokens, live: true });
                        }
                        Admission::Never { cost, capacity } => {
                            prop_assert!(tokens > tpw);
                            prop_assert_eq!((cost, capacity), (tokens, tpw));
                        }
                        Admission::TooLate { .. } => prop_assert!(false, "no deadline was given"),
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
