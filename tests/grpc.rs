//! gRPC through the whole stack over loopback HTTP/2: a `grpc-status` in
//! the trailers at the end of a body, or in the headers of a trailers-only
//! answer, is classified, reaches the caller as it was sent, and is seen
//! by the breaker (and the limiter's hook) as the failure it is.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::events::CircuitState;
use tower_llm_resilience::stream::{Ending, OnEnd, StreamEnd, StreamWatcher, WatchedBody};
use tower_llm_resilience::{ErrorClass, Key, LlmLayer, LlmService, Provider};

/// One gRPC message: a flag byte (not compressed), its length, its bytes.
fn message(payload: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + payload.len());
    framed.put_u8(0);
    framed.put_u32(payload.len() as u32);
    framed.put_slice(payload);
    framed.freeze()
}

fn grpc_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    headers
}

type Answer = Response<BoxBody<Bytes, Infallible>>;

/// A message, then trailers with this status.
fn streamed(trailers: HeaderMap) -> Answer {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(message(b"\x0a\x05label"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

/// No message: the status in the headers (gRPC's trailers-only answer).
fn trailers_only(status: &[(&'static str, &'static str)]) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.headers_mut() = grpc_headers(status);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A gRPC server on loopback (HTTP/2, prior knowledge) that answers by
/// the method's path; counts the calls it got.
async fn serve(calls: Arc<AtomicU32>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let n = calls.fetch_add(1, Relaxed);
                async move {
                    let path = request.uri().path().to_owned();
                    assert_eq!(request.headers()["content-type"], "application/grpc");
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body, message(b"\x0a\x04text"), "one framed message");
                    let answer = match path.as_str() {
                        "/llm.Classifier/Ok" => streamed(grpc_headers(&[("grpc-status", "0")])),
                        "/llm.Classifier/Unavailable" => streamed(grpc_headers(&[
                            ("grpc-status", "14"),
                            ("grpc-message", "the model is overloaded"),
                        ])),
                        "/llm.Classifier/Unauthenticated" => {
                            trailers_only(&[("grpc-status", "16"), ("grpc-message", "bad key")])
                        }
                        "/llm.Classifier/PerDay" => trailers_only(&[
                            ("grpc-status", "8"),
                            (
                                "grpc-message",
                                "Quota exceeded for quota metric 'Generate Content API requests per day'",
                            ),
                        ]),
                        // Unavailable with a 1 ms pushback once, then answered.
                        "/llm.Classifier/Flaky" if n == 0 => trailers_only(&[
                            ("grpc-status", "14"),
                            ("grpc-retry-pushback-ms", "1"),
                        ]),
                        "/llm.Classifier/Flaky" => streamed(grpc_headers(&[("grpc-status", "0")])),
                        _ => trailers_only(&[("grpc-status", "12")]),
                    };
                    Ok::<_, Infallible>(answer)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

fn call(base: &str, method: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/llm.Classifier/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message(b"\x0a\x04text")))
        .unwrap()
}

type Grpc = LlmService<Client<HttpConnector, Full<Bytes>>>;

/// The stack over hyper-util's HTTP/2 client; the breaker opens at half
/// failures, after 4 calls.
fn stack() -> Grpc {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    LlmLayer::new(Provider::Auto)
        .requests_per_minute(1_000)
        .circuit_breaker(|b| {
            b.minimum_calls(4)
                .failure_rate(0.5)
                .open_duration(Duration::from_secs(60))
        })
        .layer(client)
}

// Real sockets: the clock is not paused (only the 1 ms pushback waits).
#[tokio::test]
async fn a_status_in_the_trailers_is_a_failure_for_the_breaker_and_reaches_the_caller() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(calls.clone()).await;
    let mut stack = stack();

    // A success ends with grpc-status 0: the breaker stays closed.
    for _ in 0..6 {
        let response = stack
            .ready()
            .await
            .unwrap()
            .call(call(&base, "Ok"))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    }

    // UNAVAILABLE at the end of the body: nothing retried (the caller
    // holds the message), the trailers reach the caller as they were
    // sent, and each counts as a failure.
    for _ in 0..4 {
        let response = stack
            .ready()
            .await
            .unwrap()
            .call(call(&base, "Unavailable"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().unwrap().clone();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "the model is overloaded");
        assert_eq!(body.to_bytes(), message(b"\x0a\x05label"));
    }
    // 4 failures in 10 calls: under half, still closed.
    assert_eq!(calls.load(Relaxed), 10);
    assert_eq!(stack.state(&Key::DEFAULT), CircuitState::Closed);
    for _ in 0..2 {
        let response = stack
            .ready()
            .await
            .unwrap()
            .call(call(&base, "Unavailable"))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    // 6 in 12: half the window failed, on the trailers' word.
    assert_eq!(stack.state(&Key::DEFAULT), CircuitState::Open);
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "Ok"))
        .await
        .unwrap_err();
    assert!(error.is_circuit_open(), "{error}");
    assert_eq!(error.class(), ErrorClass::Overloaded);
    assert_eq!(calls.load(Relaxed), 12, "refused without sending");
}

#[tokio::test]
async fn a_trailers_only_status_is_classified_retried_or_refused() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(calls.clone()).await;

    // UNAVAILABLE in the headers, before any message: retried after the
    // server's pushback, then answered.
    let mut stack = stack();
    let response = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "Flaky"))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(calls.load(Relaxed), 2, "the UNAVAILABLE was retried");

    // UNAUTHENTICATED: the caller's error, typed; the breaker opens at
    // once on a bad key, so the next call is not sent.
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "Unauthenticated"))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Auth);
    assert_eq!(error.code(), Some("UNAUTHENTICATED"));
    assert!(!error.is_retryable() && !error.is_circuit_open());
    let next = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "Ok"))
        .await
        .unwrap_err();
    assert!(next.is_circuit_open(), "{next}");
    assert_eq!(calls.load(Relaxed), 3);

    // RESOURCE_EXHAUSTED for a per-day quota: spent, not retried.
    let mut stack = self::stack();
    let error = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "PerDay"))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::QuotaExhausted);
    assert_eq!(calls.load(Relaxed), 4, "not retried");
    let next = stack
        .ready()
        .await
        .unwrap()
        .call(call(&base, "Ok"))
        .await
        .unwrap_err();
    assert!(next.is_circuit_open() && next.class() == ErrorClass::QuotaExhausted);
}

/// The limiter's watch hears a failed status in the trailers as the body's
/// failure, and hands the trailers on.
#[tokio::test]
async fn a_watched_body_ends_failed_on_a_failed_status_in_its_trailers() {
    let ended = |status: &'static str| async move {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(message(b"x"))),
            Ok(Frame::trailers(grpc_headers(&[("grpc-status", status)]))),
        ];
        let body = StreamBody::new(futures::stream::iter(frames));
        let (tx, rx) = std::sync::mpsc::channel();
        let hook = OnEnd(move |end: StreamEnd| tx.send(end.ending).unwrap());
        let watcher =
            StreamWatcher::for_response(&grpc_headers(&[("content-type", "application/grpc")]));
        let collected = WatchedBody::new(body, watcher, hook)
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], status);
        rx.recv().unwrap()
    };
    assert_eq!(ended("0").await, Ending::Complete);
    assert_eq!(ended("4").await, Ending::Failed(ErrorClass::Timeout));
    assert_eq!(ended("14").await, Ending::Failed(ErrorClass::Overloaded));
}

/// tonic's own client over the stack: tonic's `Channel` under `LlmLayer`,
/// behind `BufferBodyLayer` (tonic's request body is a stream; the stack
/// replays and estimates a `Full<Bytes>`). No protoc: the messages are
/// bytes, with a codec that passes them as they are.
mod tonic_client {
    use super::*;
    use bytes::Buf;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::{Code, Status};
    use tower::ServiceBuilder;
    use tower_llm_resilience::retry::BufferBodyLayer;

    #[derive(Clone, Copy, Default)]
    pub(super) struct Raw;

    impl Encoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    #[tokio::test]
    async fn a_tonic_channel_under_the_stack() {
        let calls = Arc::new(AtomicU32::new(0));
        let base = serve(calls.clone()).await;
        let layers = || {
            ServiceBuilder::new()
                .layer(BufferBodyLayer::default())
                .layer(
                    LlmLayer::new(Provider::Auto)
                        .requests_per_minute(1_000)
                        .circuit_breaker(|b| b.minimum_calls(4).failure_rate(0.5)),
                )
                .map_request(|r: Request<Full<Bytes>>| r.map(tonic::body::Body::new))
        };
        let channel = |base: String| {
            tonic::transport::Endpoint::from_shared(base)
                .unwrap()
                .connect_lazy()
        };

        // A trailers-only UNAUTHENTICATED is the stack's typed error (not
        // retried), which tonic shows as Unknown with it as the source.
        let mut fresh = tonic::client::Grpc::new(layers().service(channel(base)));
        fresh.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/llm.Classifier/Unauthenticated");
        let request = tonic::Request::new(Bytes::from_static(b"\x0a\x04text"));
        let status = fresh.unary(request, path, Raw).await.unwrap_err();
        assert_eq!(status.code(), Code::Unknown);
        let ours = std::error::Error::source(&status)
            .and_then(|e| e.downcast_ref::<tower_llm_resilience::Error>())
            .expect("the stack's error");
        assert_eq!(
            (ours.class(), ours.code()),
            (ErrorClass::Auth, Some("UNAUTHENTICATED"))
        );
        assert_eq!(calls.load(Relaxed), 1);

        // The breaker opened on the bad key: a new stack for the rest.
        let mut client =
            tonic::client::Grpc::new(layers().service(channel(serve(calls.clone()).await)));
        calls.store(0, Relaxed);
        let mut call = async |method: &'static str| {
            client
                .ready()
                .await
                .map_err(|e| Status::from_error(e.into()))?;
            let path = http::uri::PathAndQuery::from_static(method);
            let request = tonic::Request::new(Bytes::from_static(b"\x0a\x04text"));
            client.unary(request, path, Raw).await
        };

        // A success: tonic decodes the message and reads grpc-status 0.
        let answer = call("/llm.Classifier/Ok").await.unwrap();
        assert_eq!(answer.into_inner(), Bytes::from_static(b"\x0a\x05label"));
        // UNAVAILABLE in the trailers: tonic reads the status the server
        // sent (the stack hands the trailers on), the breaker counts it.
        for _ in 0..3 {
            let status = call("/llm.Classifier/Unavailable").await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(status.message(), "the model is overloaded");
        }
        // 3 failures in 4 calls: the breaker is open, and says so through
        // tonic as an Unknown status whose source is the stack's error.
        let sent = calls.load(Relaxed);
        let status = call("/llm.Classifier/Ok").await.unwrap_err();
        assert_eq!(calls.load(Relaxed), sent, "refused without sending");
        assert_eq!(status.code(), Code::Unknown);
        let ours = std::error::Error::source(&status)
            .and_then(|e| e.downcast_ref::<tower_llm_resilience::Error>())
            .expect("the stack's error");
        assert!(ours.is_circuit_open() && ours.class() == ErrorClass::Overloaded);
    }
}
