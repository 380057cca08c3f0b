//! The fire-and-forget operations and the background task that runs them.
//!
//! Two inputs: a bounded queue of corrections, gates and learns (dropped
//! when it is full: each only makes the limiter more conservative, or less
//! informed, until the window slides), and an unbounded channel of cancels,
//! which are never dropped for room: a lost cancel holds quota idle for a
//! whole window. Its size is bounded by the requests in flight (each
//! reservation is cancelled at most once, each acquire leaves at most one
//! cancel by token). Cancels run first, and one that fails is kept and
//! tried again once Redis is asked again, until its reservation can no
//! longer count.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use super::core::{micros as to_micros, safe as clamp, Core, TOKEN_TTL};
use super::layout::{add_group_args, groups};
use super::scripts::{self, Call};
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::rate_limit::{Costs, Dimension, Reservation};

/// An operation of the bounded queue.
pub(super) enum Op {
    Correct(Reservation, Costs),
    Gate(Key, Instant),
    Learn {
        key: Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        now: Instant,
    },
    /// Answers once everything queued before it ran, and every pending
    /// cancel was tried once more.
    Flush(oneshot::Sender<()>),
}

/// A cancel: never dropped for a full queue.
pub(super) enum Cancel {
    /// A reservation its caller holds and gives back.
    Reservation(Reservation),
    /// Whatever the acquire with this token reserved, if it ran at all:
    /// its caller never got the answer (timeout, or future dropped).
    Token {
        key: Key,
        token: u64,
        issued: Instant,
    },
}

/// At most this many cancels wait for Redis to come back; beyond, the
/// oldest is dropped (logged at `warn`). Far above what the requests in
/// flight of one process leave behind in an outage.
const MAX_PENDING: usize = 65_536;

/// A cancel kept until it ran, or until `give_up`, after which its
/// reservation no longer counts anywhere.
struct Pending {
    cancel: Cancel,
    give_up: Instant,
}

/// The cancels not run yet, in the order they were issued.
#[derive(Default)]
struct Cancels {
    queue: VecDeque<Pending>,
}

impl Cancels {
    fn push(&mut self, core: &Core, cancel: Cancel) {
        let give_up = match &cancel {
            // Nothing of it counts once its window slid past it.
            Cancel::Reservation(r) => {
                let window = core
                    .limits_of(&r.key)
                    .iter()
                    .map(|l| l.window)
                    .max()
                    .unwrap_or_default();
                r.at.checked_add(window + Duration::from_secs(1))
            }
            // The token record lives at most this long.
            Cancel::Token { issued, .. } => issued.checked_add(TOKEN_TTL),
        };
        let give_up = give_up.unwrap_or_else(far_future);
        if self.queue.len() >= MAX_PENDING {
            self.queue.pop_front();
            tracing::warn!(
                target: "tower_llm_resilience",
                "redis store: {MAX_PENDING} cancels wait for Redis; the oldest is dropped"
            );
        }
        self.queue.push_back(Pending { cancel, give_up });
    }

    /// Runs the pending cancels in order while Redis answers (`force`: even
    /// if it was marked down recently; one failure ends the attempt).
    async fn run(&mut self, core: &Core, force: bool) {
        if self.queue.is_empty() || !(force || core.available()) {
            return;
        }
        let now = Instant::now();
        self.queue.retain(|p| p.give_up > now);
        while let Some(p) = self.queue.front() {
            if !(force || core.available()) {
                return;
            }
            match cancel(core, &p.cancel).await {
                Ok(()) => {
                    self.queue.pop_front();
                }
                Err(e) => {
                    tracing::debug!(
                        target: "tower_llm_resilience",
                        "redis store: cancel kept for a retry: {e}"
                    );
                    return;
                }
            }
        }
    }

    /// When to try again: once Redis is asked again, if anything waits.
    fn retry_at(&self, core: &Core) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        core.down_until()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

enum Next {
    Cancel(Option<Cancel>),
    Op(Option<Op>),
    Retry,
}

/// Runs the operations one at a time until every store handle is gone:
/// cancels first, in the order they were issued, then the queue's
/// operations in theirs. Never panics on a Redis failure: a cancel is kept
/// for a retry, any other operation is dropped and logged.
pub(super) async fn run(
    core: Arc<Core>,
    mut ops: mpsc::Receiver<Op>,
    mut cancels: mpsc::UnboundedReceiver<Cancel>,
) {
    let mut pending = Cancels::default();
    let mut retry: Option<Pin<Box<Sleep>>> = None;
    let (mut ops_open, mut cancels_open) = (true, true);
    while ops_open || cancels_open {
        let next = poll_fn(|cx| {
            if cancels_open {
                if let Poll::Ready(c) = cancels.poll_recv(cx) {
                    return Poll::Ready(Next::Cancel(c));
                }
            }
            if ops_open {
                if let Poll::Ready(op) = ops.poll_recv(cx) {
                    return Poll::Ready(Next::Op(op));
                }
            }
            if let Some(sleep) = retry.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Next::Retry);
                }
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Cancel(Some(c)) => pending.push(&core, c),
            Next::Cancel(None) => cancels_open = false,
            Next::Op(None) => ops_open = false,
            Next::Op(Some(Op::Flush(done))) => {
                // Every cancel issued before the flush is in the channel.
                while let Ok(c) = cancels.try_recv() {
                    pending.push(&core, c);
                }
                pending.run(&core, true).await;
                let _ = done.send(());
            }
            Next::Op(Some(op)) => {
                pending.run(&core, false).await;
                if let Err(e) = apply(&core, op).await {
                    tracing::debug!(
                        target: "tower_llm_resilience",
                        "redis store: background operation dropped: {e}"
                    );
                }
            }
            Next::Retry => retry = None,
        }
        pending.run(&core, false).await;
        match pending.retry_at(&core) {
            None => retry = None,
            Some(at) => match retry.as_mut() {
                Some(sleep) if sleep.deadline() == at => {}
                Some(sleep) => sleep.as_mut().reset(at),
                None => retry = Some(Box::pin(tokio::time::sleep_until(at))),
            },
        }
    }
    // The last handle is gone: one last try for what is left.
    pending.run(&core, false).await;
    if !pending.queue.is_empty() {
        tracing::debug!(
            target: "tower_llm_resilience",
            "redis store: {} cancels dropped at shutdown (Redis unavailable)",
            pending.queue.len()
        );
    }
}

pub(super) async fn cancel(core: &Core, c: &Cancel) -> Result<(), crate::Error> {
    match c {
        Cancel::Reservation(r) => {
            let limits = core.limits_of(&r.key);
            let mut call = Call::new(scripts::cancel());
            call.arg(r.id);
            core.add_groups(&mut call, &r.key, &groups(&limits));
            core.run::<i64>(&call).await.map(drop)
        }
        Cancel::Token { key, token, .. } => {
            let limits = core.limits_of(key);
            let mut call = Call::new(scripts::cancel_token());
            call.arg(&token.to_le_bytes()[..])
                .arg(TOKEN_TTL.as_millis() as u64);
            core.add_groups(&mut call, key, &groups(&limits));
            call.key(&core.token_keys(key)[..])
                .key(core.tombstone_key(key, *token));
            core.run::<i64>(&call).await.map(drop)
        }
    }
}

async fn apply(core: &Core, op: Op) -> Result<(), crate::Error> {
    match op {
        Op::Flush(_) => Ok(()),
        _ if !core.available() => Err(crate::Error::store_unavailable("redis store degraded")),
        Op::Correct(r, actual) => {
            let limits = core.limits_of(&r.key);
            let mut call = Call::new(scripts::correct());
            call.arg(r.id)
                .arg(clamp(actual.input_tokens))
                .arg(clamp(actual.output_tokens));
            core.add_groups(&mut call, &r.key, &groups(&limits));
            core.run::<i64>(&call).await.map(drop)
        }
        Op::Gate(key, until) => {
            let rel = until.saturating_duration_since(Instant::now());
            if rel.is_zero() {
                return Ok(());
            }
            let mut call = Call::new(scripts::gate());
            call.key(core.hash_key(&key)).arg(to_micros(rel));
            core.run::<i64>(&call).await.map(drop)
        }
        Op::Learn {
            key,
            dimension,
            window,
            state,
            now,
        } => {
            let limits = core.limits_of(&key);
            let groups = groups(&limits);
            let Some((g, j, l)) = groups.iter().find_map(|g| {
                let j = g
                    .limits
                    .iter()
                    .position(|l| l.dimension == dimension && l.window == window)?;
                Some((g, j, g.limits[j]))
            }) else {
                return Ok(());
            };
            // The report is `now`-relative; time spent in the queue has
            // already passed on the provider's side too.
            let queued = Instant::now().saturating_duration_since(now);
            let opt = |v: Option<u64>| v.map_or(-1, |v| clamp(v) as i64);
            let mut call = Call::new(scripts::learn());
            call.key(core.hash_key(&key))
                .key(core.queue_key(&key))
                .key(core.entries_key(&key, g));
            add_group_args(&mut call, std::slice::from_ref(g));
            call.arg(j + 1)
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
            core.run::<i64>(&call).await.map(drop)
        }
    }
}
