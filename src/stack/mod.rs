//! The whole stack in one layer: [`LlmLayer`].
//!
//! ```text
//! request ─▶ CircuitBreaker ─▶ Retry ─▶ RateLimit ─▶ Timeout ─▶ Classify ─▶ HTTP client ─▶ provider
//! ```
//!
//! The timeout bounds each attempt
//! ([`attempt_timeout`](LlmLayer::attempt_timeout), default
//! [`DEFAULT_ATTEMPT_TIMEOUT`]); it sits inside the rate limiter, so that
//! waiting for the window does not count against it, and inside the retry,
//! so that an attempt that timed out is retried.
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
//! `Response<PeekedBody<B>>`, its body untouched.

mod layer;

pub use self::layer::{
    LlmBody, LlmLayer, LlmService, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
