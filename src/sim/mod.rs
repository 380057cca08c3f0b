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
//!    answer, and the stream faults, which alter an admitted stream);
//! 5. the sliding windows: 429, or admission and a completion after the
//!    [latency](SimProviderBuilder::latency).
//!
//! Exactly one random number is drawn per request, so the same seed and the
//! same arrival order give the same faults.
//!
//! # Streams
//!
//! A request whose body has `"stream": true` and that is admitted gets a
//! 200 with `content-type: text/event-stream; charset=utf-8` and a
//! [`SimBody`] stream of server-sent events, one per body frame, in the
//! endpoint's wire format (the same events real SDKs parse):
//!
//! - `…/chat/completions`: `data: {"object":"chat.completion.chunk",…}`
//!   chunks (the first with `delta.role`, then one per piece of the
//!   content, then one with `finish_reason`), with
//!   `stream_options.include_usage` a last chunk with `"choices":[]` and
//!   the `usage` (every other chunk then has `"usage":null`), then
//!   `data: [DONE]`;
//! - `…/messages`: `message_start` (with `usage.input_tokens` and
//!   `output_tokens: 1`), `content_block_start`, `ping`,
//!   `content_block_delta`s (`text_delta`), `content_block_stop`,
//!   `message_delta` (`stop_reason`, the cumulative `usage.output_tokens`),
//!   `message_stop`, each as `event: NAME` and `data: {…}`.
//!
//! The usage a stream reports is the one its request's whole answer would
//! report (and [`Served`] logs). The head comes at once; the first content
//! piece half the [latency](SimProviderBuilder::latency) (plus a
//! [`Fault::Slow`]) later, the others evenly after it, the finish and what
//! follows at the full latency, all on tokio's clock. A stream fault
//! ([`Fault::is_stream_fault`]) strikes after the first content piece;
//! a request that is not streamed ignores it and gets its normal answer,
//! so adding stream faults to a mix leaves runs that do not stream
//! unchanged. A streamed request that is refused (429, a fault's error
//! status, the outage) gets the usual JSON error, as from real providers.
//! Over loopback, hyper sends each event as it comes; a
//! [`Fault::Truncate`] body's error makes it cut the connection mid-body.
//!
//! ```
//! use http::Request;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_llm_resilience::sim::{SimProvider, StreamEnd};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sim = SimProvider::builder().build();
//! let body = r#"{"messages":[{"role":"user","content":"Text: I love it"}],
//!                "stream":true,"stream_options":{"include_usage":true}}"#;
//! let request = Request::post("/v1/chat/completions").body(body.to_owned()).unwrap();
//! let response = sim.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["content-type"], "text/event-stream; charset=utf-8");
//! let text = response.into_body().collect().await.unwrap().to_bytes();
//! let text = std::str::from_utf8(&text).unwrap();
//! assert!(text.starts_with(r#"data: {"id":"chatcmpl-sim0","object":"chat.completion.chunk""#));
//! assert!(text.contains(r#""delta":{"content":"posi"}"#));
//! assert!(text.contains(r#""usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}"#));
//! assert!(text.ends_with("data: [DONE]\n\n"));
//! assert_eq!(sim.log()[0].stream.unwrap().end, Some(StreamEnd::Done));
//! # }
//! ```
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
