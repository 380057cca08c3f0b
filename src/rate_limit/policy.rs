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
use crate::events::Event;
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
    response.headers().keys().any(|name| {
        let n = name.as_str().as_bytes();
        contains(n, b"ratelimit") || contains(n, b"retry-after")
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w == needle)
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
        let window = state.window.unwrap_or(default_window);
        if let Some(limit) = shared
            .store
            .learn(key, dimension, window, state, reservation, now)
        {
            shared.events.emit(Event::LimitLearned {
                key,
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
                class,
                retry_after: c.retry_after,
            });
            if class == ErrorClass::QuotaExhausted {
                shared.events.emit(Event::QuotaExhausted {
                    key,
                    until: c.retry_after,
                });
            }
            if let Some(wait) = c.retry_after {
                if let Some(until) = now.checked_add(wait) {
                    if !wait.is_zero() {
                        shared.events.emit(Event::GateClosed { key, until: wait });
                    }
                    shared.store.gate(key, until);
                }
            }
        }
    }
    c.class
}
