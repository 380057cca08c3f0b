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
const FAULT_ENV: &str = "TLR_REDIS_WORKER_FAULT";
const FAULT_TIMEOUT: Duration = Duration::from_millis(200);

fn main() {
    if let Ok(url) = std::env::var(WORKER_ENV) {
        if std::env::var_os(FAULT_ENV).is_some() {
            fault_worker(&url);
        } else {
            worker(&url);
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        println!("multi_process_quota: test");
        println!("multi_process_redis_killed_mid_run: test");
        return;
    }
    quota();
    killed_mid_run();
}

fn quota() {
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

/// Redis killed mid-run under 3 processes (fail closed): every process
/// gets typed errors within the timeout while it is down (no hang, no
/// panic) and is admitted by Redis again once it is back on the same port.
fn killed_mid_run() {
    print!("test multi_process_redis_killed_mid_run ... ");
    let _ = std::io::stdout().flush();
    let Some(mut server) = RedisServer::start("multi_process_redis_killed_mid_run") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(WORKER_ENV, server.url())
                .env(FAULT_ENV, "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));
    server.kill();
    std::thread::sleep(Duration::from_millis(1_000));
    server.restart();
    // No hang: every worker ends on its own well within its run.
    let start = std::time::Instant::now();
    let mut outputs = Vec::new();
    for c in &mut children {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "worker failed: {status:?}");
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!("a worker hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for c in children {
        outputs.push(String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned());
    }
    let mut summary = Vec::new();
    for out in &outputs {
        let times = |tag: &str| -> Vec<u64> {
            out.lines()
                .filter_map(|l| l.strip_prefix(tag))
                .map(|n| n.trim().parse().unwrap())
                .collect()
        };
        let (ok, err) = (times("OK "), times("ERR "));
        assert!(
            ok.iter().any(|&t| t < 1_400),
            "admitted by Redis before the kill"
        );
        assert!(!err.is_empty(), "refused while Redis was down");
        assert!(
            err.iter().all(|&t| t > 1_300 && t < 3_500),
            "errors only around the outage: {err:?}"
        );
        assert!(
            ok.iter().any(|&t| t > 3_000),
            "admitted by Redis again after the restart"
        );
        summary.push((ok.len(), err.len()));
    }
    println!("ok (per process (admitted, refused): {summary:?})");
}

fn fault_worker(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store =
            RedisStore::builder(Limits::new().window(Dimension::Requests, WINDOW, 1_000_000))
                .prefix("killed-mid-run")
                .timeout(FAULT_TIMEOUT)
                .retry_interval(Duration::from_millis(100))
                .build(url)
                .unwrap();
        let start = Instant::now();
        let key = Key::from_static("shared-api-key");
        let mut out = String::new();
        while start.elapsed() < Duration::from_secs(5) {
            let t = Instant::now();
            let ms = (t - start).as_millis();
            match store.decide(&key, &Costs::new(0, 0), t, None).await {
                Ok(d) => {
                    assert!(d.server_now_us.is_some(), "fail closed: only Redis decides");
                    out.push_str(&format!("OK {ms}\n"));
                }
                Err(e) => {
                    assert!(e.is_store_unavailable(), "typed: {e}");
                    assert!(
                        t.elapsed() < FAULT_TIMEOUT + Duration::from_millis(300),
                        "refused within the timeout, took {:?}",
                        t.elapsed()
                    );
                    out.push_str(&format!("ERR {ms}\n"));
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        print!("{out}");
    });
}
