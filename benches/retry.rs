//! What the retry layer costs per request on the success path, in one run:
//! a no-op baseline, ours (as a service and as a policy in tower's `Retry`),
//! tower's `Retry` with a policy that never retries, and tower-resilience
//! 0.13's retry. `ready().await` plus `call().await` of one
//! `http::Request<String>` over a no-op inner service on a current-thread
//! runtime (the method of ANCHOR-BENCH.md). Compare ratios to the same
//! run's baseline. Each case runs with a minimal request (empty body, no
//! header) and with a realistic 1 KiB chat request with 3 headers; before
//! the timed runs the bench prints the allocations per request of each
//! case (a counting global allocator, per thread).
//!
//! `cargo bench --bench retry -- --warm-up-time 1 --measurement-time 3`
//!
//! `BURSTS=1 cargo bench --bench retry` runs the single-thread cases in
//! interleaved bursts instead and prints the fastest and p10 bursts' ratios
//! (steadier than criterion's means on a shared machine).

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

mod support;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

fn allocs() -> u64 {
    support::allocations()
}

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

/// Makes the request of one case, afresh for each call.
type MakeRequest = fn() -> Request<String>;

fn request() -> Request<String> {
    Request::new(String::new())
}

/// A realistic chat request of about 1 KiB with 3 headers, as an SDK sends
/// it (the same as the stack bench's).
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

/// Allocations per request of `svc` beyond making the request itself
/// (the same requests through the no-op service are subtracted).
fn allocs_per_request<S, R>(mut svc: S, make: fn() -> R) -> f64
where
    S: Service<R>,
{
    const N: u64 = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let count = |svc: &mut dyn FnMut()| {
        svc(); // warm up (first-use allocations)
        let before = allocs();
        for _ in 0..N {
            svc();
        }
        allocs() - before
    };
    let base = count(&mut || {
        rt.block_on(async {
            let mut noop = Noop;
            let Ok(s) = ServiceExt::<R>::ready(&mut noop).await;
            black_box(Service::<R>::call(s, make()).await.is_ok());
        })
    });
    let ours = count(&mut || {
        rt.block_on(async {
            if let Ok(s) = svc.ready().await {
                black_box(s.call(make()).await.is_ok());
            }
        })
    });
    (ours as f64 - base as f64) / N as f64
}

fn report_allocations() {
    let layer = RetryLayer::new;
    let rows: [(&str, f64, f64); 4] = [
        (
            "ours_retry_layer",
            allocs_per_request(layer().layer(Noop), request),
            allocs_per_request(layer().layer(Noop), chat_request),
        ),
        (
            "ours_retry_layer_no_budget",
            allocs_per_request(layer().no_budget().layer(Noop), request),
            allocs_per_request(layer().no_budget().layer(Noop), chat_request),
        ),
        (
            "ours_policy_in_tower_retry",
            allocs_per_request(
                tower::retry::RetryLayer::new(layer().policy()).layer(Noop),
                request,
            ),
            allocs_per_request(
                tower::retry::RetryLayer::new(layer().policy()).layer(Noop),
                chat_request,
            ),
        ),
        (
            "tower_retry_never",
            allocs_per_request(tower::retry::RetryLayer::new(Never).layer(Noop), request),
            allocs_per_request(
                tower::retry::RetryLayer::new(Never).layer(Noop),
                chat_request,
            ),
        ),
    ];
    eprintln!("allocations per request (minimal / 1 KiB chat request):");
    for (name, minimal, chat) in rows {
        eprintln!("  {name:<30} {minimal:>5.2} / {chat:>5.2}");
    }
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
fn contended<S>(b: &mut Bencher<'_>, svc: S, make: fn() -> Request<String>)
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
                                black_box(svc.call(make()).await.is_ok());
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

/// Runs the case named by `CALLGRIND_CASE` (optionally `chat:` first, for
/// the 1 KiB request) `CALLGRIND_ITERS` times (default 10,000) and exits;
/// does nothing when it is not set.
fn instructions() {
    let Some((case, iters)) = support::callgrind_case() else {
        return;
    };
    let (name, make): (&str, MakeRequest) = match case.strip_prefix("chat:") {
        Some(name) => (name, chat_request),
        None => (case.as_str(), request),
    };
    match name {
        "baseline_noop" => support::count_instructions(Noop, make, iters),
        "ours_retry_layer" => {
            support::count_instructions(RetryLayer::new().layer(Noop), make, iters)
        }
        "ours_retry_layer_no_budget" => {
            support::count_instructions(RetryLayer::new().no_budget().layer(Noop), make, iters)
        }
        "ours_policy_in_tower_retry" => support::count_instructions(
            tower::retry::RetryLayer::new(RetryLayer::new().policy()).layer(Noop),
            make,
            iters,
        ),
        "tower_retry_never" => support::count_instructions(
            tower::retry::RetryLayer::new(Never).layer(Noop),
            make,
            iters,
        ),
        other => panic!("unknown case {other}"),
    }
    std::process::exit(0);
}

/// With `BURSTS=1`: the single-thread cases in interleaved bursts (see
/// `support::bursts`), then exit.
fn bursts() {
    if std::env::var("BURSTS").is_err() {
        return;
    }
    fn case<'a, S: Service<Request<String>> + 'a>(
        name: &'a str,
        mut svc: S,
        make: MakeRequest,
    ) -> support::Burst<'a> {
        let rt = support::rt();
        let run = move |n| {
            rt.block_on(async {
                for _ in 0..n {
                    if let Ok(svc) = svc.ready().await {
                        black_box(svc.call(make()).await.is_ok());
                    }
                }
            })
        };
        (name, Box::new(run))
    }
    for (prefix, make) in [("", request as MakeRequest), ("chat 1 KiB: ", chat_request)] {
        let names = [
            "baseline_noop",
            "ours_retry_layer",
            "ours_retry_layer_no_budget",
            "ours_policy_in_tower_retry",
            "tower_retry_never",
        ]
        .map(|n| format!("{prefix}{n}"));
        support::bursts(&mut [
            case(&names[0], Noop, make),
            case(&names[1], RetryLayer::new().layer(Noop), make),
            case(&names[2], RetryLayer::new().no_budget().layer(Noop), make),
            case(
                &names[3],
                tower::retry::RetryLayer::new(RetryLayer::new().policy()).layer(Noop),
                make,
            ),
            case(
                &names[4],
                tower::retry::RetryLayer::new(Never).layer(Noop),
                make,
            ),
        ]);
    }
    std::process::exit(0);
}

fn bench(c: &mut Criterion) {
    instructions();
    bursts();
    report_allocations();
    let cases: [(&str, MakeRequest); 2] = [("", request), ("chat 1 KiB: ", chat_request)];

    let mut g = c.benchmark_group("retry_success_path");
    for (prefix, make) in cases {
        g.bench_function(format!("{prefix}baseline_noop"), |b| single(b, Noop, make));
        g.bench_function(format!("{prefix}ours_retry_layer"), |b| {
            single(b, RetryLayer::new().layer(Noop), make)
        });
        g.bench_function(format!("{prefix}ours_retry_layer_no_budget"), |b| {
            single(b, RetryLayer::new().no_budget().layer(Noop), make)
        });
        g.bench_function(format!("{prefix}ours_policy_in_tower_retry"), |b| {
            let policy = RetryLayer::new().policy();
            single(b, tower::retry::RetryLayer::new(policy).layer(Noop), make)
        });
        g.bench_function(format!("{prefix}tower_retry_never"), |b| {
            single(b, tower::retry::RetryLayer::new(Never).layer(Noop), make)
        });
    }
    g.bench_function("tower_resilience_retry", |b| {
        let layer =
            tower_resilience::retry::RetryLayer::<Cloned, Response<String>, Infallible>::builder()
                .max_attempts(4)
                .build();
        single(b, layer.layer(Noop), || Cloned(request()))
    });
    g.finish();

    let mut g = c.benchmark_group("retry_success_path_2_threads");
    for (prefix, make) in cases {
        g.bench_function(format!("{prefix}baseline_noop"), |b| {
            contended(b, Noop, make)
        });
        g.bench_function(format!("{prefix}ours_retry_layer"), |b| {
            contended(b, RetryLayer::new().layer(Noop), make)
        });
        g.bench_function(format!("{prefix}tower_retry_never"), |b| {
            contended(b, tower::retry::RetryLayer::new(Never).layer(Noop), make)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
