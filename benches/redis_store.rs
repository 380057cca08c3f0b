//! The Redis store at scale (issue #12), against a local `redis-server`
//! started here on a free port:
//!
//! 1. Redis's own time per decision (the script's run inside Redis's one
//!    thread, from `SLOWLOG` with `slowlog-log-slower-than 0`: Redis times
//!    each `FCALL` itself, so the client and the network do not enter;
//!    the machine's other load still stretches it), for acquire, cancel,
//!    learn and correct,
//!    with 100, 10,000 and 100,000 entries in a per-day window. Each
//!    acquire is cancelled, so the window holds the same entries
//!    throughout a row; each correction hits a random reservation of the
//!    window. Median and mean over `M` calls each.
//! 2. Decisions per second from this one process, 1 task and 16 tasks (the
//!    store sends the decisions asked meanwhile in one call; the bench
//!    prints how many a call carried), next to the in-memory store for
//!    scale, with the CPU each side spent per decision (Redis's main
//!    thread from `INFO cpu`, this process from
//!    `/proc/self/task/*/schedstat`): what each side's ceiling is, however
//!    busy the machine, whose load average is printed too.
//!
//! 3. With feature `redis-cluster`, 16 tasks against a local 3-node Redis
//!    Cluster beside the single node, on 1 key and on 16 keys
//!    (`REDIS_BENCH=cluster` runs only this part).
//!
//! `cargo bench --features redis --bench redis_store` (`--features
//! redis-cluster` for the cluster); see `callgrind_driver` for Redis's
//! instructions per acquire.

#[path = "../tests/redis_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;
use tower_llm_resilience::classify::ReportedLimit;
use tower_llm_resilience::rate_limit::{
    Costs, Decision, Dimension, Limits, MemoryStore, Reservation, Store,
};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

use support::{admitted, RedisServer};

/// Decisions per throughput run.
const N: usize = 20_000;
/// Calls per script and size for the time per decision.
const M: usize = 2_000;
const DAY: Duration = Duration::from_secs(86_400);

fn limits(window: Duration) -> Limits {
    // Never full: every decision is admitted at once, as on a healthy quota.
    Limits::new()
        .window(Dimension::Requests, window, 1_000_000_000)
        .window(Dimension::Tokens, window, 1_000_000_000_000)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// The durations (µs) of the script calls in the slow log, by script:
/// `FCALL`s by their function's name, `EVALSHA`s (older layouts, and the
/// no-op) by their number of keys and arguments.
async fn slowlog(con: &mut redis::aio::MultiplexedConnection) -> BTreeMap<&'static str, Vec<u64>> {
    let v: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(con)
        .await
        .unwrap();
    let mut by: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let Value::Array(entries) = v else {
        panic!("SLOWLOG GET: {v:?}")
    };
    for e in entries {
        let Value::Array(f) = e else { continue };
        let (Some(Value::Int(us)), Some(Value::Array(args))) = (f.get(2), f.get(3)) else {
            continue;
        };
        let text = |i: usize| match args.get(i) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let name = if text(0).eq_ignore_ascii_case("fcall") {
            // Layout 3: a function of the library, `tlr3_<hash>_<script>`.
            match text(1).splitn(3, '_').nth(2).unwrap_or("") {
                "acquire" => "acquire",
                "learn" => "learn",
                "cancel" => "cancel",
                "correct" => "correct",
                _ => "other",
            }
        } else if text(0).eq_ignore_ascii_case("evalsha") {
            let keys: usize = text(2).parse().unwrap_or(0);
            let argv = args.len().saturating_sub(3 + keys);
            match (keys, argv) {
                (0, 0) => "noop",
                // Older layouts' scripts, told apart by their number of
                // keys and arguments (two limits of one window), so that
                // this bench can compare them in the same conditions:
                // layout 2 (`:s2`)
                (6, _) => "acquire",
                (3, 8) => "learn",
                (4, 6) => "cancel",
                (4, 8) => "correct",
                // layout 1 (`:s`, list logs)
                (4, 11) => "acquire",
                (3, 4) => "cancel",
                (2, 8) => "learn",
                (3, 6) => "correct",
                _ => "other",
            }
        } else {
            continue;
        };
        by.entry(name).or_default().push(*us as u64);
    }
    by
}

fn median_mean(v: &mut [u64]) -> (u64, f64) {
    v.sort_unstable();
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    (v.get(v.len() / 2).copied().unwrap_or(0), mean)
}

/// The CPU time Redis's main thread has used, in µs (`INFO cpu`): unlike
/// a duration, not inflated when the machine's other load preempts it.
fn redis_cpu_us(port: u16) -> f64 {
    let info = support::command(port, &["INFO", "cpu"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let user = field("used_cpu_user_main_thread").or_else(|| field("used_cpu_user"));
    let sys = field("used_cpu_sys_main_thread").or_else(|| field("used_cpu_sys"));
    (user.unwrap_or(0.0) + sys.unwrap_or(0.0)) * 1e6
}

/// One phase: `SLOWLOG` on, `op` run `M` times (flushed as it goes), then
/// the durations by script and the CPU µs per iteration.
async fn phase<F, Fut>(
    server: &RedisServer,
    con: &mut redis::aio::MultiplexedConnection,
    store: &RedisStore,
    mut op: F,
) -> (BTreeMap<&'static str, Vec<u64>>, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    store.flush().await;
    server.command(&["SLOWLOG", "RESET"]);
    server.command(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    let cpu = redis_cpu_us(server.port);
    for i in 0..M {
        op(i).await;
        if i % 256 == 255 {
            store.flush().await;
        }
    }
    store.flush().await;
    let cpu = (redis_cpu_us(server.port) - cpu) / M as f64;
    server.command(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    (slowlog(con).await, cpu)
}

async fn time_per_decision(server: &RedisServer) {
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap();
    server.command(&["CONFIG", "SET", "slowlog-max-len", "100000"]);
    server.command(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    let store = RedisStore::builder(limits(DAY))
        .prefix("bench-day")
        .timeout(Duration::from_secs(5))
        .build(&server.url())
        .unwrap();
    let noop = redis::Script::new("return 1");
    let key = Key::new("day");
    let mut rs: Vec<Reservation> = Vec::new();
    println!(
        "Redis time per decision, per-day window (inside Redis: SLOWLOG median / mean µs over {M} calls; cpu: Redis CPU µs per call, INFO cpu; load average {})",
        load_average()
    );
    println!(
        "{:>9} | {:>14} | {:>14} | {:>14} | {:>14} | {:>16} | {:>16} | {:>16}",
        "entries",
        "acquire",
        "cancel",
        "learn",
        "correct",
        "cpu acq+cancel",
        "cpu learn",
        "cpu correct"
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut baseline = Vec::new();
    for n in [100, 10_000, 100_000] {
        let more = n - rs.len();
        rs.extend(support::fill(&store, &key, more, Costs::new(500, 200), 16).await);
        let (mut a, cpu_a) = phase(server, &mut con, &store, |_| {
            let (store, key) = (&store, &key);
            async move {
                let d = store
                    .acquire(key, &Costs::new(500, 200), Instant::now(), None)
                    .await
                    .unwrap();
                store.cancel(&admitted(d));
            }
        })
        .await;
        let (mut l, cpu_l) = phase(server, &mut con, &store, |_| {
            let _ = store.learn(
                &key,
                Dimension::Tokens,
                DAY,
                ReportedLimit::new(Some(1_000_000_000_000), Some(1_000_000_000_000), None),
                None,
                Instant::now(),
            );
            async {}
        })
        .await;
        let picks: Vec<usize> = (0..M)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) as usize % rs.len()
            })
            .collect();
        let (mut c, cpu_c) = phase(server, &mut con, &store, |i| {
            store.correct(&rs[picks[i]], &Costs::new(500, 200), Instant::now());
            async {}
        })
        .await;
        // A script that does nothing, in the same conditions: what a call
        // costs Redis at least, right now.
        let conn = con.clone();
        let (mut b, cpu_b) = phase(server, &mut con, &store, |_| {
            let (noop, mut conn) = (&noop, conn.clone());
            async move {
                let _: i64 = noop.invoke_async(&mut conn).await.unwrap();
            }
        })
        .await;
        let cell = |by: &mut BTreeMap<&'static str, Vec<u64>>, name: &str| {
            let v = by
                .get_mut(name)
                .map(|v| v.as_mut_slice())
                .unwrap_or(&mut []);
            let count = v.len();
            let (med, mean) = median_mean(v);
            // Fewer than M: fire-and-forget operations dropped because the
            // queue was full (the scripts too slow to keep up): say so.
            let short = if count < M * 9 / 10 {
                format!(" ({count} ran)")
            } else {
                String::new()
            };
            format!("{med:>4} / {mean:>7.1}{short}")
        };
        println!(
            "{:>9} | {:>14} | {:>14} | {:>14} | {:>14} | {:>16.1} | {:>16.1} | {:>16.1}",
            n,
            cell(&mut a, "acquire"),
            cell(&mut a, "cancel"),
            cell(&mut l, "learn"),
            cell(&mut c, "correct"),
            cpu_a,
            cpu_l,
            cpu_c
        );
        baseline.push(format!("{n}: {} (cpu {cpu_b:.1})", cell(&mut b, "noop")));
    }
    println!(
        "a no-op script at the same moments: {}",
        baseline.join(", ")
    );
    println!();
}

/// The CPU time this process has used, in µs (every thread, from
/// `/proc/self/task/*/schedstat`: nanoseconds on a CPU).
fn client_cpu_us() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e3
}

/// The `FCALL`s the server on `port` has run (`INFO commandstats`).
fn fcalls(port: u16) -> u64 {
    support::command(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU per decision on both sides of a run: what each side's ceiling is,
/// whatever else the machine runs (a busy machine stretches the wall
/// time, not these); and how many decisions each acquire call carried.
/// `ports`: the servers (none for the in-memory store; every node of a
/// cluster, summed).
struct Cpu<'a> {
    ports: &'a [u16],
    redis: f64,
    client: f64,
    calls: u64,
}

impl<'a> Cpu<'a> {
    fn start(ports: &'a [u16]) -> Self {
        Cpu {
            ports,
            redis: ports.iter().map(|&p| redis_cpu_us(p)).sum(),
            client: client_cpu_us(),
            calls: ports.iter().map(|&p| fcalls(p)).sum(),
        }
    }

    fn per(&self, n: usize) -> String {
        let client = (client_cpu_us() - self.client) / n as f64;
        if self.ports.is_empty() {
            return format!("  cpu/decision: client {client:>5.1} µs");
        }
        let redis: f64 = self.ports.iter().map(|&p| redis_cpu_us(p)).sum();
        let calls: u64 = self.ports.iter().map(|&p| fcalls(p)).sum();
        format!(
            "  cpu/decision: redis {:>5.1} µs, client {:>5.1} µs; {:>4.1} decisions/call",
            (redis - self.redis) / n as f64,
            client,
            n as f64 / (calls - self.calls).max(1) as f64
        )
    }
}

async fn sequential<S: Store>(name: &str, s: &S, key: &Key, ports: &[u16]) {
    let costs = Costs::new(500, 200);
    // Warm up (script load, connection).
    for _ in 0..500 {
        s.acquire(key, &costs, Instant::now(), None).await.unwrap();
    }
    let mut lat = Vec::with_capacity(N);
    let cpu = Cpu::start(ports);
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        let d = s.acquire(key, &costs, t, None).await.unwrap();
        lat.push(t.elapsed());
        assert!(matches!(d, Decision::Admitted(_)));
    }
    let total = start.elapsed();
    let cpu = cpu.per(N);
    lat.sort_unstable();
    println!(
        "{name:<28}  1 task : {:>9.0} decisions/s  p50 {:>8.1?}  p99 {:>8.1?}{cpu}",
        N as f64 / total.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99)
    );
}

async fn concurrent<S: Store + Clone>(
    name: &str,
    s: &S,
    keys: &[Key],
    tasks: usize,
    ports: &[u16],
) {
    let per = N / tasks;
    // Warm up: every key's state exists before the run.
    for k in keys {
        s.acquire(k, &Costs::new(500, 200), Instant::now(), None)
            .await
            .unwrap();
    }
    let cpu = Cpu::start(ports);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = s.clone();
        let key = keys[t % keys.len()].clone();
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
    let cpu = cpu.per(per * tasks);
    lat.sort_unstable();
    println!(
        "{name:<28} {tasks:>2} tasks: {:>9.0} decisions/s  p50 {:>8.1?}  p99 {:>8.1?}{cpu}",
        (per * tasks) as f64 / total.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99)
    );
}

async fn throughput(server: &RedisServer) {
    let minute = Duration::from_secs(60);
    let redis = RedisStore::builder(limits(minute))
        .prefix("bench")
        .build(&server.url())
        .unwrap();
    let memory = MemoryStore::new(limits(minute));
    println!(
        "Decisions per second from one process (acquire, admitted at once; load average {})",
        load_average()
    );
    let port = [server.port];
    sequential("memory", &memory, &Key::new("m1"), &[]).await;
    sequential("redis", &redis, &Key::new("r1"), &port).await;
    concurrent("memory", &memory, &[Key::new("m2")], 16, &[]).await;
    concurrent("redis (one key)", &redis, &[Key::new("r2")], 16, &port).await;
    let keys: Vec<Key> = (0..16).map(|i| Key::new(format!("k{i}"))).collect();
    concurrent("redis (16 keys)", &redis, &keys, 16, &port).await;
    // With a correction per request (as when responses carry usage): the
    // corrections run in the background, one script each.
    let cpu = Cpu::start(&port);
    let start = Instant::now();
    let key = Key::new("r3");
    for _ in 0..N {
        let d = redis
            .acquire(&key, &Costs::new(500, 200), Instant::now(), None)
            .await
            .unwrap();
        redis.correct(&admitted(d), &Costs::new(480, 150), Instant::now());
    }
    redis.flush().await;
    println!(
        "{:<28}  1 task : {:>9.0} decisions/s (each corrected in the background){}",
        "redis + correct",
        N as f64 / start.elapsed().as_secs_f64(),
        cpu.per(N)
    );
    println!("load average at the end: {}", load_average());
}

/// 16 tasks against a local 3-node Redis Cluster and against the single
/// node, on one key and on 16 keys, each pair run back to back twice
/// (the machine's load drifts), with the load average: on one machine
/// the cluster's three servers share its cores, so this shows what the
/// per-slot calls cost, not what three machines would give.
#[cfg(feature = "redis-cluster")]
async fn cluster_vs_single(server: &RedisServer) {
    let Some(cluster) = support::cluster::RedisCluster::start("redis_store bench (cluster)", 3)
    else {
        return;
    };
    let minute = Duration::from_secs(60);
    let single = RedisStore::builder(limits(minute))
        .prefix("cmp")
        .build(&server.url())
        .unwrap();
    let clustered = RedisStore::builder(limits(minute))
        .prefix("cmp")
        .build_cluster(cluster.urls())
        .unwrap();
    println!(
        "A single node vs a 3-node cluster on this machine, 16 tasks (load average {})",
        load_average()
    );
    let one = [Key::new("c1")];
    let sixteen: Vec<Key> = (0..16).map(|i| Key::new(format!("c{i}"))).collect();
    for _ in 0..2 {
        concurrent("single node (1 key)", &single, &one, 16, &[server.port]).await;
        concurrent(
            "3-node cluster (1 key)",
            &clustered,
            &one,
            16,
            &cluster.ports,
        )
        .await;
        concurrent(
            "single node (16 keys)",
            &single,
            &sixteen,
            16,
            &[server.port],
        )
        .await;
        concurrent(
            "3-node cluster (16 keys)",
            &clustered,
            &sixteen,
            16,
            &cluster.ports,
        )
        .await;
    }
    println!("load average at the end: {}", load_average());
}

/// `/proc/loadavg`'s first three fields: how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `REDIS_CALLGRIND=<acquires>` with `REDIS_PORT`: only that many
/// acquires (`REDIS_TASKS` tasks, default 16, on `REDIS_KEYS` keys,
/// default 16) against a server already running there, e.g. under
/// `valgrind --tool=callgrind redis-server`: two runs of different sizes
/// give the server's instructions per acquire by their difference
/// (start-up, connection and the library's load cancel out).
async fn callgrind_driver(port: u16, n: usize) {
    let url = format!("redis://127.0.0.1:{port}/");
    let keys: usize = std::env::var("REDIS_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let redis = RedisStore::builder(limits(Duration::from_secs(60)))
        .prefix(format!("cg{n}"))
        .timeout(Duration::from_secs(30))
        .build(&url)
        .unwrap();
    let keys: Vec<Key> = (0..keys).map(|i| Key::new(format!("k{i}"))).collect();
    let tasks: usize = std::env::var("REDIS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (s, key) = (redis.clone(), keys[t % keys.len()].clone());
        handles.push(tokio::spawn(async move {
            for _ in (t..n).step_by(tasks) {
                s.acquire(&key, &Costs::new(500, 200), Instant::now(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let external = std::env::var("REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    let calls = std::env::var("REDIS_CALLGRIND")
        .ok()
        .and_then(|n| n.parse().ok());
    if let (Some(port), Some(n)) = (external, calls) {
        rt.block_on(callgrind_driver(port, n));
        return;
    }
    let Some(server) = RedisServer::start("redis_store bench") else {
        return;
    };
    // `REDIS_BENCH=cluster`: only the cluster's comparison.
    let only_cluster = std::env::var("REDIS_BENCH").is_ok_and(|v| v == "cluster");
    rt.block_on(async {
        if !only_cluster {
            time_per_decision(&server).await;
            throughput(&server).await;
        }
        #[cfg(feature = "redis-cluster")]
        cluster_vs_single(&server).await;
    });
}
