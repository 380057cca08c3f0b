//! What a provider's JSON error body says, read from a bounded prefix.

use std::time::Duration;

use serde_json::Value;

use super::values::parse_go_duration;
use super::ErrorClass;

/// How many bytes of an error body are worth reading: real error bodies are
/// a few hundred bytes; Gemini's with `details` reach 1-2 KiB.
pub const DEFAULT_BODY_PREFIX: usize = 8 * 1024;

/// What an error body says, from [`parse_error_body`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The class the body's code implies, if a known code was found.
    pub class: Option<ErrorClass>,
    /// The recognised code (`"insufficient_quota"`, `"RESOURCE_EXHAUSTED"`,
    /// or a phrase such as `"prompt is too long"`).
    pub code: Option<&'static str>,
    /// Gemini's `google.rpc.RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
    /// Whether a Gemini `google.rpc.QuotaFailure` names a per-day quota (the
    /// class is then [`ErrorClass::QuotaExhausted`]).
    pub per_day_quota: bool,
    specific: bool,
}

impl ErrorBody {
    /// Whether the code names a precise cause (`insufficient_quota`,
    /// `overloaded_error`) rather than a broad family
    /// (`invalid_request_error`, a gRPC status), so that it should decide
    /// the class over the status code.
    pub fn is_specific(&self) -> bool {
        self.specific
    }
}

/// Known codes with their class and specificity: when a body carries several
/// (OpenAI puts a generic `type` beside a specific `code`), the most
/// specific wins.
const CODES: &[(&str, ErrorClass, u8)] = &[
    // Quota and billing: never retry like a rate limit.
    ("insufficient_quota", ErrorClass::QuotaExhausted, 3),
    ("billing_hard_limit_reached", ErrorClass::QuotaExhausted, 3),
    ("credit_balance_exhausted", ErrorClass::QuotaExhausted, 3),
    ("billing_not_active", ErrorClass::QuotaExhausted, 3),
    (
        "enforced_spend_limit_reached",
        ErrorClass::QuotaExhausted,
        3,
    ),
    ("billing_error", ErrorClass::QuotaExhausted, 3),
    (
        "context_length_exceeded",
        ErrorClass::ContextLengthExceeded,
        3,
    ),
    ("slow_down", ErrorClass::SlowDown, 3),
    ("rate_limit_exceeded", ErrorClass::RateLimited, 2),
    ("rate_limit_error", ErrorClass::RateLimited, 2),
    ("RateLimitReached", ErrorClass::RateLimited, 2),
    ("overloaded_error", ErrorClass::Overloaded, 2),
    ("server_is_overloaded", ErrorClass::Overloaded, 2),
    ("engine_overloaded", ErrorClass::Overloaded, 2),
    ("timeout_error", ErrorClass::Timeout, 2),
    ("invalid_api_key", ErrorClass::Auth, 2),
    ("authentication_error", ErrorClass::Auth, 2),
    ("permission_error", ErrorClass::Permission, 2),
    (
        "unsupported_country_region_territory",
        ErrorClass::Permission,
        2,
    ),
    ("model_not_found", ErrorClass::NotFound, 2),
    ("not_found_error", ErrorClass::NotFound, 2),
    ("DeploymentNotFound", ErrorClass::NotFound, 2),
    ("request_too_large", ErrorClass::InvalidRequest, 2),
    ("content_filter", ErrorClass::InvalidRequest, 2),
    ("RESOURCE_EXHAUSTED", ErrorClass::RateLimited, 1),
    ("UNAUTHENTICATED", ErrorClass::Auth, 1),
    ("PERMISSION_DENIED", ErrorClass::Permission, 1),
    ("NOT_FOUND", ErrorClass::NotFound, 1),
    ("INVALID_ARGUMENT", ErrorClass::InvalidRequest, 1),
    ("FAILED_PRECONDITION", ErrorClass::InvalidRequest, 1),
    ("UNAVAILABLE", ErrorClass::Overloaded, 1),
    ("INTERNAL", ErrorClass::ServerError, 1),
    ("DEADLINE_EXCEEDED", ErrorClass::Timeout, 1),
    ("api_error", ErrorClass::ServerError, 1),
    ("server_error", ErrorClass::ServerError, 1),
    ("invalid_request_error", ErrorClass::InvalidRequest, 0),
];

/// Phrases in a message that name a class no code does: Anthropic reports
/// a spent credit balance and an over-long prompt as a plain
/// `invalid_request_error`. ("You exceeded your current quota" is not one:
/// Gemini says it for per-minute limits too; its `QuotaFailure` decides.)
const PHRASES: &[(&str, ErrorClass)] = &[
    ("credit balance is too low", ErrorClass::QuotaExhausted),
    (
        "reached your specified api usage limits",
        ErrorClass::QuotaExhausted,
    ),
    ("prompt is too long", ErrorClass::ContextLengthExceeded),
    ("maximum context length", ErrorClass::ContextLengthExceeded),
    (
        "exceeds the maximum number of tokens",
        ErrorClass::ContextLengthExceeded,
    ),
];

/// Reads the error code, Gemini's retry delay and quota scope from the first
/// bytes of an error body. Understands OpenAI / Azure / Groq
/// (`{"error":{"code","type"}}`), Anthropic
/// (`{"type":"error","error":{"type"}}`) and Gemini
/// (`{"error":{"status","details":[...]}}`, also wrapped in an array).
///
/// A prefix cut mid-JSON still yields the code when the code's quoted
/// string is inside the prefix. Garbage yields an empty [`ErrorBody`].
///
/// ```
/// use tower_llm_resilience::classify::{parse_error_body, ErrorClass};
///
/// let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
/// assert_eq!(parse_error_body(body).class, Some(ErrorClass::QuotaExhausted));
/// ```
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => from_json(&value),
        Err(_) => scan(body),
    }
}

fn lookup(word: &str) -> Option<(&'static str, ErrorClass, u8)> {
    CODES.iter().copied().find(|(code, _, _)| *code == word)
}

/// The class a bare error code names (`"server_error"`,
/// `"overloaded_error"`...), for an error that carries its code outside an
/// error object (OpenAI Responses' `error` stream event).
pub(crate) fn code_class(word: &[u8]) -> Option<(&'static str, ErrorClass)> {
    CODES
        .iter()
        .find(|(code, _, _)| code.as_bytes() == word)
        .map(|&(code, class, _)| (code, class))
}

/// The class a free-text message names where a status code cannot (a
/// gRPC `grpc-message`): a phrase of [`PHRASES`], a precise code of
/// [`CODES`] written in it (`insufficient_quota`), or, for a rate limit
/// (`class`), a per-day quota, which is spent until the day resets.
pub(crate) fn message_class(
    message: &[u8],
    class: ErrorClass,
) -> Option<(&'static str, ErrorClass)> {
    let lower = std::str::from_utf8(message).ok()?.to_ascii_lowercase();
    if let Some(&(phrase, class)) = PHRASES.iter().find(|(p, _)| lower.contains(p)) {
        return Some((phrase, class));
    }
    let precise = CODES
        .iter()
        .find(|(code, _, rank)| *rank >= 3 && lower.contains(code));
    if let Some(&(code, class, _)) = precise {
        return Some((code, class));
    }
    let per_day = ["perday", "per_day", "per day"];
    if class == ErrorClass::RateLimited && per_day.iter().any(|p| lower.contains(p)) {
        return Some(("RESOURCE_EXHAUSTED", ErrorClass::QuotaExhausted));
    }
    None
}

fn from_json(value: &Value) -> ErrorBody {
    // Gemini sometimes wraps the body in an array.
    let value = match value {
        Value::Array(items) => items.first().unwrap_or(value),
        other => other,
    };
    // `{"error": {...}}` almost everywhere; vLLM and some gateways put the
    // fields at the top level or the code straight in `"error"`.
    let error = match value.get("error") {
        Some(inner) if inner.is_object() => inner,
        Some(Value::String(word)) => {
            let found = lookup(word);
            return ErrorBody {
                class: found.map(|f| f.1),
                code: found.map(|f| f.0),
                specific: found.is_some_and(|f| f.2 >= 2),
                ..ErrorBody::default()
            };
        }
        _ if value.is_object() => value,
        _ => return ErrorBody::default(),
    };
    let mut best: Option<(&'static str, ErrorClass, u8)> = None;
    let mut consider = |found: Option<(&'static str, ErrorClass, u8)>| {
        if let Some(found) = found {
            if best.is_none_or(|b| found.2 > b.2) {
                best = Some(found);
            }
        }
    };
    for field in ["code", "type", "status"] {
        if let Some(word) = error.get(field).and_then(Value::as_str) {
            consider(lookup(word));
        }
    }
    let mut body = ErrorBody::default();
    if let Some(message) = error.get("message").and_then(Value::as_str) {
        let lower = message.to_ascii_lowercase();
        if let Some((phrase, class)) = PHRASES.iter().find(|(p, _)| lower.contains(p)) {
            consider(Some((phrase, *class, 3)));
        }
    }
    if let Some(details) = error.get("details").and_then(Value::as_array) {
        for detail in details {
            let kind = detail.get("@type").and_then(Value::as_str).unwrap_or("");
            if kind.ends_with("google.rpc.RetryInfo") {
                body.retry_delay = detail
                    .get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(parse_go_duration);
            } else if kind.ends_with("google.rpc.QuotaFailure") {
                let violations = detail.get("violations").and_then(Value::as_array);
                body.per_day_quota |= violations.into_iter().flatten().any(is_per_day);
            }
        }
    }
    if let Some((code, class, rank)) = best {
        body.code = Some(code);
        body.class = Some(class);
        body.specific = rank >= 2;
    }
    if body.per_day_quota {
        body.class = Some(ErrorClass::QuotaExhausted);
        body.specific = true;
    }
    body
}

fn is_per_day(violation: &Value) -> bool {
    ["quotaId", "quotaMetric", "subject", "description"]
        .into_iter()
        .filter_map(|field| violation.get(field).and_then(Value::as_str))
        .any(|text| {
            let lower = text.to_ascii_lowercase();
            lower.contains("perday") || lower.contains("per_day") || lower.contains("per day")
        })
}

/// The fallback for a prefix that is not whole JSON: look for each known
/// code as a quoted JSON string.
fn scan(body: &[u8]) -> ErrorBody {
    let mut best: Option<(&'static str, ErrorClass, u8)> = None;
    for &(code, class, rank) in CODES {
        if best.is_some_and(|b| b.2 >= rank) {
            continue;
        }
        let found = body.windows(code.len() + 2).any(|w| {
            w[0] == b'"' && w[w.len() - 1] == b'"' && &w[1..w.len() - 1] == code.as_bytes()
        });
        if found {
            best = Some((code, class, rank));
        }
    }
    ErrorBody {
        class: best.map(|b| b.1),
        code: best.map(|b| b.0),
        specific: best.is_some_and(|b| b.2 >= 2),
        ..ErrorBody::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_bodies() {
        let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let b = parse_error_body(quota);
        assert_eq!(b.class, Some(ErrorClass::QuotaExhausted));
        assert_eq!(b.code, Some("insufficient_quota"));

        let rpm = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(parse_error_body(rpm).class, Some(ErrorClass::RateLimited));

        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let b = parse_error_body(ctx);
        assert_eq!(b.class, Some(ErrorClass::ContextLengthExceeded));
        assert_eq!(b.code, Some("context_length_exceeded"));
    }

    #[test]
    fn anthropic_bodies() {
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            parse_error_body(overloaded).class,
            Some(ErrorClass::Overloaded)
        );
        let credit = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        let b = parse_error_body(credit);
        assert_eq!(b.class, Some(ErrorClass::QuotaExhausted));
        assert_eq!(b.code, Some("credit balance is too low"));
        let long = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            parse_error_body(long).class,
            Some(ErrorClass::ContextLengthExceeded)
        );
    }

    #[test]
    fn gemini_bodies() {
        let per_minute = br#"[{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}]"#;
        let b = parse_error_body(per_minute);
        assert_eq!(b.class, Some(ErrorClass::RateLimited));
        assert_eq!(b.retry_delay, Some(Duration::from_secs(27)));
        assert!(!b.per_day_quota);

        let per_day = br#"{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"50"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3.5s"}]}}"#;
        let b = parse_error_body(per_day);
        assert_eq!(b.class, Some(ErrorClass::QuotaExhausted));
        assert!(b.per_day_quota);
        assert_eq!(b.retry_delay, Some(Duration::from_millis(3500)));
    }

    #[test]
    fn truncated_and_garbage() {
        let cut = br#"{"error":{"message":"You exceeded your current quota, please check","type":"insufficient_quota","par"#;
        assert_eq!(
            parse_error_body(cut).class,
            Some(ErrorClass::QuotaExhausted)
        );
        assert_eq!(parse_error_body(b"").class, None);
        assert_eq!(
            parse_error_body(b"<html>502 Bad Gateway</html>").class,
            None
        );
        assert_eq!(parse_error_body(b"\xff\xfe\x00").class, None);
        assert_eq!(
            parse_error_body(br#"{"error":"rate_limit_exceeded"}"#).class,
            Some(ErrorClass::RateLimited)
        );
        let vllm = br#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(
            parse_error_body(vllm).class,
            Some(ErrorClass::ContextLengthExceeded)
        );
        assert_eq!(parse_error_body(b"[]").class, None);
        assert_eq!(parse_error_body(b"42").class, None);
        assert_eq!(
            parse_error_body(br#"{"error":{"code":{"x":1}}}"#).class,
            None
        );
    }
}
