//! A smaller run of the goodput comparison (`examples/goodput`): the
//! crate's stack loses no item and almost never meets a 429, on a
//! workload where a client without a limiter meets many.

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
        stack.rate_limited_share() < 0.01,
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
    // a generous guard on the completion time (the example measures it):
    // today two windows' worth of slack
    assert!(
        stack.elapsed <= minimum + setup.window * 2,
        "{:?} vs minimum {minimum:?}",
        stack.elapsed
    );
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
