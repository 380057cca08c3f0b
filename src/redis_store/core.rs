//! [`Core`]: what talks to Redis. The connection, the health of the
//! server (down for a retry interval after a failure), how a script is
//! called (`FCALL`, or `EVALSHA` on a server without functions), and the
//! settings every call needs. Shared by the store's handles and its
//! background tasks, so it holds no queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tokio::time::Instant;

use super::layout::Shape;
use super::scripts::{self, Call};
use crate::key::Key;
use crate::rate_limit::Limits;
use crate::Error;

/// Numbers above this lose precision in Lua's doubles: costs, limits and
/// durations are clamped to it (2^53 - 1, about 285 years in µs).
pub(super) const MAX_SAFE: u64 = (1 << 53) - 1;

/// How long a tombstone lasts (what a cancel by token leaves, so that its
/// acquire, should it arrive later, reserves nothing), and how long such
/// a cancel is retried while Redis is down. The token's record itself
/// lives with its reservation's entry.
pub(super) const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The default [`RedisStoreBuilder::learned_ttl`](super::RedisStoreBuilder::learned_ttl)
/// is the limit's window, at most this long.
const DEFAULT_LEARNED_TTL_MAX: Duration = Duration::from_secs(600);

pub(super) type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// The connection: to one server (reconnected by the connection
/// manager), or to a Redis Cluster (routed by each call's first key,
/// redirected and refreshed by the redis crate on `MOVED`/`ASK` and
/// after a failover). Cheap to clone: both multiplex one connection per
/// node.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// Whether every key of a call must be in one hash slot.
    pub(super) fn is_cluster(&self) -> bool {
        match self {
            Conn::Single(_) => false,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => true,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What the background task shares with the store (not the queue's
/// sender, so that dropping the last store ends the task).
pub(super) struct Core {
    pub(super) conn: Conn,
    pub(super) limits: Limits,
    pub(super) key_limits: Option<Arc<KeyLimits>>,
    pub(super) learn_limits: bool,
    pub(super) learned_ttl: Option<Duration>,
    /// The arrival margin set (`None`: the default per window).
    pub(super) arrival_margin: Option<Duration>,
    /// The shape of `limits`, made once.
    pub(super) shape: Arc<Shape>,
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
/// as good. On a cluster, on every primary (the redis crate routes
/// `FUNCTION LOAD` to all of them and fails unless each succeeds): the
/// node that lacked it (a new primary after a failover, a node added
/// since) gets it, and the others have it replaced by the same code
/// (`REPLACE`: the library is named after a hash of its code, so the
/// replacement is identical), so that one node that already has it does
/// not fail the load for the others.
async fn load_library(conn: &mut Conn) -> redis::RedisResult<()> {
    let lib = scripts::library();
    let mut load = redis::cmd("FUNCTION");
    load.arg("LOAD");
    if conn.is_cluster() {
        load.arg("REPLACE");
    }
    match load.arg(&lib.code).query_async::<Value>(conn).await {
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
    /// `key`'s limits as the scripts take them: the shape made once, or
    /// with per-key limits, one made now.
    pub(super) fn shape_of(&self, key: &Key) -> Arc<Shape> {
        match &self.key_limits {
            Some(f) => Arc::new(Shape::new(&f(key), |w| self.margin(w))),
            None => self.shape.clone(),
        }
    }

    /// How long a limit learned for a limit over `window` holds after the
    /// provider said it.
    pub(super) fn learned_ttl(&self, window: Duration) -> Duration {
        self.learned_ttl
            .unwrap_or_else(|| window.min(DEFAULT_LEARNED_TTL_MAX))
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

    pub(super) fn mark_down(&self) {
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
    /// server (on a cluster: the node of the call's slot) lacks it;
    /// `EVALSHA` on a server without functions (or that refuses the
    /// library), from then on (on a cluster, the redis crate loads a
    /// script missing on `NOSCRIPT` on every primary).
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
