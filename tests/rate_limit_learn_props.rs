//! Property test of what the window learns from `remaining` headers: an
//! honest provider (one whose `remaining` is exactly its limit minus what
//! it counted when the request arrived) never adds external usage. The
//! window that learns admits exactly as a twin that never hears a header,
//! whatever the order the responses come back in, and through
//! cancellations (which move the requests booked after them), refunds,
//! corrections and gates.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_llm_resilience::classify::ReportedLimit;
use tower_llm_resilience::rate_limit::{
    Booking, Costs, Decision, Dimension, Limits, SlidingWindow,
};

#[derive(Clone, Debug)]
enum Op {
    /// A request arrives `gap` ms after the previous op, with these tokens.
    Arrive { gap: u64, tokens: u64 },
    /// The response of the n-th request sent and not answered yet (modulo)
    /// comes back, with the provider's headers.
    Respond { gap: u64, pick: usize },
    /// The n-th request still waiting (modulo) is dropped.
    Cancel { gap: u64, pick: usize },
    /// The n-th request sent (modulo) is refused by the provider (a 5xx it
    /// did not count): its charge is given back.
    Refund { gap: u64, pick: usize },
    /// The n-th request sent (modulo) used fewer tokens than estimated; the
    /// provider corrects its count at the same instant.
    Correct { gap: u64, pick: usize, tokens: u64 },
    /// A gate closes for `len` ms (a 429's Retry-After).
    Gate { gap: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..300, 0u64..120).prop_map(|(gap, tokens)| Op::Arrive { gap, tokens }),
        4 => (0u64..300, any::<usize>()).prop_map(|(gap, pick)| Op::Respond { gap, pick }),
        1 => (0u64..300, any::<usize>()).prop_map(|(gap, pick)| Op::Cancel { gap, pick }),
        1 => (0u64..300, any::<usize>()).prop_map(|(gap, pick)| Op::Refund { gap, pick }),
        1 => (0u64..300, any::<usize>(), 0u64..120)
            .prop_map(|(gap, pick, tokens)| Op::Correct { gap, pick, tokens }),
        1 => (0u64..300, 0u64..2_000).prop_map(|(gap, len)| Op::Gate { gap, len }),
    ]
}

/// One request, as the test (the client and the provider) sees it.
#[derive(Clone, Debug)]
struct Request {
    booking: Booking,
    tokens: u64,
    /// Still held by the window (not cancelled or refunded).
    live: bool,
    /// When it reached the provider, and the `remaining` it was told
    /// (requests, tokens).
    sent: Option<(Instant, u64, u64)>,
    answered: bool,
}

/// The honest provider's count when request `i` arrives at `at`: every
/// request it admitted in `(at - window, at]`, `i` included.
fn counted(requests: &[Request], i: usize, at: Instant, window: Duration) -> (u64, u64) {
    requests
        .iter()
        .enumerate()
        .filter(|&(j, r)| {
            r.live && (j == i || r.sent.is_some_and(|(s, ..)| s <= at && s + window > at))
        })
        .fold((0, 0), |(n, t), (_, r)| (n + 1, t + r.tokens))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn an_honest_provider_never_adds_external_usage(
        rpw in 1u64..6,
        tpw in 50u64..300,
        win_ms in 200u64..2_000,
        margin_ms in prop_oneof![Just(0u64), 1u64..100],
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let window = Duration::from_millis(win_ms);
        let limits = Limits::new()
            .window(Dimension::Requests, window, rpw)
            .window(Dimension::Tokens, window, tpw);
        let t0 = Instant::now();
        let margin = Duration::from_millis(margin_ms);
        let mut learner = SlidingWindow::new(&limits, t0).arrival_margin(margin);
        let mut twin = learner.clone();
        let mut now = t0;
        let mut requests: Vec<Request> = Vec::new();
        for op in ops {
            let gap = match op {
                Op::Arrive { gap, .. }
                | Op::Respond { gap, .. }
                | Op::Cancel { gap, .. }
                | Op::Refund { gap, .. }
                | Op::Correct { gap, .. }
                | Op::Gate { gap, .. } => gap,
            };
            now += Duration::from_millis(gap);
            // Everything booked by now reached the provider, in order, at
            // its (current) instant.
            for i in 0..requests.len() {
                let r = &requests[i];
                if !r.live || r.sent.is_some() {
                    continue;
                }
                let Some(at) = learner.booked_at(r.booking.id) else { continue };
                if at > now {
                    continue;
                }
                let (n, t) = counted(&requests, i, at, window);
                prop_assert!(n <= rpw && t <= tpw, "the provider saw more than its limit");
                requests[i].sent = Some((at, rpw - n, tpw - t));
            }
            let pick = |requests: &[Request], pick: usize, f: &dyn Fn(&Request) -> bool| {
                let some: Vec<usize> = (0..requests.len()).filter(|&i| f(&requests[i])).collect();
                (!some.is_empty()).then(|| some[pick % some.len()])
            };
            match op {
                Op::Arrive { tokens, .. } => {
                    let costs = Costs::tokens(tokens);
                    let a = learner.acquire(&costs, now, None);
                    let b = twin.acquire(&costs, now, None);
                    prop_assert_eq!(a, b, "the two windows admit alike");
                    if let Decision::Admitted(booking) = a {
                        requests.push(Request { booking, tokens, live: true, sent: None, answered: false });
                    }
                }
                Op::Respond { pick: p, .. } => {
                    if let Some(i) = pick(&requests, p, &|r| r.sent.is_some() && !r.answered) {
                        let r = &mut requests[i];
                        r.answered = true;
                        let (_, left_requests, left_tokens) = r.sent.expect("sent");
                        for (dimension, limit, left) in [
                            (Dimension::Requests, rpw, left_requests),
                            (Dimension::Tokens, tpw, left_tokens),
                        ] {
                            let said = ReportedLimit::new(Some(limit), Some(left), Some(window));
                            let changed = learner.learn(dimension, window, said, Some(&r.booking), false, None, now);
                            prop_assert_eq!(changed, None, "{:?} learned from an honest provider", dimension);
                        }
                    }
                }
                Op::Cancel { pick: p, .. } => {
                    if let Some(i) = pick(&requests, p, &|r| r.live && r.sent.is_none()) {
                        requests[i].live = false;
                        let id = requests[i].booking.id;
                        prop_assert_eq!(learner.cancel(id, now), twin.cancel(id, now));
                    }
                }
                Op::Refund { pick: p, .. } => {
                    if let Some(i) = pick(&requests, p, &|r| r.live && r.sent.is_some()) {
                        requests[i].live = false;
                        let id = requests[i].booking.id;
                        prop_assert_eq!(learner.cancel(id, now), twin.cancel(id, now));
                    }
                }
                Op::Correct { pick: p, tokens, .. } => {
                    if let Some(i) = pick(&requests, p, &|r| r.live && r.sent.is_some()) {
                        let lower = tokens.min(requests[i].tokens);
                        requests[i].tokens = lower;
                        let id = requests[i].booking.id;
                        learner.correct(id, &Costs::tokens(lower));
                        twin.correct(id, &Costs::tokens(lower));
                    }
                }
                Op::Gate { len, .. } => {
                    let until = now + Duration::from_millis(len);
                    prop_assert_eq!(learner.gate(until, now), twin.gate(until, now));
                }
            }
            // The same bookings, and the same answer for any request now
            // (`learn` prunes: so does the twin).
            learner.prune(now);
            twin.prune(now);
            for r in &requests {
                prop_assert_eq!(learner.booked_at(r.booking.id), twin.booked_at(r.booking.id));
            }
            for tokens in [0, 1, tpw / 2, tpw] {
                let costs = Costs::tokens(tokens);
                prop_assert_eq!(learner.earliest(&costs, now), twin.earliest(&costs, now));
            }
        }
    }
}
