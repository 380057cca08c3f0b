//! A soak: a million requests (by default fewer in a debug build, see
//! `requests`) through the whole stack, `LlmLayer` over an in-process
//! provider that answers fast with seeded random faults (500, 503, 429
//! with `retry-after`, connection resets, answers slower than the attempt
//! timeout), in paused time, driven by `Batch`. Every request ends exactly
//! once, in input order, and memory stays flat: the bytes live on the heap
//! (a counting allocator in this test binary only) and the process RSS
//! after the warm-up and at the end differ by less than a bound, and the
//! limiter holds one key.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use tower::{Layer, Service};
use tower_llm_resilience::batch::Batch;
use tower_llm_resilience::rate_limit::{Limits, MemoryStore, TokenEstimate};
use tower_llm_resilience::retry::Backoff;
use tower_llm_resilience::{LlmLayer, Provider};

mod support;

use support::live_bytes;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

/// Resident memory from `/proc/self/statm`, in bytes (0 where it cannot be
/// read).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `SOAK_REQUESTS` when set; else 1,000,000 in an optimised build
/// (`cargo test --release --test soak`: about 45 s on 2 cores) and 50,000
/// in a debug build (about 30 s; a million would take over ten minutes).
fn requests() -> u64 {
    if let Some(n) = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return n;
    }
    if cfg!(debug_assertions) {
        50_000
    } else {
        1_000_000
    }
}

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The provider: the answer of each attempt is drawn from a seeded hash of
/// the request's id and the attempt's number.
#[derive(Clone)]
struct Faulty {
    attempts: Arc<AtomicU64>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

type Answer =
    Pin<Box<dyn std::future::Future<Output = Result<Response<String>, std::io::Error>> + Send>>;

impl Service<Request<String>> for Faulty {
    type Response = Response<String>;
    type Error = std::io::Error;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Answer {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let id = request.headers()["x-request-id"].as_bytes().to_vec();
        let roll = mix(attempt ^ 0x5eed) % 1000;
        Box::pin(async move {
            let answer = |status: u16, headers: &[(&str, &str)]| {
                let mut response = Response::builder()
                    .status(status)
                    .header("x-request-id", id.as_slice());
                for (k, v) in headers {
                    response = response.header(*k, *v);
                }
                response.body(String::new()).unwrap()
            };
            match roll {
                0..=29 => Ok(answer(500, &[])),
                30..=49 => Ok(answer(503, &[])),
                50..=59 => Ok(answer(429, &[("retry-after", "1")])),
                60..=79 => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by peer",
                )),
                80..=89 => {
                    // Slower than the attempt timeout: it times out.
                    tokio::time::sleep(ATTEMPT_TIMEOUT * 2).await;
                    Ok(answer(200, &[]))
                }
                r => {
                    tokio::time::sleep(Duration::from_millis(r % 50)).await;
                    Ok(answer(200, &[("x-ratelimit-remaining-requests", "999")]))
                }
            }
        })
    }
}

fn request(i: u64) -> Request<String> {
    let mut request = Request::post("/v1/chat/completions")
        .header("x-request-id", i.to_string())
        .body(String::from(r#"{"max_tokens":4,"messages":[]}"#))
        .unwrap();
    request.extensions_mut().insert(TokenEstimate::total(20));
    request
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_million_requests_end_exactly_once_in_flat_memory() {
    let n = requests();
    let warm_up = n / 10;
    let limits = Limits::new()
        .requests_per_minute(600_000)
        .tokens_per_minute(20_000_000);
    let store = MemoryStore::new(limits.clone());
    let provider = Faulty {
        attempts: Arc::default(),
    };
    let layer = LlmLayer::new(Provider::OpenAi)
        .limits(limits)
        .store(store.clone())
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry(|r| {
            r.backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .seed(1)
        });
    let events = layer.events_handle().clone();
    let stack = layer.layer(provider.clone());

    let wall = std::time::Instant::now();
    let start = tokio::time::Instant::now();
    let mut results = Batch::new(stack)
        .concurrency(64)
        .stream((0..n).map(request));
    let (mut ok, mut failed, mut next) = (0u64, 0u64, 0u64);
    let mut after_warm_up = None;
    let mut peak_live = 0isize;
    while let Some(result) = results.next().await {
        match result {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                // Results come back in input order, each once.
                let id = response.headers()["x-request-id"].to_str().unwrap();
                assert_eq!(id.parse::<u64>().unwrap(), next, "out of order");
                ok += 1;
            }
            Err(e) => {
                assert!(
                    e.is_retryable() || e.is_retry_budget_exhausted() || e.is_circuit_open(),
                    "request {next}: {e}"
                );
                failed += 1;
            }
        }
        next += 1;
        if next == warm_up {
            after_warm_up = Some((live_bytes(), rss()));
        }
        if next > warm_up && next % 1024 == 0 {
            peak_live = peak_live.max(live_bytes());
        }
    }
    drop(results);
    let elapsed = wall.elapsed();
    assert_eq!(next, n, "one result per request");
    assert_eq!(ok + failed, n);
    let (live_then, rss_then) = after_warm_up.unwrap();
    let (live_now, rss_now) = (live_bytes(), rss());
    let summary = events.counters().snapshot();
    eprintln!(
        "soak: {n} requests, {ok} ok, {failed} failed, {} attempts, {:?} virtual, {elapsed:?} wall; \
         heap live after warm-up {live_then} B, peak {peak_live} B, end {live_now} B; \
         RSS after warm-up {} KiB, end {} KiB; {summary:?}",
        provider.attempts.load(Ordering::Relaxed),
        start.elapsed(),
        rss_then / 1024,
        rss_now / 1024,
    );
    assert!(ok >= n * 95 / 100, "{ok} of {n} succeeded");
    // Flat: the heap after the run is within 4 MiB of the heap after the
    // warm-up, and so is its peak during the run; the RSS within 32 MiB.
    const MIB: isize = 1 << 20;
    assert!(
        live_now - live_then < 4 * MIB,
        "heap grew from {live_then} to {live_now}"
    );
    assert!(
        peak_live - live_then < 4 * MIB,
        "heap peaked at {peak_live} from {live_then}"
    );
    if rss_then > 0 {
        assert!(
            rss_now.saturating_sub(rss_then) < 32 << 20,
            "RSS grew from {rss_then} to {rss_now}"
        );
    }
    assert!(store.len() <= 1, "{} keys", store.len());
}
