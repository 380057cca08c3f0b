//! gRPC's status (`grpc-status`, `grpc-message`, `grpc-retry-pushback-ms`)
//! in this crate's taxonomy: in the trailers at the end of a body, or in
//! the headers of a trailers-only response.

use http::HeaderMap;

use super::body::message_class;
use super::values::parse_retry_after_ms;
use super::{Classification, ErrorClass};

/// What a gRPC status means, from the headers or trailers that carry it:
/// `None` without a `grpc-status` or with `0` (OK), else the failure.
///
/// | `grpc-status` | class |
/// | --- | --- |
/// | 1 `CANCELLED` | [`Cancelled`](ErrorClass::Cancelled) |
/// | 2 `UNKNOWN`, 13 `INTERNAL`, 15 `DATA_LOSS`, 10 `ABORTED`, a value that is not a code | [`ServerError`](ErrorClass::ServerError) |
/// | 3 `INVALID_ARGUMENT`, 9 `FAILED_PRECONDITION`, 11 `OUT_OF_RANGE`, 6 `ALREADY_EXISTS` | [`InvalidRequest`](ErrorClass::InvalidRequest) |
/// | 4 `DEADLINE_EXCEEDED` | [`Timeout`](ErrorClass::Timeout) |
/// | 5 `NOT_FOUND`, 12 `UNIMPLEMENTED` | [`NotFound`](ErrorClass::NotFound) |
/// | 7 `PERMISSION_DENIED` | [`Permission`](ErrorClass::Permission) |
/// | 8 `RESOURCE_EXHAUSTED` | [`RateLimited`](ErrorClass::RateLimited), or [`QuotaExhausted`](ErrorClass::QuotaExhausted) when the message says so |
/// | 14 `UNAVAILABLE` | [`Overloaded`](ErrorClass::Overloaded) |
/// | 16 `UNAUTHENTICATED` | [`Auth`](ErrorClass::Auth) |
/// | any other number | [`Other`](ErrorClass::Other) |
///
/// The message (`grpc-message`, percent-encoded, whose spaces and ASCII
/// are plain) decides where it names a cause the code does not, as an
/// error body's message does: a spent quota or credit
/// (`insufficient_quota`, "credit balance is too low", a per-day quota
/// such as Gemini's "... requests per day"), a prompt over the context
/// window ("maximum context length"). Without such words a
/// `RESOURCE_EXHAUSTED` is a rate limit, which waiting fixes: gRPC has no
/// standard header that tells a minute's limit from a spent quota (the
/// `grpc-status-details-bin` protobuf is not read). The wait is
/// `grpc-retry-pushback-ms` (gRPC's server pushback, clamped to
/// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT)); a negative pushback is the
/// server saying "do not retry" ([`Classification::should_retry`]).
///
/// ```
/// use http::HeaderMap;
/// use std::time::Duration;
/// use tower_llm_resilience::classify::{classify_grpc, ErrorClass};
///
/// let mut trailers = HeaderMap::new();
/// trailers.insert("grpc-status", "8".parse().unwrap());
/// trailers.insert("grpc-message", "requests per minute exceeded".parse().unwrap());
/// trailers.insert("grpc-retry-pushback-ms", "1500".parse().unwrap());
/// let c = classify_grpc(&trailers).unwrap();
/// assert_eq!(c.class, Some(ErrorClass::RateLimited));
/// assert_eq!(c.code, Some("RESOURCE_EXHAUSTED"));
/// assert_eq!(c.retry_after, Some(Duration::from_millis(1500)));
///
/// trailers.insert("grpc-message", "insufficient_quota: check your plan".parse().unwrap());
/// assert_eq!(classify_grpc(&trailers).unwrap().class, Some(ErrorClass::QuotaExhausted));
///
/// trailers.insert("grpc-status", "0".parse().unwrap());
/// assert!(classify_grpc(&trailers).is_none());
/// ```
pub fn classify_grpc(headers: &HeaderMap) -> Option<Classification> {
    let status = headers.get("grpc-status")?;
    let (class, name) = status_class(status.as_bytes())?;
    let mut c = Classification::failure(class);
    c.code = Some(name);
    let message = headers.get("grpc-message").map(|m| m.as_bytes());
    if let Some((phrase, by_message)) = message.and_then(|m| message_class(m, class)) {
        c.class = Some(by_message);
        c.code = Some(phrase);
    }
    if let Some(pushback) = headers
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
    {
        if pushback.trim_start().starts_with('-') {
            c.should_retry = Some(false);
        } else {
            c.retry_after = parse_retry_after_ms(pushback);
        }
    }
    Some(c)
}

/// The class and name of a `grpc-status` value; `None` for `0` (OK).
fn status_class(value: &[u8]) -> Option<(ErrorClass, &'static str)> {
    let code = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    Some(match code {
        Some(0) => return None,
        Some(1) => (ErrorClass::Cancelled, "CANCELLED"),
        Some(2) => (ErrorClass::ServerError, "UNKNOWN"),
        Some(3) => (ErrorClass::InvalidRequest, "INVALID_ARGUMENT"),
        Some(4) => (ErrorClass::Timeout, "DEADLINE_EXCEEDED"),
        Some(5) => (ErrorClass::NotFound, "NOT_FOUND"),
        Some(6) => (ErrorClass::InvalidRequest, "ALREADY_EXISTS"),
        Some(7) => (ErrorClass::Permission, "PERMISSION_DENIED"),
        Some(8) => (ErrorClass::RateLimited, "RESOURCE_EXHAUSTED"),
        Some(9) => (ErrorClass::InvalidRequest, "FAILED_PRECONDITION"),
        // A concurrency conflict, retried like HTTP's 409.
        Some(10) => (ErrorClass::ServerError, "ABORTED"),
        Some(11) => (ErrorClass::InvalidRequest, "OUT_OF_RANGE"),
        Some(12) => (ErrorClass::NotFound, "UNIMPLEMENTED"),
        Some(13) => (ErrorClass::ServerError, "INTERNAL"),
        Some(14) => (ErrorClass::Overloaded, "UNAVAILABLE"),
        Some(15) => (ErrorClass::ServerError, "DATA_LOSS"),
        Some(16) => (ErrorClass::Auth, "UNAUTHENTICATED"),
        Some(_) => (ErrorClass::Other, "grpc-status"),
        // gRPC's clients read a status that is not a number as UNKNOWN.
        None => (ErrorClass::ServerError, "UNKNOWN"),
    })
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `+proto`,
/// `+json`, any case).
pub(crate) fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.len() >= GRPC.len()
        && content_type[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pairs: &[(&'static str, &'static str)]) -> Option<Classification> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, v.parse().unwrap());
        }
        classify_grpc(&headers)
    }

    fn class(code: &'static str) -> Option<ErrorClass> {
        status(&[("grpc-status", code)]).and_then(|c| c.class)
    }

    #[test]
    fn every_code_has_its_class() {
        use ErrorClass::*;
        let expected = [
            (None, "0"),
            (Some(Cancelled), "1"),
            (Some(ServerError), "2"),
            (Some(InvalidRequest), "3"),
            (Some(Timeout), "4"),
            (Some(NotFound), "5"),
            (Some(InvalidRequest), "6"),
            (Some(Permission), "7"),
            (Some(RateLimited), "8"),
            (Some(InvalidRequest), "9"),
            (Some(ServerError), "10"),
            (Some(InvalidRequest), "11"),
            (Some(NotFound), "12"),
            (Some(ServerError), "13"),
            (Some(Overloaded), "14"),
            (Some(ServerError), "15"),
            (Some(Auth), "16"),
            (Some(Other), "17"),
            (Some(ServerError), "fourteen"),
            (Some(ServerError), "-1"),
            (Some(ServerError), "99999999999"),
        ];
        for (want, code) in expected {
            assert_eq!(class(code), want, "grpc-status {code}");
        }
        assert_eq!(classify_grpc(&HeaderMap::new()), None);
        let c = status(&[("grpc-status", "14")]).unwrap();
        assert!(c.is_retryable());
        assert_eq!(c.code, Some("UNAVAILABLE"));
    }

    #[test]
    fn the_message_names_a_spent_quota_or_a_long_prompt() {
        let exhausted = |message| {
            status(&[("grpc-status", "8"), ("grpc-message", message)]).and_then(|c| c.class)
        };
        assert_eq!(
            exhausted("Resource has been exhausted (e.g. check quota)."),
            Some(ErrorClass::RateLimited)
        );
        assert_eq!(
            exhausted("Quota exceeded for quota metric 'Generate Content API requests per day'"),
            Some(ErrorClass::QuotaExhausted)
        );
        assert_eq!(
            exhausted("insufficient_quota"),
            Some(ErrorClass::QuotaExhausted)
        );
        assert_eq!(
            exhausted("Your credit balance is too low"),
            Some(ErrorClass::QuotaExhausted)
        );
        let long = status(&[
            ("grpc-status", "3"),
            (
                "grpc-message",
                "This model's maximum context length is 8192 tokens",
            ),
        ])
        .unwrap();
        assert_eq!(long.class, Some(ErrorClass::ContextLengthExceeded));
        // A per-day phrase says nothing about a code that is not a quota's.
        let c = status(&[("grpc-status", "14"), ("grpc-message", "down per day")]).unwrap();
        assert_eq!(c.class, Some(ErrorClass::Overloaded));
        // Bytes that are not UTF-8 are no phrase, and no panic.
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "8".parse().unwrap());
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(
            classify_grpc(&headers).unwrap().class,
            Some(ErrorClass::RateLimited)
        );
    }

    #[test]
    fn pushback_is_the_wait_and_a_negative_one_says_do_not_retry() {
        let c = status(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "250")]).unwrap();
        assert_eq!(c.retry_after, Some(std::time::Duration::from_millis(250)));
        let c = status(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")]).unwrap();
        assert_eq!((c.retry_after, c.should_retry), (None, Some(false)));
        assert!(!c.is_retryable());
        let c = status(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "soon")]).unwrap();
        assert_eq!((c.retry_after, c.should_retry), (None, None));
        let c = status(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "1e300")]).unwrap();
        assert_eq!(c.retry_after, Some(crate::classify::MAX_SERVER_WAIT));
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(is_grpc(b"Application/GRPC; charset=utf-8"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
    }
}
