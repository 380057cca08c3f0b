//! Runs the paused-time comparison of `examples/retry_comparison.rs` as a
//! test: it panics if our policy loses a request in any scenario or seed.

#[path = "../examples/retry_comparison.rs"]
mod comparison;

#[test]
fn ours_loses_no_request_where_the_naive_policies_give_up() {
    comparison::main();
}
