//! A deterministic, paused-time comparison of three retry policies against a
//! simulated provider that answers 429 with `retry-after-ms` when a sliding
//! window of requests is full.
//!
//! ```text
//! cargo run --example retry_comparison
//! ```
//!
//! The policies:
//!
//! - **ours**: `RetryLayer::new()` with its defaults (10 attempts for 429,
//!   the server's wait plus up to 10 % as a floor under its backoff,
//!   capped at 60 s).
//! - **tower stock**: `tower::retry::Retry` with its `ExponentialBackoff`
//!   (500 ms doubling to 8 s, jitter 0.99) and 3 retries; it cannot read
//!   `Retry-After`.
//! - **openai-python-like**: 2 retries; the server's wait when it is in
//!   (0, 60 s], else 0.5 s x 2^n up to 8 s, times U(0.75, 1).
//!
//! Every run uses a fresh paused clock and fixed seeds, so the table is the
//! same on every machine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tower::retry::backoff::{
    Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff,
};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::retry::RetryLayer;

/// A provider that admits `limit` requests per sliding `window` and answers
/// the others 429 with `retry-after-ms` = when the oldest admitted request
/// leaves the window.
#[derive(Clone)]
struct SimProvider {
    limit: usize,
    window: Duration,
    latency: Duration,
    admitted: Arc<Mutex<VecDeque<Instant>>>,
    calls: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl SimProvider {
    fn new(limit: usize, window: Duration) -> Self {
        SimProvider {
            limit,
            window,
            latency: Duration::from_millis(400),
            admitted: Arc::default(),
            calls: Arc::default(),
            rejected: Arc::default(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<Bytes>> for SimProvider {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Bytes>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut admitted = self.admitted.lock().unwrap();
        while admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            admitted.pop_front();
        }
        if admitted.len() < self.limit {
            admitted.push_back(now);
            let latency = self.latency;
            Box::pin(async move {
                tokio::time::sleep(latency).await;
                Ok(Response::new("ok".to_string()))
            })
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            let oldest = *admitted.front().unwrap();
            let wait = (oldest + self.window).duration_since(now);
            let mut r = Response::new(String::new());
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut().insert(
                "retry-after-ms",
                wait.as_millis().max(1).to_string().parse().unwrap(),
            );
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(r)
            })
        }
    }
}

/// tower's `Rng` over a seeded `SmallRng`, so tower's backoff is
/// deterministic here.
#[derive(Clone)]
struct Seeded(SmallRng);

impl tower::util::rng::Rng for Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0.random()
    }
}

/// The stock policy: retry 429 and 5xx up to `retries` times with tower's
/// exponential backoff.
#[derive(Clone)]
struct StockPolicy {
    backoff: ExponentialBackoff<Seeded>,
    retries: u32,
}

impl<B: Clone> tower::retry::Policy<Request<B>, Response<String>, Infallible> for StockPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<B>,
        result: &mut Result<Response<String>, Infallible>,
    ) -> Option<Self::Future> {
        let Ok(r) = result else { return None };
        let s = r.status();
        if self.retries == 0 || !(s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()) {
            return None;
        }
        self.retries -= 1;
        Some(self.backoff.next_backoff())
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy(req))
    }
}

/// openai-python's `_calculate_retry_timeout`, as a tower policy.
#[derive(Clone)]
struct OpenAiPythonPolicy {
    retries_taken: u32,
    max_retries: u32,
    rng: Arc<Mutex<SmallRng>>,
}

impl<B: Clone> tower::retry::Policy<Request<B>, Response<String>, Infallible>
    for OpenAiPythonPolicy
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<B>,
        result: &mut Result<Response<String>, Infallible>,
    ) -> Option<Self::Future> {
        let Ok(r) = result else { return None };
        let s = r.status().as_u16();
        let retryable = matches!(s, 408 | 409 | 429) || s >= 500;
        if !retryable || self.retries_taken >= self.max_retries {
            return None;
        }
        let server = r
            .headers()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|ms| ms / 1000.0);
        let wait = match server {
            Some(secs) if secs > 0.0 && secs <= 60.0 => secs,
            _ => {
                let n = self.retries_taken;
                let base = (0.5 * 2f64.powi(n as i32)).min(8.0);
                let jitter = 1.0 - 0.25 * self.rng.lock().unwrap().random::<f64>();
                base * jitter
            }
        };
        self.retries_taken += 1;
        Some(tokio::time::sleep(Duration::from_secs_f64(wait)))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy(req))
    }
}

fn copy<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    requests: u32,
    /// Time between two arrivals.
    every: Duration,
    limit: usize,
    window: Duration,
}

struct Row {
    policy: &'static str,
    ok: u32,
    failed: u32,
    attempts: u64,
    rejected: u64,
    makespan: Duration,
    p50: Duration,
    max: Duration,
}

/// Runs `scenario` against a fresh provider, building the client with
/// `client`, on a fresh paused clock.
fn run<S, F>(scenario: Scenario, policy: &'static str, client: F) -> Row
where
    F: FnOnce(SimProvider) -> S,
    S: Service<Request<Bytes>, Response = Response<String>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let provider = SimProvider::new(scenario.limit, scenario.window);
        let service = client(provider.clone());
        let start = Instant::now();
        let tasks: Vec<_> = (0..scenario.requests)
            .map(|i| {
                let service = service.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(start + scenario.every * i).await;
                    let sent = Instant::now();
                    let req = Request::post("https://sim/v1/chat/completions")
                        .body(Bytes::from_static(b"{\"model\":\"m\"}"))
                        .unwrap();
                    let result = service.oneshot(req).await;
                    let ok = matches!(&result, Ok(r) if r.status().is_success());
                    (ok, sent.elapsed(), start.elapsed())
                })
            })
            .collect();
        let mut ok = 0;
        let mut latencies = Vec::new();
        let mut makespan = Duration::ZERO;
        for t in tasks {
            let (success, latency, end) = t.await.unwrap();
            ok += u32::from(success);
            latencies.push(latency);
            makespan = makespan.max(end);
        }
        latencies.sort();
        Row {
            policy,
            ok,
            failed: scenario.requests - ok,
            attempts: provider.calls.load(Ordering::Relaxed),
            rejected: provider.rejected.load(Ordering::Relaxed),
            makespan,
            p50: latencies[latencies.len() / 2],
            max: *latencies.last().unwrap(),
        }
    })
}

/// Prints the tables; panics if our policy loses a request in a scenario.
pub fn main() {
    let scenarios = [
        Scenario {
            name: "burst: 60 requests at once, limit 20 per 10 s",
            requests: 60,
            every: Duration::ZERO,
            limit: 20,
            window: Duration::from_secs(10),
        },
        Scenario {
            name: "overload: 200 requests at 8/s, limit 50 per 10 s (5/s)",
            requests: 200,
            every: Duration::from_millis(125),
            limit: 50,
            window: Duration::from_secs(10),
        },
    ];
    for scenario in scenarios {
        println!("\n### {}\n", scenario.name);
        println!("| policy | succeeded | gave up | attempts | 429s | total time | p50 latency | max latency |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let rows = [
            run(scenario, "ours (RetryLayer defaults)", |p| {
                RetryLayer::new().seed(1).layer(p)
            }),
            run(
                scenario,
                "tower Retry + ExponentialBackoff, 3 retries",
                |p| {
                    let backoff = ExponentialBackoffMaker::new(
                        Duration::from_millis(500),
                        Duration::from_secs(8),
                        0.99,
                        Seeded(SmallRng::seed_from_u64(1)),
                    )
                    .unwrap()
                    .make_backoff();
                    tower::retry::RetryLayer::new(StockPolicy {
                        backoff,
                        retries: 3,
                    })
                    .layer(p)
                },
            ),
            run(scenario, "openai-python-like, 2 retries", |p| {
                tower::retry::RetryLayer::new(OpenAiPythonPolicy {
                    retries_taken: 0,
                    max_retries: 2,
                    rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(1))),
                })
                .layer(p)
            }),
        ];
        assert_eq!(
            rows[0].failed, 0,
            "ours lost a request in {}",
            scenario.name
        );
        for r in rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.1} s | {:.1} s | {:.1} s |",
                r.policy,
                r.ok,
                r.failed,
                r.attempts,
                r.rejected,
                r.makespan.as_secs_f64(),
                r.p50.as_secs_f64(),
                r.max.as_secs_f64()
            );
        }
        // The same scenario with other seeds: the jitter changes who wins a
        // freed slot, so show the spread rather than one lucky draw.
        let mut lost = Vec::new();
        let mut attempts = Vec::new();
        for seed in 1..=20 {
            let r = run(scenario, "ours", |p| RetryLayer::new().seed(seed).layer(p));
            lost.push(r.failed);
            attempts.push(r.attempts);
        }
        println!(
            "\nours over seeds 1..=20: gave up {}..={} (total {}), attempts {}..={}",
            lost.iter().min().unwrap(),
            lost.iter().max().unwrap(),
            lost.iter().sum::<u32>(),
            attempts.iter().min().unwrap(),
            attempts.iter().max().unwrap()
        );
        assert!(
            lost.iter().all(|l| *l == 0),
            "ours lost requests in {}",
            scenario.name
        );
    }
}
