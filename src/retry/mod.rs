//! Retry with jittered exponential backoff that listens to the provider.
//!
//! What a failure means comes from [`classify`](crate::classify):
//!
//! - `rate_limited`, `slow_down`, `overloaded`, `server_error`, `timeout`
//!   and `connect` are retried; `quota_exhausted`, `auth`, `permission`,
//!   `invalid_request`, `context_length_exceeded` and `not_found` are not.
//!   The server's `x-should-retry: true|false` overrides the class;
//!   [`RetryLayer::retry_if`] replaces the rule altogether.
//! - When the server says how long to wait (`retry-after-ms`,
//!   `x-ms-retry-after-ms`, `Retry-After` in seconds or as a date, Gemini's
//!   `RetryInfo`), the layer waits at least that, plus up to 10 % (at most
//!   1 s) so that clients told the same instant do not return together.
//!   The wait is a floor: when the backoff for that attempt is longer, the
//!   backoff wins, so a request refused again and again by a full sliding
//!   window does not spend its attempts on its short waits.
//!   A server wait above [`RetryLayer::max_retry_after`] (60 s) is not slept
//!   through: the caller gets, at once, an [`Error`](crate::Error) for which
//!   `is_retry_after_too_long()` holds and whose `retry_after()` is the
//!   server's wait.
//! - Without a server wait it backs off exponentially ([`Backoff`]: 500 ms doubling to
//!   8 s, equal [`Jitter`]).
//! - It stops after [`RetryLayer::max_attempts`] (4 in all; 10 for
//!   `rate_limited` and `slow_down`, whose waits the server paces), before
//!   an attempt that could not start before the overall
//!   [`deadline`](RetryLayer::deadline), and when the shared
//!   [`RetryBudget`] is spent (20 % of requests plus 1/s, so an outage does
//!   not multiply the load). Only retries that the server paces do not draw
//!   from it: a `rate_limited` or `slow_down` answer with a wait above zero
//!   (at least [`RetryLayer::budget_exempt_retry_after`], 1 ms by
//!   default), during which the rate limiter's gate holds the key's
//!   requests. Every other retry (5xx and overload whatever their
//!   `Retry-After`, timeouts, connection failures, and any retry told
//!   `Retry-After: 0`) withdraws from the budget.
//! - Whether a response failed is
//!   [`Classifier::failure_of`](crate::classify::Classifier::failure_of),
//!   the rule the breaker and the rate limiter follow too: a response
//!   without a stored [`Classification`](crate::Classification) whose
//!   status is not an error status (below 400 by default) is a success
//!   without asking the classifier (no header is parsed on the success
//!   path); every error status is classified, and a stored classification
//!   (from [`ClassifyLayer`](crate::classify::ClassifyLayer)) wins.
//!
//! When [`Retry`] stops on a failure it returns a typed
//! [`Error`](crate::Error): the provider's last error response (class,
//! status, body prefix), or `is_retry_after_too_long`,
//! `is_deadline_exceeded`, `is_retry_budget_exhausted`, each carrying the
//! last failure's classification.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::events::Events;
//! use tower_llm_resilience::retry::RetryLayer;
//! use tower_llm_resilience::{ErrorClass, Provider};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let events = Events::new();
//! let retry = RetryLayer::new()
//!     .classifier(Provider::OpenAi)
//!     .max_attempts_for(ErrorClass::ServerError, 3)
//!     .deadline(Duration::from_secs(90))
//!     .events(events.clone());
//! // A provider that fails once with a 500, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let mut stack = ServiceBuilder::new().layer(retry).service_fn(move |_req: http::Request<String>| {
//!     let status = if seen.fetch_add(1, Ordering::Relaxed) == 0 { 500 } else { 200 };
//!     let response = http::Response::builder().status(status).body(String::new());
//!     async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
//! });
//! let response = stack.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(events.counters().snapshot().retries, 1);
//! # }
//! ```
//!
//! # Two ways to use it
//!
//! - [`RetryLayer`] builds [`Retry`], this crate's service, which returns the
//!   typed errors above.
//! - [`RetryLayer::policy`] builds a [`RetryPolicy`] for tower's own
//!   [`tower::retry::Retry`]; the same decisions, but tower hands back the
//!   last response or error as it is.
//!
//! # Replaying the request
//!
//! Both keep a copy of each `http::Request<B>` to send again, made before
//! the first attempt; `B` must be `Clone` (`String`, `Bytes`,
//! `Full<Bytes>`...; `Bytes` clones by reference count). For a body that is
//! not `Clone`, put [`BufferBodyLayer`] outside the retry: it reads the body
//! once, up to a cap, into `Full<Bytes>` (which the rate limiter's
//! estimator and [`ByModel`](crate::key::ByModel) read too).
//!
//! The copy is most of what the layer costs on the success path: a
//! `String` body is copied byte for byte (one allocation), the header map
//! is copied (two allocations when it has headers), and a header value or
//! URI parsed from a string moves to a shared buffer on its first copy
//! (one allocation each); the copy is dropped again when the request
//! succeeds. So no copy is made when no class may be sent again
//! ([`max_attempts`](RetryLayer::max_attempts) and every
//! [`max_attempts_for`](RetryLayer::max_attempts_for) at 1), and the last
//! attempt any class allows sends the copy it holds instead of copying it
//! again. A body that is `Bytes` or `Full<Bytes>` makes the copy cheap. A
//! spent [`RetryBudget`] does not skip the copy: a retry the server paces
//! does not draw from the budget.

mod backoff;
mod budget;
mod buffer;
mod classify_error;
mod config;
mod decision;
mod future;
mod layer;
mod policy;
mod replay;
mod service;
mod spike;

pub(crate) use self::backoff::{scale, unit};
pub use self::backoff::{Backoff, Jitter};
pub use self::budget::RetryBudget;
pub use self::buffer::{BufferBody, BufferBodyLayer, BufferFuture, DEFAULT_BUFFER_LIMIT};
pub use self::classify_error::ClassifiableError;
pub(crate) use self::config::process_seed;
pub use self::config::{
    DEFAULT_BUDGET_EXEMPT_RETRY_AFTER, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_RATE_LIMITED_ATTEMPTS, DEFAULT_SERVER_JITTER, SERVER_JITTER_MAX,
};
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::policy::RetryPolicy;
pub use self::service::Retry;
pub use self::spike::RetrySpike;
