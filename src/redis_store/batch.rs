//! Acquires in batches: the decisions that callers ask for while others
//! are on their way to Redis go together in one `acquire` call, which
//! reads the server's clock once and each key's state once however many of
//! its decisions the batch holds. Redis runs every script in its one
//! thread and a call costs it more than the decision itself (the command,
//! each argument, the clock), so a batch of 16 costs it a fraction of 16
//! calls, and the client sends, and parses, one command instead of 16.
//!
//! One task (per store and its clones) takes the jobs in the order they
//! come: the first waiting job, and whatever else waits by then, up to
//! [`MAX_BATCH`], with at most [`IN_FLIGHT`] calls in flight. A job that
//! comes alone goes alone: nothing waits to fill a batch, so a lone caller
//! pays one hop to the task and back (a few µs) and no delay. Decisions of
//! one batch are made in its order, each as if it were its own call at the
//! batch's server time.
//!
//! A batch may mix limiter keys. On one server it goes as one call; on a
//! Redis Cluster, every key of a call must be in one hash slot, so the
//! batch goes as one call per slot (each limiter key's keys share one
//! hash tag, so one slot), sent together: the calls to one node share its
//! connection, those to others run at the same time.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::core::{micros, safe, Core};
use super::layout::{cost_of, pack, Shape};
use super::scripts::{self, Call};
use super::store::{Inner, ServerDecision};
use crate::key::Key;
use crate::rate_limit::{Costs, Decision, Reservation, UsedAtAdmission};
use crate::Error;

/// The most decisions in one call: Redis runs a call whole, so this bounds
/// the time it is busy with one (some 10-40 µs per decision).
pub(super) const MAX_BATCH: usize = 32;

/// The most calls in flight: one being answered while the next is sent.
pub(super) const IN_FLIGHT: usize = 2;

/// One decision asked of the batch task.
pub(super) struct Job {
    key: Key,
    shape: Arc<Shape>,
    costs: Costs,
    /// µs after the server's now (-1: none).
    deadline_us: f64,
    token: u64,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

/// The script's answer to one decision (see `lua/acquire.lua`).
struct Answer {
    code: i64,
    x: u64,
    y: u64,
    at_us: u64,
    now_us: u64,
    old: bool,
    used: UsedAtAdmission,
}

type Flying = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the batches until every store handle is gone (and the calls in
/// flight have answered).
pub(super) async fn run(core: Arc<Core>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut flying: FuturesUnordered<Flying> = FuturesUnordered::new();
    loop {
        let first = poll_fn(|cx| {
            while let Poll::Ready(Some(())) = flying.poll_next_unpin(cx) {}
            if flying.len() < IN_FLIGHT {
                match jobs.poll_recv(cx) {
                    Poll::Ready(Some(j)) => return Poll::Ready(Some(j)),
                    Poll::Ready(None) if flying.is_empty() => return Poll::Ready(None),
                    _ => {}
                }
            }
            Poll::Pending
        })
        .await;
        let Some(first) = first else { return };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // A caller that gave up (timed out, or dropped its future) needs
        // no decision.
        if !first.reply.is_closed() {
            batch.push(first);
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) if j.reply.is_closed() => {}
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if !core.available() {
            // Marked down while these waited: they fail at once.
            for j in batch {
                let _ = j.reply.send(Err(Error::store_unavailable(
                    "redis store degraded after a recent failure",
                )));
            }
            continue;
        }
        let core = core.clone();
        flying.push(Box::pin(async move { call(&core, batch).await }));
    }
}

/// The batch's `acquire` calls (one, or on a cluster one per hash
/// slot), and each job's answer.
async fn call(core: &Core, batch: Vec<Job>) {
    if !core.conn.is_cluster() {
        let call = encode(&batch, |j| core.hash_key(&j.key, &j.shape));
        return call_one(core, &call, batch).await;
    }
    #[cfg(feature = "redis-cluster")]
    {
        let slots = by_slot(batch, |j| core.hash_key(&j.key, &j.shape));
        futures_util::future::join_all(slots.into_iter().map(|s| async move {
            let mut names = s.names.into_iter();
            let call = encode(&s.jobs, |_| names.next().unwrap_or_default());
            call_one(core, &call, s.jobs).await
        }))
        .await;
    }
}

/// The jobs of one hash slot, with their keys' hash names in the order of
/// each key's first job (the order `encode` asks for them).
#[cfg(feature = "redis-cluster")]
struct SlotJobs {
    slot: redis::cluster_routing::Slot,
    jobs: Vec<Job>,
    names: Vec<String>,
}

/// The batch split by hash slot, each slot's jobs in the batch's order
/// (so each key's decisions keep theirs). Each key's name (`name`) is
/// made once, as `encode` would, and handed to it.
#[cfg(feature = "redis-cluster")]
fn by_slot(batch: Vec<Job>, name: impl Fn(&Job) -> String) -> Vec<SlotJobs> {
    use redis::cluster_routing::Slot;
    let mut slots: Vec<SlotJobs> = Vec::new();
    for j in batch {
        if let Some(s) = slots
            .iter_mut()
            .find(|s| s.jobs.iter().any(|o| o.key == j.key))
        {
            s.jobs.push(j);
            continue;
        }
        let name = name(&j);
        let slot = Slot::for_key(&name);
        match slots.iter_mut().find(|s| s.slot == slot) {
            Some(s) => {
                s.names.push(name);
                s.jobs.push(j);
            }
            None => slots.push(SlotJobs {
                slot,
                jobs: vec![j],
                names: vec![name],
            }),
        }
    }
    slots
}

/// One `acquire` call, and each of its jobs' answer.
async fn call_one(core: &Core, call: &Call, batch: Vec<Job>) {
    match core.run::<Vec<i64>>(call).await {
        Ok(r) => decode(&r, batch),
        Err(e) => {
            // Each caller's error has the call's as its source.
            let e = Arc::new(e);
            for j in batch {
                let _ = j.reply.send(Err(Error::store_unavailable(e.clone())));
            }
        }
    }
}

/// The call: each key's hash once (KEYS, named by `name` at the key's
/// first job), the numbers packed (the script's doubles: every one is
/// below 2^53, exact), the tokens, each shape once.
fn encode(batch: &[Job], mut name: impl FnMut(&Job) -> String) -> Call {
    let mut call = Call::new(scripts::acquire());
    let mut keys: Vec<&Key> = Vec::new();
    let mut shapes: Vec<&Arc<Shape>> = Vec::new();
    // Per job: its key's and its shape's index (from 1).
    let mut index = Vec::with_capacity(batch.len());
    for j in batch {
        let k = match keys.iter().position(|k| **k == j.key) {
            Some(i) => i,
            None => {
                keys.push(&j.key);
                call.key(name(j));
                keys.len() - 1
            }
        };
        let s = match shapes.iter().position(|s| Arc::ptr_eq(s, &j.shape)) {
            Some(i) => i,
            None => {
                shapes.push(&j.shape);
                shapes.len() - 1
            }
        };
        index.push((k + 1, s + 1));
    }
    let mut nums = Vec::with_capacity(16 + batch.len() * 48);
    pack(&mut nums, batch.len() as f64);
    pack(&mut nums, shapes.len() as f64);
    let mut tokens = Vec::with_capacity(8 * batch.len());
    for (j, (k, s)) in batch.iter().zip(&index) {
        pack(&mut nums, *k as f64);
        pack(&mut nums, *s as f64);
        pack(&mut nums, j.deadline_us);
        for l in j.shape.limits() {
            pack(&mut nums, safe(cost_of(l.dimension, &j.costs)) as f64);
        }
        tokens.extend_from_slice(&j.token.to_le_bytes());
    }
    call.arg(nums).arg(tokens);
    for s in &shapes {
        call.arg(s.acquire_arg());
    }
    call
}

/// Hands each job its part of the script's answer: `T`, then per job 6
/// numbers and one per limit of its shape.
fn decode(r: &[i64], batch: Vec<Job>) {
    let get = |i: usize| r.get(i).map_or(0, |&v| u64::try_from(v).unwrap_or(0));
    let mut i = 1;
    for j in batch {
        let n = j.shape.limits().len();
        let answer = if r.len() < i + 6 + n {
            Err(Error::store_unavailable(
                "redis store: unexpected answer from the acquire script",
            ))
        } else {
            let mut used = UsedAtAdmission::UNKNOWN;
            for (k, l) in j.shape.limits().iter().enumerate() {
                used.set(l.index, get(i + 6 + k));
            }
            Ok(Answer {
                code: r[i],
                x: get(i + 1),
                y: get(i + 2),
                at_us: get(i + 3),
                now_us: get(i + 4),
                old: get(i + 5) == 1,
                used,
            })
        };
        i += 6 + n;
        let _ = j.reply.send(answer);
    }
}

impl Inner {
    /// One decision by Redis, in the next batch: on the caller's clock,
    /// with the server's instants beside it. Fails within the store's
    /// timeout.
    pub(super) async fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
        token: u64,
    ) -> Result<ServerDecision, Error> {
        let core = &self.core;
        let (tx, rx) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            shape: core.shape_of(key),
            costs: *costs,
            deadline_us: deadline.map_or(-1.0, |d| micros(d.saturating_duration_since(now)) as f64),
            token,
            reply: tx,
        };
        if self.acquires.send(job).is_err() {
            return Err(Error::store_unavailable("redis store: batch task gone"));
        }
        let answer = match tokio::time::timeout(core.timeout, rx).await {
            Ok(Ok(a)) => a?,
            Ok(Err(_)) => return Err(Error::store_unavailable("redis store: batch task gone")),
            Err(_) => {
                core.mark_down();
                return Err(Error::store_unavailable(format!(
                    "redis did not answer within {:?}",
                    core.timeout
                )));
            }
        };
        // Waits count from when the answer arrived: never early.
        let received = Instant::now();
        if answer.old && !core.warned_old_layout.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "tower_llm_resilience",
                "redis store: a process of an older version (key layout 1, 2 or 3) keeps state for the key {key} under the prefix {:?}; the two versions count separately and together may exceed the quota: stop the older processes (see the redis_store docs, \"Upgrading\")",
                core.prefix
            );
        }
        let after = |us: u64| {
            received
                .checked_add(Duration::from_micros(us))
                .unwrap_or(received + Duration::from_secs(86_400 * 365))
        };
        let (decision, at) = match answer.code {
            0 => (
                Decision::Admitted(Reservation {
                    key: key.clone(),
                    id: answer.x,
                    at: if answer.y == 0 { now } else { after(answer.y) },
                    costs: *costs,
                    used: answer.used,
                }),
                Some(answer.at_us),
            ),
            1 => (Decision::TooLate(after(answer.x)), Some(answer.at_us)),
            2 => (
                Decision::Never {
                    cost: answer.x,
                    capacity: answer.y,
                },
                None,
            ),
            // 3: cancelled by its token before it ran.
            _ => {
                return Err(Error::store_unavailable(
                    "redis store: the acquire was cancelled before it ran",
                ))
            }
        };
        Ok(ServerDecision {
            decision,
            server_now_us: Some(answer.now_us),
            server_at_us: at,
        })
    }
}

#[cfg(all(test, feature = "redis-cluster"))]
mod tests {
    use super::*;
    use crate::rate_limit::Limits;
    use redis::cluster_routing::Slot;

    fn job(key: &str, shape: &Arc<Shape>) -> Job {
        Job {
            key: Key::new(key.to_owned()),
            shape: shape.clone(),
            costs: Costs::new(1, 0),
            deadline_us: -1.0,
            token: 0,
            reply: oneshot::channel().0,
        }
    }

    /// A name of the form the store makes, in the slot of `{p:<key>}`.
    fn name(j: &Job) -> String {
        format!("{{p:{}}}:4:r:1000000", j.key)
    }

    /// Keys named `k<n>` until one shares `first`'s slot, and one that
    /// does not.
    fn same_and_other(first: &str) -> (String, String) {
        let slot = |k: &str| Slot::for_key(format!("{{p:{k}}}"));
        let same = (0..1_000_000)
            .map(|n| format!("k{n}"))
            .find(|k| k != first && slot(k) == slot(first))
            .expect("a key of the same slot");
        let other = (0..)
            .map(|n| format!("k{n}"))
            .find(|k| slot(k) != slot(first))
            .expect("a key of another slot");
        (same, other)
    }

    #[test]
    fn a_batch_goes_as_one_call_per_slot_in_its_order() {
        let shape = Arc::new(Shape::new(&Limits::new().requests_per_minute(10), |_| {
            Duration::ZERO
        }));
        let (same, other) = same_and_other("a");
        let order = ["a", &other, &same, "a", &other, &same];
        let batch: Vec<Job> = order.iter().map(|k| job(k, &shape)).collect();
        let slots = by_slot(batch, name);
        assert_eq!(slots.len(), 2, "two slots, two calls");
        let keys = |s: &SlotJobs| s.jobs.iter().map(|j| j.key.to_string()).collect::<Vec<_>>();
        // Each slot's jobs in the batch's order; each key named once, in
        // the order of its first job (what `encode` asks for).
        assert_eq!(keys(&slots[0]), ["a", &same, "a", &same]);
        assert_eq!(
            slots[0].names,
            [
                "{p:a}:4:r:1000000".to_owned(),
                format!("{{p:{same}}}:4:r:1000000")
            ]
        );
        assert_eq!(keys(&slots[1]), [other.as_str(), &other]);
        assert_eq!(slots[1].names.len(), 1);
        // The call of a slot has each key once, in the names' order.
        let mut names = slots[0].names.clone().into_iter();
        let call = encode(&slots[0].jobs, |_| names.next().unwrap_or_default());
        let cmd = call.fcall();
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(args[2], b"2", "two keys");
        assert_eq!(args[3], b"{p:a}:4:r:1000000");
        assert_eq!(args[4], format!("{{p:{same}}}:4:r:1000000").into_bytes());
    }
}
