//! Per-request overhead of the whole stack (`LlmLayer`: breaker, retry,
//! rate limit over requests and tokens, classify) next to tower's stock
//! stack (rate limit, concurrency limit, retry), in one run, over a no-op
//! inner service that answers 200 with a body.
//!
//! Then 1 and 2 threads on one key (each thread its own runtime and its
//! own clone of the stack; time per request of the group, so that the
//! throughput of 2 threads relative to 1 is `t1 / t2`), and the
//! allocations per request, counted before the timed runs.
//!
//! `cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3`

use std::future::Ready;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::metrics::MetricsListener;
use tower_llm_resilience::rate_limit::{Dimension, Limits, TokenEstimate};
use tower_llm_resilience::{LlmLayer, Provider};

mod support;
use support::{allocations, contended, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[allow(non_upper_case_globals)]
const Noop: support::Noop<String> = support::Noop::new();

/// A request with its token estimate, as a caller of a token-limited stack
/// sends it.
fn request() -> Request<String> {
    let mut request = Request::new(String::new());
    request.extensions_mut().insert(TokenEstimate::total(100));
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

/// `STACK_PROFILE=N`: runs N minimal requests through our stack inside
/// `profile_region` (after as many to warm up) and exits, for
/// `valgrind --tool=callgrind --toggle-collect='*profile_region*'`.
/// `STACK_PROFILE_STACK=noop`, `metrics`, `tower` or `tower-resilience` profiles that
/// stack instead, `STACK_PROFILE_REQUEST=chat` the 1 KiB chat request.
/// Callgrind counts the warm-up too (the compiler merges the two loops
/// into one function): divide by 2N, or read the calls of `request`.
#[inline(never)]
fn profile_region<S>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    n: u64,
    make: fn() -> Request<String>,
) where
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    run_with(rt, svc, n, make);
}

fn profile() {
    let Some(n) = std::env::var("STACK_PROFILE")
        .ok()
        .and_then(|n| n.parse().ok())
    else {
        return;
    };
    let rt = support::rt();
    let make = match std::env::var("STACK_PROFILE_REQUEST").as_deref() {
        Ok("chat") => chat_request as fn() -> Request<String>,
        _ => request,
    };
    let _runtime = rt.enter(); // tower's rate limit makes its timer at once
    match std::env::var("STACK_PROFILE_STACK").as_deref() {
        Ok("noop") => {
            let mut svc = Noop;
            run_with(&rt, &mut svc, n, make);
            profile_region(&rt, &mut svc, n, make);
        }
        // Our stack with the `metrics` feature's listener on its events
        // (into the metrics crate's no-op recorder: the listener's own
        // cost, labels included, without an exporter's).
        Ok("metrics") => {
            let mut svc = observed();
            run_with(&rt, &mut svc, n, make);
            profile_region(&rt, &mut svc, n, make);
        }
        Ok("tower") => {
            let mut svc = tower_stack();
            run_with(&rt, &mut svc, n, make);
            profile_region(&rt, &mut svc, n, make);
        }
        Ok("tower-resilience") => {
            let mut svc = tower_resilience();
            run_with(&rt, &mut svc, n, make);
            profile_region(&rt, &mut svc, n, make);
        }
        _ => {
            let mut svc = ours();
            run_with(&rt, &mut svc, n, make);
            profile_region(&rt, &mut svc, n, make);
        }
    }
    std::process::exit(0);
}

fn per_request(c: &mut Criterion) {
    profile();
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
    let mut tower_stack = tower_stack();
    g.bench_function("tower: rate limit + concurrency limit + retry", |b| {
        b.iter_custom(|n| run(&rt, &mut tower_stack, n))
    });
    let mut resilience = tower_resilience();
    g.bench_function("tower-resilience: breaker + rate limiter", |b| {
        b.iter_custom(|n| run(&rt, &mut resilience, n))
    });
    let mut resilience_chat = tower_resilience();
    g.bench_function(
        "tower-resilience: breaker + rate limiter, 1 KiB chat request",
        |b| b.iter_custom(|n| run_with(&rt, &mut resilience_chat, n, chat_request)),
    );
    g.finish();
}

/// Our stack, with limits that are never reached (10 ms windows keep the
/// logs short).
fn ours() -> impl Service<Request<String>, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    let window = Duration::from_millis(10);
    LlmLayer::new(Provider::OpenAi)
        .limits(
            Limits::new()
                .window(Dimension::Requests, window, u64::MAX / 4)
                .window(Dimension::Tokens, window, u64::MAX / 4),
        )
        .layer(Noop)
}

/// [`ours`] with a [`MetricsListener`] on its events.
fn observed() -> impl Service<Request<String>, Error = impl std::fmt::Debug> + Clone + Send + 'static
{
    let window = Duration::from_millis(10);
    LlmLayer::new(Provider::OpenAi)
        .limits(
            Limits::new()
                .window(Dimension::Requests, window, u64::MAX / 4)
                .window(Dimension::Tokens, window, u64::MAX / 4),
        )
        .events(MetricsListener::new(Provider::OpenAi).events())
        .layer(Noop)
}

/// tower's stock stack: rate limit, concurrency limit, retry (never
/// retrying).
fn tower_stack() -> impl Service<Request<String>, Error = impl std::fmt::Debug> {
    ServiceBuilder::new()
        .rate_limit(u64::MAX / 4, Duration::from_secs(60))
        .concurrency_limit(1_000)
        .retry(Never)
        .service(Noop)
}

/// tower-resilience's stack: circuit breaker and rate limiter (its retry
/// layer wants a per-type policy; tower's stock stack has the retry row).
fn tower_resilience(
) -> impl Service<Request<String>, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .build()
                .unwrap(),
        )
        .layer(
            tower_resilience::ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(usize::MAX / 4)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .service(Noop)
}

/// Allocations per request beyond the baseline's (the request itself).
fn allocs_per_request<S>(name: &str, mut svc: S, make: fn() -> Request<String>)
where
    S: Service<Request<String>>,
    S::Error: std::fmt::Debug,
{
    let rt = support::rt();
    const N: u64 = 10_000;
    run_with(&rt, &mut svc, N, make);
    let before = allocations();
    run_with(&rt, &mut Noop.clone(), N, make);
    let base = allocations() - before;
    let before = allocations();
    run_with(&rt, &mut svc, N, make);
    let total = allocations() - before;
    println!(
        "allocations per request, {name}: {} (baseline's request: {})",
        total.saturating_sub(base) as f64 / N as f64,
        base as f64 / N as f64
    );
}

fn threads(c: &mut Criterion) {
    allocs_per_request("ours: LlmLayer, minimal request", ours(), request);
    allocs_per_request("ours: LlmLayer, 1 KiB chat request", ours(), chat_request);
    allocs_per_request("tower-resilience stack", tower_resilience(), request);
    let mut g = c.benchmark_group("stack/threads_one_key");
    for (what, make) in [
        ("minimal", request as fn() -> Request<String>),
        ("1 KiB chat", chat_request),
    ] {
        for threads in [1, 2] {
            g.bench_function(
                format!("no-op baseline, {what}, {threads} thread(s)"),
                |b| {
                    b.iter_custom(|n| {
                        contended(threads, n, || {
                            move |n| {
                                run_with(&support::rt(), &mut Noop.clone(), n, make);
                            }
                        })
                    })
                },
            );
            let stack = ours();
            g.bench_function(
                format!("ours: LlmLayer, {what}, {threads} thread(s)"),
                |b| {
                    b.iter_custom(|n| {
                        contended(threads, n, || {
                            let mut svc = stack.clone();
                            move |n| {
                                run_with(&support::rt(), &mut svc, n, make);
                            }
                        })
                    })
                },
            );
            let stack = tower_resilience();
            g.bench_function(
                format!("tower-resilience stack, {what}, {threads} thread(s)"),
                |b| {
                    b.iter_custom(|n| {
                        contended(threads, n, || {
                            let mut svc = stack.clone();
                            move |n| {
                                run_with(&support::rt(), &mut svc, n, make);
                            }
                        })
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, per_request, threads);
criterion_main!(benches);
