//! What the retry layer costs per request on the success path, in one run:
//! a no-op baseline, ours (as a service and as a policy in tower's `Retry`),
//! tower's `Retry` with a policy that never retries, and tower-resilience
//! 0.13's retry. `ready().await` plus `call().await` of one
//! `http::Request<String>` over a no-op inner service on a current-thread
//! runtime (the method of ANCHOR-BENCH.md). Compare ratios to the same
//! run's baseline.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::retry::RetryLayer;

/// The inner service: answers 200 at once.
#[derive(Clone, Copy)]
struct Noop;

impl<R> Service<R> for Noop {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        ready(Ok(Response::new(String::new())))
    }
}

/// tower-resilience needs `Req: Clone`, which `http::Request` is not: this
/// wrapper clones it part by part, as our layer does.
struct Cloned(Request<String>);

impl Clone for Cloned {
    fn clone(&self) -> Self {
        let r = &self.0;
        let mut c = Request::new(r.body().clone());
        *c.method_mut() = r.method().clone();
        *c.uri_mut() = r.uri().clone();
        *c.version_mut() = r.version();
        *c.headers_mut() = r.headers().clone();
        *c.extensions_mut() = r.extensions().clone();
        Cloned(c)
    }
}

/// tower's `Retry` with a policy that never retries (but keeps a copy, as
/// any policy that may retry must).
#[derive(Clone, Copy)]
struct Never;

impl<Res, E> tower::retry::Policy<Request<String>, Res, E> for Never {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Request<String>, _: &mut Result<Res, E>) -> Option<Ready<()>> {
        None
    }

    fn clone_request(&mut self, req: &Request<String>) -> Option<Request<String>> {
        Some(copy(req))
    }
}

fn copy(r: &Request<String>) -> Request<String> {
    let mut c = Request::new(r.body().clone());
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.version_mut() = r.version();
    *c.headers_mut() = r.headers().clone();
    *c.extensions_mut() = r.extensions().clone();
    c
}

fn request() -> Request<String> {
    Request::new(String::new())
}

fn single<S, R>(b: &mut Bencher<'_>, mut svc: S, make: fn() -> R)
where
    S: Service<R>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    b.iter_custom(|iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                if let Ok(svc) = svc.ready().await {
                    black_box(svc.call(make()).await.is_ok());
                }
            }
            start.elapsed()
        })
    });
}

/// Two threads, each on its own current-thread runtime, share one layer's
/// state (clones of one service: one budget); the time is per request on
/// each thread.
fn contended<S>(b: &mut Bencher<'_>, svc: S)
where
    S: Service<Request<String>> + Clone + Send + 'static,
{
    b.iter_custom(|iters| {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            if let Ok(svc) = svc.ready().await {
                                black_box(svc.call(request()).await.is_ok());
                            }
                        }
                        start.elapsed()
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .max()
            .unwrap_or_default()
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry_success_path");
    g.bench_function("baseline_noop", |b| single(b, Noop, request));
    g.bench_function("ours_retry_layer", |b| {
        single(b, RetryLayer::new().layer(Noop), request)
    });
    g.bench_function("ours_retry_layer_no_budget", |b| {
        single(b, RetryLayer::new().no_budget().layer(Noop), request)
    });
    g.bench_function("ours_policy_in_tower_retry", |b| {
        let policy = RetryLayer::new().policy();
        single(
            b,
            tower::retry::RetryLayer::new(policy).layer(Noop),
            request,
        )
    });
    g.bench_function("tower_retry_never", |b| {
        single(b, tower::retry::RetryLayer::new(Never).layer(Noop), request)
    });
    g.bench_function("tower_resilience_retry", |b| {
        let layer =
            tower_resilience::retry::RetryLayer::<Cloned, Response<String>, Infallible>::builder()
                .max_attempts(4)
                .build();
        single(b, layer.layer(Noop), || Cloned(request()))
    });
    g.finish();

    let mut g = c.benchmark_group("retry_success_path_2_threads");
    g.bench_function("baseline_noop", |b| contended(b, Noop));
    g.bench_function("ours_retry_layer", |b| {
        contended(b, RetryLayer::new().layer(Noop))
    });
    g.bench_function("tower_retry_never", |b| {
        contended(b, tower::retry::RetryLayer::new(Never).layer(Noop))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
