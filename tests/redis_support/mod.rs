//! A real `redis-server` for the Redis store's tests: started on a free
//! loopback port, killed on drop. When the binary is missing the tests are
//! skipped with a clear message, except under `CI=true`, where they fail.
//! `cluster` starts a local Redis Cluster, `tls` a server that speaks
//! only TLS.

#![allow(dead_code)]

pub mod cluster;
pub mod tls;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Costs, Decision, Reservation, Store};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

/// The reservation of an admitted decision (panics on any other).
pub fn admitted(d: Decision) -> Reservation {
    match d {
        Decision::Admitted(r) => r,
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// Admits `n` more requests costing `costs` on `key`, `tasks` at a time,
/// and returns their reservations in id order.
pub async fn fill(
    store: &RedisStore,
    key: &Key,
    n: usize,
    costs: Costs,
    tasks: usize,
) -> Vec<Reservation> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, key) = (store.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            let mut rs = Vec::new();
            for _ in (t..n).step_by(tasks) {
                let d = store
                    .acquire(&key, &costs, Instant::now(), None)
                    .await
                    .unwrap();
                rs.push(admitted(d));
            }
            rs
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_by_key(|r| r.id);
    all
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
}

fn find_binary() -> Option<PathBuf> {
    find("redis-server", "REDIS_SERVER")
}

/// The binary `name`: `$var` if set (an explicit choice: used if it
/// exists, never second-guessed), else from `PATH` or `/usr/bin`.
fn find(name: &str, var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|p| p.is_file())
}

/// `None` after saying that `test` is skipped because `what` is missing,
/// or a panic under `CI`, where the Redis tests must run.
fn skip<T>(test: &str, what: &str) -> Option<T> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!("{test}: {what} not found and CI is set: the Redis tests must run in CI");
    }
    // Written to the real stderr, past the test harness's capture, so
    // that a skip is seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} not found; this Redis test did not run (set CI=true to make that a failure)"
    );
    None
}

/// A fresh directory under the system's temporary one, for a test's
/// server files (removed by its owner's drop).
fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tlr-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts a server, or returns `None` (after saying why) when
    /// `redis-server` is not installed and `CI` is not set.
    pub fn start(test: &str) -> Option<RedisServer> {
        let Some(bin) = find_binary() else {
            return skip(test, "redis-server (PATH, /usr/bin or REDIS_SERVER)");
        };
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            bin,
        };
        s.restart();
        Some(s)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the server on the same port and waits until it accepts
    /// connections (wall-clock polling: the server is a real process). On
    /// the first start, a port taken in between by another test's server
    /// is detected (the server that answers must be ours, by its pid) and
    /// another port is tried.
    pub fn restart(&mut self) {
        let first = self.child.is_none();
        self.kill();
        for _ in 0..20 {
            let child = Command::new(&self.bin)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let pid = child.id();
            self.child = Some(child);
            let start = StdInstant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                    break; // exited: the port was taken
                }
                if server_pid(self.port) == Some(pid) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
            assert!(
                first,
                "redis-server did not come back on port {}",
                self.port
            );
            self.port = free_port();
        }
        panic!("could not start redis-server");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl RedisServer {
    /// Sends one command over a fresh connection (raw RESP, so that the
    /// benches and tests need no client for it) and returns the reply's
    /// text: a simple or bulk string (an error reply panics).
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args)
    }

    /// `CONFIG RESETSTAT`: the command statistics start again from zero.
    pub fn reset_stats(&self) {
        self.command(&["CONFIG", "RESETSTAT"]);
    }

    /// `INFO commandstats`, per command: (name, calls, µs in total). The
    /// commands a script runs are counted like any other, under their own
    /// names, so a script's work shows beside its `evalsha`.
    pub fn command_stats(&self) -> Vec<(String, u64, u64)> {
        self.command(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |f: &str| {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Some((name.to_owned(), field("calls"), field("usec")))
            })
            .collect()
    }
}

/// Sends one command to the server on `port` over a fresh connection
/// (raw RESP, so that the benches and tests need no client for it) and
/// returns the reply's text: a simple or bulk string (an error reply
/// panics).
pub fn command(port: u16, args: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.write_all(req.as_bytes()).expect("send");
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).expect("reply");
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => line[1..].to_owned(),
        Some(b'$') => {
            let n: usize = line[1..].parse().expect("bulk length");
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf).expect("bulk");
            buf.truncate(n);
            String::from_utf8(buf).expect("utf-8")
        }
        _ => panic!("redis {args:?}: {line}"),
    }
}

/// The pid of the server answering on `port` (`INFO server`), if any.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("process_id:") {
            let rest = &text[i + "process_id:".len()..];
            if let Some(end) = rest.find("\r\n") {
                return rest[..end].trim().parse().ok();
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
