//! Proactive client-side rate limiting for AI traffic: an exact sliding
//! window over requests and tokens, keyed, learning from the provider.
//!
//! # What it guarantees
//!
//! For every limit (a [`Dimension`] over a window of any length), the cost
//! admitted over **any** interval of the window's length never exceeds the
//! limit: no burst at a boundary as with fixed windows. A request is
//! admitted at the earliest instant it fits in every limit of its key, in
//! arrival order (a large request is not starved by small ones behind it).
//! A request that can never fit (its cost exceeds a limit's whole capacity)
//! fails at once with [`Error::is_over_capacity`](crate::Error::is_over_capacity);
//! one that would wait longer than [`max_wait`](RateLimitLayer::max_wait)
//! fails at once with [`Error::is_rate_limit_timeout`](crate::Error::is_rate_limit_timeout).
//!
//! # Which dimension
//!
//! - **requests** per minute (RPM) and per day (RPD): every provider.
//! - **tokens** per minute / day (TPM, TPD): OpenAI, Azure, Groq, Gemini;
//!   input plus output.
//! - **input** and **output** tokens per minute: Anthropic, which limits
//!   them separately.
//!
//! # Costs and corrections
//!
//! A request's token cost is its [`TokenEstimate`] extension when set, else
//! the [`Estimator`]'s guess ([`JsonEstimator`] reads a JSON body's size and
//! `max_tokens`). Two things correct it after the response:
//!
//! - a [`TokenUsage`] response extension (set by whoever parsed the body's
//!   `usage`) replaces the charge with the real figure;
//! - the provider's `remaining` headers: when the provider says less
//!   remains than the window thinks, the difference counts until the
//!   header's reset. Headers only tighten unless
//!   [`learn_limits(true)`](RateLimitLayer::learn_limits).
//!
//! # The shared gate
//!
//! A rate-limit response (429, `slow_down`, exhausted quota) with a
//! `Retry-After` (or a reset header) closes the gate of its key: every
//! request of the key waits until then, not only the one that was refused.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(
//!         Limits::new().requests_per_minute(500).tokens_per_minute(30_000),
//!     ))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! let mut req = http::Request::new(String::from(r#"{"messages":[]}"#));
//! req.extensions_mut().insert(TokenEstimate(500));
//! let resp = svc.ready().await.unwrap().call(req).await.unwrap();
//! # let _ = resp; }
//! ```

mod estimate;
mod future;
mod layer;
mod service;
mod store;
mod window;

pub use self::estimate::{BodyBytes, Estimator, JsonEstimator, TokenEstimate, TokenUsage};
pub use self::future::ResponseFuture;
pub use self::layer::RateLimitLayer;
pub use self::service::RateLimit;
pub use self::store::{Decision, MemoryStore, Reservation, Store, DEFAULT_MAX_KEYS};
pub use self::window::{Admission, Costs, Dimension, Limit, Limits, Window};
