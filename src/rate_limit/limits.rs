//! The limiter's configuration vocabulary: what a limit counts
//! ([`Dimension`]), what a request costs ([`Costs`]), one limit ([`Limit`])
//! and a key's set of them ([`Limits`]), and the default lifetime of a
//! learned limit.

use std::fmt;
use std::time::Duration;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dimension {
    /// Requests (each request costs 1).
    Requests,
    /// Tokens, input plus output (OpenAI's TPM).
    Tokens,
    /// Input (prompt) tokens only (Anthropic's ITPM).
    InputTokens,
    /// Output (completion) tokens only (Anthropic's OTPM).
    OutputTokens,
}

impl Dimension {
    /// The dimension's name in events: `"requests"`, `"tokens"`,
    /// `"input_tokens"`, `"output_tokens"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
        }
    }

    pub(crate) fn cost(self, costs: &Costs) -> u64 {
        match self {
            Dimension::Requests => costs.requests,
            Dimension::Tokens => costs.input_tokens.saturating_add(costs.output_tokens),
            Dimension::InputTokens => costs.input_tokens,
            Dimension::OutputTokens => costs.output_tokens,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one request costs in each dimension.
///
/// `tokens` is always `input_tokens + output_tokens`.
///
/// [`Costs::default()`] is **one request** with no tokens (the same as
/// `Costs::new(0, 0)`), so that an estimator that writes
/// `Costs { input_tokens: n, ..Costs::default() }` is still counted by the
/// request limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Costs {
    /// Requests: 1 for every request.
    pub requests: u64,
    /// Estimated (or, after correction, actual) input tokens.
    pub input_tokens: u64,
    /// Estimated (or actual) output tokens.
    pub output_tokens: u64,
}

impl Default for Costs {
    /// One request, no tokens: every request counts against the request
    /// limits, whatever its estimator forgot to say.
    fn default() -> Self {
        Costs::new(0, 0)
    }
}

impl Costs {
    /// One request with the given token estimates.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Costs {
            requests: 1,
            input_tokens,
            output_tokens,
        }
    }

    /// One request with a total token estimate that is not split into input
    /// and output (counted as input).
    pub const fn tokens(total: u64) -> Self {
        Costs::new(total, 0)
    }

    /// Total tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One limit: at most `limit` units of `dimension` over any interval of
/// length `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What is counted.
    pub dimension: Dimension,
    /// The window's length.
    pub window: Duration,
    /// The most that may be admitted in any interval of that length.
    pub limit: u64,
}

/// The set of limits of one key, built with per-minute and per-day
/// shorthands or any window with [`Limits::window`].
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::rate_limit::{Dimension, Limits};
///
/// // OpenAI tier 1 for gpt-4o-mini: 500 RPM, 200k TPM, 10k RPD.
/// let openai = Limits::new()
///     .requests_per_minute(500)
///     .tokens_per_minute(200_000)
///     .requests_per_day(10_000);
/// // Anthropic counts input and output tokens separately.
/// let anthropic = Limits::new()
///     .requests_per_minute(50)
///     .input_tokens_per_minute(30_000)
///     .output_tokens_per_minute(8_000);
/// // Any window: 3 requests per 2 seconds.
/// let short = Limits::new().window(Dimension::Requests, Duration::from_secs(2), 3);
///
/// assert_eq!(openai.iter().count(), 3);
/// assert_eq!(anthropic.iter().count(), 3);
/// assert!(anthropic.counts_tokens()); // so the limiter estimates each request's tokens
/// assert!(!short.counts_tokens());
/// let only = short.iter().next().unwrap();
/// assert_eq!((only.dimension, only.window, only.limit), (Dimension::Requests, Duration::from_secs(2), 3));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    limits: Vec<Limit>,
}

pub(crate) const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The longest a learned limit lasts by default: a learned limit expires
/// its limit's window after the provider last said it, but never later
/// than this (10 minutes), so that a per-day limit learned from one odd
/// response does not hold for a day. See [`default_learned_ttl`].
pub const DEFAULT_LEARNED_TTL_CAP: Duration = Duration::from_secs(10 * 60);

/// The most an admission counts past its window by default: see
/// [`default_arrival_margin`].
pub const DEFAULT_ARRIVAL_MARGIN: Duration = Duration::from_millis(250);

/// How much longer than its window an admission counts by default (see
/// [`RateLimitLayer::arrival_margin`](super::RateLimitLayer::arrival_margin)):
/// [`DEFAULT_ARRIVAL_MARGIN`] (250 ms), at most a twentieth of the window
/// (100 ms on a 2 s window), so that a short window does not pay more than
/// 5 % of its throughput for it.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::rate_limit::default_arrival_margin;
///
/// assert_eq!(default_arrival_margin(Duration::from_secs(60)), Duration::from_millis(250));
/// assert_eq!(default_arrival_margin(Duration::from_secs(2)), Duration::from_millis(100));
/// ```
pub fn default_arrival_margin(window: Duration) -> Duration {
    DEFAULT_ARRIVAL_MARGIN.min(window / 20)
}

/// How long a limit learned for a limit of this window holds by default:
/// the window, at most [`DEFAULT_LEARNED_TTL_CAP`] (60 s for a per-minute
/// limit, 10 minutes for a per-day one).
pub fn default_learned_ttl(window: Duration) -> Duration {
    window.min(DEFAULT_LEARNED_TTL_CAP)
}

impl Limits {
    /// No limits (everything is admitted at once).
    pub const fn new() -> Self {
        Limits { limits: Vec::new() }
    }

    /// Adds (or replaces) the limit of `dimension` over `window`. A zero
    /// window is ignored; a window longer than a year is cut to a year
    /// (so that no instant arithmetic can overflow).
    pub fn window(mut self, dimension: Dimension, window: Duration, limit: u64) -> Self {
        if window.is_zero() {
            return self;
        }
        let window = window.min(MAX_WINDOW);
        match self
            .limits
            .iter_mut()
            .find(|l| l.dimension == dimension && l.window == window)
        {
            Some(l) => l.limit = limit,
            None => self.limits.push(Limit {
                dimension,
                window,
                limit,
            }),
        }
        self
    }

    /// At most `n` requests per minute (RPM).
    pub fn requests_per_minute(self, n: u64) -> Self {
        self.window(Dimension::Requests, MINUTE, n)
    }

    /// At most `n` requests per day (RPD; Groq, Gemini free tiers).
    pub fn requests_per_day(self, n: u64) -> Self {
        self.window(Dimension::Requests, DAY, n)
    }

    /// At most `n` tokens (input + output) per minute (TPM).
    pub fn tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::Tokens, MINUTE, n)
    }

    /// At most `n` tokens per day (TPD).
    pub fn tokens_per_day(self, n: u64) -> Self {
        self.window(Dimension::Tokens, DAY, n)
    }

    /// At most `n` input tokens per minute (Anthropic ITPM).
    pub fn input_tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::InputTokens, MINUTE, n)
    }

    /// At most `n` output tokens per minute (Anthropic OTPM).
    pub fn output_tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::OutputTokens, MINUTE, n)
    }

    /// The limits, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Limit> + '_ {
        self.limits.iter()
    }

    /// Whether any limit counts tokens (so that a request's token cost must
    /// be estimated).
    pub fn counts_tokens(&self) -> bool {
        self.limits
            .iter()
            .any(|l| l.dimension != Dimension::Requests)
    }
}
