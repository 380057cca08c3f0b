//! The whole stack in one layer: [`LlmLayer`].
//!
//! ```text
//! request ─▶ CircuitBreaker ─▶ Retry ─▶ RateLimit ─▶ Classify ─▶ HTTP client ─▶ provider
//! ```
//!
//! One provider profile and a few limits give the stack of the crate's
//! design, every part configurable:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_llm_resilience::{LlmLayer, Provider};
//!
//! let layer = LlmLayer::new(Provider::OpenAi)
//!     .requests_per_minute(500)
//!     .tokens_per_minute(200_000)
//!     .max_wait(Duration::from_secs(120))
//!     .retry(|retry| retry.deadline(Duration::from_secs(300)));
//! let client = ServiceBuilder::new().layer(layer).service(tower::service_fn(
//!     |_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
//!     },
//! ));
//! # let _ = client;
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

pub use self::layer::{LlmLayer, LlmService, DEFAULT_ATTEMPT_TIMEOUT};
