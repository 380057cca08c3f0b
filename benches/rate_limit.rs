//! Per-request overhead of `RateLimit` next to the anchors, in one run:
//! a no-op baseline, ours (requests only; requests + tokens from a JSON
//! body), governor's direct `check()`, tower's `RateLimit`,
//! tower-resilience's rate limiter; and 2 threads contending on one key
//! for ours and governor.
//!
//! `cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::key::Key;
use tower_llm_resilience::rate_limit::{
    Costs, Dimension, Limits, MemoryStore, RateLimitLayer, Store,
};

mod support;

#[derive(Clone, Copy)]
struct Noop;

impl Service<Request<String>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<String>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Limits high enough that nothing waits. A 10 ms window keeps the log
/// at the number of requests in 10 ms (the log holds one entry per
/// request still in a window).
fn no_wait_limits() -> Limits {
    Limits::new().window(Dimension::Requests, Duration::from_millis(10), u64::MAX / 4)
}

fn body() -> String {
    String::new()
}

/// `ready().await` + `call().await` for `iters` requests.
fn run<S, E>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    make: fn() -> String,
) -> Duration
where
    S: Service<Request<String>, Error = E>,
    E: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let r = svc.ready().await.unwrap().call(Request::new(make())).await;
            black_box(r.unwrap());
        }
        start.elapsed()
    })
}

fn per_request(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("rate_limit/per_request");

    let mut base = Noop;
    g.bench_function("baseline_noop", |b| {
        b.iter_custom(|n| run(&rt, &mut base, n, body))
    });

    let mut ours = RateLimitLayer::new(no_wait_limits()).layer(Noop);
    g.bench_function("ours_requests", |b| {
        b.iter_custom(|n| run(&rt, &mut ours, n, body))
    });

    let json = || String::from(r#"{"model":"m","max_tokens":16,"messages":[]}"#);
    let mut base_json = Noop;
    g.bench_function("baseline_noop_json_body", |b| {
        b.iter_custom(|n| run(&rt, &mut base_json, n, json))
    });
    let mut ours_tokens = RateLimitLayer::new(no_wait_limits().window(
        Dimension::Tokens,
        Duration::from_millis(10),
        u64::MAX / 4,
    ))
    .layer(Noop);
    g.bench_function("ours_requests_tokens_json_body", |b| {
        b.iter_custom(|n| run(&rt, &mut ours_tokens, n, json))
    });

    let mut tower_rl = {
        let _in_runtime = rt.enter(); // tower's RateLimit makes its timer at once
        tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(1)).layer(Noop)
    };
    g.bench_function("tower_rate_limit", |b| {
        b.iter_custom(|n| run(&rt, &mut tower_rl, n, body))
    });

    let mut tr = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(usize::MAX / 4)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::from_millis(1))
        .build()
        .unwrap()
        .layer(Noop);
    g.bench_function("tower_resilience_rate_limiter", |b| {
        b.iter_custom(|n| run(&rt, &mut tr, n, body))
    });

    // The decision alone, next to governor's check: clock read, lock, map
    // lookup, window update, reservation.
    let store = MemoryStore::new(no_wait_limits());
    let key = Key::DEFAULT;
    let one = Costs::new(0, 0);
    g.bench_function("ours_store_decision_op", |b| {
        b.iter(|| {
            let now = tokio::time::Instant::now();
            black_box(store.try_acquire(&key, &one, now, None))
        })
    });
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
    g.bench_function("governor_check_op", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    g.finish();
}

/// Two OS threads, each with its own current-thread runtime, on one key:
/// reported time is wall time per request per thread.
fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/two_threads_one_key");
    let ours = RateLimitLayer::new(no_wait_limits()).layer(Noop);
    g.bench_function("ours_requests", |b| {
        b.iter_custom(|n| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let mut svc = ours.clone();
                    std::thread::spawn(move || run(&rt(), &mut svc, n, body))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .max()
                .unwrap()
        })
    });
    let gov = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::MAX,
    )));
    g.bench_function("governor_check_op", |b| {
        b.iter_custom(|n| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let gov = gov.clone();
                    std::thread::spawn(move || {
                        let start = Instant::now();
                        for _ in 0..n {
                            black_box(gov.check().is_ok());
                        }
                        start.elapsed()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .max()
                .unwrap()
        })
    });
    g.finish();
}

fn estimator(c: &mut Criterion) {
    use tower_llm_resilience::rate_limit::JsonEstimator;
    let body = support::chat_body();
    let estimator = JsonEstimator::new();
    let mut g = c.benchmark_group("estimator");
    g.bench_function(format!("JsonEstimator, {} B chat body", body.len()), |b| {
        b.iter(|| black_box(estimator.estimate_bytes(Some(black_box(body.as_bytes())))))
    });
    g.finish();
}

criterion_group!(benches, per_request, contended, estimator);
criterion_main!(benches);
