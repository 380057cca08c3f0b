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
//! A request that can never fit (its cost exceeds a limit's whole
//! *configured* capacity) fails at once with
//! [`Error::is_over_capacity`](crate::Error::is_over_capacity); one that
//! would wait longer than [`max_wait`](RateLimitLayer::max_wait), or wait
//! on a gate longer than [`max_gate_wait`](RateLimitLayer::max_gate_wait),
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
//! A request's token cost is its [`TokenEstimate`] extension when set
//! (input and output apart, or a total counted as input), else the
//! [`Estimator`]'s guess ([`JsonEstimator`] counts a JSON body's text by its
//! characters, its images at a fixed price and its top-level `max_tokens`
//! as output; with the `tiktoken` feature, `TiktokenEstimator` counts
//! OpenAI chat bodies exactly). Two things correct it after the response:
//!
//! - the usage the response reports: the limiter's response body
//!   ([`ResponseBody`]) watches the frames go by (whole JSON or streamed:
//!   see [`crate::stream`]) and, when the body ends, replaces the estimate
//!   by the provider's rule ([`OutputCharge`]): the real input, and the
//!   real output for a provider that counts it (Anthropic, Gemini) or never
//!   less than the declared `max_tokens` for one that charges it at
//!   admission (OpenAI, the default). A body dropped early only raises the
//!   charge; a body without usage keeps the estimate. A [`TokenUsage`]
//!   response extension (set by whoever parsed the body themselves) counts
//!   the same way at once. A charge that goes down moves the requests
//!   waiting behind it earlier (one that goes up moves them later): the
//!   room it frees is used at once;
//! - the provider's `remaining` headers, compared with the window **as of
//!   the request's admission** (the provider computed them when the
//!   request arrived; the reservation records what the window held then):
//!   when the provider says less remained, the difference is usage the
//!   limiter did not see, and counts until the header's reset. Headers
//!   only tighten unless [`learn_limits(true)`](RateLimitLayer::learn_limits).
//!   See [`SlidingWindow::learn`] for the whole rule.
//!
//! And one thing corrects the estimates themselves: the limiter learns how
//! far its input estimates run above the usage reported, and scales new
//! ones down by that ratio ([`calibrate_estimates`](RateLimitLayer::calibrate_estimates),
//! on by default), so that a request is not charged three times its cost
//! while it waits and runs. In `examples/goodput`, estimates 3x too high
//! took 1.398x the minimum and 78.8 % of the quota; with the waiters moved
//! 1.195x and 97.9 %; with both, the same run as exact estimates.
//!
//! # The arrival margin
//!
//! The provider counts a request when it arrives, the limiter when it
//! sends it. A request slower on its way than one sent a window after it
//! would meet it in the provider's window, so each admission counts a
//! little longer than its window: [`default_arrival_margin`] (250 ms, at
//! most a twentieth of the window; 0.4 % of a minute's throughput), set
//! with [`arrival_margin`](RateLimitLayer::arrival_margin). Give the
//! provider's own windows to [`Limits`]: the margin is the limiter's.
//!
//! # What is learned, and for how long
//!
//! Nothing learned from a provider is sticky: one odd response must never
//! shut a key, since a key that sends nothing hears nothing that could
//! correct it. Every part has a floor, a bound and an expiry (the rule is
//! [`SlidingWindow::learn`]'s; the Redis store applies the same one):
//!
//! | learned from | floor | bound | expires |
//! | --- | --- | --- | --- |
//! | a `limit` header (`x-ratelimit-limit-*`, `RateLimit-Policy` `q=`) | `max(1, configured / 10)`; a limit of 0 is ignored | the configured limit; with [`learn_limits(true)`](RateLimitLayer::learn_limits) `configured * 100` | [`learned_ttl`](RateLimitLayer::learned_ttl) after the provider last said it (default: the window, at most 10 min); then the configured limit is back |
//! | a `remaining` header (usage we did not see) | 0 (`-1` is ignored) | what the limit leaves | at the header's reset measured from the request's admission, at most one window (plus the arrival margin); a newer admission's header replaces it |
//! | the usage bodies report (the estimate factor) | [`MIN_ESTIMATE_FACTOR`] (1/4) | 1: estimates are only ever lowered, output estimates never | [`ESTIMATE_FACTOR_TTL`] (10 min) after the last report |
//! | a `Retry-After` (the gate, below) | 0 | a wait is at most [`MAX_SERVER_WAIT`](crate::classify::MAX_SERVER_WAIT); the limiter waits on it at most [`max_gate_wait`](RateLimitLayer::max_gate_wait) (60 s) | when it opens |
//!
//! Only the configured capacity decides that a request "never fits": a
//! request above a learned, lower limit waits until that limit expires (at
//! most `learned_ttl`) or room frees.
//!
//! # The shared gate
//!
//! A rate-limit response (429, `slow_down`, exhausted quota) with a
//! `Retry-After` (or a reset header) closes the gate of its key: every
//! request of the key waits until then, not only the one that was refused,
//! including the requests already waiting (they move behind the gate;
//! [`Event::GateClosed`](crate::events::Event::GateClosed) is reported).
//!
//! The wait on a gate is bounded: a request that would wait on it longer
//! than [`max_gate_wait`](RateLimitLayer::max_gate_wait) (default 60 s, the
//! retry layer's default cap on a server-given wait) fails at once with a
//! rate-limit timeout whose [`retry_after`](crate::Error::retry_after) is
//! the gate's remaining time, and keeps no reservation. So a
//! `retry-after: 86400` fails the key's requests fast and visibly instead
//! of holding them for a day.
//! [`max_wait`](RateLimitLayer::max_wait) (default none) bounds every wait,
//! whatever its cause.
//!
//! # Keys
//!
//! The in-memory store never forgets a key whose windows still count (a
//! flood of new keys cannot push out the usage of the old ones): it holds
//! [`max_keys`](RateLimitLayer::max_keys) keys as a soft bound, up to 4
//! times that as a hard one, past which a new key's request fails with
//! [`Error::is_too_many_keys`](crate::Error::is_too_many_keys). See
//! [`MemoryStore`].
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(
//!         Limits::new().requests_per_minute(500).tokens_per_minute(1_000),
//!     ))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! let start = tokio::time::Instant::now();
//! for _ in 0..3 {
//!     let mut req = http::Request::new(String::from(r#"{"messages":[]}"#));
//!     req.extensions_mut().insert(TokenEstimate::total(500));
//!     svc.ready().await.unwrap().call(req).await.unwrap();
//! }
//! // Two requests of 500 tokens fill the minute's 1,000; the third waited
//! // until the first left the window, 60 s after it entered, and the
//! // arrival margin.
//! assert_eq!(start.elapsed(), Duration::from_millis(60_250));
//! # }
//! ```

mod calibrate;
mod estimate;
mod future;
mod layer;
mod limits;
mod memory;
mod policy;
mod service;
mod store;
mod usage;
mod window;

pub use self::calibrate::{ESTIMATE_FACTOR_TTL, MIN_ESTIMATE_FACTOR};
#[cfg(feature = "tiktoken")]
#[cfg_attr(docsrs, doc(cfg(feature = "tiktoken")))]
pub use self::estimate::TiktokenEstimator;
pub use self::estimate::{
    BodyBytes, BodyView, Estimator, JsonEstimator, TokenEstimate, TokenUsage, DEFAULT_IMAGE_TOKENS,
};
pub use self::future::ResponseFuture;
pub use self::layer::{RateLimitLayer, DEFAULT_MAX_GATE_WAIT};
pub use self::limits::{
    default_arrival_margin, default_learned_ttl, Costs, Dimension, Limit, Limits,
    DEFAULT_ARRIVAL_MARGIN, DEFAULT_LEARNED_TTL_CAP,
};
pub use self::memory::{MemoryStore, DEFAULT_MAX_KEYS, HARD_KEYS_FACTOR};
pub use self::service::RateLimit;
pub use self::store::{Decision, Reservation, Store, UsedAtAdmission};
pub use self::usage::{OutputCharge, ResponseBody, UsageHook};
pub use self::window::{Booking, Correction, SlidingWindow};
