//! The breaker as a tower service, under paused time: every transition,
//! what counts as a failure, quota and auth, keys, probes and bounds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, FailureWindow};
use tower_llm_resilience::classify::{
    Classification, ClassifyLayer, PeekedBody, ReportedLimit, ReportedLimits,
};
use tower_llm_resilience::events::{CircuitState, Event, Events};
use tower_llm_resilience::key::SingleKey;
use tower_llm_resilience::{BoxError, Error, ErrorClass, Key, Provider};

type Req = Request<String>;

fn req() -> Req {
    Request::new(String::new())
}

fn req_for(model: &'static str) -> Req {
    Request::builder()
        .header("x-model", model)
        .body(String::new())
        .unwrap()
}

fn by_model(req: &Req) -> Key {
    match req.headers().get("x-model").and_then(|v| v.to_str().ok()) {
        Some(m) => Key::new(m),
        None => Key::DEFAULT,
    }
}

fn response(status: u16) -> Response<String> {
    Response::builder()
        .status(status)
        .body(String::new())
        .unwrap()
}

/// A provider whose next answers are set by the test, counting the calls
/// that reached it.
#[derive(Clone, Default)]
struct Scripted {
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
    calls: Arc<AtomicU32>,
}

impl Scripted {
    fn new(status: u16) -> Self {
        let s = Scripted::default();
        s.set(status);
        s
    }
    fn set(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(&self) -> BoxCloneService<Req, Response<String>, BoxError> {
        let this = self.clone();
        BoxCloneService::new(service_fn(move |_req: Req| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let delay = *this.delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let status = *this.status.lock().unwrap();
                Ok::<_, BoxError>(response(status))
            }
        }))
    }
}

/// Transitions seen by an events listener, as (from, to, class).
type Seen = Arc<Mutex<Vec<(CircuitState, CircuitState, Option<ErrorClass>)>>>;

fn recording() -> (Events, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let events = Events::new().with_listener(move |e| {
        if let Event::CircuitTransition {
            from, to, class, ..
        } = e
        {
            log.lock().unwrap().push((*from, *to, *class));
        }
    });
    (events, seen)
}

fn small() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .window(FailureWindow::Count(10))
        .minimum_calls(5)
        .failure_rate(0.5)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(2)
}

async fn send<S, B>(svc: &mut S, r: Req) -> Result<Response<B>, Error>
where
    S: Service<Req, Response = Response<B>, Error = Error>,
{
    svc.ready().await?.call(r).await
}

#[tokio::test(start_paused = true)]
async fn opens_on_failure_rate_but_not_before_minimum_calls() {
    let provider = Scripted::new(503);
    let (events, seen) = recording();
    let mut svc = small().events(events).layer(provider.service());
    for i in 0..4 {
        let r = send(&mut svc, req()).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "passed on as it is"
        );
        assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed, "call {i}");
    }
    send(&mut svc, req()).await.unwrap(); // the 5th failure: the minimum
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Overloaded);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(
        provider.calls(),
        5,
        "the rejected call never reached the provider"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(
            CircuitState::Closed,
            CircuitState::Open,
            Some(ErrorClass::Overloaded)
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_below_the_threshold_keeps_it_closed() {
    let provider = Scripted::new(200);
    let mut svc = small().layer(provider.service());
    // 4 failures in every 10 calls: 40 % < 50 %.
    for i in 0..100 {
        provider.set(if [4, 6, 8, 9].contains(&(i % 10)) {
            500
        } else {
            200
        });
        send(&mut svc, req()).await.unwrap();
        assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed, "call {i}");
    }
    assert_eq!(provider.calls(), 100);
}

#[tokio::test(start_paused = true)]
async fn opens_on_slow_call_rate() {
    let provider = Scripted::new(200);
    *provider.delay.lock().unwrap() = Duration::from_secs(3);
    let mut svc = small()
        .slow_call_rate(0.8)
        .slow_call_duration(Duration::from_secs(2))
        .layer(provider.service());
    for _ in 0..4 {
        send(&mut svc, req()).await.unwrap();
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(
        err.class(),
        ErrorClass::Timeout,
        "slow calls open it as timeouts"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_calls_are_not_slow() {
    let provider = Scripted::new(200);
    *provider.delay.lock().unwrap() = Duration::from_millis(1_999);
    let mut svc = small()
        .slow_call_rate(0.5)
        .slow_call_duration(Duration::from_secs(2))
        .layer(provider.service());
    for _ in 0..20 {
        send(&mut svc, req()).await.unwrap();
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

async fn trip<S, B>(svc: &mut S)
where
    S: Service<Req, Response = Response<B>, Error = Error>,
{
    for _ in 0..5 {
        send(svc, req()).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn half_opens_after_the_open_duration_and_closes_when_probes_succeed() {
    let provider = Scripted::new(500);
    let (events, seen) = recording();
    let mut svc = small().events(events).layer(provider.service());
    trip(&mut svc).await;
    advance(Duration::from_millis(9_999)).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1)));
    assert_eq!(provider.calls(), 5);

    advance(Duration::from_millis(1)).await;
    provider.set(200);
    send(&mut svc, req()).await.unwrap(); // probe 1 of 2
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    send(&mut svc, req()).await.unwrap(); // probe 2: closes
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(provider.calls(), 7);
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Closed, Open, Some(ErrorClass::ServerError)),
            (Open, HalfOpen, None),
            (HalfOpen, Closed, None),
        ]
    );
    // Closed again with a fresh window: 4 failures do not reopen it.
    provider.set(500);
    for _ in 0..4 {
        send(&mut svc, req()).await.unwrap();
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_longer_with_backoff() {
    let provider = Scripted::new(500);
    let mut svc = small()
        .open_backoff(2.0, Duration::from_secs(25))
        .layer(provider.service());
    trip(&mut svc).await;
    let mut expected = [10, 20, 25, 25].into_iter().map(Duration::from_secs);
    let mut open_for = expected.next().unwrap();
    for next in expected {
        advance(open_for).await;
        send(&mut svc, req()).await.unwrap(); // the probe fails
        assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
        let err = send(&mut svc, req()).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(next), "grown, then capped");
        open_for = next;
    }
    // Once it closes, the open duration falls back to the base.
    advance(open_for).await;
    provider.set(200);
    send(&mut svc, req()).await.unwrap();
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    provider.set(500);
    trip(&mut svc).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_caller_errors_never_opens_it() {
    let provider = Scripted::new(400);
    let mut svc = small().layer(provider.service());
    for status in [400, 404, 413, 422] {
        provider.set(status);
        for _ in 0..250 {
            let r = send(&mut svc, req()).await.unwrap();
            assert_eq!(r.status().as_u16(), status);
        }
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(provider.calls(), 1_000);
    // Neither do 429s (the limiter's job) by default...
    provider.set(429);
    for _ in 0..50 {
        send(&mut svc, req()).await.unwrap();
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn context_length_errors_from_the_body_do_not_count() {
    let body = r#"{"error":{"message":"This model's maximum context length is 128000 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let provider = service_fn(move |_req: Req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(400)
                    .body(body.to_string())
                    .unwrap(),
            )
        }
    });
    let mut svc = small().layer(
        ClassifyLayer::new()
            .classifier(Provider::OpenAi)
            .layer(provider),
    );
    for _ in 0..100 {
        let r = send(&mut svc, req()).await.unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_count_when_asked() {
    let provider = Scripted::new(429);
    let mut svc = small().count_rate_limited(true).layer(provider.service());
    trip(&mut svc).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn one_insufficient_quota_opens_it_at_once_until_the_reset() {
    let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let provider = service_fn(move |_req: Req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let r = if n == 0 {
                Response::builder()
                    .status(429)
                    .header("retry-after", "3600")
                    .body(body.to_string())
                    .unwrap()
            } else {
                response(200)
            };
            Ok::<_, BoxError>(r)
        }
    });
    let quota = Arc::new(Mutex::new(Vec::new()));
    let log = quota.clone();
    let events = Events::new().with_listener(move |e| {
        if let Event::QuotaExhausted { until, .. } = e {
            log.lock().unwrap().push(*until);
        }
    });
    let mut svc = small().events(events.clone()).layer(
        ClassifyLayer::new()
            .classifier(Provider::OpenAi)
            .layer(provider),
    );
    let r = send(&mut svc, req()).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        svc.state(&Key::DEFAULT),
        CircuitState::Open,
        "at once, no minimum"
    );
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.is_quota_exhausted(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(
        *quota.lock().unwrap(),
        vec![Some(Duration::from_secs(3600))]
    );
    assert_eq!(events.counters().snapshot().quota_exhausted, 1);

    advance(Duration::from_secs(3599)).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    advance(Duration::from_secs(1)).await;
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_quota_error_uses_the_spent_limit_reset_or_the_configured_time() {
    // An `Err` (as the retry layer returns one) whose only hint is the
    // reset of the spent token limit.
    let with_reset = Arc::new(AtomicU32::new(1));
    let flag = with_reset.clone();
    let provider = service_fn(move |_req: Req| {
        let with_reset = flag.load(Ordering::SeqCst) == 1;
        async move {
            let mut c = Classification::failure(ErrorClass::QuotaExhausted);
            if with_reset {
                let mut limits = ReportedLimits::EMPTY;
                limits.requests = Some(ReportedLimit::new(
                    Some(100),
                    Some(3),
                    Some(Duration::from_secs(5)),
                ));
                limits.tokens = Some(ReportedLimit::new(
                    Some(1000),
                    Some(0),
                    Some(Duration::from_secs(90)),
                ));
                c.limits = limits;
            }
            Err::<Response<String>, BoxError>(Error::from_response(c).into())
        }
    });
    let mut svc = small()
        .quota_open_duration(Duration::from_secs(600))
        .layer(provider);
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_quota_exhausted() && !err.is_circuit_open());
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)));

    advance(Duration::from_secs(90)).await;
    with_reset.store(0, Ordering::SeqCst);
    let err = send(&mut svc, req()).await.unwrap_err(); // the probe: still no quota
    assert!(!err.is_circuit_open());
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.is_quota_exhausted());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
}

#[tokio::test(start_paused = true)]
async fn auth_failures_open_it_at_once() {
    let provider = Scripted::new(401);
    let mut svc = small()
        .auth_open_duration(Duration::from_secs(120))
        .layer(provider.service());
    send(&mut svc, req()).await.unwrap();
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.is_auth(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    let provider = Scripted::new(401);
    let mut svc = small().layer(provider.service());
    send(&mut svc, req()).await.unwrap();
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(300)),
        "the default"
    );
    // 403 (permission) does not: see `one_403_does_not_lock_everybody_out`.
    let provider = Scripted::new(403);
    let mut svc = small().layer(provider.service());
    send(&mut svc, req()).await.unwrap();
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 403);
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_count_by_their_class() {
    let provider = service_fn(|_req: Req| async {
        Err::<Response<String>, BoxError>(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(),
        )
    });
    let mut svc = small().layer(provider);
    for _ in 0..5 {
        let err = send(&mut svc, req()).await.unwrap_err();
        assert!(err.is_connect() && err.is_transport());
    }
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.is_connect());
}

#[tokio::test(start_paused = true)]
async fn keys_are_isolated_and_clones_share_the_breakers() {
    let a = Scripted::new(500);
    let calls = Arc::new(AtomicU32::new(0));
    let (failing, seen) = (a.service(), calls.clone());
    let provider = service_fn(move |r: Req| {
        let mut failing = failing.clone();
        let model_a = r.headers().get("x-model").is_some_and(|v| v == "a");
        seen.fetch_add(u32::from(!model_a), Ordering::SeqCst);
        async move {
            if model_a {
                failing.call(r).await
            } else {
                Ok(response(200))
            }
        }
    });
    let svc = small().key_fn(by_model).layer(provider);
    let mut one = svc.clone();
    let mut two = svc.clone();
    for _ in 0..5 {
        send(&mut one, req_for("a")).await.unwrap();
    }
    assert_eq!(
        two.state(&Key::from_static("a")),
        CircuitState::Open,
        "shared"
    );
    assert_eq!(two.state(&Key::from_static("b")), CircuitState::Closed);
    assert!(send(&mut two, req_for("a"))
        .await
        .unwrap_err()
        .is_circuit_open());
    for _ in 0..20 {
        send(&mut two, req_for("b")).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    assert_eq!(a.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_set_number_of_probes() {
    let (mock, mut handle) = tower_test::mock::pair::<Req, Response<String>>();
    let mut svc = small().half_open_probes(3).layer(mock);
    handle.allow(u64::MAX);
    for _ in 0..5 {
        let mut fut = task::spawn(svc.ready().await.unwrap().call(req()));
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(response(502));
        assert_ready_ok!(fut.poll());
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
    advance(Duration::from_secs(10)).await;

    // Ten concurrent calls: three probes pass, seven fail fast.
    let mut probes = Vec::new();
    let mut rejected = 0;
    for _ in 0..10 {
        let mut fut = task::spawn(svc.ready().await.unwrap().call(req()));
        match fut.poll() {
            std::task::Poll::Ready(Err(e)) => {
                assert!(e.is_circuit_open());
                assert_eq!(
                    e.retry_after(),
                    Some(Duration::from_secs(10)),
                    "half-open: until the earliest probe's deadline, at most the open duration"
                );
                rejected += 1;
            }
            std::task::Poll::Ready(Ok(_)) => panic!("no response was sent"),
            std::task::Poll::Pending => probes.push(fut),
        }
    }
    assert_eq!((probes.len(), rejected), (3, 7));
    let mut responders = Vec::new();
    for _ in 0..3 {
        responders.push(handle.next_request().await.unwrap().1);
    }
    assert_pending!(
        handle.poll_request(),
        "no fourth request reached the provider"
    );

    // A dropped probe gives its slot back: one more call passes.
    drop(probes.pop());
    let mut again = task::spawn(svc.ready().await.unwrap().call(req()));
    assert_pending!(again.poll());
    let (_, fourth) = handle.next_request().await.unwrap();
    let mut extra = task::spawn(svc.ready().await.unwrap().call(req()));
    assert!(assert_ready!(extra.poll()).unwrap_err().is_circuit_open());

    // Three successes close it.
    responders.remove(2); // the dropped probe's request: never answered
    for (respond, fut) in responders.into_iter().zip(probes.iter_mut()) {
        respond.send_response(response(200));
        assert_ready_ok!(fut.poll());
    }
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    fourth.send_response(response(200));
    assert_ready_ok!(again.poll());
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_says_nothing_gives_its_slot_back() {
    let provider = Scripted::new(500);
    let mut svc = small().half_open_probes(1).layer(provider.service());
    trip(&mut svc).await;
    advance(Duration::from_secs(10)).await;
    provider.set(400);
    for _ in 0..3 {
        // Each 400 probe frees the slot; the breaker stays half-open.
        assert_eq!(send(&mut svc, req()).await.unwrap().status(), 400);
        assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    }
    provider.set(200);
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_number_of_keys_is_bounded() {
    let provider = Scripted::new(200);
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
    let mut svc = small()
        .max_keys(4)
        .key_fn(by_model)
        .layer(provider.service());
    // Open k0's breaker: an open breaker is never forgotten.
    provider.set(401);
    send(&mut svc, req_for("k0")).await.unwrap();
    provider.set(200);
    for round in 0..3 {
        for k in &keys[1..] {
            send(&mut svc, req_for(k)).await.unwrap();
            assert!(svc.keys() <= 4, "round {round}: {} keys", svc.keys());
        }
    }
    assert_eq!(svc.state(&Key::from_static("k0")), CircuitState::Open);
    assert!(send(&mut svc, req_for("k0"))
        .await
        .unwrap_err()
        .is_circuit_open());
    assert_eq!(provider.calls(), 1 + 27);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let provider = Scripted::new(500);
    let mut svc = small()
        .window(FailureWindow::Time(Duration::from_secs(10)))
        .layer(provider.service());
    for _ in 0..4 {
        send(&mut svc, req()).await.unwrap();
    }
    advance(Duration::from_secs(11)).await;
    for _ in 0..4 {
        send(&mut svc, req()).await.unwrap();
    }
    assert_eq!(
        svc.state(&Key::DEFAULT),
        CircuitState::Closed,
        "4 + 4 apart"
    );
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_service_s() {
    let (mock, mut handle) = tower_test::mock::pair::<Req, Response<String>>();
    let mut svc: CircuitBreaker<_, SingleKey, Provider> = small().layer(mock);
    let mut ready = task::spawn(std::future::poll_fn(|cx| svc.poll_ready(cx)));
    handle.allow(0);
    assert_pending!(ready.poll());
    handle.allow(1);
    assert_ready_ok!(ready.poll());
}

#[tokio::test(start_paused = true)]
async fn a_healthy_full_window_then_an_outage() {
    // The window fills with successes (the lock-free path then skips
    // them), and each failure replaces one: 10 of 20 open it.
    let provider = Scripted::new(200);
    let mut svc = CircuitBreakerLayer::new().layer(provider.service());
    for _ in 0..50 {
        send(&mut svc, req()).await.unwrap();
    }
    provider.set(500);
    for i in 0..9 {
        send(&mut svc, req()).await.unwrap();
        assert_eq!(
            svc.state(&Key::DEFAULT),
            CircuitState::Closed,
            "failure {i}"
        );
    }
    provider.set(200);
    send(&mut svc, req()).await.unwrap(); // 9 failures in the last 20
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    provider.set(500);
    send(&mut svc, req()).await.unwrap(); // a success leaves: 10 of 20
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);
}

/// A scripted answer: status, headers, body.
type Answer = (u16, &'static [(&'static str, &'static str)], &'static str);

/// A provider whose answers, bodies included, the test scripts in order
/// (the last one repeats), classified by `provider` as `ClassifyLayer`
/// would.
fn scripted_bodies(
    provider: Provider,
    answers: Vec<Answer>,
) -> (
    impl Service<Req, Response = Response<PeekedBody<String>>, Error = BoxError, Future: Send> + Clone,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let answers = Arc::new(answers);
    let inner = service_fn(move |_req: Req| {
        let n = seen.fetch_add(1, Ordering::SeqCst) as usize;
        let (status, headers, body) = answers[n.min(answers.len() - 1)];
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.body(body.to_string()).unwrap();
        async move { Ok::<_, BoxError>(r) }
    });
    (
        ClassifyLayer::new().classifier(provider).layer(inner),
        calls,
    )
}

/// Issue #11, finding 1: a 403 `permission_error` (a model this key may not
/// use) or a 404 `model_not_found` ends that request only; the next request
/// of the key goes through. A 401 still opens the breaker.
#[tokio::test(start_paused = true)]
async fn one_403_does_not_lock_everybody_out() {
    let forbidden = r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#;
    let (inner, calls) = scripted_bodies(
        Provider::Anthropic,
        vec![(403, &[], forbidden), (200, &[], "{}")],
    );
    let mut svc = small().layer(inner);
    let r = send(&mut svc, req()).await.unwrap();
    assert_eq!(r.status(), 403, "passed on");
    assert_eq!(
        r.extensions().get::<Classification>().unwrap().class,
        Some(ErrorClass::Permission)
    );
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the next request went through"
    );

    let missing = r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    let (inner, calls) = scripted_bodies(
        Provider::OpenAi,
        vec![(404, &[], missing), (200, &[], "{}")],
    );
    let mut svc = small().layer(inner);
    let r = send(&mut svc, req()).await.unwrap();
    assert_eq!(
        r.extensions().get::<Classification>().unwrap().class,
        Some(ErrorClass::NotFound)
    );
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A storm of 403s, even as half-open probes, never opens it.
    let (inner, calls) = scripted_bodies(Provider::Anthropic, vec![(403, &[], forbidden)]);
    let mut svc = small().layer(inner);
    for _ in 0..30 {
        assert_eq!(send(&mut svc, req()).await.unwrap().status(), 403);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 30);
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);

    // An invalid API key (401) still opens it.
    let invalid =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    let (inner, calls) = scripted_bodies(Provider::Anthropic, vec![(401, &[], invalid)]);
    let mut svc = small().layer(inner);
    send(&mut svc, req()).await.unwrap();
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(
        err.is_circuit_open() && err.class() == ErrorClass::Auth,
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Issue #11, finding 3: a probe that never answers does not keep its slot
/// forever. After the probe timeout (default 5 min) it counts as a failure
/// (the circuit opens again for the open duration) and its slot is free;
/// while it runs, a rejected call learns when its deadline is; its late
/// outcome is ignored.
#[tokio::test(start_paused = true)]
async fn half_open_probes_have_a_timeout() {
    let provider = Scripted::new(500);
    let mut svc = small().half_open_probes(1).layer(provider.service());
    trip(&mut svc).await;
    advance(Duration::from_secs(10)).await;

    // The probe hangs (for an hour); its answer will be a 500.
    *provider.delay.lock().unwrap() = Duration::from_secs(3600);
    let mut hung = task::spawn(svc.ready().await.unwrap().call(req()));
    assert_pending!(hung.poll());
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    advance(Duration::from_secs(60)).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(10)),
        "until the probe's deadline (240 s), at most the open duration"
    );

    // At its deadline, the probe has failed: open again for 10 s.
    advance(Duration::from_secs(240)).await;
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Open);

    // Then a new probe is let through, and closes it.
    advance(Duration::from_secs(10)).await;
    *provider.delay.lock().unwrap() = Duration::ZERO;
    provider.set(200);
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 200);
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);

    // The hung probe's late 500 is ignored.
    provider.set(500);
    advance(Duration::from_secs(3600)).await;
    assert_eq!(assert_ready_ok!(hung.poll()).status(), 500);
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(provider.calls(), 5 + 2);

    // The state machine alone, driven by `now`, with a set timeout.
    use tower_llm_resilience::circuit_breaker::{CallOutcome, Circuit, Config};
    let config = Config::new()
        .window(FailureWindow::Count(1))
        .minimum_calls(1)
        .half_open_probes(2)
        .probe_timeout(Duration::from_secs(60));
    let t0 = tokio::time::Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut circuit = Circuit::new(config, t0);
    let (p, _) = circuit.try_acquire(t0);
    let failure = CallOutcome::failure(ErrorClass::ServerError, Duration::ZERO);
    circuit.on_result(p.unwrap(), failure, t0);
    let (first, _) = circuit.try_acquire(at(10)); // half-open
    let (second, _) = circuit.try_acquire(at(30));
    let (first, second) = (first.unwrap(), second.unwrap());
    let (full, _) = circuit.try_acquire(at(50));
    assert_eq!(
        full.unwrap_err().retry_after(),
        Some(Duration::from_secs(10)),
        "20 s to the first probe's deadline, at most the open duration (10 s)"
    );
    // The first succeeds in time; the hint moves on to the second's
    // deadline (30 s + 60 s).
    circuit.on_result(first, CallOutcome::success(Duration::ZERO), at(55));
    let (full, _) = circuit.try_acquire(at(80));
    assert_eq!(
        full.unwrap_err().retry_after(),
        Some(Duration::from_secs(10))
    );
    let (full, _) = circuit.try_acquire(at(85));
    assert_eq!(
        full.unwrap_err().retry_after(),
        Some(Duration::from_secs(5)),
        "the second's deadline is nearer than an open duration"
    );
    // The second is unanswered at its deadline (90 s): open again.
    let (rejected, t) = circuit.try_acquire(at(90));
    let rejected = rejected.unwrap_err();
    assert_eq!(rejected.class(), ErrorClass::Timeout);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(10)));
    let t = t.unwrap();
    assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
    // Its late outcome is ignored; after the open time, new probes.
    let late = CallOutcome::failure(ErrorClass::ServerError, Duration::ZERO);
    assert_eq!(circuit.on_result(second, late, at(91)), None);
    assert_eq!(circuit.state(), CircuitState::Open);
    let (probe, _) = circuit.try_acquire(at(100));
    let probe = probe.unwrap();
    assert!(probe.is_probe());

    // Noticed by an outcome too: a probe that answers at or after its
    // deadline, with nobody asking in between, has failed all the same.
    let t = circuit.on_result(probe, CallOutcome::success(Duration::ZERO), at(160));
    let t = t.unwrap();
    assert_eq!(
        (t.to, t.class),
        (CircuitState::Open, Some(ErrorClass::Timeout))
    );
    assert_eq!(circuit.state(), CircuitState::Open);
}

/// Issue #11, finding 4: an inner service that panics in `call` while the
/// breaker is half-open does not take the probe slot with it.
#[tokio::test(start_paused = true)]
async fn a_panic_in_call_does_not_leak_the_probe_slot() {
    // 0: answer 500; 1: panic in `call`; 2: answer 200.
    let mode = Arc::new(AtomicU32::new(0));
    let reached = Arc::new(AtomicU32::new(0));
    let (m, r) = (mode.clone(), reached.clone());
    let inner = service_fn(move |_req: Req| {
        r.fetch_add(1, Ordering::SeqCst);
        let status = match m.load(Ordering::SeqCst) {
            0 => 500,
            1 => panic!("the inner service panics in call"),
            _ => 200,
        };
        async move { Ok::<_, BoxError>(response(status)) }
    });
    let mut svc = small().half_open_probes(1).layer(inner);
    trip(&mut svc).await;
    advance(Duration::from_secs(10)).await;

    mode.store(1, Ordering::SeqCst);
    let ready = svc.ready().await.unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(ready.call(req()));
    }));
    assert!(panicked.is_err());
    assert_eq!(reached.load(Ordering::SeqCst), 6);

    // The slot came back: the next call is admitted as the probe.
    mode.store(2, Ordering::SeqCst);
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 200);
    assert_eq!(reached.load(Ordering::SeqCst), 7);
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
}

/// Issue #11, finding 5: a server-given open time (a quota reset a day
/// away) is capped at `max_trip_open` (default 1 h); then the breaker
/// half-opens and probes as usual.
#[tokio::test(start_paused = true)]
async fn open_circuits_are_not_sticky() {
    let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    let (inner, calls) = scripted_bodies(
        Provider::OpenAi,
        vec![(429, &[("retry-after", "86400")], body), (200, &[], "{}")],
    );
    let mut svc = small().layer(inner);
    assert_eq!(send(&mut svc, req()).await.unwrap().status(), 429);
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.is_quota_exhausted(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    advance(Duration::from_secs(3600)).await;
    send(&mut svc, req()).await.unwrap(); // probe 1 of 2
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::HalfOpen);
    send(&mut svc, req()).await.unwrap();
    assert_eq!(svc.state(&Key::DEFAULT), CircuitState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The state machine alone: even a trip of a week.
    use tower_llm_resilience::circuit_breaker::{CallOutcome, Circuit, Config};
    let now = tokio::time::Instant::now();
    let mut circuit = Circuit::new(Config::new(), now);
    let (permit, _) = circuit.try_acquire(now);
    let week = Duration::from_secs(7 * 24 * 3600);
    circuit.on_result(
        permit.unwrap(),
        CallOutcome::trip(ErrorClass::QuotaExhausted, week),
        now,
    );
    let (rejected, _) = circuit.try_acquire(now);
    assert_eq!(
        rejected.unwrap_err().retry_after(),
        Some(Duration::from_secs(3600))
    );
    let (permit, _) = circuit.try_acquire(now + Duration::from_secs(3600));
    assert!(permit.unwrap().is_probe());

    // A shorter bound, and one that also caps the configured times.
    let (inner, _) = scripted_bodies(
        Provider::OpenAi,
        vec![(429, &[("retry-after", "86400")], body), (401, &[], "")],
    );
    let mut svc = small()
        .max_trip_open(Duration::from_secs(600))
        .auth_open_duration(Duration::from_secs(7200))
        .layer(inner);
    send(&mut svc, req()).await.unwrap();
    let err = send(&mut svc, req()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    advance(Duration::from_secs(600)).await;
    send(&mut svc, req()).await.unwrap(); // the probe: a 401
    let err = send(&mut svc, req()).await.unwrap_err();
    assert!(err.is_circuit_open() && err.class() == ErrorClass::Auth);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
}
