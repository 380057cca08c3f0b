//! The retry layer allocates nothing per request on the success path when
//! the request's copy allocates nothing (an empty `String` body, no
//! headers): the layer itself adds no allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::retry::RetryLayer;

struct Counting;

// Per thread: the test harness's own threads may allocate meanwhile; the
// requests run on this one (`block_on`).
thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Noop;

impl Service<Request<String>> for Noop {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        ready(Ok(Response::new(String::new())))
    }
}

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
