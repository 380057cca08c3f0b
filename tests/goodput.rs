//! A smaller run of the goodput comparison (`examples/goodput`): the
//! crate's stack loses no item and almost never meets a 429, on a
//! workload where a client without a limiter meets many, and learning
//! from the provider's `remaining` headers costs it no quota.
//!
//! The run is a deterministic simulation (paused clock, seeded workload,
//! faults and jitter): its figures are exact for the seed, and the bounds
//! below leave room only for a change of the crate's behaviour.

#[allow(dead_code)] // the example's table and plot use the rest
#[path = "../examples/goodput/comparison.rs"]
mod comparison;

use comparison::{run, theoretical_minimum, workload, Contender, Setup};

#[test]
fn stack_loses_nothing_and_stays_under_the_limits() {
    let setup = Setup::small();
    let jobs = workload(&setup);
    let minimum = theoretical_minimum(&setup, &jobs);

    let bare = run(&setup, &jobs, Contender::Bare);
    assert!(
        bare.rate_limited_share() > 0.2 && bare.lost > 0,
        "the workload is over the limits: {bare:?}"
    );

    let stack = run(&setup, &jobs, Contender::Stack);
    assert_eq!(stack.lost, 0, "no item lost: {stack:?}");
    assert!(
        stack.rate_limited_share() < 0.005,
        "429s: {} of {} requests",
        stack.rate_limited,
        stack.sent
    );
    assert!(stack.retries.unwrap_or(0) > 0, "the faults were retried");
    assert!(
        stack.elapsed >= minimum,
        "{:?} < {minimum:?}",
        stack.elapsed
    );
    // This seed: 424.2 s against a minimum of 420 s (1.010x) and 95.3 % of
    // the quota. Comparing `remaining` as of the response instead of the
    // admission gave 1.153x and 85.0 %.
    let ratio = stack.elapsed.as_secs_f64() / minimum.as_secs_f64();
    assert!(ratio <= 1.03, "{ratio:.3}x the minimum: {stack:?}");
    let quota = stack.quota_used(&setup).expect("several windows");
    assert!(quota >= 0.94, "{:.1} % of the quota", quota * 100.0);
}

/// The provider computed `remaining` when it admitted the request: compared
/// with the window as of then, an honest provider's headers teach nothing
/// that the limiter's own window did not know, and cost nothing.
#[test]
fn headers_compared_as_of_admission_cost_no_quota() {
    let setup = Setup::small();
    let jobs = workload(&setup);
    let shown = run(&setup, &jobs, Contender::Stack);
    let hidden = run(&setup, &jobs, Contender::StackWithoutHeaders);
    let quota = |o: &comparison::Outcome| o.quota_used(&setup).expect("several windows");
    assert!(
        quota(&shown) >= quota(&hidden) - 0.005,
        "{:.1} % of the quota with the headers, {:.1} % without",
        quota(&shown) * 100.0,
        quota(&hidden) * 100.0
    );
    assert!(
        shown.elapsed <= hidden.elapsed + setup.window / 100,
        "{:?} with the headers, {:?} without",
        shown.elapsed,
        hidden.elapsed
    );
    assert_eq!((shown.rate_limited, shown.lost), (0, 0), "{shown:?}");
}

#[test]
fn the_comparison_is_deterministic() {
    let setup = Setup::small();
    let jobs = workload(&setup);
    let a = run(&setup, &jobs, Contender::Stack);
    let b = run(&setup, &jobs, Contender::Stack);
    assert_eq!(
        (a.elapsed, a.sent, a.rate_limited, a.lost, a.admitted),
        (b.elapsed, b.sent, b.rate_limited, b.lost, b.admitted)
    );
}

/// Estimates 3x too high: the usage each response reports moves the
/// waiters behind it earlier, and the limiter learns to scale new input
/// estimates down, so the run uses the quota as the exact estimates do.
/// (Before either: 1.40x the minimum and 78.8 % of the quota on the full
/// run; with the waiters moved only, 1.195x and 97.9 %.)
#[test]
fn estimates_3x_too_high_give_the_quota_back() {
    let setup = Setup::small();
    let jobs = workload(&setup);
    let minimum = theoretical_minimum(&setup, &jobs);
    let exact = run(&setup, &jobs, Contender::Stack);
    let high = run(&setup, &jobs, Contender::StackEstimate3x);
    let quota = |o: &comparison::Outcome| o.quota_used(&setup).expect("several windows");
    assert_eq!((high.rate_limited, high.lost), (0, 0), "{high:?}");
    assert!(
        quota(&high) >= quota(&exact) - 0.01,
        "{:.1} % of the quota with estimates 3x too high, {:.1} % with exact ones",
        quota(&high) * 100.0,
        quota(&exact) * 100.0
    );
    let ratio = high.elapsed.as_secs_f64() / minimum.as_secs_f64();
    assert!(ratio <= 1.03, "{ratio:.3}x the minimum: {high:?}");
}

/// Streamed, with the usage in the last chunk: the same run as whole
/// bodies (the charges are the same; the stream's events are spread over
/// the completion's latency).
#[test]
fn streamed_requests_use_the_quota_as_whole_ones_do() {
    let setup = Setup::small();
    let jobs = workload(&setup);
    let minimum = theoretical_minimum(&setup, &jobs);
    let streamed = run(&setup, &jobs, Contender::StackStreaming);
    assert_eq!(
        (streamed.rate_limited, streamed.lost),
        (0, 0),
        "{streamed:?}"
    );
    let ratio = streamed.elapsed.as_secs_f64() / minimum.as_secs_f64();
    assert!(ratio <= 1.03, "{ratio:.3}x the minimum: {streamed:?}");
    let quota = streamed.quota_used(&setup).expect("several windows");
    assert!(quota >= 0.94, "{:.1} % of the quota", quota * 100.0);
}
