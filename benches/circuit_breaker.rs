//! What a closed circuit breaker costs per request, in one run: a no-op
//! baseline, ours, tower-resilience 0.13's and failsafe 1.3's, on one
//! thread and with two threads sharing one breaker; and what watching a
//! stream to its end costs (a 200 `text/event-stream` of 1 and of 64
//! chunks read to the end, against the same stream without the breaker:
//! the slope is the cost per frame). Compare ratios to the same run's
//! baseline (see ANCHOR-BENCH.md for the method). Before the timed runs it
//! prints the allocations per request of ours (a counting global
//! allocator, per thread).
//!
//! `cargo bench --bench circuit_breaker -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, FailureWindow};
use tower_llm_resilience::Key;

mod support;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

/// Allocations per request of `svc` (after one warm-up request).
fn allocs_per_request<S>(mut svc: S) -> f64
where
    S: Service<Request<String>>,
{
    const N: u64 = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        one(&mut svc).await;
        let before = support::allocations();
        for _ in 0..N {
            one(&mut svc).await;
        }
        (support::allocations() - before) as f64 / N as f64
    })
}

/// The inner service: answers 200 at once.
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

/// failsafe's future-aware breaker as a tower service.
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<Request<String>> for Failsafe<S, B>
where
    S: Service<Request<String>>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

/// One request whose streamed body is read to its end.
async fn one_streamed<S, B>(svc: &mut S)
where
    S: Service<Request<String>, Response = Response<B>>,
    B: http_body::Body + Unpin,
{
    use http_body_util::BodyExt;
    if let Ok(svc) = svc.ready().await {
        if let Ok(response) = svc.call(Request::new(String::new())).await {
            let mut body = response.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                black_box(frame);
            }
        }
    }
}

/// [`single`] for a streamed answer read to its end.
fn single_streamed<S, B>(b: &mut Bencher<'_>, mut svc: S)
where
    S: Service<Request<String>, Response = Response<B>>,
    B: http_body::Body + Unpin,
{
    let rt = support::rt();
    b.iter_custom(|iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                one_streamed(&mut svc).await;
            }
            start.elapsed()
        })
    });
}

async fn one<S>(svc: &mut S)
where
    S: Service<Request<String>>,
{
    if let Ok(svc) = svc.ready().await {
        black_box(svc.call(Request::new(String::new())).await.is_ok());
    }
}

/// One thread: `iters` requests inside one `block_on`, so that the runtime's
/// entry cost is not counted.
fn single<S>(b: &mut Bencher<'_>, mut svc: S)
where
    S: Service<Request<String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    b.iter_custom(|iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                one(&mut svc).await;
            }
            start.elapsed()
        })
    });
}

/// Two threads, each on its own current-thread runtime, share one breaker
/// (clones of one service); the time is per request on each thread.
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
                            one(&mut svc).await;
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
            .unwrap_or(Duration::ZERO)
    });
}

fn ours() -> impl Service<Request<String>> + Clone + Send + 'static {
    CircuitBreakerLayer::new().layer(Noop)
}

/// Four keys in turn: every call misses the per-clone cache and looks its
/// key up in the shared map.
fn ours_keyed() -> impl Service<Request<String>> + Clone + Send + 'static {
    const KEYS: [Key; 4] = [
        Key::from_static("gpt-4o"),
        Key::from_static("gpt-4o-mini"),
        Key::from_static("claude-sonnet"),
        Key::from_static("gemini-flash"),
    ];
    let next = Arc::new(AtomicUsize::new(0));
    let key_fn = move |_: &Request<String>| KEYS[next.fetch_add(1, Relaxed) % KEYS.len()].clone();
    CircuitBreakerLayer::new().key_fn(key_fn).layer(Noop)
}

/// A time window: one clock read per recorded call.
fn ours_time_window() -> impl Service<Request<String>> + Clone + Send + 'static {
    CircuitBreakerLayer::new()
        .window(FailureWindow::Time(Duration::from_secs(30)))
        .layer(Noop)
}

fn tower_resilience() -> impl Service<Request<String>> + Clone + Send + 'static {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .build()
        .unwrap()
        .layer(Noop)
}

fn failsafe() -> impl Service<Request<String>> + Clone + Send + 'static {
    Failsafe {
        inner: Noop,
        breaker: failsafe::Config::new().build(),
    }
}

/// Runs the case named by `CALLGRIND_CASE` (`baseline`, `ours`,
/// `ours_keyed`, `ours_time_window`, and `stream_baseline:N`,
/// `stream_ours:N` for a stream of N chunks) `CALLGRIND_ITERS` times
/// (default 10,000) and exits; does nothing when it is not set.
fn instructions() {
    let Some((case, iters)) = support::callgrind_case() else {
        return;
    };
    match case.as_str() {
        "baseline" => support::count_instructions(Noop, empty_request, iters),
        "ours" => support::count_instructions(ours(), empty_request, iters),
        "ours_keyed" => support::count_instructions(ours_keyed(), empty_request, iters),
        "ours_time_window" => support::count_instructions(ours_time_window(), empty_request, iters),
        other => match other.split_once(':') {
            Some(("stream_baseline", n)) => {
                let sse = support::Sse(n.parse().unwrap());
                support::count_instructions_streamed(sse, empty_request, iters)
            }
            Some(("stream_ours", n)) => {
                let sse = support::Sse(n.parse().unwrap());
                let svc = CircuitBreakerLayer::new().layer(sse);
                support::count_instructions_streamed(svc, empty_request, iters)
            }
            _ => panic!("unknown case {other}"),
        },
    }
    std::process::exit(0);
}

fn empty_request() -> Request<String> {
    Request::new(String::new())
}

fn bench(c: &mut Criterion) {
    instructions();
    eprintln!("allocations per request:");
    for (name, n) in [
        ("baseline no-op", allocs_per_request(Noop)),
        ("ours, closed", allocs_per_request(ours())),
        (
            "ours, closed, 4 keys in turn",
            allocs_per_request(ours_keyed()),
        ),
        (
            "ours, closed, time window",
            allocs_per_request(ours_time_window()),
        ),
        (
            "stream of 64: baseline no-op",
            allocs_per_request(support::Sse(64)),
        ),
        (
            "stream of 64: ours, closed",
            allocs_per_request(CircuitBreakerLayer::new().layer(support::Sse(64))),
        ),
    ] {
        eprintln!("  {name:<30} {n:>5.2}");
    }
    let mut g = c.benchmark_group("circuit_breaker");
    g.bench_function("baseline no-op", |b| single(b, Noop));
    g.bench_function("ours, closed", |b| single(b, ours()));
    g.bench_function("ours, closed, 4 keys in turn", |b| single(b, ours_keyed()));
    g.bench_function("ours, closed, time window", |b| {
        single(b, ours_time_window())
    });
    g.bench_function("tower-resilience 0.13, closed", |b| {
        single(b, tower_resilience())
    });
    g.bench_function("failsafe 1.3, closed", |b| single(b, failsafe()));
    for frames in [1, 64] {
        g.bench_function(format!("stream of {frames}: baseline no-op"), |b| {
            single_streamed(b, support::Sse(frames))
        });
        g.bench_function(format!("stream of {frames}: ours, closed"), |b| {
            single_streamed(b, CircuitBreakerLayer::new().layer(support::Sse(frames)))
        });
    }
    g.bench_function("2 threads: baseline no-op", |b| contended(b, Noop));
    g.bench_function("2 threads: ours, closed", |b| contended(b, ours()));
    g.bench_function("2 threads: tower-resilience 0.13, closed", |b| {
        contended(b, tower_resilience())
    });
    g.bench_function("2 threads: failsafe 1.3, closed", |b| {
        contended(b, failsafe())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
