//! A simulated AI provider, to prove the crate's claims deterministically.
//!
//! [`SimProvider`] answers OpenAI-compatible `POST …/chat/completions` and
//! Anthropic-style `POST …/messages` with real-shaped bodies and headers. It
//! is usable two ways:
//!
//! - **in process**, as a tower [`Service<http::Request<B>>`](tower::Service)
//!   (any [`http_body::Body`]: `String`, `Full<Bytes>`…), whose clocks are
//!   tokio's, so simulations and tests run under paused time;
//! - **over loopback HTTP**, with [`SimProvider::serve`] (hyper-util's
//!   server on `127.0.0.1:0`), for examples and end-to-end tests.
//!
//! # Limits
//!
//! Requests and tokens are counted in **true sliding windows** of a
//! configurable length (default 60 s): an admission leaves the window
//! exactly one window length after it entered. A request is admitted only
//! when both its request (1) and its token cost fit; otherwise it is
//! answered 429 with `retry-after` (whole seconds, rounded up), OpenAI's
//! `retry-after-ms` (rounded up) equal to the time until the window has
//! room for it, and the rate-limit headers. A 429 consumes nothing.
//!
//! # Token counting
//!
//! - prompt tokens = `ceil(chars / 4)` over every message's text (and
//!   Anthropic's `system`) — [`count_tokens`];
//! - charged at admission, as OpenAI does: prompt tokens + `max_tokens`
//!   (or `max_completion_tokens`; default 16 when absent); nothing is
//!   refunded when the completion is shorter;
//! - completion tokens = `ceil(content length / 4)`, capped at
//!   `max_tokens` (the content is the label, or a JSON array of labels);
//!   reported in `usage` (`prompt_tokens` / `completion_tokens`, or
//!   `input_tokens` / `output_tokens`).
//!
//! # Answers
//!
//! The completion is a sentiment label ([`label`]) of the text the prompt
//! asks about ([`text_of_prompt`]: what follows the last `Text:` of the last
//! user message, else its last line), so a test can check every label it
//! got against what the provider served ([`SimProvider::log`]). A prompt
//! that asks for a "JSON array" and lists numbered texts (`1. …`) is
//! answered with a JSON array of labels, one per text ([`batched_texts`]).
//!
//! # Order of decisions for one request
//!
//! 1. invalid path, method or body: 404 / 405 / 413 / 400;
//! 2. inside the [outage](SimProviderBuilder::outage): 503;
//! 3. past [`quota_after`](SimProviderBuilder::quota_after): OpenAI 429
//!    `insufficient_quota` (Anthropic: 400 "credit balance is too low");
//! 4. the seeded fault draw ([`Fault`]); faults are decided before admission
//!    and consume no quota (except [`Fault::Slow`], which delays a normal
//!    answer);
//! 5. the sliding windows: 429, or admission and a completion after the
//!    [latency](SimProviderBuilder::latency).
//!
//! Exactly one random number is drawn per request, so the same seed and the
//! same arrival order give the same faults.
//!
//! # Headers
//!
//! Every answer has `Date` (the provider's wall clock, which advances with
//! tokio's clock) and a request id (`x-request-id`, Anthropic
//! `request-id`). Admissions and 429s carry the limits:
//! OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as
//! a Go duration until the window is empty again), Anthropic
//! `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset
//! as RFC 3339, rounded up to the second).
//!
//! ```
//! use std::time::Duration;
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_llm_resilience::sim::SimProvider;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sim = SimProvider::builder().rpm(60).tpm(10_000).window(Duration::from_secs(60)).build();
//! let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Text: I love it"}]}"#;
//! let request = Request::post("/v1/chat/completions").body(body.to_owned()).unwrap();
//! let response = sim.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "59");
//! assert_eq!(sim.log()[0].label, Some("positive"));
//! # }
//! ```

mod answer;
mod body;
mod config;
mod decide;
mod format;
mod model;
mod prompt;
mod provider;
mod served;
mod server;
mod sse;
mod window;

pub use self::body::SimBody;
pub use self::config::{Fault, SimProviderBuilder, Style};
pub use self::format::go_duration;
pub use self::model::label;
pub use self::prompt::{batched_texts, count_tokens, text_of_prompt};
pub use self::provider::SimProvider;
pub use self::served::{Served, SimStats, StreamEnd, Streamed, Verdict};
pub use self::server::SimServer;
