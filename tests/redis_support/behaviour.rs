//! The behaviour every store must show, run by the tests against the
//! in-memory store, one Redis server, a TLS server and a Redis Cluster
//! (each test file includes this one). Real time (the Redis server's clock
//! is real) with short windows, and tolerances that a broken
//! implementation cannot meet by luck: every expected wait is at least
//! 300 ms and the tolerance is 150 ms.

#![allow(dead_code)]

use std::time::Duration;

use tokio::time::Instant;
use tower_llm_resilience::classify::ReportedLimit;
use tower_llm_resilience::rate_limit::{
    Costs, Decision, Dimension, Limits, MemoryStore, Reservation, Store,
};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

use crate::support::admitted;

pub const W: Duration = Duration::from_secs(1);
pub const TOL: Duration = Duration::from_millis(150);

/// What the shared body needs beyond `Store`: a way to wait until the
/// fire-and-forget operations have landed.
pub trait Settle: Store {
    async fn settle(&self);
}

impl Settle for MemoryStore {
    async fn settle(&self) {}
}

impl Settle for RedisStore {
    async fn settle(&self) {
        self.flush().await;
    }
}

pub fn limits_for(key: &Key) -> Limits {
    match key.as_str().unwrap_or("") {
        "fifo" => Limits::new().window(Dimension::Requests, W, 2),
        "gate" | "learn" | "other" => Limits::new().window(Dimension::Requests, W, 100),
        _ => Limits::new()
            .window(Dimension::Requests, W, 100)
            .window(Dimension::Tokens, W, 100),
    }
}

pub fn near(actual: Instant, expected: Instant) -> bool {
    let d = if actual > expected {
        actual - expected
    } else {
        expected - actual
    };
    d <= TOL
}

/// One decision on a key of its own, so that the connection (a TLS
/// handshake, a cluster's slot map) is made before a body times
/// anything: an admission's `at` is the caller's `now`, from before the
/// first connection, while Redis counts it from when the call arrived.
pub async fn warm_up<S: Store>(s: &S) {
    acquire(s, &Key::new("warm-up"), Costs::new(0, 0)).await;
}

pub async fn acquire<S: Store>(s: &S, key: &Key, costs: Costs) -> Reservation {
    admitted(s.acquire(key, &costs, Instant::now(), None).await.unwrap())
}

/// Whether `costs` fits at once (asks with a zero deadline: reserves
/// nothing when it does not fit; what it reserves when it fits is
/// cancelled).
pub async fn fits_now<S: Settle>(s: &S, key: &Key, costs: Costs) -> bool {
    let now = Instant::now();
    match s.acquire(key, &costs, now, Some(now)).await.unwrap() {
        Decision::Admitted(r) => {
            s.cancel(&r);
            s.settle().await;
            true
        }
        Decision::TooLate(at) => {
            assert!(at > now);
            false
        }
        Decision::Never { .. } => panic!("never"),
    }
}

/// The shared behaviour: run once per store.
pub async fn behaviour<S: Settle>(s: S) {
    // FIFO at the exact instant room frees.
    let k = Key::new("fifo");
    let one = Costs::new(0, 0);
    let a = acquire(&s, &k, one).await;
    let b = acquire(&s, &k, one).await;
    let c = acquire(&s, &k, one).await;
    let d = acquire(&s, &k, one).await;
    let now = Instant::now();
    assert!(
        a.at <= now && b.at <= now,
        "the first two are admitted at once"
    );
    assert!(
        near(c.at, a.at + W),
        "third when the first leaves: {:?}",
        c.at - a.at
    );
    assert!(near(d.at, b.at + W), "fourth when the second leaves");
    // Redis answers waits on its own clock, each turned into a local
    // instant when its reply arrives: two answers' instants carry the
    // round trips' jitter (a loaded machine showed d a hair before c).
    assert!(
        d.at >= c.at || near(d.at, c.at),
        "first come, first served: {:?} vs {:?}",
        d.at,
        c.at
    );
    assert!(a.id != b.id && b.id != c.id && c.id != d.id);

    // Oversize never fits.
    let k = Key::new("oversize");
    match s
        .acquire(&k, &Costs::tokens(101), Instant::now(), None)
        .await
        .unwrap()
    {
        Decision::Never { cost, capacity } => assert_eq!((cost, capacity), (101, 100)),
        other => panic!("{other:?}"),
    }

    // A deadline reserves nothing.
    let k = Key::new("deadline");
    acquire(&s, &k, Costs::tokens(80)).await;
    let now = Instant::now();
    match s
        .acquire(
            &k,
            &Costs::tokens(80),
            now,
            Some(now + Duration::from_millis(10)),
        )
        .await
        .unwrap()
    {
        Decision::TooLate(at) => assert!(near(at, now + W), "too late until the window slides"),
        other => panic!("{other:?}"),
    }
    assert!(
        fits_now(&s, &k, Costs::tokens(20)).await,
        "nothing was reserved"
    );
    assert!(!fits_now(&s, &k, Costs::tokens(21)).await);

    // Cancel frees room.
    let k = Key::new("cancel");
    let r = acquire(&s, &k, Costs::tokens(90)).await;
    assert!(!fits_now(&s, &k, Costs::tokens(20)).await);
    s.cancel(&r);
    s.settle().await;
    assert!(fits_now(&s, &k, Costs::tokens(100)).await);

    // Correction: lower frees room, higher takes it.
    let k = Key::new("correct");
    let r = acquire(&s, &k, Costs::tokens(90)).await;
    s.correct(&r, &Costs::tokens(50), Instant::now());
    s.settle().await;
    assert!(fits_now(&s, &k, Costs::tokens(50)).await);
    assert!(!fits_now(&s, &k, Costs::tokens(51)).await);
    s.correct(&r, &Costs::new(60, 35), Instant::now());
    s.settle().await;
    assert!(fits_now(&s, &k, Costs::tokens(5)).await);
    assert!(!fits_now(&s, &k, Costs::tokens(6)).await);

    // A limit the reservation cost nothing in when it was admitted has no
    // charge to correct.
    let k = Key::new("correct-none");
    let r = acquire(&s, &k, Costs::new(0, 0)).await;
    s.correct(&r, &Costs::tokens(60), Instant::now());
    s.settle().await;
    assert!(fits_now(&s, &k, Costs::tokens(100)).await);

    // The gate holds every request of the key, and only of the key.
    let k = Key::new("gate");
    let until = Instant::now() + Duration::from_millis(400);
    s.gate(&k, until);
    s.settle().await;
    let r = acquire(&s, &k, one).await;
    assert!(
        near(r.at, until),
        "gated: {:?}",
        r.at.saturating_duration_since(Instant::now())
    );
    let o = acquire(&s, &Key::new("other"), one).await;
    assert!(o.at <= Instant::now(), "another key is not gated");

    // Learning: the provider says 1 remains for 500 ms.
    let k = Key::new("learn");
    let state = ReportedLimit::new(Some(100), Some(1), Some(Duration::from_millis(500)));
    let start = Instant::now();
    let _ = s.learn(&k, Dimension::Requests, W, state, None, start);
    s.settle().await;
    let first = acquire(&s, &k, one).await;
    let second = acquire(&s, &k, one).await;
    assert!(first.at <= Instant::now());
    assert!(
        near(second.at, start + Duration::from_millis(500)),
        "external usage counts until the reset: {:?}",
        second.at.saturating_duration_since(start)
    );
}

/// Issue #13: `remaining` headers compared with the window as of the
/// request's admission (the provider computed them when the request
/// arrived), with the arrival margin; the same body runs against both
/// stores. Each admission counts [`MARGIN`](admission::MARGIN) longer than
/// its window.
pub mod admission {
    use super::*;

    pub const MARGIN: Duration = Duration::from_millis(400);
    const TEN: Duration = Duration::from_secs(10);
    const TK: Dimension = Dimension::Tokens;

    pub fn limits(key: &Key) -> Limits {
        match key.as_str().unwrap_or("") {
            "margin" => Limits::new().window(Dimension::Requests, W, 1),
            "left" | "left-now" | "since" | "since-now" => Limits::new().window(TK, W, 1000),
            _ => Limits::new().window(TK, TEN, 1000),
        }
    }

    fn tokens_left(remaining: u64, reset: Duration) -> ReportedLimit {
        ReportedLimit::new(Some(1000), Some(remaining), Some(reset))
    }

    /// Whether exactly `n` tokens fit at once on `key`, and not one more.
    async fn room<S: Settle>(s: &S, key: &Key, n: u64) -> bool {
        fits_now(s, key, Costs::tokens(n)).await && !fits_now(s, key, Costs::tokens(n + 1)).await
    }

    pub async fn behaviour<S: Settle>(s: S) {
        // Each admission counts its window plus the margin.
        let k = Key::new("margin");
        let one = Costs::new(0, 0);
        let a = acquire(&s, &k, one).await;
        let b = acquire(&s, &k, one).await;
        assert!(
            near(b.at, a.at + W + MARGIN),
            "the second request when the first has counted a window and the margin: {:?}",
            b.at - a.at
        );

        // Stale headers make no phantom usage: the first reservation
        // leaves the window while the second's request runs; the provider
        // said what remained at the second's admission (500 used).
        for (name, as_of_admission) in [("left", true), ("left-now", false)] {
            let k = Key::new(name);
            let start = Instant::now();
            acquire(&s, &k, Costs::tokens(300)).await;
            tokio::time::sleep_until(start + Duration::from_millis(500)).await;
            let second = acquire(&s, &k, Costs::tokens(200)).await;
            // The first left at 1.4 s, the second leaves at 1.9 s.
            tokio::time::sleep_until(start + Duration::from_millis(1_650)).await;
            let said = ReportedLimit::new(Some(1000), Some(500), Some(W));
            let admission = as_of_admission.then_some(&second);
            let _ = s.learn(&k, TK, W, said, admission, Instant::now());
            s.settle().await;
            if as_of_admission {
                assert!(room(&s, &k, 800).await, "only the second counts");
            } else {
                // The rule as of now takes the first's 300 for someone
                // else's.
                assert!(room(&s, &k, 500).await, "phantom usage as of now");
            }
        }

        // Usage admitted since the admission hides external usage from the
        // rule as of now: another client holds 100, which the provider
        // counted at the first admission; 500 more were admitted since.
        for (name, as_of_admission) in [("since", true), ("since-now", false)] {
            let k = Key::new(name);
            let first = acquire(&s, &k, Costs::tokens(200)).await;
            acquire(&s, &k, Costs::tokens(500)).await;
            let said = ReportedLimit::new(Some(1000), Some(700), Some(W));
            let admission = as_of_admission.then_some(&first);
            let _ = s.learn(&k, TK, W, said, admission, Instant::now());
            s.settle().await;
            if as_of_admission {
                assert!(room(&s, &k, 200).await, "700 ours and 100 theirs");
            } else {
                assert!(room(&s, &k, 300).await, "the rule as of now misses them");
            }
        }

        // A later admission's headers win; an older one's are stale; the
        // same usage reported twice counts once.
        let k = Key::new("stale");
        let r1 = acquire(&s, &k, Costs::tokens(100)).await;
        let r2 = acquire(&s, &k, Costs::tokens(100)).await;
        let learn = |r: &Reservation, remaining| {
            let _ = s.learn(
                &k,
                TK,
                TEN,
                tokens_left(remaining, TEN),
                Some(r),
                Instant::now(),
            );
        };
        // Another client holds 100 all along; the newer response first.
        learn(&r2, 700);
        learn(&r2, 700);
        // The older one's view, and a bogus one: stale.
        learn(&r1, 800);
        learn(&r1, 0);
        s.settle().await;
        assert!(room(&s, &k, 700).await, "200 ours, 100 theirs, once");
        let r3 = acquire(&s, &k, Costs::tokens(100)).await;
        let r4 = acquire(&s, &k, Costs::tokens(100)).await;
        // Still 100 theirs as of the fourth; the third's view is stale.
        learn(&r4, 500);
        learn(&r3, 0);
        s.settle().await;
        assert!(room(&s, &k, 500).await, "400 ours, 100 theirs");
        // A newer view with less external usage lowers it (it left).
        let r5 = acquire(&s, &k, Costs::tokens(100)).await;
        learn(&r5, 500);
        s.settle().await;
        assert!(room(&s, &k, 500).await, "500 ours, none theirs");

        // External usage counts until the reset measured from the
        // admission, plus the margin; not from the response.
        for (name, as_of_admission) in [("reset", true), ("reset-now", false)] {
            let k = Key::new(name);
            let r = acquire(&s, &k, Costs::tokens(100)).await;
            tokio::time::sleep_until(r.at + Duration::from_millis(1_000)).await;
            let said = tokens_left(500, Duration::from_secs(2));
            let admission = as_of_admission.then_some(&r);
            let now = Instant::now();
            let _ = s.learn(&k, TK, TEN, said, admission, now);
            s.settle().await;
            assert!(room(&s, &k, 500).await, "400 theirs");
            let late = acquire(&s, &k, Costs::tokens(501)).await;
            let expected = if as_of_admission {
                r.at + Duration::from_secs(2) + MARGIN
            } else {
                now + Duration::from_secs(2)
            };
            assert!(
                near(late.at, expected),
                "theirs leaves {:?} after the admission",
                late.at - r.at
            );
        }
        // A response admitted longer ago than its reset and the margin
        // teaches nothing: what the provider counted then has left.
        let k = Key::new("late");
        let r = acquire(&s, &k, Costs::tokens(100)).await;
        tokio::time::sleep_until(r.at + Duration::from_millis(900)).await;
        let said = tokens_left(0, Duration::from_millis(300));
        let _ = s.learn(&k, TK, TEN, said, Some(&r), Instant::now());
        s.settle().await;
        assert!(room(&s, &k, 900).await, "nothing learned");
    }
}
