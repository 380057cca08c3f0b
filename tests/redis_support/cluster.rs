//! A local Redis Cluster for the tests and the bench: `n` primaries (no
//! replicas), each a `redis-server --cluster-enabled yes` on a free
//! loopback port (its bus on the port + 10000), its files in a temporary
//! directory, joined by `redis-cli --cluster create`; ready once every
//! node's `CLUSTER INFO` says `cluster_state:ok` with every slot served.
//! With [`Certs`], every node speaks only TLS, its bus too, and asks for
//! client certificates. Killed, and its directory removed, on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use super::tls::Certs;
use super::{command, find, server_pid, skip, temp_dir};

pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
    cli: PathBuf,
    /// With TLS: `redis-cli`'s TLS arguments (the files in `dir`).
    tls: Option<Vec<String>>,
}

/// A port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = l.local_addr().expect("its address").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts an `n`-node cluster, or returns `None` (after saying why)
    /// when `redis-server` or `redis-cli` is not installed and `CI` is not
    /// set.
    pub fn start(test: &str, n: usize) -> Option<RedisCluster> {
        Self::start_with(test, n, None)
    }

    /// The same, every node speaking only TLS with `certs`' server
    /// certificate, asking for clients' under `certs`' CA.
    pub fn start_tls(test: &str, n: usize, certs: &Certs) -> Option<RedisCluster> {
        Self::start_with(test, n, Some(certs))
    }

    fn start_with(test: &str, n: usize, certs: Option<&Certs>) -> Option<RedisCluster> {
        let Some(server) = find("redis-server", "REDIS_SERVER") else {
            return skip(test, "redis-server (PATH, /usr/bin or REDIS_SERVER)");
        };
        let Some(cli) = find("redis-cli", "REDIS_CLI") else {
            return skip(test, "redis-cli (PATH, /usr/bin or REDIS_CLI)");
        };
        let dir = temp_dir("cluster");
        let file = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write a PEM file");
            p.to_str().expect("a UTF-8 temporary path").to_owned()
        };
        let tls = certs.map(|c| {
            let ca = file("ca.pem", &c.ca);
            let server = vec![
                "--tls-cert-file".to_owned(),
                file("server.pem", &c.server_cert),
                "--tls-key-file".to_owned(),
                file("server.key", &c.server_key),
                "--tls-ca-cert-file".to_owned(),
                ca.clone(),
                "--tls-cluster".to_owned(),
                "yes".to_owned(),
                "--tls-auth-clients".to_owned(),
                "yes".to_owned(),
            ];
            let client = vec![
                "--tls".to_owned(),
                "--cacert".to_owned(),
                ca,
                "--cert".to_owned(),
                file("client.pem", &c.client_cert),
                "--key".to_owned(),
                file("client.key", &c.client_key),
            ];
            (server, client)
        });
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
            cli,
            tls: tls.as_ref().map(|(_, client)| client.clone()),
        };
        while cluster.nodes.len() < n {
            let port = free_cluster_port();
            // With TLS the port is the TLS one (and the bus's is +10000).
            let mut cmd = Command::new(&server);
            match &tls {
                None => cmd.args(["--port", &port.to_string()]),
                Some((server_args, _)) => cmd
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(server_args),
            };
            let child = cmd
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    cluster.dir.to_str().expect("a UTF-8 temporary path"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            if let Some(child) = wait_for(child, port, tls.is_some()) {
                cluster.nodes.push(child);
                cluster.ports.push(port);
            }
        }
        let mut create = Command::new(&cluster.cli);
        create.args(cluster.tls.iter().flatten());
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        Some(cluster)
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// One command on node `i` (see [`command`]); with TLS, through
    /// `redis-cli` (its output's text).
    pub fn command(&self, i: usize, args: &[&str]) -> String {
        let Some(tls) = &self.tls else {
            return command(self.ports[i], args);
        };
        let out = Command::new(&self.cli)
            .args(tls)
            .args(["-h", "127.0.0.1", "-p", &self.ports[i].to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// The node that serves `key`'s slot (by `CLUSTER KEYSLOT` and each
    /// node's `CLUSTER NODES` line for itself).
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u16 = self
            .command(0, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot");
        (0..self.ports.len())
            .find(|&i| {
                let nodes = self.command(i, &["CLUSTER", "NODES"]);
                let me = nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .expect("a line for the node itself");
                me.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
            })
            .expect("a node serves every slot")
    }

    /// Waits (wall clock: real processes) until every node sees the
    /// cluster whole.
    fn wait_ok(&self) {
        let start = StdInstant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let ok = (0..self.ports.len()).all(|i| {
                let info = self.command(i, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster on {:?} did not become ok", self.ports);
    }
}

/// The child once it answers on `port` (with TLS: once it listens), or
/// `None` if it exited (the port was taken in between) or never answered.
fn wait_for(mut child: Child, port: u16, tls: bool) -> Option<Child> {
    let pid = child.id();
    let start = StdInstant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let up = if tls {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        } else {
            server_pid(port) == Some(pid)
        };
        if up {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
