//! Circuit breaking that knows a dead provider from an empty wallet.
//!
//! [`CircuitBreakerLayer`] keeps one breaker per [`Key`](crate::Key)
//! (provider, model, API key: the same key function as the rate limiter).
//! A breaker is **closed** while the provider answers; it **opens** when the
//! share of failed calls (or of slow calls) in its sliding window reaches a
//! threshold, once the window holds a minimum number of calls; while open,
//! calls fail at once with an error that says why and until when; after the
//! open time it turns **half-open** and lets a few probe calls through: if
//! they all succeed it closes, if one fails it opens again (for longer, if
//! [`open_backoff`](CircuitBreakerLayer::open_backoff) is set). These are
//! the states of Resilience4j and Polly. A probe still unanswered after
//! [`probe_timeout`](CircuitBreakerLayer::probe_timeout) (5 min) has
//! failed: a hung probe never keeps the breaker half-open, and while the
//! probes run, a rejected call's `retry_after` says when the earliest of
//! them times out.
//!
//! What counts comes from [`classify`](crate::classify), once for every
//! layer:
//!
//! - server errors, overload (503, 529), timeouts and connection failures
//!   are failures;
//! - the caller's faults (400, context length exceeded, 404 model not
//!   found, 403 permission denied for a model this key may not use) are not
//!   recorded: they end that request only; a storm of bad requests says
//!   nothing about the provider's health and never opens the breaker (and
//!   a breaker keyed by API key would otherwise lock out the key's other
//!   models);
//! - a 429 rate limit is not a failure by default (it is the limiter's job;
//!   see [`count_rate_limited`](CircuitBreakerLayer::count_rate_limited));
//! - **quota is not health**: one `quota_exhausted` answer (OpenAI
//!   `insufficient_quota`, Anthropic's spend limit, Gemini's daily quota,
//!   OpenRouter's 402) opens the key's breaker at once, until the reset the
//!   provider gave (its `Retry-After`, or the reset of the rate limit it
//!   reports spent) or for
//!   [`quota_open_duration`](CircuitBreakerLayer::quota_open_duration); an
//!   invalid API key (`auth`, 401) opens it at once for
//!   [`auth_open_duration`](CircuitBreakerLayer::auth_open_duration);
//! - **nothing sticks**: whatever open time a trip carries (a quota reset a
//!   day away), the breaker half-opens and probes after
//!   [`max_trip_open`](CircuitBreakerLayer::max_trip_open) (1 h) at the
//!   latest; a bogus or wrong reset heals within the hour.
//!
//! The breaker sits outermost, above the retry layer, so it sees one
//! outcome per logical call: a provider that is down fails fast before
//! retries burn time. It also works alone over a raw HTTP client that
//! returns a 500 as `Ok`: every `Ok` response is classified too, and passed
//! on with its body in a [`ResponseBody`] (see [Streams](#streams)).
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, FailureWindow};
//! use tower_llm_resilience::{ErrorClass, Key};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A provider that is down: every answer is a 503.
//! let provider = service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(String::new()).unwrap())
//! });
//! let client = ServiceBuilder::new()
//!     .layer(
//!         CircuitBreakerLayer::new()
//!             .window(FailureWindow::Count(10))
//!             .minimum_calls(5)
//!             .open_duration(Duration::from_secs(30)),
//!     )
//!     .service(provider);
//! for _ in 0..5 {
//!     let response = client.clone().oneshot(Request::new(String::new())).await.unwrap();
//!     assert_eq!(response.status(), 503); // passed on, and counted
//! }
//! let err = client.clone().oneshot(Request::new(String::new())).await.unwrap_err();
//! assert!(err.is_circuit_open());
//! assert_eq!(err.class(), ErrorClass::Overloaded);
//! assert!(err.retry_after().unwrap() <= Duration::from_secs(30));
//! # }
//! ```
//!
//! # Streams
//!
//! A 2xx stream (`text/event-stream`, as every provider streams a
//! completion) is judged at the end of its body, not at its headers: the
//! breaker's responses carry a [`ResponseBody`], which records a success
//! when the body ends (or is dropped: the caller stopped reading) and a
//! failure when it yields an error item that is a provider fault (a reset,
//! or a mid-stream `error` event such as Anthropic's `overloaded_error`,
//! as [`stream`](crate::stream) reports it). A half-open probe keeps its
//! slot until its stream ends. Every other response is judged at its
//! headers, so a caller that holds a plain answer unread holds no probe
//! slot. See [`ResponseBody`] for the details.
//!
//! # Readiness
//!
//! An open breaker does not make the service unready: `poll_ready` only
//! asks the inner service, and `call` fails fast with the typed error. A
//! breaker is per key, which `poll_ready` cannot know, and an unready
//! service would park its callers (or a `Buffer`'s worker) for the whole
//! open time instead of telling them.
//!
//! # Cost
//!
//! A closed breaker admits a call with one atomic load (no lock); a plain
//! success in a healthy count window is recorded with one more load, and
//! any other outcome under a short `std::sync::Mutex` (no async mutex, no
//! lock across `.await`, no allocation per call for a known key). A count
//! window with no slow-call rate reads no clock at all; a stream's body
//! costs one branch per frame. Whether a response
//! failed is [`Classifier::failure_of`](crate::classify::Classifier::failure_of),
//! the rule the retry layer and the rate limiter follow too.
//!
//! Nothing on that path writes memory that other threads read: from its
//! second call on, a service clone's futures hold a reference of that
//! clone's own to the key's breaker, so two threads calling two clones do
//! not pass one cache line back and forth (a clone allocates that
//! reference once; a clone that makes a single call, as
//! `clone().oneshot()` does, takes the shared one and allocates nothing).
//!
//! # The state machine alone
//!
//! [`Circuit`] is the breaker without tower: driven by an explicit `now`,
//! usable around anything that is not a tower service.

mod body;
mod circuit;
mod config;
mod future;
mod guard;
mod layer;
mod outcome;
mod service;
mod shared;
mod window;

pub use self::body::ResponseBody;
pub use self::circuit::{Circuit, Permit, Rejected, Transition};
pub use self::config::{Config, FailureWindow};
pub use self::future::ResponseFuture;
pub use self::layer::{CircuitBreakerLayer, DEFAULT_MAX_KEYS};
pub use self::outcome::CallOutcome;
pub use self::service::CircuitBreaker;
