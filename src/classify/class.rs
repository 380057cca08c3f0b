use std::fmt;

/// What went wrong with a call to an AI provider, in one taxonomy that every
/// layer of this crate and every user shares.
///
/// A successful response has no class; see
/// [`Classification::class`](super::Classification::class).
///
/// The variants name the *meaning* of a failure, not its status code: a 429
/// can be [`RateLimited`](Self::RateLimited) (wait and retry) or
/// [`QuotaExhausted`](Self::QuotaExhausted) (stop until a human acts), and
/// only the body tells which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Over a requests- or tokens-per-window limit; waiting helps.
    ///
    /// OpenAI / Groq / OpenAI-compatible 429 (`rate_limit_exceeded`, or no
    /// code), Anthropic 429 `rate_limit_error`, Azure 429, Gemini 429
    /// `RESOURCE_EXHAUSTED` with a per-minute `QuotaFailure` or none.
    RateLimited,
    /// The account's quota, credit or spend limit is gone; waiting a few
    /// seconds does not help, only the quota's reset or a human does.
    ///
    /// OpenAI 429 `insufficient_quota` / `billing_hard_limit_reached` /
    /// `credit_balance_exhausted`, Anthropic `billing_error` and
    /// "credit balance is too low", `enforced_spend_limit_reached`, Gemini
    /// 429 `RESOURCE_EXHAUSTED` whose `QuotaFailure` names a per-day quota,
    /// OpenRouter 402, any 402.
    QuotaExhausted,
    /// The provider asks the client to ramp up more slowly (OpenAI 429
    /// `slow_down`); retry, and lower the rate.
    SlowDown,
    /// The provider is overloaded; retry with backoff.
    ///
    /// Anthropic 529 `overloaded_error`, OpenAI 503 `server_is_overloaded` /
    /// `engine_overloaded`, Gemini 503 `UNAVAILABLE`, any 503 or 529.
    Overloaded,
    /// A transient server-side failure; retry with backoff.
    ///
    /// 500, 502, 504, 409 (OpenAI's lock conflicts), other 5xx, Anthropic
    /// `api_error`, Gemini `INTERNAL`.
    ServerError,
    /// No answer in time: a 408, a 504 that says so, or a client-side
    /// timeout (tower's `Elapsed`, an I/O `TimedOut`).
    Timeout,
    /// The connection could not be made or broke before a response:
    /// refused, reset, DNS, TLS, unexpected EOF.
    Connect,
    /// The credentials are missing, wrong or revoked (401, OpenAI
    /// `invalid_api_key`, Anthropic `authentication_error`, Gemini
    /// `UNAUTHENTICATED`).
    Auth,
    /// The credentials are valid but not allowed this (403, Anthropic
    /// `permission_error`, Gemini `PERMISSION_DENIED`, OpenAI
    /// `unsupported_country_region_territory`).
    Permission,
    /// The request itself is wrong (400, 413, 415, 422, OpenAI
    /// `invalid_request_error`, Anthropic `invalid_request_error`, Gemini
    /// `INVALID_ARGUMENT`, Azure `content_filter`).
    InvalidRequest,
    /// The prompt plus the requested output exceed the model's context
    /// window (OpenAI `context_length_exceeded`, Anthropic "prompt is too
    /// long", Gemini "exceeds the maximum number of tokens").
    ContextLengthExceeded,
    /// The model, deployment or endpoint does not exist (404, OpenAI
    /// `model_not_found`, Anthropic `not_found_error`, Gemini `NOT_FOUND`).
    NotFound,
    /// The call was cancelled before it finished (the caller dropped it, or
    /// a layer such as a breaker or deadline gave it up).
    Cancelled,
    /// Anything else: an unknown status or error.
    Other,
}

impl ErrorClass {
    /// Every class, in declaration order.
    pub const ALL: [ErrorClass; 14] = [
        ErrorClass::RateLimited,
        ErrorClass::QuotaExhausted,
        ErrorClass::SlowDown,
        ErrorClass::Overloaded,
        ErrorClass::ServerError,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Auth,
        ErrorClass::Permission,
        ErrorClass::InvalidRequest,
        ErrorClass::ContextLengthExceeded,
        ErrorClass::NotFound,
        ErrorClass::Cancelled,
        ErrorClass::Other,
    ];

    /// Whether sending the same request again later can succeed.
    ///
    /// `true` for [`RateLimited`](Self::RateLimited),
    /// [`SlowDown`](Self::SlowDown), [`Overloaded`](Self::Overloaded),
    /// [`ServerError`](Self::ServerError), [`Timeout`](Self::Timeout) and
    /// [`Connect`](Self::Connect). LLM completions are treated as safe to
    /// repeat, as the official SDKs do. A server's `x-should-retry` header
    /// may override this (see
    /// [`Classification::is_retryable`](super::Classification::is_retryable)).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::SlowDown
                | ErrorClass::Overloaded
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::Connect
        )
    }

    /// Whether the class says something about the provider's health (and so
    /// may count as a failure for a circuit breaker): server errors,
    /// overload, timeouts and connection failures. The caller's own mistakes
    /// (invalid request, context length, not found) say nothing about it.
    pub const fn is_provider_fault(self) -> bool {
        matches!(
            self,
            ErrorClass::Overloaded
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::Connect
        )
    }

    /// The snake_case name used in logs, events and JSON output.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::QuotaExhausted => "quota_exhausted",
            ErrorClass::SlowDown => "slow_down",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Auth => "auth",
            ErrorClass::Permission => "permission",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::ContextLengthExceeded => "context_length_exceeded",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Other => "other",
        }
    }

    /// The class a bare status code implies when nothing else is known.
    /// Returns `None` for 1xx, 2xx and 3xx.
    pub fn from_status(status: http::StatusCode) -> Option<ErrorClass> {
        let code = status.as_u16();
        Some(match code {
            0..=399 => return None,
            400 | 413 | 415 | 422 => ErrorClass::InvalidRequest,
            401 | 407 => ErrorClass::Auth,
            402 => ErrorClass::QuotaExhausted,
            403 => ErrorClass::Permission,
            404 | 410 => ErrorClass::NotFound,
            408 => ErrorClass::Timeout,
            409 => ErrorClass::ServerError,
            429 => ErrorClass::RateLimited,
            499 => ErrorClass::Cancelled,
            503 | 529 => ErrorClass::Overloaded,
            504 | 524 => ErrorClass::Timeout,
            500..=599 => ErrorClass::ServerError,
            _ => ErrorClass::Other,
        })
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown class name with [`str::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownClass;

impl fmt::Display for UnknownClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown error class")
    }
}

impl std::error::Error for UnknownClass {}

impl std::str::FromStr for ErrorClass {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.as_str() == s)
            .ok_or(UnknownClass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for class in ErrorClass::ALL {
            assert_eq!(class.as_str().parse::<ErrorClass>(), Ok(class));
            assert_eq!(class.to_string(), class.as_str());
        }
        assert_eq!("nope".parse::<ErrorClass>(), Err(UnknownClass));
    }

    #[test]
    fn provider_faults_are_retryable() {
        for class in ErrorClass::ALL {
            if class.is_provider_fault() {
                assert!(class.is_retryable(), "{class}");
            }
        }
    }

    #[test]
    fn status_defaults() {
        use http::StatusCode;
        assert_eq!(ErrorClass::from_status(StatusCode::OK), None);
        assert_eq!(
            ErrorClass::from_status(StatusCode::TOO_MANY_REQUESTS),
            Some(ErrorClass::RateLimited)
        );
        let s529 = StatusCode::from_u16(529).unwrap();
        assert_eq!(ErrorClass::from_status(s529), Some(ErrorClass::Overloaded));
        assert_eq!(
            ErrorClass::from_status(StatusCode::PAYMENT_REQUIRED),
            Some(ErrorClass::QuotaExhausted)
        );
        assert_eq!(
            ErrorClass::from_status(StatusCode::IM_A_TEAPOT),
            Some(ErrorClass::Other)
        );
    }
}
