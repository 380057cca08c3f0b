//! Several OS processes share one quota through Redis.
//!
//! A custom harness (`harness = false`): run plainly, this binary starts a
//! `redis-server` and re-invokes itself as worker processes (selected by an
//! environment variable); each worker hammers one key with several tasks
//! for several windows and prints the Redis server's admission instant of
//! every reservation. The parent merges the logs and checks that no
//! interval of the window's length holds more than the limit, and that the
//! quota was used to at least 95 %.

#[path = "redis_support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::RedisServer;
use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Costs, Decision, Dimension, Limits};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

const PROCESSES: usize = 3;
const TASKS: usize = 4;
const LIMIT: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);
const RUN: Duration = Duration::from_millis(4_500);
const WORKER_ENV: &str = "TLR_REDIS_WORKER_URL";

fn main() {
    if let Ok(url) = std::env::var(WORKER_ENV) {
        worker(&url);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        println!("multi_process_quota: test");
        return;
    }
    print!("test multi_process_quota ... ");
    let _ = std::io::stdout().flush();
    let Some(server) = RedisServer::start("multi_process_quota") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(WORKER_ENV, server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut per_process = Vec::new();
    let mut all_ats = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed: {:?}", out.status);
        let ats: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("ADMIT "))
            .map(|n| n.trim().parse().unwrap())
            .collect();
        assert!(!ats.is_empty(), "every process was admitted");
        per_process.push(ats.len());
        all_ats.extend(ats);
    }
    let mut ats = all_ats;
    ats.sort_unstable();
    let w = WINDOW.as_micros() as u64;
    let worst = max_in_any_window(&ats, w);
    assert!(
        worst as u64 <= LIMIT,
        "{worst} admissions in one window of {WINDOW:?} (limit {LIMIT})"
    );
    let t0 = ats[0];
    let windows = 3;
    let used = ats.iter().filter(|&&t| t < t0 + windows * w).count() as u64;
    let quota = windows * LIMIT;
    assert!(
        used * 100 >= quota * 95,
        "only {used} of {quota} admissions in the first {windows} windows"
    );
    println!(
        "ok ({PROCESSES} processes x {TASKS} tasks, per process {per_process:?}; max {worst} per window of {WINDOW:?} (limit {LIMIT}); {used}/{quota} of the quota used over {windows} windows)"
    );
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

fn worker(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedisStore::builder(Limits::new().window(Dimension::Requests, WINDOW, LIMIT))
            .prefix("multi-process")
            .timeout(Duration::from_secs(2))
            .build(url)
            .unwrap();
        let end = Instant::now() + RUN;
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = Key::from_static("shared-api-key");
                let mut log = Vec::new();
                while Instant::now() < end {
                    let d = store
                        .decide(&key, &Costs::new(0, 0), Instant::now(), None)
                        .await
                        .expect("redis is up");
                    let Decision::Admitted(r) = d.decision else {
                        panic!("no deadline: always admitted")
                    };
                    log.push(d.server_at_us.expect("decided by redis"));
                    tokio::time::sleep_until(r.at).await;
                }
                log
            }));
        }
        let mut out = String::new();
        for t in tasks {
            for at in t.await.unwrap() {
                out.push_str(&format!("ADMIT {at}\n"));
            }
        }
        print!("{out}");
    });
}
