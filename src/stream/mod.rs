//! Streams: the real token usage and the failures inside a response body,
//! read as the body passes, never buffered.
//!
//! A 200 is not yet a success when its body is a stream: OpenAI and
//! Anthropic report the usage at the end of the body, and an overload or a
//! server error can arrive as an event midway (`data: {"error": ...}`,
//! `event: error`), or the connection can break or stall. This module
//! reads bodies for what they say without holding them:
//!
//! - [`StreamWatcher`] is a pure incremental scanner (no I/O, no clock):
//!   fed the frames, it reports the usage, the first error reported in an
//!   event stream and whether the terminator came ([`StreamReport`]).
//! - [`WatchedBody`] hands every frame on at once and feeds it to a
//!   watcher; it turns an error event, a truncated event stream or a broken
//!   body into an [`Error`](crate::Error) that
//!   [`is_stream_failure`](crate::Error::is_stream_failure) and says how
//!   many bytes were [`delivered`](crate::Error::delivered), and tells its
//!   [`StreamHook`] how the body ended, exactly once ([`Ending`]).
//! - [`IdleTimeoutLayer`] ends a body that goes silent between frames with
//!   a [timeout](crate::ErrorClass::Timeout).
//! - [`ClassifyLayer`](crate::classify::ClassifyLayer) holds a 2xx event
//!   stream until its first event: an error there (an overload before the
//!   first token) makes the response that failure, which every layer sees
//!   and the retry layer may retry, since nothing reached the caller.
//!
//! ```
//! use tower_llm_resilience::rate_limit::TokenUsage;
//! use tower_llm_resilience::stream::{BodyShape, StreamWatcher};
//!
//! // An Anthropic stream, cut into frames anywhere: the input tokens come
//! // in message_start (the cache write counts, the cache read does not),
//! // the output tokens in the last message_delta.
//! let body = concat!(
//!     "event: message_start\n",
//!     "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,",
//!     "\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
//!     "event: content_block_delta\n",
//!     "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"usage\\\": not this\"}}\n\n",
//!     "event: message_delta\n",
//!     "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
//!     "event: message_stop\n",
//!     "data: {\"type\":\"message_stop\"}\n\n",
//! );
//! let mut watcher = StreamWatcher::new(BodyShape::EventStream);
//! for frame in body.as_bytes().chunks(7) {
//!     watcher.feed(frame);
//! }
//! let report = watcher.report();
//! assert_eq!(report.usage, Some(TokenUsage { input_tokens: 30, output_tokens: 15 }));
//! assert!(report.complete && report.failure.is_none());
//! ```
//!
//! A failure midway reaches the caller as a typed error after the frames
//! it had:
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use tower_llm_resilience::stream::{BodyShape, Ending, OnEnd, StreamEnd, StreamWatcher, WatchedBody};
//! use tower_llm_resilience::ErrorClass;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = concat!(
//!     "event: content_block_delta\n",
//!     "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hel\"}}\n\n",
//!     "event: error\n",
//!     "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
//! );
//! let (tx, ended) = std::sync::mpsc::channel();
//! let hook = OnEnd(move |end: StreamEnd| tx.send(end.ending).unwrap());
//! let watcher = StreamWatcher::new(BodyShape::EventStream);
//! let mut watched = WatchedBody::new(Full::new(bytes::Bytes::from(body)), watcher, hook);
//! let frame = watched.frame().await.unwrap().unwrap();
//! assert_eq!(frame.into_data().unwrap(), body.as_bytes()); // handed on whole
//! let error = watched.frame().await.unwrap().unwrap_err();
//! assert!(error.is_stream_failure() && error.is_overloaded());
//! assert_eq!(error.delivered(), Some(body.len() as u64));
//! assert_eq!(ended.recv().unwrap(), Ending::Failed(ErrorClass::Overloaded));
//! # }
//! ```
//!
//! # What is read
//!
//! | provider | usage | error in the stream | terminator |
//! | --- | --- | --- | --- |
//! | OpenAI chat completions | `usage.prompt_tokens`, `completion_tokens` (streamed: the last chunk, with `stream_options.include_usage`) | `data: {"error": {...}}` | `data: [DONE]` |
//! | OpenAI Responses | `usage.input_tokens`, `output_tokens` (streamed: in `response.completed`) | `error`, `response.failed` events | `response.completed`, `response.incomplete` |
//! | Anthropic messages | `input_tokens` + `cache_creation_input_tokens` (`message_start`), cumulative `output_tokens` (`message_delta`); each kept, the latest wins | `event: error` | `message_stop` |
//! | Gemini | `usageMetadata.promptTokenCount`, `candidatesTokenCount` + `thoughtsTokenCount`, cumulative, the latest wins | a record with an `error` | a record with a `finishReason` (or `blockReason`) |
//! | embeddings | `usage.prompt_tokens`, output 0 | | |
//!
//! Anthropic counts `cache_creation_input_tokens` toward its input-token
//! limit and not `cache_read_input_tokens`, so the input usage is the first
//! two. An error event's class comes from its code, as for an error
//! response ([`parse_error_body`](crate::classify::parse_error_body)); an
//! unknown code is a [`ServerError`](crate::ErrorClass::ServerError). A
//! whole JSON body is judged by its status, as every layer judges it: an
//! error object in a 2xx JSON body is not a stream failure.
//!
//! # Robustness and cost
//!
//! Any split of a body into frames gives the report of the body in one
//! frame (a property test splits every provider shape at random bytes).
//! A key counts only as a key (`"usage"` then `:` then `{`), never inside
//! a JSON string; a count that is negative, fractional, not a number or
//! above [`MAX_TOKEN_COUNT`] is ignored; garbage gives an empty report,
//! never a panic. Reading a frame allocates nothing; a `usage` or `error`
//! object is captured in one buffer of at most [`DEFAULT_CAPTURE_LIMIT`]
//! bytes, allocated once per response, and one longer than that is dropped,
//! not grown.

mod body;
mod idle;
mod watch;

pub use self::body::{Ending, OnEnd, StreamEnd, StreamHook, WatchedBody};
pub use self::idle::{IdleTimeout, IdleTimeoutBody, IdleTimeoutFuture, IdleTimeoutLayer};
pub use self::watch::{
    BodyShape, Dialect, StreamFailure, StreamReport, StreamWatcher, DEFAULT_CAPTURE_LIMIT,
    MAX_TOKEN_COUNT,
};

#[cfg(test)]
mod fixtures;
