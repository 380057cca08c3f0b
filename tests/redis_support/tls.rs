//! A `redis-server` that speaks only TLS (`--port 0 --tls-port P`) and
//! asks every client for a certificate, under a CA made for the test
//! (rcgen): the server's certificate names 127.0.0.1 and localhost, and
//! the client's is signed by the same CA. Killed, its files removed, on
//! drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{find, free_port, skip, temp_dir};

/// A test CA, and a server and a client certificate it signed (PEM).
pub struct Certs {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Certs {
    pub fn new() -> Certs {
        // Each certificate with its own name: one whose subject is its
        // issuer's looks self-signed to OpenSSL (the server), which then
        // refuses it as of an unknown CA.
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "tower-llm-resilience test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a key"))
            .expect("a CA certificate");
        let leaf = |names: &[&str]| {
            let key = KeyPair::generate().expect("a key");
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .expect("params");
            params.distinguished_name.push(DnType::CommonName, names[0]);
            let cert = params.signed_by(&key, &ca).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(&["127.0.0.1", "localhost"]);
        let (client_cert, client_key) = leaf(&["client"]);
        Certs {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

pub struct TlsServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl TlsServer {
    /// Starts a TLS-only server with `certs`, or returns `None` (after
    /// saying why) when `redis-server` is not installed and `CI` is not
    /// set. Panics if the installed server was built without TLS.
    pub fn start(test: &str, certs: &Certs) -> Option<TlsServer> {
        let Some(bin) = find("redis-server", "REDIS_SERVER") else {
            return skip(test, "redis-server (PATH, /usr/bin or REDIS_SERVER)");
        };
        let dir = temp_dir("tls");
        let file = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write a PEM file");
            p.to_str().expect("a UTF-8 temporary path").to_owned()
        };
        let (ca, cert, key, log) = (
            file("ca.pem", &certs.ca),
            file("server.pem", &certs.server_cert),
            file("server.key", &certs.server_key),
            file("log", ""),
        );
        for _ in 0..20 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--tls-cert-file",
                    &cert,
                    "--tls-key-file",
                    &key,
                    "--tls-ca-cert-file",
                    &ca,
                    "--tls-auth-clients",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    &log,
                ])
                .stdout(Stdio::null())
                // Small (only what stops it at start-up), read on exit.
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn redis-server");
            // Ready once it listens (it speaks only TLS: no PING without
            // a client); one that exits lost the port, or has no TLS.
            let start = StdInstant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = std::fs::read_to_string(&log).unwrap_or_default();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    // A port taken in between: another one. Anything else
                    // (a server built without TLS) is a failure to see.
                    assert!(
                        err.contains("in use"),
                        "redis-server exited ({status}) with the TLS options (built without TLS?): {err}"
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(TlsServer {
                        child: Some(child),
                        port,
                        dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a TLS redis-server");
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
