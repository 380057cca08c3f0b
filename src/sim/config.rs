use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::SimProvider;

/// Which provider the simulated one imitates: its rate-limit headers and
/// its error bodies. Both endpoints (`/chat/completions` and `/messages`)
/// answer in either style; the success body follows the endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Style {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go
    /// durations, `retry-after` and `retry-after-ms`, OpenAI error bodies.
    #[default]
    OpenAi,
    /// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` with
    /// RFC 3339 resets, `retry-after`, Anthropic error bodies.
    Anthropic,
}

/// A fault the simulated provider injects with a seeded probability
/// ([`SimProviderBuilder::fault`]).
///
/// The faults that answer with an error status or a reset are decided
/// before admission and consume no quota. [`Slow`](Self::Slow) and the
/// stream faults ([`is_stream_fault`](Self::is_stream_fault)) alter an
/// admitted answer instead, which is charged as any other (a request that
/// does not fit the windows gets its 429 and no fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// 500 (`server_error` / Anthropic `api_error`).
    ServerError,
    /// 503 with OpenAI's `server_is_overloaded` code (Anthropic style: an
    /// `overloaded_error` body).
    ServiceUnavailable,
    /// 529 `overloaded_error`, as Anthropic sends when overloaded.
    Overloaded,
    /// The connection is reset before any response: in process the service
    /// returns an `io::Error` of kind `ConnectionReset`; over HTTP the
    /// connection is dropped.
    ConnectionReset,
    /// The response is delayed by this much on top of the latency; the
    /// answer itself is normal.
    Slow(Duration),
    /// 401 `invalid_api_key` (Anthropic: `authentication_error`).
    InvalidApiKey,
    /// Streamed requests: after the first content delta, the stream sends
    /// its endpoint's error event (OpenAI: a `data: {"error": ...}` chunk
    /// of type `server_error`; Anthropic: `event: error` with an
    /// `overloaded_error`) and ends, with no usage and no terminator.
    MidStreamError,
    /// Streamed requests: after the first content delta, the stream sends
    /// nothing for this long, then goes on as normal (a long one tests an
    /// idle timeout between chunks).
    Stall(Duration),
    /// Streamed requests: after the first content delta and half of the
    /// next event, the body ends with an `io::Error` of kind
    /// `UnexpectedEof`; over HTTP the connection is cut mid-body, with no
    /// terminator.
    Truncate,
    /// Streamed requests: the 200 stream's first and only event is an
    /// overload error (Anthropic: `event: error` with `overloaded_error`,
    /// as Anthropic sends when it is overloaded after accepting a stream;
    /// OpenAI: an error chunk with code `server_is_overloaded`).
    OverloadedFirstEvent,
}

impl Fault {
    /// A short snake_case name, for logs and tables.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::ServerError => "server_error",
            Fault::ServiceUnavailable => "service_unavailable",
            Fault::Overloaded => "overloaded",
            Fault::ConnectionReset => "connection_reset",
            Fault::Slow(_) => "slow",
            Fault::InvalidApiKey => "invalid_api_key",
            Fault::MidStreamError => "mid_stream_error",
            Fault::Stall(_) => "stall",
            Fault::Truncate => "truncate",
            Fault::OverloadedFirstEvent => "overloaded_first_event",
        }
    }

    /// Whether the fault alters a stream, and so applies to streamed
    /// requests only: a request that is not streamed and draws it gets its
    /// normal answer, so adding these faults to a mix leaves the runs that
    /// do not stream exactly as they were.
    pub const fn is_stream_fault(self) -> bool {
        matches!(
            self,
            Fault::MidStreamError | Fault::Stall(_) | Fault::Truncate | Fault::OverloadedFirstEvent
        )
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) rpm: u64,
    pub(crate) tpm: u64,
    pub(crate) window: Duration,
    pub(crate) style: Style,
    pub(crate) seed: u64,
    pub(crate) faults: Vec<(Fault, f64)>,
    pub(crate) latency: Duration,
    pub(crate) quota_after: Option<u64>,
    pub(crate) outage: Option<(Duration, Duration)>,
    pub(crate) default_max_tokens: u64,
    pub(crate) model: String,
    pub(crate) wall_clock: SystemTime,
    pub(crate) max_body: usize,
}

/// Builds a [`SimProvider`]; every setting has a documented default.
///
/// Defaults: 500 requests and 200,000 tokens per 60 s window (OpenAI's
/// tier 1 for `gpt-4o-mini`), [`Style::OpenAi`], seed 0, no faults, zero
/// latency, no quota exhaustion, no outage, `max_tokens` 16 when a request
/// names none, model `gpt-4o-mini` when a request names none, wall clock
/// started at the system time (whole seconds) when built, request bodies up
/// to 1 MiB.
#[derive(Clone, Debug)]
pub struct SimProviderBuilder {
    config: Config,
}

impl Default for SimProviderBuilder {
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        SimProviderBuilder {
            config: Config {
                rpm: 500,
                tpm: 200_000,
                window: Duration::from_secs(60),
                style: Style::OpenAi,
                seed: 0,
                faults: Vec::new(),
                latency: Duration::ZERO,
                quota_after: None,
                outage: None,
                default_max_tokens: 16,
                model: "gpt-4o-mini".to_owned(),
                wall_clock: UNIX_EPOCH + Duration::from_secs(now),
                max_body: 1 << 20,
            },
        }
    }
}

impl SimProviderBuilder {
    /// Requests admitted per window (default 500). 0 admits nothing.
    pub fn rpm(mut self, n: u64) -> Self {
        self.config.rpm = n;
        self
    }

    /// Tokens admitted per window (default 200,000): each request is charged
    /// its prompt tokens plus its `max_tokens` at admission.
    pub fn tpm(mut self, n: u64) -> Self {
        self.config.tpm = n;
        self
    }

    /// The sliding window's length (default 60 s; a zero length is taken
    /// as 1 ms). Shorter windows make simulations and examples fast.
    pub fn window(mut self, len: Duration) -> Self {
        self.config.window = len.max(Duration::from_millis(1));
        self
    }

    /// The provider to imitate (default [`Style::OpenAi`]).
    pub fn style(mut self, style: Style) -> Self {
        self.config.style = style;
        self
    }

    /// The seed of the fault draws (default 0): the same seed and the same
    /// arrival order give the same faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Injects `fault` with probability `p` per request (default: no
    /// faults). Probabilities add up (one draw per request picks at most
    /// one fault); `p` is clamped to `[0, 1]`, NaN counts as 0.
    pub fn fault(mut self, fault: Fault, p: f64) -> Self {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.config.faults.push((fault, p));
        self
    }

    /// How long a successful completion takes (default zero). Errors are
    /// answered at once, as providers answer 429s. A streamed completion
    /// sends its head at once and spreads its events over this time (see
    /// the [module docs](super#streams)).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.config.latency = latency;
        self
    }

    /// After `n` requests have arrived, every later one is answered
    /// `insufficient_quota` (default: never).
    pub fn quota_after(mut self, n: u64) -> Self {
        self.config.quota_after = Some(n);
        self
    }

    /// Requests arriving in `[start, end)` after the provider was built are
    /// answered 503 (default: no outage).
    pub fn outage(mut self, start: Duration, end: Duration) -> Self {
        self.config.outage = Some((start, end));
        self
    }

    /// The `max_tokens` charged when a request names none (default 16).
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.config.default_max_tokens = n;
        self
    }

    /// The model reported when a request names none (default `gpt-4o-mini`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.config.model = model.into();
        self
    }

    /// The wall-clock time at which the provider starts (default: the
    /// system time when the builder was made, in whole seconds). Its `Date`
    /// and RFC 3339 resets advance with tokio's clock from there, so they
    /// stay consistent under paused time.
    pub fn wall_clock(mut self, start: SystemTime) -> Self {
        self.config.wall_clock = start;
        self
    }

    /// The largest request body read (default 1 MiB); larger ones get 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// The provider. Call it inside the tokio runtime that will drive it,
    /// so that its clock is that runtime's (paused or not).
    pub fn build(self) -> SimProvider {
        SimProvider::from_config(self.config)
    }
}
