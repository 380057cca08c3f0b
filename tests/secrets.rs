//! No API key anywhere: requests carrying a secret in `authorization`,
//! `x-api-key` and `api-key` go through the whole stack (success, 401, 429,
//! 500, a connection reset; in process and over loopback HTTP/1 and
//! HTTP/2) keyed by `ByHeader`, with every `tracing` event of every crate
//! captured at TRACE level and an events listener. Every `Error`, `Event`,
//! `Key`, layer, service, future and the events `Summary` is formatted with
//! `{:?}` and (where it has one) `{}`; the secret appears in none.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, AUTHORIZATION};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::batch::Batch;
use tower_llm_resilience::events::{Event, Events};
use tower_llm_resilience::key::{ByHeader, KeyFn};
use tower_llm_resilience::retry::Backoff;
use tower_llm_resilience::sim::SimProvider;
use tower_llm_resilience::{LlmLayer, Provider};

const SECRET: &str = "sk-live-SECRET-7f3a9c2e1b8d4f60";
/// Parts of the secret that must not appear either (a prefix or suffix
/// printed alone would still leak most of it).
const PARTS: &[&str] = &["SECRET-7f3a", "7f3a9c2e1b8d4f60", "sk-live-SECRET"];

/// Everything written: the tracing output and what the test formatted.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<String>>);

impl Sink {
    fn push(&self, text: &str) {
        let mut s = self.0.lock().unwrap();
        s.push_str(text);
        s.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs a TRACE subscriber of every target writing into `sink` for
/// this thread (the tests run on a current-thread runtime).
fn capture(sink: &Sink) -> tracing::subscriber::DefaultGuard {
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_default(subscriber)
}

fn assert_no_secret(sink: &Sink) {
    let text = sink.text();
    assert!(!text.is_empty());
    for part in PARTS {
        assert!(
            !text.contains(part),
            "the secret ({part}) leaked:\n{}",
            text.lines()
                .filter(|l| l.contains(part))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The three ways providers take a key.
fn with_secret(builder: http::request::Builder, header: &HeaderName) -> http::request::Builder {
    let value = if header == AUTHORIZATION {
        format!("Bearer {SECRET}")
    } else {
        SECRET.to_owned()
    };
    builder.header(header, value)
}

/// The provider: answers by the request's `x-scenario`.
#[derive(Clone, Debug)]
struct Scripted;

type Answer = Pin<Box<dyn Future<Output = Result<Response<String>, io::Error>> + Send>>;

impl Service<Request<String>> for Scripted {
    type Response = Response<String>;
    type Error = io::Error;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Answer {
        let scenario = request.headers()["x-scenario"].to_str().unwrap().to_owned();
        Box::pin(async move {
            let (status, headers, body): (u16, &[(&str, &str)], &str) = match scenario.as_str() {
                "ok" => (
                    200,
                    &[("x-ratelimit-remaining-requests", "10")],
                    r#"{"choices":[]}"#,
                ),
                "401" => (
                    401,
                    &[],
                    r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                ),
                "429" => (
                    429,
                    &[
                        ("retry-after-ms", "10"),
                        ("x-ratelimit-remaining-requests", "0"),
                        ("x-ratelimit-reset-requests", "10ms"),
                    ],
                    r#"{"error":{"type":"requests","code":"rate_limit_exceeded"}}"#,
                ),
                "quota" => (
                    429,
                    &[],
                    r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
                ),
                "500" => (500, &[], r#"{"error":{"type":"server_error"}}"#),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "connection reset by peer",
                    ))
                }
            };
            let mut response = Response::builder().status(status);
            for (k, v) in headers {
                response = response.header(*k, *v);
            }
            Ok(response.body(body.to_owned()).unwrap())
        })
    }
}

fn listener(sink: &Sink) -> Events {
    let seen = sink.clone();
    Events::new().with_listener(move |event: &Event<'_>| {
        let mut line = format!("event {event:?}");
        if let Event::RateLimitWait { key, .. }
        | Event::RateLimitAdmitted { key, .. }
        | Event::RateLimitedResponse { key, .. }
        | Event::LimitLearned { key, .. }
        | Event::QuotaExhausted { key, .. }
        | Event::CircuitTransition { key, .. } = event
        {
            let _ = write!(line, " key {key} {key:?}");
        }
        seen.push(&line);
    })
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_api_key_in_logs_errors_events_or_debug_output() {
    let sink = Sink::default();
    let _guard = capture(&sink);
    for header in [
        AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
    ] {
        let events = listener(&sink);
        let layer = LlmLayer::new(Provider::OpenAi)
            .requests_per_minute(600)
            .tokens_per_minute(100_000)
            .events(events.clone())
            .retry(|r| {
                r.max_attempts(2).backoff(Backoff::new(
                    Duration::from_millis(1),
                    Duration::from_millis(5),
                ))
            })
            .key_fn(ByHeader::new(header.clone()));
        sink.push(&format!("layer {layer:?}"));
        for scenario in ["ok", "401", "429", "quota", "500", "reset"] {
            // A new stack each time: a 401 or an exhausted quota opens the
            // breaker, which would answer the next scenarios itself.
            let mut stack = layer.layer(Scripted);
            sink.push(&format!("service {stack:?}"));
            let request = with_secret(
                Request::post("https://api.example/v1/chat/completions"),
                &header,
            )
            .header("x-scenario", scenario)
            .body(String::from(r#"{"max_tokens":5,"messages":[]}"#))
            .unwrap();
            let key = ByHeader::new(header.clone()).key(&request);
            sink.push(&format!("key {key} {key:?}"));
            let future = stack.ready().await.unwrap().call(request);
            sink.push(&format!("future {future:?}"));
            match future.await {
                Ok(response) => sink.push(&format!("response {:?}", response.status())),
                Err(e) => sink.push(&format!("error {e} {e:?} {:?}", e.classification())),
            }
        }
        // The same through a batch.
        let requests: Vec<_> = ["ok", "429", "reset", "500"]
            .iter()
            .map(|s| {
                with_secret(
                    Request::post("https://api.example/v1/chat/completions"),
                    &header,
                )
                .header("x-scenario", *s)
                .body(String::from("{}"))
                .unwrap()
            })
            .collect();
        let stack = layer.layer(Scripted);
        let batch = Batch::new(stack.clone()).concurrency(2);
        sink.push(&format!("batch {batch:?}"));
        for result in batch.run(requests).await {
            if let Err(e) = result {
                sink.push(&format!("batch error {e} {e:?}"));
            }
        }
        sink.push(&format!("service after {stack:?}"));
        sink.push(&format!("events {events:?}"));
        sink.push(&format!("summary {:?}", events.counters().snapshot()));
    }
    assert!(
        sink.text().contains("event RateLimitedResponse"),
        "the listener ran"
    );
    assert!(
        sink.text().contains("provider rate-limited a request"),
        "tracing was captured"
    );
    assert_no_secret(&sink);
}

async fn over_http(http2: bool) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let sink = Sink::default();
    let _guard = capture(&sink);
    let sim = SimProvider::builder()
        .rpm(1_000)
        .tpm(1_000_000)
        .seed(5)
        .build();
    let server = sim.serve().await.unwrap();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<String>();
    let layer = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(1_000)
        .events(listener(&sink))
        .retry(|r| {
            r.max_attempts(2).backoff(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(5),
            ))
        })
        .key_fn(ByHeader::api_key());
    let events = layer.events_handle().clone();
    let mut stack = layer.layer(client);
    for i in 0..5 {
        let request = with_secret(
            Request::post(format!("{}/chat/completions", server.base_url())),
            &AUTHORIZATION,
        )
        .header("x-api-key", SECRET)
        .header("api-key", SECRET)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"m","max_tokens":3,"messages":[{{"role":"user","content":"Text: item {i}"}}]}}"#
        ))
        .unwrap();
        let future = stack.ready().await.unwrap().call(request);
        sink.push(&format!("future {future:?}"));
        match future.await {
            Ok(response) => {
                let body = response.into_body().collect().await.unwrap().to_bytes();
                sink.push(&String::from_utf8_lossy(&body));
            }
            Err(e) => sink.push(&format!("error {e} {e:?}")),
        }
    }
    // A connection refused: the server is gone.
    let base = server.base_url();
    server.shutdown().await;
    let request = with_secret(
        Request::post(format!("{base}/chat/completions")),
        &AUTHORIZATION,
    )
    .body(String::from("{}"))
    .unwrap();
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    sink.push(&format!("error {error} {error:?}"));
    sink.push(&format!("service {stack:?}"));
    let summary = events.counters().snapshot();
    sink.push(&format!("summary {summary:?}"));
    // The transport's own tracing was captured too (hyper-util's pool, h2).
    let text = sink.text();
    assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
    assert_no_secret(&sink);
}

#[tokio::test(flavor = "current_thread")]
async fn no_api_key_over_loopback_http1() {
    over_http(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn no_api_key_over_loopback_http2() {
    over_http(true).await;
}

#[test]
fn the_check_sees_a_leak() {
    // Not blind: a request's headers, formatted, hold the secret, and the
    // check catches it.
    let sink = Sink::default();
    let request = with_secret(Request::get("/"), &AUTHORIZATION)
        .body(())
        .unwrap();
    sink.push(&format!("{:?}", request.headers()));
    let caught = std::panic::catch_unwind(|| assert_no_secret(&sink));
    assert!(caught.is_err());
}
