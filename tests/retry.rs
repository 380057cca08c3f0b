//! Paused-time tests of the retry layer with `tower_test::mock`.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::{Classifier, Provider};
use tower_llm_resilience::events::{Event, Events};
use tower_llm_resilience::retry::{Backoff, BufferBodyLayer, Jitter, RetryBudget, RetryLayer};
use tower_llm_resilience::{Error, ErrorClass};
use tower_test::mock;

mod support;

use support::response;

type Mock = mock::Mock<Request<String>, Response<String>>;
type Handle = mock::Handle<Request<String>, Response<String>>;

#[derive(Clone)]
enum Reply {
    Status(u16, &'static [(&'static str, &'static str)]),
    /// A response classified with its body, as `ClassifyLayer` would.
    Body(u16, &'static str),
    Io(io::ErrorKind),
}

fn request() -> Request<String> {
    Request::post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(r#"{"model":"m"}"#.to_string())
        .unwrap()
}

/// Deterministic backoff: 1 s, 2 s, 4 s...
fn quiet() -> RetryLayer {
    RetryLayer::new()
        .seed(1)
        .backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).jitter(Jitter::None))
}

/// Runs one request through `layer` over a mock, answering the attempts with
/// `replies` in order; returns the result and when each attempt arrived
/// (relative to the start). Fails if an expected attempt never arrives or
/// an unexpected one does.
async fn run(
    layer: RetryLayer,
    replies: Vec<Reply>,
) -> (Result<Response<String>, Error>, Vec<Duration>) {
    let (service, mut handle): (Mock, Handle) = mock::pair();
    let service = layer.layer(service);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let mut arrivals = Vec::new();
    for reply in replies {
        let (_req, send) = tokio::time::timeout(Duration::from_secs(3600), handle.next_request())
            .await
            .expect("an attempt was expected")
            .unwrap();
        arrivals.push(start.elapsed());
        match reply {
            Reply::Status(status, headers) => send.send_response(response(status, headers)),
            Reply::Body(status, body) => {
                let mut r = response(status, &[]);
                let c = Provider::OpenAi.classify(r.status(), r.headers(), Some(body.as_bytes()));
                r.extensions_mut().insert(c);
                send.send_response(r)
            }
            Reply::Io(kind) => send.send_error(io::Error::new(kind, "io")),
        }
    }
    let result = call.await.unwrap();
    // The call is over and its service dropped: no further attempt.
    assert!(handle.next_request().await.is_none());
    (result, arrivals)
}

#[tokio::test(start_paused = true)]
async fn retryable_classes_are_retried() {
    for status in [429u16, 500, 502, 503, 504, 529, 408] {
        let (result, arrivals) = run(
            quiet(),
            vec![Reply::Status(status, &[]), Reply::Status(200, &[])],
        )
        .await;
        assert_eq!(result.unwrap().status(), 200, "status {status}");
        assert_eq!(arrivals.len(), 2);
        assert_eq!(
            arrivals[1],
            Duration::from_secs(1),
            "backoff, status {status}"
        );
    }
    for kind in [io::ErrorKind::ConnectionRefused, io::ErrorKind::TimedOut] {
        let (result, arrivals) = run(quiet(), vec![Reply::Io(kind), Reply::Status(200, &[])]).await;
        assert!(result.is_ok(), "{kind:?}");
        assert_eq!(arrivals.len(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn other_classes_are_not_retried() {
    let cases: [(Reply, ErrorClass); 6] = [
        (Reply::Status(400, &[]), ErrorClass::InvalidRequest),
        (Reply::Status(401, &[]), ErrorClass::Auth),
        (Reply::Status(403, &[]), ErrorClass::Permission),
        (Reply::Status(404, &[]), ErrorClass::NotFound),
        (
            Reply::Body(
                429,
                r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
            ),
            ErrorClass::QuotaExhausted,
        ),
        (
            Reply::Body(
                400,
                r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#,
            ),
            ErrorClass::ContextLengthExceeded,
        ),
    ];
    for (reply, class) in cases {
        let start = Instant::now();
        let (result, arrivals) = run(quiet(), vec![reply]).await;
        let err = result.unwrap_err();
        assert_eq!(err.class(), class);
        assert!(err.is_response() && !err.is_retryable());
        assert_eq!(arrivals.len(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
    // A transport error of class `other` is not retried either.
    let (result, arrivals) = run(quiet(), vec![Reply::Io(io::ErrorKind::InvalidInput)]).await;
    assert!(!result.unwrap_err().is_retryable());
    assert_eq!(arrivals.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_is_waited_not_the_backoff() {
    let ms: &'static [(&str, &str)] = &[("retry-after-ms", "1500")];
    // Exactly the server's wait without jitter...
    let (result, arrivals) = run(
        quiet().server_jitter(0.0),
        vec![Reply::Status(429, ms), Reply::Status(200, &[])],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(arrivals[1], Duration::from_millis(1500));
    // ...and within the documented jitter bound (+10 %) with it.
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let (_, arrivals) = run(
            quiet().seed(seed),
            vec![Reply::Status(429, ms), Reply::Status(200, &[])],
        )
        .await;
        assert!(
            arrivals[1] >= Duration::from_millis(1500),
            "{:?}",
            arrivals[1]
        );
        assert!(
            arrivals[1] <= Duration::from_millis(1650),
            "{:?}",
            arrivals[1]
        );
        distinct.insert(arrivals[1]);
    }
    assert!(distinct.len() > 10, "jitter spreads the clients");
}

#[tokio::test(start_paused = true)]
async fn retry_after_above_the_cap_fails_at_once_with_the_wait() {
    let start = Instant::now();
    let (result, arrivals) = run(
        quiet().max_retry_after(Duration::from_secs(60)),
        vec![Reply::Status(429, &[("retry-after", "120")])],
    )
    .await;
    let err = result.unwrap_err();
    assert!(err.is_retry_after_too_long() && err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(arrivals.len(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_past_the_deadline() {
    // Waits of 1 s then 2 s: the third attempt would start at 3 s > 2.5 s.
    let start = Instant::now();
    let (result, arrivals) = run(
        quiet().deadline(Duration::from_millis(2500)),
        vec![Reply::Status(503, &[]), Reply::Status(503, &[])],
    )
    .await;
    let err = result.unwrap_err();
    assert!(err.is_deadline_exceeded() && err.is_overloaded());
    assert_eq!(arrivals, [Duration::ZERO, Duration::from_secs(1)]);
    // It gave up at once instead of sleeping towards the deadline.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn max_attempts_per_class() {
    let layer = quiet()
        .max_attempts(2)
        .max_attempts_for(ErrorClass::RateLimited, 4);
    let (result, arrivals) = run(layer.clone(), vec![Reply::Status(500, &[]); 2]).await;
    let err = result.unwrap_err();
    assert!(err.is_server_error() && err.is_response());
    assert_eq!(arrivals.len(), 2);
    let (result, arrivals) = run(layer, vec![Reply::Status(429, &[]); 4]).await;
    assert!(result.unwrap_err().is_rate_limited());
    assert_eq!(arrivals.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_overrides_the_status() {
    let (result, arrivals) = run(
        quiet(),
        vec![Reply::Status(503, &[("x-should-retry", "false")])],
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(arrivals.len(), 1);
    let (result, arrivals) = run(
        quiet(),
        vec![
            Reply::Status(400, &[("x-should-retry", "true")]),
            Reply::Status(200, &[]),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(arrivals.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn predicate_replaces_the_rule() {
    let layer = quiet().retry_if(|c| c.class == Some(ErrorClass::NotFound));
    let (result, arrivals) = run(
        layer.clone(),
        vec![Reply::Status(404, &[]), Reply::Status(200, &[])],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(arrivals.len(), 2);
    let (result, arrivals) = run(layer, vec![Reply::Status(503, &[])]).await;
    assert!(result.unwrap_err().is_overloaded());
    assert_eq!(arrivals.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn budget_caps_retries_under_an_outage() {
    let calls = Arc::new(AtomicUsize::new(0));
    let outage = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<String>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(response(503, &[])) }
        })
    };
    let budget = RetryBudget::new(Duration::from_secs(10), 0.1, 0);
    let service = quiet().budget(budget).layer(outage);
    let results =
        futures::future::join_all((0..100).map(|_| service.clone().oneshot(request()))).await;
    let exhausted = results
        .iter()
        .filter(|r| r.as_ref().unwrap_err().is_retry_budget_exhausted())
        .count();
    let sent = calls.load(Ordering::Relaxed);
    // 100 requests, at most 10 % more attempts (without a budget: 400).
    assert!((100..=110).contains(&sent), "{sent}");
    assert!(exhausted >= 90, "{exhausted}");
    let err = results[0].as_ref().unwrap_err();
    assert!(err.is_overloaded() && err.status() == Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test(start_paused = true)]
async fn events_and_spike_alert() {
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let log = gave_up.clone();
    let events = Events::new().with_listener(move |e| {
        if let Event::RetryGaveUp {
            reason, attempts, ..
        } = e
        {
            log.lock().unwrap().push((*reason, *attempts));
        }
    });
    let spikes = Arc::new(AtomicUsize::new(0));
    let seen = spikes.clone();
    let layer = quiet()
        .max_attempts(3)
        .events(events.clone())
        .on_retry_spike(2, Duration::from_secs(60), move |spike| {
            assert_eq!(spike.retries, 2);
            seen.fetch_add(1, Ordering::Relaxed);
        });
    let (result, _) = run(
        layer.clone(),
        vec![
            Reply::Status(503, &[("retry-after-ms", "1500")]),
            Reply::Status(503, &[]),
            Reply::Status(503, &[]),
        ],
    )
    .await;
    assert!(result.unwrap_err().is_overloaded());
    let s = events.counters().snapshot();
    assert_eq!((s.retries, s.retries_server_chose, s.gave_up), (2, 1, 1));
    assert_eq!(*gave_up.lock().unwrap(), [("max_attempts", 3)]);
    assert_eq!(spikes.load(Ordering::Relaxed), 1);
    // The spike fires once per window, not for every retry after it.
    let (_, _) = run(
        layer.clone(),
        vec![Reply::Status(503, &[]), Reply::Status(200, &[])],
    )
    .await;
    assert_eq!(spikes.load(Ordering::Relaxed), 1);
    // A plain non-retryable failure is not a retry giving up.
    let (_, _) = run(layer, vec![Reply::Status(400, &[])]).await;
    assert_eq!(events.counters().snapshot().gave_up, 1);
}

#[tokio::test(start_paused = true)]
async fn cloneable_body_is_replayed_whole() {
    let (service, mut handle) = mock::pair::<Request<Bytes>, Response<String>>();
    let service = quiet().layer(service);
    let mut req = Request::post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "secret")
        .body(Bytes::from_static(b"{\"max_tokens\":10}"))
        .unwrap();
    req.extensions_mut().insert(42u32);
    let call = tokio::spawn(service.oneshot(req));
    let (first, send) = handle.next_request().await.unwrap();
    send.send_response(response(529, &[]));
    let (second, send) = handle.next_request().await.unwrap();
    send.send_response(response(200, &[]));
    assert!(call.await.unwrap().is_ok());
    assert_eq!(second.body(), first.body());
    assert_eq!(second.headers(), first.headers());
    assert_eq!(second.uri(), first.uri());
    assert_eq!(second.method(), first.method());
    assert_eq!(second.extensions().get::<u32>(), Some(&42));
}

type Boxed = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[tokio::test(start_paused = true)]
async fn buffered_body_is_replayed() {
    let (service, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<String>>();
    let service = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(1024))
        .layer(quiet())
        .service(service);
    // A body that is not Clone.
    let body: Boxed = Full::new(Bytes::from_static(b"stream me")).boxed();
    let call = tokio::spawn(service.oneshot(Request::post("/v1/x").body(body).unwrap()));
    let (first, send) = handle.next_request().await.unwrap();
    send.send_response(response(500, &[]));
    let (second, send) = handle.next_request().await.unwrap();
    send.send_response(response(200, &[]));
    assert!(call.await.unwrap().is_ok());
    for r in [first, second] {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"stream me");
    }
}

#[tokio::test(start_paused = true)]
async fn body_above_the_cap_is_a_clear_error() {
    let (service, mut handle) = mock::pair::<Request<Full<Bytes>>, Response<String>>();
    let service = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(4))
        .layer(quiet())
        .service(service);
    let body: Boxed = Full::new(Bytes::from_static(b"far too long")).boxed();
    let err = service
        .oneshot(Request::post("/v1/x").body(body).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_body_too_large() && !err.is_retryable());
    // Nothing reached the provider.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn policy_works_with_towers_retry() {
    let (service, mut handle): (Mock, Handle) = mock::pair();
    let policy = quiet().policy();
    let service = tower::retry::RetryLayer::new(policy).layer(service);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(response(429, &[("retry-after-ms", "1500")]));
    let (_, send) = handle.next_request().await.unwrap();
    let at = start.elapsed();
    assert!(
        at >= Duration::from_millis(1500) && at <= Duration::from_millis(1650),
        "{at:?}"
    );
    send.send_response(response(404, &[]));
    // tower's Retry hands back the final response as it is.
    assert_eq!(call.await.unwrap().unwrap().status(), 404);
}

#[tokio::test(start_paused = true)]
async fn policy_respects_max_attempts_and_the_cap() {
    let (service, mut handle): (Mock, Handle) = mock::pair();
    let service = tower::retry::RetryLayer::new(quiet().max_attempts(2).policy()).layer(service);
    let call = tokio::spawn(service.clone().oneshot(request()));
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(response(502, &[]));
    }
    assert_eq!(call.await.unwrap().unwrap().status(), 502);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(response(429, &[("retry-after", "3600")]));
    assert_eq!(call.await.unwrap().unwrap().status(), 429);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_short_server_wait_is_a_floor_under_the_backoff() {
    // The server says 100 ms, the backoff says 1 s then 2 s: the backoff wins,
    // so a request refused again does not burn its attempts at once.
    let ms: &'static [(&str, &str)] = &[("retry-after-ms", "100")];
    let (result, arrivals) = run(
        quiet(),
        vec![
            Reply::Status(429, ms),
            Reply::Status(429, ms),
            Reply::Status(200, &[]),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        arrivals,
        [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(3)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn every_retry_waits_for_the_inner_service_to_be_ready() {
    // Inside the stack, the inner service is the rate limiter: a retry must
    // take a permit (poll_ready) like the first attempt.
    let (service, mut handle): (Mock, Handle) = mock::pair();
    handle.allow(1);
    let mut service = quiet().layer(service);
    let start = Instant::now();
    service.ready().await.unwrap();
    let call = tokio::spawn(service.call(request()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(response(503, &[]));
    // The backoff (1 s) passes, but no permit: no attempt.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!call.is_finished());
    handle.allow(1);
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    send.send_response(response(200, &[]));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_typed_error_keeps_the_transport_failure_as_its_source() {
    let (result, arrivals) = run(
        quiet().deadline(Duration::from_millis(500)),
        vec![Reply::Io(io::ErrorKind::ConnectionReset)],
    )
    .await;
    let err = result.unwrap_err();
    assert!(err.is_deadline_exceeded() && err.is_connect());
    // The chain leads to the io error.
    let mut next = std::error::Error::source(&err);
    let mut found = false;
    while let Some(e) = next {
        found |= e
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionReset);
        next = e.source();
    }
    assert!(found, "{err:?}");
    assert_eq!(arrivals.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn policy_in_towers_retry_honours_the_deadline() {
    let (service, mut handle): (Mock, Handle) = mock::pair();
    let policy = quiet().deadline(Duration::from_millis(2500)).policy();
    let service = tower::retry::RetryLayer::new(policy).layer(service);
    let start = Instant::now();
    let call = tokio::spawn(service.oneshot(request()));
    for at in [0, 1] {
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(at));
        send.send_response(response(500, &[]));
    }
    // the third attempt would start at 3 s: the last 500 comes back at 1 s
    assert_eq!(call.await.unwrap().unwrap().status(), 500);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// 100 concurrent requests over a provider that answers the first
/// `failing` attempts with `status` and `headers`, then 200, through
/// `layer` with a budget that allows 10 % more attempts. Returns how many
/// attempts reached the provider and how many requests ended with the
/// budget spent.
async fn under_budget(
    layer: RetryLayer,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    failing: usize,
) -> (usize, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let provider = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<String>| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let r = if n < failing {
                response(status, headers)
            } else {
                response(200, &[])
            };
            async move { Ok::<_, Infallible>(r) }
        })
    };
    let budget = RetryBudget::new(Duration::from_secs(10), 0.1, 0);
    let service = layer.budget(budget).layer(provider);
    let results =
        futures::future::join_all((0..100).map(|_| service.clone().oneshot(request()))).await;
    let exhausted = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.is_retry_budget_exhausted()))
        .count();
    (calls.load(Ordering::Relaxed), exhausted)
}

/// Issue #11, finding 2: a `Retry-After` exempts a retry from the budget
/// only when it paces traffic: a rate-limited answer with a wait above the
/// floor. 503s with `retry-after: 0` (or any wait) draw from it, and so
/// do 429s with `retry-after: 0`; 429s with `retry-after: 2` do not.
#[tokio::test(start_paused = true)]
async fn any_retry_after_even_0_no_longer_bypasses_the_retry_budget() {
    let budgeted = |sent: usize, exhausted: usize| (100..=110).contains(&sent) && exhausted >= 90;
    for headers in [&[("retry-after", "0")][..], &[("retry-after", "2")][..]] {
        let (sent, exhausted) = under_budget(quiet(), 503, headers, usize::MAX).await;
        // Without the budget: 400 attempts.
        assert!(
            budgeted(sent, exhausted),
            "503 {headers:?}: {sent}, {exhausted}"
        );
    }
    let (sent, exhausted) = under_budget(quiet(), 429, &[("retry-after", "0")], usize::MAX).await;
    assert!(
        budgeted(sent, exhausted),
        "429 retry-after 0: {sent}, {exhausted}"
    );
    // 429s with `retry-after: 2`: the server paces them, none is refused
    // by the budget (two refusals each, then success).
    let (sent, exhausted) = under_budget(quiet(), 429, &[("retry-after", "2")], 200).await;
    assert_eq!((sent, exhausted), (300, 0));
    // A sliding window's precise short wait paces too, by default...
    let short = &[("retry-after-ms", "10")];
    let (sent, exhausted) = under_budget(quiet(), 429, short, 200).await;
    assert_eq!((sent, exhausted), (300, 0));
    // ...unless the floor is raised.
    let strict = quiet().budget_exempt_retry_after(Duration::from_secs(1));
    let (sent, exhausted) = under_budget(strict, 429, short, usize::MAX).await;
    assert!(budgeted(sent, exhausted), "{sent}, {exhausted}");
    let strict = quiet().budget_exempt_retry_after(Duration::from_secs(1));
    let (sent, exhausted) = under_budget(strict, 429, &[("retry-after", "2")], 200).await;
    assert_eq!((sent, exhausted), (300, 0));
}

/// A body that counts its copies.
#[derive(Debug)]
struct CountedBody(Arc<AtomicUsize>);

impl Clone for CountedBody {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::Relaxed);
        CountedBody(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_is_sent_without_a_copy() {
    let copies = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: Request<CountedBody>| {
        seen.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(response(503, &[])) }
    });
    let events = Events::new();
    // At most 3 attempts for every class (a 429 may make 10 by default).
    let mut svc = RetryLayer::new()
        .max_attempts(3)
        .max_attempts_for(ErrorClass::RateLimited, 3)
        .max_attempts_for(ErrorClass::SlowDown, 3)
        .no_budget()
        .events(events.clone())
        .layer(inner);
    let result = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(CountedBody(copies.clone())))
        .await;
    assert!(result.is_err());
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    // A copy before the first attempt and before the second; the third is
    // the last any class may make: the copy is sent, not copied again.
    assert_eq!(copies.load(Ordering::Relaxed), 2);
    let summary = events.counters().snapshot();
    assert_eq!(summary.retries, 2);
    assert_eq!(summary.gave_up, 1, "giving up is still reported");
}

#[tokio::test(start_paused = true)]
async fn a_policy_that_never_retries_makes_no_copy() {
    let copies = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn(|_: Request<CountedBody>| async {
        Ok::<_, Infallible>(response(503, &[]))
    });
    let policy = RetryLayer::new()
        .max_attempts(1)
        .max_attempts_for(ErrorClass::RateLimited, 1)
        .max_attempts_for(ErrorClass::SlowDown, 1)
        .policy();
    let mut svc = tower::retry::RetryLayer::new(policy).layer(inner);
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(CountedBody(copies.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(copies.load(Ordering::Relaxed), 0);
}
