//! Every request body users hold is estimated and keyed by model through
//! the whole `LlmLayer`: `String`, `Vec<u8>`, `Bytes`, `Full<Bytes>`, and a
//! server's streamed `Incoming` read by `BufferBodyLayer` over loopback.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::ReportedLimit;
use tower_llm_resilience::key::ByModel;
use tower_llm_resilience::rate_limit::{
    BodyBytes, Costs, Dimension, JsonEstimator, Limits, MemoryStore, Reservation, Store,
};
use tower_llm_resilience::retry::BufferBodyLayer;
use tower_llm_resilience::{ErrorClass, Key, LlmLayer, Provider};

/// What the limiter charged: each admission's key and costs.
type Charged = Arc<Mutex<Vec<(Key, Costs)>>>;

/// The in-memory store, noting the key and costs of every admission.
#[derive(Clone)]
struct Recording {
    inner: MemoryStore,
    charged: Charged,
}

impl Store for Recording {
    type Acquire = <MemoryStore as Store>::Acquire;

    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire {
        self.charged.lock().unwrap().push((key.clone(), *costs));
        self.inner.acquire(key, costs, now, deadline)
    }

    fn cancel(&self, r: &Reservation) {
        self.inner.cancel(r)
    }

    fn watch(&self, r: &Reservation, waker: &Waker) -> Option<Instant> {
        self.inner.watch(r, waker)
    }

    fn correct(&self, r: &Reservation, actual: &Costs, now: Instant) {
        self.inner.correct(r, actual, now)
    }

    fn gate(&self, key: &Key, until: Instant) {
        self.inner.gate(key, until)
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        reservation: Option<&Reservation>,
        now: Instant,
    ) -> Option<u64> {
        self.inner
            .learn(key, dimension, window, state, reservation, now)
    }
}

fn limits() -> Limits {
    Limits::new()
        .requests_per_minute(1_000)
        .tokens_per_minute(1_000_000)
}

/// The stack keyed by model, on a store that notes every charge.
fn layer() -> (LlmLayer<ByModel, Provider, Recording>, Charged) {
    let charged = Charged::default();
    let store = Recording {
        inner: MemoryStore::new(limits()),
        charged: charged.clone(),
    };
    let layer = LlmLayer::new(Provider::OpenAi)
        .limits(limits())
        .key_fn(ByModel::new())
        .store(store);
    (layer, charged)
}

/// A chat body whose model comes after its messages, as SDKs write it.
fn chat(model: &str) -> String {
    format!(
        r#"{{"messages":[{{"role":"user","content":"Classify: the parcel came two days late."}}],"max_tokens":7,"model":"{model}"}}"#
    )
}

/// The provider: answers 200, and says which body it was sent.
fn provider<B>(
    sent: Arc<Mutex<Vec<Bytes>>>,
) -> impl Service<
    Request<B>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: BodyBytes + Send + 'static,
{
    tower::service_fn(move |request: Request<B>| {
        let body = request
            .body()
            .body_bytes()
            .map(|b| Bytes::copy_from_slice(&b));
        sent.lock().unwrap().extend(body);
        async { Ok::<_, Infallible>(Response::new(String::from("{}"))) }
    })
}

/// Sends `body` (the bytes of `chat(model)`) through the whole stack and
/// checks what the limiter charged and what the provider got.
async fn estimated_and_keyed<B>(model: &str, body: B)
where
    B: BodyBytes + Clone + Send + Sync + 'static,
{
    let (layer, charged) = layer();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut stack = layer.layer(provider::<B>(sent.clone()));
    let request = Request::post("https://api.openai.com/v1/chat/completions")
        .body(body)
        .unwrap();
    let response = stack.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = chat(model);
    let expected = JsonEstimator::new().estimate_bytes(Some(bytes.as_bytes()));
    assert_eq!(expected.output_tokens, 7, "the body's max_tokens");
    assert!(expected.input_tokens > 5, "{expected:?}");
    assert_eq!(
        *charged.lock().unwrap(),
        [(Key::new(model), expected)],
        "one admission, under the model's key, at the body's estimate"
    );
    assert_eq!(*sent.lock().unwrap(), [Bytes::from(bytes)]);
}

#[tokio::test(start_paused = true)]
async fn a_string_body() {
    estimated_and_keyed("gpt-4o", chat("gpt-4o")).await;
}

#[tokio::test(start_paused = true)]
async fn a_vec_body() {
    estimated_and_keyed("gpt-4o-mini", chat("gpt-4o-mini").into_bytes()).await;
}

#[tokio::test(start_paused = true)]
async fn a_bytes_body() {
    estimated_and_keyed("o3", Bytes::from(chat("o3"))).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_body() {
    estimated_and_keyed("gpt-4.1", Full::new(Bytes::from(chat("gpt-4.1")))).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_body_is_replayed_and_estimated_on_every_attempt() {
    let (layer, charged) = layer();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let mut stack = layer.layer(tower::service_fn(move |request: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let mut calls = seen.lock().unwrap();
            calls.push(body);
            let status = if calls.len() == 1 { 503 } else { 200 };
            let response = Response::builder().status(status).body(String::from("{}"));
            Ok::<_, Infallible>(response.unwrap())
        }
    }));
    let body = Full::new(Bytes::from(chat("gpt-4o")));
    let request = Request::post("/v1/chat/completions").body(body).unwrap();
    let response = stack.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The 503 was retried with the whole body, and each attempt was
    // charged the same estimate under the model's key.
    assert_eq!(*calls.lock().unwrap(), vec![Bytes::from(chat("gpt-4o")); 2]);
    let charged = charged.lock().unwrap();
    assert_eq!(charged.len(), 2);
    assert!(charged.iter().all(|c| *c == charged[0]));
    assert_eq!(charged[0].0, Key::new("gpt-4o"));
}

/// A server whose requests go through `BufferBodyLayer` into the whole
/// stack: hyper's `Incoming` in, the provider's answer out, a body too
/// large or broken answered by its typed error.
mod server {
    use super::*;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    /// What the server answered for a request the stack refused.
    pub(super) fn refusal(error: &tower_llm_resilience::Error) -> StatusCode {
        assert_eq!(error.class(), ErrorClass::InvalidRequest);
        assert!(!error.is_retryable());
        if error.is_body_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else if error.is_body_unreadable() {
            StatusCode::BAD_REQUEST
        } else {
            panic!("unexpected error: {error}")
        }
    }

    /// Serves on loopback until the test ends; returns the address, what
    /// the limiter charged and the bodies the provider got.
    pub(super) async fn start(limit: usize) -> (String, Charged, Arc<Mutex<Vec<Bytes>>>) {
        let (layer, charged) = layer();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stack = ServiceBuilder::new()
            .layer(BufferBodyLayer::new(limit))
            .layer(layer)
            .service(provider::<Full<Bytes>>(sent.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let stack = stack.clone();
                let serve = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let stack = stack.clone();
                    async move {
                        let answer = match stack.oneshot(request).await {
                            Ok(response) => {
                                let (parts, body) = response.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                Response::from_parts(parts, Full::new(body))
                            }
                            Err(error) => {
                                let mut answer = Response::new(Full::new(Bytes::new()));
                                *answer.status_mut() = refusal(&error);
                                answer
                            }
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), serve)
                        .await;
                });
            }
        });
        (format!("http://{address}"), charged, sent)
    }
}

/// A request body sent in chunks (`transfer-encoding: chunked`), so that
/// the server's `Incoming` really streams.
fn chunked(text: &str) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = text
        .as_bytes()
        .chunks(16)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures::stream::iter(chunks)).boxed()
}

// Real sockets: the clock is not paused (nothing here waits on a timer).
#[tokio::test]
async fn a_servers_incoming_body_through_the_buffer_layer_over_loopback() {
    use hyper_util::client::legacy::Client;

    let (base, charged, sent) = server::start(64 * 1024).await;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for model in ["gpt-4o", "claude-sonnet-4-5"] {
        let request = Request::post(format!("{base}/v1/chat/completions"))
            .body(chunked(&chat(model)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "{}"
        );
    }
    let expected = |model: &str| {
        let costs = JsonEstimator::new().estimate_bytes(Some(chat(model).as_bytes()));
        (Key::new(model), costs)
    };
    assert_eq!(
        *charged.lock().unwrap(),
        [expected("gpt-4o"), expected("claude-sonnet-4-5")]
    );
    assert_eq!(
        *sent.lock().unwrap(),
        [
            Bytes::from(chat("gpt-4o")),
            Bytes::from(chat("claude-sonnet-4-5"))
        ]
    );

    // Past the bound: refused before the stack, never charged nor sent.
    let large = format!(
        r#"{{"model":"gpt-4o","messages":"{}"}}"#,
        "x".repeat(70_000)
    );
    let request = Request::post(format!("{base}/v1/chat/completions"))
        .body(chunked(&large))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(charged.lock().unwrap().len(), 2);
    assert_eq!(sent.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_breaks_while_it_is_buffered_is_a_typed_invalid_request() {
    let (layer, charged) = layer();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let stack = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(1024))
        .layer(layer)
        .service(provider::<Full<Bytes>>(sent.clone()));
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"{\"model\":"))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the client went away",
        )),
    ];
    let body = StreamBody::new(futures::stream::iter(frames));
    let request = Request::post("/v1/chat/completions").body(body).unwrap();
    let error = stack.oneshot(request).await.unwrap_err();
    assert_eq!(server::refusal(&error), StatusCode::BAD_REQUEST);
    let source = std::error::Error::source(&error).expect("the body's error");
    assert!(source.to_string().contains("went away"), "{source}");
    assert!(charged.lock().unwrap().is_empty());
    assert!(sent.lock().unwrap().is_empty());
}
