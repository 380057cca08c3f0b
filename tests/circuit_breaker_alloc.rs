//! A closed breaker allocates nothing per call, and neither does a failure
//! recorded while it stays closed.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;

mod support;

use support::allocations;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

#[derive(Clone, Copy)]
struct Answer(StatusCode);

impl Service<Request<()>> for Answer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut r = Response::new(());
        *r.status_mut() = self.0;
        ready(Ok(r))
    }
}

#[test]
fn no_allocation_per_call_when_closed() {
    let mut ok = CircuitBreakerLayer::new().layer(Answer(StatusCode::OK));
    // A failing service that stays closed: a failure rate below the
    // threshold (1 in 4) is recorded under the lock, without allocating.
    let mut flaky = CircuitBreakerLayer::new().layer(Answer(StatusCode::OK));
    let mut flaky_err = flaky.clone();
    *flaky_err.get_mut() = Answer(StatusCode::BAD_GATEWAY);
    futures::executor::block_on(async {
        // The first call of a key makes its breaker (allocates once); a
        // clone's second call of a key makes its private reference to the
        // breaker (allocates once per clone).
        for _ in 0..2 {
            flaky_err
                .ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
        }
        for _ in 0..30 {
            ok.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
            flaky
                .ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
        }
        let before = allocations();
        assert!(
            before > 0,
            "the counter counts (making the breakers allocated)"
        );
        for i in 0..1_000 {
            let r = ok
                .ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let svc = if i % 4 == 0 {
                &mut flaky_err
            } else {
                &mut flaky
            };
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
        }
        assert_eq!(allocations() - before, 0);

        // A fresh clone allocates once in all (its private reference, on its
        // second call), however many calls it makes.
        let mut fresh = ok.clone();
        let before = allocations();
        for _ in 0..1_000 {
            fresh
                .ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap();
        }
        assert_eq!(allocations() - before, 1);
        // A clone that makes one call (`clone().oneshot()`) allocates
        // nothing.
        let before = allocations();
        for _ in 0..100 {
            ok.clone().oneshot(Request::new(())).await.unwrap();
        }
        assert_eq!(allocations() - before, 0);
    });
    assert_eq!(
        flaky.state(&tower_llm_resilience::Key::DEFAULT),
        tower_llm_resilience::events::CircuitState::Closed
    );
}
