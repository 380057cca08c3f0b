//! The fire-and-forget operations and the background task that runs them
//! in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::scripts;
use super::store::{micros as to_micros, safe as clamp, tag, Core};
use crate::classify::LimitState;
use crate::key::Key;
use crate::rate_limit::{Costs, Dimension, Reservation};

pub(super) enum Op {
    Cancel(Reservation),
    Correct(Reservation, Costs),
    Gate(Key, Instant),
    Learn {
        key: Key,
        dimension: Dimension,
        window: Duration,
        state: LimitState,
        now: Instant,
    },
    Flush(oneshot::Sender<()>),
}

/// Runs the operations one at a time, in the order they were queued, until
/// every store handle is gone. Never panics on a Redis failure: the
/// operation is dropped and logged.
pub(super) async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Op>) {
    while let Some(op) = rx.recv().await {
        if let Op::Flush(done) = op {
            let _ = done.send(());
            continue;
        }
        if let Err(e) = apply(&core, op).await {
            tracing::debug!(
                target: "tower_llm_resilience",
                "redis store: background operation dropped: {e}"
            );
        }
    }
}

async fn apply(core: &Core, op: Op) -> Result<(), crate::Error> {
    match op {
        Op::Flush(_) => Ok(()),
        _ if !core.available() => Err(crate::Error::store_unavailable("redis store degraded")),
        Op::Cancel(r) => {
            let limits = core.limits_of(&r.key);
            let mut inv = scripts::cancel().prepare_invoke();
            inv.key(core.hash_key(&r.key));
            inv.arg(r.id).arg(limits.iter().count());
            for l in limits.iter() {
                let t = tag(l);
                inv.key(core.log_key(&r.key, &t));
                inv.arg(t);
            }
            core.run::<i64>(&inv).await.map(drop)
        }
        Op::Correct(r, actual) => {
            let limits = core.limits_of(&r.key);
            let mut inv = scripts::correct().prepare_invoke();
            inv.key(core.hash_key(&r.key));
            inv.arg(r.id)
                .arg(clamp(actual.input_tokens))
                .arg(clamp(actual.output_tokens))
                .arg(limits.iter().count());
            for l in limits.iter() {
                let t = tag(l);
                inv.key(core.log_key(&r.key, &t));
                inv.arg(t);
            }
            core.run::<i64>(&inv).await.map(drop)
        }
        Op::Gate(key, until) => {
            let rel = until.saturating_duration_since(Instant::now());
            if rel.is_zero() {
                return Ok(());
            }
            let mut inv = scripts::gate().prepare_invoke();
            inv.key(core.hash_key(&key)).arg(to_micros(rel));
            core.run::<i64>(&inv).await.map(drop)
        }
        Op::Learn {
            key,
            dimension,
            window,
            state,
            now,
        } => {
            let limits = core.limits_of(&key);
            let Some(l) = limits
                .iter()
                .find(|l| l.dimension == dimension && l.window == window)
            else {
                return Ok(());
            };
            // The report is `now`-relative; time spent in the queue has
            // already passed on the provider's side too.
            let queued = Instant::now().saturating_duration_since(now);
            let t = tag(l);
            let opt = |v: Option<u64>| v.map_or(-1, |v| clamp(v) as i64);
            let mut inv = scripts::learn().prepare_invoke();
            inv.key(core.hash_key(&key)).key(core.log_key(&key, &t));
            inv.arg(t)
                .arg(to_micros(l.window))
                .arg(clamp(l.limit))
                .arg(opt(state.limit))
                .arg(opt(state.remaining))
                .arg(
                    state
                        .reset
                        .map_or(-1, |r| to_micros(r.saturating_sub(queued)) as i64),
                )
                .arg(if core.learn_limits { 1 } else { 0 })
                .arg(to_micros(core.learned_ttl(l)));
            core.run::<i64>(&inv).await.map(drop)
        }
    }
}
