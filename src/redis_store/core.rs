//! [`Core`]: what talks to Redis. The connection, the health of the
//! server (down for a retry interval after a failure), how a script is
//! called (`FCALL`, or `EVALSHA` on a server without functions) and the
//! acquire script's invocation and answer. Shared by the store's handles
//! and its background task, so it holds no queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::FromRedisValue;
use tokio::time::Instant;

use super::layout::{cost_of, groups, tag};
use super::scripts::{self, Call};
use super::store::ServerDecision;
use crate::key::Key;
use crate::rate_limit::{Costs, Decision, Limit, Limits, Reservation, UsedAtAdmission};
use crate::Error;

/// Numbers above this lose precision in Lua's doubles: costs, limits and
/// durations are clamped to it (2^53 - 1, about 285 years in µs).
pub(super) const MAX_SAFE: u64 = (1 << 53) - 1;

/// How long the server keeps the token of an acquire (the reservation it
/// made, for a cancel by token from a caller that never got the answer),
/// at most; and how long such a cancel is retried.
pub(super) const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The default [`RedisStoreBuilder::learned_ttl`](super::RedisStoreBuilder::learned_ttl)
/// is the limit's window, at most this long.
const DEFAULT_LEARNED_TTL_MAX: Duration = Duration::from_secs(600);

pub(super) type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// What the background task shares with the store (not the queue's
/// sender, so that dropping the last store ends the task).
pub(super) struct Core {
    pub(super) conn: ConnectionManager,
    pub(super) limits: Limits,
    pub(super) key_limits: Option<Arc<KeyLimits>>,
    pub(super) learn_limits: bool,
    pub(super) learned_ttl: Option<Duration>,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) retry_interval: Duration,
    pub(super) epoch: Instant,
    /// Milliseconds after `epoch` until which Redis is not asked (0: up).
    pub(super) down_until: AtomicU64,
    /// Whether the server refused the function library (or has no
    /// functions): scripts then go as `EVALSHA`.
    pub(super) no_functions: AtomicBool,
    /// Whether the warning about a process of the old key layout on the
    /// same prefix was logged (once per store).
    pub(super) warned_old_layout: AtomicBool,
}

/// Whether a server error says `what` (case aside).
fn says(e: &redis::RedisError, what: &str) -> bool {
    e.to_string().to_ascii_lowercase().contains(what)
}

/// Loads the function library; one that another process loaded first is
/// as good.
async fn load_library(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    let lib = scripts::library();
    match redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&lib.code)
        .query_async::<String>(conn)
        .await
    {
        Err(e) if says(&e, "already exists") => Ok(()),
        r => r.map(drop),
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_SAFE)
}

pub(super) fn safe(n: u64) -> u64 {
    n.min(MAX_SAFE)
}

impl Core {
    pub(super) fn limits_of(&self, key: &Key) -> Limits {
        match &self.key_limits {
            Some(f) => f(key),
            None => self.limits.clone(),
        }
    }

    /// How long a limit learned for `limit` holds after the provider said it.
    pub(super) fn learned_ttl(&self, limit: &Limit) -> Duration {
        self.learned_ttl
            .unwrap_or_else(|| limit.window.min(DEFAULT_LEARNED_TTL_MAX))
    }

    /// When Redis is asked again after a failure (`None`: it is up).
    pub(super) fn down_until(&self) -> Option<Instant> {
        if self.available() {
            return None;
        }
        let ms = self.down_until.load(Ordering::Relaxed);
        self.epoch.checked_add(Duration::from_millis(ms))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    }

    pub(super) fn available(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || self.elapsed_ms() >= until
    }

    fn mark_down(&self) {
        let ms = u64::try_from(self.retry_interval.as_millis()).unwrap_or(u64::MAX);
        let until = self.elapsed_ms().saturating_add(ms).max(1);
        if self.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                target: "tower_llm_resilience",
                "redis store unavailable; applying the fault policy for {:?}",
                self.retry_interval
            );
        }
    }

    fn mark_up(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0
            && self.down_until.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!(target: "tower_llm_resilience", "redis store reachable again");
        }
    }

    /// Runs one script call under the timeout; a failure marks Redis down
    /// for the retry interval.
    pub(super) async fn run<T: FromRedisValue>(&self, call: &Call) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, self.invoke::<T>(call)).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark_down();
                Err(Error::store_unavailable(e))
            }
            Err(_) => {
                self.mark_down();
                Err(Error::store_unavailable(format!(
                    "redis did not answer within {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// `FCALL` of the library's function, loading the library when the
    /// server lacks it; `EVALSHA` on a server without functions (or that
    /// refuses the library), from then on.
    async fn invoke<T: FromRedisValue>(&self, call: &Call) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        if !self.no_functions.load(Ordering::Relaxed) {
            match call.fcall().query_async::<T>(&mut conn).await {
                Err(e) if says(&e, "function not found") => match load_library(&mut conn).await {
                    Ok(()) => return call.fcall().query_async(&mut conn).await,
                    // The server is unreachable: a fault like any other.
                    Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                        return Err(e)
                    }
                    // It answered no (an old server, an ACL without
                    // FUNCTION): scripts it is.
                    Err(e) => self.without_functions(&e),
                },
                Err(e) if says(&e, "unknown command") => self.without_functions(&e),
                other => return other,
            }
        }
        call.script().invoke_async(&mut conn).await
    }

    fn without_functions(&self, why: &redis::RedisError) {
        if !self.no_functions.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "tower_llm_resilience",
                "redis store: the server takes no function library ({why}); scripts go as EVALSHA"
            );
        }
    }

    /// One acquire script call: the decision on the caller's clock, the
    /// server's instants beside it.
    pub(super) async fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
        token: u64,
    ) -> Result<ServerDecision, Error> {
        let limits = self.limits_of(key);
        let groups = groups(&limits);
        let mut call = Call::new(scripts::acquire());
        call.key(self.hash_key(key)).key(self.queue_key(key));
        for g in &groups {
            call.key(self.entries_key(key, g));
        }
        call.key(&self.token_keys(key)[..])
            .key(self.tombstone_key(key, token))
            .key(&self.old_hash_keys(key)[..]);
        // The numbers go packed (as the script's doubles: every one is
        // below 2^53, exact), the names after them.
        let rel = deadline.map_or(-1.0, |d| micros(d.saturating_duration_since(now)) as f64);
        let mut nums = Vec::with_capacity(8 * (3 + 2 * groups.len() + 2 * limits.iter().count()));
        let mut num = |x: f64| nums.extend_from_slice(&x.to_le_bytes());
        num(rel);
        num(groups.len() as f64);
        num(TOKEN_TTL.as_millis() as f64);
        for g in &groups {
            num(g.window_us as f64);
            num(g.limits.len() as f64);
            for l in &g.limits {
                num(safe(l.limit) as f64);
                num(safe(cost_of(l.dimension, costs)) as f64);
            }
        }
        call.arg(nums).arg(&token.to_le_bytes()[..]);
        for g in &groups {
            call.arg(g.field());
            for l in &g.limits {
                call.arg(tag(l));
            }
        }
        let r: Vec<i64> = self.run(&call).await?;
        // Waits count from when the answer arrived: never early.
        let received = Instant::now();
        let get = |i: usize| {
            r.get(i)
                .copied()
                .map_or(0, |v| u64::try_from(v).unwrap_or(0))
        };
        if get(5) == 1 && !self.warned_old_layout.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "tower_llm_resilience",
                "redis store: a process of an older version (key layout 1 or 2) keeps state for the key {key} under the prefix {:?}; the two versions count separately and together may exceed the quota: stop the older processes (see the redis_store docs, \"Upgrading\")",
                self.prefix
            );
        }
        let after = |us: u64| {
            received
                .checked_add(Duration::from_micros(us))
                .unwrap_or(received + Duration::from_secs(86_400 * 365))
        };
        let (decision, at) = match r.first() {
            Some(0) => (
                Decision::Admitted(Reservation {
                    key: key.clone(),
                    id: get(1),
                    at: if get(2) == 0 { now } else { after(get(2)) },
                    costs: *costs,
                    // Not kept yet: `learn` compares as of now.
                    used: UsedAtAdmission::UNKNOWN,
                }),
                Some(get(3)),
            ),
            Some(1) => (Decision::TooLate(after(get(1))), Some(get(3))),
            Some(2) => (
                Decision::Never {
                    cost: get(1),
                    capacity: get(2),
                },
                None,
            ),
            _ => {
                return Err(Error::store_unavailable(
                    "redis store: unexpected answer from the acquire script",
                ))
            }
        };
        Ok(ServerDecision {
            decision,
            server_now_us: Some(get(4)),
            server_at_us: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_clamped_for_lua() {
        assert_eq!(safe(u64::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
    }
}
