//! `ClassifyLayer`: error bodies are peeked (bounded), success bodies are
//! untouched, and every body reaches the caller whole.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tower::{service_fn, Layer, ServiceExt};
use tower_llm_resilience::classify::{
    BodyPrefix, Classification, ClassifyLayer, ErrorClass, Provider,
};
use tower_llm_resilience::{Classifier, Error};

type Chunks = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>>;

fn streamed(
    status: u16,
) -> (
    mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>,
    Response<Chunks>,
) {
    let (tx, rx) = mpsc::unbounded();
    let response = Response::builder()
        .status(status)
        .body(StreamBody::new(rx))
        .unwrap();
    (tx, response)
}

fn chunk(bytes: &'static [u8]) -> Result<Frame<Bytes>, io::Error> {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

const QUOTA: &[u8] = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;

#[tokio::test]
async fn error_body_is_classified_and_replayed_whole() {
    let svc = ClassifyLayer::new().layer(service_fn(|_: Request<()>| async {
        let mut res = Response::new(Full::new(Bytes::from_static(QUOTA)));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        Ok::<_, Infallible>(res)
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let c = *res.extensions().get::<Classification>().unwrap();
    assert_eq!(c.class, Some(ErrorClass::QuotaExhausted));
    assert_eq!(c.code, Some("insufficient_quota"));
    assert_eq!(
        Provider::Auto.classify_response(&res),
        c,
        "layers reuse the stored classification"
    );

    let error = Error::from_error_response(&res, &Provider::Auto);
    assert!(error.is_quota_exhausted() && error.is_response());
    assert_eq!(error.body(), Some(QUOTA), "the provider's message is kept");

    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], QUOTA);
}

#[tokio::test]
async fn success_bodies_are_not_read() {
    let (tx, response) = streamed(200);
    let mut response = Some(response);
    let svc = ClassifyLayer::new().layer(service_fn(move |_: Request<()>| {
        let r = response.take().unwrap();
        async move { Ok::<_, Infallible>(r) }
    }));
    // Nothing was sent on the stream yet: a layer that read it would hang here.
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(
        res.extensions().get::<Classification>().is_none(),
        "nothing stored on success"
    );
    assert!(res.extensions().get::<BodyPrefix>().is_none());
    assert!(Provider::Auto.classify_response(&res).is_success());
    tx.unbounded_send(chunk(b"data: {\"choices\":[]}\n\n"))
        .unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: {\"choices\":[]}\n\n");
}

#[tokio::test]
async fn only_a_bounded_prefix_of_a_large_error_body_is_read() {
    let (tx, response) = streamed(500);
    let mut response = Some(response);
    let svc = ClassifyLayer::new()
        .max_body(16)
        .layer(service_fn(move |_: Request<()>| {
            let r = response.take().unwrap();
            async move { Ok::<_, Infallible>(r) }
        }));
    tx.unbounded_send(chunk(b"0123456789")).unwrap();
    tx.unbounded_send(chunk(b"abcdefghij")).unwrap();
    // The rest is not sent yet: the layer must stop after 16 bytes.
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let BodyPrefix(prefix) = res.extensions().get::<BodyPrefix>().unwrap().clone();
    assert_eq!(&prefix[..], b"0123456789abcdef");
    assert_eq!(
        res.extensions().get::<Classification>().unwrap().class,
        Some(ErrorClass::ServerError)
    );
    tx.unbounded_send(chunk(b"-tail")).unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"0123456789abcdefghij-tail");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_error_body_does_not_hang_the_response() {
    let (tx, response) = streamed(503);
    let mut response = Some(response);
    let svc = ClassifyLayer::new()
        .read_timeout(Duration::from_secs(2))
        .layer(service_fn(move |_: Request<()>| {
            let r = response.take().unwrap();
            async move { Ok::<_, Infallible>(r) }
        }));
    tx.unbounded_send(chunk(br#"{"error":{"code":"server_is_overl"#))
        .unwrap();
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // Classified from the status (the code was cut), and the body goes on.
    let c = res.extensions().get::<Classification>().unwrap();
    assert_eq!(c.class, Some(ErrorClass::Overloaded));
    tx.unbounded_send(chunk(br#"oaded"}}"#)).unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":{"code":"server_is_overloaded"}}"#);
}

#[tokio::test]
async fn a_body_error_while_peeking_reaches_the_caller() {
    let (tx, response) = streamed(429);
    let mut response = Some(response);
    let svc = ClassifyLayer::new().layer(service_fn(move |_: Request<()>| {
        let r = response.take().unwrap();
        async move { Ok::<_, Infallible>(r) }
    }));
    tx.unbounded_send(chunk(br#"{"error":{"code":"rate_limit_exceeded""#))
        .unwrap();
    tx.unbounded_send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")))
        .unwrap();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let c = res.extensions().get::<Classification>().unwrap();
    assert_eq!(c.class, Some(ErrorClass::RateLimited));
    assert_eq!(
        c.code,
        Some("rate_limit_exceeded"),
        "read from the cut prefix"
    );
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(br#"{"error":{"code":"rate_limit_exceeded""#)
    );
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(body.frame().await.is_none());
    drop(tx);
}

#[tokio::test]
async fn inner_errors_pass_through() {
    let svc = ClassifyLayer::new().layer(service_fn(|_: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
    }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn tower_http_adapters() {
    use tower_http::classify::{
        ClassifiedResponse, ClassifyResponse, ServerErrorsAsFailures, ServerErrorsFailureClass,
    };
    use tower_llm_resilience::classify::{FromTowerHttp, TowerHttpClassifier};

    let ours = TowerHttpClassifier::new(Provider::OpenAi);
    let res = Response::builder().status(529).body(()).unwrap();
    match ours.classify_response(&res) {
        ClassifiedResponse::Ready(Err(c)) => assert_eq!(c.class, Some(ErrorClass::Overloaded)),
        _ => panic!("529 must be a failure"),
    }
    let res = Response::builder().status(200).body(()).unwrap();
    assert!(matches!(
        ours.classify_response(&res),
        ClassifiedResponse::Ready(Ok(()))
    ));
    let elapsed = tower::timeout::error::Elapsed::new();
    assert_eq!(
        ours.classify_error(&elapsed).class,
        Some(ErrorClass::Timeout)
    );
    let io = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
    assert_eq!(ours.classify_error(&io).class, Some(ErrorClass::Connect));

    let theirs = FromTowerHttp::new(
        ServerErrorsAsFailures::new(),
        |f: &ServerErrorsFailureClass| match f {
            ServerErrorsFailureClass::StatusCode(s) if s.as_u16() == 503 => ErrorClass::Overloaded,
            _ => ErrorClass::ServerError,
        },
    );
    let res = Response::builder()
        .status(503)
        .header("retry-after", "4")
        .body(())
        .unwrap();
    let c = theirs.classify_response(&res);
    assert_eq!(c.class, Some(ErrorClass::Overloaded));
    assert_eq!(
        c.retry_after,
        Some(Duration::from_secs(4)),
        "our header parsing still applies"
    );
    // tower-http's ServerErrorsAsFailures does not call a 429 a failure.
    let c = theirs.classify(StatusCode::TOO_MANY_REQUESTS, &http::HeaderMap::new(), None);
    assert!(c.is_success());
}

#[tokio::test]
async fn many_responses_through_one_layer() {
    let svc = ClassifyLayer::new()
        .classifier(Provider::Anthropic)
        .layer(service_fn(|req: Request<u16>| async move {
            let status = *req.body();
            let body = if status >= 400 {
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#
            } else {
                "ok"
            };
            let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }));
    let statuses = [200u16, 529, 201, 529];
    let responses = svc
        .call_all(futures::stream::iter(statuses.map(Request::new)))
        .collect::<Vec<_>>()
        .await;
    let classes: Vec<_> = responses
        .iter()
        .map(|r| {
            Provider::Anthropic
                .classify_response(r.as_ref().unwrap())
                .class
        })
        .collect();
    assert_eq!(
        classes,
        [
            None,
            Some(ErrorClass::Overloaded),
            None,
            Some(ErrorClass::Overloaded)
        ]
    );
}

#[tokio::test]
async fn a_body_of_endless_empty_frames_is_bounded() {
    // Always ready, never ending, never any bytes: the layer must stop.
    let endless = futures::stream::repeat_with(|| Ok::<_, io::Error>(Frame::data(Bytes::new())));
    let mut response = Some(
        Response::builder()
            .status(500)
            .body(StreamBody::new(endless))
            .unwrap(),
    );
    let svc = ClassifyLayer::new().layer(service_fn(move |_: Request<()>| {
        let r = response.take().unwrap();
        async move { Ok::<_, Infallible>(r) }
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        res.extensions().get::<Classification>().unwrap().class,
        Some(ErrorClass::ServerError)
    );
    // The body is still the whole stream: it goes on yielding frames.
    let mut body = res.into_body();
    for _ in 0..100 {
        assert!(body.frame().await.unwrap().unwrap().is_data());
    }
}
