//! [`RedisStore`]: the limiter's windows in Redis, and its
//! [`Store`](crate::rate_limit::Store) implementation. A decision goes to
//! Redis through [`Core`](super::core::Core) (or to the fault policy's
//! local store); everything else (cancel, correct, gate, learn) is handed
//! to the background task of [`ops`](super::ops) and never blocks a
//! request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::batch::Job;
use super::core::Core;
use super::fault::{self, FaultPolicy};
use super::gates::Gates;
use super::ops::{Cancel, Op};
use super::token::mix;
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::rate_limit::{Costs, Decision, Dimension, MemoryStore, Reservation, Store};
use crate::Error;

/// The limiter's state in Redis, shared by every process that uses the
/// same prefix: see the [module docs](crate::redis_store).
///
/// Clones share one connection (multiplexed) and two background tasks:
/// one sends the decisions in batches (see the module docs), one runs the
/// fire-and-forget operations. Each `acquire` is one script round trip,
/// shared with the other decisions asked meanwhile, and a few small
/// allocations (a boxed future, a channel for the answer), which the round
/// trip dwarfs.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    pub(super) fallback: Option<MemoryStore>,
    pub(super) policy: FaultPolicy,
    /// Decisions, to the batch task.
    pub(super) acquires: mpsc::UnboundedSender<Job>,
    /// Corrections, gates, learns: dropped when full.
    pub(super) ops: mpsc::Sender<Op>,
    /// Cancels: never dropped for room (bounded by the requests in flight).
    pub(super) cancels: mpsc::UnboundedSender<Cancel>,
    /// Tokens of acquires: random per store, then counted.
    pub(super) token_base: u64,
    pub(super) tokens: AtomicU64,
    /// The gates this process closed, for `watch`.
    pub(super) gates: Gates,
}

impl Inner {
    pub(super) fn cancel(&self, c: Cancel) {
        if self.cancels.send(c).is_err() {
            tracing::debug!(
                target: "tower_llm_resilience",
                "redis store: background task gone, cancel dropped"
            );
        }
    }

    /// A token no other acquire of any process uses (a bijective mix of a
    /// random base and a counter).
    pub(super) fn token(&self) -> u64 {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        mix(self.token_base.wrapping_add(n))
    }
}

/// A decision with the Redis server's clock, for logs and diagnostics:
/// what [`RedisStore::decide`] returns.
#[derive(Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct ServerDecision {
    /// The decision, on the caller's clock (as [`Store::acquire`]).
    pub decision: Decision,
    /// The server's time of the decision, in µs since the Unix epoch
    /// (`None`: decided by the local fallback store).
    pub server_now_us: Option<u64>,
    /// The server's admission instant (for `Admitted` and `TooLate`), in
    /// µs since the Unix epoch.
    pub server_at_us: Option<u64>,
}

impl RedisStore {
    /// The fault policy in force.
    pub fn fault_policy(&self) -> FaultPolicy {
        self.inner.policy
    }

    /// Whether decisions currently skip Redis after a recent failure.
    pub fn is_degraded(&self) -> bool {
        !self.inner.core.available()
    }

    /// Waits until every fire-and-forget operation issued before this call
    /// has run (or was dropped), and every cancel still waiting for Redis
    /// was tried once more (even while the store is degraded): for tests
    /// and an orderly shutdown. A cancel that fails again stays pending.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// [`Store::acquire`] with the server's clock in the answer: the same
    /// decision, plus when the server decided and admitted it.
    pub async fn decide(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<ServerDecision, Error> {
        fault::decide(self.inner.clone(), key.clone(), *costs, now, deadline).await
    }

    /// The fallback store and its own view of a reservation it made.
    fn local(&self, r: &Reservation) -> Option<(&MemoryStore, Reservation)> {
        fault::local(self.inner.fallback.as_ref(), r)
    }

    fn enqueue(&self, op: Op) {
        if let Err(e) = self.inner.ops.try_send(op) {
            tracing::debug!(
                target: "tower_llm_resilience",
                "redis store: background queue full or closed, operation dropped: {e}"
            );
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.core;
        f.debug_struct("RedisStore")
            .field("limits", &c.limits)
            .field("key_limits", &c.key_limits.is_some())
            .field("learn_limits", &c.learn_limits)
            .field("learned_ttl", &c.learned_ttl)
            .field("arrival_margin", &c.arrival_margin)
            .field("prefix", &c.prefix)
            .field("timeout", &c.timeout)
            .field("retry_interval", &c.retry_interval)
            .field("policy", &self.inner.policy)
            .field("cluster", &c.conn.is_cluster())
            .finish_non_exhaustive()
    }
}

impl Store for RedisStore {
    type Acquire = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send + 'static>>;

    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire {
        let inner = self.inner.clone();
        let key = key.clone();
        let costs = *costs;
        Box::pin(async move {
            fault::decide(inner, key, costs, now, deadline)
                .await
                .map(|d| d.decision)
        })
    }

    fn cancel(&self, reservation: &Reservation) {
        match self.local(reservation) {
            Some((m, r)) => m.cancel(&r),
            None => self.inner.cancel(Cancel::Reservation(reservation.clone())),
        }
    }

    /// For a reservation of the local fallback, the fallback's answer.
    /// For one of Redis (which never re-books a reservation, see the
    /// module docs): the end of a gate this process closed (it saw the
    /// 429) after the reservation was booked, when it ends after the
    /// reservation's instant; else `None`, the booking stands. A gate
    /// closed by another process reaches only later acquires.
    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        if let Some((m, r)) = self.local(reservation) {
            return m.watch(&r, waker);
        }
        self.inner
            .gates
            .end(&reservation.key, Instant::now())
            .filter(|end| *end > reservation.at)
    }

    fn unwatch(&self, reservation: &Reservation) {
        if let Some((m, r)) = self.local(reservation) {
            m.unwatch(&r);
        }
    }

    fn correct(&self, reservation: &Reservation, actual: &Costs, now: Instant) {
        match self.local(reservation) {
            Some((m, r)) => m.correct(&r, actual, now),
            None => self.enqueue(Op::Correct(reservation.clone(), *actual)),
        }
    }

    /// The end of a gate this process closed (it saw the 429), so that
    /// the limiter refuses at once a wait on it longer than its bound; a
    /// gate closed by another process is known only to the script, and a
    /// wait on it is bounded by the limiter's `max_wait` alone.
    fn gate_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        self.inner.gates.end(key, now)
    }

    fn gate(&self, key: &Key, until: Instant) {
        self.inner.gates.close(key, until);
        if let Some(m) = &self.inner.fallback {
            // Kept locally too, for the decisions made while Redis is down.
            m.gate(key, until);
        }
        self.enqueue(Op::Gate(key.clone(), until));
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        reservation: Option<&Reservation>,
        now: Instant,
    ) -> Option<u64> {
        // Compared as of the reservation's admission when it is one of
        // Redis's for this key (a reservation of the local fallback, or of
        // another key, says nothing of this key's window in Redis).
        let admission = reservation
            .filter(|r| r.key == *key && !fault::is_local(r))
            .map(|r| {
                let used = self
                    .inner
                    .core
                    .shape_of(key)
                    .find(dimension, window)
                    .and_then(|(_, l, _)| r.used.get(l.index));
                (r.id, used)
            });
        self.enqueue(Op::Learn {
            key: key.clone(),
            dimension,
            window,
            state,
            admission,
            now,
        });
        None
    }
}

#[cfg(test)]
#[path = "../../tests/redis_support/mod.rs"]
#[allow(unreachable_pub)]
mod test_server;

#[cfg(test)]
mod tests {
    use super::super::ops;
    use super::*;
    use crate::rate_limit::{Dimension, Limits};

    fn calls(server: &test_server::RedisServer, name: &str) -> u64 {
        server
            .command_stats()
            .into_iter()
            .find(|(n, ..)| n == name)
            .map_or(0, |(_, calls, _)| calls)
    }

    /// Whether a decision with `tokens` fits at once on `key`.
    async fn fits(store: &RedisStore, key: &Key, tokens: u64) -> bool {
        let now = Instant::now();
        let d = store
            .acquire(key, &Costs::tokens(tokens), now, Some(now))
            .await;
        match d.unwrap() {
            Decision::Admitted(r) => {
                store.cancel(&r);
                store.flush().await;
                true
            }
            _ => false,
        }
    }

    /// The scripts run as functions of one library (`FCALL`), which the
    /// store loads again when the server lost it (a restart without
    /// persistence, a `FUNCTION FLUSH`).
    #[tokio::test]
    async fn scripts_run_as_functions_and_the_library_is_loaded_again_when_lost() {
        let Some(server) = test_server::RedisServer::start(
            "scripts_run_as_functions_and_the_library_is_loaded_again_when_lost",
        ) else {
            return;
        };
        let limits = Limits::new().window(Dimension::Tokens, Duration::from_secs(60), 100);
        let store = RedisStore::builder(limits)
            .prefix("fn")
            .build(&server.url())
            .unwrap();
        let key = Key::new("k");
        let d = store.acquire(&key, &Costs::tokens(60), Instant::now(), None);
        assert!(matches!(d.await.unwrap(), Decision::Admitted(_)));
        assert_eq!(server.command(&["FUNCTION", "FLUSH"]), "OK");
        assert!(fits(&store, &key, 40).await, "the library is back");
        assert!(!fits(&store, &key, 41).await, "and the count was kept");
        assert!(calls(&server, "fcall") >= 5);
        assert_eq!(calls(&server, "function|load"), 2);
        assert_eq!(calls(&server, "evalsha") + calls(&server, "eval"), 0);
    }

    /// On a server without functions (Redis 6), or one that refuses the
    /// library, every script goes as `EVALSHA`, with the same decisions.
    #[tokio::test]
    async fn without_functions_every_script_runs_as_evalsha() {
        let Some(server) =
            test_server::RedisServer::start("without_functions_every_script_runs_as_evalsha")
        else {
            return;
        };
        let limits = Limits::new()
            .window(Dimension::Requests, Duration::from_secs(60), 3)
            .window(Dimension::Tokens, Duration::from_secs(60), 100);
        let store = RedisStore::builder(limits)
            .prefix("eval")
            .build(&server.url())
            .unwrap();
        store
            .inner
            .core
            .no_functions
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let key = Key::new("k");
        let one = |d: Result<Decision, Error>| match d.unwrap() {
            Decision::Admitted(r) => r,
            other => panic!("{other:?}"),
        };
        let a = one(store
            .acquire(&key, &Costs::tokens(50), Instant::now(), None)
            .await);
        let b = one(store
            .acquire(&key, &Costs::tokens(30), Instant::now(), None)
            .await);
        assert!(!fits(&store, &key, 21).await);
        store.correct(&b, &Costs::tokens(10), Instant::now());
        store.flush().await;
        assert!(fits(&store, &key, 40).await, "corrected: 60 used");
        store.cancel(&a);
        store.flush().await;
        assert!(fits(&store, &key, 90).await, "cancelled: 10 used");
        // A cancel by token before its acquire: the acquire reserves nothing.
        let token = store.inner.token();
        let cancel = Cancel::Token {
            key: key.clone(),
            token,
            issued: Instant::now(),
        };
        ops::cancel(&store.inner.core, &cancel).await.unwrap();
        let late = store
            .inner
            .acquire(&key, &Costs::tokens(1), Instant::now(), None, token)
            .await;
        assert!(late.is_err(), "{late:?}");
        store.gate(&key, Instant::now() + Duration::from_secs(30));
        store.flush().await;
        assert!(!fits(&store, &key, 1).await, "gated");
        assert!(calls(&server, "evalsha") >= 10);
        assert_eq!(calls(&server, "fcall") + calls(&server, "function|load"), 0);
    }

    /// A cancel by token may reach the server before its acquire does (a
    /// reconnect after a timeout: the two travel on different
    /// connections): the acquire then reserves nothing.
    #[tokio::test]
    async fn a_cancel_by_token_that_overtakes_its_acquire_leaves_nothing_reserved() {
        let Some(server) = test_server::RedisServer::start(
            "a_cancel_by_token_that_overtakes_its_acquire_leaves_nothing_reserved",
        ) else {
            return;
        };
        let limits = Limits::new().window(Dimension::Requests, Duration::from_secs(60), 1);
        let store = RedisStore::builder(limits)
            .prefix("overtaken")
            .build(&server.url())
            .unwrap();
        let core = &store.inner.core;
        let key = Key::new("k");
        let one = Costs::new(0, 0);
        let by_token = |token| Cancel::Token {
            key: key.clone(),
            token,
            issued: Instant::now(),
        };
        let token = store.inner.token();
        ops::cancel(core, &by_token(token)).await.unwrap();
        let late = store
            .inner
            .acquire(&key, &one, Instant::now(), None, token)
            .await;
        assert!(late.is_err(), "cancelled before it ran: {late:?}");
        // The whole limit (1) is still free; then a cancel by token after
        // its acquire ran gives it back, twice is harmless.
        let token = store.inner.token();
        let d = store
            .inner
            .acquire(&key, &one, Instant::now(), None, token)
            .await;
        assert!(matches!(d.unwrap().decision, Decision::Admitted(r) if r.at <= Instant::now()));
        ops::cancel(core, &by_token(token)).await.unwrap();
        ops::cancel(core, &by_token(token)).await.unwrap();
        for _ in 0..2 {
            let now = Instant::now();
            let token = store.inner.token();
            let d = store.inner.acquire(&key, &one, now, Some(now), token).await;
            assert!(
                matches!(d.unwrap().decision, Decision::Admitted(_)),
                "freed"
            );
            ops::cancel(core, &by_token(token)).await.unwrap();
        }
    }
}
