//! The Redis store over TLS (feature `redis-tls`): a `redis-server` that
//! speaks only TLS and asks for a client certificate, under a CA made by
//! the test; the shared behaviour runs over it, and a server the store
//! cannot trust, or that refuses the store, is a fault, not a panic.

#![cfg(feature = "redis-tls")]

#[path = "redis_support/behaviour.rs"]
mod behaviour;
#[path = "redis_support/mod.rs"]
mod support;

use std::time::Duration;

use support::tls::{Certs, TlsServer};
use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Costs, Limits, Store};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

use behaviour::*;

/// A store that trusts the test's CA and shows its client certificate.
/// Patient: a TLS handshake in a debug build on a busy machine outlasts
/// the default 250 ms.
fn trusted(certs: &Certs) -> tower_llm_resilience::redis_store::RedisStoreBuilder {
    RedisStore::builder(Limits::new())
        .key_limits(limits_for)
        .timeout(Duration::from_secs(5))
        .tls_root_certificates(certs.ca.clone())
        .tls_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
}

#[tokio::test]
async fn the_store_behaves_the_same_over_tls() {
    let certs = Certs::new();
    let Some(server) = TlsServer::start("the_store_behaves_the_same_over_tls", &certs) else {
        return;
    };
    let store = trusted(&certs).prefix("tls").build(&server.url()).unwrap();
    warm_up(&store).await;
    behaviour(store).await;
}

#[tokio::test]
async fn remaining_is_compared_as_of_the_admission_over_tls() {
    let certs = Certs::new();
    let Some(server) =
        TlsServer::start("remaining_is_compared_as_of_the_admission_over_tls", &certs)
    else {
        return;
    };
    let store = trusted(&certs)
        .key_limits(admission::limits)
        .arrival_margin(admission::MARGIN)
        .prefix("tls-admission")
        .build(&server.url())
        .unwrap();
    warm_up(&store).await;
    admission::behaviour(store).await;
}

/// Whether one acquire fails as "store unavailable" (the fault policy's
/// case), within the store's timeout and a margin.
async fn fails_closed(store: &RedisStore) -> bool {
    let start = Instant::now();
    let r = store
        .acquire(&Key::new("k"), &Costs::new(1, 0), Instant::now(), None)
        .await;
    let quick = start.elapsed() < Duration::from_secs(2);
    matches!(r, Err(e) if e.is_store_unavailable()) && quick
}

#[tokio::test]
async fn a_server_not_trusted_or_refusing_the_store_is_a_fault() {
    let certs = Certs::new();
    let Some(server) = TlsServer::start(
        "a_server_not_trusted_or_refusing_the_store_is_a_fault",
        &certs,
    ) else {
        return;
    };
    let limits = Limits::new().requests_per_minute(10);
    // The system's roots do not know the test's CA.
    let untrusted = RedisStore::builder(limits.clone())
        .tls_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
        .build(&server.url())
        .unwrap();
    assert!(fails_closed(&untrusted).await, "an unknown CA");
    // Trusted, but without the client certificate the server asks for.
    let anonymous = RedisStore::builder(limits.clone())
        .tls_root_certificates(certs.ca.clone())
        .build(&server.url())
        .unwrap();
    assert!(fails_closed(&anonymous).await, "no client certificate");
    // Another CA's certificate.
    let other = Certs::new();
    let stranger = RedisStore::builder(limits.clone())
        .tls_root_certificates(other.ca.clone())
        .tls_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
        .build(&server.url())
        .unwrap();
    assert!(fails_closed(&stranger).await, "another CA");
    // Plain text to a TLS port.
    let plain = RedisStore::builder(limits.clone())
        .build(&format!("redis://127.0.0.1:{}/", server.port))
        .unwrap();
    assert!(fails_closed(&plain).await, "plain text");
    // And the same settings that failed are fine once complete.
    let good = trusted(&certs).build(&server.url()).unwrap();
    let d = good
        .acquire(&Key::new("k"), &Costs::new(1, 0), Instant::now(), None)
        .await
        .unwrap();
    support::admitted(d);
}

#[tokio::test]
async fn malformed_tls_settings_fail_the_build() {
    let limits = Limits::new().requests_per_minute(10);
    let certs = Certs::new();
    let url = "rediss://127.0.0.1:1/";
    let no_cert = RedisStore::builder(limits.clone())
        .tls_root_certificates("not a certificate")
        .build(url);
    assert!(matches!(no_cert, Err(e) if e.is_store_unavailable()));
    let bad_pem = RedisStore::builder(limits.clone())
        .tls_root_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
        .build(url);
    assert!(bad_pem.is_err());
    let bad_key = RedisStore::builder(limits.clone())
        .tls_client_certificate(certs.client_cert.clone(), "garbage")
        .build(url);
    assert!(bad_key.is_err());
    // TLS settings for a plain-text URL: a mistake to say at once.
    let plain = RedisStore::builder(limits.clone())
        .tls_root_certificates(certs.ca.clone())
        .build("redis://127.0.0.1:1/");
    assert!(plain.is_err());
    #[cfg(feature = "redis-cluster")]
    {
        let mixed = RedisStore::builder(limits.clone())
            .tls_root_certificates(certs.ca.clone())
            .build_cluster([url, "redis://:secret@127.0.0.1:2/"]);
        let e = mixed.unwrap_err();
        assert!(
            e.to_string().contains("not rediss://") || format!("{e:?}").contains("not rediss://")
        );
        assert!(
            !format!("{e:?}").contains("secret"),
            "no credentials in the error"
        );
        let bad = RedisStore::builder(limits.clone())
            .tls_root_certificates("no PEM")
            .build_cluster([url]);
        assert!(bad.is_err());
    }
    // A TLS URL alone is fine (the system's roots).
    assert!(RedisStore::builder(limits).build(url).is_ok());
}

/// A cluster whose nodes speak only TLS (their bus too) and ask for
/// client certificates: the shared behaviour, through `build_cluster`
/// with `rediss://` nodes.
#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn the_store_behaves_the_same_on_a_tls_cluster() {
    let certs = Certs::new();
    let Some(cluster) = support::cluster::RedisCluster::start_tls(
        "the_store_behaves_the_same_on_a_tls_cluster",
        3,
        &certs,
    ) else {
        return;
    };
    let store = trusted(&certs)
        .prefix("tls-cluster")
        .build_cluster(cluster.urls())
        .unwrap();
    warm_up(&store).await;
    behaviour(store).await;
}
