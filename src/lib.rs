//! Tower middleware for clients of AI provider APIs (OpenAI, Anthropic,
//! Azure OpenAI, Gemini, Groq, OpenRouter, any OpenAI-compatible server):
//! rate limits, quotas, overloads and outages handled once, for every stack.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::{ErrorClass, LlmLayer, Provider};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // Any tower HTTP client: hyper-util's `Client`, reqwest's, a tonic
//! // `Channel` (gRPC: see `classify`), a mock.
//! // This one answers what OpenAI sends when the account's quota is gone.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let http_client = tower::service_fn(move |_req: http::Request<String>| {
//!     seen.fetch_add(1, Ordering::Relaxed);
//!     async {
//!         let body = r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#;
//!         let response = http::Response::builder().status(429).body(String::from(body));
//!         Ok::<_, std::convert::Infallible>(response.unwrap())
//!     }
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(LlmLayer::new(Provider::OpenAi).requests_per_minute(500).tokens_per_minute(200_000))
//!     .service(http_client);
//! let request = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(String::from(r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#))
//!     .unwrap();
//! let error = client.ready().await.unwrap().call(request).await.unwrap_err();
//! // Typed: this 429 means "quota gone", not "slow down". Waiting does not
//! // help, so the stack did not retry it.
//! assert_eq!(error.class(), ErrorClass::QuotaExhausted);
//! assert!(!error.is_retryable());
//! assert_eq!(calls.load(Ordering::Relaxed), 1);
//! # }
//! ```
//!
//! ```text
//! request ─▶ CircuitBreaker ─▶ Retry ─▶ RateLimit ─▶ Timeouts ─▶ Classify ─▶ HTTP client ─▶ provider
//! response ◀─────────────────────────────── typed Error / Response ◀───────────────────────────────┘
//! ```
//!
//! - the circuit breaker is outermost, so a provider that is down or out of
//!   quota fails fast before retries burn time;
//! - retry wraps the rate limiter, so every attempt, first or retried, takes
//!   a permit and a retry storm can never exceed the quota;
//! - the rate limiter sits next to the wire and learns from every
//!   response's headers;
//! - the timeouts bound each attempt's wait for the headers (10 min by
//!   default) and each silence between a stream's frames, inside the
//!   limiter so that waiting for the window does not count, and their
//!   expiry is a retryable [`ErrorClass::Timeout`];
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
//! use tower::{Layer, Service, ServiceExt};
//! use tower_llm_resilience::{Limits, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let limiter = RateLimitLayer::new(Limits::new().requests_per_minute(2).tokens_per_minute(200_000));
//! let mut client = limiter.layer(tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! let start = tokio::time::Instant::now();
//! for _ in 0..3 {
//!     let request = http::Request::new(String::from(r#"{"max_tokens":10,"messages":[]}"#));
//!     client.ready().await.unwrap().call(request).await.unwrap();
//! }
//! // The third request waited, without a 429, until the first left the window.
//! assert_eq!(start.elapsed().as_secs(), 60);
//! # }
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
//! # Building layers: one convention
//!
//! Every layer of the crate is built the same way, so that what holds for
//! one holds for all:
//!
//! - **`new`, then setters by value.** `XLayer::new(..)` has documented
//!   defaults; each setter takes the layer and returns it, and says its
//!   default. Every service also has a public `new(inner, ..)` with the
//!   layer's defaults, as tower's services do.
//! - **The same setters for the same things.** `classifier(c)` sets what
//!   responses and errors mean, `events(handle)` where the layer reports,
//!   `key_fn(f)` which key a request counts against: on every layer that
//!   uses them, with the same name and the same type.
//! - **A layer is configuration and handles; [`layer`](tower::Layer::layer)
//!   makes the state.** Each `layer()` call makes new state (the limiter's
//!   in-memory windows, the breakers, the retry budget, the random
//!   generator); the clones of the service it returns share that state.
//!   Layer once, then clone the service.
//! - **Handles are shared on purpose.** A store
//!   ([`MemoryStore`](rate_limit::MemoryStore), a Redis store), an
//!   [`Events`](events::Events) or a [`RetryBudget`](retry::RetryBudget)
//!   you pass to a setter is shared by every service built with it and by
//!   everything else that holds a clone of it: pass the same handle to
//!   share one quota, one summary or one budget between services built
//!   separately. A handle's own setters (say
//!   [`MemoryStore::max_keys`](rate_limit::MemoryStore::max_keys)) change
//!   it for every holder.
//! - **No setter forks state.** A layer's setters only configure what
//!   `layer()` will make, so no setter can split state that is already
//!   shared.
//!
//! One rule also decides, on every layer, whether an answer is a failure:
//! [`Classifier::failure_of`] (a 2xx with an error classification is one;
//! see the [`classify`] module).
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
//! - `redis-tls` (off): `rediss://` URLs for the Redis store (rustls with
//!   `ring`; no OpenSSL).
//! - `redis-cluster` (off): the Redis store on a Redis Cluster
//!   (`RedisStoreBuilder::build_cluster`).
//! - `reqwest` (off): `reqwest_client::ReqwestService`, the stack on a
//!   `reqwest::Client`, with reqwest's errors classified from their chain.
//! - `metrics` (off): `metrics::MetricsListener`, the layers' events as
//!   metrics through the `metrics` crate (the OpenTelemetry GenAI names
//!   where they exist), for any exporter.
//!
//! # Traces
//!
//! With a `tracing` subscriber that wants them (target
//! `tower_llm_resilience`, level `INFO`), the retry layer opens a span
//! `llm.request` per request and the rate limiter a span `llm.attempt`
//! per attempt inside it (until the response's body ends), with the
//! fields `llm.key`, `gen_ai.request.model`, `error.type` (on failures),
//! `gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens` (the
//! attempt), `llm.attempts` (the request). Without such a subscriber a
//! span costs `tracing`'s own check and nothing is allocated.
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
#[cfg(feature = "config")]
pub mod config;
mod error;
pub mod events;
pub mod key;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod per_clone;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_store;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest_client;
pub mod retry;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod stack;
pub mod stream;

pub use self::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use self::classify::{Classification, Classifier, ErrorClass, Provider};
pub use self::error::{BoxError, Error};
pub use self::key::{Key, KeyFn};
pub use self::rate_limit::{Limits, RateLimitLayer};
pub use self::retry::{RetryLayer, RetryPolicy};
pub use self::stack::{LlmBody, LlmLayer, LlmService};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
