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

/// A granted reservation: what was charged, to which key, when. Give it
/// back to the store to cancel or correct the charge.
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
    /// over `window`, by the rule of [`SlidingWindow::learn`](super::SlidingWindow::learn) (a limit of 0 is
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
