//! The provider's record of what it served: one [`Served`] per request and
//! the [`SimStats`] counters.

use std::time::Duration;

use http::StatusCode;

use super::config::Fault;

/// What the provider did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// A completion (possibly slowed by [`Fault::Slow`] or, streamed, by
    /// [`Fault::Stall`]).
    Completed,
    /// 429 over the requests-per-window limit.
    RateLimitedRequests,
    /// 429 over the tokens-per-window limit (or larger than the window).
    RateLimitedTokens,
    /// `insufficient_quota` (after
    /// [`SimProviderBuilder::quota_after`](super::SimProviderBuilder::quota_after)).
    QuotaExhausted,
    /// 503 inside the outage window.
    Outage,
    /// An injected fault other than [`Fault::Slow`] and [`Fault::Stall`]
    /// (a stream that failed is one: it was admitted and charged, but its
    /// completion never arrived whole).
    Fault(Fault),
    /// 400 / 404 / 405 / 413: the request was not a valid completion call.
    Invalid,
}

/// One request as the provider saw and answered it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Served {
    /// Arrival order, from 0.
    pub seq: u64,
    /// When it arrived, after the provider was built.
    pub at: Duration,
    /// What the provider did.
    pub outcome: Verdict,
    /// The status sent; `None` when the connection was reset.
    pub status: Option<StatusCode>,
    /// Prompt tokens counted (see [`count_tokens`](super::count_tokens)).
    pub prompt_tokens: u64,
    /// Completion tokens served (0 unless completed).
    pub completion_tokens: u64,
    /// Tokens charged against the window at admission (prompt plus
    /// `max_tokens`; 0 unless admitted).
    pub charged_tokens: u64,
    /// The label served (`Some` only when completed; for a batched prompt,
    /// the first of [`labels`](Self::labels)).
    pub label: Option<&'static str>,
    /// Every label served, in order: one for a plain prompt, one per text
    /// for a batched prompt ([`batched_texts`](super::batched_texts)); empty
    /// unless completed.
    pub labels: Vec<&'static str>,
    /// The client's `x-request-id` or `idempotency-key` header, if any.
    pub client_request_id: Option<String>,
    /// The text that was labelled (see [`text_of_prompt`](super::text_of_prompt)).
    pub text: String,
    /// How the answer was streamed; `None` when it was not a stream (a
    /// streamed request that gets an error status gets a JSON error body,
    /// as from real providers).
    pub stream: Option<Streamed>,
}

/// A streamed answer as the provider sent it: one SSE event per body frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Streamed {
    /// The events the stream was to send, including an error event or the
    /// half event a [`Fault::Truncate`] cuts.
    pub events_planned: u32,
    /// The events sent so far (handed to the body's reader, or to hyper
    /// over loopback).
    pub events_sent: u32,
    /// How the stream ended; `None` while it is still being sent.
    pub end: Option<StreamEnd>,
}

/// How a streamed answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Every event was sent, up to the terminator (`data: [DONE]`,
    /// `message_stop`).
    Done,
    /// An error event was sent ([`Fault::MidStreamError`],
    /// [`Fault::OverloadedFirstEvent`]) and the stream ended there.
    ErrorEvent,
    /// The body ended with an error mid-event ([`Fault::Truncate`]).
    Truncated,
    /// The reader dropped the body before its end (over loopback: the
    /// client went away).
    Dropped,
}

/// Counters of everything the provider answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests received.
    pub requests: u64,
    /// Completions served.
    pub completed: u64,
    /// 429s for the requests limit.
    pub rate_limited_requests: u64,
    /// 429s for the tokens limit.
    pub rate_limited_tokens: u64,
    /// `insufficient_quota` answers.
    pub quota_exhausted: u64,
    /// 503s of the outage window.
    pub outage: u64,
    /// Injected 500s.
    pub server_errors: u64,
    /// Injected 503 `server_is_overloaded`.
    pub unavailable: u64,
    /// Injected 529s.
    pub overloaded: u64,
    /// Injected connection resets.
    pub resets: u64,
    /// Slowed completions.
    pub slow: u64,
    /// Injected 401s.
    pub invalid_api_key: u64,
    /// Answers sent as a stream (`"stream": true` and admitted).
    pub streams: u64,
    /// Streams that ended with an error event ([`Fault::MidStreamError`]).
    pub mid_stream_errors: u64,
    /// Streams stalled midway ([`Fault::Stall`]).
    pub stalls: u64,
    /// Streams cut mid-body ([`Fault::Truncate`]).
    pub truncated: u64,
    /// Streams whose first event was an overload error
    /// ([`Fault::OverloadedFirstEvent`]).
    pub overloaded_first_events: u64,
    /// Invalid requests (bad path, method or body).
    pub invalid: u64,
    /// Tokens admitted into the window in total.
    pub tokens_admitted: u64,
}

impl SimStats {
    /// All 429s sent for rate limits (not quota).
    pub const fn rate_limited(&self) -> u64 {
        self.rate_limited_requests + self.rate_limited_tokens
    }

    /// Streams that failed: an error event, a cut body or an overload
    /// first event (a stall only delays).
    pub const fn failed_streams(&self) -> u64 {
        self.mid_stream_errors + self.truncated + self.overloaded_first_events
    }
}
