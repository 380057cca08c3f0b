//! The stack's typed errors as the HTTP answers OpenAI's SDKs understand:
//! a status they act on, `Retry-After` (and OpenAI's `retry-after-ms`)
//! when waiting helps, and a body in OpenAI's error shape,
//! `{"error": {"message", "type", "param", "code"}}`, so that they parse
//! it.
//!
//! | the stack's error | answer |
//! | --- | --- |
//! | a wait for a quota refused ([`is_rate_limit_timeout`](Error::is_rate_limit_timeout), [`is_too_many_keys`](Error::is_too_many_keys), or the retry layer's [`is_retry_after_too_long`](Error::is_retry_after_too_long) with no response behind it): the tenant's quota or the provider's | 429, `Retry-After`, code `tenant_rate_limit_exceeded` or `rate_limit_exceeded` |
//! | an open circuit ([`is_circuit_open`](Error::is_circuit_open)) | 503, `Retry-After` (1 s when the breaker knows no time), code `circuit_open` |
//! | a request larger than a whole window ([`is_over_capacity`](Error::is_over_capacity)) | 400, code `request_too_large` |
//! | a request body over the gateway's bound ([`is_body_too_large`](Error::is_body_too_large)) | 413, code `request_too_large` |
//! | a request body that broke while it was read ([`is_body_unreadable`](Error::is_body_unreadable)) | 400, code `invalid_body` |
//! | the provider's error response (after the retries it deserved) | its status and body as it sent them (the body up to the classify layer's cap), `Retry-After` when it gave one |
//! | a failure with no response (connect, timeout, reset) | 502, 504 for a timeout, 503 for an overload |
//!
//! An answer for an error that waiting will not cure carries
//! `x-should-retry: false`, which the OpenAI SDKs obey.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;
use tower_llm_resilience::{Error, ErrorClass};

/// Which limiter level refused a request: the caller's own quota, or the
/// provider quota shared by every tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Tenant,
    Provider,
}

/// The answer to a request the stack failed at `level`.
pub fn from_error(error: &Error, level: Level) -> Response<Body> {
    let wait = error.retry_after();
    let message = error.to_string();
    let mut response = if error.is_circuit_open() {
        let message = format!("the gateway's circuit breaker for the upstream is open: {message}");
        let wait = wait.unwrap_or(Duration::from_secs(1));
        let mut r = ours(StatusCode::SERVICE_UNAVAILABLE, "circuit_open", &message);
        with_wait(&mut r, wait);
        r
    } else if is_quota_wait(error) {
        let (code, whose) = match level {
            Level::Tenant => ("tenant_rate_limit_exceeded", "your tenant's quota"),
            Level::Provider => ("rate_limit_exceeded", "the gateway's provider quota"),
        };
        let message = format!("{whose} is spent for now: {message}");
        ours(StatusCode::TOO_MANY_REQUESTS, code, &message)
    } else if error.is_over_capacity() {
        ours(StatusCode::BAD_REQUEST, "request_too_large", &message)
    } else if error.is_body_too_large() {
        ours(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", &message)
    } else if error.is_body_unreadable() {
        ours(StatusCode::BAD_REQUEST, "invalid_body", &message)
    } else if let Some(status) = error.status().filter(|s| s.as_u16() >= 400) {
        match error.body() {
            Some(body) => passed_through(status, body),
            None => ours(
                status,
                error.code().unwrap_or(error.class().as_str()),
                &message,
            ),
        }
    } else {
        let status = match error.class() {
            ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::RateLimited | ErrorClass::SlowDown | ErrorClass::QuotaExhausted => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ if error.is_store_unavailable() || error.is_cancelled() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        ours(status, error.class().as_str(), &message)
    };
    if let Some(wait) = wait {
        if !response.headers().contains_key(header::RETRY_AFTER) {
            with_wait(&mut response, wait);
        }
    }
    if !error.is_retryable() {
        response
            .headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

/// Whether the error is a wait for a quota that the gateway refused to
/// make: a limiter's refusal, as it is or as the retry layer passed it on
/// (a wait longer than it sleeps through, with no response behind it).
pub fn is_quota_wait(error: &Error) -> bool {
    error.is_rate_limit_timeout()
        || error.is_too_many_keys()
        || (error.is_retry_after_too_long() && error.status().is_none() && error.is_rate_limited())
}

/// An answer of the gateway's own, in OpenAI's error shape; `type` follows
/// the status as OpenAI's does.
pub fn ours(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    json_response(status, Bytes::from(body.to_string()))
}

/// The provider's own error body, as it sent it when it is JSON, else
/// its text as the message of an error in OpenAI's shape.
fn passed_through(status: StatusCode, body: &[u8]) -> Response<Body> {
    if serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_object()) {
        return json_response(status, Bytes::copy_from_slice(body));
    }
    let text = String::from_utf8_lossy(body);
    ours(status, "upstream_error", text.trim())
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `Retry-After` in whole seconds, rounded up (at least 1: `0` would ask
/// for a hot loop), and OpenAI's `retry-after-ms`, which its SDKs read
/// first.
fn with_wait(response: &mut Response<Body>, wait: Duration) {
    let ms = wait.as_millis().max(1);
    let secs = ms.div_ceil(1000);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower_llm_resilience::Classification;

    async fn body_of(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_provider_error_without_a_body_keeps_its_status_and_wait() {
        let mut c = Classification::failure(ErrorClass::RateLimited)
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_retry_after(Duration::from_millis(1_500));
        c.code = Some("rate_limit_exceeded");
        let response = from_error(&Error::from_response(c), Level::Provider);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
        assert!(!response.headers().contains_key("x-should-retry"));
        let body = body_of(response).await;
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }

    #[tokio::test]
    async fn a_failure_before_any_response_is_a_bad_gateway() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Error::from_transport(io, |_| Classification::failure(ErrorClass::Connect));
        let response = from_error(&error, Level::Provider);
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = body_of(response).await;
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "connect");
    }

    #[tokio::test]
    async fn a_text_body_becomes_the_message() {
        let response = passed_through(StatusCode::BAD_GATEWAY, b"upstream down\n");
        let body = body_of(response).await;
        assert_eq!(body["error"]["message"], "upstream down");
        assert_eq!(body["error"]["code"], "upstream_error");
    }

    #[tokio::test]
    async fn a_permanent_error_says_not_to_retry() {
        let c = Classification::failure(ErrorClass::Auth).with_status(StatusCode::UNAUTHORIZED);
        let response = from_error(&Error::from_response(c), Level::Provider);
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["x-should-retry"], "false");
    }
}
