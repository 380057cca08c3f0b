//! The fault policy: what a decision does when Redis is unreachable, slow
//! or failing. Either the error (fail closed), or a local in-memory store
//! with the limits divided among the expected processes (fail open), whose
//! reservations carry a bit in their id so that cancel and correct find
//! their way back to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::core::KeyLimits;
use super::store::{Inner, ServerDecision};
use super::token::Abandoned;
use crate::key::Key;
use crate::rate_limit::{Costs, Decision, Limits, MemoryStore, Reservation, Store};
use crate::Error;

/// Reservations made by the local fallback store carry this bit in their
/// id (Redis ids stay below 2^53), so that cancel and correct find them.
const LOCAL: u64 = 1 << 63;

/// What a [`RedisStore`](super::RedisStore) does when Redis is
/// unreachable, slow or failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub enum FaultPolicy {
    /// Refuse: the request fails at once (within the timeout) with an
    /// error for which [`Error::is_store_unavailable`] is true. The quota
    /// is never exceeded; availability follows Redis's.
    FailClosed,
    /// Fall back to a local in-memory limiter whose every limit is the
    /// configured one divided by `processes` (at least 1 each), so that
    /// the expected number of processes together stay within the quota.
    FailOpen {
        /// How many processes are expected to share the quota.
        processes: u64,
    },
}

/// The local store of [`FaultPolicy::FailOpen`] (none when failing closed).
pub(super) fn fallback_store(
    policy: FaultPolicy,
    limits: &Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    arrival_margin: Option<Duration>,
) -> Option<MemoryStore> {
    match policy {
        FaultPolicy::FailClosed => None,
        FaultPolicy::FailOpen { processes } => {
            let n = processes.max(1);
            let mut m = MemoryStore::new(divide(limits, n)).learn_limits(learn_limits);
            if let Some(margin) = arrival_margin {
                m = m.arrival_margin(margin);
            }
            if let Some(f) = key_limits {
                m = m.key_limits(move |k| divide(&f(k), n));
            }
            Some(m)
        }
    }
}

fn divide(limits: &Limits, n: u64) -> Limits {
    limits.iter().fold(Limits::new(), |acc, l| {
        acc.window(l.dimension, l.window, (l.limit / n).max(1))
    })
}

/// Whether `r` was made by the local fallback store.
pub(super) fn is_local(r: &Reservation) -> bool {
    r.id & LOCAL != 0
}

/// For a reservation of the local fallback, the fallback and its own view
/// of the reservation (`None`: a reservation of Redis).
pub(super) fn local<'a>(
    fallback: Option<&'a MemoryStore>,
    r: &Reservation,
) -> Option<(&'a MemoryStore, Reservation)> {
    if !is_local(r) {
        return None;
    }
    Some((
        fallback?,
        Reservation {
            id: r.id & !LOCAL,
            ..r.clone()
        },
    ))
}

/// One decision: by Redis while it is up, else by the fault policy.
pub(super) async fn decide(
    inner: Arc<Inner>,
    key: Key,
    costs: Costs,
    now: Instant,
    deadline: Option<Instant>,
) -> Result<ServerDecision, Error> {
    let core = &inner.core;
    let failure = if core.available() {
        let mut guard = Abandoned {
            inner: &inner,
            key: &key,
            token: inner.token(),
            armed: true,
        };
        match inner
            .acquire(&key, &costs, now, deadline, guard.token)
            .await
        {
            Ok(d) => {
                // The decision reaches the caller in this same poll.
                guard.armed = false;
                return Ok(d);
            }
            // The guard cancels by token: the script may have run.
            Err(e) => e,
        }
    } else {
        Error::store_unavailable("redis store degraded after a recent failure")
    };
    let Some(fallback) = &inner.fallback else {
        return Err(failure);
    };
    let decision = match fallback.acquire(&key, &costs, now, deadline).await? {
        Decision::Admitted(mut r) => {
            r.id |= LOCAL;
            Decision::Admitted(r)
        }
        other => other,
    };
    Ok(ServerDecision {
        decision,
        server_now_us: None,
        server_at_us: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Dimension;

    #[test]
    fn fail_open_divides_every_limit_and_keeps_at_least_one() {
        let l = Limits::new()
            .requests_per_minute(10)
            .tokens_per_minute(1_000)
            .window(Dimension::Requests, Duration::from_secs(1), 2);
        let d: Vec<_> = divide(&l, 3).iter().map(|l| l.limit).collect();
        assert_eq!(d, [3, 333, 1]);
    }
}
