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
use super::layout::pack;
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
        /// The reservation whose response said it: its id, and what the
        /// limit held as of its admission (`None`: no snapshot, so
        /// `remaining` is not compared). `None`: compared as of now.
        admission: Option<(u64, Option<u64>)>,
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
                let hold = core.shape_of(&r.key).longest_hold();
                r.at.checked_add(hold + Duration::from_secs(1))
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
            let shape = core.shape_of(&r.key);
            let mut call = Call::new(scripts::cancel());
            call.key(core.hash_key(&r.key, &shape));
            let mut nums = Vec::with_capacity(64);
            pack(&mut nums, r.id as f64);
            shape.add_groups(&mut call, nums);
            core.run::<i64>(&call).await.map(drop)
        }
        Cancel::Token { key, token, .. } => {
            let shape = core.shape_of(key);
            let mut call = Call::new(scripts::cancel_token());
            call.key(core.hash_key(key, &shape))
                .arg(&token.to_le_bytes()[..]);
            let mut nums = Vec::with_capacity(64);
            pack(&mut nums, TOKEN_TTL.as_millis() as f64);
            shape.add_groups(&mut call, nums);
            core.run::<i64>(&call).await.map(drop)
        }
    }
}

async fn apply(core: &Core, op: Op) -> Result<(), crate::Error> {
    match op {
        Op::Flush(_) => Ok(()),
        _ if !core.available() => Err(crate::Error::store_unavailable("redis store degraded")),
        Op::Correct(r, actual) => {
            let shape = core.shape_of(&r.key);
            let mut call = Call::new(scripts::correct());
            call.key(core.hash_key(&r.key, &shape));
            let mut nums = Vec::with_capacity(80);
            pack(&mut nums, r.id as f64);
            pack(&mut nums, clamp(actual.input_tokens) as f64);
            pack(&mut nums, clamp(actual.output_tokens) as f64);
            shape.add_groups(&mut call, nums);
            core.run::<i64>(&call).await.map(drop)
        }
        Op::Gate(key, until) => {
            let rel = until.saturating_duration_since(Instant::now());
            if rel.is_zero() {
                return Ok(());
            }
            let shape = core.shape_of(&key);
            let mut call = Call::new(scripts::gate());
            call.key(core.hash_key(&key, &shape));
            let mut nums = Vec::with_capacity(48);
            pack(&mut nums, to_micros(rel) as f64);
            shape.add_groups(&mut call, nums);
            core.run::<i64>(&call).await.map(drop)
        }
        Op::Learn {
            key,
            dimension,
            window,
            state,
            admission,
            now,
        } => {
            let shape = core.shape_of(&key);
            let Some((index, l, margin_us)) = shape.find(dimension, window) else {
                return Ok(());
            };
            let opt = |v: Option<u64>| v.map_or(-1.0, |v| clamp(v) as f64);
            // As of now, the report is `now`-relative: the time spent in
            // the queue has passed on the provider's side too. As of the
            // admission, the reset counts from the admission.
            let reset = match admission {
                Some(_) => state.reset,
                None => {
                    let queued = Instant::now().saturating_duration_since(now);
                    state.reset.map(|r| r.saturating_sub(queued))
                }
            };
            let (id, used) = match admission {
                Some((id, used)) => (id as f64, opt(used)),
                None => (-1.0, -1.0),
            };
            let mut nums = Vec::with_capacity(160);
            for x in [
                index as f64,
                l.configured as f64,
                opt(state.limit),
                opt(state.remaining),
                reset.map_or(-1.0, |r| to_micros(r) as f64),
                if core.learn_limits { 1.0 } else { 0.0 },
                to_micros(core.learned_ttl(l.window)) as f64,
                margin_us as f64,
                id,
                used,
            ] {
                pack(&mut nums, x);
            }
            let mut call = Call::new(scripts::learn());
            call.key(core.hash_key(&key, &shape));
            shape.add_groups(&mut call, nums);
            core.run::<i64>(&call).await.map(drop)
        }
    }
}
