//! A closed breaker allocates nothing per call, and neither does a failure
//! recorded while it stays closed, nor a stream it watches to its end.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;

mod support;

use support::allocations;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

#[derive(Clone, Copy)]
struct Answer(StatusCode);

impl Service<Request<String>> for Answer {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<String>) -> Self::Future {
        let mut r = Response::new(String::new());
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
                .call(Request::new(String::new()))
                .await
                .unwrap();
        }
        for _ in 0..30 {
            ok.ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
                .await
                .unwrap();
            flaky
                .ready()
                .await
                .unwrap()
                .call(Request::new(String::new()))
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
                .call(Request::new(String::new()))
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
                .call(Request::new(String::new()))
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
                .call(Request::new(String::new()))
                .await
                .unwrap();
        }
        assert_eq!(allocations() - before, 1);
        // A clone that makes one call (`clone().oneshot()`) allocates
        // nothing.
        let before = allocations();
        for _ in 0..100 {
            ok.clone()
                .oneshot(Request::new(String::new()))
                .await
                .unwrap();
        }
        assert_eq!(allocations() - before, 0);
    });
    assert_eq!(
        flaky.state(&tower_llm_resilience::Key::DEFAULT),
        tower_llm_resilience::events::CircuitState::Closed
    );
}

/// A stream of `n` SSE chunks, allocating nothing.
struct Chunks(u8);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: {}\n\n")))))
    }
}

/// Answers a 200 `text/event-stream` of 8 chunks.
#[derive(Clone, Copy)]
struct Sse;

impl Service<Request<String>> for Sse {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Chunks>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<String>) -> Self::Future {
        let mut r = Response::new(Chunks(8));
        // A header map with one entry allocates: the inner service's
        // cost, counted apart below.
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        ready(Ok(r))
    }
}

/// A gRPC answer's body: 7 messages, then trailers with `grpc-status: 0`,
/// which the breaker reads to judge the call.
struct Messages(u8);

impl Body for Messages {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0 = self.0.saturating_sub(1);
        Poll::Ready(match self.0 {
            0 => None,
            1 => {
                // The trailers' map allocates: the inner service's cost.
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(trailers)))
            }
            _ => Some(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x")))),
        })
    }
}

/// Answers a 200 `application/grpc` of 7 messages and its trailers.
#[derive(Clone, Copy)]
struct Grpc;

impl Service<Request<String>> for Grpc {
    type Response = Response<Messages>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Messages>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<String>) -> Self::Future {
        let mut r = Response::new(Messages(9));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        ready(Ok(r))
    }
}

/// Calls `svc` `n` times and reads every body to its end.
async fn stream_all<S, B>(svc: &mut S, n: usize) -> u64
where
    S: Service<Request<String>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let before = allocations();
    for _ in 0..n {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await
            .unwrap();
        let mut body = response.into_body();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            frames += 1;
        }
        assert_eq!(frames, 8);
    }
    allocations() - before
}

#[test]
fn no_allocation_per_streamed_call() {
    let mut watched = CircuitBreakerLayer::new().layer(Sse);
    let mut bare = Sse;
    futures::executor::block_on(async {
        // Warm up: the breaker and the clone's private reference.
        stream_all(&mut watched, 2).await;
        let inner = stream_all(&mut bare, 1_000).await;
        assert!(inner > 0, "the counter counts (the header maps)");
        assert_eq!(stream_all(&mut watched, 1_000).await, inner);
    });
    assert_eq!(
        watched.state(&tower_llm_resilience::Key::DEFAULT),
        tower_llm_resilience::events::CircuitState::Closed
    );
}

#[test]
fn no_allocation_per_grpc_call_judged_by_its_trailers() {
    let mut watched = CircuitBreakerLayer::new().layer(Grpc);
    let mut bare = Grpc;
    futures::executor::block_on(async {
        stream_all(&mut watched, 2).await;
        let inner = stream_all(&mut bare, 1_000).await;
        assert!(inner > 0, "the counter counts (the header maps)");
        assert_eq!(stream_all(&mut watched, 1_000).await, inner);
    });
    assert_eq!(
        watched.state(&tower_llm_resilience::Key::DEFAULT),
        tower_llm_resilience::events::CircuitState::Closed
    );
}
