//! One rule for "is this response a failure?" (`Classifier::failure_of`),
//! shared by the retry layer, the circuit breaker and the rate limiter:
//! one set of responses runs through each layer alone, and the three
//! verdicts must be the same.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, FailureWindow};
use tower_llm_resilience::classify::{Classification, Classifier, ErrorClass, Provider};
use tower_llm_resilience::rate_limit::{Dimension, Limits, RateLimitLayer};
use tower_llm_resilience::retry::RetryLayer;

/// A classifier for a server that also reports failures with a 299 (an
/// error status that is a 2xx), and for which every failure is a server
/// error, so that each layer counts every failure (the breaker records it,
/// the limiter refunds it, the retry layer returns it as an error).
#[derive(Clone, Copy, Debug)]
struct Odd;

impl Classifier for Odd {
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        let mut c = Provider::Auto.classify(status, headers, body);
        if c.class.is_some() || status.as_u16() == 299 {
            c.class = Some(ErrorClass::ServerError);
        }
        c
    }

    fn is_error_status(&self, status: StatusCode) -> bool {
        status.as_u16() >= 400 || status.as_u16() == 299
    }
}

/// Makes one response of a case, afresh for each call.
type Make = fn() -> Response<String>;

/// The responses, and whether each is a failure under [`Odd`].
fn cases() -> Vec<(&'static str, Make, bool)> {
    fn status(code: u16) -> Response<String> {
        Response::builder()
            .status(code)
            .body(String::new())
            .unwrap()
    }
    vec![
        ("200", || status(200), false),
        (
            "200 with rate-limit headers",
            || {
                let mut r = status(200);
                let h = r.headers_mut();
                h.insert("x-ratelimit-limit-requests", "100".parse().unwrap());
                h.insert("x-ratelimit-remaining-requests", "99".parse().unwrap());
                h.insert("x-ratelimit-reset-requests", "6ms".parse().unwrap());
                r
            },
            false,
        ),
        ("299, an error status", || status(299), true),
        ("302", || status(302), false),
        ("503", || status(503), true),
        (
            "500 stored as a success",
            || {
                let mut r = status(500);
                r.extensions_mut().insert(Classification::success());
                r
            },
            false,
        ),
        (
            "200 stored as a failure",
            || {
                let mut r = status(200);
                r.extensions_mut()
                    .insert(Classification::failure(ErrorClass::ServerError));
                r
            },
            true,
        ),
    ]
}

fn provider(
    make: fn() -> Response<String>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    service_fn(move |_: Request<String>| async move { Ok::<_, Infallible>(make()) })
}

/// The retry layer's verdict: it returns a failure it does not retry as
/// an error.
async fn retry_says_failure(make: fn() -> Response<String>) -> bool {
    let mut svc = RetryLayer::new()
        .classifier(Odd)
        .max_attempts(1)
        .no_budget()
        .layer(provider(make));
    let result = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    result.is_err()
}

/// The breaker's verdict: one failure in a window of one opens it.
async fn breaker_says_failure(make: fn() -> Response<String>) -> bool {
    let mut svc = CircuitBreakerLayer::new()
        .classifier(Odd)
        .window(FailureWindow::Count(1))
        .minimum_calls(1)
        .layer(provider(make));
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    assert!(first.is_ok(), "the breaker passes responses on");
    let second = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    matches!(second, Err(e) if e.is_circuit_open())
}

/// The limiter's verdict: a failed attempt's charge is refunded, so a
/// second request fits in a window of one.
async fn limiter_says_failure(make: fn() -> Response<String>) -> bool {
    let limits = Limits::new().window(Dimension::Requests, Duration::from_secs(60), 1);
    let mut svc = RateLimitLayer::new(limits)
        .classifier(Odd)
        .refund_failed(true)
        .learn_limits(false)
        .max_wait(Duration::from_secs(1))
        .layer(provider(make));
    svc.ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap();
    let second = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await;
    second.is_ok()
}

#[tokio::test(start_paused = true)]
async fn retry_breaker_and_limiter_agree_on_what_is_a_failure() {
    for (name, make, failure) in cases() {
        assert_eq!(
            Odd.failure_of(&make()).is_some(),
            failure,
            "{name}: failure_of"
        );
        assert_eq!(retry_says_failure(make).await, failure, "{name}: retry");
        assert_eq!(breaker_says_failure(make).await, failure, "{name}: breaker");
        assert_eq!(limiter_says_failure(make).await, failure, "{name}: limiter");
    }
}
