//! Issue #11, "nothing sticky": whatever the limiter learns from a provider
//! (limits, gates) has a floor, a bound and an expiry, and the store's own
//! bookkeeping (ids, eviction) never admits more than the limits. One test
//! per finding, named after it, under paused time. The tests check exact
//! instants: each limiter counts an admission for exactly its window
//! (`arrival_margin(Duration::ZERO)`).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::events::{Event, Events};
use tower_llm_resilience::key::Key;
use tower_llm_resilience::rate_limit::{
    Costs, Decision, Dimension, Limits, MemoryStore, RateLimitLayer, Store, TokenEstimate,
};
use tower_test::mock;

mod support;

use support::{ms, req, response, secs};

type Req = Request<String>;
type Resp = Response<String>;

const MINUTE: Duration = Duration::from_secs(60);

/// The next request the provider sees; fails (never hangs) when none
/// comes within a week of paused time.
async fn provider_sees(handle: &mut mock::Handle<Req, Resp>) -> (Req, mock::SendResponse<Resp>) {
    tokio::time::timeout(secs(7 * 86_400), handle.next_request())
        .await
        .expect("no request came within a week")
        .expect("the service is gone")
}

fn admitted(d: Decision) -> tower_llm_resilience::rate_limit::Reservation {
    match d {
        Decision::Admitted(r) => r,
        other => panic!("not admitted: {other:?}"),
    }
}

/// Finding 1: a 200 carrying a limit of 0 (requests, tokens, or an IETF
/// policy with `q=0`) must not shut the key: the next requests are sent.
#[tokio::test(start_paused = true)]
async fn one_odd_header_shuts_a_key_for_good() {
    let odd: [&[(&'static str, &'static str)]; 3] = [
        &[("x-ratelimit-limit-requests", "0")],
        &[("x-ratelimit-limit-tokens", "0")],
        &[("ratelimit-policy", "\"default\";q=0;w=60")],
    ];
    for headers in odd {
        let (mock, mut handle) = mock::pair::<Req, Resp>();
        let svc = RateLimitLayer::new(
            Limits::new()
                .requests_per_minute(100)
                .tokens_per_minute(10_000),
        )
        .arrival_margin(Duration::ZERO)
        .layer(mock);
        let t0 = Instant::now();
        let first = tokio::spawn(svc.clone().oneshot(req(10)));
        let (_, send) = provider_sees(&mut handle).await;
        send.send_response(response(StatusCode::OK, headers));
        first.await.unwrap().unwrap();
        // An hour later, and at once: the key still sends.
        for at in [Duration::ZERO, secs(3600)] {
            tokio::time::sleep_until(t0 + at).await;
            let next = tokio::spawn(svc.clone().oneshot(req(500)));
            let (_, send) = provider_sees(&mut handle).await;
            assert_eq!(t0.elapsed(), at, "{headers:?}");
            send.send_response(Response::new(String::new()));
            next.await.unwrap().unwrap();
        }
        let store = svc.store();
        assert_eq!(
            store.limit_of(&Key::DEFAULT, Dimension::Requests, MINUTE),
            Some(100),
            "{headers:?}"
        );
        assert_eq!(
            store.limit_of(&Key::DEFAULT, Dimension::Tokens, MINUTE),
            Some(10_000),
            "{headers:?}"
        );
    }
}

/// Finding 1: a learned limit has a floor (a tenth of the configured one),
/// a bound (100 times it, with `learn_limits`) and an expiry (the window,
/// at most 10 minutes, refreshed by a repeated header).
#[tokio::test(start_paused = true)]
async fn a_learned_limit_has_a_floor_a_bound_and_an_expiry() {
    for (learn, header, learned) in [
        (false, "1", 10),            // floor: 100 / 10
        (false, "50", 50),           // tightens
        (false, "1000", 100),        // never raises without opt-in
        (true, "1000", 1_000),       // raises with it
        (true, "999999999", 10_000), // bound: 100 * 100
    ] {
        let (mock, mut handle) = mock::pair::<Req, Resp>();
        let svc = RateLimitLayer::new(Limits::new().requests_per_minute(100))
            .arrival_margin(Duration::ZERO)
            .learn_limits(learn)
            .layer(mock);
        let t0 = Instant::now();
        let headers = [("x-ratelimit-limit-requests", header)];
        let limit = || {
            svc.store()
                .limit_of(&Key::DEFAULT, Dimension::Requests, MINUTE)
        };
        for at in [Duration::ZERO, secs(50)] {
            tokio::time::sleep_until(t0 + at).await;
            let call = tokio::spawn(svc.clone().oneshot(req(0)));
            let (_, send) = provider_sees(&mut handle).await;
            send.send_response(response(StatusCode::OK, &headers));
            call.await.unwrap().unwrap();
            assert_eq!(limit(), Some(learned), "{header} at {at:?}");
        }
        // Said again at 50 s: it holds until 110 s, then the configured
        // limit is back in force.
        tokio::time::sleep_until(t0 + ms(109_999)).await;
        assert_eq!(limit(), Some(learned), "{header}, learn_limits({learn})");
        tokio::time::sleep_until(t0 + secs(110)).await;
        assert_eq!(limit(), Some(100), "{header}, learn_limits({learn})");
    }
}

/// Finding 1: a request that fits the configured capacity but not the
/// learned one is not over capacity: it waits until the learned limit
/// expires, then is sent.
#[tokio::test(start_paused = true)]
async fn a_request_that_fits_the_configured_limit_waits_out_a_learned_one() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let svc = RateLimitLayer::new(Limits::new().tokens_per_minute(10_000))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(10)));
    let (_, send) = provider_sees(&mut handle).await;
    send.send_response(response(
        StatusCode::OK,
        &[("x-ratelimit-limit-tokens", "2000")],
    ));
    first.await.unwrap().unwrap();
    let big = tokio::spawn(svc.clone().oneshot(req(5_000)));
    let (_, send) = provider_sees(&mut handle).await;
    assert_eq!(t0.elapsed(), MINUTE, "sent when the learned limit expired");
    send.send_response(Response::new(String::new()));
    big.await.unwrap().unwrap();
    // Above the configured capacity it never fits.
    let err = svc.clone().oneshot(req(10_001)).await.unwrap_err();
    assert!(err.is_over_capacity(), "{err}");
}

/// Finding 1: absurd `remaining` values lock nothing: `-1` (Azure) is
/// ignored by the classifier, a huge one loosens nothing, and `0` counts
/// only until the reset (at most the window).
#[tokio::test(start_paused = true)]
async fn absurd_remaining_values_lock_nothing() {
    for (remaining, reset, next_at) in [
        ("-1", "1s", Duration::ZERO),
        ("18446744073709551615", "1s", Duration::ZERO),
        ("0", "2s", secs(2)),
        ("0", "1000000s", MINUTE),
    ] {
        let (mock, mut handle) = mock::pair::<Req, Resp>();
        let svc = RateLimitLayer::new(Limits::new().requests_per_minute(100))
            .arrival_margin(Duration::ZERO)
            .layer(mock);
        let t0 = Instant::now();
        let first = tokio::spawn(svc.clone().oneshot(req(0)));
        let (_, send) = provider_sees(&mut handle).await;
        send.send_response(response(
            StatusCode::OK,
            &[
                ("x-ratelimit-remaining-requests", remaining),
                ("x-ratelimit-reset-requests", reset),
            ],
        ));
        first.await.unwrap().unwrap();
        let next = tokio::spawn(svc.clone().oneshot(req(0)));
        let (_, send) = provider_sees(&mut handle).await;
        assert_eq!(
            t0.elapsed(),
            next_at,
            "remaining {remaining}, reset {reset}"
        );
        send.send_response(Response::new(String::new()));
        next.await.unwrap().unwrap();
    }
}

/// Finding 2: after a 429 with `retry-after: 86400`, the next request of
/// the key fails at once with a rate-limit timeout carrying the server's
/// wait, instead of hanging silently for a day; it reserves nothing.
#[tokio::test(start_paused = true)]
async fn a_long_retry_after_hangs_the_other_requests_silently() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let events = Events::new().with_listener(move |e| match *e {
        Event::GateClosed { until, .. } => log.lock().unwrap().push(("closed", until)),
        Event::GateWaitRefused { wait, .. } => log.lock().unwrap().push(("refused", wait)),
        _ => {}
    });
    let svc = RateLimitLayer::new(Limits::new().requests_per_minute(1000))
        .arrival_margin(Duration::ZERO)
        .events(events.clone())
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send) = provider_sees(&mut handle).await;
    send.send_response(response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "86400")],
    ));
    assert_eq!(
        first.await.unwrap().unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let next = tokio::time::timeout(secs(3600), svc.clone().oneshot(req(2)))
        .await
        .expect("still pending an hour later");
    let err = next.unwrap_err();
    assert!(err.is_rate_limit_timeout(), "{err}");
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(err.retry_after(), Some(secs(86400)));
    assert_eq!(t0.elapsed(), Duration::ZERO, "failed at once");
    // Nothing reserved: the window is as empty as before.
    assert_eq!(
        svc.store().peek(&Key::DEFAULT, &Costs::new(0, 0), t0),
        Some(t0 + secs(86400))
    );
    // Reported: the gate, then the refusal.
    assert_eq!(
        *seen.lock().unwrap(),
        [("closed", secs(86400)), ("refused", secs(86400))]
    );
    let s = events.counters().snapshot();
    assert_eq!((s.gates_closed, s.gate_waits_refused), (1, 1));
    // A bound of a day (or `Duration::MAX`) waits it out.
    let svc = RateLimitLayer::new(Limits::new().requests_per_minute(1000))
        .arrival_margin(Duration::ZERO)
        .max_gate_wait(Duration::MAX)
        .layer(tower::service_fn(|_: Req| async {
            Ok::<_, std::convert::Infallible>(response(
                StatusCode::TOO_MANY_REQUESTS,
                &[("retry-after", "86400")],
            ))
        }));
    let t1 = Instant::now();
    svc.clone().oneshot(req(1)).await.unwrap();
    svc.clone().oneshot(req(2)).await.unwrap();
    assert_eq!(t1.elapsed(), secs(86400));
}

/// Finding 3: a request already waiting when a gate closes is moved to the
/// gate's end: it is not sent before the server said.
#[tokio::test(start_paused = true)]
async fn waiters_already_queued_ignore_a_gate_closed_after_they_were_booked() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send_first) = provider_sees(&mut handle).await;
    // Booked at 1 s (the window is full until then).
    let second = tokio::spawn(svc.clone().oneshot(req(2)));
    tokio::time::sleep(ms(100)).await;
    // The first is refused at 0.1 s with a 5 s Retry-After.
    send_first.send_response(response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "5")],
    ));
    first.await.unwrap().unwrap();
    let (r, send) = provider_sees(&mut handle).await;
    assert_eq!(
        r.extensions().get::<TokenEstimate>(),
        Some(&TokenEstimate::total(2))
    );
    assert_eq!(t0.elapsed(), ms(5100), "sent when the gate opened");
    send.send_response(Response::new(String::new()));
    second.await.unwrap().unwrap();
}

/// Finding 3 with finding 2: a waiter moved past the gate bound fails with
/// the typed error and gives its reservation back.
#[tokio::test(start_paused = true)]
async fn a_queued_waiter_moved_past_the_gate_bound_fails_and_gives_back_its_slot() {
    let (mock, mut handle) = mock::pair::<Req, Resp>();
    let events = Events::new();
    let svc = RateLimitLayer::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
        .arrival_margin(Duration::ZERO)
        .events(events.clone())
        .layer(mock);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(req(1)));
    let (_, send_first) = provider_sees(&mut handle).await;
    let second = tokio::spawn(svc.clone().oneshot(req(2)));
    tokio::time::sleep(ms(100)).await;
    send_first.send_response(response(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "600")],
    ));
    first.await.unwrap().unwrap();
    let err = tokio::time::timeout(secs(1), second)
        .await
        .expect("fails at once, not at 1 s nor at 600 s")
        .unwrap()
        .unwrap_err();
    assert!(err.is_rate_limit_timeout(), "{err}");
    assert_eq!(err.retry_after(), Some(secs(600)));
    assert_eq!(t0.elapsed(), ms(100));
    // Its reservation is gone: only the gate holds the key.
    assert_eq!(
        svc.store()
            .peek(&Key::DEFAULT, &Costs::new(0, 0), t0 + ms(100)),
        Some(t0 + ms(600_100))
    );
    assert_eq!(events.counters().snapshot().gate_waits_refused, 1);
}

/// The `Store::watch` contract, for any store: a later instant than the
/// booked one (a gate the store learned of after booking) moves the
/// request's sleep later; past the gate bound it fails and cancels.
#[tokio::test(start_paused = true)]
async fn a_store_may_report_a_later_instant_from_watch() {
    for (later, sent_at) in [(secs(10), Some(secs(11))), (secs(90), None)] {
        let inner = MemoryStore::new(Limits::new().window(Dimension::Requests, ms(1000), 1))
            .arrival_margin(Duration::ZERO);
        let store = LateWatch {
            inner: inner.clone(),
            later,
            cancelled: Default::default(),
        };
        let cancelled = store.cancelled.clone();
        let (mock, mut handle) = mock::pair::<Req, Resp>();
        let svc = RateLimitLayer::new(Limits::new())
            .arrival_margin(Duration::ZERO)
            .store(store)
            .layer(mock);
        let t0 = Instant::now();
        let first = tokio::spawn(svc.clone().oneshot(req(1)));
        let (_, send) = provider_sees(&mut handle).await;
        send.send_response(Response::new(String::new()));
        first.await.unwrap().unwrap();
        // Booked at 1 s; the store says `later` after that.
        let second = tokio::spawn(svc.clone().oneshot(req(2)));
        match sent_at {
            Some(at) => {
                let (_, send) = provider_sees(&mut handle).await;
                assert_eq!(t0.elapsed(), at);
                send.send_response(Response::new(String::new()));
                second.await.unwrap().unwrap();
                assert_eq!(*cancelled.lock().unwrap(), 0);
            }
            None => {
                let err = second.await.unwrap().unwrap_err();
                assert!(err.is_rate_limit_timeout(), "{err}");
                assert_eq!(err.retry_after(), Some(secs(91)));
                assert_eq!(t0.elapsed(), Duration::ZERO);
                assert_eq!(
                    *cancelled.lock().unwrap(),
                    1,
                    "the reservation is given back"
                );
            }
        }
    }
}

/// A store whose `watch` reports `later` after the booked instant (as a
/// remote store that knows of a local gate would).
#[derive(Clone)]
struct LateWatch {
    inner: MemoryStore,
    later: Duration,
    cancelled: std::sync::Arc<std::sync::Mutex<u32>>,
}

impl Store for LateWatch {
    type Acquire = <MemoryStore as Store>::Acquire;

    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire {
        self.inner.acquire(key, costs, now, deadline)
    }

    fn cancel(&self, r: &tower_llm_resilience::rate_limit::Reservation) {
        *self.cancelled.lock().unwrap() += 1;
        self.inner.cancel(r)
    }

    fn watch(
        &self,
        r: &tower_llm_resilience::rate_limit::Reservation,
        waker: &std::task::Waker,
    ) -> Option<Instant> {
        self.inner.watch(r, waker).map(|at| at + self.later)
    }

    fn correct(
        &self,
        r: &tower_llm_resilience::rate_limit::Reservation,
        actual: &Costs,
        now: Instant,
    ) {
        self.inner.correct(r, actual, now)
    }

    fn gate(&self, key: &Key, until: Instant) {
        self.inner.gate(key, until)
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: tower_llm_resilience::classify::ReportedLimit,
        reservation: Option<&tower_llm_resilience::rate_limit::Reservation>,
        now: Instant,
    ) -> Option<u64> {
        self.inner
            .learn(key, dimension, window, state, reservation, now)
    }
}

/// Finding 4: a late cancel of a reservation made before the key's state
/// was evicted must not remove a newer reservation of the key.
#[tokio::test(start_paused = true)]
async fn the_memory_store_reuses_reservation_ids_after_eviction() {
    let limits = Limits::new().window(Dimension::Requests, ms(100), 1);
    let store = MemoryStore::new(limits)
        .arrival_margin(Duration::ZERO)
        .max_keys(1);
    let (a, b) = (Key::from_static("a"), Key::from_static("b"));
    let one = Costs::new(0, 0);
    let t0 = Instant::now();
    let first = admitted(store.acquire(&a, &one, t0, None).await.unwrap());
    // A's window empties; a request of B evicts A's state.
    tokio::time::sleep(ms(200)).await;
    let now = Instant::now();
    admitted(store.acquire(&b, &one, now, None).await.unwrap());
    let second = admitted(store.acquire(&a, &one, now, None).await.unwrap());
    assert_eq!(second.at, now);
    // The first reservation's late cancel (e.g. a refund).
    store.cancel(&first);
    assert_eq!(
        store.peek(&a, &one, now),
        Some(now + ms(100)),
        "the second reservation must still be held"
    );
}

/// Finding 5: when the map is full of keys whose windows still count, a
/// flood of new keys must not make the limiter forget them.
#[tokio::test(start_paused = true)]
async fn evicting_a_live_key_forgets_its_in_flight_usage() {
    let limits = Limits::new().requests_per_minute(1);
    let store = MemoryStore::new(limits)
        .arrival_margin(Duration::ZERO)
        .max_keys(2);
    let one = Costs::new(0, 0);
    let a = Key::from_static("a");
    let t0 = Instant::now();
    admitted(store.acquire(&a, &one, t0, None).await.unwrap());
    // Later, so that `a` is the least recently used key.
    let t1 = t0 + secs(1);
    for i in 0..4 {
        let k = Key::new(format!("flood-{i}"));
        admitted(store.acquire(&k, &one, t1, None).await.unwrap());
    }
    let again = admitted(store.acquire(&a, &one, t1, None).await.unwrap());
    assert_eq!(again.at, t0 + MINUTE, "a's first request still counts");
}

/// Finding 5: past the hard bound (4 * max_keys keys, all still counting),
/// a new key's request fails at once with a typed error that says when to
/// come back; the keys held keep working, and the new key gets in once a
/// held key's window is empty.
#[tokio::test(start_paused = true)]
async fn a_flood_past_the_hard_bound_fails_with_a_typed_error() {
    let limits = Limits::new().requests_per_minute(1);
    let store = MemoryStore::new(limits)
        .arrival_margin(Duration::ZERO)
        .max_keys(2);
    let one = Costs::new(0, 0);
    let t0 = Instant::now();
    for i in 0..8 {
        let k = Key::new(format!("k{i}"));
        admitted(store.acquire(&k, &one, t0 + secs(i), None).await.unwrap());
    }
    assert_eq!(store.len(), 8);
    let now = t0 + secs(10);
    let err = store
        .acquire(&Key::from_static("new"), &one, now, None)
        .await
        .unwrap_err();
    assert!(err.is_too_many_keys(), "{err}");
    assert!(err.is_rate_limited() && err.is_retryable(), "{err}");
    assert_eq!(
        err.retry_after(),
        Some(secs(50)),
        "k0's window empties at 60 s"
    );
    // A held key is still served (and still limited).
    let again = admitted(
        store
            .acquire(&Key::from_static("k3"), &one, now, None)
            .await
            .unwrap(),
    );
    assert_eq!(again.at, t0 + secs(63));
    // At 60 s k0 may go: the new key gets in.
    let later = t0 + MINUTE;
    admitted(
        store
            .acquire(&Key::from_static("new"), &one, later, None)
            .await
            .unwrap(),
    );
    assert_eq!(store.len(), 8);
}

/// Finding 7: `idle_timeout(Duration::MAX)` must not overflow an instant.
#[tokio::test(start_paused = true)]
async fn idle_timeout_max_panics() {
    let limits = Limits::new().requests_per_minute(1);
    let store = MemoryStore::new(limits)
        .arrival_margin(Duration::ZERO)
        .max_keys(1)
        .idle_timeout(Duration::MAX);
    let one = Costs::new(0, 0);
    let t0 = Instant::now();
    for name in ["a", "b", "c"] {
        let d = store.acquire(&Key::new(name), &one, t0, None).await;
        assert!(matches!(d, Ok(Decision::Admitted(_))), "{name}: {d:?}");
    }
}

/// Finding 8: `Costs::default()` is one request, so a custom estimator
/// built on it is held by a requests-per-window limit.
#[tokio::test(start_paused = true)]
async fn costs_default_counts_0_requests() {
    assert_eq!(Costs::default(), Costs::new(0, 0));
    let ok = tower::service_fn(|_: Req| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    });
    let estimator = |_: &Req| Costs {
        input_tokens: 5,
        ..Costs::default()
    };
    let mut svc = RateLimitLayer::new(
        Limits::new()
            .window(Dimension::Requests, ms(1000), 1)
            .tokens_per_minute(10_000),
    )
    .arrival_margin(Duration::ZERO)
    .estimator(estimator)
    .layer(ok);
    let t0 = Instant::now();
    for _ in 0..2 {
        let r = Request::new(String::new());
        svc.ready().await.unwrap().call(r).await.unwrap();
    }
    assert_eq!(t0.elapsed(), ms(1000), "the second request waited");
}

/// A setter on a clone of a shared store made a new, empty store: the
/// clone no longer saw the keys (and limits) of the store it came from,
/// and two handles of "one" limiter each admitted the full limit.
#[tokio::test(start_paused = true)]
async fn max_keys_on_a_clone_forks_the_store() {
    let limits = Limits::new().requests_per_minute(1);
    let store = MemoryStore::new(limits).arrival_margin(Duration::ZERO);
    let one = Costs::new(0, 0);
    let a = Key::from_static("a");
    let now = Instant::now();
    admitted(store.acquire(&a, &one, now, None).await.unwrap());
    let clone = store
        .clone()
        .max_keys(5)
        .idle_timeout(secs(3600))
        .learn_limits(true)
        .learned_ttl(secs(5));
    assert_eq!(clone.len(), 1, "the clone holds the store's key");
    match clone.acquire(&a, &one, now, Some(now)).await.unwrap() {
        Decision::TooLate(at) => assert_eq!(at, now + secs(60)),
        other => panic!("the clone admitted past the limit: {other:?}"),
    }
    // And the setting reached the original: 5 keys soft, 20 hard, all
    // live (one request per minute each) -> the 21st new key is refused.
    for i in 0..19 {
        let k = Key::new(format!("k{i}"));
        admitted(store.acquire(&k, &one, now, None).await.unwrap());
    }
    let refused = store.acquire(&Key::from_static("z"), &one, now, None).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_too_many_keys()),
        "{refused:?}"
    );
}

/// Two threads on one key (and on several): together they admit exactly
/// the limit, with ids that never repeat.
#[test]
fn two_threads_on_one_key_admit_exactly_the_limit() {
    let limits = Limits::new().requests_per_minute(1_000);
    let store = MemoryStore::new(limits).arrival_margin(Duration::ZERO);
    let now = Instant::now();
    let one = Costs::new(0, 0);
    let keys = [Key::DEFAULT, Key::from_static("b"), Key::new("c")];
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..3_000 {
                    let key = &keys[i % keys.len()];
                    match store.try_acquire(key, &one, now, Some(now)) {
                        Some(Ok(Decision::Admitted(r))) => ids.push((r.key.to_string(), r.id)),
                        Some(Ok(Decision::TooLate(_))) => {}
                        other => panic!("{other:?}"),
                    }
                }
                ids
            })
        })
        .collect();
    let mut ids: Vec<(String, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 3 * 1_000, "each key admits its limit, no more");
    ids.sort_unstable_by_key(|(_, id)| *id);
    ids.dedup_by_key(|(_, id)| *id);
    assert_eq!(ids.len(), 3 * 1_000, "ids never repeat");
}
