//! The limiter's response-side policy: what a response (or a failed
//! attempt) changes in the store. A `TokenUsage` corrects the charge, the
//! provider's rate-limit headers are learned, a rate-limit answer closes
//! the key's gate, and a refused or failed attempt gives its charge back.
//! [`ResponseFuture`](super::ResponseFuture) calls it once per attempt.

use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::estimate::TokenUsage;
use super::limits::{Dimension, MINUTE};
use super::service::Shared;
use super::store::{Reservation, Store};
use super::usage::{corrected, Seen};
use crate::classify::{Classifier, ErrorClass, ReportedLimit};
use crate::events::{model_of, Attempt, Event};
use crate::key::Key;

/// Whether a response may tell the limiter anything: any non-2xx status,
/// a stored [`Classification`](crate::Classification), or a header whose
/// name contains `ratelimit` or `retry-after` (OpenAI, Azure, Groq,
/// Anthropic and IETF rate-limit headers). Skips the classifier's header
/// parsing on the common plain success.
fn worth_classifying<RB>(response: &Response<RB>) -> bool {
    if !response.status().is_success()
        || response
            .extensions()
            .get::<crate::Classification>()
            .is_some()
    {
        return true;
    }
    response
        .headers()
        .keys()
        .any(|name| names_a_rate_limit(name.as_str().as_bytes()))
}

/// Whether a header name (lowercase, as `http` keeps them) contains
/// `ratelimit` or `retry-after`: one pass that compares the needles only
/// where an `r` starts them. Header names are short, so this beats both a
/// byte-window scan per needle and `memchr::memmem`, whose setup dominates
/// on a few dozen bytes (15 typical response headers: 69 ns, against 139 ns
/// for the two window scans and 204 ns for two prebuilt `memmem` finders).
fn names_a_rate_limit(name: &[u8]) -> bool {
    const SHORTEST: usize = b"ratelimit".len();
    (0..name.len().saturating_sub(SHORTEST - 1)).any(|i| {
        name[i] == b'r' && {
            let rest = &name[i..];
            rest.starts_with(b"ratelimit") || rest.starts_with(b"retry-after")
        }
    })
}

/// Gives back the charge of an attempt the provider refused or failed
/// (see [`RateLimitLayer::refund_failed`](super::RateLimitLayer::refund_failed)).
pub(super) fn refund<K, C, E, St: Store>(
    shared: &Shared<K, C, E, St>,
    reservation: Option<&Reservation>,
    class: Option<ErrorClass>,
) {
    let refundable = matches!(
        class,
        Some(
            ErrorClass::RateLimited
                | ErrorClass::SlowDown
                | ErrorClass::ServerError
                | ErrorClass::Overloaded
                | ErrorClass::Connect
        )
    );
    if let (true, true, Some(r)) = (shared.refund_failed, refundable, reservation) {
        shared.store.cancel(r);
    }
}

/// Learns from a response: usage correction, the provider's budget, the
/// shared gate; returns the response's failure class, if any. Cheap when
/// the response carries nothing to learn.
pub(super) fn after_response<K, C, E, St, RB>(
    shared: &Shared<K, C, E, St>,
    key: &Key,
    attempt: Option<&Attempt>,
    reservation: Option<&Reservation>,
    declared: Option<u64>,
    response: &Response<RB>,
) -> Option<ErrorClass>
where
    C: Classifier,
    St: Store,
{
    if let (Some(r), Some(&usage)) = (reservation, response.extensions().get::<TokenUsage>()) {
        let rule = shared.classifier.output_charge(response.headers());
        let actual = corrected(&r.costs, declared, usage, rule, Seen::Whole);
        if actual != r.costs {
            shared.store.correct(r, &actual, Instant::now());
        }
    }
    // Failure or success is the rule every layer shares; a success is
    // still read for the rate-limit headers it carries.
    let failure = shared.classifier.failure_of(response);
    if failure.is_none() && !worth_classifying(response) {
        return None;
    }
    let c = failure.unwrap_or_else(|| crate::Classification {
        class: None,
        ..shared.classifier.classify_response(response)
    });
    if c.limits.is_empty() && c.is_success() {
        return None;
    }
    let now = Instant::now();
    let model = model_of(attempt, key);
    let request_window = c
        .provider
        .and_then(|p| p.request_limit_window())
        .unwrap_or(MINUTE);
    let dims: [(Dimension, Option<ReportedLimit>, Duration); 4] = [
        (Dimension::Requests, c.limits.requests, request_window),
        (Dimension::Tokens, c.limits.tokens, MINUTE),
        (Dimension::InputTokens, c.limits.input_tokens, MINUTE),
        (Dimension::OutputTokens, c.limits.output_tokens, MINUTE),
    ];
    for (dimension, state, default_window) in dims {
        let Some(state) = state else { continue };
        if let (Some(remaining), Some(_)) = (state.remaining, attempt) {
            shared.events.emit(Event::QuotaReported {
                key,
                model,
                dimension: dimension.as_str(),
                remaining,
                limit: state.limit,
            });
        }
        let window = state.window.unwrap_or(default_window);
        if let Some(limit) = shared
            .store
            .learn(key, dimension, window, state, reservation, now)
        {
            shared.events.emit(Event::LimitLearned {
                key,
                model,
                dimension: dimension.as_str(),
                limit,
                remaining: state.remaining,
            });
        }
    }
    if let Some(class) = c.class {
        if matches!(
            class,
            ErrorClass::RateLimited | ErrorClass::SlowDown | ErrorClass::QuotaExhausted
        ) {
            shared.events.emit(Event::RateLimitedResponse {
                key,
                model,
                class,
                retry_after: c.retry_after,
            });
            if class == ErrorClass::QuotaExhausted {
                shared.events.emit(Event::QuotaExhausted {
                    key,
                    model,
                    until: c.retry_after,
                });
            }
            if let Some(wait) = c.retry_after {
                if let Some(until) = now.checked_add(wait) {
                    if !wait.is_zero() {
                        shared.events.emit(Event::GateClosed {
                            key,
                            model,
                            until: wait,
                        });
                    }
                    shared.store.gate(key, until);
                }
            }
        }
    }
    c.class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_header_names_are_found_anywhere_in_the_name() {
        for name in [
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-output-tokens-reset",
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "retry-after-ms",
            "x-ms-retry-after-ms",
        ] {
            assert!(names_a_rate_limit(name.as_bytes()), "{name}");
        }
        for name in [
            "content-type",
            "x-request-id",
            "openai-processing-ms",
            "ratelimi",
            "retry-afte",
            "x-rate-limit",
            "",
        ] {
            assert!(!names_a_rate_limit(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn only_responses_that_may_teach_something_are_classified() {
        let ok = |headers: &[(&'static str, &'static str)]| {
            let mut r = Response::builder().status(200);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(()).unwrap()
        };
        assert!(!worth_classifying(&ok(&[])));
        assert!(!worth_classifying(&ok(&[
            ("content-type", "application/json"),
            ("x-request-id", "req_1"),
        ])));
        assert!(worth_classifying(&ok(&[
            ("content-type", "application/json"),
            ("x-ratelimit-remaining-tokens", "1000"),
        ])));
        assert!(worth_classifying(&ok(&[("retry-after-ms", "20")])));
        let server_error = Response::builder().status(500).body(()).unwrap();
        assert!(worth_classifying(&server_error));
        let mut stored = ok(&[]);
        stored
            .extensions_mut()
            .insert(crate::Classification::success());
        assert!(worth_classifying(&stored));
    }
}
