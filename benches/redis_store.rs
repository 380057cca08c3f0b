//! Decisions per second and latency per decision of the Redis store
//! against a local `redis-server` (started here on a free port), next to
//! the in-memory store for scale.
//!
//! `cargo bench --features redis --bench redis_store`

#[path = "../tests/redis_support/mod.rs"]
mod support;

use std::time::Duration;

use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Costs, Decision, Dimension, Limits, MemoryStore, Store};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

const N: usize = 20_000;

fn limits() -> Limits {
    // Never full: every decision is admitted at once, as on a healthy quota.
    Limits::new()
        .window(Dimension::Requests, Duration::from_secs(60), 1_000_000_000)
        .window(
            Dimension::Tokens,
            Duration::from_secs(60),
            1_000_000_000_000,
        )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

async fn sequential<S: Store>(name: &str, s: &S, key: &Key) {
    let costs = Costs::new(500, 200);
    // Warm up (script load, connection).
    for _ in 0..500 {
        s.acquire(key, &costs, Instant::now(), None).await.unwrap();
    }
    let mut lat = Vec::with_capacity(N);
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        let d = s.acquire(key, &costs, t, None).await.unwrap();
        lat.push(t.elapsed());
        assert!(matches!(d, Decision::Admitted(_)));
    }
    let total = start.elapsed();
    lat.sort_unstable();
    println!(
        "{name:<28} 1 task : {:>9.0} decisions/s  p50 {:>8.1?}  p99 {:>8.1?}",
        N as f64 / total.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99)
    );
}

async fn concurrent<S: Store + Clone>(name: &str, s: &S, key: &Key, tasks: usize) {
    let per = N / tasks;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let s = s.clone();
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                s.acquire(&key, &Costs::new(500, 200), t, None)
                    .await
                    .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    let total = start.elapsed();
    lat.sort_unstable();
    println!(
        "{name:<28} {tasks:>2} tasks: {:>9.0} decisions/s  p50 {:>8.1?}  p99 {:>8.1?}",
        (per * tasks) as f64 / total.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(server) = RedisServer::start("redis_store bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisStore::builder(limits())
            .prefix("bench")
            .build(&server.url())
            .unwrap();
        let memory = MemoryStore::new(limits());
        sequential("memory", &memory, &Key::new("m1")).await;
        sequential("redis", &redis, &Key::new("r1")).await;
        concurrent("memory", &memory, &Key::new("m2"), 16).await;
        concurrent("redis (one key)", &redis, &Key::new("r2"), 16).await;
        // With a correction per request (as when responses carry usage):
        // the corrections run in the background, one script each.
        let start = Instant::now();
        let key = Key::new("r3");
        for _ in 0..N {
            let d = redis
                .acquire(&key, &Costs::new(500, 200), Instant::now(), None)
                .await
                .unwrap();
            if let Decision::Admitted(r) = d {
                redis.correct(&r, &Costs::new(480, 150), Instant::now());
            }
        }
        redis.flush().await;
        println!(
            "{:<28}  1 task : {:>9.0} decisions/s (each corrected, 20k entries in the window)",
            "redis + correct",
            N as f64 / start.elapsed().as_secs_f64()
        );
        let keys: Vec<Key> = (0..16).map(|i| Key::new(format!("k{i}"))).collect();
        let start = Instant::now();
        let mut hs = Vec::new();
        for k in keys {
            let s = redis.clone();
            hs.push(tokio::spawn(async move {
                for _ in 0..N / 16 {
                    s.acquire(&k, &Costs::new(500, 200), Instant::now(), None)
                        .await
                        .unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        println!(
            "{:<28} 16 tasks: {:>9.0} decisions/s",
            "redis (16 keys)",
            (N / 16 * 16) as f64 / start.elapsed().as_secs_f64()
        );
    });
}

use support::RedisServer;
