//! The whole stack (`LlmLayer`) on a `reqwest::Client` through
//! `ReqwestService`, against the simulated provider over loopback: a plain
//! call, a stream passed on frame by frame, a 429 retried, and reqwest's
//! own failures (connect, timeout, read timeout, a cut stream, a redirect
//! loop, a relative URI) classified from their error chain.
//!
//! Real time, as every loopback test: nothing checked depends on how fast
//! the machine is, except where a test says so.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{classify_transport_error, ErrorClass};
use tower_llm_resilience::reqwest_client::ReqwestService;
use tower_llm_resilience::retry::Backoff;
use tower_llm_resilience::sim::{Fault, SimProvider, SimServer, StreamEnd, Verdict};
use tower_llm_resilience::{Error, LlmLayer, Provider};

fn chat_body(text: &str, stream: bool) -> String {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": format!("Text: {text}")}]
    });
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

fn chat(server: &SimServer, text: &str, stream: bool) -> Request<String> {
    Request::post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(chat_body(text, stream))
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn layer() -> LlmLayer {
    LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(500)
        .tokens_per_minute(200_000)
}

/// A port on loopback where nothing listens.
fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The reqwest error under the crate's error, if the chain has one.
fn reqwest_cause(error: &Error) -> Option<&reqwest::Error> {
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            return Some(r);
        }
        next = e.source();
    }
    None
}

#[tokio::test]
async fn a_plain_call_through_the_stack() {
    let sim = SimProvider::builder().build();
    let server = sim.serve().await.unwrap();
    let stack = layer();
    let events = stack.events_handle().clone();
    let mut stack = stack.layer(ReqwestService::new(client()));
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "499");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "positive");
    let log = sim.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, Verdict::Completed);
    assert_eq!(events.counters().snapshot().retries, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_bodies_users_have_are_sent_as_they_are() {
    let sim = SimProvider::builder().build();
    let server = sim.serve().await.unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let body = chat_body("a chair", false);
    let client = client();
    let full = Request::post(&url).body(Full::new(Bytes::from(body.clone())));
    let bytes = Request::post(&url).body(Bytes::from(body.clone()));
    let vec = Request::post(&url).body(body.clone().into_bytes());
    let statuses = [
        ReqwestService::new(client.clone())
            .oneshot(full.unwrap())
            .await
            .unwrap()
            .status(),
        ReqwestService::new(client.clone())
            .oneshot(bytes.unwrap())
            .await
            .unwrap()
            .status(),
        ReqwestService::new(client.clone())
            .oneshot(vec.unwrap())
            .await
            .unwrap()
            .status(),
    ];
    assert_eq!(statuses, [StatusCode::OK; 3]);
    let log = sim.log();
    assert!(log.iter().all(|s| s.outcome == Verdict::Completed));
    assert!(log.iter().all(|s| s.text == "a chair"), "{log:?}");
    server.shutdown().await;
}

/// The provider stalls for an hour after its first content chunk: what the
/// caller holds when it has that chunk was passed on without the rest,
/// through every layer of the stack.
#[tokio::test]
async fn a_stream_passes_frame_by_frame() {
    let sim = SimProvider::builder()
        .fault(Fault::Stall(Duration::from_secs(3600)), 1.0)
        .build();
    let server = sim.serve().await.unwrap();
    let mut stack = layer().layer(ReqwestService::new(client()));
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).contains(r#""content":"posi""#) {
        let frame = body.frame().await.unwrap().unwrap();
        text.extend_from_slice(&frame.into_data().unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(!text.contains("tive") && !text.contains("[DONE]"), "{text}");
    let stream = sim.log()[0].stream.unwrap();
    assert_eq!(
        (stream.events_planned, stream.events_sent, stream.end),
        (6, 2, None),
        "the first chunk arrived before the last was produced"
    );
    drop(body);
    server.shutdown().await;
}

#[tokio::test]
async fn a_whole_stream_arrives_in_several_frames() {
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(50))
        .build();
    let server = sim.serve().await.unwrap();
    let mut stack = layer().layer(ReqwestService::new(client()));
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", true))
        .await
        .unwrap();
    let mut body = response.into_body();
    let (mut frames, mut text) = (0, Vec::new());
    while let Some(frame) = body.frame().await {
        frames += 1;
        text.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(r#""content":"posi""#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // the first events go out at once, the rest spread over the latency:
    // reqwest hands on what it read, not one buffered body
    assert!(frames >= 2, "{frames} frame(s)");
    let stream = sim.log()[0].stream.unwrap();
    assert_eq!(stream.end, Some(StreamEnd::Done));
    server.shutdown().await;
}

/// Another client took the provider's only request of its window: the
/// stack's request gets a 429 with `retry-after-ms`, waits it and gets its
/// answer. The window is 2 s of real time: the stack's first attempt must
/// arrive within it after the other client's request (a few milliseconds
/// on any machine), and the test takes about that long.
#[tokio::test]
async fn a_429_is_retried_after_the_providers_wait() {
    let window = Duration::from_secs(2);
    let sim = SimProvider::builder().rpm(1).window(window).build();
    let server = sim.serve().await.unwrap();
    let other = ReqwestService::new(client());
    let taken = other.oneshot(chat(&server, "first", false)).await.unwrap();
    assert_eq!(taken.status(), StatusCode::OK);

    let stack = layer();
    let events = stack.events_handle().clone();
    let mut stack = stack.layer(ReqwestService::new(client()));
    let start = tokio::time::Instant::now();
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let outcomes: Vec<_> = sim.log().iter().map(|s| s.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Verdict::Completed,
            Verdict::RateLimitedRequests,
            Verdict::Completed
        ]
    );
    let counters = events.counters().snapshot();
    assert_eq!(counters.retries, 1);
    assert_eq!(counters.rate_limited_responses, 1);
    assert!(
        start.elapsed() < window + Duration::from_secs(2),
        "waited the server's wait, not a backoff: {:?}",
        start.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_connect_failure_is_connect_and_retried() {
    let stack = layer().retry(|retry| {
        retry.max_attempts(2).backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
        ))
    });
    let events = stack.events_handle().clone();
    let mut stack = stack.layer(ReqwestService::new(client()));
    let request = Request::post(format!(
        "http://user:hunter2@{}/v1beta/models/gemini-2.0-flash:generateContent?key=AIza-secret",
        closed_port()
    ))
    .body(chat_body("a", false))
    .unwrap();
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Connect, "{error:?}");
    assert!(error.is_connect() && error.is_retryable());
    assert!(reqwest_cause(&error).unwrap().is_connect());
    assert_eq!(events.counters().snapshot().retries, 1);
    // reqwest's error shows its URL: without the query or the credentials
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("AIza") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("generateContent"), "{shown}");
}

/// The provider answers in an hour; reqwest's own timeout (100 ms) ends
/// the attempt as a `timeout`, which the stack retries.
#[tokio::test]
async fn a_reqwest_timeout_is_timeout() {
    let sim = SimProvider::builder()
        .fault(Fault::Slow(Duration::from_secs(3600)), 1.0)
        .build();
    let server = sim.serve().await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut stack = layer()
        .retry(|retry| retry.max_attempts(1))
        .layer(ReqwestService::new(client));
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "a", false))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Timeout, "{error:?}");
    assert!(error.is_timeout() && error.is_retryable());
    assert!(reqwest_cause(&error).unwrap().is_timeout());
    server.shutdown().await;
}

/// reqwest's `read_timeout` between two frames of a stream that stalls:
/// the stack's body ends with a stream failure of class `timeout`.
#[tokio::test]
async fn a_reqwest_read_timeout_ends_a_stream_as_timeout() {
    let sim = SimProvider::builder()
        .fault(Fault::Stall(Duration::from_secs(3600)), 1.0)
        .build();
    let server = sim.serve().await.unwrap();
    let client = reqwest::Client::builder()
        .read_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut stack = layer().layer(ReqwestService::new(client));
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", true))
        .await
        .unwrap();
    let error = drain(response.into_body()).await.unwrap_err();
    assert!(error.is_stream_failure(), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Timeout, "{error:?}");
    assert!(error.delivered().unwrap() > 0);
    assert!(reqwest_cause(&error).unwrap().is_body());
    server.shutdown().await;
}

/// The provider cuts the connection mid-stream: reqwest's body error (a
/// body error over hyper's incomplete message) is a `connect` failure.
#[tokio::test]
async fn a_cut_stream_is_a_connect_failure() {
    let sim = SimProvider::builder().fault(Fault::Truncate, 1.0).build();
    let server = sim.serve().await.unwrap();
    let mut stack = layer().layer(ReqwestService::new(client()));
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(chat(&server, "I love it", true))
        .await
        .unwrap();
    let error = drain(response.into_body()).await.unwrap_err();
    assert!(error.is_stream_failure(), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Connect, "{error:?}");
    assert!(reqwest_cause(&error).unwrap().is_body());
    server.shutdown().await;
}

/// Reads a body to its end: the bytes, or the error it ended with.
async fn drain<B>(mut body: B) -> Result<Vec<u8>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// A server that answers every request with a redirect to itself, on
/// loopback, until the test ends.
async fn redirect_loop() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /again\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_redirect_loop_and_a_relative_uri_are_other() {
    let addr = redirect_loop().await;
    let mut stack = layer().layer(ReqwestService::new(client()));
    let request = Request::get(format!("http://{addr}/v1/models"))
        .body(String::new())
        .unwrap();
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    assert!(reqwest_cause(&error).unwrap().is_redirect(), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Other);
    assert!(!error.is_retryable());

    // No scheme or host: reqwest cannot make the request at all.
    let relative = Request::post("/v1/chat/completions").body(String::new());
    let error = ReqwestService::new(client())
        .oneshot(relative.unwrap())
        .await
        .unwrap_err();
    assert!(error.is_builder());
    assert_eq!(
        classify_transport_error(&error).class,
        Some(ErrorClass::Other)
    );
}
