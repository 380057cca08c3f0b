//! The whole stack in one layer: [`LlmLayer`].
//!
//! ```text
//! request ─▶ CircuitBreaker ─▶ Retry ─▶ RateLimit ─▶ Timeouts ─▶ Classify ─▶ HTTP client ─▶ provider
//! ```
//!
//! `Timeouts` is one layer, [`IdleTimeout`](crate::stream::IdleTimeout):
//! it bounds each attempt's wait for the headers
//! ([`attempt_timeout`](LlmLayer::attempt_timeout), default
//! [`DEFAULT_ATTEMPT_TIMEOUT`]) and each silence between a stream's frames
//! ([`idle_timeout`](LlmLayer::idle_timeout)); it sits inside the rate
//! limiter, so that waiting for the window does not count against it, and
//! inside the retry, so that an attempt that timed out is retried.
//!
//! One provider profile and a few limits give the stack of the crate's
//! design, every part configurable:
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::{LlmLayer, Provider};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = LlmLayer::new(Provider::OpenAi)
//!     .requests_per_minute(500)
//!     .tokens_per_minute(200_000)
//!     .max_wait(Duration::from_secs(120))
//!     .retry(|retry| retry.deadline(Duration::from_secs(300)));
//! // A provider that is overloaded once, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let mut client = ServiceBuilder::new().layer(layer).service(tower::service_fn(
//!     move |_req: http::Request<String>| {
//!         let status = if seen.fetch_add(1, Ordering::Relaxed) == 0 { 503 } else { 200 };
//!         let response = http::Response::builder().status(status).body(String::from("{}"));
//!         async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
//!     },
//! ));
//! let request = http::Request::post("/v1/chat/completions").body(String::from("{}")).unwrap();
//! let response = client.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(response.status(), 200); // the 503 was retried
//! assert_eq!(calls.load(Ordering::Relaxed), 2);
//! # }
//! ```
//!
//! The stack returns [`Error`](crate::Error) for every failure, including a
//! provider's final error response (after the retries it deserved), so the
//! caller asks [`Error::class`](crate::Error::class),
//! [`Error::is_retryable`](crate::Error::is_retryable) and
//! [`Error::retry_after`](crate::Error::retry_after) instead of matching
//! statuses or strings. A successful response arrives as
//! `Response<`[`LlmBody<B>`]`>`: the client's body, frame by frame.
//!
//! # Streams
//!
//! A streamed answer (server-sent events) is not yet a success when its
//! headers arrive; its verdict and its real usage come at its end, and the
//! stack reads them as the frames pass, without buffering:
//!
//! - an error as the stream's first event (Anthropic's `overloaded_error`
//!   in a 200) is held back and classified like an error response, so it
//!   is retried: nothing reached the caller;
//! - after the first byte nothing is retried (the caller holds the bytes):
//!   an error event, a reset, a truncated stream or an idle stream
//!   ([`idle_timeout`](LlmLayer::idle_timeout), default
//!   [`DEFAULT_IDLE_TIMEOUT`]) ends the body with an
//!   [`Error`](crate::Error) that
//!   [`is_stream_failure`](crate::Error::is_stream_failure), has the
//!   failure's class and says how much was
//!   [`delivered`](crate::Error::delivered); the circuit breaker counts it
//!   as the failure it is;
//! - the usage at the end (OpenAI's `include_usage` chunk, Anthropic's
//!   `message_delta`, Gemini's `usageMetadata`) corrects the limiter's
//!   charge (see [`rate_limit`](crate::rate_limit#costs-and-corrections)).

mod layer;

pub use self::layer::{
    LlmBody, LlmLayer, LlmService, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
