//! The breaker and streamed answers (issue #13, item 2), under paused time:
//! a 2xx stream is judged at the end of its body, so a stream that breaks
//! midway is a failure, a clean one a success, and a half-open probe keeps
//! its slot until its stream ends (never longer).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::advance;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, FailureWindow, ResponseBody};
use tower_llm_resilience::events::CircuitState;
use tower_llm_resilience::{BoxError, Classification, Error, ErrorClass, Key};

type Req = Request<String>;
type Item = Result<Bytes, BoxError>;

/// A body whose frames the test sends, one by one, through a channel; it
/// ends when the sender is dropped.
#[derive(Debug)]
struct ChannelBody(UnboundedReceiver<Item>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// A provider whose answers the test sets (status, streamed or plain, time
/// to the headers), and whose bodies it feeds.
#[derive(Clone)]
struct Provider {
    answer: Arc<Mutex<Answer>>,
    senders: Arc<Mutex<Vec<UnboundedSender<Item>>>>,
}

#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    sse: bool,
    headers_after: Duration,
}

impl Provider {
    fn new() -> Self {
        Provider {
            answer: Arc::new(Mutex::new(Answer {
                status: 200,
                sse: true,
                headers_after: Duration::ZERO,
            })),
            senders: Arc::default(),
        }
    }

    fn set(&self, f: impl FnOnce(&mut Answer)) {
        f(&mut self.answer.lock().unwrap());
    }

    fn service(&self) -> BoxCloneService<Req, Response<ChannelBody>, BoxError> {
        let this = self.clone();
        BoxCloneService::new(service_fn(move |_req: Req| {
            let answer = *this.answer.lock().unwrap();
            let (tx, rx) = unbounded_channel();
            this.senders.lock().unwrap().push(tx);
            async move {
                tokio::time::sleep(answer.headers_after).await;
                let mut response = Response::builder().status(answer.status);
                if answer.sse {
                    response = response.header(header::CONTENT_TYPE, "text/event-stream");
                }
                Ok::<_, BoxError>(response.body(ChannelBody(rx)).unwrap())
            }
        }))
    }

    /// The sender of the body of the latest call.
    fn last(&self) -> UnboundedSender<Item> {
        self.senders.lock().unwrap().last().unwrap().clone()
    }

    /// Ends every body (the senders go).
    fn end_all(&self) {
        self.senders.lock().unwrap().clear();
    }
}

type Svc = tower_llm_resilience::circuit_breaker::CircuitBreaker<
    BoxCloneService<Req, Response<ChannelBody>, BoxError>,
    tower_llm_resilience::key::SingleKey,
    tower_llm_resilience::Provider,
>;
type Streamed = ResponseBody<ChannelBody>;

fn small() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .window(FailureWindow::Count(10))
        .minimum_calls(5)
        .failure_rate(0.5)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(1)
}

async fn send(svc: &mut Svc) -> Result<Response<Streamed>, Error> {
    svc.ready().await?.call(Request::new(String::new())).await
}

/// One call whose headers arrived; the test holds its body and its sender.
async fn open(svc: &mut Svc, provider: &Provider) -> (Streamed, UnboundedSender<Item>) {
    let response = send(svc).await.unwrap();
    assert_eq!(response.status(), 200);
    (response.into_body(), provider.last())
}

fn state(svc: &Svc) -> CircuitState {
    svc.state(&Key::DEFAULT)
}

fn chunk() -> Item {
    Ok(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{}}]}\n\n",
    ))
}

fn reset() -> Item {
    Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer").into())
}

/// A stand-in for what `WatchedBody` reports for Anthropic's mid-stream
/// `event: error` with `overloaded_error` (the real one is tested below):
/// an `Error` of this crate with that class.
fn overloaded() -> Item {
    Err(Error::from_response(Classification::failure(ErrorClass::Overloaded)).into())
}

/// Trips `svc` with five 503s (error responses are judged at their
/// headers, streamed or not), then waits out the open time.
async fn trip_and_wait(svc: &mut Svc, provider: &Provider) {
    provider.set(|a| a.status = 503);
    for _ in 0..5 {
        assert_eq!(send(svc).await.unwrap().status(), 503);
    }
    assert_eq!(state(svc), CircuitState::Open);
    advance(Duration::from_secs(10)).await;
    provider.set(|a| a.status = 200);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_midway_is_a_failure() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open(&mut svc, &provider).await);
    }
    assert_eq!(
        state(&svc),
        CircuitState::Closed,
        "headers are not the verdict"
    );
    for (i, (mut body, tx)) in streams.into_iter().enumerate() {
        // Frame by frame: the caller has the first chunk before the
        // provider produced the next.
        tx.send(chunk()).unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk().unwrap());
        assert_eq!(state(&svc), CircuitState::Closed);
        tx.send(reset()).unwrap();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is_connect() && err.is_transport(), "{err:?}");
        let want = if i < 4 {
            CircuitState::Closed
        } else {
            CircuitState::Open
        };
        assert_eq!(state(&svc), want, "after stream {i} broke");
    }
    let err = send(&mut svc).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Connect);
}

#[tokio::test(start_paused = true)]
async fn a_clean_stream_is_a_success() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    provider.set(|a| a.status = 503);
    for _ in 0..2 {
        send(&mut svc).await.unwrap();
    }
    provider.set(|a| a.status = 200);
    for _ in 0..3 {
        let (mut body, tx) = open(&mut svc, &provider).await;
        tx.send(chunk()).unwrap();
        drop(tx);
        provider.end_all();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none(), "the end");
    }
    // 2 failures in 5 calls: below the rate, so the streams counted as
    // successes (as failures, the fifth call would have opened it).
    assert_eq!(state(&svc), CircuitState::Closed);
    // They counted at all: one more failure makes 3 in 6, the rate.
    provider.set(|a| a.status = 503);
    send(&mut svc).await.unwrap();
    assert_eq!(state(&svc), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_judged_at_the_end_of_its_stream() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;

    let (mut body, tx) = open(&mut svc, &provider).await;
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    let err = send(&mut svc).await.unwrap_err();
    assert!(
        err.is_circuit_open(),
        "the probe's slot is taken while it streams"
    );
    tx.send(chunk()).unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    drop(tx);
    provider.end_all();
    assert!(body.frame().await.is_none());
    assert_eq!(state(&svc), CircuitState::Closed, "a clean probe closes it");
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_stream_fails_opens_it_again() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;

    let (mut body, tx) = open(&mut svc, &provider).await;
    tx.send(chunk()).unwrap();
    tx.send(overloaded()).unwrap();
    body.frame().await.unwrap().unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is_overloaded(), "the crate's error keeps its class");
    assert_eq!(state(&svc), CircuitState::Open);
    let err = send(&mut svc).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.class(), ErrorClass::Overloaded);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_frees_the_probe() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;

    // Dropped before its end: the provider answered, the caller stopped.
    let (mut body, tx) = open(&mut svc, &provider).await;
    tx.send(chunk()).unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(state(&svc), CircuitState::Closed);

    // Dropped while a panic unwinds: nothing is recorded, the slot comes
    // back, and the next call is the probe.
    trip_and_wait(&mut svc, &provider).await;
    let (body, _tx) = open(&mut svc, &provider).await;
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = body;
        panic!("the caller panics while it reads the stream");
    }));
    assert!(panicked.is_err());
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    let (body, _tx) = open(&mut svc, &provider).await;
    drop(body);
    assert_eq!(state(&svc), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_never_read_ends_at_its_timeout() {
    let provider = Provider::new();
    let mut svc = small()
        .probe_timeout(Duration::from_secs(30))
        .layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;
    let (_unread, _tx) = open(&mut svc, &provider).await;
    advance(Duration::from_secs(30)).await;
    let err = send(&mut svc).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.class(), ErrorClass::Timeout, "the hung probe failed");
}

#[tokio::test(start_paused = true)]
async fn an_error_item_that_says_nothing_gives_the_slot_back() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;
    let (mut body, tx) = open(&mut svc, &provider).await;
    let caller_fault = Error::from_response(Classification::failure(ErrorClass::InvalidRequest));
    tx.send(Err(caller_fault.into())).unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is_invalid_request());
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    // The slot is free: the next call is the probe, and closes it.
    let (body, _tx) = open(&mut svc, &provider).await;
    drop(body);
    assert_eq!(state(&svc), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_are_timed_to_the_headers() {
    let provider = Provider::new();
    let mut svc = small()
        .slow_call_rate(0.5)
        .slow_call_duration(Duration::from_secs(2))
        .layer(provider.service());
    // Headers after 1 s, then a minute of streaming: not slow.
    provider.set(|a| a.headers_after = Duration::from_secs(1));
    for _ in 0..10 {
        let (mut body, tx) = open(&mut svc, &provider).await;
        advance(Duration::from_secs(60)).await;
        drop(tx);
        provider.end_all();
        assert!(body.frame().await.is_none());
    }
    assert_eq!(state(&svc), CircuitState::Closed);
    // Headers after 3 s: slow, however quickly the stream ends.
    provider.set(|a| a.headers_after = Duration::from_secs(3));
    for _ in 0..5 {
        let (body, _tx) = open(&mut svc, &provider).await;
        drop(body);
    }
    assert_eq!(state(&svc), CircuitState::Open);
    assert_eq!(
        send(&mut svc).await.unwrap_err().class(),
        ErrorClass::Timeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_body_is_judged_at_its_headers() {
    let provider = Provider::new();
    provider.set(|a| a.sse = false);
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;
    // A JSON answer that a caller (a batch) may hold unread: the probe
    // succeeded at its headers and holds no slot.
    let (mut body, tx) = open(&mut svc, &provider).await;
    assert_eq!(state(&svc), CircuitState::Closed);
    // Its error items still reach the caller classified.
    tx.send(reset()).unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(state(&svc), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn into_inner_counts_as_the_end() {
    let provider = Provider::new();
    let mut svc = small().layer(provider.service());
    trip_and_wait(&mut svc, &provider).await;
    let (body, tx) = open(&mut svc, &provider).await;
    let mut inner = body.into_inner();
    assert_eq!(state(&svc), CircuitState::Closed);
    // The inner body is the provider's, unwrapped.
    tx.send(chunk()).unwrap();
    let frame = inner.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), chunk().unwrap());
}

/// The real thing end to end: the crate's `WatchedBody` inside the breaker
/// turns Anthropic's mid-stream `event: error` into a stream-failure
/// `Error` of class overloaded, which the breaker counts.
#[tokio::test(start_paused = true)]
async fn a_watched_stream_s_error_event_is_a_failure() {
    use tower_llm_resilience::stream::{BodyShape, StreamWatcher, WatchedBody};
    let provider = Provider::new();
    let watched = provider.service().map_response(|r: Response<ChannelBody>| {
        r.map(|body| WatchedBody::new(body, StreamWatcher::new(BodyShape::EventStream), ()))
    });
    let mut svc = small().layer(watched);
    provider.set(|a| a.status = 503);
    for _ in 0..5 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await;
        assert_eq!(r.unwrap().status(), 503);
    }
    advance(Duration::from_secs(10)).await;
    provider.set(|a| a.status = 200);

    let probe = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    let mut body = probe.unwrap().into_body();
    let tx = provider.last();
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hel\"}}\n\n";
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    tx.send(Ok(Bytes::from_static(delta.as_bytes()))).unwrap();
    tx.send(Ok(Bytes::from_static(error.as_bytes()))).unwrap();
    drop(tx);
    provider.end_all();
    let mut delivered = 0;
    let err = loop {
        match body.frame().await.unwrap() {
            Ok(frame) => delivered += frame.into_data().unwrap().len(),
            Err(e) => break e,
        }
    };
    assert!(err.is_stream_failure() && err.is_overloaded(), "{err:?}");
    assert!(delivered >= delta.len());
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
}
