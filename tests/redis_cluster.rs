//! The Redis store on a Redis Cluster (feature `redis-cluster`): a local
//! 3-node cluster started by each test (skipped, and said so, where
//! `redis-server` or `redis-cli` is missing, unless `CI` is set). The
//! shared behaviour runs on it; windows stay exact across many keys
//! spread over every node and two stores (two processes) sharing one
//! quota; the function library is on every primary, and loaded again on
//! a node that lost it.

#![cfg(feature = "redis-cluster")]

#[path = "redis_support/behaviour.rs"]
mod behaviour;
#[path = "redis_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::cluster::RedisCluster;
use tokio::time::Instant;
use tower_llm_resilience::rate_limit::{Costs, Decision, Dimension, Limits, Store};
use tower_llm_resilience::redis_store::RedisStore;
use tower_llm_resilience::Key;

use behaviour::*;

#[tokio::test]
async fn the_store_behaves_the_same_on_a_cluster() {
    let Some(cluster) = RedisCluster::start("the_store_behaves_the_same_on_a_cluster", 3) else {
        return;
    };
    let store = RedisStore::builder(Limits::new())
        .key_limits(limits_for)
        .prefix("behaviour")
        .build_cluster(cluster.urls())
        .unwrap();
    warm_up(&store).await;
    behaviour(store).await;
}

#[tokio::test]
async fn remaining_is_compared_as_of_the_admission_on_a_cluster() {
    let Some(cluster) =
        RedisCluster::start("remaining_is_compared_as_of_the_admission_on_a_cluster", 3)
    else {
        return;
    };
    let store = RedisStore::builder(Limits::new())
        .key_limits(admission::limits)
        .arrival_margin(admission::MARGIN)
        .prefix("admission")
        .build_cluster(cluster.urls())
        .unwrap();
    warm_up(&store).await;
    admission::behaviour(store).await;
}

/// 48 keys, each limited to 20 requests a minute, asked 32 times each by
/// 16 tasks over two stores (two processes: their own connections and
/// batches) at once, with a zero deadline (each either fits now or
/// reserves nothing): every key admits exactly 20, whichever store asked,
/// and the keys live on every node. The tasks' batches mix keys of many
/// slots, which one call could not hold (`CROSSSLOT`).
#[tokio::test]
async fn windows_are_exact_across_slots_and_processes() {
    let Some(cluster) = RedisCluster::start("windows_are_exact_across_slots_and_processes", 3)
    else {
        return;
    };
    const KEYS: usize = 48;
    const LIMIT: usize = 20;
    let limits = Limits::new().window(Dimension::Requests, Duration::from_secs(60), LIMIT as u64);
    let stores: Vec<RedisStore> = (0..2)
        .map(|_| {
            RedisStore::builder(limits.clone())
                .prefix("exact")
                .timeout(Duration::from_secs(2))
                .build_cluster(cluster.urls())
                .unwrap()
        })
        .collect();
    let keys: Vec<Key> = (0..KEYS).map(|i| Key::new(format!("k{i}"))).collect();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = stores[t % 2].clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            for round in 0..2 {
                for i in 0..KEYS {
                    // Each task walks the keys from its own place.
                    let k = &keys[(i + t * 3 + round) % KEYS];
                    let now = Instant::now();
                    match store.acquire(k, &Costs::new(0, 0), now, Some(now)).await {
                        Ok(Decision::Admitted(r)) => admitted.push(r.key),
                        Ok(Decision::TooLate(_)) => {}
                        other => panic!("{other:?}"),
                    }
                }
            }
            admitted
        }));
    }
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for k in t.await.unwrap() {
            *per_key.entry(k.to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_key.len(), KEYS, "every key admitted some");
    for (k, n) in &per_key {
        assert_eq!(*n, LIMIT, "key {k}: exactly its limit, across both stores");
    }
    // The keys are spread over every node, each node holding some state.
    let nodes: BTreeSet<usize> = (0..KEYS)
        .map(|i| cluster.node_of(&format!("{{exact:k{i}}}")))
        .collect();
    assert_eq!(nodes.len(), 3, "the keys' slots are on every node");
    for i in 0..3 {
        let n: u64 = cluster.command(i, &["DBSIZE"]).parse().unwrap();
        assert!(n > 0, "node {i} holds keys");
    }
}

/// The libraries a node holds (`FUNCTION LIST`), as text.
async fn libraries(port: u16) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let v: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .unwrap();
    format!("{v:?}")
}

/// A key (`n<i>` under `prefix`) whose slot is on `node`.
fn key_on(cluster: &RedisCluster, prefix: &str, node: usize) -> Key {
    (0..)
        .map(|i| format!("n{i}"))
        .find(|k| cluster.node_of(&format!("{{{prefix}:{k}}}")) == node)
        .map(Key::new)
        .unwrap()
}

#[tokio::test]
async fn the_library_is_on_every_primary_and_reloaded_where_lost() {
    let Some(cluster) =
        RedisCluster::start("the_library_is_on_every_primary_and_reloaded_where_lost", 3)
    else {
        return;
    };
    let limits = Limits::new().requests_per_minute(100);
    let store = RedisStore::builder(limits)
        .prefix("lib")
        .timeout(Duration::from_secs(2))
        .build_cluster(cluster.urls())
        .unwrap();
    let one = Costs::new(1, 0);
    // The first decision finds no library on its node: loaded on all.
    let k0 = key_on(&cluster, "lib", 0);
    support::admitted(
        store
            .acquire(&k0, &one, Instant::now(), None)
            .await
            .unwrap(),
    );
    for &p in &cluster.ports {
        assert!(libraries(p).await.contains("tlr4_"), "node {p} has it");
    }
    // A node that lost it (restarted without persistence, or a new
    // primary) gets it again on its next decision.
    let k2 = key_on(&cluster, "lib", 2);
    cluster.command(2, &["FUNCTION", "FLUSH"]);
    assert!(!libraries(cluster.ports[2]).await.contains("tlr4_"));
    support::admitted(
        store
            .acquire(&k2, &one, Instant::now(), None)
            .await
            .unwrap(),
    );
    assert!(libraries(cluster.ports[2]).await.contains("tlr4_"));
    // Another key on the other nodes still decides (their library was
    // replaced by the same one, or left).
    let k1 = key_on(&cluster, "lib", 1);
    support::admitted(
        store
            .acquire(&k1, &one, Instant::now(), None)
            .await
            .unwrap(),
    );
    support::admitted(
        store
            .acquire(&k0, &one, Instant::now(), None)
            .await
            .unwrap(),
    );
}
