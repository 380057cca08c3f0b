//! The whole stack (`LlmLayer`) against the simulated provider: in process
//! under paused time, and over loopback HTTP/1 and HTTP/2 with hyper-util's
//! client. Every item is answered exactly once, in order, with the label the
//! provider served, and the limiter keeps the provider's 429s under 1 %.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tower::Layer;
use tower_llm_resilience::batch::Batch;
use tower_llm_resilience::rate_limit::{Dimension, Limits, TokenEstimate};
use tower_llm_resilience::sim::{count_tokens, label, Fault, SimProvider, Verdict};
use tower_llm_resilience::{LlmLayer, Provider};

mod support;

use support::{content, counting, texts};

const MAX_TOKENS: u64 = 4;

/// A chat completion request whose token estimate is what the provider
/// charges: the prompt's tokens plus `max_tokens`.
fn request(i: usize, text: &str, base: &str) -> Request<String> {
    let prompt = format!("Classify.\nText: {text}");
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}]
    });
    let mut req = Request::post(format!("{base}/chat/completions"))
        .header("x-request-id", i.to_string())
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let tokens = count_tokens(prompt.chars().count()) + MAX_TOKENS;
    req.extensions_mut().insert(TokenEstimate::total(tokens));
    req
}

/// The label of each response, or its error's message.
async fn labels_of<B>(
    results: Vec<Result<http::Response<B>, tower_llm_resilience::Error>>,
) -> Vec<Result<String, String>>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut labels = Vec::new();
    for result in results {
        labels.push(match result {
            Ok(response) => Ok(content(
                &response.into_body().collect().await.unwrap().to_bytes(),
            )),
            Err(e) => Err(e.to_string()),
        });
    }
    labels
}

/// Checks the run: one result per input, in order, each label what the
/// provider served once for that input, and at most 1 % of requests 429.
fn check(sim: &SimProvider, texts: &[String], labels: &[Result<String, String>]) {
    assert_eq!(labels.len(), texts.len());
    let log = sim.log();
    let mut completed: HashMap<usize, Vec<&'static str>> = HashMap::new();
    for served in &log {
        if served.outcome == Verdict::Completed {
            let id: usize = served
                .client_request_id
                .as_deref()
                .unwrap()
                .parse()
                .unwrap();
            completed.entry(id).or_default().push(served.label.unwrap());
        }
    }
    for (i, (text, got)) in texts.iter().zip(labels).enumerate() {
        let got = got
            .as_ref()
            .unwrap_or_else(|e| panic!("item {i} failed: {e}"));
        assert_eq!(
            got,
            label(text),
            "item {i}: results come back in input order"
        );
        assert_eq!(
            completed.get(&i).map(Vec::as_slice),
            Some(&[label(text)][..]),
            "item {i} answered exactly once"
        );
    }
    let stats = sim.stats();
    assert!(
        stats.rate_limited() * 100 <= stats.requests,
        "429s: {} of {} requests",
        stats.rate_limited(),
        stats.requests
    );
}

#[tokio::test(start_paused = true)]
async fn in_process_with_faults() {
    let window = Duration::from_secs(10);
    let sim = SimProvider::builder()
        .rpm(60)
        .tpm(1_200)
        .window(window)
        .seed(7)
        .fault(Fault::ServerError, 0.02)
        .fault(Fault::ServiceUnavailable, 0.01)
        .fault(Fault::Overloaded, 0.01)
        .fault(Fault::ConnectionReset, 0.01)
        .fault(Fault::Slow(Duration::from_secs(2)), 0.01)
        .latency(Duration::from_millis(300))
        .build();
    let layer = LlmLayer::new(Provider::OpenAi).limits(
        Limits::new()
            .window(Dimension::Requests, window, 60)
            .window(Dimension::Tokens, window, 1_200),
    );
    let events = layer.events_handle().clone();
    let stack = layer.layer(sim.clone());
    let texts = texts(200);
    let requests: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| request(i, t, "/v1"))
        .collect();
    let tokens: u64 = requests
        .iter()
        .map(|r| {
            r.extensions()
                .get::<TokenEstimate>()
                .unwrap()
                .total_tokens()
        })
        .sum();

    let start = tokio::time::Instant::now();
    let results = Batch::new(stack).concurrency(16).run(requests).await;
    let elapsed = start.elapsed();
    let labels = labels_of(results).await;
    check(&sim, &texts, &labels);

    // The limiter, not the provider, paced the run: close to the
    // theoretical minimum W * (max(ceil(N / R), ceil(tokens / T)) - 1).
    let windows = (200u64.div_ceil(60)).max(tokens.div_ceil(1_200)) - 1;
    let minimum = window * windows as u32;
    assert!(elapsed >= minimum, "{elapsed:?} < {minimum:?}");
    assert!(
        elapsed <= minimum + Duration::from_secs(15),
        "{elapsed:?} vs minimum {minimum:?}"
    );
    let summary = events.counters().snapshot();
    assert!(summary.retries > 0, "the faults were retried");
    assert!(
        summary.rate_limit_waits > 0,
        "the limiter held requests back"
    );
}

async fn over_http(http2: bool) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let window = Duration::from_secs(2);
    let sim = SimProvider::builder()
        .rpm(50)
        .tpm(1_000)
        .window(window)
        .seed(11)
        .fault(Fault::ServerError, 0.03)
        .fault(Fault::ConnectionReset, 0.02)
        .latency(Duration::from_millis(20))
        .build();
    let server = sim.serve().await.unwrap();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<String>();
    // The provider counts a request when it arrives, the limiter when it
    // sends it: the arrival margin absorbs the difference (here 10 % of a
    // short test window, twice the default for it, for a loaded machine's
    // real clock).
    let stack = LlmLayer::new(Provider::OpenAi)
        .limits(
            Limits::new()
                .window(Dimension::Requests, window, 50)
                .window(Dimension::Tokens, window, 1_000),
        )
        .arrival_margin(Duration::from_millis(200))
        .layer(client);
    let texts = texts(120);
    let base = server.base_url();
    let requests: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| request(i, t, &base))
        .collect();
    let results = Batch::new(stack).concurrency(8).run(requests).await;
    let labels = labels_of(results).await;
    server.shutdown().await;
    check(&sim, &texts, &labels);
}

#[tokio::test]
async fn over_loopback_http1() {
    over_http(false).await;
}

#[tokio::test]
async fn over_loopback_http2() {
    over_http(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_never_answers_times_out_and_is_retried() {
    use tower::{Service, ServiceExt};

    // The first attempt hangs forever; the second is answered at once.
    let (calls, provider) = counting(|n| async move {
        if n == 0 {
            std::future::pending::<()>().await;
        }
        Ok::<_, std::io::Error>(http::Response::new(String::from("{}")))
    });
    let mut stack = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .attempt_timeout(Duration::from_secs(30))
        .layer(provider);
    let start = tokio::time::Instant::now();
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    assert!(response.is_ok());
    assert_eq!(calls.get(), 2);
    assert!(start.elapsed() >= Duration::from_secs(30));

    // A provider that never answers: every attempt times out, then a
    // typed timeout error, never an endless wait.
    let never = tower::service_fn(|_: Request<String>| async {
        std::future::pending::<Result<http::Response<String>, std::io::Error>>().await
    });
    let mut stack = LlmLayer::new(Provider::OpenAi)
        .attempt_timeout(Duration::from_secs(10))
        .layer(never);
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(error.is_retryable());
}
