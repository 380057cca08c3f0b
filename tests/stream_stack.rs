//! Streams through the whole stack (`LlmLayer`), in paused time, against a
//! scripted upstream that sends server-sent events the way OpenAI and
//! Anthropic do: the usage at the end of a stream corrects the limiter's
//! charge, a stream that fails midway is a typed error and a failure for
//! the breaker (and is not retried), a first event that is an error is
//! retried, a stalled stream ends with an idle timeout, and a success passes
//! through frame by frame.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::FailureWindow;
use tower_llm_resilience::{Error, LlmLayer, Provider};

mod support;

type Chunks = BoxStream<'static, Result<Frame<Bytes>, io::Error>>;

/// One step of a scripted body: wait, then send a chunk or fail.
#[derive(Clone)]
enum Step {
    After(Duration, &'static str),
    Fail(Duration),
}

/// A body that plays `steps` on the tokio clock.
fn scripted(steps: Vec<Step>) -> StreamBody<Chunks> {
    let s = stream::iter(steps).then(|step| async move {
        match step {
            Step::After(d, text) => {
                tokio::time::sleep(d).await;
                Ok(Frame::data(Bytes::from_static(text.as_bytes())))
            }
            Step::Fail(d) => {
                tokio::time::sleep(d).await;
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        }
    });
    StreamBody::new(s.boxed())
}

fn sse_response(steps: Vec<Step>) -> Response<StreamBody<Chunks>> {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(scripted(steps))
        .unwrap()
}

const MS: Duration = Duration::from_millis(1);

/// An OpenAI chat stream with `include_usage`: two content chunks, the
/// usage chunk, `[DONE]`.
fn openai_stream(prompt_tokens: u64, completion_tokens: u64) -> Vec<Step> {
    let usage = format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"total_tokens\":{}}}}}\n\n",
        prompt_tokens + completion_tokens
    );
    vec![
        Step::After(MS * 10, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"posi\"},\"finish_reason\":null}],\"usage\":null}\n\n"),
        Step::After(MS * 10, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tive\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"),
        Step::After(MS, Box::leak(usage.into_boxed_str())),
        Step::After(MS, "data: [DONE]\n\n"),
    ]
}

/// A chat request with an explicit `max_tokens`, so the estimator charges
/// the body's bytes / 4 plus `max_tokens`.
fn chat(max_tokens: u64) -> Request<String> {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Is this positive?"}]
    });
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap()
}

/// An upstream that answers call `n` (from 0) with `script(n)`, counting
/// the calls.
fn upstream(
    calls: Arc<AtomicU32>,
    script: impl Fn(u32) -> Vec<Step> + Clone + Send + 'static,
) -> impl Service<
    Request<String>,
    Response = Response<StreamBody<Chunks>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<String>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let response = sse_response(script(n));
        async move { Ok::<_, Infallible>(response) }
    })
}

/// Reads a body to its end: the bytes, and the error that ended it, if any.
async fn drain<B>(body: B) -> (Vec<u8>, Option<Error>)
where
    B: http_body::Body<Data = Bytes, Error = Error> + Unpin,
{
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}

/// Sends two requests, reading the first one's body to its end, and says
/// how long the second took to its response (its first event included).
async fn second_waits(
    layer: LlmLayer,
    script: fn(u32) -> Vec<Step>,
    first: Request<String>,
    second: Request<String>,
) -> Duration {
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = layer.layer(upstream(calls.clone(), script));
    let response = svc.ready().await.unwrap().call(first).await.unwrap();
    let (bytes, error) = drain(response.into_body()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(!bytes.is_empty());
    let read_at = Instant::now();
    let response = svc.ready().await.unwrap().call(second).await.unwrap();
    drop(response);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Instant::now() - read_at
}

/// An Anthropic stream: 20 input tokens, 5 output tokens.
fn anthropic_stream(_: u32) -> Vec<Step> {
    vec![
        Step::After(MS * 10, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n"),
        Step::After(MS * 10, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"positive\"}}\n\n"),
        Step::After(MS, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n"),
        Step::After(MS, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
    ]
}

#[tokio::test(start_paused = true)]
async fn the_usage_at_the_end_of_a_stream_corrects_the_charge_as_the_provider_counts() {
    // Anthropic counts the real output: 1,000 tokens a minute hold two
    // requests of up to 600 output tokens once the first used 25.
    let anthropic = LlmLayer::new(Provider::Anthropic)
        .requests_per_minute(100)
        .tokens_per_minute(1_000);
    let waited = second_waits(anthropic, anthropic_stream, chat(600), chat(600)).await;
    // (10 ms is the stream's first event, which the stack waits for)
    assert_eq!(waited, MS * 10, "the first estimate was not corrected");

    // OpenAI charges the declared max_tokens at admission and gives
    // nothing back: the second request waits for the first to leave the
    // window, as it would at the provider.
    let openai = || {
        LlmLayer::new(Provider::OpenAi)
            .requests_per_minute(100)
            .tokens_per_minute(2_000)
    };
    let script: fn(u32) -> Vec<Step> = |_| openai_stream(20, 5);
    let waited = second_waits(openai(), script, chat(1_500), chat(600)).await;
    assert!(waited > Duration::from_secs(55), "{waited:?}");

    // Without max_tokens OpenAI counts what was used: the default guess
    // (1,024 output tokens) gives way to the reported 5.
    let mut first = chat(0);
    let mut body: serde_json::Value = serde_json::from_str(first.body()).unwrap();
    body.as_object_mut().unwrap().remove("max_tokens");
    *first.body_mut() = body.to_string();
    let second = first.clone();
    let waited = second_waits(openai(), script, first, second).await;
    assert_eq!(waited, MS * 10, "the default guess was not corrected");
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_early_keeps_its_estimate() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .tokens_per_minute(1_000);
    let mut svc = layer.layer(upstream(calls.clone(), |_| openai_stream(20, 5)));
    let t0 = Instant::now();
    let response = svc.ready().await.unwrap().call(chat(600)).await.unwrap();
    let mut body = response.into_body();
    // one chunk read, then the caller stops before the usage chunk
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let response = svc.ready().await.unwrap().call(chat(600)).await.unwrap();
    // the second one waited for the first estimate to leave the window
    assert!(
        Instant::now() - t0 >= Duration::from_secs(59),
        "{:?}",
        Instant::now() - t0
    );
    drop(response);
}

#[tokio::test(start_paused = true)]
async fn a_success_passes_through_frame_by_frame() {
    let calls = Arc::new(AtomicU32::new(0));
    let script = |_| {
        vec![
            Step::After(
                Duration::ZERO,
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            ),
            Step::After(
                Duration::from_secs(5),
                "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            ),
            Step::After(Duration::from_secs(5), "data: [DONE]\n\n"),
        ]
    };
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .layer(upstream(calls, script));
    let t0 = Instant::now();
    let mut body = svc
        .ready()
        .await
        .unwrap()
        .call(chat(10))
        .await
        .unwrap()
        .into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: {\"choices\""));
    assert_eq!(
        Instant::now() - t0,
        Duration::ZERO,
        "the first chunk waited for the others"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(second.ends_with(b"\"b\"}}]}\n\n"));
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    let (rest, error) = drain(body).await;
    assert!(error.is_none());
    assert_eq!(rest, b"data: [DONE]\n\n");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_fails_midway_is_a_typed_error_and_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let script = |_| {
        vec![
            Step::After(MS, "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n"),
            Step::After(MS, "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":null}}\n\n"),
        ]
    };
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .layer(upstream(calls.clone(), script));
    let response = svc.ready().await.unwrap().call(chat(10)).await.unwrap();
    let (bytes, error) = drain(response.into_body()).await;
    let error = error.expect("a mid-stream error event ends the body with an error");
    assert!(error.is_stream_failure(), "{error}");
    assert!(error.is_server_error(), "{error}");
    // what reached the caller: both events, the error event included
    assert!(bytes.ends_with(b"\"code\":null}}\n\n"));
    assert_eq!(error.delivered(), Some(bytes.len() as u64));
    // delivered bytes cannot be taken back: no retry
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reset_midway_is_a_typed_error() {
    let calls = Arc::new(AtomicU32::new(0));
    let script = |_| {
        vec![
            Step::After(
                MS,
                "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n",
            ),
            Step::Fail(MS),
        ]
    };
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .layer(upstream(calls.clone(), script));
    let response = svc.ready().await.unwrap().call(chat(10)).await.unwrap();
    let (bytes, error) = drain(response.into_body()).await;
    let error = error.expect("a reset ends the body with an error");
    assert!(error.is_stream_failure(), "{error}");
    assert_eq!(error.delivered(), Some(bytes.len() as u64));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn streams_that_fail_midway_open_the_circuit() {
    let calls = Arc::new(AtomicU32::new(0));
    let anthropic_overloaded = |_| {
        vec![
            Step::After(MS, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n"),
            Step::After(MS, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
        ]
    };
    let mut svc = LlmLayer::new(Provider::Anthropic)
        .requests_per_minute(1_000)
        .circuit_breaker(|b| b.window(FailureWindow::Count(4)).minimum_calls(4))
        .layer(upstream(calls.clone(), anthropic_overloaded));
    for _ in 0..4 {
        let response = svc.ready().await.unwrap().call(chat(10)).await.unwrap();
        let (_, error) = drain(response.into_body()).await;
        let error = error.expect("each stream fails");
        assert!(error.is_overloaded(), "{error}");
    }
    let Err(error) = svc.ready().await.unwrap().call(chat(10)).await else {
        panic!("the circuit did not open");
    };
    assert!(error.is_circuit_open(), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn an_error_as_the_first_event_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let script = |n| {
        if n == 0 {
            vec![Step::After(MS, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")]
        } else {
            vec![
                Step::After(MS, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n"),
                Step::After(MS, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n"),
                Step::After(MS, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            ]
        }
    };
    let mut svc = LlmLayer::new(Provider::Anthropic)
        .requests_per_minute(1_000)
        .layer(upstream(calls.clone(), script));
    let response = svc.ready().await.unwrap().call(chat(10)).await.unwrap();
    let (bytes, error) = drain(response.into_body()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(bytes.starts_with(b"event: message_start"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_ends_with_an_idle_timeout() {
    let calls = Arc::new(AtomicU32::new(0));
    let script = |_| {
        vec![
            Step::After(
                MS,
                "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n",
            ),
            Step::After(Duration::from_secs(3_600), "data: [DONE]\n\n"),
        ]
    };
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .idle_timeout(Duration::from_secs(30))
        .layer(upstream(calls.clone(), script));
    let t0 = Instant::now();
    let response = svc.ready().await.unwrap().call(chat(10)).await.unwrap();
    let (bytes, error) = drain(response.into_body()).await;
    let error = error.expect("a stalled stream ends with an error");
    assert!(error.is_timeout(), "{error}");
    assert!(error.is_stream_failure(), "{error}");
    assert_eq!(error.delivered(), Some(bytes.len() as u64));
    let took = Instant::now() - t0;
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "{took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
