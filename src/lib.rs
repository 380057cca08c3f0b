//! Tower middleware for clients of AI provider APIs (OpenAI, Anthropic,
//! Azure OpenAI, Gemini, Groq, OpenRouter, any OpenAI-compatible server):
//! rate limits, quotas, overloads and outages handled once, for every stack.
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
//! # Cargo features
//!
//! - `tower-http` (default): adapters between [`classify::Classifier`] and
//!   tower-http's `ClassifyResponse`.
//! - `hyper` (default): classify hyper's and hyper-util's client errors
//!   (connect, timeout, closed connection) without string matching.
//! - `redis`: `redis_store::RedisStore`, the rate limiter's windows in
//!   Redis, so that many processes share one provider quota.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod classify;
mod error;
pub mod events;
pub mod key;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_store;

pub use self::classify::{Classification, Classifier, ErrorClass, Provider};
pub use self::error::{BoxError, Error};
pub use self::key::{Key, KeyFn};
pub use self::rate_limit::{Limits, RateLimitLayer};
