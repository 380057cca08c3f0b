//! The gateway (`examples/gateway`) end to end over loopback, driven by
//! an OpenAI SDK (async-openai) and by a raw HTTP client: completions and
//! streams through it, the tenants' and the provider's quotas, an open
//! circuit, a fault mix with no 429 at the upstream, streams passed frame
//! by frame, a broken stream, a graceful stop, and a `/metrics` scrape
//! that agrees with the run.
//!
//! Real time over loopback, and nothing checked depends on how fast the
//! machine is: quotas are spent by count within windows far longer than
//! the test, a scripted upstream sends each frame when the test says so,
//! and the runs over short windows (the fault mix, the SDK's comeback)
//! assert only what the stack guarantees at any speed (no 429 at the
//! upstream, which its arrival margin absorbs; a wait at least as long
//! as the window).

#[allow(dead_code)]
#[path = "../examples/gateway/answer.rs"]
mod answer;
#[allow(dead_code)]
#[path = "../examples/gateway/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../examples/gateway/upstream.rs"]
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason, Role,
};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower_llm_resilience::events::Events;
use tower_llm_resilience::rate_limit::{Dimension, Limits};
use tower_llm_resilience::sim::{label, Fault, SimProvider, SimServer, StreamEnd};

/// A bound on every wait in these tests, so that a failure fails instead
/// of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// A gateway serving on loopback.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    events: Events,
    answers: Arc<app::Answers>,
}

impl Running {
    async fn start(settings: app::Settings) -> Running {
        let gateway = app::gateway(settings).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, gateway.router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Running {
            addr,
            stop: Some(stop),
            task,
            events: gateway.events,
            answers: gateway.answers,
        }
    }

    /// How many answers of each kind the gateway gave: upstream, tenant
    /// quota, provider quota, circuit open, other errors.
    fn answers(&self) -> [u64; 5] {
        let a = &*self.answers;
        [
            &a.upstream,
            &a.tenant_quota,
            &a.provider_quota,
            &a.circuit_open,
            &a.other_errors,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// An async-openai client of the gateway with the API key `key`, as
    /// it comes (it retries 429s and 5xx three times, after their
    /// `Retry-After`).
    fn sdk(&self, key: &str) -> async_openai::Client<OpenAIConfig> {
        let config = OpenAIConfig::new()
            .with_api_base(self.base_url())
            .with_api_key(key);
        async_openai::Client::with_config(config)
    }

    /// The same without the SDK's retries, so that the test sees each
    /// answer of the gateway as the SDK surfaces it.
    fn sdk_once(&self, key: &str) -> async_openai::Client<OpenAIConfig> {
        let once = async_openai::middleware::ReqwestService::new(reqwest::Client::new());
        self.sdk(key).with_http_service(once)
    }

    /// Stops accepting and waits until every connection has finished.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(PATIENCE, self.task)
            .await
            .expect("the gateway stops")
            .unwrap()
            .unwrap();
    }
}

/// A window far longer than any test.
const MINUTE: Duration = Duration::from_secs(60);

fn limits(window: Duration, requests: u64, tokens: u64) -> Limits {
    Limits::new()
        .window(Dimension::Requests, window, requests)
        .window(Dimension::Tokens, window, tokens)
}

/// The gateway in front of `server` with the provider's `limits`.
fn settings(server: &SimServer, limits: Limits) -> app::Settings {
    let mut settings = app::Settings::new(server.base_url(), limits);
    settings.api_key = Some("sk-gateway".into());
    settings
}

fn ask(text: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .max_completion_tokens(8u32)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(format!("Text: {text}"))
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

fn ask_stream(text: &str) -> CreateChatCompletionRequest {
    let mut request = ask(text);
    request.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    request
}

/// The status and error code of an API error async-openai surfaced.
fn api_error(e: &OpenAIError) -> (StatusCode, Option<String>) {
    match e {
        OpenAIError::ApiError(e) => (
            StatusCode::from_u16(e.status_code.as_u16()).unwrap(),
            e.api_error.code.clone(),
        ),
        other => panic!("not an API error: {other:?}"),
    }
}

/// What a streamed answer came to: its content, in order, and whether it
/// ended with the usage chunk; or the error that broke it.
#[derive(Debug)]
struct Streamed {
    content: String,
    role_first: bool,
    finished: bool,
    usage_last: Option<u32>,
}

async fn read_stream(
    client: &async_openai::Client<OpenAIConfig>,
    text: &str,
) -> Result<Result<Streamed, OpenAIError>, OpenAIError> {
    let mut stream = client.chat().create_stream(ask_stream(text)).await?;
    let mut streamed = Streamed {
        content: String::new(),
        role_first: false,
        finished: false,
        usage_last: None,
    };
    let mut first = true;
    while let Some(chunk) = timeout(PATIENCE, stream.next()).await.expect("a chunk") {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Ok(Err(e)),
        };
        assert!(
            streamed.usage_last.is_none(),
            "a chunk after the usage chunk"
        );
        if let Some(usage) = chunk.usage {
            assert!(chunk.choices.is_empty());
            streamed.usage_last = Some(usage.total_tokens);
            continue;
        }
        let choice = &chunk.choices[0];
        if first {
            streamed.role_first = choice.delta.role == Some(Role::Assistant);
            first = false;
        }
        assert!(!streamed.finished, "content after the finish reason");
        if let Some(piece) = &choice.delta.content {
            streamed.content.push_str(piece);
        }
        streamed.finished = choice.finish_reason == Some(FinishReason::Stop);
    }
    Ok(Ok(streamed))
}

/// A raw POST to the gateway, for the headers the SDK does not show.
async fn raw(addr: SocketAddr, key: &str, body: &str) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .unwrap();
    timeout(PATIENCE, client.request(request))
        .await
        .expect("an answer")
        .unwrap()
}

async fn json_of(response: Response<Incoming>) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Text: fine"}],"max_tokens":8}"#;

/// The `Retry-After` of an answer, checked against OpenAI's
/// `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Duration {
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(
        secs >= 1 && ms.div_ceil(1000).max(1) == secs,
        "{secs} s, {ms} ms"
    );
    Duration::from_millis(ms)
}

#[tokio::test]
async fn a_completion_and_a_stream_through_the_gateway() {
    let sim = SimProvider::builder().rpm(100).tpm(100_000).build();
    let server = sim.serve().await.unwrap();
    let gateway = Running::start(settings(&server, limits(MINUTE, 100, 100_000))).await;
    let client = gateway.sdk("sk-tenant-a");

    let text = "I love this, it is great";
    let answer = client.chat().create(ask(text)).await.unwrap();
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some(label(text))
    );
    assert_eq!(answer.usage.unwrap().completion_tokens, 2);

    let text = "Awful, I hate it";
    let streamed = read_stream(&client, text).await.unwrap().unwrap();
    assert_eq!(streamed.content, label(text));
    assert!(streamed.role_first && streamed.finished, "{streamed:?}");
    let served = &sim.log()[1];
    assert_eq!(streamed.usage_last, Some(served.prompt_tokens as u32 + 2));
    assert_eq!(served.stream.as_ref().unwrap().end, Some(StreamEnd::Done));

    assert_eq!(sim.stats().requests, 2);
    gateway.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_quota_gets_a_429_with_retry_after() {
    let sim = SimProvider::builder().rpm(100).tpm(100_000).build();
    let server = sim.serve().await.unwrap();
    let mut settings = settings(&server, limits(MINUTE, 100, 100_000));
    settings.tenant_limits = limits(MINUTE, 2, 100_000);
    settings.max_wait = Duration::from_secs(1);
    let gateway = Running::start(settings).await;
    let (a, b) = (
        gateway.sdk_once("sk-tenant-a"),
        gateway.sdk_once("sk-tenant-b"),
    );

    for _ in 0..2 {
        a.chat().create(ask("good")).await.unwrap();
    }
    // The third would wait the rest of the minute: refused at once.
    let e = a.chat().create(ask("good")).await.unwrap_err();
    let (status, code) = api_error(&e);
    assert_eq!(status, 429);
    assert_eq!(code.as_deref(), Some("tenant_rate_limit_exceeded"));
    let response = raw(gateway.addr, "sk-tenant-a", CHAT).await;
    assert_eq!(response.status(), 429);
    let wait = retry_after(response.headers());
    // the rest of the window, and the limiter's arrival margin
    assert!(
        wait > Duration::from_secs(30) && wait <= MINUTE + Duration::from_secs(1),
        "{wait:?}"
    );
    let body = json_of(response).await;
    assert_eq!(body["error"]["type"], "rate_limit_error");

    // Another tenant has its own quota.
    b.chat().create(ask("good")).await.unwrap();
    assert_eq!(sim.stats().requests, 3);
    assert_eq!(gateway.answers(), [3, 2, 0, 0, 0]);
    gateway.stop().await;
}

#[tokio::test]
async fn the_sdk_comes_back_when_the_gateway_says_and_gets_through() {
    let sim = SimProvider::builder().rpm(100).tpm(100_000).build();
    let server = sim.serve().await.unwrap();
    let mut settings = settings(&server, limits(MINUTE, 100, 100_000));
    let window = Duration::from_secs(2);
    settings.tenant_limits = limits(window, 1, 100_000);
    settings.max_wait = Duration::from_millis(500);
    let gateway = Running::start(settings).await;
    let client = gateway.sdk("sk-tenant");

    client.chat().create(ask("good")).await.unwrap();
    let started = std::time::Instant::now();
    // Refused with a Retry-After past the tenant's window; async-openai
    // sleeps that long and sends it again, and the window has room.
    let answer = timeout(PATIENCE, client.chat().create(ask("great")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some(label("great"))
    );
    assert!(started.elapsed() >= window, "{:?}", started.elapsed());
    // The refused attempt never reached the upstream.
    assert_eq!(sim.stats().requests, 2);
    gateway.stop().await;
}

#[tokio::test]
async fn the_provider_quota_is_shared_by_every_tenant() {
    let sim = SimProvider::builder().rpm(2).tpm(100_000).build();
    let server = sim.serve().await.unwrap();
    let mut settings = settings(&server, limits(MINUTE, 2, 100_000));
    settings.max_wait = Duration::from_secs(1);
    let gateway = Running::start(settings).await;

    gateway
        .sdk_once("sk-a")
        .chat()
        .create(ask("ok"))
        .await
        .unwrap();
    gateway
        .sdk_once("sk-b")
        .chat()
        .create(ask("ok"))
        .await
        .unwrap();
    let e = gateway
        .sdk_once("sk-c")
        .chat()
        .create(ask("ok"))
        .await
        .unwrap_err();
    assert_eq!(
        api_error(&e),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("rate_limit_exceeded".into())
        )
    );
    let response = raw(gateway.addr, "sk-d", CHAT).await;
    assert_eq!(response.status(), 429);
    assert!(retry_after(response.headers()) > Duration::from_secs(30));
    // The upstream saw what its quota admits, and no 429.
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(sim.stats().rate_limited(), 0);
    assert_eq!(gateway.answers(), [2, 0, 2, 0, 0]);
    gateway.stop().await;
}

#[tokio::test]
async fn an_open_circuit_answers_503_with_retry_after() {
    let sim = SimProvider::builder()
        .rpm(100)
        .tpm(100_000)
        .quota_after(1)
        .build();
    let server = sim.serve().await.unwrap();
    let gateway = Running::start(settings(&server, limits(MINUTE, 100, 100_000))).await;
    let client = gateway.sdk_once("sk-tenant");

    client.chat().create(ask("fine")).await.unwrap();
    // The provider's own answer, passed through: its status and its body.
    let e = client.chat().create(ask("fine")).await.unwrap_err();
    assert_eq!(
        api_error(&e),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("insufficient_quota".into())
        )
    );
    // An exhausted quota opens the breaker at once: the next calls fail
    // fast, without reaching the upstream.
    let e = client.chat().create(ask("fine")).await.unwrap_err();
    assert_eq!(api_error(&e).0, StatusCode::SERVICE_UNAVAILABLE);
    let response = raw(gateway.addr, "sk-tenant", CHAT).await;
    assert_eq!(response.status(), 503);
    assert!(retry_after(response.headers()) >= Duration::from_secs(1));
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "circuit_open");
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(gateway.events.counters().snapshot().circuit_opened, 1);
    assert_eq!(gateway.answers(), [1, 0, 0, 2, 1]);
    gateway.stop().await;
}

/// What one call through a faulty provider came to.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Answered,
    /// A stream that broke after it began.
    Broken,
    /// An HTTP error answer: its status, and whether it was the gateway's
    /// open circuit (the others passed on the provider's answer).
    Refused(u16, bool),
}

#[tokio::test]
async fn with_faults_every_call_is_answered_or_refused_in_kind_and_the_upstream_sends_no_429() {
    // 40 calls, half of them streamed, 20 requests per 4 s window: the
    // limiter makes the second half wait for the window, and they meet a
    // 1 s outage. A heavy fault mix besides: about one attempt in five
    // fails before its response, one stream in five after its 200.
    let window = Duration::from_secs(4);
    let sim = SimProvider::builder()
        .rpm(20)
        .tpm(100_000)
        .window(window)
        .seed(7)
        .fault(Fault::ServerError, 0.1)
        .fault(Fault::ServiceUnavailable, 0.05)
        .fault(Fault::ConnectionReset, 0.05)
        .fault(Fault::Slow(Duration::from_millis(200)), 0.03)
        .fault(Fault::MidStreamError, 0.1)
        .fault(Fault::Truncate, 0.1)
        .outage(Duration::from_millis(4_000), Duration::from_millis(5_000))
        .build();
    let server = sim.serve().await.unwrap();
    let gateway = Running::start(settings(&server, limits(window, 20, 100_000))).await;
    let client = gateway.sdk_once("sk-tenant");

    let texts: Vec<String> = (0..40)
        .map(|i| match i % 3 {
            0 => format!("I love it, number {i}"),
            1 => format!("I hate it, number {i}"),
            _ => format!("It is a thing, number {i}"),
        })
        .collect();
    let calls = texts.iter().enumerate().map(|(i, text)| {
        let client = &client;
        async move {
            let failed = |e: OpenAIError| {
                let (status, code) = api_error(&e);
                Outcome::Refused(status.as_u16(), code.as_deref() == Some("circuit_open"))
            };
            if i % 2 == 0 {
                match client.chat().create(ask(text)).await {
                    Ok(answer) => {
                        let content = answer.choices[0].message.content.as_deref();
                        assert_eq!(content, Some(label(text)));
                        Outcome::Answered
                    }
                    Err(e) => failed(e),
                }
            } else {
                match read_stream(client, text).await {
                    Ok(Ok(streamed)) => {
                        assert_eq!(streamed.content, label(text));
                        assert!(streamed.finished && streamed.usage_last.is_some());
                        Outcome::Answered
                    }
                    Ok(Err(_)) => Outcome::Broken,
                    Err(e) => failed(e),
                }
            }
        }
    });
    let outcomes = timeout(PATIENCE, futures::future::join_all(calls))
        .await
        .expect("every call ends");

    let stats = sim.stats();
    let summary = gateway.events.counters().snapshot();
    let count = |o: &Outcome| outcomes.iter().filter(|x| *x == o).count() as u64;
    let (mut passed_on, mut circuit_open) = (0, 0);
    for o in &outcomes {
        match o {
            // the provider's 5xx after the retries it deserved
            Outcome::Refused(500 | 502 | 503, false) => passed_on += 1,
            Outcome::Refused(503, true) => circuit_open += 1,
            Outcome::Refused(..) => panic!("not an answer SDKs act on: {outcomes:?}"),
            Outcome::Answered | Outcome::Broken => {}
        }
    }
    assert_eq!(stats.rate_limited(), 0, "{stats:?}");
    assert_eq!(summary.rate_limited_responses, 0);
    // Every fault before a response was retried or passed on; every
    // stream that failed after its 200 reached the client broken; an open
    // circuit answered only after the breaker opened.
    let faults_before = stats.server_errors + stats.unavailable + stats.resets + stats.outage;
    assert_eq!(
        faults_before,
        summary.retries + passed_on,
        "{stats:?} {summary:?} {outcomes:?}"
    );
    assert_eq!(count(&Outcome::Broken), stats.failed_streams(), "{stats:?}");
    assert!(circuit_open == 0 || summary.circuit_opened > 0);
    let answered_or_broken = count(&Outcome::Answered) + count(&Outcome::Broken);
    assert_eq!(
        gateway.answers(),
        [answered_or_broken, 0, 0, circuit_open, passed_on]
    );
    assert!(count(&Outcome::Answered) > 0, "{outcomes:?}");
    assert_eq!(outcomes.len(), 40);
    gateway.stop().await;
}

/// An upstream whose streams the test writes frame by frame: each request
/// hands the test its headers and the sender of its body.
async fn scripted_upstream() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(HeaderMap, mpsc::Sender<Bytes>)>,
) {
    use axum::routing::post;
    let (calls, called) = mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| {
            let calls = calls.clone();
            async move {
                let (frames, body) = mpsc::channel::<Bytes>(4);
                let _ = calls.send((headers, frames));
                let stream = futures::stream::unfold(body, |mut body| async move {
                    body.recv().await.map(|b| (Ok::<_, Infallible>(b), body))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("x-ratelimit-remaining-requests", "499")
                    .body(axum::body::Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, called)
}

fn chunk(content: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
    ))
}

/// Reads `body` until `want` bytes have come (frames may be split or
/// joined on the way), within the patience.
async fn read_exactly(body: &mut Incoming, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let frame = timeout(PATIENCE, body.frame())
            .await
            .expect("a frame in time")
            .expect("not the end")
            .expect("not an error");
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    got
}

const STREAM: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}"#;

#[tokio::test]
async fn streams_pass_frame_by_frame_and_the_upstream_sees_only_the_gateways_key() {
    let (upstream, mut called) = scripted_upstream().await;
    let mut settings = app::Settings::new(
        format!("http://{upstream}/v1"),
        limits(MINUTE, 100, 100_000),
    );
    settings.api_key = Some("sk-gateway".into());
    let gateway = Running::start(settings).await;

    let response = tokio::spawn(raw(gateway.addr, "sk-client-secret", STREAM));
    let (headers, frames) = called.recv().await.unwrap();
    assert_eq!(headers["authorization"], "Bearer sk-gateway");
    assert!(!format!("{headers:?}").contains("sk-client-secret"));

    // Each frame reaches the client before the next is written.
    frames.send(chunk("posi")).await.unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // the upstream's limits are the gateway's business
    assert!(!response
        .headers()
        .contains_key("x-ratelimit-remaining-requests"));
    let mut body = response.into_body();
    assert_eq!(
        read_exactly(&mut body, chunk("posi").len()).await,
        chunk("posi")
    );
    frames.send(chunk("tive")).await.unwrap();
    assert_eq!(
        read_exactly(&mut body, chunk("tive").len()).await,
        chunk("tive")
    );
    frames.send(Bytes::from("data: [DONE]\n\n")).await.unwrap();
    drop(frames);
    let rest = timeout(PATIENCE, body.collect()).await.unwrap().unwrap();
    assert_eq!(rest.to_bytes(), "data: [DONE]\n\n");

    // A stream that ends without its terminator reaches the client
    // broken, not as a clean end.
    let response = tokio::spawn(raw(gateway.addr, "sk-client-secret", STREAM));
    let (_, frames) = called.recv().await.unwrap();
    frames.send(chunk("nega")).await.unwrap();
    let mut body = response.await.unwrap().into_body();
    assert_eq!(
        read_exactly(&mut body, chunk("nega").len()).await,
        chunk("nega")
    );
    drop(frames);
    let end = timeout(PATIENCE, body.collect()).await.unwrap();
    assert!(end.is_err(), "a broken stream must not end cleanly");
    gateway.stop().await;
}

#[tokio::test]
async fn a_stop_lets_the_streams_in_flight_finish() {
    let (upstream, mut called) = scripted_upstream().await;
    let settings = app::Settings::new(
        format!("http://{upstream}/v1"),
        limits(MINUTE, 100, 100_000),
    );
    let gateway = Running::start(settings).await;
    let addr = gateway.addr;

    let response = tokio::spawn(raw(addr, "sk-a", STREAM));
    let (_, frames) = called.recv().await.unwrap();
    frames.send(chunk("half")).await.unwrap();
    let mut body = response.await.unwrap().into_body();
    read_exactly(&mut body, chunk("half").len()).await;

    let stopping = tokio::spawn(gateway.stop());
    // Once it refuses new connections, the stop is under way...
    timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the gateway stops accepting");
    assert!(!stopping.is_finished());
    // ...and the stream in flight still ends whole.
    frames.send(chunk("done")).await.unwrap();
    frames.send(Bytes::from("data: [DONE]\n\n")).await.unwrap();
    drop(frames);
    let rest = timeout(PATIENCE, body.collect()).await.unwrap().unwrap();
    let rest = rest.to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
    timeout(PATIENCE, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_requests_get_answers_in_openais_shape() {
    let (upstream, _called) = scripted_upstream().await;
    let mut settings =
        app::Settings::new(format!("http://{upstream}/v1"), limits(MINUTE, 100, 1_000));
    settings.max_body = 1024;
    let gateway = Running::start(settings).await;

    // larger than the gateway reads
    let response = raw(gateway.addr, "sk-a", &"x".repeat(2048)).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        json_of(response).await["error"]["code"],
        "request_too_large"
    );
    // more tokens than the provider's whole window
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5000}"#;
    let response = raw(gateway.addr, "sk-a", body).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert_eq!(
        json_of(response).await["error"]["code"],
        "request_too_large"
    );
    // not a /v1 path
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let response = client
        .get(format!("http://{}/health", gateway.addr).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        json_of(response).await["error"]["type"],
        "invalid_request_error"
    );
    gateway.stop().await;
}

/// The gateway's `GET /metrics`, as `(series, value)` pairs: each series
/// is the metric's name with its labels, as Prometheus' text shows it.
async fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let request = Request::get(format!("http://{addr}/metrics"))
        .body(String::new())
        .unwrap();
    let response = timeout(PATIENCE, client.request(request))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of a metric's series whose labels contain every one of
/// `labels` (`name="value"`).
fn total(scraped: &[(String, f64)], metric: &str, labels: &[&str]) -> f64 {
    scraped
        .iter()
        .filter(|(series, _)| {
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            name == metric && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn the_metrics_scrape_agrees_with_what_the_run_did() {
    // An upstream stricter than the gateway's quota (4 requests a second
    // against 100): it answers 429s, which the gateway waits out and
    // retries, and a server error now and then.
    let sim = SimProvider::builder()
        .rpm(4)
        .tpm(100_000)
        .window(Duration::from_secs(1))
        .seed(11)
        .fault(Fault::ServerError, 0.1)
        .build();
    let server = sim.serve().await.unwrap();
    let mut settings = settings(&server, limits(Duration::from_secs(1), 100, 100_000));
    settings.config.provider = Some(tower_llm_resilience::Provider::OpenAi);
    let gateway = Running::start(settings).await;
    let client = gateway.sdk_once("sk-tenant");

    let calls = (0..12).map(|i| {
        let client = &client;
        async move {
            let text = format!("I love it, number {i}");
            if i % 2 == 0 {
                client.chat().create(ask(&text)).await.map(|_| ())
            } else {
                read_stream(client, &text).await.map(|s| {
                    let streamed = s.expect("no stream breaks");
                    assert!(streamed.finished && streamed.usage_last.is_some());
                })
            }
        }
    });
    let outcomes = timeout(PATIENCE, futures::future::join_all(calls))
        .await
        .expect("every call ends");
    let answered = outcomes.iter().filter(|o| o.is_ok()).count() as u64;

    // Every attempt is counted when its response's body ends, which the
    // server may see a moment after the client read it.
    let stats = sim.stats();
    let scraped = timeout(PATIENCE, async {
        loop {
            let scraped = scrape(gateway.addr).await;
            if total(&scraped, "gen_ai_client_operation_duration_count", &[]) as u64
                == stats.requests
            {
                break scraped;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every attempt is counted");
    let summary = gateway.events.counters().snapshot();
    let m = |metric, labels: &[&str]| total(&scraped, metric, labels) as u64;

    assert!(stats.rate_limited() > 0, "the upstream said 429: {stats:?}");
    // requests: one attempt per call and per retry, each one the upstream saw
    let attempts = m("gen_ai_client_operation_duration_count", &[]);
    assert_eq!(attempts, 12 + summary.retries);
    let system = r#"gen_ai_system="openai""#;
    let model = r#"gen_ai_request_model="gpt-4o-mini""#;
    assert_eq!(
        m("gen_ai_client_operation_duration_count", &[system, model]),
        attempts
    );
    // the failed ones, by class
    let failed = |class: &str| {
        let label = format!("error_type=\"{class}\"");
        m("gen_ai_client_operation_duration_count", &[&label])
    };
    assert_eq!(failed("rate_limited"), stats.rate_limited());
    assert_eq!(failed("server_error"), stats.server_errors);
    assert_eq!(
        attempts - failed("rate_limited") - failed("server_error"),
        stats.completed
    );
    // 429s and retries, as the summary counts them
    assert_eq!(m("llm_rate_limit_responses", &[]), stats.rate_limited());
    assert_eq!(summary.rate_limited_responses, stats.rate_limited());
    assert_eq!(m("llm_retries", &[]), summary.retries);
    assert_eq!(
        m("llm_retries", &[r#"error_type="rate_limited""#]),
        m("llm_retries", &[]) - m("llm_retries", &[r#"error_type="server_error""#])
    );
    // tokens: what the upstream served
    let log = sim.log();
    let completed = log.iter().filter(|s| s.completion_tokens > 0);
    let output: u64 = completed.clone().map(|s| s.completion_tokens).sum();
    let served_input: u64 = completed.map(|s| s.prompt_tokens).sum();
    let tokens = |kind: &str| {
        let label = format!("gen_ai_token_type=\"{kind}\"");
        m("gen_ai_client_token_usage_sum", &[system, model, &label])
    };
    assert_eq!(tokens("input"), served_input);
    assert_eq!(tokens("output"), output);
    assert_eq!(
        m(
            "gen_ai_client_token_usage_count",
            &[r#"gen_ai_token_type="output""#]
        ),
        stats.completed
    );
    // nobody waits any more; the breaker never opened
    assert_eq!(m("llm_rate_limit_queue_depth", &[]), 0);
    assert_eq!(m("llm_circuit_trips", &[]), summary.circuit_opened);
    assert_eq!(gateway.answers()[0], answered);
    gateway.stop().await;
}
