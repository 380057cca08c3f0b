//! Behaviour of the rate limiter under paused time, with `tower_test::mock`.
//! The tests check exact instants: each limiter counts an admission for
//! exactly its window (`arrival_margin(Duration::ZERO)`).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::events::Events;
use tower_llm_resilience::key::Key;
use tower_llm_resilience::rate_limit::{
    Costs, Dimension, Limits, RateLimitLayer, TokenEstimate, TokenUsage,
};
use tower_test::mock;

mod support;

use support::{ms, req};

type Req = Request<String>;
type Resp = Response<String>;

fn keyed(key: &'static str, tokens: u32) -> Req {
    let mut r = req(tokens);
    r.headers_mut().insert("x-key", key.parse().unwrap());
    r
}

/// Serves every request with `200` and records (arrival instant, tag)
/// where tag is the request's estimate.
async fn serve_ok(mut handle: mock::Handle<Req, Resp>, t0: Instant) -> Vec<(Duration, u32)> {
    let mut seen = Vec::new();
    while let Some((r, send)) = handle.next_request().await {
        let tag = r
            .extensions()
            .get::<TokenEstimate>()
            .map_or(0, |e| u32::try_from(e.total_tokens()).unwrap());
        seen.push((t0.elapsed(), tag));
        send.send_response(Response::new(String::new()));
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn admits_at_exactly_the_instant_the_window_frees() {
    let (mock, handle) = mock::pair::<Req, Resp>();
    let t0 = Instant::now();
    let server = tokio::spawn(serve_ok(handle, t0));
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 2))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(tokio::spawn(svc.clone().oneshot(req(i))));
        tokio::time::sleep(ms(100)).await;
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    drop(svc);
    let seen = server.await.unwrap();
    // Sent at 0 and 100; then exactly when each earlier one leaves the window.
    assert_eq!(
        seen,
        vec![
            (ms(0), 0),
            (ms(100), 1),
            (ms(1000), 2),
            (ms(1100), 3),
            (ms(2000), 4)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let (mock, handle) = mock::pair::<Req, Resp>();
    let t0 = Instant::now();
    let server = tokio::spawn(serve_ok(handle, t0));
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Tokens, ms(1000), 100))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let a = tokio::spawn(svc.clone().oneshot(req(90)));
    tokio::task::yield_now().await;
    // Big: must wait for the whole window.
    let b = tokio::spawn(svc.clone().oneshot(req(100)));
    tokio::task::yield_now().await;
    // Small: would fit now, but must not overtake the big one.
    let c = tokio::spawn(svc.clone().oneshot(req(5)));
    for f in [a, b, c] {
        f.await.unwrap().unwrap();
    }
    drop(svc);
    let seen = server.await.unwrap();
    assert_eq!(seen, vec![(ms(0), 90), (ms(1000), 100), (ms(2000), 5)]);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_gates_every_request_of_the_key() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let events = Events::new();
    let svc = RateLimitLayer::new(Limits::new().requests_per_minute(1000))
        .arrival_margin(Duration::ZERO)
        .events(events.clone())
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "2")
            .body(String::new())
            .unwrap(),
    );
    let resp = first.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Two other requests: both held until the gate opens.
    let second = tokio::spawn(svc.clone().oneshot(req(2)));
    let third = tokio::spawn(svc.clone().oneshot(req(3)));
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        send.send_response(Response::new(String::new()));
    }
    second.await.unwrap().unwrap();
    third.await.unwrap().unwrap();
    let s = events.counters().snapshot();
    assert_eq!(s.rate_limited_responses, 1);
    assert_eq!(s.rate_limit_waits, 2);
}

#[tokio::test(start_paused = true)]
async fn remaining_headers_tighten_the_window() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let events = Events::new();
    let svc = RateLimitLayer::new(
        Limits::new()
            .requests_per_minute(100)
            .tokens_per_minute(10_000),
    )
    .arrival_margin(Duration::ZERO)
    .events(events.clone())
    .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(10)));
    let (_, send) = handle.next_request().await.unwrap();
    // Another process used the key: 0 requests remain until 5 s from now.
    send.send_response(
        Response::builder()
            .header("x-ratelimit-limit-requests", "100")
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "5s")
            .header("x-ratelimit-limit-tokens", "10000")
            .header("x-ratelimit-remaining-tokens", "9990")
            .header("x-ratelimit-reset-tokens", "1ms")
            .body(String::new())
            .unwrap(),
    );
    first.await.unwrap().unwrap();
    assert_eq!(events.counters().snapshot().limits_learned, 1);
    let store = svc.store();
    assert_eq!(
        store.peek(&Key::DEFAULT, &Costs::tokens(1), t0),
        Some(t0 + Duration::from_secs(5))
    );
    let second = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    send.send_response(Response::new(String::new()));
    second.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn headers_never_loosen_unless_asked() {
    for (learn, expected) in [(false, 10), (true, 500)] {
        let (mock, mut handle) = mock::pair::<Req, Resp>();
        let svc = RateLimitLayer::new(Limits::new().requests_per_minute(10))
            .arrival_margin(Duration::ZERO)
            .learn_limits(learn)
            .layer(mock);
        let call = tokio::spawn(svc.clone().oneshot(req(0)));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .header("x-ratelimit-limit-requests", "500")
                .header("x-ratelimit-remaining-requests", "499")
                .body(String::new())
                .unwrap(),
        );
        call.await.unwrap().unwrap();
        let minute = Duration::from_secs(60);
        assert_eq!(
            svc.store()
                .limit_of(&Key::DEFAULT, Dimension::Requests, minute),
            Some(expected)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn usage_in_the_response_corrects_the_charge() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Tokens, ms(1000), 100))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(90)));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &Costs::tokens(50), t0),
        Some(t0 + ms(1000))
    );
    let mut resp = Response::new(String::new());
    resp.extensions_mut().insert(TokenUsage {
        input_tokens: 8,
        output_tokens: 2,
    });
    send.send_response(resp);
    first.await.unwrap().unwrap();
    // Only 10 were used: 50 more fit at once.
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &Costs::tokens(50), t0),
        Some(t0)
    );
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &Costs::tokens(91), t0),
        Some(t0 + ms(1000))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_reservation_back() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(String::new()));
    first.await.unwrap().unwrap();
    // A second request waits for t0 + 1 s; a third would go at t0 + 2 s.
    svc.ready().await.unwrap();
    let mut waiting = tokio_test::task::spawn(svc.call(req(2)));
    assert!(waiting.poll().is_pending());
    let one = Costs::new(0, 0);
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &one, t0),
        Some(t0 + ms(2000))
    );
    drop(waiting);
    // Its slot is free again: nothing leaked.
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &one, t0),
        Some(t0 + ms(1000))
    );
    let third = tokio::spawn(svc.clone().oneshot(req(3)));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r.extensions().get::<TokenEstimate>(),
        Some(&TokenEstimate::total(3))
    );
    assert_eq!(t0.elapsed(), ms(1000));
    send.send_response(Response::new(String::new()));
    third.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiters_behind_a_dropped_one_move_up() {
    let (mock, handle) = mock::pair::<Req, Resp>();
    let t0 = Instant::now();
    let server = tokio::spawn(serve_ok(handle, t0));
    let mut svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    svc.clone().oneshot(req(1)).await.unwrap(); // sent at 0
    svc.ready().await.unwrap();
    let mut second = tokio_test::task::spawn(svc.call(req(2))); // booked at 1 s
    assert!(second.poll().is_pending());
    let third = tokio::spawn(svc.clone().oneshot(req(3))); // booked at 2 s
    tokio::time::sleep(ms(100)).await;
    drop(second);
    third.await.unwrap().unwrap();
    drop(svc);
    let seen = server.await.unwrap();
    // The third moved up to the second's slot, woken at exactly 1 s.
    assert_eq!(seen, vec![(ms(0), 1), (ms(1000), 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_window_fails_at_once() {
    let (mock, _handle) = mock::pair::<Req, Resp>();
    let svc = RateLimitLayer::new(Limits::new().tokens_per_minute(1000))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let t0 = Instant::now();
    let err = svc.oneshot(req(1001)).await.unwrap_err();
    assert!(err.is_over_capacity(), "{err}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_max_wait_fails_at_once_and_reserves_nothing() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .max_wait(ms(500))
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(String::new()));
    first.await.unwrap().unwrap();
    let err = svc.clone().oneshot(req(2)).await.unwrap_err();
    assert!(err.is_rate_limit_timeout(), "{err}");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &Costs::new(0, 0), t0),
        Some(t0 + ms(1000))
    );
}

fn by_header(r: &Req) -> Key {
    match r.headers().get("x-key").and_then(|v| v.to_str().ok()) {
        Some("a") => Key::from_static("a"),
        Some("b") => Key::from_static("b"),
        Some(other) => Key::new(other),
        None => Key::DEFAULT,
    }
}

#[tokio::test(start_paused = true)]
async fn keys_do_not_share_a_window_and_may_differ_in_limits() {
    let (mock, handle) = mock::pair::<Req, Resp>();
    let t0 = Instant::now();
    let server = tokio::spawn(serve_ok(handle, t0));
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .key_limits(|k| {
            let n = if k.as_str() == Some("b") { 2 } else { 1 };
            Limits::new().window(Dimension::Requests, ms(1000), n)
        })
        .key_fn(by_header)
        .layer(mock);
    let calls = [keyed("a", 1), keyed("a", 2), keyed("b", 3), keyed("b", 4)]
        .map(|r| tokio::spawn(svc.clone().oneshot(r)));
    for c in calls {
        c.await.unwrap().unwrap();
    }
    drop(svc);
    let mut seen = server.await.unwrap();
    seen.sort();
    assert_eq!(
        seen,
        vec![(ms(0), 1), (ms(0), 3), (ms(0), 4), (ms(1000), 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_key_map_stays_bounded() {
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(100), 1))
        .arrival_margin(Duration::ZERO)
        .max_keys(10)
        .key_fn(by_header)
        .layer(tower::service_fn(|_: Req| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
    for i in 0..100u32 {
        let mut r = req(i);
        r.headers_mut()
            .insert("x-key", format!("k{i}").parse().unwrap());
        svc.clone().oneshot(r).await.unwrap();
        // Keys whose windows still count are kept (up to the hard bound,
        // 4 * max_keys); 20 arrive within one window here.
        assert!(svc.store().len() <= 21, "{}", svc.store().len());
        if i % 20 == 0 {
            tokio::time::sleep(ms(150)).await;
        }
    }
    assert!(svc.store().len() >= 10);
    // Once their windows are empty, the next new key makes room.
    tokio::time::sleep(ms(150)).await;
    let mut r = req(0);
    r.headers_mut().insert("x-key", "last".parse().unwrap());
    svc.clone().oneshot(r).await.unwrap();
    assert_eq!(svc.store().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_are_the_same_limiter() {
    let ok = tower::service_fn(|_: Req| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    });
    let layer = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO);
    let a = layer.layer(ok);
    let b = a.clone();
    let t0 = Instant::now();
    a.oneshot(req(1)).await.unwrap();
    b.oneshot(req(2)).await.unwrap();
    assert_eq!(t0.elapsed(), ms(1000));
}

#[tokio::test(start_paused = true)]
async fn the_service_and_its_future_are_send() {
    fn send<T: Send + 'static>(t: T) -> T {
        t
    }
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = send(
        RateLimitLayer::new(Limits::new().requests_per_minute(10))
            .arrival_margin(Duration::ZERO)
            .layer(mock),
    );
    svc.ready().await.unwrap();
    let fut = send(svc.call(req(1)));
    let call = tokio::spawn(fut);
    let (_, send_response) = handle.next_request().await.unwrap();
    send_response.send_response(Response::new(String::new()));
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// A provider that fails the first request with `first` and answers every
/// later one 200; each request's arrival instant is recorded.
fn failing_first(
    first: StatusCode,
    arrivals: std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
    t0: Instant,
) -> impl Service<Req, Response = Resp, Error = std::io::Error, Future = impl Send> + Clone {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    tower::service_fn(move |_: Req| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        arrivals.lock().unwrap().push(t0.elapsed());
        async move {
            let mut response = Response::new(String::new());
            if n == 0 {
                *response.status_mut() = first;
            }
            Ok(response)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_give_their_charge_back() {
    for (status, refund, second_at) in [
        (StatusCode::INTERNAL_SERVER_ERROR, true, ms(0)),
        (StatusCode::SERVICE_UNAVAILABLE, true, ms(0)),
        (StatusCode::INTERNAL_SERVER_ERROR, false, ms(10_000)),
        // The caller's fault is no reason to give the quota back.
        (StatusCode::BAD_REQUEST, true, ms(10_000)),
    ] {
        let t0 = Instant::now();
        let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let limits = Limits::new().window(Dimension::Requests, ms(10_000), 1);
        let mut svc = RateLimitLayer::new(limits)
            .arrival_margin(Duration::ZERO)
            .refund_failed(refund)
            .layer(failing_first(status, arrivals.clone(), t0));
        let first = svc.ready().await.unwrap().call(req(1)).await.unwrap();
        assert_eq!(first.status(), status);
        let second = svc.ready().await.unwrap().call(req(1)).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK);
        let arrivals = arrivals.lock().unwrap().clone();
        assert_eq!(
            arrivals,
            [ms(0), second_at],
            "{status} with refund_failed({refund})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_failure_gives_its_charge_back() {
    let t0 = Instant::now();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let inner = tower::service_fn(move |_: Req| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            if n == 0 {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "refused",
                ))
            } else {
                Ok(Response::new(String::new()))
            }
        }
    });
    let limits = Limits::new().window(Dimension::Requests, ms(10_000), 1);
    let mut svc = RateLimitLayer::new(limits)
        .arrival_margin(Duration::ZERO)
        .layer(inner);
    let err = svc.ready().await.unwrap().call(req(1)).await.unwrap_err();
    assert!(err.is_connect());
    svc.ready().await.unwrap().call(req(1)).await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the refused attempt held no quota"
    );
}
