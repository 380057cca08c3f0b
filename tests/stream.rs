//! Streams: the usage of every provider shape read from bodies passing
//! frame by frame, mid-stream failures turned into typed errors, the idle
//! timeout, the classify layer's first-event peek, and the hook told
//! exactly once however a body ends.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{
    classify_transport_error, Classification, Classifier, ClassifyLayer, ErrorClass, Provider,
    DEFAULT_BODY_PREFIX,
};
use tower_llm_resilience::rate_limit::TokenUsage;
use tower_llm_resilience::stream::{
    BodyShape, Ending, IdleTimeoutBody, IdleTimeoutLayer, OnEnd, StreamEnd, StreamHook,
    StreamWatcher, WatchedBody,
};
use tower_llm_resilience::{BoxError, Error, LlmLayer};

#[path = "../src/stream/fixtures.rs"]
mod fixtures;
mod support;

use fixtures::*;

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

type Chunk = Result<Frame<Bytes>, io::Error>;
type Channel = StreamBody<mpsc::UnboundedReceiver<Chunk>>;

/// A body fed by the test, frame by frame.
fn channel() -> (mpsc::UnboundedSender<Chunk>, Channel) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx))
}

fn send(tx: &mpsc::UnboundedSender<Chunk>, bytes: &[u8]) {
    tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(bytes))))
        .unwrap();
}

/// A body of `body` in frames of `size` bytes, all ready.
fn frames(
    body: &[u8],
    size: usize,
) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<Chunk>>> {
    let chunks: Vec<Chunk> = body
        .chunks(size.max(1))
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures::stream::iter(chunks))
}

/// Records every end it is told (a clone stays with the test).
#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<StreamEnd>>>);

impl Record {
    fn ends(&self) -> Vec<StreamEnd> {
        self.0.lock().unwrap().clone()
    }

    /// The one end told; fails if it was told none or more than one.
    fn once(&self) -> StreamEnd {
        let ends = self.ends();
        assert_eq!(
            ends.len(),
            1,
            "the hook must be told exactly once: {ends:?}"
        );
        ends[0]
    }
}

impl StreamHook for Record {
    fn classify_error(&self, error: &BoxError) -> Classification {
        classify_transport_error(&**error)
    }

    fn on_end(self, end: StreamEnd) {
        self.0.lock().unwrap().push(end);
    }
}

fn watcher(shape: BodyShape) -> StreamWatcher {
    StreamWatcher::new(shape)
}

/// Reads a body to its end or its first error: the bytes, and the error.
async fn read<B>(mut body: B) -> (Vec<u8>, Option<B::Error>)
where
    B: Body + Unpin,
{
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(bytes::Buf::chunk(&data));
                }
            }
            Err(e) => {
                // The body ends after its error.
                assert!(body.frame().await.is_none(), "nothing after the error");
                return (bytes, Some(e));
            }
        }
    }
    (bytes, None)
}

fn usage(input_tokens: u64, output_tokens: u64) -> Option<TokenUsage> {
    Some(TokenUsage {
        input_tokens,
        output_tokens,
    })
}

// ---------------------------------------------------------------------------
// Usage: every shape, streamed or whole, in frames of any size
// ---------------------------------------------------------------------------

#[tokio::test]
async fn usage_of_every_shape_reaches_the_hook() {
    let cases: &[(BodyShape, &str, Option<TokenUsage>)] = &[
        (BodyShape::EventStream, OPENAI_CHAT_SSE, usage(12, 7)),
        (BodyShape::EventStream, OPENAI_CHAT_SSE_NO_USAGE, None),
        (BodyShape::EventStream, OPENAI_RESPONSES_SSE, usage(36, 87)),
        (BodyShape::EventStream, ANTHROPIC_SSE, usage(30, 15)),
        (BodyShape::EventStream, GEMINI_SSE, usage(8, 16)),
        (BodyShape::Json, OPENAI_CHAT_JSON, usage(50, 1)),
        (BodyShape::Json, OPENAI_RESPONSES_JSON, usage(10, 20)),
        (BodyShape::Json, OPENAI_EMBEDDINGS_JSON, usage(8, 0)),
        (BodyShape::Json, ANTHROPIC_JSON, usage(10, 3)),
        (BodyShape::Json, GEMINI_JSON, usage(4, 6)),
        (BodyShape::Json, GEMINI_JSON_ARRAY, usage(4, 3)),
    ];
    for &(shape, body, expected) in cases {
        for size in [1, 7, 64, 100_000] {
            let hook = Record::default();
            let watched =
                WatchedBody::new(frames(body.as_bytes(), size), watcher(shape), hook.clone());
            let (bytes, error) = read(watched).await;
            assert!(error.is_none(), "{body}: {error:?}");
            assert_eq!(bytes, body.as_bytes(), "passed through unchanged");
            let end = hook.once();
            assert_eq!(end.ending, Ending::Complete, "{body}");
            assert_eq!(end.report.usage, expected, "{body} in frames of {size}");
            assert!(end.report.complete, "{body}");
            assert_eq!(end.report.delivered, body.len() as u64);
        }
    }
}

#[test]
fn the_shape_comes_from_the_content_type() {
    let sse = Response::builder()
        .header("content-type", "text/event-stream")
        .body(())
        .unwrap();
    assert_eq!(
        StreamWatcher::for_response(sse.headers()).shape(),
        BodyShape::EventStream
    );
    let json = Response::builder()
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    assert_eq!(
        StreamWatcher::for_response(json.headers()).shape(),
        BodyShape::Json
    );
}

// ---------------------------------------------------------------------------
// Mid-stream failures
// ---------------------------------------------------------------------------

/// Watches `body`, one frame per event, to its end.
async fn watch_events(body: &str) -> (Vec<u8>, Option<Error>, StreamEnd) {
    let (tx, fed) = channel();
    for event in body.split_inclusive("\n\n") {
        send(&tx, event.as_bytes());
    }
    drop(tx);
    let hook = Record::default();
    let watched = WatchedBody::new(fed, watcher(BodyShape::EventStream), hook.clone());
    let (bytes, error) = read(watched).await;
    (bytes, error, hook.once())
}

#[tokio::test]
async fn an_openai_error_chunk_fails_the_stream_after_its_frame() {
    let (bytes, error, end) = watch_events(OPENAI_ERROR_SSE).await;
    // The frame holding the error reached the caller, then the error.
    assert_eq!(bytes, OPENAI_ERROR_SSE.as_bytes());
    let error = error.expect("a typed error");
    assert!(error.is_stream_failure() && error.is_server_error() && error.is_retryable());
    assert_eq!(error.delivered(), Some(OPENAI_ERROR_SSE.len() as u64));
    assert_eq!(error.code(), Some("server_error"));
    assert_eq!(
        error.to_string(),
        format!(
            "stream failed after {} bytes: the provider sent an error event (server_error: server_error)",
            OPENAI_ERROR_SSE.len()
        )
    );
    assert_eq!(end.ending, Ending::Failed(ErrorClass::ServerError));
    assert_eq!(end.report.failure.unwrap().class, ErrorClass::ServerError);
}

#[tokio::test]
async fn an_anthropic_overload_mid_stream_is_an_overload() {
    let (_, error, end) = watch_events(ANTHROPIC_OVERLOADED_SSE).await;
    let error = error.expect("a typed error");
    assert!(error.is_overloaded() && error.is_stream_failure());
    assert_eq!(error.code(), Some("overloaded_error"));
    assert_eq!(end.ending, Ending::Failed(ErrorClass::Overloaded));
    // What was seen before the failure: the input tokens of message_start.
    assert_eq!(end.report.usage, usage(40, 1));

    let (_, error, _) = watch_events(OPENAI_RESPONSES_FAILED_SSE).await;
    assert!(error.unwrap().is_server_error());
    let (_, error, _) = watch_events(OPENAI_RESPONSES_ERROR_SSE).await;
    assert!(error.unwrap().is_rate_limited());
}

#[tokio::test]
async fn the_error_frame_is_handed_on_before_the_error() {
    let (tx, fed) = channel();
    let hook = Record::default();
    let mut watched = WatchedBody::new(fed, watcher(BodyShape::EventStream), hook.clone());
    send(&tx, ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes());
    let frame = watched.frame().await.unwrap().unwrap();
    assert_eq!(
        frame.into_data().unwrap(),
        ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes()
    );
    // The hook knows at once; the caller learns at the next poll, without
    // the provider sending anything more.
    assert_eq!(hook.once().ending, Ending::Failed(ErrorClass::Overloaded));
    assert!(!watched.is_end_stream());
    let error = watched.frame().await.unwrap().unwrap_err();
    assert!(error.is_overloaded());
    assert!(watched.frame().await.is_none());
    assert!(watched.is_end_stream());
    hook.once();
}

#[tokio::test]
async fn a_reset_mid_stream_is_a_connect_failure_that_says_what_was_delivered() {
    let (tx, fed) = channel();
    let first = &OPENAI_CHAT_SSE.as_bytes()[..200];
    send(&tx, first);
    tx.unbounded_send(Err(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "reset by peer",
    )))
    .unwrap();
    let hook = Record::default();
    let watched = WatchedBody::new(fed, watcher(BodyShape::EventStream), hook.clone());
    let (bytes, error) = read(watched).await;
    assert_eq!(bytes, first);
    let error = error.expect("a typed error");
    assert!(error.is_stream_failure() && error.is_connect() && error.is_retryable());
    assert_eq!(error.delivered(), Some(200));
    assert_eq!(error.to_string(), "stream broke after 200 bytes (connect)");
    let source = std::error::Error::source(&error).unwrap();
    assert_eq!(source.to_string(), "reset by peer");
    assert_eq!(hook.once().ending, Ending::Failed(ErrorClass::Connect));
}

#[tokio::test]
async fn the_hook_classifies_transport_errors() {
    struct Says(ErrorClass, Record);
    impl StreamHook for Says {
        fn classify_error(&self, _: &BoxError) -> Classification {
            Classification::failure(self.0)
        }
        fn on_end(self, end: StreamEnd) {
            self.1.on_end(end)
        }
    }
    let (tx, fed) = channel();
    tx.unbounded_send(Err(io::Error::other("strange"))).unwrap();
    let record = Record::default();
    let hook = Says(ErrorClass::Overloaded, record.clone());
    let (_, error) = read(WatchedBody::new(fed, watcher(BodyShape::Json), hook)).await;
    assert!(error.unwrap().is_overloaded());
    assert_eq!(record.once().ending, Ending::Failed(ErrorClass::Overloaded));
}

#[tokio::test]
async fn a_truncated_stream_is_a_server_error() {
    let cut = OPENAI_CHAT_SSE.len() - "data: [DONE]\n\n".len();
    let body = &OPENAI_CHAT_SSE[..cut];
    let (bytes, error, end) = watch_events(body).await;
    assert_eq!(bytes, body.as_bytes());
    let error = error.expect("a typed error");
    assert!(error.is_stream_failure() && error.is_server_error());
    assert_eq!(
        error.to_string(),
        format!(
            "stream truncated after {cut} bytes: it ended without its terminator (server_error)"
        )
    );
    assert_eq!(end.ending, Ending::Failed(ErrorClass::ServerError));
    // The usage came before the cut: the limiter still learns it.
    assert_eq!(end.report.usage, usage(12, 7));

    // Anthropic without message_stop, Gemini without a finishReason.
    let cut = ANTHROPIC_SSE.find("event: message_stop").unwrap();
    assert!(watch_events(&ANTHROPIC_SSE[..cut]).await.1.is_some());
    let cut = GEMINI_SSE.find("\r\n\r\n").unwrap() + 4;
    assert!(watch_events(&GEMINI_SSE[..cut]).await.1.is_some());
    // A stream in no known format ends as it ends.
    let (_, error, end) = watch_events("data: hello\n\n").await;
    assert!(error.is_none());
    assert_eq!(end.ending, Ending::Complete);
}

#[tokio::test]
async fn a_whole_json_body_is_judged_by_its_status_not_its_content() {
    // As every layer does (tests/hostile.rs): a 2xx JSON body with an error
    // object is the classifier's to call a failure, not the stream's.
    let body = r#"{"error":{"message":"Internal error","type":"server_error"}}"#;
    let hook = Record::default();
    let (bytes, error) = read(WatchedBody::new(
        frames(body.as_bytes(), 8),
        watcher(BodyShape::Json),
        hook.clone(),
    ))
    .await;
    assert_eq!((bytes.as_slice(), error.is_none()), (body.as_bytes(), true));
    assert_eq!(hook.once().ending, Ending::Complete);
}

// ---------------------------------------------------------------------------
// Frame by frame
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_success_passes_frame_by_frame() {
    let (tx, fed) = channel();
    let hook = Record::default();
    let watched = WatchedBody::new(fed, watcher(BodyShape::EventStream), hook.clone());
    let mut watched = Box::pin(watched);
    let events: Vec<&str> = ANTHROPIC_SSE.split_inclusive("\n\n").collect();
    for event in &events {
        // Nothing is there until the provider sends it...
        let mut next = task::spawn(watched.frame());
        assert_pending!(next.poll());
        send(&tx, event.as_bytes());
        assert!(next.is_woken());
        // ...and then it is, before the next one is produced.
        let frame = assert_ready!(next.poll()).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
        assert!(hook.ends().is_empty(), "not ended yet");
    }
    drop(tx);
    assert!(watched.frame().await.is_none());
    let end = hook.once();
    assert_eq!(end.ending, Ending::Complete);
    assert_eq!(end.report.usage, usage(30, 15));
}

#[tokio::test]
async fn through_the_classify_layer_a_stream_is_not_buffered() {
    let (tx, fed) = channel();
    let body = Mutex::new(Some(fed));
    let provider = tower::service_fn(move |_: Request<()>| {
        let body = body.lock().unwrap().take().unwrap();
        async move {
            let response = Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let mut client = ClassifyLayer::new()
        .classifier(Provider::Anthropic)
        .layer(provider);
    let mut call = task::spawn(client.ready().await.unwrap().call(Request::new(())));
    assert_pending!(call.poll());
    let events: Vec<&str> = ANTHROPIC_SSE.split_inclusive("\n\n").collect();
    // Half of the first event: still waiting for it.
    send(&tx, &events[0].as_bytes()[..20]);
    assert_pending!(call.poll());
    send(&tx, &events[0].as_bytes()[20..]);
    let response = assert_ready!(call.poll()).unwrap();
    assert!(
        Provider::Anthropic.failure_of(&response).is_none(),
        "a normal first event is a success"
    );
    let hook = Record::default();
    let watcher = StreamWatcher::for_response(response.headers());
    let mut body = Box::pin(WatchedBody::new(
        response.into_body(),
        watcher,
        hook.clone(),
    ));
    // The first event's two frames are replayed, then the rest streams.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!([first, second].concat(), events[0].as_bytes());
    for event in &events[1..] {
        let mut next = task::spawn(body.frame());
        assert_pending!(next.poll());
        send(&tx, event.as_bytes());
        let frame = assert_ready!(next.poll()).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
    }
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(hook.once().report.usage, usage(30, 15));
}

// ---------------------------------------------------------------------------
// The hook: exactly once, however the body ends
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_dropped_body_reports_what_was_seen() {
    let hook = Record::default();
    let mut watched = Box::pin(WatchedBody::new(
        frames(ANTHROPIC_SSE.as_bytes(), 400),
        watcher(BodyShape::EventStream),
        hook.clone(),
    ));
    watched.frame().await.unwrap().unwrap();
    assert!(hook.ends().is_empty());
    drop(watched);
    let end = hook.once();
    assert_eq!(end.ending, Ending::Dropped);
    assert_eq!(end.report.delivered, 400);
    // message_start was in the first 400 bytes: its input tokens count.
    assert_eq!(end.report.usage, usage(30, 1));

    // Dropped before any poll.
    let hook = Record::default();
    drop(WatchedBody::new(
        frames(b"data: {}\n\n", 4),
        watcher(BodyShape::EventStream),
        hook.clone(),
    ));
    assert_eq!(hook.once().ending, Ending::Dropped);
    assert_eq!(hook.once().report.delivered, 0);
}

#[tokio::test]
async fn the_hook_is_told_once_in_every_ending() {
    // Complete, then polled again and dropped: still once.
    let hook = Record::default();
    let mut watched = Box::pin(WatchedBody::new(
        frames(OPENAI_CHAT_JSON.as_bytes(), 50),
        watcher(BodyShape::Json),
        hook.clone(),
    ));
    while watched.frame().await.is_some() {}
    assert!(watched.frame().await.is_none());
    drop(watched);
    assert_eq!(hook.once().ending, Ending::Complete);

    // A body that says it has ended is complete with its last frame, even
    // when the caller stops polling there (as hyper does).
    let hook = Record::default();
    let full = http_body_util::Full::new(Bytes::from_static(OPENAI_CHAT_JSON.as_bytes()));
    let mut watched = Box::pin(WatchedBody::new(
        full,
        watcher(BodyShape::Json),
        hook.clone(),
    ));
    watched.frame().await.unwrap().unwrap();
    assert!(watched.is_end_stream());
    drop(watched);
    assert_eq!(hook.once().ending, Ending::Complete);
    assert_eq!(hook.once().report.usage, usage(50, 1));

    // An empty body never polled has nothing more: complete.
    let hook = Record::default();
    drop(WatchedBody::new(
        http_body_util::Empty::<Bytes>::new(),
        watcher(BodyShape::Json),
        hook.clone(),
    ));
    assert_eq!(hook.once().ending, Ending::Complete);

    // Failed, then polled again and dropped: once.
    let hook = Record::default();
    let mut watched = Box::pin(WatchedBody::new(
        frames(OPENAI_ERROR_SSE.as_bytes(), 30),
        watcher(BodyShape::EventStream),
        hook.clone(),
    ));
    while let Some(Ok(_)) = watched.frame().await {}
    assert!(watched.frame().await.is_none());
    drop(watched);
    assert_eq!(hook.once().ending, Ending::Failed(ErrorClass::ServerError));

    // The no-op hook and a closure.
    let (bytes, error) = read(WatchedBody::new(
        frames(OPENAI_ERROR_SSE.as_bytes(), 30),
        watcher(BodyShape::EventStream),
        (),
    ))
    .await;
    assert_eq!(bytes, OPENAI_ERROR_SSE.as_bytes());
    assert!(error.unwrap().is_server_error());
    let told = Arc::new(Mutex::new(Vec::new()));
    let seen = told.clone();
    let hook = OnEnd(move |end: StreamEnd| seen.lock().unwrap().push(end.ending));
    read(WatchedBody::new(
        frames(GEMINI_JSON.as_bytes(), 9),
        watcher(BodyShape::Json),
        hook,
    ))
    .await;
    assert_eq!(*told.lock().unwrap(), [Ending::Complete]);
}

// ---------------------------------------------------------------------------
// The idle timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_times_out_after_its_last_frame() {
    let (tx, fed) = channel();
    let hook = Record::default();
    let idle = IdleTimeoutBody::new(fed, Duration::from_secs(30));
    let mut body = Box::pin(WatchedBody::new(
        idle,
        watcher(BodyShape::EventStream),
        hook.clone(),
    ));

    send(&tx, b"data: {\"choices\":[]}\n\n");
    body.frame().await.unwrap().unwrap();
    // 29 s of silence, then a frame: the clock restarts.
    let mut next = task::spawn(body.frame());
    assert_pending!(next.poll());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_pending!(next.poll());
    send(&tx, b"data: {\"choices\":[{}]}\n\n");
    assert_ready!(next.poll()).unwrap().unwrap();
    drop(next);
    // Then 30 s of silence: a timeout that says so.
    let start = tokio::time::Instant::now();
    let error = body.frame().await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert!(error.is_timeout() && error.is_stream_failure() && error.is_retryable());
    assert_eq!(error.delivered(), Some(46));
    assert_eq!(
        error.to_string(),
        "stream idle for 30.000s after 46 bytes (timeout)"
    );
    assert!(body.frame().await.is_none());
    let end = hook.once();
    assert_eq!(end.ending, Ending::Failed(ErrorClass::Timeout));
    assert_eq!(end.report.delivered, 46);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn the_idle_clock_starts_at_the_first_poll_and_yields_ready_frames_first() {
    let (tx, fed) = channel();
    let mut body = Box::pin(IdleTimeoutBody::new(fed, Duration::from_secs(10)));
    // Not polled for a minute: not timed out, the clock has not started.
    tokio::time::advance(Duration::from_secs(60)).await;
    let mut next = task::spawn(body.frame());
    assert_pending!(next.poll());
    // A frame that arrived while the caller was slow is not lost to the
    // timer, even past the deadline.
    tokio::time::advance(Duration::from_secs(9)).await;
    send(&tx, b"late but there");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_ready!(next.poll()).unwrap().unwrap();
    drop(next);
    // An ended body ends, however long it then sits.
    drop(tx);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_layer_wraps_every_body() {
    const FIRST: &[u8] = b"data: {\"type\":\"message_start\"}\n\n";
    let stalled = tower::service_fn(|_: Request<()>| async {
        let (tx, fed) = channel();
        send(&tx, FIRST);
        std::mem::forget(tx); // the connection stays open, silent
        Ok::<_, Infallible>(Response::new(fed))
    });
    let mut client = IdleTimeoutLayer::new(Duration::from_secs(5)).layer(stalled);
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let (bytes, error) = read(Box::pin(response.into_body())).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(bytes, FIRST);
    let error = error.unwrap().downcast::<Error>().unwrap();
    assert!(error.is_timeout());
    assert_eq!(error.delivered(), Some(FIRST.len() as u64));
    // Inner errors pass through unchanged, for the layer above to classify.
    let (tx, fed) = channel();
    tx.unbounded_send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")))
        .unwrap();
    let (_, error) = read(Box::pin(IdleTimeoutBody::new(fed, Duration::from_secs(5)))).await;
    assert!(error.unwrap().downcast::<io::Error>().is_ok());
}

// ---------------------------------------------------------------------------
// The first-event peek of the classify layer
// ---------------------------------------------------------------------------

/// A provider answering one 200 event stream fed by the test.
fn sse_provider(
    body: Channel,
) -> impl Service<Request<()>, Response = Response<Channel>, Error = Infallible, Future: Send> {
    let body = Mutex::new(Some(body));
    tower::service_fn(move |_: Request<()>| {
        let body = body.lock().unwrap().take().expect("called once");
        async move {
            let response = Response::builder()
                .header("content-type", "text/event-stream; charset=utf-8")
                .body(body)
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test]
async fn an_error_as_first_event_makes_the_response_that_error() {
    let (tx, fed) = channel();
    let mut client = ClassifyLayer::new()
        .classifier(Provider::Anthropic)
        .layer(sse_provider(fed));
    let (head, tail) = ANTHROPIC_OVERLOADED_FIRST_SSE.split_at(30);
    send(&tx, head.as_bytes());
    send(&tx, tail.as_bytes());
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Every layer sees a failure, of the event's class.
    let failure = Provider::Anthropic
        .failure_of(&response)
        .expect("a failure");
    assert_eq!(failure.class, Some(ErrorClass::Overloaded));
    assert_eq!(failure.code, Some("overloaded_error"));
    assert!(failure.is_retryable());
    let error = Error::from_error_response(&response, &Provider::Anthropic);
    assert!(error.is_overloaded());
    assert_eq!(
        error.body(),
        Some(ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes())
    );
    // The frames read are replayed.
    drop(tx);
    let (bytes, error) = read(response.into_body()).await;
    assert_eq!(bytes, ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes());
    assert!(error.is_none());
}

#[tokio::test]
async fn an_openai_error_first_is_classified_too() {
    let (tx, fed) = channel();
    let mut client = ClassifyLayer::new().layer(sse_provider(fed));
    let error_event = OPENAI_ERROR_SSE.split_inclusive("\n\n").nth(1).unwrap();
    send(&tx, error_event.as_bytes());
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let failure = Provider::Auto.failure_of(&response).unwrap();
    assert_eq!(failure.class, Some(ErrorClass::ServerError));
    drop(tx);
}

#[tokio::test]
async fn the_peek_is_bounded_in_bytes_and_frames() {
    // Comments only (OpenRouter sends them while it waits), never an
    // event: the response passes on after the body prefix, not later.
    for (frame, bound) in [(1000, DEFAULT_BODY_PREFIX + 1000), (25, 64 * 25)] {
        let (tx, fed) = channel();
        let mut client = ClassifyLayer::new().layer(sse_provider(fed));
        let mut comment = vec![b' '; frame];
        comment[0] = b':';
        comment[frame - 2..].copy_from_slice(b"\n\n");
        let mut sent = Vec::new();
        let mut call = task::spawn(client.ready().await.unwrap().call(Request::new(())));
        let response = loop {
            if let std::task::Poll::Ready(response) = call.poll() {
                break response.unwrap();
            }
            assert!(sent.len() < bound, "held {} bytes", sent.len());
            send(&tx, &comment);
            sent.extend_from_slice(&comment);
        };
        assert!(
            sent.len() >= bound - frame,
            "passed on after {} bytes",
            sent.len()
        );
        assert!(Provider::Auto.failure_of(&response).is_none());
        // Held frames are replayed, then the stream goes on.
        send(&tx, b"data: {\"choices\":[]}\n\n");
        sent.extend_from_slice(b"data: {\"choices\":[]}\n\n");
        drop(tx);
        let (bytes, _) = read(response.into_body()).await;
        assert_eq!(bytes, sent);
    }

    // A smaller prefix holds less.
    let (tx, fed) = channel();
    let mut client = ClassifyLayer::new().max_body(100).layer(sse_provider(fed));
    send(&tx, &[b':'; 150]);
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert!(Provider::Auto.failure_of(&response).is_none());
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_does_not_hold_the_peek_forever() {
    // No byte at all: passed on after the read timeout (5 s), not held for
    // the whole attempt timeout that sits outside the classify layer.
    let (tx, fed) = channel();
    let mut client = ClassifyLayer::new().layer(sse_provider(fed));
    let start = tokio::time::Instant::now();
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(Provider::Auto.failure_of(&response).is_none());
    // The stream then goes on as it comes; an error event now is the
    // watched body's to report.
    send(&tx, ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes());
    drop(tx);
    let watcher = StreamWatcher::for_response(response.headers());
    let (_, error) = read(WatchedBody::new(response.into_body(), watcher, ())).await;
    assert!(error.unwrap().is_overloaded());
}

#[tokio::test]
async fn a_success_that_is_not_an_event_stream_is_not_peeked() {
    // Not an event stream: the peek does not apply.
    let provider = tower::service_fn(|_: Request<()>| async {
        let (tx, body) = channel();
        send(&tx, ANTHROPIC_OVERLOADED_FIRST_SSE.as_bytes());
        std::mem::forget(tx);
        Ok::<_, Infallible>(Response::new(body))
    });
    let mut client = ClassifyLayer::new().layer(provider);
    let response = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert!(response.extensions().get::<Classification>().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_stack_retries_a_stream_whose_first_event_is_an_error() {
    let (calls, provider) = support::counting(|n| async move {
        let body = if n == 0 {
            ANTHROPIC_OVERLOADED_FIRST_SSE
        } else {
            ANTHROPIC_SSE
        };
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(String::from(body))
            .unwrap();
        Ok::<_, io::Error>(response)
    });
    let mut stack = LlmLayer::new(Provider::Anthropic)
        .requests_per_minute(100)
        .layer(provider);
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(calls.get(), 2, "the overloaded stream was retried");
    let (bytes, _) = read(response.into_body()).await;
    assert_eq!(bytes, ANTHROPIC_SSE.as_bytes());
}

// ---------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------

#[test]
fn the_watcher_allocates_nothing_per_frame() {
    // The scanner is boxed at the first byte (one allocation per body
    // with data), then nothing per frame.
    let mut w = StreamWatcher::new(BodyShape::EventStream);
    let before = support::allocations();
    w.feed(b"");
    assert_eq!(
        support::allocations() - before,
        0,
        "an empty frame makes nothing"
    );
    for _ in 0..1_000 {
        w.feed(OPENAI_CHUNK.as_bytes());
        w.feed(ANTHROPIC_DELTA.as_bytes());
    }
    assert_eq!(support::allocations() - before, 1);
    // Usage is captured in one more buffer, allocated once per response.
    let mut w = StreamWatcher::new(BodyShape::EventStream);
    let before = support::allocations();
    for _ in 0..10 {
        w.feed(GEMINI_SSE.as_bytes());
        w.feed(ANTHROPIC_SSE.as_bytes());
    }
    assert_eq!(support::allocations() - before, 2);
    assert_eq!(w.report().usage, usage(30, 15));
}
