//! Where the windows live: the [`Store`] trait, and what it answers
//! ([`Decision`], [`Reservation`]). The in-memory store is in `memory.rs`.

use std::future::Future;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{Costs, Dimension};
use crate::classify::ReportedLimit;
use crate::key::Key;
use crate::Error;

/// A granted reservation: what was charged, to which key, when, and what
/// the key's limits held then. Give it back to the store to cancel or
/// correct the charge, and to [`Store::learn`] with the headers of its
/// response.
#[derive(Clone, Debug)]
pub struct Reservation {
    /// The key charged.
    pub key: Key,
    /// The store's id of the reservation within the key. The
    /// [`MemoryStore`](super::MemoryStore) numbers reservations store-wide: an id never repeats,
    /// so a late cancel or correction can never touch another request's
    /// reservation, even after the key's state was dropped and made again.
    pub id: u64,
    /// When the request may start (the caller waits until then).
    pub at: Instant,
    /// What was charged.
    pub costs: Costs,
    /// What each limit of the key held as of `at`, this request included:
    /// what the provider's `remaining` headers are compared with. A store
    /// that keeps no such figure gives [`UsedAtAdmission::UNKNOWN`].
    pub used: UsedAtAdmission,
}

/// What each limit of a key held as of a request's admission: the
/// request's own cost and every reservation booked ahead of it that was
/// still in the window, in the order of the key's
/// [`Limits`](super::Limits).
///
/// The provider computes its `remaining` headers when the request arrives,
/// not when the response comes back: by then more requests were admitted
/// (which the provider had not counted) and older ones left the window.
/// So this, not the window's usage at the response, is what `remaining` is
/// compared with (see [`SlidingWindow::learn`](super::SlidingWindow::learn)).
///
/// Inline, with no allocation: the first [`CAPACITY`](Self::CAPACITY)
/// (4) limits of a key, enough for requests and tokens per minute and per
/// day, or Anthropic's requests, input and output tokens. For a limit past
/// them [`get`](Self::get) answers `None` (so does a usage of `u64::MAX`,
/// a saturated sum): the in-memory store then reads the snapshot its own
/// log keeps with the request's entry, and a store with neither does not
/// compare that limit's `remaining`.
///
/// ```
/// use tower_llm_resilience::rate_limit::UsedAtAdmission;
///
/// let used = UsedAtAdmission::from_slice(&[3, 12_000]);
/// assert_eq!((used.get(0), used.get(1), used.get(2)), (Some(3), Some(12_000), None));
/// assert_eq!(UsedAtAdmission::UNKNOWN.get(0), None);
/// // Past the capacity, limits have no snapshot.
/// assert_eq!(UsedAtAdmission::from_slice(&[1, 2, 3, 4, 5]).get(4), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UsedAtAdmission([u64; UsedAtAdmission::CAPACITY]);

/// A limit with no snapshot.
const NONE: u64 = u64::MAX;

impl UsedAtAdmission {
    /// How many limits a snapshot holds.
    pub const CAPACITY: usize = 4;

    /// No snapshot: no limit's `remaining` is compared as of the
    /// admission.
    pub const UNKNOWN: UsedAtAdmission = UsedAtAdmission([NONE; UsedAtAdmission::CAPACITY]);

    /// The usage of each limit, in the key's order; limits past
    /// [`CAPACITY`](Self::CAPACITY) are left out.
    pub fn from_slice(used: &[u64]) -> Self {
        let mut s = UsedAtAdmission::UNKNOWN;
        for (slot, &u) in s.0.iter_mut().zip(used) {
            *slot = u;
        }
        s
    }

    /// Sets the usage of the key's `index`-th limit (nothing past the
    /// capacity).
    #[inline]
    pub(crate) fn set(&mut self, index: usize, used: u64) {
        if let Some(slot) = self.0.get_mut(index) {
            *slot = used;
        }
    }

    /// What the key's `index`-th limit held as of the admission, if the
    /// snapshot holds it.
    pub fn get(&self, index: usize) -> Option<u64> {
        self.0.get(index).copied().filter(|&u| u != NONE)
    }
}

impl Default for UsedAtAdmission {
    /// [`UNKNOWN`](Self::UNKNOWN).
    fn default() -> Self {
        UsedAtAdmission::UNKNOWN
    }
}

impl std::fmt::Debug for UsedAtAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|&u| (u != NONE).then_some(u)))
            .finish()
    }
}

/// The answer to a request for admission: a store's to [`Store::acquire`]
/// (admitted with a [`Reservation`]), or a [`SlidingWindow`]'s to
/// [`acquire`](super::SlidingWindow::acquire) (admitted with a [`Booking`]).
///
/// [`SlidingWindow`]: super::SlidingWindow
/// [`Booking`]: super::Booking
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<A = Reservation> {
    /// Reserved; the request starts at the admission's `at` (now or later).
    Admitted(A),
    /// It would start only at this instant, after the caller's deadline;
    /// nothing was reserved.
    TooLate(Instant),
    /// The cost exceeds a dimension's whole *configured* capacity: it
    /// never fits. (A cost above a learned, lower limit only waits until
    /// that limit expires.)
    Never {
        /// The cost in that dimension.
        cost: u64,
        /// The dimension's capacity.
        capacity: u64,
    },
}

/// The limiter's state behind one small interface, so that it can live in
/// this process ([`MemoryStore`](super::MemoryStore), the default) or be shared by many
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
    /// over `window`, by the rule of
    /// [`SlidingWindow::learn`](super::SlidingWindow::learn) (a limit of 0
    /// is ignored; a learned limit has a floor, a bound and an expiry).
    /// Returns the limit in force when the state changed.
    ///
    /// `reservation` is the reservation of the request whose response
    /// carried the headers: the provider computed `remaining` at that
    /// request's admission, so it is compared with the key's usage as of
    /// then ([`Reservation::used`]). `None` (a caller that has no
    /// reservation) compares it with the usage as of `now`.
    fn learn(
        &self,
        key: &Key,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        reservation: Option<&Reservation>,
        now: Instant,
    ) -> Option<u64>;
}
