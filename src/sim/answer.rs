//! What the provider sends: error bodies in each provider's shape, the
//! completion bodies, and the headers (request id, limits, Retry-After).
//! Nothing here decides anything; [`decide`](super::decide) does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use super::config::{Fault, Style};
use super::format::{ceil_ms, ceil_secs, go_duration, rfc3339_ceil};

/// A reply: status, body and how long after arrival it is sent.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: String,
    pub(super) delay: Duration,
}

/// Which completion call a request is, by its path.
#[derive(Clone, Copy)]
pub(super) enum Endpoint {
    /// OpenAI's `…/chat/completions`.
    Chat,
    /// Anthropic's `…/messages`.
    Messages,
}

/// One limit as its headers report it.
pub(super) struct Room {
    pub(super) limit: u64,
    pub(super) remaining: u64,
    /// Until the window is empty again.
    pub(super) reset: Duration,
}

/// A refusal over one limit, as the 429's message tells it.
pub(super) struct OverLimit<'a> {
    /// `"requests"` or `"tokens"`.
    pub(super) kind: &'static str,
    pub(super) limit: u64,
    pub(super) used: u64,
    pub(super) requested: u64,
    pub(super) model: &'a str,
}

pub(super) fn header(value: impl Into<String>) -> HeaderValue {
    HeaderValue::from_str(&value.into()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The headers every answer has: `Date`, the JSON content type and the
/// request id.
pub(super) fn base_headers(style: Style, wall: SystemTime, seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::DATE, header(httpdate::fmt_http_date(wall)));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let id_header = match style {
        Style::OpenAi => "x-request-id",
        Style::Anthropic => "request-id",
    };
    headers.insert(id_header, header(format!("req_sim_{seq}")));
    headers
}

/// The rate-limit headers of admissions and 429s.
pub(super) fn limit_headers(
    style: Style,
    wall: SystemTime,
    requests: Room,
    tokens: Room,
    headers: &mut HeaderMap,
) {
    match style {
        Style::OpenAi => {
            let h = [
                ("x-ratelimit-limit-requests", requests.limit.to_string()),
                ("x-ratelimit-limit-tokens", tokens.limit.to_string()),
                (
                    "x-ratelimit-remaining-requests",
                    requests.remaining.to_string(),
                ),
                ("x-ratelimit-remaining-tokens", tokens.remaining.to_string()),
                ("x-ratelimit-reset-requests", go_duration(requests.reset)),
                ("x-ratelimit-reset-tokens", go_duration(tokens.reset)),
            ];
            for (name, value) in h {
                headers.insert(name, header(value));
            }
        }
        Style::Anthropic => {
            let h = [
                (
                    "anthropic-ratelimit-requests-limit",
                    requests.limit.to_string(),
                ),
                (
                    "anthropic-ratelimit-requests-remaining",
                    requests.remaining.to_string(),
                ),
                (
                    "anthropic-ratelimit-requests-reset",
                    rfc3339_ceil(wall + requests.reset),
                ),
                ("anthropic-ratelimit-tokens-limit", tokens.limit.to_string()),
                (
                    "anthropic-ratelimit-tokens-remaining",
                    tokens.remaining.to_string(),
                ),
                (
                    "anthropic-ratelimit-tokens-reset",
                    rfc3339_ceil(wall + tokens.reset),
                ),
            ];
            for (name, value) in h {
                headers.insert(name, header(value));
            }
        }
    }
}

/// `retry-after` (whole seconds, rounded up) and, OpenAI style,
/// `retry-after-ms`.
pub(super) fn retry_after(style: Style, wait: Duration, headers: &mut HeaderMap) {
    headers.insert(
        http::header::RETRY_AFTER,
        header(ceil_secs(wait).to_string()),
    );
    if style == Style::OpenAi {
        headers.insert("retry-after-ms", header(ceil_ms(wait).to_string()));
    }
}

/// The 429 of a request over `over`'s limit; `wait` is `None` when the
/// request is larger than the whole window.
pub(super) fn rate_limited(style: Style, over: &OverLimit<'_>, wait: Option<Duration>) -> Reply {
    let OverLimit {
        kind,
        limit,
        used,
        requested,
        model,
    } = *over;
    let unit = if kind == "requests" {
        "requests per min (RPM)"
    } else {
        "tokens per min (TPM)"
    };
    let message = match (style, wait) {
        (Style::OpenAi, Some(w)) => format!(
            "Rate limit reached for {model} in organization org-sim on {unit}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}.",
            go_duration(w)
        ),
        (Style::OpenAi, None) => format!(
            "Request too large for {model} in organization org-sim on {unit}: Limit {limit}, Requested {requested}."
        ),
        (Style::Anthropic, _) => format!(
            "This request would exceed your organization's rate limit of {limit} {kind} per minute."
        ),
    };
    match style {
        Style::OpenAi => error(
            style,
            StatusCode::TOO_MANY_REQUESTS,
            kind,
            Some("rate_limit_exceeded"),
            &message,
        ),
        Style::Anthropic => error(
            style,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            None,
            &message,
        ),
    }
}

/// The 503 of the outage window.
pub(super) fn outage(style: Style) -> Reply {
    error(
        style,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        Some("server_is_overloaded"),
        "The server is overloaded or not ready yet.",
    )
}

/// The answer once the quota is spent: OpenAI's 429 `insufficient_quota`,
/// Anthropic's 400 "credit balance is too low".
pub(super) fn quota_exhausted(style: Style) -> Reply {
    match style {
        Style::OpenAi => error(style, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", Some("insufficient_quota"), "You exceeded your current quota, please check your plan and billing details."),
        Style::Anthropic => error(style, StatusCode::BAD_REQUEST, "invalid_request_error", None, "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."),
    }
}

/// The error reply of an injected fault; `None` for the faults that send
/// no error status ([`Fault::ConnectionReset`], and those that alter an
/// admitted answer: [`Fault::Slow`] and the stream faults).
pub(super) fn fault(style: Style, fault: Fault) -> Option<Reply> {
    Some(match fault {
        Fault::Slow(_)
        | Fault::ConnectionReset
        | Fault::MidStreamError
        | Fault::Stall(_)
        | Fault::Truncate
        | Fault::OverloadedFirstEvent => return None,
        Fault::ServerError => error(
            style,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        Fault::ServiceUnavailable => outage(style),
        Fault::Overloaded => error(
            style,
            status_529(),
            "overloaded_error",
            Some("overloaded_error"),
            "Overloaded",
        ),
        Fault::InvalidApiKey => error(style, StatusCode::UNAUTHORIZED, "auth", Some("invalid_api_key"), "Incorrect API key provided: sk-sim****. You can find your API key at https://platform.openai.com/account/api-keys."),
    })
}

/// What a completion says and what it cost.
pub(super) struct Completion<'a> {
    pub(super) seq: u64,
    pub(super) model: &'a str,
    pub(super) content: &'a str,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
}

/// A completion's body in the endpoint's shape: `chat.completion` or
/// Anthropic's `message`.
pub(super) fn completion(endpoint: Endpoint, wall: SystemTime, c: &Completion<'_>) -> String {
    let Completion {
        seq,
        model,
        content,
        prompt_tokens,
        completion_tokens: completion,
    } = *c;
    let body = match endpoint {
        Endpoint::Chat => json!({
            "id": format!("chatcmpl-sim{seq}"),
            "object": "chat.completion",
            "created": wall.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion
            }
        }),
        Endpoint::Messages => json!({
            "id": format!("msg_sim{seq}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion}
        }),
    };
    body.to_string()
}

fn status_529() -> StatusCode {
    StatusCode::from_u16(529).expect("529 is a valid status")
}

/// An error answer in the provider's shape. `kind` names the error type:
/// OpenAI bodies use it as `type` (with `"overloaded"` and `"auth"` mapped
/// to OpenAI's types), Anthropic bodies map it to theirs.
pub(super) fn error(
    style: Style,
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Reply {
    let body = match style {
        Style::OpenAi => {
            let ty = match kind {
                "overloaded" | "server_error" => "server_error",
                "auth" | "not_found_error" => "invalid_request_error",
                other => other,
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Style::Anthropic => {
            let ty = match kind {
                "overloaded" | "overloaded_error" => "overloaded_error",
                "server_error" => "api_error",
                "auth" => "authentication_error",
                "not_found_error" => "not_found_error",
                "requests" | "tokens" | "rate_limit_error" => "rate_limit_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    Reply {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}
