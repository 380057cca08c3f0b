//! The stack on a [`reqwest::Client`]: [`ReqwestService`], a tower
//! `Service` of [`http::Request`]s over the client users already hold.
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::BodyExt;
//! use tower::{Layer, Service, ServiceExt};
//! use tower_llm_resilience::reqwest_client::ReqwestService;
//! use tower_llm_resilience::sim::SimProvider;
//! use tower_llm_resilience::{ErrorClass, LlmLayer, Provider};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let provider = SimProvider::builder().build(); // an OpenAI-shaped server on loopback
//! let server = provider.serve().await.unwrap();
//! let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
//! let layer = LlmLayer::new(Provider::OpenAi).requests_per_minute(500).tokens_per_minute(200_000);
//! let mut stack = layer.layer(ReqwestService::new(client.clone()));
//!
//! let body = r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"Text: I love it"}]}"#;
//! let request = http::Request::post(format!("{}/chat/completions", server.base_url()))
//!     .header("content-type", "application/json")
//!     .body(String::from(body))
//!     .unwrap();
//! let response = stack.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! let answer = response.into_body().collect().await.unwrap().to_bytes();
//! let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
//! assert_eq!(answer["choices"][0]["message"]["content"], "positive");
//!
//! // Nothing listens on this port: reqwest's error, classified from its
//! // chain, is a retryable `connect` failure (after one attempt here).
//! let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
//! let mut stack = LlmLayer::new(Provider::OpenAi)
//!     .requests_per_minute(500)
//!     .retry(|retry| retry.max_attempts(1))
//!     .layer(ReqwestService::new(client));
//! let request = http::Request::post(format!("http://{closed}/v1/chat/completions"))
//!     .body(String::from(body))
//!     .unwrap();
//! let error = stack.ready().await.unwrap().call(request).await.unwrap_err();
//! assert_eq!(error.class(), ErrorClass::Connect);
//! assert!(error.is_retryable());
//! # }
//! ```
//!
//! # Bodies
//!
//! A request's body is any [`IntoReqwestBody`]: `String`, `Vec<u8>`,
//! `Bytes` and `Full<Bytes>` are handed to reqwest without a copy; a
//! stream (`BoxBody`, hyper's `Incoming`, any `http_body::Body` in
//! [`AnyBody`]) goes frame by frame. The stack's own needs stay as they
//! are: to retry, it clones the body (`String`, `Bytes`; or buffer it with
//! [`BufferBodyLayer`](crate::retry::BufferBodyLayer), which gives a
//! `Full<Bytes>`), and its estimator reads bodies held in memory.
//!
//! The response's [`reqwest::Body`] is not buffered: each frame reqwest
//! reads reaches the caller as it comes, so a streamed completion streams.
//!
//! # Errors
//!
//! The service's error, and its body's, is [`reqwest::Error`]. The
//! crate's [`classify_transport_error`](crate::classify::classify_transport_error)
//! (what every layer uses by default) reads it through reqwest's own
//! predicates and its `source()` chain, never its message:
//!
//! | reqwest says | class |
//! | --- | --- |
//! | `is_timeout()` (the client's `timeout`, `read_timeout`, `connect_timeout`) | `timeout` |
//! | `is_connect()` (refused, unreachable, DNS, TLS handshake) | `connect` |
//! | `is_body()`, `is_request()`: what the chain says underneath (hyper, I/O), else | `connect` |
//! | `is_decode()`: what the chain says underneath, else | `server_error` |
//! | `is_redirect()`, `is_builder()` (a URI that is not absolute), others | `other` |
//!
//! reqwest's errors show the request's URL: the service removes its query
//! and credentials first, so that an API key in the URL (Gemini's `?key=`)
//! never reaches a log.
//!
//! # TLS
//!
//! The `reqwest` feature turns on no TLS backend of reqwest: the
//! application's own `reqwest` dependency chooses (reqwest's default is
//! rustls; with `default-features = false`, add its `rustls` feature).

mod body;
mod future;
mod service;

pub use self::body::{AnyBody, IntoReqwestBody};
pub use self::future::ResponseFuture;
pub use self::service::ReqwestService;
