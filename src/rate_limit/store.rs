//! Where the windows live: the [`Store`] trait and the in-memory store.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Admission, Costs, Dimension, Limits, Window};
use crate::classify::LimitState;
use crate::key::Key;
use crate::Error;

/// A granted reservation: what was charged, to which key, when. Give it
/// back to the store to cancel or correct the charge.
#[derive(Clone, Debug)]
pub struct Reservation {
    /// The key charged.
    pub key: Key,
    /// The store's id of the reservation within the key.
    pub id: u64,
    /// When the request may start (the caller waits until then).
    pub at: Instant,
    /// What was charged.
    pub costs: Costs,
}

/// A store's answer to [`Store::acquire`].
#[derive(Debug)]
pub enum Decision {
    /// Reserved; the request starts at `reservation.at` (now or later).
    Admitted(Reservation),
    /// It would start only at this instant, after the caller's deadline;
    /// nothing was reserved.
    TooLate(Instant),
    /// The cost exceeds a dimension's whole capacity; it never fits.
    Never {
        /// The cost in that dimension.
        cost: u64,
        /// The dimension's capacity.
        capacity: u64,
    },
}

/// The limiter's state behind one small interface, so that it can live in
/// this process ([`MemoryStore`], the default) or be shared by many
/// processes (a Redis store).
///
/// Every method is one decision, which a remote store implements as one
/// atomic round trip (one server-side script).
///
/// # Time
///
/// Callers pass `now` (the local `tokio::time::Instant`) and receive
/// instants on the same clock. A store whose state lives elsewhere keeps
/// its own time (Redis: `TIME` on the server, so skew between processes
/// cannot over-admit), computes every wait as a *duration* on that clock,
/// and converts it back as `now + wait`. Nothing but durations crosses the
/// wire.
///
/// # Failures
///
/// `acquire` may fail (a remote store that is unreachable returns
/// [`Error`] of kind store-unavailable per its policy). `cancel`, `correct`,
/// `gate` and `learn` are fire-and-forget: they run from `Drop` or after a
/// response and cannot block or fail the request; a remote store sends them
/// in the background.
pub trait Store: Send + Sync + 'static {
    /// The future of one [`acquire`](Store::acquire).
    type Acquire: Future<Output = Result<Decision, Error>> + Send + 'static;

    /// Reserves `costs` for `key` at the earliest instant at or after `now`
    /// that fits every limit of the key and comes after every earlier
    /// reservation of the key (first come, first served), unless that
    /// instant is after `deadline`.
    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire;

    /// Decides at once, without I/O, when the store can; `None` (the
    /// default) sends the caller to [`acquire`](Store::acquire). The
    /// in-memory store always decides here, which spares the limiter a
    /// future on its hot path.
    fn try_acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<Result<Decision, Error>> {
        let _ = (key, costs, now, deadline);
        None
    }

    /// Takes back a reservation whose request was never sent.
    fn cancel(&self, reservation: &Reservation);

    /// For a reservation still waiting: the instant it is booked at now
    /// (earlier than first answered when reservations ahead of it were
    /// cancelled), registering `waker` to be woken when it moves. The
    /// default answers `None`: the first answer stands.
    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        let _ = (reservation, waker);
        None
    }

    /// Forgets the waker registered by [`watch`](Store::watch) (the
    /// request was admitted).
    fn unwatch(&self, reservation: &Reservation) {
        let _ = reservation;
    }

    /// Replaces a reservation's token charge with what it really used.
    fn correct(&self, reservation: &Reservation, actual: &Costs, now: Instant);

    /// Pauses every request of `key` until `until` (a 429's Retry-After).
    fn gate(&self, key: &Key, until: Instant);

    /// Takes in what the provider reported for one dimension of `key`
    /// over `window`. Returns the limit in force when the state changed.
    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: LimitState,
        now: Instant,
    ) -> Option<u64>;
}

/// Keys hash with foldhash: several times faster than SipHash on short
/// keys, and randomly seeded per process.
type Map = HashMap<Key, Slot, RandomState>;

/// One key's window, and the wakers of its requests that wait (so that a
/// cancellation ahead of them can wake them early).
struct Slot {
    window: Window,
    watchers: Vec<(u64, Waker)>,
}

type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// The default store: every key's [`Window`] in one map in this process,
/// shared by all clones of the limiter.
///
/// The map is bounded: at most `max_keys` keys (default 10,000). When it is
/// full, keys whose windows hold nothing that still counts are dropped
/// first (that loses nothing); then keys unused for `idle_timeout`
/// (default: off); and if none qualifies, the least recently used key.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    max_keys: usize,
    idle_timeout: Option<Duration>,
    map: Mutex<Map>,
}

/// Default bound on the number of keys of a [`MemoryStore`].
pub const DEFAULT_MAX_KEYS: usize = 10_000;

impl MemoryStore {
    /// A store where every key has `limits`.
    pub fn new(limits: Limits) -> Self {
        Self::build(limits, None, false, DEFAULT_MAX_KEYS, None)
    }

    fn build(
        limits: Limits,
        key_limits: Option<Arc<KeyLimits>>,
        learn_limits: bool,
        max_keys: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                limits,
                key_limits,
                learn_limits,
                max_keys: max_keys.max(1),
                idle_timeout,
                map: Mutex::new(Map::default()),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Params)) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            limits: shared.limits.clone(),
            key_limits: shared.key_limits.clone(),
            learn_limits: shared.learn_limits,
            max_keys: shared.max_keys,
            idle_timeout: shared.idle_timeout,
            map: Mutex::new(Map::default()),
        });
        let mut p = Params {
            limits: inner.limits,
            key_limits: inner.key_limits,
            learn_limits: inner.learn_limits,
            max_keys: inner.max_keys,
            idle_timeout: inner.idle_timeout,
        };
        f(&mut p);
        Self::build(
            p.limits,
            p.key_limits,
            p.learn_limits,
            p.max_keys,
            p.idle_timeout,
        )
    }

    /// Gives each key its own limits (a key not worth a special case
    /// returns the default). Called once when a key's state is created.
    pub fn key_limits(self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        self.rebuild(|p| p.key_limits = Some(Arc::new(f)))
    }

    /// Whether a provider's `limit` header may raise the configured limit
    /// (default `false`: headers only ever tighten).
    pub fn learn_limits(self, yes: bool) -> Self {
        self.rebuild(|p| p.learn_limits = yes)
    }

    /// The most keys held at once (default [`DEFAULT_MAX_KEYS`]).
    pub fn max_keys(self, n: usize) -> Self {
        self.rebuild(|p| p.max_keys = n)
    }

    /// Keys unused for this long may be dropped when the map is full even
    /// if their windows still count something (default: never).
    pub fn idle_timeout(self, d: Duration) -> Self {
        self.rebuild(|p| p.idle_timeout = Some(d))
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest instant a request costing `costs` would be admitted for
    /// `key`, without reserving (`None`: it never fits).
    pub fn peek(&self, key: &Key, costs: &Costs, now: Instant) -> Option<Instant> {
        let mut map = self.lock();
        match map.get_mut(key) {
            Some(slot) => {
                slot.window.prune(now);
                slot.window.earliest(costs, now).ok()
            }
            None => Window::new(&self.limits_of(key), now)
                .earliest(costs, now)
                .ok(),
        }
    }

    /// The limit in force for `key`, `dimension` and `window`.
    pub fn limit_of(&self, key: &Key, dimension: Dimension, window: Duration) -> Option<u64> {
        match self.lock().get(key) {
            Some(slot) => slot.window.limit_of(dimension, window),
            None => self
                .limits_of(key)
                .iter()
                .find(|l| l.dimension == dimension && l.window == window)
                .map(|l| l.limit),
        }
    }

    fn limits_of(&self, key: &Key) -> Limits {
        match &self.inner.key_limits {
            Some(f) => f(key),
            None => self.inner.limits.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic elsewhere cannot leave a window half-updated in a way
        // that matters more than losing the limiter: keep going.
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_window<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(key) {
            return f(&mut slot.window);
        }
        if map.len() >= self.inner.max_keys {
            self.evict(&mut map, now);
        }
        let slot = map.entry(key.clone()).or_insert_with(|| Slot {
            window: Window::new(&self.limits_of(key), now),
            watchers: Vec::new(),
        });
        f(&mut slot.window)
    }

    fn evict(&self, map: &mut Map, now: Instant) {
        map.retain(|_, s| !s.window.is_idle(now));
        if map.len() < self.inner.max_keys {
            return;
        }
        if let Some(idle) = self.inner.idle_timeout {
            map.retain(|_, s| s.window.last_used() + idle > now);
            if map.len() < self.inner.max_keys {
                return;
            }
        }
        while map.len() >= self.inner.max_keys {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.window.last_used())
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            map.remove(&oldest);
        }
    }
}

impl MemoryStore {
    fn decide(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Decision, Error> {
        let admission = self.with_window(key, now, |w| w.acquire(costs, now, deadline));
        Ok(match admission {
            Admission::Reserved { id, at } => Decision::Admitted(Reservation {
                key: key.clone(),
                id,
                at,
                costs: *costs,
            }),
            Admission::TooLate { at } => Decision::TooLate(at),
            Admission::Never { cost, capacity } => Decision::Never { cost, capacity },
        })
    }
}

struct Params {
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    max_keys: usize,
    idle_timeout: Option<Duration>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("limits", &self.inner.limits)
            .field("key_limits", &self.inner.key_limits.is_some())
            .field("learn_limits", &self.inner.learn_limits)
            .field("max_keys", &self.inner.max_keys)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    type Acquire = Ready<Result<Decision, Error>>;

    fn acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self::Acquire {
        ready(self.decide(key, costs, now, deadline))
    }

    fn try_acquire(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<Result<Decision, Error>> {
        Some(self.decide(key, costs, now, deadline))
    }

    fn cancel(&self, reservation: &Reservation) {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(slot) = map.get_mut(&reservation.key) else {
            return;
        };
        slot.watchers.retain(|(id, _)| *id != reservation.id);
        if slot.window.cancel(reservation.id, now) {
            // Wake every waiter of the key: each asks again when it is due.
            let woken = std::mem::take(&mut slot.watchers);
            drop(map);
            for (_, waker) in woken {
                waker.wake();
            }
        }
    }

    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        let mut map = self.lock();
        let slot = map.get_mut(&reservation.key)?;
        let at = slot.window.booked_at(reservation.id)?;
        match slot
            .watchers
            .iter_mut()
            .find(|(id, _)| *id == reservation.id)
        {
            Some((_, w)) => w.clone_from(waker),
            None => slot.watchers.push((reservation.id, waker.clone())),
        }
        Some(at)
    }

    fn unwatch(&self, reservation: &Reservation) {
        if let Some(slot) = self.lock().get_mut(&reservation.key) {
            slot.watchers.retain(|(id, _)| *id != reservation.id);
        }
    }

    fn correct(&self, reservation: &Reservation, actual: &Costs, _now: Instant) {
        if let Some(slot) = self.lock().get_mut(&reservation.key) {
            slot.window.correct(reservation.id, actual);
        }
    }

    fn gate(&self, key: &Key, until: Instant) {
        self.with_window(key, Instant::now(), |w| w.gate(until));
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: LimitState,
        now: Instant,
    ) -> Option<u64> {
        let learn_limits = self.inner.learn_limits;
        self.with_window(key, now, |w| {
            w.learn(
                dimension,
                window,
                state.limit,
                state.remaining,
                state.reset,
                learn_limits,
                now,
            )
        })
    }
}
