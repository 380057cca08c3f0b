//! [`MemoryStore`]: every key's [`SlidingWindow`] in this process, one lock per
//! key.
//!
//! # Locks on the hot path
//!
//! A decision for a key that exists takes **that key's** mutex and no
//! store-wide lock: two keys never wait for each other, and two threads on
//! one key share one cache line (the key's state) instead of two (a store
//! mutex and the state). The store's first key is found without any lock
//! at all (a set-once pointer), which is the whole lookup of a stack with a
//! single key; other keys are found in one of [`SHARDS`] maps behind a
//! read-write lock each. Only a new key takes a store-wide lock (to count
//! keys and make room).
//!
//! Reservation ids come from a per-key counter that takes a block of ids
//! from a store-wide atomic once per [`ID_BLOCK`] reservations, so that ids
//! never repeat store-wide without a shared counter on every request.

use std::collections::HashMap;
use std::fmt;
use std::future::{ready, Ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::task::Waker;
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::time::Instant;

use super::limits::{default_arrival_margin, Costs, Dimension, Limits};
use super::store::{Decision, Reservation, Store};
use super::window::{Booking, SlidingWindow};
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::Error;

/// How many maps the keys are spread over (a power of two): keys on two
/// shards never touch the same lock.
const SHARDS: usize = 16;

/// How many reservation ids a key takes from the store-wide counter at a
/// time.
const ID_BLOCK: u64 = 1 << 16;

/// Keys hash with foldhash: several times faster than SipHash on short
/// keys, and randomly seeded per process.
type Map = HashMap<Key, Arc<Slot>, RandomState>;

/// One key: its name (to match the pinned first key without a map), and
/// its state behind its own lock.
struct Slot {
    key: Key,
    state: Mutex<SlotState>,
}

/// One key's window, and the wakers of its requests that wait (so that a
/// cancellation ahead of them, or a gate, can wake them).
struct SlotState {
    window: SlidingWindow,
    watchers: Vec<(u64, Waker)>,
    /// The next reservation id, and the end of the block it is taken from.
    next_id: u64,
    id_end: u64,
    /// The slot left the map (its key was dropped): whoever still holds it
    /// (the pinned first key) must go through the map again.
    evicted: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic elsewhere cannot leave a window half-updated in a way
        // that matters more than losing the limiter: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type KeyLimits = dyn Fn(&Key) -> Limits + Send + Sync;

/// How many times `max_keys` the map may hold when every key still counts
/// something (the hard bound; see [`MemoryStore::max_keys`]).
pub const HARD_KEYS_FACTOR: usize = 4;

/// Default bound on the number of keys of a [`MemoryStore`].
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The default store: every key's [`SlidingWindow`] in this process, shared by
/// all clones of the store (and so of the limiter).
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
/// # One store, whatever the handle
///
/// Clones share one state, and the setters (`key_limits`, `learn_limits`,
/// `learned_ttl`, `max_keys`, `idle_timeout`) change that shared state:
/// calling one on a clone changes every clone, and keeps every key held.
/// Limits (`key_limits`) apply to the keys made after the call.
///
/// # Cost
///
/// A decision for a held key locks that key alone (see the module notes
/// in the source); reservation ids are numbered store-wide and never
/// repeat. Memory: a key whose windows emptied holds its map entry, its
/// window and at most a few log entries per limit (under 1 KiB with two
/// limits); a burst's log is given back when the key is next used after
/// its window emptied.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    /// The store's first key, found without a lock (a single-key stack's
    /// whole lookup). It stays in the map too, and may be dropped like any
    /// key (then it is marked `evicted` and found through the map).
    first: OnceLock<Arc<Slot>>,
    shards: [RwLock<Map>; SHARDS],
    hasher: RandomState,
    /// Serialises new keys (counting, making room); never taken for a key
    /// that exists.
    keys: Mutex<()>,
    len: AtomicUsize,
    /// No held key can be dropped before this instant (nanoseconds after
    /// `epoch`; a lower bound, so that a full map is not scanned on every
    /// new key); 0: unknown, scan.
    next_free: AtomicU64,
    epoch: Instant,
    /// The next block of reservation ids.
    next_block: AtomicU64,
}

/// The store's parameters, shared by every clone and changed in place by
/// the setters (none of them is read on the path of a held key's
/// admission).
struct Params {
    limits: RwLock<(Limits, Option<Arc<KeyLimits>>)>,
    learn_limits: AtomicBool,
    /// Nanoseconds; `u64::MAX`: the default.
    learned_ttl: AtomicU64,
    max_keys: AtomicUsize,
    /// Nanoseconds; `u64::MAX`: never.
    idle_timeout: AtomicU64,
    /// Nanoseconds; `u64::MAX`: the default.
    arrival_margin: AtomicU64,
}

const UNSET: u64 = u64::MAX;

fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(UNSET - 1)
        .min(UNSET - 1)
}

impl MemoryStore {
    /// A store where every key has `limits`.
    pub fn new(limits: Limits) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                params: Params {
                    limits: RwLock::new((limits, None)),
                    learn_limits: AtomicBool::new(false),
                    learned_ttl: AtomicU64::new(UNSET),
                    max_keys: AtomicUsize::new(DEFAULT_MAX_KEYS),
                    idle_timeout: AtomicU64::new(UNSET),
                    arrival_margin: AtomicU64::new(UNSET),
                },
                first: OnceLock::new(),
                shards: std::array::from_fn(|_| RwLock::new(Map::default())),
                hasher: RandomState::default(),
                keys: Mutex::new(()),
                len: AtomicUsize::new(0),
                next_free: AtomicU64::new(0),
                epoch: Instant::now(),
                next_block: AtomicU64::new(0),
            }),
        }
    }

    /// Whether this handle is the only one (no clone of it exists), so
    /// that changing its settings changes no one else's store.
    pub(crate) fn is_unshared(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// A new, empty store with this store's settings (what a
    /// [`RateLimitLayer`](super::RateLimitLayer) makes at each
    /// [`layer`](tower::Layer::layer) call from its own settings).
    pub(crate) fn empty_like(&self) -> MemoryStore {
        let p = &self.inner.params;
        let (limits, key_limits) = read(&p.limits).clone();
        let store = MemoryStore::new(limits);
        {
            let q = &store.inner.params;
            write(&q.limits).1 = key_limits;
            q.learn_limits.store(p.learn_limits.load(Relaxed), Relaxed);
            q.learned_ttl.store(p.learned_ttl.load(Relaxed), Relaxed);
            q.max_keys.store(p.max_keys.load(Relaxed), Relaxed);
            q.idle_timeout.store(p.idle_timeout.load(Relaxed), Relaxed);
            q.arrival_margin
                .store(p.arrival_margin.load(Relaxed), Relaxed);
        }
        store
    }

    /// Gives each key its own limits (a key not worth a special case
    /// returns the default). Called once when a key's state is created;
    /// applies to the keys made after this call, in every clone.
    pub fn key_limits(self, f: impl Fn(&Key) -> Limits + Send + Sync + 'static) -> Self {
        write(&self.inner.params.limits).1 = Some(Arc::new(f));
        self
    }

    /// Whether a provider's `limit` header may raise the configured limit
    /// (default `false`: headers only ever tighten). Raised or not, a
    /// learned limit is bounded and expires: see
    /// [`SlidingWindow::learn`](super::SlidingWindow::learn). Changes every clone.
    pub fn learn_limits(self, yes: bool) -> Self {
        self.inner.params.learn_limits.store(yes, Relaxed);
        self
    }

    /// How long a limit learned from a provider's header holds after the
    /// provider last said it (default: the limit's window, at most 10
    /// minutes; see [`default_learned_ttl`](super::default_learned_ttl)).
    /// Then the configured limit is back in force. Changes every clone.
    pub fn learned_ttl(self, ttl: Duration) -> Self {
        self.inner.params.learned_ttl.store(to_nanos(ttl), Relaxed);
        self
    }

    /// The soft bound on the keys held (default [`DEFAULT_MAX_KEYS`]; at
    /// least 1); the map may grow to [`HARD_KEYS_FACTOR`] times it while
    /// every key still counts something (see the type's docs). Changes
    /// every clone, and keeps the keys held (a lower bound drops keys only
    /// as new ones come, by the rule above).
    pub fn max_keys(self, n: usize) -> Self {
        self.inner.params.max_keys.store(n.max(1), Relaxed);
        self
    }

    /// How much longer than its window each admission counts (default
    /// [`default_arrival_margin`]: 250 ms, at most a twentieth of the
    /// window). The provider counts a request when it arrives, the limiter
    /// when it sends it: a request slower on its way than one sent a
    /// window after it would otherwise meet it in the provider's window
    /// (see [`SlidingWindow::arrival_margin`]). It costs `margin / window`
    /// of the throughput. Applies to the keys made after this call, in
    /// every clone.
    pub fn arrival_margin(self, margin: Duration) -> Self {
        self.inner
            .params
            .arrival_margin
            .store(to_nanos(margin), Relaxed);
        self
    }

    /// Keys unused for this long may be dropped when the map is full even
    /// if their windows still count something (default: never). Changes
    /// every clone.
    ///
    /// An idle timeout shorter than the longest window **forgets usage**:
    /// a key dropped while its window still counts starts again empty, so
    /// its next requests may exceed the limit over that window. Keep it at
    /// least the longest window, or leave it off.
    pub fn idle_timeout(self, d: Duration) -> Self {
        self.inner.params.idle_timeout.store(to_nanos(d), Relaxed);
        // Keys may be droppable earlier: scan at the next full map.
        self.inner.next_free.store(0, Relaxed);
        self
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.len.load(Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest instant a request costing `costs` would be admitted for
    /// `key`, without reserving (`None`: it never fits).
    pub fn peek(&self, key: &Key, costs: &Costs, now: Instant) -> Option<Instant> {
        match self.existing(key, |s| {
            s.window.prune(now);
            s.window.earliest(costs, now).ok()
        }) {
            Some(at) => at,
            None => self.new_window(key, now).earliest(costs, now).ok(),
        }
    }

    /// The limit in force now for `key`, `dimension` and `window`: a
    /// learned one until it expires, else the configured one.
    pub fn limit_of(&self, key: &Key, dimension: Dimension, window: Duration) -> Option<u64> {
        let now = Instant::now();
        match self.existing(key, |s| s.window.limit_of(dimension, window, now)) {
            Some(limit) => limit,
            None => self
                .limits_of(key)
                .iter()
                .find(|l| l.dimension == dimension && l.window == window)
                .map(|l| l.limit),
        }
    }

    /// A fresh window for `key`, with the store's margin.
    fn new_window(&self, key: &Key, now: Instant) -> SlidingWindow {
        let window = SlidingWindow::new(&self.limits_of(key), now);
        match self.inner.params.arrival_margin.load(Relaxed) {
            UNSET => window.arrival_margins(default_arrival_margin),
            n => window.arrival_margin(Duration::from_nanos(n)),
        }
    }

    fn limits_of(&self, key: &Key) -> Limits {
        let limits = read(&self.inner.params.limits);
        match &limits.1 {
            Some(f) => f(key),
            None => limits.0.clone(),
        }
    }

    fn shard(&self, key: &Key) -> &RwLock<Map> {
        let hash = self.inner.hasher.hash_one(key);
        // The high bits: the map itself uses the low ones.
        &self.inner.shards[(hash >> 60) as usize % SHARDS]
    }

    /// Runs `f` on `key`'s state if the key is held, taking that key's
    /// lock (and a read lock of its shard unless it is the first key).
    fn existing<R>(&self, key: &Key, f: impl FnOnce(&mut SlotState) -> R) -> Option<R> {
        let mut f = Some(f);
        if let Some(slot) = self.inner.first.get() {
            if slot.key == *key {
                let mut state = slot.lock();
                if !state.evicted {
                    return f.take().map(|f| f(&mut state));
                }
            }
        }
        let map = read(self.shard(key));
        let slot = map.get(key)?;
        // Held in the map under its read lock: not evicted (eviction takes
        // the write lock).
        let mut state = slot.lock();
        f.take().map(|f| f(&mut state))
    }

    /// The instant from which the key may be dropped.
    fn droppable_at(&self, state: &SlotState) -> Instant {
        let idle = state.window.idle_at();
        let timeout = self.inner.params.idle_timeout.load(Relaxed);
        if timeout == UNSET {
            return idle;
        }
        match state
            .window
            .last_used()
            .checked_add(Duration::from_nanos(timeout))
        {
            Some(unused) => idle.min(unused),
            None => idle,
        }
    }

    /// An instant as nanoseconds after the store's epoch, at least 1 (0
    /// means "unknown"); an instant before the epoch counts as the epoch
    /// (so a lower bound stays one).
    fn nanos(&self, t: Instant) -> u64 {
        to_nanos(t.saturating_duration_since(self.inner.epoch)).max(1)
    }

    /// Lowers the bound on the first instant a held key may be dropped.
    fn may_free_at(&self, t: Instant) {
        self.inner.next_free.fetch_min(self.nanos(t), Relaxed);
    }

    /// Runs `f` on the key's state, made if need be; `Err` when the key is
    /// new and the map is at its hard bound.
    fn with_slot<R>(
        &self,
        key: &Key,
        now: Instant,
        f: impl FnOnce(&mut SlotState) -> R,
    ) -> Result<R, Error> {
        let mut f = Some(f);
        if let Some(r) = self.existing(key, |s| f.take().map(|f| f(s))) {
            return Ok(r.expect("called once"));
        }
        let f = f.take().expect("not called");
        let _keys = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Made by another thread meanwhile?
        let mut f = Some(f);
        if let Some(r) = self.existing(key, |s| f.take().map(|f| f(s))) {
            return Ok(r.expect("called once"));
        }
        let f = f.take().expect("not called");
        self.make_room(now)?;
        let slot = Arc::new(Slot {
            key: key.clone(),
            state: Mutex::new(SlotState {
                window: self.new_window(key, now),
                watchers: Vec::new(),
                next_id: 0,
                id_end: 0,
                evicted: false,
            }),
        });
        let (r, free) = {
            let mut state = slot.lock();
            let r = f(&mut state);
            (r, self.droppable_at(&state))
        };
        write(self.shard(key)).insert(key.clone(), slot.clone());
        self.inner.len.fetch_add(1, Relaxed);
        let _ = self.inner.first.set(slot);
        self.may_free_at(free);
        Ok(r)
    }

    /// Before a new key is added (under the `keys` lock): drops the keys
    /// that may go when the map is full, and refuses past the hard bound.
    fn make_room(&self, now: Instant) -> Result<(), Error> {
        let inner = &*self.inner;
        let max = inner.params.max_keys.load(Relaxed);
        if inner.len.load(Relaxed) < max {
            return Ok(());
        }
        let seen = inner.next_free.load(Relaxed);
        if seen <= self.nanos(now) {
            let mut next: Option<Instant> = None;
            for shard in &inner.shards {
                let mut map = write(shard);
                let before = map.len();
                map.retain(|_, slot| {
                    let mut state = slot.lock();
                    let free = self.droppable_at(&state);
                    let keep = free > now;
                    if keep {
                        next = Some(next.map_or(free, |n| n.min(free)));
                    } else {
                        // Only the pinned first key outlives this: give
                        // its buffers back.
                        state.evicted = true;
                        state.window = SlidingWindow::new(&Limits::new(), now);
                        state.watchers = Vec::new();
                    }
                    keep
                });
                inner.len.fetch_sub(before - map.len(), Relaxed);
            }
            let next = next.map_or(0, |t| self.nanos(t));
            // A cancel may have lowered the bound during the scan: keep
            // the lower one.
            if inner
                .next_free
                .compare_exchange(seen, next, Relaxed, Relaxed)
                .is_err()
            {
                inner.next_free.fetch_min(next, Relaxed);
            }
        }
        let hard = max.saturating_mul(HARD_KEYS_FACTOR);
        if inner.len.load(Relaxed) >= hard {
            let free = inner.next_free.load(Relaxed);
            let wait = match free {
                0 => Duration::ZERO,
                n => Duration::from_nanos(n)
                    .saturating_sub(now.saturating_duration_since(inner.epoch)),
            };
            return Err(Error::too_many_keys(hard, wait));
        }
        Ok(())
    }

    fn decide(
        &self,
        key: &Key,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Decision, Error> {
        let next_block = &self.inner.next_block;
        let admission = self.with_slot(key, now, |s| {
            if s.next_id == s.id_end {
                let base = next_block.fetch_add(ID_BLOCK, Relaxed);
                s.next_id = base;
                s.id_end = base.wrapping_add(ID_BLOCK);
            }
            let admission = s.window.acquire_as(s.next_id, costs, now, deadline);
            if matches!(admission, Decision::Admitted(Booking { .. })) {
                s.next_id = s.next_id.wrapping_add(1);
            }
            admission
        })?;
        Ok(match admission {
            Decision::Admitted(Booking { id, at, used }) => Decision::Admitted(Reservation {
                key: key.clone(),
                id,
                at,
                costs: *costs,
                used,
            }),
            Decision::TooLate(at) => Decision::TooLate(at),
            Decision::Never { cost, capacity } => Decision::Never { cost, capacity },
        })
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Wakes the watchers taken from a slot (after its lock is released).
fn wake(woken: Vec<(u64, Waker)>) {
    for (_, waker) in woken {
        waker.wake();
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.inner.params;
        let limits = read(&p.limits);
        let nanos = |n: u64| (n != UNSET).then(|| Duration::from_nanos(n));
        f.debug_struct("MemoryStore")
            .field("limits", &limits.0)
            .field("key_limits", &limits.1.is_some())
            .field("learn_limits", &p.learn_limits.load(Relaxed))
            .field("learned_ttl", &nanos(p.learned_ttl.load(Relaxed)))
            .field("max_keys", &p.max_keys.load(Relaxed))
            .field("idle_timeout", &nanos(p.idle_timeout.load(Relaxed)))
            .field("arrival_margin", &nanos(p.arrival_margin.load(Relaxed)))
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
        let done = self.existing(&reservation.key, |s| {
            s.watchers.retain(|(id, _)| *id != reservation.id);
            let moved = s.window.cancel(reservation.id, now);
            let woken = if moved {
                // Wake every waiter of the key: each asks again when due.
                std::mem::take(&mut s.watchers)
            } else {
                Vec::new()
            };
            (woken, self.droppable_at(s))
        });
        if let Some((woken, free)) = done {
            self.may_free_at(free);
            wake(woken);
        }
    }

    fn watch(&self, reservation: &Reservation, waker: &Waker) -> Option<Instant> {
        self.existing(&reservation.key, |s| {
            let at = s.window.booked_at(reservation.id)?;
            match s.watchers.iter_mut().find(|(id, _)| *id == reservation.id) {
                Some((_, w)) => w.clone_from(waker),
                None => s.watchers.push((reservation.id, waker.clone())),
            }
            Some(at)
        })
        .flatten()
    }

    fn unwatch(&self, reservation: &Reservation) {
        self.existing(&reservation.key, |s| {
            s.watchers.retain(|(id, _)| *id != reservation.id);
        });
    }

    fn correct(&self, reservation: &Reservation, actual: &Costs, now: Instant) {
        let woken = self
            .existing(&reservation.key, |s| {
                if s.window
                    .correct_and_move_waiters(reservation.id, actual, now)
                {
                    std::mem::take(&mut s.watchers)
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default();
        wake(woken);
    }

    fn gate(&self, key: &Key, until: Instant) {
        let now = Instant::now();
        // A new key past the hard bound holds no reservation to move, and
        // its requests are refused anyway: the gate is dropped.
        let woken = self
            .with_slot(key, now, |s| {
                if s.window.gate(until, now) {
                    std::mem::take(&mut s.watchers)
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default();
        wake(woken);
    }

    fn gate_until(&self, key: &Key, now: Instant) -> Option<Instant> {
        self.existing(key, |s| s.window.gate_until(now)).flatten()
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
        let p = &self.inner.params;
        let learn_limits = p.learn_limits.load(Relaxed);
        let ttl = p.learned_ttl.load(Relaxed);
        let ttl = (ttl != UNSET).then(|| Duration::from_nanos(ttl));
        // A reservation of another key says nothing of this one's window.
        let booking = reservation.filter(|r| r.key == *key).map(|r| Booking {
            id: r.id,
            at: r.at,
            used: r.used,
        });
        self.with_slot(key, now, |s| {
            s.window.learn(
                dimension,
                window,
                state,
                booking.as_ref(),
                learn_limits,
                ttl,
                now,
            )
        })
        .ok()
        .flatten()
    }
}
