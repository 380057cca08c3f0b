//! A patient batch through the whole stack survives provider outages in
//! paused time (`examples/outage` prints the same runs as a table).

#[allow(dead_code)]
#[path = "../examples/outage/scenarios.rs"]
mod scenarios;
mod support;

use std::time::Duration;

use scenarios::{run, theoretical_minimum, Scenario, FOREVER, ITEMS, WINDOW};
use tower_llm_resilience::batch::{Patience, DEFAULT_GIVE_UP_AFTER};

fn patient(outage: Duration) -> Scenario {
    Scenario {
        outage,
        patience: Patience::default(),
    }
}

/// A probe per open interval, not a flood: the calls in flight when the
/// provider fell (each retried by the retry layer: 16 x 4 attempts at
/// most), then a few requests per open interval of the breaker (its probes
/// and their retries, which the retry budget's reserve of 1/s bounds).
fn bounded_while_down(f: &scenarios::Figures, outage: Duration) -> bool {
    let burst = 16 * 4;
    f.sent_during_outage as f64 <= burst as f64 + 1.2 * outage.as_secs_f64()
}

fn check_survives(outage: Duration) {
    let f = run(patient(outage));
    println!("outage {outage:?}: {f:?}");
    assert_eq!(f.succeeded, ITEMS, "nothing lost: {f:?}");
    assert_eq!(f.lost, 0);
    let bound = outage + theoretical_minimum() + WINDOW * 3;
    assert!(f.elapsed <= bound, "{:?} > {bound:?}: {f:?}", f.elapsed);
    assert!(bounded_while_down(&f, outage), "{f:?}");
}

#[test]
fn ten_second_outage_loses_nothing() {
    check_survives(Duration::from_secs(10));
}

#[test]
fn one_minute_outage_loses_nothing() {
    check_survives(Duration::from_secs(60));
}

#[test]
fn five_minute_outage_loses_nothing() {
    check_survives(Duration::from_secs(300));
}

#[test]
fn a_provider_that_never_comes_back_ends_every_item_by_the_job_limit() {
    let f = run(patient(FOREVER));
    println!("never back: {f:?}");
    assert_eq!(f.succeeded + f.lost, ITEMS, "every item answered once");
    assert!(f.succeeded < ITEMS / 2);
    assert_eq!(f.gave_up, ITEMS - f.succeeded, "{f:?}");
    assert!(f.errors_typed);
    // by the limit: its start (the first failure, just after the last
    // success) plus the limit plus the
    // longest call in flight (they are dropped at the limit)
    assert!(
        f.elapsed <= DEFAULT_GIVE_UP_AFTER + Duration::from_secs(2),
        "{f:?}"
    );
    assert!(f.elapsed >= DEFAULT_GIVE_UP_AFTER, "{f:?}");
    assert!(bounded_while_down(&f, f.elapsed), "{f:?}");
}

#[test]
fn without_patience_the_same_outage_loses_most_of_the_batch() {
    let f = run(Scenario {
        outage: Duration::from_secs(10),
        patience: Patience::fail_fast(),
    });
    println!("fail fast, 10 s outage: {f:?}");
    assert!(f.lost > ITEMS / 2, "{f:?}");
}

/// Issue #11's reproduction: 30 answers of 503, then healthy; 20 requests
/// spread over 2 s through `LlmLayer` with `max_attempts(20)` and a 600 s
/// deadline. Each request alone fails fast (the breaker opens, the retry
/// budget runs out); a patient batch holds them and loses none.
#[tokio::test(start_paused = true)]
async fn thirty_503s_then_healthy_lose_nothing_in_a_patient_batch() {
    use futures::StreamExt;
    use http::Request;
    use tower::Layer;
    use tower_llm_resilience::batch::Batch;
    use tower_llm_resilience::{LlmLayer, Provider};

    let (calls, provider) = support::counting(|n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = if n < 30 { 503 } else { 200 };
        Ok::<_, std::convert::Infallible>(support::answer(status, &[], "{}"))
    });
    let stack = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(1_000)
        .retry(|r| {
            r.max_attempts(20)
                .deadline(Duration::from_secs(600))
                .seed(1)
        })
        .layer(provider);
    let requests = futures::stream::iter(0..20).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Request::post("https://api.openai.com/v1/chat/completions")
            .header("x-request-id", i.to_string())
            .body(String::from(r#"{"max_tokens":1}"#))
            .unwrap()
    });
    let results = Batch::new(stack).concurrency(16).run_stream(requests).await;
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        assert!(
            matches!(r, Ok(response) if response.status() == 200),
            "item {i}: {r:?}"
        );
    }
    assert!(calls.get() >= 50);
}
