//! Property tests of the backoff: bounded, never panicking, and full
//! jitter's mean about half the exponential bound.

use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tower_llm_resilience::retry::{Backoff, Jitter};

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..100_000_000_000).prop_map(Duration::from_nanos),
    ]
}

fn factor() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        any::<f64>(),
        1.0f64..10.0,
    ]
}

proptest! {
    #[test]
    fn every_wait_is_within_zero_and_the_cap(
        base in duration(),
        cap in duration(),
        factor in factor(),
        jitter in jitter(),
        retry in any::<u32>(),
        previous in duration(),
        seed in any::<u64>(),
    ) {
        let b = Backoff::new(base, cap).factor(factor).jitter(jitter);
        let mut rng = SmallRng::seed_from_u64(seed);
        let bound = b.bound(retry);
        prop_assert!(bound <= cap);
        let wait = b.wait(retry, previous, &mut rng);
        prop_assert!(wait <= cap);
        if jitter != Jitter::Decorrelated {
            prop_assert!(wait <= bound);
        }
    }

    #[test]
    fn the_bound_never_shrinks(
        base in duration(),
        cap in duration(),
        factor in factor(),
        retry in 0u32..10_000,
    ) {
        let b = Backoff::new(base, cap).factor(factor);
        prop_assert!(b.bound(retry) <= b.bound(retry + 1));
    }
}

#[test]
fn full_jitter_mean_is_half_the_bound() {
    let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(8)).jitter(Jitter::Full);
    let mut rng = SmallRng::seed_from_u64(42);
    for retry in 0..6 {
        let n = 100_000;
        let total: f64 = (0..n)
            .map(|_| b.wait(retry, Duration::ZERO, &mut rng).as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        let half = b.bound(retry).as_secs_f64() / 2.0;
        assert!(
            (mean - half).abs() < half * 0.01,
            "retry {retry}: mean {mean}, half bound {half}"
        );
    }
}

#[test]
fn equal_jitter_mean_is_three_quarters_of_the_bound() {
    let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).jitter(Jitter::Equal);
    let mut rng = SmallRng::seed_from_u64(9);
    let n = 100_000;
    let total: f64 = (0..n)
        .map(|_| b.wait(3, Duration::ZERO, &mut rng).as_secs_f64())
        .sum();
    let mean = total / f64::from(n);
    assert!((mean - 6.0).abs() < 0.06, "{mean}");
}
