//! [`Core`]: what talks to Redis. The connection, the key names of layout
//! 2, the health of the server (down for a retry interval after a
//! failure) and the acquire script's invocation and answer. Shared by the
//! store's handles and its background task, so it holds no queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ScriptInvocation};
use tokio::time::Instant;

use super::scripts;
use super::store::ServerDecision;
use crate::key::Key;
use crate::rate_limit::{Costs, Decision, Dimension, Limit, Limits, Reservation, UsedAtAdmission};
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
    /// Whether the warning about a process of the old key layout on the
    /// same prefix was logged (once per store).
    pub(super) warned_old_layout: AtomicBool,
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_SAFE)
}

pub(super) fn safe(n: u64) -> u64 {
    n.min(MAX_SAFE)
}

fn code(d: Dimension) -> char {
    match d {
        Dimension::Requests => 'r',
        Dimension::Tokens => 't',
        Dimension::InputTokens => 'i',
        Dimension::OutputTokens => 'o',
    }
}

fn cost_of(d: Dimension, c: &Costs) -> u64 {
    match d {
        Dimension::Requests => c.requests,
        Dimension::Tokens => c.total_tokens(),
        Dimension::InputTokens => c.input_tokens,
        Dimension::OutputTokens => c.output_tokens,
    }
}

pub(super) fn tag(l: &Limit) -> String {
    format!("{}:{}", code(l.dimension), micros(l.window))
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

    /// The state hash of layout 2 (`:s2`: a process of layout 1 used `:s`
    /// and list logs, and must not read or write this state).
    pub(super) fn hash_key(&self, key: &Key) -> String {
        format!("{{{}:{}}}:s2", self.prefix, key)
    }

    /// The state hash of layout 1, only ever tested for existence.
    fn old_hash_key(&self, key: &Key) -> String {
        format!("{{{}:{}}}:s", self.prefix, key)
    }

    pub(super) fn queue_key(&self, key: &Key) -> String {
        format!("{{{}:{}}}:q", self.prefix, key)
    }

    pub(super) fn entries_key(&self, key: &Key, tag: &str) -> String {
        format!("{{{}:{}}}:e:{}", self.prefix, key, tag)
    }

    pub(super) fn token_key(&self, key: &Key, token: u64) -> String {
        format!("{{{}:{}}}:k:{:016x}", self.prefix, key, token)
    }

    /// The hash and queue of `key`, then per limit its entries key (and,
    /// in the arguments, its tag and window): the common head of the
    /// cancel and correct scripts' keys.
    pub(super) fn add_dims(&self, inv: &mut ScriptInvocation<'_>, key: &Key, limits: &Limits) {
        inv.key(self.hash_key(key)).key(self.queue_key(key));
        for l in limits.iter() {
            let t = tag(l);
            inv.key(self.entries_key(key, &t));
            inv.arg(t).arg(micros(l.window));
        }
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

    /// Runs one script invocation under the timeout; a failure marks Redis
    /// down for the retry interval.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await {
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
        let mut inv = scripts::acquire().prepare_invoke();
        inv.key(self.hash_key(key)).key(self.queue_key(key));
        let rel = deadline.map_or(-1, |d| micros(d.saturating_duration_since(now)) as i64);
        inv.arg(rel).arg(limits.iter().count());
        for l in limits.iter() {
            let tag = tag(l);
            inv.key(self.entries_key(key, &tag));
            inv.arg(tag)
                .arg(micros(l.window))
                .arg(safe(l.limit))
                .arg(safe(cost_of(l.dimension, costs)));
        }
        inv.key(self.token_key(key, token));
        inv.key(self.old_hash_key(key));
        inv.arg(TOKEN_TTL.as_millis() as u64);
        let r: Vec<i64> = self.run(&inv).await?;
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
                "redis store: a process of an older version (key layout 1) keeps state for the key {key} under the prefix {:?}; the two versions count separately and together may exceed the quota: stop the older processes (see the redis_store docs, \"Upgrading\")",
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
    fn tags_name_dimension_and_window_in_microseconds() {
        let l = Limits::new()
            .requests_per_minute(1)
            .input_tokens_per_minute(1)
            .window(Dimension::OutputTokens, Duration::from_millis(1_500), 1)
            .tokens_per_day(1);
        let tags: Vec<_> = l.iter().map(tag).collect();
        assert_eq!(
            tags,
            ["r:60000000", "i:60000000", "o:1500000", "t:86400000000"]
        );
    }

    #[test]
    fn numbers_are_clamped_for_lua() {
        assert_eq!(safe(u64::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::MAX), MAX_SAFE);
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
    }
}
