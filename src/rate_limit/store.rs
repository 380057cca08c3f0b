//! Where the windows live: the [`Store`] trait and the in-memory store.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Admission, Costs, Dimension, Limits, SlidingWindow};
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::Error;

/// A granted reservation: what was charged, to which key, when. Give it
/// back to the store to cancel or correct the charge.
#[derive(Clone, Debug)]
pub struct Reservation {
    /// The key charged.
    pub key: Key,
    /// The store's id of the reservation within the key. The
    /// [`MemoryStore`] numbers reservations store-wide: an id never repeats,
    /// so a late cancel or correction can never touch another request's
    /// reservation, even after the key's state was dropped and made again.
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

    /// For a reservation still waiting: the instant it is booked at now,
    /// registering `waker` to be woken when it moves. The default answers
    /// `None`: the first answer stands.
    ///
    /// # Contract
    ///
    /// The answer may differ from the instant first given, both ways:
    ///
    /// - **earlier**, when reservations ahead of it were cancelled;
    /// - **later**, when a gate closed after it was booked (a 429's
    ///   `Retry-After` that holds every request of the key): a store must
    ///   report an instant at or after the end of any gate of the key it
    ///   knows of, so that no request is sent before the server said.
    ///
    /// The limiter then sleeps until the new instant; if a later instant is
    /// further away than its gate bound
    /// ([`RateLimitLayer::max_gate_wait`](super::RateLimitLayer::max_gate_wait)),
    /// the request fails at once with
    /// [`Error::is_rate_limit_timeout`](crate::Error::is_rate_limit_timeout)
    /// (its `retry_after` the wait) and cancels its reservation.
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

    /// Pauses every request of `key` until `until` (a 429's Retry-After),
    /// including those already waiting (see [`watch`](Store::watch)).
    fn gate(&self, key: &Key, until: Instant);

    /// The end of `key`'s gate, if it is closed at `now` and the store
    /// knows without I/O; the default answers `None`. The limiter asks
    /// only for a request that must wait, to refuse at once a wait on a
    /// gate longer than its bound
    /// ([`RateLimitLayer::max_gate_wait`](super::RateLimitLayer::max_gate_wait))
    /// instead of holding it silently.
    fn gate_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        let _ = (key, now);
        None
    }

    /// Takes in what the provider reported for one dimension of `key`
    /// over `window`, by the rule of [`SlidingWindow::learn`] (a limit of 0 is
    /// ignored; a learned limit has a floor, a bound and an expiry).
    /// Returns the limit in force when the state changed.
    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        now: Instant,
    ) -> Option<u64>;
}

/// Keys hash with foldhash: several times faster than SipHash on short
/// keys, and randomly seeded per process.
type Map = HashMap<Key, Slot, RandomState>;

/// One key's window, and the wakers of its requests that wait (so that a
/// cancellation ahead of them, or a gate, can wake them).
struct Slot {
    window: SlidingWindow,
    watchers: Vec<(u64, Waker)>,
}

/// Everything behind the store's one lock.
struct State {
    map: Map,
    /// The next reservation id: one counter for the whole store, so that
    /// an id never repeats, even after a key's window was dropped and made
    /// again (a late cancel then finds nothing instead of another request's
    /// reservation).
    next_id: u64,
    /// No held key can be dropped before this instant (a lower bound, so
    /// that a full map is not scanned on every new key); `None`: unknown,
    /// scan.
    next_free: Option<Instant>,
}

type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// How many times `max_keys` the map may hold when every key still counts
/// something (the hard bound; see [`MemoryStore::max_keys`]).
pub const HARD_KEYS_FACTOR: usize = 4;

/// The default store: every key's [`SlidingWindow`] in one map in this process,
/// shared by all clones of the limiter.
///
/// # Bounded, and never forgetful
///
/// The map holds `max_keys` keys (default 10,000) as a **soft** bound.
/// When it is full and a new key comes, keys whose windows hold nothing
/// that still counts (no entry in any window, no gate, no external usage)
/// are dropped: that loses no usage. A key whose windows still count is
/// **never** dropped (dropping it would forget in-flight usage, and a flood
/// of new keys would then bypass every limit), unless it has been unused
/// for the opt-in [`idle_timeout`](Self::idle_timeout). When no key can go,
/// the map grows past `max_keys`, up to the **hard** bound of
/// [`HARD_KEYS_FACTOR`] (4) times `max_keys`; past it, a request of a new
/// key fails at once with [`Error::is_too_many_keys`](crate::Error::is_too_many_keys)
/// (class rate limited, with a `retry_after` until the first held key can
/// go). Requests of keys already held are never refused for this.
///
/// Reservation ids are numbered store-wide and never repeat.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    state: Mutex<State>,
}

#[derive(Clone)]
struct Params {
    limits: Limits,
    key_limits: Option<Arc<KeyLimits>>,
    learn_limits: bool,
    learned_ttl: Option<Duration>,
    max_keys: usize,
    idle_timeout: Option<Duration>,
}

/// Default bound on the number of keys of a [`MemoryStore`].
pub const DEFAULT_MAX_KEYS: usize = 10_000;

impl MemoryStore {
    /// A store where every key has `limits`.
    pub fn new(limits: Limits) -> Self {
        Self::build(Params {
            limits,
            key_limits: None,
            learn_limits: false,
            learned_ttl: None,
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: None,
        })
    }

    fn build(mut params: Params) -> Self {
        params.max_keys = params.max_keys.max(1);
        MemoryStore {
            inner: Arc::new(Inner {
                params,
                state: Mutex::new(State {
                    map: Map::default(),
                    next_id: 0,
                    next_free: None,
                }),
            }),
        }
    }

    /// A store with changed parameters; a store still shared by clones is
    /// not changed (the new one starts empty).
    fn rebuild(self, f: impl FnOnce(&mut Params)) -> Self {
        let mut params = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.params,
            Err(shared) => shared.params.clone(),
        };
        f(&mut params);
        Self::build(params)
    }

    /// Gives each key its own limits (a key not worth a special case
    /// returns the default). Called once when a key's state is created.
    pub fn key_limits(self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        self.rebuild(|p| p.key_limits = Some(Arc::new(f)))
    }

    /// Whether a provider's `limit` header may raise the configured limit
    /// (default `false`: headers only ever tighten). Raised or not, a
    /// learned limit is bounded and expires: see
    /// [`SlidingWindow::learn`](super::SlidingWindow::learn).
    pub fn learn_limits(self, yes: bool) -> Self {
        self.rebuild(|p| p.learn_limits = yes)
    }

    /// How long a limit learned from a provider's header holds after the
    /// provider last said it (default: the limit's window, at most 10
    /// minutes; see [`default_learned_ttl`](super::default_learned_ttl)).
    /// Then the configured limit is back in force.
    pub fn learned_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|p| p.learned_ttl = Some(ttl))
    }

    /// The soft bound on the keys held (default [`DEFAULT_MAX_KEYS`]; at
    /// least 1); the map may grow to [`HARD_KEYS_FACTOR`] times it while
    /// every key still counts something (see the type's docs).
    pub fn max_keys(self, n: usize) -> Self {
        self.rebuild(|p| p.max_keys = n)
    }

    /// Keys unused for this long may be dropped when the map is full even
    /// if their windows still count something (default: never).
    ///
    /// An idle timeout shorter than the longest window **forgets usage**:
    /// a key dropped while its window still counts starts again empty, so
    /// its next requests may exceed the limit over that window. Keep it at
    /// least the longest window, or leave it off.
    pub fn idle_timeout(self, d: Duration) -> Self {
        self.rebuild(|p| p.idle_timeout = Some(d))
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest instant a request costing `costs` would be admitted for
    /// `key`, without reserving (`None`: it never fits).
    pub fn peek(&self, key: &Key, costs: &Costs, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        match state.map.get_mut(key) {
            Some(slot) => {
                slot.window.prune(now);
                slot.window.earliest(costs, now).ok()
            }
            None => SlidingWindow::new(&self.limits_of(key), now)
                .earliest(costs, now)
                .ok(),
        }
    }

    /// The limit in force now for `key`, `dimension` and `window`: a
    /// learned one until it expires, else the configured one.
    pub fn limit_of(&self, key: &Key, dimension: Dimension, window: Duration) -> Option<u64> {
        let now = Instant::now();
        match self.lock().map.get(key) {
            Some(slot) => slot.window.limit_of(dimension, window, now),
            None => self
                .limits_of(key)
                .iter()
                .find(|l| l.dimension == dimension && l.window == window)
                .map(|l| l.limit),
        }
    }

    fn limits_of(&self, key: &Key) -> Limits {
        match &self.inner.params.key_limits {
            Some(f) => f(key),
            None => self.inner.params.limits.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a window half-updated in a way
        // that matters more than losing the limiter: keep going.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instant from which the key may be dropped.
    fn droppable_at(&self, slot: &Slot) -> Instant {
        let idle = slot.window.idle_at();
        match self
            .inner
            .params
            .idle_timeout
            .and_then(|d| slot.window.last_used().checked_add(d))
        {
            Some(unused) => idle.min(unused),
            None => idle,
        }
    }

    /// Runs `f` on the key's slot, made if need be; `Err` when the key is
    /// new and the map is at its hard bound.
    fn with_slot<R>(
        &self,
        key: &Key,
        now: Instant,
        f: impl FnOnce(&mut Slot, &mut u64) -> R,
    ) -> Result<R, Error> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(slot) = state.map.get_mut(key) {
            return Ok(f(slot, &mut state.next_id));
        }
        self.make_room(state, now)?;
        let slot = state.map.entry(key.clone()).or_insert_with(|| Slot {
            window: SlidingWindow::new(&self.limits_of(key), now),
            watchers: Vec::new(),
        });
        let r = f(slot, &mut state.next_id);
        let free = self.droppable_at(slot);
        if let Some(t) = &mut state.next_free {
            *t = (*t).min(free);
        }
        Ok(r)
    }

    /// Before a new key is added: drops the keys that may go when the map
    /// is full, and refuses past the hard bound.
    fn make_room(&self, state: &mut State, now: Instant) -> Result<(), Error> {
        let max = self.inner.params.max_keys;
        if state.map.len() < max {
            return Ok(());
        }
        if state.next_free.is_none_or(|t| t <= now) {
            let mut next: Option<Instant> = None;
            state.map.retain(|_, slot| {
                let free = self.droppable_at(slot);
                let keep = free > now;
                if keep {
                    next = Some(next.map_or(free, |n| n.min(free)));
                }
                keep
            });
            state.next_free = next;
        }
        let hard = max.saturating_mul(HARD_KEYS_FACTOR);
        if state.map.len() >= hard {
            let wait = state
                .next_free
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            return Err(Error::too_many_keys(hard, wait));
        }
        Ok(())
    }

    /// A key's slot changed so that it may be dropped earlier: keep the
    /// lower bound a lower bound.
    fn may_free_earlier(&self, state: &mut State, key: &Key) {
        let free = match state.map.get(key) {
            Some(slot) => self.droppable_at(slot),
            None => return,
        };
        if let Some(t) = &mut state.next_free {
            *t = (*t).min(free);
        }
    }

    fn decide(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Decision, Error> {
        let admission = self.with_slot(key, now, |slot, next_id| {
            let admission = slot.window.acquire_as(*next_id, costs, now, deadline);
            if matches!(admission, Decision::Admitted(Booking { .. })) {
                *next_id = next_id.wrapping_add(1);
            }
            admission
        })?;
        Ok(match admission {
            Decision::Admitted(Booking { id, at }) => Decision::Admitted(Reservation {
                key: key.clone(),
                id,
                at,
                costs: *costs,
            }),
            Decision::TooLate(at) => Decision::TooLate(at),
            Decision::Never { cost, capacity } => Decision::Never { cost, capacity },
        })
    }

    /// Wakes every watcher of a slot (after the lock is released).
    fn wake(mut guard: std::sync::MutexGuard<'_, State>, key: &Key) {
        let woken = match guard.map.get_mut(key) {
            Some(slot) => std::mem::take(&mut slot.watchers),
            None => return,
        };
        drop(guard);
        for (_, waker) in woken {
            waker.wake();
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.inner.params;
        f.debug_struct("MemoryStore")
            .field("limits", &p.limits)
            .field("key_limits", &p.key_limits.is_some())
            .field("learn_limits", &p.learn_limits)
            .field("learned_ttl", &p.learned_ttl)
            .field("max_keys", &p.max_keys)
            .field("idle_timeout", &p.idle_timeout)
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
        let mut guard = self.lock();
        let Some(slot) = guard.map.get_mut(&reservation.key) else {
            return;
        };
        slot.watchers.retain(|(id, _)| *id != reservation.id);
        let moved = slot.window.cancel(reservation.id, now);
        self.may_free_earlier(&mut guard, &reservation.key);
        if moved {
            // Wake every waiter of the key: each asks again when it is due.
            Self::wake(guard, &reservation.key);
        }
    }

    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        let mut guard = self.lock();
        let slot = guard.map.get_mut(&reservation.key)?;
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
        if let Some(slot) = self.lock().map.get_mut(&reservation.key) {
            slot.watchers.retain(|(id, _)| *id != reservation.id);
        }
    }

    fn correct(&self, reservation: &Reservation, actual: &Costs, _now: Instant) {
        if let Some(slot) = self.lock().map.get_mut(&reservation.key) {
            slot.window.correct(reservation.id, actual);
        }
    }

    fn gate(&self, key: &Key, until: Instant) {
        let now = Instant::now();
        // A new key past the hard bound holds no reservation to move, and
        // its requests are refused anyway: the gate is dropped.
        let moved = self
            .with_slot(key, now, |slot, _| slot.window.gate(until, now))
            .unwrap_or(false);
        if moved {
            Self::wake(self.lock(), key);
        }
    }

    fn gate_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        self.lock().map.get(key)?.window.gate_until(now)
    }

    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        now: Instant,
    ) -> Option<u64> {
        let p = &self.inner.params;
        self.with_slot(key, now, |slot, _| {
            slot.window
                .learn(dimension, window, state, p.learn_limits, p.learned_ttl, now)
        })
        .ok()
        .flatten()
    }
}
