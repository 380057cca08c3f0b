//! The retry layer allocates nothing per request on the success path when
//! the request's copy allocates nothing (an empty `String` body, no
//! headers): the layer itself adds no allocation.

use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::retry::RetryLayer;

mod support;

use support::{allocations, Noop};

// The counts are per thread: the test harness's own threads may allocate
// meanwhile; the requests run on this one (`block_on`).
#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

#[test]
fn success_path_allocates_nothing() {
    let mut service = RetryLayer::new().seed(1).layer(Noop);
    let mut policy_service =
        tower::retry::RetryLayer::new(RetryLayer::new().seed(1).policy()).layer(Noop);
    futures::executor::block_on(async {
        // warm up (lazy statics, the budget's first marks)
        for _ in 0..100 {
            service
                .ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
                .await
                .unwrap();
            policy_service
                .ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
                .await
                .unwrap();
        }
        let before = allocations();
        for _ in 0..1000 {
            let r = service
                .ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
                .await;
            assert!(r.is_ok());
        }
        let ours = allocations() - before;
        let before = allocations();
        for _ in 0..1000 {
            let r = policy_service
                .ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
                .await;
            assert!(r.is_ok());
        }
        let policy = allocations() - before;
        assert_eq!((ours, policy), (0, 0));
    });
}
