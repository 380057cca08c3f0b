//! Allocation accounting with a counting global allocator (this test
//! binary only): no allocation per request on the success path, and the
//! memory held per idle key with 100,000 keys.

use std::cell::Cell;
use std::time::Duration;

use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::key::Key;
use tower_llm_resilience::rate_limit::{Dimension, Limits, RateLimitLayer};

mod support;

use support::{Noop, ALLOCS, LIVE};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn no_allocation_per_request_on_the_success_path() {
    let rt = rt();
    let limits = Limits::new()
        .window(Dimension::Requests, Duration::from_secs(60), 1 << 40)
        .window(Dimension::Tokens, Duration::from_secs(60), 1 << 50);
    let mut svc = RateLimitLayer::new(limits).layer(Noop);
    let body = r#"{"model":"m","max_tokens":16,"messages":[]}"#;
    rt.block_on(async {
        // Warm up: the key's state, and the log's capacity (3,000 entries
        // round up to 4,096; the log grows only while the requests in a
        // window grow, then reuses its buffer).
        for _ in 0..3_000 {
            let r = Request::new(String::new());
            svc.ready().await.unwrap().call(r).await.unwrap();
        }
        let mut reqs: Vec<_> = (0..1_000)
            .map(|_| Request::new(String::from(body)))
            .collect();
        let before = ALLOCS.with(Cell::get);
        for r in reqs.drain(..) {
            svc.ready().await.unwrap().call(r).await.unwrap();
        }
        let after = ALLOCS.with(Cell::get);
        assert_eq!(after - before, 0, "allocations in 1,000 requests");
    });
}

#[test]
fn memory_per_idle_key() {
    const KEYS: usize = 100_000;
    let rt = rt();
    let limits = Limits::new()
        .requests_per_minute(500)
        .tokens_per_minute(200_000);
    let names: Vec<Key> = (0..KEYS).map(|i| Key::new(format!("key-{i:06}"))).collect();
    let live_before = LIVE.with(Cell::get);
    let svc = RateLimitLayer::new(limits)
        .max_keys(KEYS)
        .key_fn(|r: &Request<String>| r.extensions().get::<Key>().cloned().unwrap_or(Key::DEFAULT))
        .layer(Noop);
    rt.block_on(async {
        for k in &names {
            let mut r = Request::new(String::new());
            r.extensions_mut().insert(k.clone());
            svc.clone().oneshot(r).await.unwrap();
        }
    });
    assert_eq!(svc.store().len(), KEYS);
    let held = LIVE.with(Cell::get) - live_before;
    let per_key = held as f64 / KEYS as f64;
    println!(
        "memory per idle key ({KEYS} keys, requests + tokens per minute, one request each, \
         key names not counted): {per_key:.0} bytes"
    );
    // One request per key: map slot + window + two 1-entry logs.
    assert!(per_key < 1024.0, "{per_key} bytes per key");
}

/// A key that had a burst kept the burst's whole log buffer (capacity)
/// after its window emptied: 100 requests left about 8 KiB per key for
/// good. Memory per key whose window emptied (and that was used again
/// once, which prunes it) must stay under 1 KiB.
#[test]
fn a_key_keeps_its_bursts_buffer_after_its_window_empties() {
    const KEYS: usize = 1_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let limits = Limits::new()
        .requests_per_minute(1_000)
        .tokens_per_minute(1 << 30);
    let names: Vec<Key> = (0..KEYS).map(|i| Key::new(format!("key-{i:06}"))).collect();
    let live_before = LIVE.with(Cell::get);
    let svc = RateLimitLayer::new(limits)
        .max_keys(KEYS)
        .key_fn(|r: &Request<String>| r.extensions().get::<Key>().cloned().unwrap_or(Key::DEFAULT))
        .layer(Noop);
    let send = |k: &Key| {
        let mut r = Request::new(String::from(r#"{"max_tokens":16}"#));
        r.extensions_mut().insert(k.clone());
        svc.clone().oneshot(r)
    };
    rt.block_on(async {
        for k in &names {
            for _ in 0..100 {
                send(k).await.unwrap();
            }
        }
        let burst = (LIVE.with(Cell::get) - live_before) as f64 / KEYS as f64;
        println!("memory per key holding a 100-request burst: {burst:.0} bytes");
        tokio::time::advance(Duration::from_secs(61)).await;
        // One more request each: the window is pruned (one entry left).
        for k in &names {
            send(k).await.unwrap();
        }
    });
    assert_eq!(svc.store().len(), KEYS);
    let per_key = (LIVE.with(Cell::get) - live_before) as f64 / KEYS as f64;
    println!(
        "memory per key after its burst left the window ({KEYS} keys, requests + tokens \
         per minute, one request in the window, key names not counted): {per_key:.0} bytes"
    );
    assert!(per_key < 1024.0, "{per_key} bytes per key");
}
