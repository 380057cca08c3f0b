//! The seams between layers: what issue #11 saw go wrong through the whole
//! stack (`LlmLayer`), each replayed here in paused time against a scripted
//! provider. Nothing learned from a provider may lock a key for good, and
//! one request's error may not lock out the others.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::{Error, LlmLayer, Provider};

mod support;

use support::{answer, bounded};

/// A provider whose n-th answer (from 0) is `script(n)`; logs when each
/// request arrived.
#[derive(Clone)]
struct Scripted {
    script: fn(usize) -> Response<String>,
    log: Arc<Mutex<Vec<Instant>>>,
    latency: Duration,
}

impl Scripted {
    fn new(script: fn(usize) -> Response<String>) -> Self {
        Scripted {
            script,
            log: Arc::default(),
            latency: Duration::ZERO,
        }
    }

    fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.log.lock().unwrap().clone()
    }
}

impl Service<Request<String>> for Scripted {
    type Response = Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let n = {
            let mut log = self.log.lock().unwrap();
            log.push(Instant::now());
            log.len() - 1
        };
        let answer = match request.headers().get("x-test-answer") {
            Some(v) if v == "429-30" => answer(
                429,
                &[("retry-after", "30")],
                r#"{"error":{"code":"rate_limit_exceeded"}}"#,
            ),
            _ => (self.script)(n),
        };
        let latency = self.latency;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(answer)
        })
    }
}

fn ok() -> Response<String> {
    Response::new(String::from(r#"{"choices":[]}"#))
}

fn chat() -> Request<String> {
    Request::post("https://api.openai.com/v1/chat/completions")
        .body(String::from(
            r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#,
        ))
        .unwrap()
}

/// Sends one chat request; the response's body is not read.
async fn send<S, B>(svc: &mut S) -> Result<Response<B>, Error>
where
    S: Service<Request<String>, Response = Response<B>, Error = Error>,
{
    svc.ready().await?.call(chat()).await
}

#[tokio::test(start_paused = true)]
async fn a_zero_limit_header_does_not_shut_the_key() {
    for header in ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"] {
        let provider = Scripted::new(match header {
            "x-ratelimit-limit-requests" => |n| match n {
                0 => answer(200, &[("x-ratelimit-limit-requests", "0")], "{}"),
                _ => ok(),
            },
            _ => |n| match n {
                0 => answer(200, &[("x-ratelimit-limit-tokens", "0")], "{}"),
                _ => ok(),
            },
        });
        let mut svc = LlmLayer::new(Provider::OpenAi)
            .requests_per_minute(100)
            .tokens_per_minute(100_000)
            .layer(provider.clone());
        send(&mut svc).await.unwrap();
        for i in 0..5 {
            let r = bounded(send(&mut svc)).await;
            assert!(
                r.is_ok(),
                "{header}: request {i} after the odd header: {r:?}"
            );
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        for i in 0..50 {
            let r = bounded(send(&mut svc)).await;
            assert!(r.is_ok(), "{header}: request {i} an hour later: {r:?}");
        }
        assert_eq!(provider.arrivals().len(), 56);
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_with_no_quota_does_not_shut_the_key() {
    let provider = Scripted::new(|n| match n {
        0 => answer(
            200,
            &[
                ("ratelimit-policy", r#""default";q=0;w=60"#),
                ("ratelimit", r#""default";r=0;t=60"#),
            ],
            "{}",
        ),
        _ => ok(),
    });
    let mut svc = LlmLayer::new(Provider::Generic)
        .requests_per_minute(100)
        .layer(provider.clone());
    send(&mut svc).await.unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    for i in 0..20 {
        let r = bounded(send(&mut svc)).await;
        assert!(r.is_ok(), "request {i} an hour later: {r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_day_long_retry_after_fails_the_next_request_with_the_wait_not_a_hang() {
    let provider = Scripted::new(|n| match n {
        0 => answer(
            429,
            &[("retry-after", "86400")],
            r#"{"error":{"message":"Rate limit reached for requests per day","type":"requests","code":"rate_limit_exceeded"}}"#,
        ),
        _ => ok(),
    });
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .layer(provider.clone());
    let first = send(&mut svc).await.unwrap_err();
    assert!(first.is_rate_limited(), "{first:?}");
    let start = Instant::now();
    let next = bounded(send(&mut svc)).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(next.is_rate_limited(), "{next:?}");
    let wait = next.retry_after().expect("the server's wait");
    assert!(wait > Duration::from_secs(23 * 3600), "{wait:?}");
    assert_eq!(
        provider.arrivals().len(),
        1,
        "nothing sent through the gate"
    );
}

#[tokio::test(start_paused = true)]
async fn one_permission_error_ends_that_request_only() {
    let provider = Scripted::new(|n| match n {
        0 => answer(
            403,
            &[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("request-id", "req_1"),
            ],
            r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
        ),
        _ => answer(200, &[("anthropic-ratelimit-requests-limit", "50")], "{}"),
    });
    let mut svc = LlmLayer::new(Provider::Anthropic)
        .requests_per_minute(50)
        .layer(provider.clone());
    let denied = send(&mut svc).await.unwrap_err();
    assert!(denied.is_auth() && !denied.is_circuit_open(), "{denied:?}");
    for i in 0..10 {
        let r = send(&mut svc).await;
        assert!(r.is_ok(), "request {i} after one 403: {r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_api_key_still_opens_the_breaker() {
    let provider = Scripted::new(|_| {
        answer(
            401,
            &[],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        )
    });
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .layer(provider.clone());
    let first = send(&mut svc).await.unwrap_err();
    assert!(first.is_auth(), "{first:?}");
    let next = send(&mut svc).await.unwrap_err();
    assert!(next.is_circuit_open() && next.is_auth(), "{next:?}");
    assert_eq!(provider.arrivals().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_gate_closed_after_a_waiter_was_booked_holds_that_waiter() {
    // 2 requests per 10 s, answers after 1 s; the second answer is a 429
    // asking for 30 s
    let provider = Scripted::new(|_| ok()).latency(Duration::from_secs(1));
    let limits = tower_llm_resilience::rate_limit::Limits::new().window(
        tower_llm_resilience::rate_limit::Dimension::Requests,
        Duration::from_secs(10),
        2,
    );
    let svc = LlmLayer::new(Provider::OpenAi)
        .limits(limits)
        .retry(|r| {
            r.max_attempts(1)
                .max_attempts_for(tower_llm_resilience::ErrorClass::RateLimited, 1)
        })
        .layer(provider.clone());
    let start = Instant::now();
    // the first two go at 0 and 10 ms; the third is booked at 10 s; at
    // 1.01 s the second's 429 closes the gate until 31.01 s
    let mut calls = Vec::new();
    for i in 0..3 {
        let mut svc = svc.clone();
        let mut request = chat();
        if i == 1 {
            request
                .headers_mut()
                .insert("x-test-answer", "429-30".parse().unwrap());
        }
        calls.push(tokio::spawn(async move {
            svc.ready().await?.call(request).await
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(bounded(call).await.unwrap());
    }
    assert!(results[0].is_ok());
    assert!(
        results[1].as_ref().unwrap_err().is_rate_limited(),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let arrivals = provider.arrivals();
    assert_eq!(arrivals.len(), 3);
    assert!(
        arrivals[2] - start >= Duration::from_millis(31_010),
        "the booked waiter went through the gate at {:?}",
        arrivals[2] - start
    );
}

#[tokio::test(start_paused = true)]
async fn the_stack_bounds_a_gate_wait_where_it_is_told() {
    let provider = Scripted::new(|n| match n {
        0 => answer(
            429,
            &[("retry-after", "30")],
            r#"{"error":{"code":"rate_limit_exceeded"}}"#,
        ),
        _ => ok(),
    });
    let layer = |gate: Option<Duration>| {
        let l = LlmLayer::new(Provider::OpenAi)
            .requests_per_minute(100)
            .retry(|r| r.max_attempts_for(tower_llm_resilience::ErrorClass::RateLimited, 1));
        match gate {
            Some(d) => l.max_gate_wait(d),
            None => l,
        }
    };
    // told 10 s: the next request fails at once with the server's wait
    let mut svc = layer(Some(Duration::from_secs(10))).layer(provider.clone());
    assert!(send(&mut svc).await.unwrap_err().is_rate_limited());
    let start = Instant::now();
    let next = bounded(send(&mut svc)).await.unwrap_err();
    assert!(next.is_rate_limit_timeout() && start.elapsed() < Duration::from_secs(1));
    assert!(
        next.retry_after().unwrap() >= Duration::from_secs(29),
        "{next:?}"
    );
    // by default (60 s) the next request waits the 30 s out, then goes
    let provider = Scripted::new(provider.script);
    let mut svc = layer(None).layer(provider.clone());
    assert!(send(&mut svc).await.unwrap_err().is_rate_limited());
    let start = Instant::now();
    assert!(bounded(send(&mut svc)).await.is_ok());
    assert!(start.elapsed() >= Duration::from_secs(30));
}
