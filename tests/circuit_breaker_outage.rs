//! A provider that is down for 60 s, under paused time: how many calls
//! reach it during the outage with and without the breaker, and how long
//! the client takes to recover once it is back. Deterministic; prints its
//! figures with `cargo test --test circuit_breaker_outage -- --nocapture`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, ResponseBody};
use tower_llm_resilience::events::Events;
use tower_llm_resilience::BoxError;

const RATE: Duration = Duration::from_millis(100); // 10 calls per second
const BEFORE: Duration = Duration::from_secs(10);
const OUTAGE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(60);
const LATENCY_OK: Duration = Duration::from_millis(800);
const LATENCY_DOWN: Duration = Duration::from_millis(50);

type Svc = BoxCloneService<Request<String>, Response<String>, BoxError>;

#[derive(Debug)]
struct Figures {
    /// Calls that reached the provider while it was down.
    sent_during_outage: u32,
    /// Calls the client issued while the provider was down.
    issued_during_outage: u32,
    /// From the provider's return to the first call after which every call
    /// succeeds.
    recovery: Duration,
    /// Calls that failed after the provider was back.
    failed_after_return: u32,
    opened: u64,
}

type Answer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<String>, BoxError>> + Send>>;

/// 503 during [t0, t0 + 60 s), 200 otherwise.
fn provider(t0: Instant, hits: Arc<AtomicU32>) -> impl Fn(Request<String>) -> Answer + Clone {
    move |_req| {
        let now = Instant::now();
        let down = now >= t0 && now < t0 + OUTAGE;
        if down {
            hits.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            let (status, latency) = if down {
                (503, LATENCY_DOWN)
            } else {
                (200, LATENCY_OK)
            };
            tokio::time::sleep(latency).await;
            Ok(Response::builder()
                .status(status)
                .body(String::new())
                .unwrap())
        })
    }
}

async fn run(breaker: Option<CircuitBreakerLayer>) -> Figures {
    let start = Instant::now();
    let t0 = start + BEFORE;
    let back = t0 + OUTAGE;
    let hits = Arc::new(AtomicU32::new(0));
    let inner = service_fn(provider(t0, hits.clone()));
    let events = Events::new();
    let svc: Svc = match breaker {
        Some(layer) => {
            let cb = layer.events(events.clone()).layer(inner);
            BoxCloneService::new(
                cb.map_response(|r| r.map(ResponseBody::into_inner))
                    .map_err(BoxError::from),
            )
        }
        None => BoxCloneService::new(inner),
    };
    let mut calls = Vec::new();
    let end = back + AFTER;
    while Instant::now() < end {
        let svc = svc.clone();
        calls.push(tokio::spawn(async move {
            let issued = Instant::now();
            let ok = matches!(svc.oneshot(Request::new(String::new())).await, Ok(r) if r.status() == 200);
            (issued, ok)
        }));
        tokio::time::sleep(RATE).await;
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    let issued_during_outage = results
        .iter()
        .filter(|(t, _)| *t >= t0 && *t < back)
        .count() as u32;
    let failed_after_return = results.iter().filter(|(t, ok)| *t >= back && !ok).count() as u32;
    let last_failure = results
        .iter()
        .filter(|(t, ok)| *t >= back && !ok)
        .map(|(t, _)| *t)
        .max();
    let recovery = match last_failure {
        None => Duration::ZERO,
        Some(t) => results
            .iter()
            .map(|(i, _)| *i)
            .find(|i| *i > t)
            .unwrap()
            .duration_since(back),
    };
    Figures {
        sent_during_outage: hits.load(Ordering::SeqCst),
        issued_during_outage,
        recovery,
        failed_after_return,
        opened: events.counters().snapshot().circuit_opened,
    }
}

#[tokio::test(start_paused = true)]
async fn a_sixty_second_outage() {
    let without = run(None).await;
    let default = run(Some(CircuitBreakerLayer::new())).await;
    let backoff = run(Some(
        CircuitBreakerLayer::new().open_backoff(2.0, Duration::from_secs(60)),
    ))
    .await;
    println!("| breaker | calls issued during the outage | calls sent to the provider | recovery after it is back | failed calls after it is back | trips |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, f) in [
        ("none", &without),
        ("default (open 10 s, 3 probes)", &default),
        ("with open_backoff(2.0, 60 s)", &backoff),
    ] {
        println!(
            "| {name} | {} | {} | {:.1} s | {} | {} |",
            f.issued_during_outage,
            f.sent_during_outage,
            f.recovery.as_secs_f64(),
            f.failed_after_return,
            f.opened
        );
    }
    assert_eq!(without.issued_during_outage, 600);
    assert_eq!(without.sent_during_outage, 600);
    assert_eq!(without.recovery, Duration::ZERO);
    // The breaker sends the minimum to trip, then 3 probes per 10 s.
    assert!(default.sent_during_outage <= 40, "{default:?}");
    assert!(default.recovery <= Duration::from_secs(11), "{default:?}");
    assert!(
        backoff.sent_during_outage <= default.sent_during_outage,
        "{backoff:?}"
    );
    assert!(backoff.recovery <= Duration::from_secs(61), "{backoff:?}");
}
