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
//! - A response below 400 without a stored
//!   [`Classification`](crate::Classification) is a success without asking
//!   the classifier (no header is parsed on the success path); every error
//!   status is classified. A classifier that calls some 2xx a failure must
//!   run inside [`ClassifyLayer`](crate::classify::ClassifyLayer), whose
//!   stored answer wins.
//!
//! When [`Retry`] stops on a failure it returns a typed
//! [`Error`](crate::Error): the provider's last error response (class,
//! status, body prefix), or `is_retry_after_too_long`,
//! `is_deadline_exceeded`, `is_retry_budget_exhausted`, each carrying the
//! last failure's classification.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_llm_resilience::events::Events;
//! use tower_llm_resilience::retry::RetryLayer;
//! use tower_llm_resilience::{ErrorClass, Provider};
//!
//! let events = Events::new();
//! let retry = RetryLayer::new()
//!     .classifier(Provider::OpenAi)
//!     .max_attempts_for(ErrorClass::ServerError, 3)
//!     .deadline(Duration::from_secs(90))
//!     .events(events.clone());
//! let stack = ServiceBuilder::new().layer(retry);
//! # let _ = stack;
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
//! once, up to a cap, into `Full<Bytes>`.

mod backoff;
mod budget;
mod buffer;
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
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub(crate) use self::policy::process_seed;
pub use self::policy::{
    ClassifiableError, RetryPolicy, DEFAULT_BUDGET_EXEMPT_RETRY_AFTER, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RETRY_AFTER, DEFAULT_RATE_LIMITED_ATTEMPTS, DEFAULT_SERVER_JITTER,
    SERVER_JITTER_MAX,
};
pub use self::service::Retry;
pub use self::spike::RetrySpike;
