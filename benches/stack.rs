//! Per-request overhead of the whole stack (`LlmLayer`: breaker, retry,
//! rate limit over requests and tokens, classify) next to tower's stock
//! stack (rate limit, concurrency limit, retry), in one run, over a no-op
//! inner service that answers 200 with a body.
//!
//! `cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::rate_limit::{Dimension, Limits, TokenEstimate};
use tower_llm_resilience::{LlmLayer, Provider};

mod support;

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

/// A request with its token estimate, as a caller of a token-limited stack
/// sends it.
fn request() -> Request<String> {
    let mut request = Request::new(String::new());
    request.extensions_mut().insert(TokenEstimate(100));
    request
}

/// A realistic chat request of about 1 KiB, as an SDK sends it: headers,
/// a JSON body with a system prompt, a user turn and `max_tokens`, and no
/// token estimate (the estimator reads the body).
fn chat_request() -> Request<String> {
    static BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(support::chat_body);
    Request::post("https://api.openai.com/v1/chat/completions")
        .header(
            "authorization",
            "Bearer sk-bench-0123456789abcdef0123456789abcdef",
        )
        .header("content-type", "application/json")
        .header("user-agent", "bench/1.0")
        .body(BODY.clone())
        .unwrap()
}

/// `ready().await` + `call().await` for `iters` requests.
fn run<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    run_with(rt, svc, iters, request)
}

/// [`run`] with requests made by `make` (made inside the timed loop, as
/// the baseline does too).
fn run_with<S>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    make: fn() -> Request<String>,
) -> Duration
where
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let response = svc.ready().await.unwrap().call(make()).await;
            black_box(response.unwrap());
        }
        start.elapsed()
    })
}

/// Tower's retry policy that never retries (what a success path costs).
#[derive(Clone, Copy)]
struct Never;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Never {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("stack");

    let mut noop = Noop;
    g.bench_function("no-op baseline", |b| {
        b.iter_custom(|n| run(&rt, &mut noop, n))
    });

    // 10 ms windows keep the logs short; the limits are never reached.
    let window = Duration::from_millis(10);
    let mut ours = LlmLayer::new(Provider::OpenAi)
        .limits(
            Limits::new()
                .window(Dimension::Requests, window, u64::MAX / 4)
                .window(Dimension::Tokens, window, u64::MAX / 4),
        )
        .layer(Noop);
    g.bench_function("ours: LlmLayer (RPM + TPM)", |b| {
        b.iter_custom(|n| run(&rt, &mut ours, n))
    });
    g.bench_function("no-op baseline, 1 KiB chat request", |b| {
        b.iter_custom(|n| run_with(&rt, &mut noop, n, chat_request))
    });
    g.bench_function("ours: LlmLayer (RPM + TPM), 1 KiB chat request", |b| {
        b.iter_custom(|n| run_with(&rt, &mut ours, n, chat_request))
    });

    // tower's `Retry` needs a `Clone` inner service and its `RateLimit` is
    // not `Clone`, so the stock stack can only put the limiter outside.
    let _runtime = rt.enter(); // tower's `RateLimit` makes a timer when built
    let mut tower_stack = ServiceBuilder::new()
        .rate_limit(u64::MAX / 4, Duration::from_secs(60))
        .concurrency_limit(1_000)
        .retry(Never)
        .service(Noop);
    g.bench_function("tower: rate limit + concurrency limit + retry", |b| {
        b.iter_custom(|n| run(&rt, &mut tower_stack, n))
    });
    g.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
