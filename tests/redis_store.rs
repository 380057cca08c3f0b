//! The Redis store against a real `redis-server` started by the tests, and
//! the same behaviour tests run against the in-memory store.
//!
//! These tests use real time (the Redis server's clock is real) with short
//! windows, and tolerances that a broken implementation cannot meet by
//! luck: every expected wait is at least 300 ms and the tolerance is 150 ms.

#![cfg(feature = "redis")]

#[path = "redis_support/behaviour.rs"]
mod behaviour;
#[path = "redis_support/mod.rs"]
mod support;

use std::time::Duration;

use redis::AsyncCommands;
use support::{admitted, RedisServer};
use tokio::time::Instant;
use tower_llm_resilience::classify::ReportedLimit;
use tower_llm_resilience::rate_limit::{
    Costs, Decision, Dimension, Limits, MemoryStore, Reservation, Store,
};
use tower_llm_resilience::redis_store::{FaultPolicy, RedisStore};
use tower_llm_resilience::Key;

use behaviour::*;

#[tokio::test]
async fn memory_store_behaviour() {
    behaviour(MemoryStore::new(Limits::new()).key_limits(limits_for)).await;
}

#[tokio::test]
async fn redis_store_behaviour() {
    let Some(server) = RedisServer::start("redis_store_behaviour") else {
        return;
    };
    let store = RedisStore::builder(Limits::new())
        .key_limits(limits_for)
        .prefix("behaviour")
        .build(&server.url())
        .unwrap();
    behaviour(store).await;
}

#[tokio::test]
async fn memory_store_compares_remaining_as_of_the_admission() {
    let s = MemoryStore::new(Limits::new())
        .key_limits(admission::limits)
        .arrival_margin(admission::MARGIN);
    admission::behaviour(s).await;
}

#[tokio::test]
async fn redis_store_compares_remaining_as_of_the_admission() {
    let Some(server) = RedisServer::start("redis_store_compares_remaining_as_of_the_admission")
    else {
        return;
    };
    let store = RedisStore::builder(Limits::new())
        .key_limits(admission::limits)
        .arrival_margin(admission::MARGIN)
        .prefix("admission")
        .build(&server.url())
        .unwrap();
    admission::behaviour(store).await;
}

/// The tests' own connection, patient (a PING behind a `CLIENT PAUSE` on
/// a busy machine outlasts the client's default response timeout).
async fn client(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
}

/// The reservations a key's hash holds: its 8-byte fields (the others
/// are the state `s`, the acquires' token records, `t` and 8 bytes, and
/// `h`).
async fn entries(con: &mut redis::aio::MultiplexedConnection, hash: &str) -> usize {
    let fields: Vec<Vec<u8>> = con.hkeys(hash).await.unwrap();
    fields.iter().filter(|f| f.len() == 8).count()
}

/// The token records a key's hash holds.
async fn token_records(con: &mut redis::aio::MultiplexedConnection, hash: &str) -> usize {
    let fields: Vec<Vec<u8>> = con.hkeys(hash).await.unwrap();
    fields
        .iter()
        .filter(|f| f.len() == 9 && f[0] == b't')
        .count()
}

#[tokio::test]
async fn keys_are_namespaced_tagged_and_expire() {
    let Some(server) = RedisServer::start("keys_are_namespaced_tagged_and_expire") else {
        return;
    };
    let window = Duration::from_millis(200);
    let limits = Limits::new()
        .window(Dimension::Requests, window, 10)
        .window(Dimension::Tokens, window, 1000);
    let store = RedisStore::builder(limits)
        .prefix("ns")
        .build(&server.url())
        .unwrap();
    let key = Key::new("k1");
    let r = acquire(&store, &key, Costs::tokens(10)).await;
    store.correct(&r, &Costs::tokens(5), Instant::now());
    store.gate(&key, Instant::now() + Duration::from_millis(100));
    store.flush().await;
    let mut con = client(&server).await;
    let mut keys: Vec<String> = con.keys("*").await.unwrap();
    keys.sort();
    // Requests and tokens per 200 ms are one group: one hash, named after
    // it, holds the state, the entry and the acquire's token record.
    assert_eq!(
        keys,
        ["{ns:k1}:4:rt:200000"],
        "one hash tag per limiter key, under the prefix"
    );
    let hash = "{ns:k1}:4:rt:200000";
    assert_eq!(entries(&mut con, hash).await, 1);
    assert_eq!(token_records(&mut con, hash).await, 1);
    for k in &keys {
        let ttl: i64 = con.pttl(k).await.unwrap();
        assert!(ttl > 0 && ttl <= 1_400, "{k} expires (ttl {ttl} ms)");
    }
    // Nothing leaks: everything is gone once nothing counts any more.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let keys: Vec<String> = con.keys("*").await.unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");

    // A late correction for a reservation of the expired state cannot hit
    // a reservation of the new one.
    let r2 = acquire(&store, &key, Costs::tokens(10)).await;
    assert_ne!(r2.id, r.id);
    store.correct(&r, &Costs::tokens(995), Instant::now());
    store.flush().await;
    assert!(fits_now(&store, &key, Costs::tokens(990)).await);
    assert!(!fits_now(&store, &key, Costs::tokens(991)).await);
}

#[tokio::test]
async fn many_clones_and_tasks_never_exceed_the_limit() {
    let Some(server) = RedisServer::start("many_clones_and_tasks_never_exceed_the_limit") else {
        return;
    };
    let limit = 25u64;
    let window = Duration::from_millis(500);
    let store = RedisStore::builder(Limits::new().window(Dimension::Requests, window, limit))
        .build(&server.url())
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ats = Vec::new();
            for _ in 0..10 {
                let d = s
                    .decide(&Key::DEFAULT, &Costs::new(0, 0), Instant::now(), None)
                    .await
                    .unwrap();
                assert!(matches!(d.decision, Decision::Admitted(_)));
                ats.push(d.server_at_us.unwrap());
            }
            ats
        }));
    }
    let mut ats = Vec::new();
    for t in tasks {
        ats.extend(t.await.unwrap());
    }
    ats.sort_unstable();
    assert_eq!(ats.len(), 80);
    let w = window.as_micros() as u64;
    let worst = max_in_any_window(&ats, w);
    assert_eq!(worst, limit as usize, "the window is full but never over");
}

fn max_in_any_window(sorted: &[u64], w: u64) -> usize {
    let mut j = 0;
    let mut worst = 0;
    for i in 0..sorted.len() {
        while j < sorted.len() && sorted[j] < sorted[i] + w {
            j += 1;
        }
        worst = worst.max(j - i);
    }
    worst
}

fn signal(server: &RedisServer, sig: &str) {
    let pid = server.pid().expect("running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn fail_closed_killed_and_hung_then_recovers() {
    let Some(mut server) = RedisServer::start("fail_closed_killed_and_hung_then_recovers") else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let store = RedisStore::builder(Limits::new().window(Dimension::Requests, W, 1000))
        .timeout(timeout)
        .retry_interval(Duration::from_millis(100))
        .build(&server.url())
        .unwrap();
    let key = Key::DEFAULT;
    let one = Costs::new(0, 0);
    acquire(&store, &key, one).await;

    // Hung (SIGSTOP): every decision fails, typed, within the timeout.
    signal(&server, "-STOP");
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let e = store
            .acquire(&key, &one, Instant::now(), None)
            .await
            .unwrap_err();
        assert!(e.is_store_unavailable(), "{e}");
        assert!(
            start.elapsed() < timeout + Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    // Fire-and-forget operations neither block nor panic meanwhile.
    store.gate(&key, Instant::now() + Duration::from_millis(10));
    signal(&server, "-CONT");
    recovered(&store).await;

    // Killed: the same, then back on the same port.
    server.kill();
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let e = store
            .acquire(&key, &one, Instant::now(), None)
            .await
            .unwrap_err();
        assert!(e.is_store_unavailable());
        assert!(start.elapsed() < timeout + Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    server.restart();
    recovered(&store).await;
}

async fn recovered(store: &RedisStore) {
    let start = std::time::Instant::now();
    loop {
        match store
            .decide(&Key::DEFAULT, &Costs::new(0, 0), Instant::now(), None)
            .await
        {
            Ok(d) if d.server_now_us.is_some() => return,
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fail_open_uses_a_divided_local_limit_then_recovers() {
    let Some(mut server) = RedisServer::start("fail_open_uses_a_divided_local_limit_then_recovers")
    else {
        return;
    };
    let store =
        RedisStore::builder(Limits::new().window(Dimension::Requests, Duration::from_secs(30), 6))
            .timeout(Duration::from_millis(200))
            .retry_interval(Duration::from_millis(100))
            .fault_policy(FaultPolicy::FailOpen { processes: 3 })
            .build(&server.url())
            .unwrap();
    let key = Key::DEFAULT;
    let one = Costs::new(0, 0);
    let d = store
        .decide(&key, &one, Instant::now(), None)
        .await
        .unwrap();
    assert!(d.server_now_us.is_some(), "Redis decides while it is up");

    server.kill();
    // 6 / 3 processes = 2 local admissions, then the local window is full.
    let mut local = Vec::new();
    for _ in 0..2 {
        let now = Instant::now();
        let d = store.decide(&key, &one, now, Some(now)).await.unwrap();
        assert!(d.server_now_us.is_none(), "decided locally");
        local.push(admitted(d.decision));
    }
    let now = Instant::now();
    assert!(matches!(
        store.acquire(&key, &one, now, Some(now)).await.unwrap(),
        Decision::TooLate(_)
    ));
    // A local reservation is cancelled locally.
    store.cancel(&local[0]);
    store.flush().await;
    let now = Instant::now();
    assert!(matches!(
        store.acquire(&key, &one, now, Some(now)).await.unwrap(),
        Decision::Admitted(_)
    ));

    server.restart();
    recovered(&store).await;
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    let e = RedisStore::builder(Limits::new())
        .build("redis://127.0.0.1:1/")
        .unwrap_err();
    assert!(e.is_store_unavailable());
    let e = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            RedisStore::builder(Limits::new())
                .build("not a url")
                .unwrap_err()
        });
    assert!(e.is_store_unavailable());
}

#[tokio::test]
async fn unreachable_at_startup_fails_closed_fast() {
    // Nothing listens on port 1: a process may start while Redis is down.
    let store = RedisStore::builder(Limits::new().requests_per_minute(10))
        .timeout(Duration::from_millis(200))
        .build("redis://127.0.0.1:1/")
        .unwrap();
    let start = std::time::Instant::now();
    let e = store
        .acquire(&Key::DEFAULT, &Costs::new(0, 0), Instant::now(), None)
        .await
        .unwrap_err();
    assert!(e.is_store_unavailable());
    assert!(start.elapsed() < Duration::from_millis(600));
    assert!(store.is_degraded());
    // Skipped while degraded: fails at once.
    let start = std::time::Instant::now();
    assert!(store
        .acquire(&Key::DEFAULT, &Costs::new(0, 0), Instant::now(), None)
        .await
        .unwrap_err()
        .is_store_unavailable());
    assert!(start.elapsed() < Duration::from_millis(50));
}

#[tokio::test]
async fn the_layer_runs_on_the_redis_store() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_llm_resilience::rate_limit::RateLimitLayer;

    let Some(server) = RedisServer::start("the_layer_runs_on_the_redis_store") else {
        return;
    };
    let limits = Limits::new().window(Dimension::Requests, W, 2);
    let store = RedisStore::builder(limits.clone())
        .prefix("layer")
        .build(&server.url())
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limits).store(store))
        .service_fn(|_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
    let start = Instant::now();
    for _ in 0..3 {
        let req = http::Request::new(String::new());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= W - TOL && took <= W + TOL,
        "the third request waited for the window: {took:?}"
    );
}

#[tokio::test]
async fn a_day_long_gate_fails_the_next_request_at_once_on_the_redis_store() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_llm_resilience::rate_limit::RateLimitLayer;
    use tower_llm_resilience::Provider;

    let Some(server) =
        RedisServer::start("a_day_long_gate_fails_the_next_request_at_once_on_the_redis_store")
    else {
        return;
    };
    let limits = Limits::new().window(Dimension::Requests, W, 100);
    let store = RedisStore::builder(limits.clone())
        .prefix("gate-bound")
        .build(&server.url())
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(limits)
                .store(store.clone())
                .classifier(Provider::OpenAi),
        )
        .service_fn(|_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "86400")
                    .body(String::new())
                    .unwrap(),
            )
        });
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(first.status(), 429);
    store.flush().await;
    let start = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        svc.ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new())),
    )
    .await
    .expect("not a hang")
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(next.is_rate_limit_timeout(), "{next:?}");
    assert!(next.retry_after().unwrap() > Duration::from_secs(23 * 3600));
}

mod differential {
    //! The Lua script against the pure `SlidingWindow`, exactly: random sequences
    //! of acquire / cancel / correct run on Redis, then replay on a
    //! `SlidingWindow` at the server's own decision instants (returned by
    //! `decide`); every decision must match to the microsecond.

    use super::*;
    use proptest::prelude::*;
    use tower_llm_resilience::rate_limit::{Booking, SlidingWindow};

    #[derive(Clone, Debug)]
    enum Op {
        Acquire {
            input: u64,
            output: u64,
            deadline_us: Option<u64>,
        },
        Cancel,
        Correct(usize, u64, u64),
        Sleep(u64),
        /// Acquires asked all at once (no deadline: each is admitted), which
        /// the store sends as one batch.
        Burst(Vec<(u64, u64)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..450, 0u64..250, prop::option::of(0u64..40_000)).prop_map(
                |(input, output, deadline_us)| Op::Acquire { input, output, deadline_us }
            ),
            1 => Just(Op::Cancel),
            1 => (0usize..64, 0u64..450, 0u64..250).prop_map(|(i, a, b)| Op::Correct(i, a, b)),
            2 => (0u64..12).prop_map(Op::Sleep),
            1 => prop::collection::vec((0u64..450, 0u64..250), 2..6).prop_map(Op::Burst),
        ]
    }

    /// Each admission counts this much longer than its window, on both
    /// sides.
    const MARGIN: Duration = Duration::from_millis(3);

    fn limits() -> Limits {
        Limits::new()
            .window(Dimension::Requests, Duration::from_millis(30), 4)
            .window(Dimension::Tokens, Duration::from_millis(50), 1_000)
            .window(Dimension::OutputTokens, Duration::from_millis(20), 400)
    }

    async fn run(store: &RedisStore, case: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let key = Key::new(format!("case-{case}"));
        let base = Instant::now();
        let mut window: Option<(SlidingWindow, u64)> = None;
        // (redis reservation, window id)
        let mut granted: Vec<(Reservation, u64)> = Vec::new();
        // The window-timeline instant of the latest decision.
        let mut last_t = base;
        for op in ops {
            match op {
                Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Cancel if !granted.is_empty() => {
                    // The newest reservation: the in-memory window also
                    // re-books later waiting reservations on a cancel,
                    // which the Redis store deliberately does not (see the
                    // module docs), so cancel only where both agree.
                    let (r, wid) = granted.pop().expect("not empty");
                    store.cancel(&r);
                    store.flush().await;
                    // On the window's timeline (the server's), not the
                    // client's clock: which reservations are still ahead
                    // (the FIFO tail) depends on it. The instant of the
                    // latest decision is at or before the server's at the
                    // cancel, and a tail between the two no longer holds
                    // back the next decision either way.
                    if let Some((w, _)) = window.as_mut() {
                        w.cancel(wid, last_t);
                    }
                }
                Op::Correct(i, a, b) if !granted.is_empty() => {
                    let (r, wid) = &granted[i % granted.len()];
                    store.correct(r, &Costs::new(a, b), Instant::now());
                    store.flush().await;
                    if let Some((w, _)) = window.as_mut() {
                        w.correct(*wid, &Costs::new(a, b));
                    }
                }
                Op::Cancel | Op::Correct(..) => {}
                Op::Burst(costs) => {
                    let now = Instant::now();
                    let key = &key;
                    let asks = costs.iter().map(|&(i, o)| {
                        let costs = Costs::new(i, o);
                        async move { (costs, store.decide(key, &costs, now, None).await) }
                    });
                    let mut got = Vec::new();
                    for (costs, d) in futures::future::join_all(asks).await {
                        let d = d.unwrap();
                        let server_now = d.server_now_us.expect("decided by redis");
                        let Decision::Admitted(r) = d.decision else {
                            return Err(TestCaseError::fail(format!("{:?}", d.decision)));
                        };
                        got.push((r, costs, server_now, d.server_at_us));
                    }
                    // The server decided them in the order of their ids.
                    got.sort_by_key(|(r, ..)| r.id);
                    for (r, costs, server_now, server_at) in got {
                        let (w, s0) = window.get_or_insert_with(|| {
                            (
                                SlidingWindow::new(&limits(), base).arrival_margin(MARGIN),
                                server_now,
                            )
                        });
                        let t = base + Duration::from_micros(server_now - *s0);
                        last_t = last_t.max(t);
                        let Decision::Admitted(b) = w.acquire(&costs, t, None) else {
                            return Err(TestCaseError::fail("the window refused"));
                        };
                        let at = (b.at - base).as_micros() as u64 + *s0;
                        prop_assert_eq!(server_at, Some(at));
                        prop_assert_eq!(r.used, b.used);
                        granted.push((r, b.id));
                    }
                }
                Op::Acquire {
                    input,
                    output,
                    deadline_us,
                } => {
                    let costs = Costs::new(input, output);
                    let now = Instant::now();
                    let deadline = deadline_us.map(|d| now + Duration::from_micros(d));
                    let d = store.decide(&key, &costs, now, deadline).await.unwrap();
                    let server_now = d.server_now_us.expect("decided by redis");
                    let (w, s0) = window.get_or_insert_with(|| {
                        (
                            SlidingWindow::new(&limits(), base).arrival_margin(MARGIN),
                            server_now,
                        )
                    });
                    let t = base + Duration::from_micros(server_now - *s0);
                    last_t = t;
                    let wd = deadline_us.map(|d| t + Duration::from_micros(d));
                    let expected = w.acquire(&costs, t, wd);
                    let offset = |at: Instant| (at - base).as_micros() as u64 + *s0;
                    match (d.decision, expected) {
                        (Decision::Admitted(r), Decision::Admitted(Booking { id, at, used })) => {
                            prop_assert_eq!(d.server_at_us, Some(offset(at)));
                            // What each limit held as of the admission.
                            prop_assert_eq!(r.used, used);
                            granted.push((r, id));
                        }
                        (Decision::TooLate(_), Decision::TooLate(at)) => {
                            prop_assert_eq!(d.server_at_us, Some(offset(at)));
                        }
                        (
                            Decision::Never { cost, capacity },
                            Decision::Never {
                                cost: c2,
                                capacity: k2,
                            },
                        ) => prop_assert_eq!((cost, capacity), (c2, k2)),
                        (got, want) => {
                            return Err(TestCaseError::fail(format!(
                                "redis {got:?}, window {want:?}"
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_script_decides_exactly_as_the_window() {
        let Some(server) = RedisServer::start("the_script_decides_exactly_as_the_window") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(async {
            RedisStore::builder(limits())
                .prefix("differential")
                .arrival_margin(MARGIN)
                .timeout(Duration::from_secs(2))
                .build(&server.url())
                .unwrap()
        });
        let case = std::sync::atomic::AtomicUsize::new(0);
        proptest!(ProptestConfig::with_cases(24), |(ops in prop::collection::vec(op(), 1..50))| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(run(&store, n, ops))?;
        });
    }
}

#[tokio::test]
async fn cancel_and_correct_deep_in_a_long_log() {
    let Some(server) = RedisServer::start("cancel_and_correct_deep_in_a_long_log") else {
        return;
    };
    let limits = Limits::new()
        .window(Dimension::Requests, Duration::from_secs(60), 1_000)
        .window(Dimension::Tokens, Duration::from_secs(60), 100_000);
    let store = RedisStore::builder(limits).build(&server.url()).unwrap();
    let key = Key::new("long");
    let mut rs = Vec::new();
    for _ in 0..300 {
        rs.push(acquire(&store, &key, Costs::tokens(100)).await);
    }
    // 30,000 tokens used. Far from the newest entry (several chunks back):
    store.cancel(&rs[10]);
    store.correct(&rs[20], &Costs::tokens(600), Instant::now());
    store.correct(&rs[299], &Costs::tokens(0), Instant::now());
    store.flush().await;
    // 30,000 - 100 + 500 - 100 = 30,300 used.
    assert!(fits_now(&store, &key, Costs::tokens(69_700)).await);
    assert!(!fits_now(&store, &key, Costs::tokens(69_701)).await);
    // One entry per reservation (for both limits), and its token record:
    // 299 remain.
    let mut con = client(&server).await;
    let hash = "{tlr:long}:4:rt:60000000";
    assert_eq!(entries(&mut con, hash).await, 299);
    assert_eq!(token_records(&mut con, hash).await, 299);
}

/// Issue #11: what the Redis store learns from a provider has a floor, a
/// bound and an expiry, and never makes a fitting request "never fit".
mod learned {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn requests_and_tokens(window: Duration) -> Limits {
        Limits::new()
            .window(Dimension::Requests, window, 100)
            .window(Dimension::Tokens, window, 100)
    }

    fn said(limit: u64) -> ReportedLimit {
        ReportedLimit::new(Some(limit), None, None)
    }

    async fn store(server: &RedisServer, prefix: &str, limits: Limits, learn: bool) -> RedisStore {
        RedisStore::builder(limits)
            .prefix(prefix)
            .learn_limits(learn)
            .timeout(Duration::from_secs(2))
            .build(&server.url())
            .unwrap()
    }

    async fn server_now_us(con: &mut redis::aio::MultiplexedConnection) -> u64 {
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
        s * 1_000_000 + us
    }

    #[tokio::test]
    async fn learned_limit_of_zero_is_ignored_by_the_script() {
        let Some(server) = RedisServer::start("learned_limit_of_zero_is_ignored_by_the_script")
        else {
            return;
        };
        let s = store(&server, "zero", requests_and_tokens(MINUTE), false).await;
        let k = Key::new("k");
        let _ = s.learn(
            &k,
            Dimension::Requests,
            MINUTE,
            said(0),
            None,
            Instant::now(),
        );
        let _ = s.learn(&k, Dimension::Tokens, MINUTE, said(0), None, Instant::now());
        s.flush().await;
        let d = s
            .acquire(&k, &Costs::tokens(100), Instant::now(), None)
            .await
            .unwrap();
        let r = admitted(d);
        assert!(r.at <= Instant::now(), "the configured limits still hold");
    }

    #[tokio::test]
    async fn learned_limit_has_a_floor_and_a_ceiling_in_the_script() {
        let Some(server) =
            RedisServer::start("learned_limit_has_a_floor_and_a_ceiling_in_the_script")
        else {
            return;
        };
        // Floor: configured 100 tokens, the provider says 1: 10 in force.
        let s = store(&server, "floor", requests_and_tokens(MINUTE), false).await;
        let k = Key::new("k");
        let _ = s.learn(&k, Dimension::Tokens, MINUTE, said(1), None, Instant::now());
        s.flush().await;
        assert!(fits_now(&s, &k, Costs::tokens(10)).await, "floor of 10");
        acquire(&s, &k, Costs::tokens(10)).await;
        assert!(!fits_now(&s, &k, Costs::tokens(1)).await, "and no more");

        // Ceiling: with learn_limits, at most 100 times the configured.
        let s = store(
            &server,
            "ceiling",
            Limits::new().window(Dimension::Requests, MINUTE, 10),
            true,
        )
        .await;
        let _ = s.learn(
            &k,
            Dimension::Requests,
            MINUTE,
            said(1_000_000),
            None,
            Instant::now(),
        );
        s.flush().await;
        for _ in 0..1_000 {
            acquire(&s, &k, Costs::new(0, 0)).await;
        }
        assert!(
            !fits_now(&s, &k, Costs::new(0, 0)).await,
            "1,000 = 10 x 100 in force, not 1,000,000"
        );
    }

    #[tokio::test]
    async fn learned_limit_over_the_request_waits_for_its_expiry_instead_of_never() {
        let Some(server) = RedisServer::start(
            "learned_limit_over_the_request_waits_for_its_expiry_instead_of_never",
        ) else {
            return;
        };
        let s = store(&server, "over", requests_and_tokens(MINUTE), false).await;
        let k = Key::new("k");
        let start = Instant::now();
        let _ = s.learn(&k, Dimension::Tokens, MINUTE, said(10), None, start);
        s.flush().await;
        let now = Instant::now();
        match s
            .acquire(&k, &Costs::tokens(50), now, Some(now))
            .await
            .unwrap()
        {
            Decision::TooLate(at) => assert!(
                near(at, start + MINUTE),
                "fits once the learned limit expires (a window): {:?}",
                at.saturating_duration_since(start)
            ),
            other => panic!("50 tokens fit the configured 100: {other:?}"),
        }
        // Over the configured capacity is "never", judged against it alone.
        match s
            .acquire(&k, &Costs::tokens(101), Instant::now(), None)
            .await
            .unwrap()
        {
            Decision::Never { cost, capacity } => assert_eq!((cost, capacity), (101, 100)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn learned_limit_expires_and_a_repeated_header_refreshes_it_in_the_script() {
        let Some(server) = RedisServer::start(
            "learned_limit_expires_and_a_repeated_header_refreshes_it_in_the_script",
        ) else {
            return;
        };
        // Default expiry: the window (600 ms).
        let w = Duration::from_millis(600);
        let s = store(&server, "expiry", requests_and_tokens(w), false).await;
        let k = Key::new("k");
        let start = Instant::now();
        let _ = s.learn(&k, Dimension::Tokens, w, said(10), None, start);
        s.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = Instant::now();
        let _ = s.learn(&k, Dimension::Tokens, w, said(10), None, again);
        s.flush().await;
        let first = acquire(&s, &k, Costs::tokens(50)).await;
        assert!(
            near(first.at, again + w),
            "waits until the refreshed expiry: {:?} after the first header",
            first.at.saturating_duration_since(start)
        );
        // Then the configured 100 is back in force.
        let second = acquire(&s, &k, Costs::tokens(50)).await;
        assert!(near(second.at, first.at), "configured limit back");
    }

    #[tokio::test]
    async fn learned_limit_default_expiry_is_the_window_at_most_ten_minutes() {
        let Some(server) =
            RedisServer::start("learned_limit_default_expiry_is_the_window_at_most_ten_minutes")
        else {
            return;
        };
        let hour = Duration::from_secs(3_600);
        let s = store(
            &server,
            "ttl",
            Limits::new().window(Dimension::Tokens, hour, 1_000),
            false,
        )
        .await;
        let k = Key::new("k");
        let _ = s.learn(&k, Dimension::Tokens, hour, said(500), None, Instant::now());
        s.flush().await;
        let mut con = client(&server).await;
        let now = server_now_us(&mut con).await;
        let lu: Option<u64> = con
            .hget("{ttl:k}:4:t:3600000000", "lu:t:3600000000")
            .await
            .unwrap();
        let lu = lu.expect("the learned limit's expiry is stored");
        let left = Duration::from_micros(lu.saturating_sub(now));
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(590),
            "{left:?}"
        );
        let ttl: i64 = con.pttl("{ttl:k}:4:t:3600000000").await.unwrap();
        assert!(
            ttl >= 600_000,
            "the hash outlives the learned limit: {ttl} ms"
        );
    }

    #[tokio::test]
    async fn learned_ttl_sets_how_long_a_learned_limit_holds() {
        let Some(server) = RedisServer::start("learned_ttl_sets_how_long_a_learned_limit_holds")
        else {
            return;
        };
        let hour = Duration::from_secs(3_600);
        let limits = Limits::new().window(Dimension::Tokens, hour, 1_000);
        let s = RedisStore::builder(limits.clone())
            .prefix("ttl5")
            .learned_ttl(Duration::from_secs(5))
            .build(&server.url())
            .unwrap();
        let k = Key::new("k");
        let _ = s.learn(&k, Dimension::Tokens, hour, said(500), None, Instant::now());
        s.flush().await;
        let mut con = client(&server).await;
        let now = server_now_us(&mut con).await;
        let lu: Option<u64> = con
            .hget("{ttl5:k}:4:t:3600000000", "lu:t:3600000000")
            .await
            .unwrap();
        let left = Duration::from_micros(lu.expect("stored").saturating_sub(now));
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(4),
            "{left:?}"
        );
        // A zero ttl: nothing learned holds.
        let s = RedisStore::builder(limits)
            .prefix("ttl0")
            .learned_ttl(Duration::ZERO)
            .build(&server.url())
            .unwrap();
        let _ = s.learn(&k, Dimension::Tokens, hour, said(500), None, Instant::now());
        s.flush().await;
        let lim: Option<u64> = con
            .hget("{ttl0:k}:4:t:3600000000", "lim:t:3600000000")
            .await
            .unwrap();
        assert_eq!(lim, None);
        assert!(fits_now(&s, &k, Costs::tokens(1_000)).await);
    }
}

/// Issue #11: a reservation made on the server by an acquire whose answer
/// never reached its caller is given back.
mod abandoned {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Pauses every client of the server for `ms` (the command itself
    /// returns at once).
    async fn pause(con: &mut redis::aio::MultiplexedConnection, ms: u64) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("ALL")
            .query_async::<()>(con)
            .await
            .unwrap();
    }

    /// Returns once the pause is over (a PING waits behind it).
    async fn until_unpaused(con: &mut redis::aio::MultiplexedConnection) {
        redis::cmd("PING").query_async::<String>(con).await.unwrap();
    }

    async fn used(con: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
        entries(con, &format!("{{{prefix}:k}}:4:r:60000000")).await
    }

    #[tokio::test]
    async fn a_redis_acquire_that_times_out_leaks_no_reservation() {
        let Some(server) =
            RedisServer::start("a_redis_acquire_that_times_out_leaks_no_reservation")
        else {
            return;
        };
        let store = RedisStore::builder(Limits::new().window(Dimension::Requests, MINUTE, 10))
            .prefix("timeout")
            .timeout(Duration::from_millis(100))
            .retry_interval(Duration::from_millis(50))
            .build(&server.url())
            .unwrap();
        let k = Key::new("k");
        let one = Costs::new(0, 0);
        // Connected, script loaded.
        let r = acquire(&store, &k, one).await;
        store.cancel(&r);
        store.flush().await;
        let mut con = client(&server).await;
        assert_eq!(used(&mut con, "timeout").await, 0);

        // The server runs the script only after the caller gave up.
        pause(&mut con, 500).await;
        let e = store
            .acquire(&k, &one, Instant::now(), None)
            .await
            .unwrap_err();
        assert!(e.is_store_unavailable(), "{e}");
        until_unpaused(&mut con).await;
        store.flush().await;
        assert_eq!(
            used(&mut con, "timeout").await,
            0,
            "the reservation the timed-out acquire made was given back"
        );
        assert!(fits_now(&store, &k, Costs::new(0, 0)).await);
    }

    #[tokio::test]
    async fn a_limiter_future_dropped_while_acquiring_leaks_no_reservation() {
        use tower::{Service, ServiceBuilder, ServiceExt};
        use tower_llm_resilience::rate_limit::RateLimitLayer;

        let Some(server) =
            RedisServer::start("a_limiter_future_dropped_while_acquiring_leaks_no_reservation")
        else {
            return;
        };
        let limits = Limits::new().window(Dimension::Requests, MINUTE, 10);
        let store = RedisStore::builder(limits.clone())
            .prefix("dropped")
            .timeout(Duration::from_secs(5))
            .build(&server.url())
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(
                RateLimitLayer::new(limits)
                    .store(store.clone())
                    .key_fn(|_: &http::Request<String>| Key::new("k")),
            )
            .service_fn(|_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            });
        // Connected, script loaded.
        let r = acquire(&store, &Key::new("k"), Costs::new(0, 0)).await;
        store.cancel(&r);
        store.flush().await;
        let mut con = client(&server).await;

        pause(&mut con, 500).await;
        let call = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()));
        // The caller gives up while the script call is in flight.
        assert!(tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err());
        until_unpaused(&mut con).await;
        store.flush().await;
        assert_eq!(
            used(&mut con, "dropped").await,
            0,
            "the reservation of the dropped future was given back"
        );
    }
}

/// Issue #11: a cancel is never dropped for a full operation queue (a lost
/// cancel holds quota idle for a whole window).
#[tokio::test]
async fn cancels_are_not_dropped_when_the_operation_queue_is_full() {
    let Some(server) =
        RedisServer::start("cancels_are_not_dropped_when_the_operation_queue_is_full")
    else {
        return;
    };
    let window = Duration::from_secs(60);
    let store = RedisStore::builder(Limits::new().window(Dimension::Requests, window, 50))
        .prefix("full")
        .timeout(Duration::from_secs(5))
        .build(&server.url())
        .unwrap();
    let k = Key::new("k");
    let mut rs = Vec::new();
    for _ in 0..50 {
        rs.push(acquire(&store, &k, Costs::new(0, 0)).await);
    }
    // With no await in between, the background task (same single-threaded
    // runtime) cannot run: the queue (1,024) fills and overflows.
    for _ in 0..1_100 {
        store.correct(&rs[0], &Costs::new(1, 1), Instant::now());
    }
    for r in &rs {
        store.cancel(r);
    }
    store.flush().await;
    let mut con = client(&server).await;
    let hash = "{full:k}:4:r:60000000";
    assert_eq!(entries(&mut con, hash).await, 0, "every cancel ran");
    assert_eq!(
        token_records(&mut con, hash).await,
        0,
        "and took its record"
    );
    for _ in 0..50 {
        let now = Instant::now();
        assert!(matches!(
            store
                .acquire(&k, &Costs::new(0, 0), now, Some(now))
                .await
                .unwrap(),
            Decision::Admitted(_)
        ));
    }
}

/// Issue #11: a gate this process closed after a reservation was booked
/// is what `watch` answers for it, so that the waiter sleeps until then.
#[tokio::test]
async fn watch_answers_a_gate_closed_after_the_reservation_was_booked() {
    let Some(server) =
        RedisServer::start("watch_answers_a_gate_closed_after_the_reservation_was_booked")
    else {
        return;
    };
    let store = RedisStore::builder(Limits::new().window(Dimension::Requests, W, 100))
        .prefix("watch")
        .build(&server.url())
        .unwrap();
    let k = Key::new("k");
    let r = acquire(&store, &k, Costs::new(0, 0)).await;
    let waker = std::task::Waker::noop();
    assert_eq!(store.watch(&r, waker), None, "no gate: the booking stands");
    let until = Instant::now() + Duration::from_millis(500);
    store.gate(&k, until);
    assert_eq!(store.watch(&r, waker), Some(until), "the gate ends later");
    // An earlier gate never shortens it.
    store.gate(&k, until - Duration::from_millis(100));
    assert_eq!(store.watch(&r, waker), Some(until));
    // A reservation booked after the gate's end is not moved.
    let late = Reservation {
        at: until + Duration::from_millis(1),
        ..r.clone()
    };
    assert_eq!(store.watch(&late, waker), None);
    // Another key is not gated.
    let other = acquire(&store, &Key::new("other"), Costs::new(0, 0)).await;
    assert_eq!(store.watch(&other, waker), None);
    store.unwatch(&r);
}

/// A TCP proxy in front of the server that can cut every connection and
/// turn new ones away (a network partition), then let them through again.
struct Proxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(AtomicBool::new(true));
        let (cuts, rx) = tokio::sync::watch::channel(0u64);
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let mut rx = rx.clone();
                rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy { port, open, cuts }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Issue #11 (nothing lost): a cancel that cannot reach Redis is kept and
/// runs once Redis is reachable again, on its own.
#[tokio::test]
async fn a_cancel_that_cannot_reach_redis_runs_once_it_is_back() {
    let Some(server) = RedisServer::start("a_cancel_that_cannot_reach_redis_runs_once_it_is_back")
    else {
        return;
    };
    let proxy = Proxy::start(server.port).await;
    let store =
        RedisStore::builder(Limits::new().window(Dimension::Requests, Duration::from_secs(60), 10))
            .prefix("partition")
            .timeout(Duration::from_millis(300))
            .retry_interval(Duration::from_millis(50))
            .build(&proxy.url())
            .unwrap();
    let k = Key::new("k");
    let r = acquire(&store, &k, Costs::new(0, 0)).await;
    let mut con = client(&server).await;
    let log = "{partition:k}:4:r:60000000";
    proxy.cut();
    store.cancel(&r);
    store.flush().await;
    assert_eq!(
        entries(&mut con, log).await,
        1,
        "Redis unreachable: not cancelled yet"
    );
    proxy.restore();
    // No flush: the store retries on its own once Redis is asked again.
    let start = std::time::Instant::now();
    loop {
        if entries(&mut con, log).await == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cancel never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue #12: Redis runs every script in its one thread, so a script that
/// reads a whole window (a per-day limit holds a day of entries) slows
/// every decision of every process as the traffic grows. What a decision
/// costs Redis is measured here structurally, not by timing: `INFO
/// commandstats` counts the commands each script runs (under their own
/// names), so the test asserts that no script runs a command that reads
/// a whole structure, and that the number of commands per decision stays
/// the same from 100 to 100,000 entries in the window. Deterministic on a
/// loaded machine: only the counts matter, never the durations.
mod at_scale {
    use super::*;
    use std::collections::BTreeMap;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Commands that read (or rewrite) a structure in time proportional to
    /// its size.
    const WHOLE: &[&str] = &[
        "lrange",
        "lrem",
        "lset",
        "linsert",
        "lpos",
        "hgetall",
        "hkeys",
        "hvals",
        "hscan",
        "zrange",
        "zrangebyscore",
        "zscan",
        "smembers",
        "sscan",
        "keys",
        "scan",
        "sort",
    ];

    /// The commands the scripts ran since the last reset (not the
    /// script calls themselves, nor the test's own `INFO`/`CONFIG`).
    fn inner_calls(server: &RedisServer) -> BTreeMap<String, u64> {
        server
            .command_stats()
            .into_iter()
            .filter(|(name, ..)| {
                !(name.starts_with("eval")
                    || name.starts_with("fcall")
                    || name.starts_with("function")
                    || name.starts_with("script")
                    || name.starts_with("config")
                    || name == "info")
            })
            .map(|(name, calls, _)| (name, calls))
            .collect()
    }

    async fn measure<F: std::future::Future<Output = ()>>(
        server: &RedisServer,
        store: &RedisStore,
        op: F,
    ) -> BTreeMap<String, u64> {
        store.flush().await;
        server.reset_stats();
        op.await;
        store.flush().await;
        inner_calls(server)
    }

    /// The number of commands; what is wrong with them goes to `failures`.
    fn check(
        what: &str,
        n: usize,
        calls: &BTreeMap<String, u64>,
        bound: u64,
        failures: &mut Vec<String>,
    ) -> u64 {
        for w in WHOLE {
            if calls.contains_key(*w) {
                failures.push(format!(
                    "{what} with {n} entries in the window ran {w}: {calls:?}"
                ));
            }
        }
        let total = calls.values().sum();
        if total > bound {
            failures.push(format!(
                "{what} with {n} entries in the window ran {total} commands (> {bound}): {calls:?}"
            ));
        }
        total
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_work_per_decision_does_not_grow_with_the_window() {
        let Some(server) =
            RedisServer::start("redis_work_per_decision_does_not_grow_with_the_window")
        else {
            return;
        };
        let limits = Limits::new()
            .window(Dimension::Requests, DAY, 1_000_000_000)
            .window(Dimension::Tokens, DAY, 1_000_000_000_000);
        let store = RedisStore::builder(limits)
            .prefix("scale")
            .timeout(Duration::from_secs(5))
            .build(&server.url())
            .unwrap();
        let key = Key::new("day");
        let mut rs: Vec<Reservation> = Vec::new();
        // Per operation, the commands at each size.
        let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut failures = Vec::new();
        let mut corrected = std::collections::HashSet::new();
        for n in [100, 10_000, 100_000] {
            let more = n - rs.len();
            rs.extend(support::fill(&store, &key, more, Costs::new(100, 20), 32).await);
            assert_eq!(rs.len(), n);
            let acquire = measure(&server, &store, async {
                let d = store
                    .acquire(&key, &Costs::new(100, 20), Instant::now(), None)
                    .await
                    .unwrap();
                rs.push(admitted(d));
            })
            .await;
            let learn = measure(&server, &store, async {
                let _ = store.learn(
                    &key,
                    Dimension::Tokens,
                    DAY,
                    ReportedLimit::new(Some(1_000_000_000_000), Some(1_000_000_000_000), None),
                    None,
                    Instant::now(),
                );
            })
            .await;
            // The oldest reservation: as deep in the window as it gets.
            let correct_old = measure(&server, &store, async {
                store.correct(&rs[0], &Costs::new(90, 10), Instant::now());
            })
            .await;
            corrected.insert(rs[0].id);
            corrected.insert(rs.last().unwrap().id);
            let correct_new = measure(&server, &store, async {
                store.correct(rs.last().unwrap(), &Costs::new(90, 10), Instant::now());
            })
            .await;
            let victim = rs.remove(1);
            let cancel = measure(&server, &store, async {
                store.cancel(&victim);
            })
            .await;
            for (what, calls, bound) in [
                ("acquire", &acquire, 16),
                ("learn", &learn, 12),
                ("correct (oldest)", &correct_old, 12),
                ("correct (newest)", &correct_new, 12),
                ("cancel", &cancel, 12),
            ] {
                let total = check(what, n, calls, bound, &mut failures);
                seen.entry(what).or_default().push(total);
            }
        }
        // Flat: the commands a decision runs do not depend on the size of
        // the window. The expiry is pushed forward in steps (at most
        // every 250 ms of the server's clock: a PTTL and a PEXPIRE for
        // each of the key's 4 keys), which a slow machine may hit at any
        // size: that much slack, no more.
        for (what, totals) in &seen {
            let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
            if hi - lo > 8 {
                failures.push(format!(
                    "{what}: commands per decision at 100, 10k, 100k entries: {totals:?}"
                ));
            }
        }
        eprintln!("commands per decision at 100 / 10k / 100k entries: {seen:?}");
        assert!(failures.is_empty(), "{failures:#?}");
        // The running sums are the sums: what is left of the limit is
        // exactly the configured one less the entries left, each at its
        // corrected cost.
        let used: u64 = rs
            .iter()
            .map(|r| if corrected.contains(&r.id) { 100 } else { 120 })
            .sum();
        let left = 1_000_000_000_000 - used;
        assert!(fits_now(&store, &key, Costs::tokens(left)).await);
        assert!(!fits_now(&store, &key, Costs::tokens(left + 1)).await);
    }

    /// A full per-day window with a queue of requests booked a day ahead:
    /// each new request finds its instant without reading the queue, and
    /// the instant is still exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_acquire_does_not_walk_the_queue() {
        let Some(server) = RedisServer::start("a_queued_acquire_does_not_walk_the_queue") else {
            return;
        };
        const N: usize = 5_000;
        let limits = Limits::new().window(Dimension::Requests, DAY, N as u64);
        let store = RedisStore::builder(limits)
            .prefix("queue")
            .timeout(Duration::from_secs(5))
            .build(&server.url())
            .unwrap();
        let key = Key::new("day");
        let first = support::fill(&store, &key, N, Costs::new(100, 20), 32).await;
        // The window is full: each of these waits for one entry to leave,
        // a day after it came, in order.
        let mut queued = Vec::new();
        for i in 0..500 {
            let d = store
                .decide(&key, &Costs::new(1, 1), Instant::now(), None)
                .await
                .unwrap();
            let at = d.server_at_us.unwrap();
            queued.push(at);
            if i > 0 {
                assert!(at >= queued[i - 1], "FIFO");
            }
            let _ = admitted(d.decision);
        }
        let _ = first;
        let mut totals = Vec::new();
        let mut failures = Vec::new();
        for _ in 0..3 {
            let calls = measure(&server, &store, async {
                let d = store
                    .decide(&key, &Costs::new(1, 1), Instant::now(), None)
                    .await
                    .unwrap();
                assert!(d.server_at_us.unwrap() >= *queued.last().unwrap());
                let _ = admitted(d.decision);
            })
            .await;
            totals.push(check("queued acquire", N + 500, &calls, 20, &mut failures));
        }
        eprintln!("commands per queued acquire: {totals:?}");
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

/// Issues #12 and #13 changed the key layout three times: a process of an
/// older version (list logs under `:s`, one entries hash per limit under
/// `:s2`, or layout 3 under `:3:`, with its token generations) and one of
/// this version never read or write each other's keys (neither can
/// corrupt the other's counts), and the new one says so, once per store,
/// when it finds the old one's state on a key.
#[tokio::test]
async fn an_old_layout_process_is_left_alone_and_warned_about() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let Some(server) = RedisServer::start("an_old_layout_process_is_left_alone_and_warned_about")
    else {
        return;
    };
    let mut con = client(&server).await;
    // What a process of the old version leaves: its state hash and log.
    let () = con
        .hset_multiple("{up:k}:s", &[("sum:r:60000000", "1"), ("id", "7")])
        .await
        .unwrap();
    let () = con.rpush("{up:k}:l:r:60000000", "1,7,1").await.unwrap();
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store =
        RedisStore::builder(Limits::new().window(Dimension::Requests, Duration::from_secs(60), 2))
            .prefix("up")
            .build(&server.url())
            .unwrap();
    let k = Key::new("k");
    // The old entry is not this version's: both requests of the limit fit.
    let a = acquire(&store, &k, Costs::new(0, 0)).await;
    let b = acquire(&store, &k, Costs::new(0, 0)).await;
    assert!(a.at <= Instant::now() && b.at <= Instant::now());
    assert!(!fits_now(&store, &k, Costs::new(0, 0)).await);
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        log.matches("older version").count(),
        1,
        "warned once: {log}"
    );
    // The old process's keys are untouched.
    let sum: String = con.hget("{up:k}:s", "sum:r:60000000").await.unwrap();
    let entries: Vec<String> = con.lrange("{up:k}:l:r:60000000", 0, -1).await.unwrap();
    assert_eq!((sum.as_str(), entries), ("1", vec!["1,7,1".to_owned()]));

    // The same with a process of layout 2 (`:s2`, one entries hash per
    // limit), seen by another store.
    let () = con.hset("{up2:k}:s2", "k", vec![0u8; 40]).await.unwrap();
    let () = con.hset("{up2:k}:e:r:60000000", "7", "x").await.unwrap();
    let store =
        RedisStore::builder(Limits::new().window(Dimension::Requests, Duration::from_secs(60), 2))
            .prefix("up2")
            .build(&server.url())
            .unwrap();
    let a = acquire(&store, &k, Costs::new(0, 0)).await;
    let b = acquire(&store, &k, Costs::new(0, 0)).await;
    assert!(a.at <= Instant::now() && b.at <= Instant::now());
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches("older version").count(), 2, "{log}");
    let old: Vec<u8> = con.hget("{up2:k}:s2", "k").await.unwrap();
    let entry: String = con.hget("{up2:k}:e:r:60000000", "7").await.unwrap();
    assert_eq!((old, entry.as_str()), (vec![0u8; 40], "x"), "untouched");

    // And with a process of layout 3 (`:3:`).
    let () = con.hset("{up3:k}:3:s", "k", vec![0u8; 64]).await.unwrap();
    let () = con.hset("{up3:k}:3:e:r:60000000", "7", "x").await.unwrap();
    let store =
        RedisStore::builder(Limits::new().window(Dimension::Requests, Duration::from_secs(60), 2))
            .prefix("up3")
            .build(&server.url())
            .unwrap();
    let a = acquire(&store, &k, Costs::new(0, 0)).await;
    let b = acquire(&store, &k, Costs::new(0, 0)).await;
    assert!(a.at <= Instant::now() && b.at <= Instant::now());
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches("older version").count(), 3, "{log}");
    let old: Vec<u8> = con.hget("{up3:k}:3:s", "k").await.unwrap();
    let entry: String = con.hget("{up3:k}:3:e:r:60000000", "7").await.unwrap();
    assert_eq!((old, entry.as_str()), (vec![0u8; 64], "x"), "untouched");
}

/// The state of a key lost on its own while its entries survive: the
/// next decision counts the entries again (the one time a script reads a
/// whole window) instead of starting from zero and over-admitting, and the
/// ids go on from the entries' (a cancel of a reservation made before
/// still finds it).
#[tokio::test]
async fn a_lost_state_hash_is_recounted_from_the_entries() {
    let Some(server) = RedisServer::start("a_lost_state_hash_is_recounted_from_the_entries") else {
        return;
    };
    let limits = Limits::new()
        .window(Dimension::Requests, Duration::from_secs(60), 10)
        .window(Dimension::Tokens, Duration::from_secs(60), 1_000);
    let store = RedisStore::builder(limits)
        .prefix("lost")
        .build(&server.url())
        .unwrap();
    let k = Key::new("k");
    let mut rs = Vec::new();
    for _ in 0..4 {
        rs.push(acquire(&store, &k, Costs::tokens(100)).await);
    }
    let mut con = client(&server).await;
    let n: usize = con.hdel("{lost:k}:4:rt:60000000", "s").await.unwrap();
    assert_eq!(n, 1);
    // 400 tokens and 4 requests still count.
    assert!(fits_now(&store, &k, Costs::tokens(600)).await);
    assert!(!fits_now(&store, &k, Costs::tokens(601)).await);
    let r = acquire(&store, &k, Costs::tokens(100)).await;
    assert!(r.id > rs[3].id, "ids go on: {} after {}", r.id, rs[3].id);
    store.cancel(&rs[0]);
    store.flush().await;
    assert!(fits_now(&store, &k, Costs::tokens(600)).await);
    assert!(!fits_now(&store, &k, Costs::tokens(601)).await);
}
