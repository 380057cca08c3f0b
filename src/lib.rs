//! Tower middleware for clients of AI provider APIs (OpenAI, Anthropic,
//! Azure OpenAI, Gemini, Groq, OpenRouter, any OpenAI-compatible server):
//! rate limits, quotas, overloads and outages handled once, for every stack.
//!
//! ```
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::{LlmLayer, Provider};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Any tower HTTP client: hyper-util's `Client`, a tonic channel, a mock.
//! let http_client = tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from(r#"{"choices":[]}"#)))
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(LlmLayer::new(Provider::OpenAi).requests_per_minute(500).tokens_per_minute(200_000))
//!     .service(http_client);
//! let request = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(String::from(r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#))
//!     .unwrap();
//! match client.ready().await.unwrap().call(request).await {
//!     Ok(response) => assert!(response.status().is_success()),
//!     // Typed: quota gone, overloaded, circuit open... and whether waiting helps.
//!     Err(error) => eprintln!("{} (retry after {:?})", error.class(), error.retry_after()),
//! }
//! # }
//! ```
//!
//! ```text
//! request ─▶ CircuitBreaker ─▶ Retry ─▶ RateLimit ─▶ Classify ─▶ HTTP client ─▶ provider
//! response ◀──────────── typed Error / Response ◀────────────────────────────┘
//! ```
//!
//! - the circuit breaker is outermost, so a provider that is down or out of
//!   quota fails fast before retries burn time;
//! - retry wraps the rate limiter, so every attempt, first or retried, takes
//!   a permit and a retry storm can never exceed the quota;
//! - the rate limiter sits next to the wire and learns from every
//!   response's headers;
//! - [`classify`] decides what a response means, once, for every layer.
//!
//! # Classifying a response
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
//!
//! let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
//! let c = Provider::OpenAi.classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), Some(body));
//! assert_eq!(c.class, Some(ErrorClass::QuotaExhausted)); // a 429 that must not be retried
//! assert!(!c.is_retryable());
//! ```
//!
//! # The whole stack
//!
//! [`LlmLayer`] stacks every layer below in that order from one
//! [`Provider`] and a few limits; see [`stack`].
//!
//! # Circuit breaking
//!
//! [`CircuitBreakerLayer`] keeps one breaker per key: it opens when the
//! share of provider faults (5xx, overload, timeouts) in its window reaches
//! a threshold, and at once on `quota_exhausted` (until the provider's
//! reset) or an auth failure; while open, calls fail fast with an error
//! that [`is_circuit_open`](Error::is_circuit_open) and says until when. A
//! 400 storm never opens it. See [`circuit_breaker`].
//!
//! # Retrying
//!
//! [`retry::RetryLayer`] retries what [`classify`] calls retryable, waits
//! what the server asks (`Retry-After`, `retry-after-ms`) up to a cap,
//! otherwise backs off with jitter, and stops on max attempts, an overall
//! deadline or a shared retry budget with a typed [`Error`].
//! [`retry::RetryLayer::policy`] gives the same rules as a
//! `tower::retry::Policy`.
//!
//! # Rate limiting
//!
//! [`RateLimitLayer`] spends a provider's quota without 429s: an exact
//! sliding window over requests and tokens (per minute, per day, input and
//! output separately), first-come-first-served waiting, costs corrected
//! from the response, limits learned from headers, one gate per key after
//! a `Retry-After`. See [`rate_limit`].
//!
//! ```
//! use tower_llm_resilience::{Limits, RateLimitLayer};
//!
//! let limiter = RateLimitLayer::new(Limits::new().requests_per_minute(500).tokens_per_minute(200_000));
//! # let _ = limiter;
//! ```
//!
//! # Running a batch
//!
//! [`batch::Batch`] drives many requests through the stack with bounded
//! concurrency and returns one result per input, in input order. It is
//! patient: an input that failed for a transient reason (overloaded, 5xx,
//! circuit open...) is held and sent again when the provider may be back,
//! and only a permanent error (quota gone, bad key, bad request) or the
//! job's own limit ends it early ([`batch::Patience`]). Online callers
//! call the stack directly, which fails fast with a typed [`Error`] that
//! says whether and when waiting helps.
//!
//! # Cargo features
//!
//! - `tower-http` (default): adapters between [`classify::Classifier`] and
//!   tower-http's `ClassifyResponse`.
//! - `hyper` (default): classify hyper's and hyper-util's client errors
//!   (connect, timeout, closed connection) without string matching.
//! - `sim` (off): the `sim` module, a simulated OpenAI- / Anthropic-shaped provider
//!   with sliding-window limits and seeded faults, in process or on loopback.
//! - `redis` (off): `redis_store::RedisStore`, the rate limiter's windows in
//!   Redis, so that many processes share one provider quota.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod batch;
pub mod circuit_breaker;
pub mod classify;
mod error;
pub mod events;
pub mod key;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_store;
pub mod retry;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod stack;

pub use self::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use self::classify::{Classification, Classifier, ErrorClass, Provider};
pub use self::error::{BoxError, Error};
pub use self::key::{Key, KeyFn};
pub use self::rate_limit::{Limits, RateLimitLayer};
pub use self::retry::{RetryLayer, RetryPolicy};
pub use self::stack::{LlmLayer, LlmService};
