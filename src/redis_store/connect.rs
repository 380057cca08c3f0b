//! The connection a store opens: to one server (`redis://`, or
//! `rediss://` with feature `redis-tls`), or to a Redis Cluster (feature
//! `redis-cluster`), both lazily, both through the redis crate's own
//! support. Kept apart from the builder so that what depends on the
//! features reads in one place.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::core::Conn;
use crate::Error;

/// The TLS settings beyond the URL: whom to trust, and what to show.
#[derive(Clone, Default)]
pub(super) struct Tls {
    /// PEM: the roots trusted instead of the system's.
    #[cfg(feature = "redis-tls")]
    pub(super) roots: Option<Vec<u8>>,
    /// PEM: the client's certificate chain and key (mutual TLS).
    #[cfg(feature = "redis-tls")]
    pub(super) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    /// Whether anything beyond the URL was set.
    pub(super) fn is_set(&self) -> bool {
        #[cfg(feature = "redis-tls")]
        {
            self.roots.is_some() || self.client.is_some()
        }
        #[cfg(not(feature = "redis-tls"))]
        false
    }

    /// The settings as the redis crate takes them. Roots without one
    /// certificate are an error here: the redis crate would take them as
    /// an empty trust store, and every connection would fail later.
    #[cfg(feature = "redis-tls")]
    fn certificates(&self) -> Result<redis::TlsCertificates, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        if let Some(pem) = &self.roots {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
            match certs {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => {
                    return Err(Error::store_unavailable(
                        "redis store: tls_root_certificates holds no PEM certificate",
                    ))
                }
                Err(e) => return Err(Error::store_unavailable(e)),
            }
        }
        Ok(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.roots.clone(),
        })
    }
}

/// rustls needs a process-wide crypto provider to make a TLS client; the
/// redis crate asks for the default one when it connects (and rustls
/// panics without one). This crate's feature brings `ring`: installed as
/// the default unless the application installed one first (then that
/// one is used). Only for a `rediss://` URL.
#[cfg(feature = "redis-tls")]
fn ensure_crypto_provider(url: &str) {
    if url.starts_with("rediss:") && rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one in between: either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A lazy connection to one server at `url`: nothing is sent before the
/// first decision, so that a process may start while Redis is down.
pub(super) fn single(url: &str, tls: &Tls, timeout: Duration) -> Result<Conn, Error> {
    #[cfg(feature = "redis-tls")]
    ensure_crypto_provider(url);
    let client = if tls.is_set() {
        #[cfg(feature = "redis-tls")]
        {
            redis::Client::build_with_tls(url, tls.certificates()?)
        }
        #[cfg(not(feature = "redis-tls"))]
        unreachable!("TLS settings exist only with feature redis-tls")
    } else {
        redis::Client::open(url)
    }
    .map_err(Error::store_unavailable)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client, config)
        .map_err(Error::store_unavailable)?;
    Ok(Conn::Single(conn))
}

/// A lazy connection to the Redis Cluster that `nodes` (some of its
/// nodes' URLs, all `redis://` or all `rediss://`) belong to: the redis
/// crate reads the slot map from the first that answers, connects to each
/// primary, follows `MOVED`/`ASK` and refreshes the map after a failover.
#[cfg(feature = "redis-cluster")]
pub(super) fn cluster<I, S>(nodes: I, tls: &Tls, timeout: Duration) -> Result<Conn, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
    if nodes.is_empty() {
        return Err(Error::store_unavailable(
            "RedisStore::build_cluster needs at least one node",
        ));
    }
    #[cfg(feature = "redis-tls")]
    for n in &nodes {
        ensure_crypto_provider(n);
    }
    #[cfg(feature = "redis-tls")]
    let node_urls = nodes.clone();
    #[allow(unused_mut)]
    let mut builder = redis::cluster::ClusterClient::builder(nodes)
        .connection_timeout(timeout)
        .response_timeout(timeout);
    if tls.is_set() {
        #[cfg(feature = "redis-tls")]
        {
            // As for one server: TLS settings with a plain-text node are
            // a mistake to say at once (the cluster client would ignore
            // them).
            if let Some(n) = node_urls.iter().find(|n| !n.starts_with("rediss:")) {
                return Err(Error::store_unavailable(format!(
                    "redis store: TLS settings with a node that is not rediss:// ({})",
                    n.split('@').next_back().unwrap_or("")
                )));
            }
            builder = builder.certs(tls.certificates()?);
        }
    }
    let client = builder.build().map_err(Error::store_unavailable)?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    Ok(Conn::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}
