use std::time::Duration;

use http::StatusCode;

use super::{ErrorClass, Provider};

/// What one response (or transport error) means: success or an
/// [`ErrorClass`], the wait the server asked for, and the rate-limit state
/// its headers report.
///
/// It is `Copy` and allocation-free, so every layer can take one for every
/// response. [`ClassifyLayer`](super::ClassifyLayer) stores one in the
/// response's extensions so that layers above reuse it instead of parsing
/// the headers again.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Classification {
    /// `None` for a success, else what went wrong.
    pub class: Option<ErrorClass>,
    /// The response status, `None` for a transport error.
    pub status: Option<StatusCode>,
    /// The wait the server asked for (`retry-after-ms`,
    /// `x-ms-retry-after-ms`, `Retry-After`, Gemini `RetryInfo`), clamped to
    /// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT).
    pub retry_after: Option<Duration>,
    /// The server's explicit `x-should-retry: true|false`.
    pub should_retry: Option<bool>,
    /// The rate-limit state the headers report.
    pub limits: ReportedLimits,
    /// The provider error code that decided the class, when one was
    /// recognised in the body (`"insufficient_quota"`, `"overloaded_error"`,
    /// `"RESOURCE_EXHAUSTED"`...).
    pub code: Option<&'static str>,
    /// The provider the response came from: the classifier's profile, or
    /// what [`Provider::Auto`] detected; `None` when it could not tell.
    pub provider: Option<Provider>,
}

impl Classification {
    /// A success with nothing else known.
    pub const fn success() -> Self {
        Classification {
            class: None,
            status: None,
            retry_after: None,
            should_retry: None,
            limits: ReportedLimits::EMPTY,
            code: None,
            provider: None,
        }
    }

    /// A failure of the given class with nothing else known.
    pub const fn failure(class: ErrorClass) -> Self {
        let mut c = Self::success();
        c.class = Some(class);
        c
    }

    /// Sets the status.
    pub const fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the server-given wait.
    pub const fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Whether this is a success.
    pub const fn is_success(&self) -> bool {
        self.class.is_none()
    }

    /// Whether sending the request again can succeed: the server's
    /// `x-should-retry` when it sent one, else
    /// [`ErrorClass::is_retryable`]. A success is not retryable.
    pub const fn is_retryable(&self) -> bool {
        match (self.class, self.should_retry) {
            (None, _) => false,
            (Some(_), Some(server_says)) => server_says,
            (Some(class), None) => class.is_retryable(),
        }
    }
}

/// The rate-limit state one response reports, per dimension.
///
/// OpenAI-style `x-ratelimit-*` headers fill [`requests`](Self::requests)
/// and [`tokens`](Self::tokens); Anthropic's `anthropic-ratelimit-*` headers
/// also fill [`input_tokens`](Self::input_tokens) and
/// [`output_tokens`](Self::output_tokens); the IETF `RateLimit` fields fill
/// `requests` (or `tokens` when the policy's name mentions tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportedLimits {
    /// Requests per window.
    pub requests: Option<ReportedLimit>,
    /// Tokens (input and output together) per window.
    pub tokens: Option<ReportedLimit>,
    /// Input tokens per window (Anthropic).
    pub input_tokens: Option<ReportedLimit>,
    /// Output tokens per window (Anthropic).
    pub output_tokens: Option<ReportedLimit>,
}

impl ReportedLimits {
    /// No limits reported.
    pub const EMPTY: ReportedLimits = ReportedLimits {
        requests: None,
        tokens: None,
        input_tokens: None,
        output_tokens: None,
    };

    /// Whether no header reported anything.
    pub const fn is_empty(&self) -> bool {
        self.requests.is_none()
            && self.tokens.is_none()
            && self.input_tokens.is_none()
            && self.output_tokens.is_none()
    }
}

/// One dimension of a provider's rate limit as one response reports it.
///
/// Each part is optional because providers send different subsets, and a
/// value that does not parse (or Azure's `-1`) is left out rather than
/// guessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportedLimit {
    /// The limit of the window (`x-ratelimit-limit-*`).
    pub limit: Option<u64>,
    /// What remains of it now (`x-ratelimit-remaining-*`).
    pub remaining: Option<u64>,
    /// Time from the response until the window is fully replenished
    /// (`x-ratelimit-reset-*`, or an Anthropic RFC 3339 reset measured from
    /// the response's `Date`), clamped to
    /// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT).
    pub reset: Option<Duration>,
    /// The window length, when the provider says it (IETF `RateLimit-Policy`
    /// `w=`).
    pub window: Option<Duration>,
}

impl ReportedLimit {
    /// A state with the given parts.
    pub const fn new(limit: Option<u64>, remaining: Option<u64>, reset: Option<Duration>) -> Self {
        ReportedLimit {
            limit,
            remaining,
            reset,
            window: None,
        }
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.limit.is_none()
            && self.remaining.is_none()
            && self.reset.is_none()
            && self.window.is_none()
    }

    pub(crate) const fn non_empty(self) -> Option<Self> {
        if self.is_empty() {
            None
        } else {
            Some(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_the_server_word() {
        let c = Classification::failure(ErrorClass::RateLimited);
        assert!(c.is_retryable());
        let mut no = c;
        no.should_retry = Some(false);
        assert!(!no.is_retryable());
        let mut yes = Classification::failure(ErrorClass::InvalidRequest);
        assert!(!yes.is_retryable());
        yes.should_retry = Some(true);
        assert!(yes.is_retryable());
        let mut ok = Classification::success();
        ok.should_retry = Some(true);
        assert!(!ok.is_retryable());
    }
}
