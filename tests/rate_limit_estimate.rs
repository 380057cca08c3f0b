//! What a request is charged: a split `TokenEstimate` on a key with input-
//! and output-token limits (Anthropic's), and the `JsonEstimator`'s reading
//! of a body, end to end through the limiter under paused time.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
use tower_llm_resilience::Error;

/// Anthropic's shape: 10,000 input and 1,000 output tokens per minute.
fn anthropic() -> impl Service<Request<String>, Response = Response<impl Sized>, Error = Error> {
    let limits = Limits::new()
        .input_tokens_per_minute(10_000)
        .output_tokens_per_minute(1_000);
    RateLimitLayer::new(limits)
        .arrival_margin(Duration::ZERO)
        .layer(tower::service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }))
}

fn with(estimate: TokenEstimate) -> Request<String> {
    let mut request = Request::new(String::from("{}"));
    request.extensions_mut().insert(estimate);
    request
}

async fn send<S, B>(svc: &mut S, request: Request<String>) -> Result<Duration, Error>
where
    S: Service<Request<String>, Response = Response<B>, Error = Error>,
{
    let start = Instant::now();
    svc.ready().await?.call(request).await?;
    Ok(start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn output_tokens_are_charged_to_the_output_limit() {
    let mut svc = anthropic();
    assert_eq!(
        send(&mut svc, with(TokenEstimate::new(10, 600)))
            .await
            .unwrap(),
        Duration::ZERO
    );
    // 1,200 output tokens do not fit the minute's 1,000: the second waits
    // for the first to leave the window, though input has room.
    assert_eq!(
        send(&mut svc, with(TokenEstimate::new(10, 600)))
            .await
            .unwrap(),
        Duration::from_secs(60)
    );
}

#[tokio::test(start_paused = true)]
async fn an_output_estimate_above_the_whole_output_capacity_fails_at_once() {
    let mut svc = anthropic();
    let error = send(&mut svc, with(TokenEstimate::new(10, 1_001)))
        .await
        .unwrap_err();
    assert!(error.is_over_capacity(), "{error}");
    // and it reserved nothing: a request that fits goes at once
    assert_eq!(
        send(&mut svc, with(TokenEstimate::new(10, 1_000)))
            .await
            .unwrap(),
        Duration::ZERO
    );
}

#[tokio::test(start_paused = true)]
async fn a_total_estimate_counts_as_input() {
    let mut svc = anthropic();
    // 5,000 unsplit tokens twice: the input limit's 10,000, no output
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, with(TokenEstimate::total(5_000)))
                .await
                .unwrap(),
            Duration::ZERO
        );
    }
    assert_eq!(
        send(&mut svc, with(TokenEstimate::new(0, 1_000)))
            .await
            .unwrap(),
        Duration::ZERO
    );
    // the input window is full
    assert_eq!(
        send(&mut svc, with(TokenEstimate::total(1))).await.unwrap(),
        Duration::from_secs(60)
    );
}

#[tokio::test(start_paused = true)]
async fn the_json_estimator_charges_the_top_level_max_tokens_as_output() {
    let mut svc = anthropic();
    // A tool whose schema has a `max_tokens` property above the output
    // capacity: the body's own 400 is what is charged.
    let body = r#"{"tools":[{"name":"summarize","input_schema":{"type":"object",
        "properties":{"max_tokens":{"type":"integer","maximum":8000}},"max_tokens":8000}}],
        "max_tokens":400,"messages":[{"role":"user","content":"Summarize the report."}]}"#;
    let request = || Request::new(String::from(body));
    assert_eq!(send(&mut svc, request()).await.unwrap(), Duration::ZERO);
    assert_eq!(send(&mut svc, request()).await.unwrap(), Duration::ZERO);
    // 1,200 output tokens in the minute: the third waits
    assert_eq!(
        send(&mut svc, request()).await.unwrap(),
        Duration::from_secs(60)
    );
    // a body that asks for more than the whole output capacity fails at once
    let greedy = Request::new(String::from(r#"{"max_tokens":4096,"messages":[]}"#));
    assert!(send(&mut svc, greedy).await.unwrap_err().is_over_capacity());
}
