//! One worker of many sharing one provider quota through Redis.
//!
//! Start a Redis (`redis-server --port 6379 --save ""`), then run this in
//! three terminals at once:
//!
//! ```text
//! cargo run --release --features redis --example redis_worker -- \
//!     --redis redis://127.0.0.1:6379/ --rpm 120 --seconds 30 --name w1
//! ```
//!
//! Each worker hammers a stand-in provider through `RateLimitLayer` with a
//! `RedisStore`, and prints what it was admitted each second. Together the
//! workers get 120 requests per minute, not 120 each; stop Redis mid-run to
//! see the fault policy (`--fail-open N` to fall back to 120/N locally).

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer};
use tower_llm_resilience::redis_store::{FaultPolicy, RedisStore};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = arg("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let rpm: u64 = arg("--rpm").and_then(|v| v.parse().ok()).unwrap_or(120);
    let seconds: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(30);
    let name = arg("--name").unwrap_or_else(|| format!("pid {}", std::process::id()));
    let policy = match arg("--fail-open").and_then(|v| v.parse().ok()) {
        Some(processes) => FaultPolicy::FailOpen { processes },
        None => FaultPolicy::FailClosed,
    };

    let limits = Limits::new().requests_per_minute(rpm);
    let store = RedisStore::builder(limits.clone())
        .prefix("redis-worker-example")
        .fault_policy(policy)
        .build(&url)
        .expect("a valid Redis URL");
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limits).store(store.clone()))
        .service_fn(|_req: http::Request<String>| async {
            // A stand-in for the provider.
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });

    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut admitted, mut refused) = (0u64, 0u64);
    tick.tick().await;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut inflight = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut svc = svc.clone();
        let counter = counter.clone();
        inflight.spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            while tokio::time::Instant::now() < end {
                let req = http::Request::new(String::new());
                match svc.ready().await.unwrap().call(req).await {
                    Ok(_) => {
                        ok += 1;
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        err += 1;
                        eprintln!("refused: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            (ok, err)
        });
    }
    let (mut elapsed, mut seen) = (0, 0);
    while elapsed < seconds {
        tick.tick().await;
        elapsed += 1;
        let now = counter.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{name}: {elapsed:>3}s  admitted {:>4} this second",
            now - seen
        );
        seen = now;
    }
    // Requests still waiting for the next window are dropped (and their
    // reservations given back).
    inflight.abort_all();
    while let Some(r) = inflight.join_next().await {
        if let Ok((_, err)) = r {
            refused += err;
        }
    }
    admitted += counter.load(std::sync::atomic::Ordering::Relaxed);
    // Let the cancellations reach Redis before the process exits.
    store.flush().await;
    println!(
        "{name}: {admitted} admitted, {refused} refused in {seconds}s (quota {rpm}/min shared)"
    );
}
