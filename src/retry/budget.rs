//! A retry budget shared by clones: retries may be at most a ratio of the
//! requests seen over a sliding window, plus a small reserve per second.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;
/// Deposit counters, one cache line each: a thread deposits into its own
/// (see [`stripe`]), so that two threads sending requests through one
/// budget do not write one cache line per request.
const STRIPES: usize = 8;
/// A mark slot never written.
const EMPTY: u64 = u64::MAX;
/// How many deposits pass between two clock reads.
const MARK_EVERY: u64 = 16;

/// Limits retries to a share of the traffic, as Finagle and Envoy do, so that
/// a provider outage does not multiply the load on it: over the last
/// `window`, retries may be at most `ratio` times the requests, plus
/// `min_per_sec` per second of the window (so a quiet client can still
/// retry).
///
/// Clones share the budget: give one to every clone of a service, or to
/// several services that call the same provider.
///
/// Defaults (see [`RetryBudget::default`]): 20 % of requests plus 1 retry
/// per second over a 10 s window. Finagle uses 20 % plus 10/s, Envoy 20 %
/// with a minimum of 3 concurrent retries; an LLM client sends far fewer
/// requests per second than an RPC mesh, so the reserve is smaller.
///
/// # Why not `tower::retry::budget::TpsBudget`
///
/// It is the same idea, but it takes a `std::sync::Mutex` on every deposit
/// (every request), panics on out-of-range arguments, and checks then
/// withdraws in two steps, so concurrent retries can overdraw it. This one
/// is lock-free, reads the clock on one request in 16 only (one atomic add
/// per request otherwise, on a counter of the thread's own among 8, so
/// that threads do not contend; a clock read under tokio's `test-util`
/// takes a mutex), clamps its arguments, and withdraws with a
/// compare-and-swap against the current slot.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::retry::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 0.5, 0);
/// for _ in 0..4 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw()); // 50 % of 4 requests
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    slot: Duration,
    window: Duration,
    /// Retries allowed per 1000 requests.
    per_mille: u64,
    /// Retries always allowed in a window.
    reserve: u64,
    /// Requests ever deposited, in stripes (their sum is the total).
    deposits: [Stripe; STRIPES],
    /// Per slot: epoch in the high 32 bits, the low 32 bits of `total` when
    /// the slot's epoch was first seen in the low 32 bits.
    marks: [AtomicU64; SLOTS],
    /// Per slot: epoch in the high 32 bits, retries in the low 32 bits.
    withdrawals: [AtomicU64; SLOTS],
}

impl Default for RetryBudget {
    /// 20 % of requests plus 1 retry per second, over 10 s.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 0.2, 1)
    }
}

impl RetryBudget {
    /// A budget over `window` (clamped to 1 s ..= 1 h) allowing `ratio`
    /// retries per request (clamped to 0 ..= 1000; NaN is 0) plus
    /// `min_per_sec` retries per second of the window.
    pub fn new(window: Duration, ratio: f64, min_per_sec: u32) -> Self {
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1000.0)
        };
        let reserve = u64::from(min_per_sec).saturating_mul(window.as_secs());
        RetryBudget {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                slot: window / SLOTS as u32,
                window,
                per_mille: (ratio * 1000.0).round() as u64,
                reserve,
                deposits: Default::default(),
                marks: std::array::from_fn(|i| AtomicU64::new(if i == 0 { 0 } else { EMPTY })),
                withdrawals: Default::default(),
            }),
        }
    }

    /// Records one request (a first attempt). Called once per request by the
    /// retry layer.
    ///
    /// It is one atomic add, on a counter of the calling thread's own;
    /// every 16th deposit of a counter also reads the clock and marks where
    /// the current slot of the window starts, so the requests in the window
    /// are counted to within 16 per thread without a clock read per
    /// request. Unmarked history counts as no requests (the safe side:
    /// fewer retries, the reserve still applies).
    #[inline]
    pub fn deposit(&self) {
        let inner = &*self.inner;
        let n = inner.deposits[stripe()]
            .0
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if n % MARK_EVERY == 0 {
            inner.mark_now();
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let inner = &*self.inner;
        let epoch = inner.epoch(Instant::now());
        let allowed = inner
            .reserve
            .saturating_add(inner.requests(epoch).saturating_mul(inner.per_mille) / 1000);
        let slot = &inner.withdrawals[epoch as usize % SLOTS];
        loop {
            let current = slot.load(Ordering::Acquire);
            let others = sum_except(&inner.withdrawals, epoch, epoch as usize % SLOTS);
            let (e, n) = unpack(current);
            let mine = if e == epoch { n } else { 0 };
            if others.saturating_add(mine) >= allowed {
                return false;
            }
            let next = pack(epoch, mine.saturating_add(1));
            if slot
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Retries still allowed in the current window.
    pub fn remaining(&self) -> u64 {
        let inner = &*self.inner;
        let epoch = inner.epoch(Instant::now());
        let allowed = inner
            .reserve
            .saturating_add(inner.requests(epoch).saturating_mul(inner.per_mille) / 1000);
        allowed.saturating_sub(sum(&inner.withdrawals, epoch))
    }
}

/// One deposit counter on a cache line of its own (128 bytes: adjacent
/// lines are fetched in pairs on x86).
#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// The deposit counter of the calling thread: threads take stripes in
/// turn, on their first deposit.
#[inline]
fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
                s.set(i);
            }
            i
        })
        .unwrap_or(0)
}

impl Inner {
    /// Marks the current slot at the current total (every 16th deposit).
    #[cold]
    fn mark_now(&self) {
        let epoch = self.epoch(Instant::now());
        self.mark(epoch, self.total());
    }

    /// Requests ever deposited (wrapping).
    fn total(&self) -> u64 {
        self.deposits
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Acquire)))
    }

    /// Marks the start of `epoch`'s slot at deposit count `total`, if the
    /// slot does not hold a mark of that epoch yet.
    fn mark(&self, epoch: u32, total: u64) {
        let slot = &self.marks[epoch as usize % SLOTS];
        let current = slot.load(Ordering::Acquire);
        let (e, _) = unpack(current);
        if e != epoch || current == EMPTY {
            let _ = slot.compare_exchange(
                current,
                pack(epoch, total & u64::from(u32::MAX)),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Requests deposited since the oldest mark still in the window.
    fn requests(&self, epoch: u32) -> u64 {
        let total = self.total();
        self.mark(epoch, total);
        let oldest = self
            .marks
            .iter()
            .map(|m| m.load(Ordering::Acquire))
            .filter(|m| *m != EMPTY)
            .map(unpack)
            .filter(|(e, _)| live(*e, epoch))
            .max_by_key(|(e, _)| epoch.wrapping_sub(*e));
        match oldest {
            Some((_, mark)) => u64::from((total as u32).wrapping_sub(mark as u32)),
            None => 0,
        }
    }

    fn epoch(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.origin);
        let n = elapsed.as_nanos() / self.slot.as_nanos().max(1);
        // Wraps after 2^32 slots (at least 13 years); sums compare with
        // wrapping arithmetic, so a wrap costs at most one window of history.
        n as u32
    }
}

fn pack(epoch: u32, count: u64) -> u64 {
    (u64::from(epoch) << 32) | count.min(u64::from(u32::MAX))
}

fn unpack(v: u64) -> (u32, u64) {
    ((v >> 32) as u32, v & u64::from(u32::MAX))
}

fn live(slot_epoch: u32, now: u32) -> bool {
    (now.wrapping_sub(slot_epoch) as usize) < SLOTS
}

fn sum(slots: &[AtomicU64; SLOTS], epoch: u32) -> u64 {
    sum_except(slots, epoch, usize::MAX)
}

fn sum_except(slots: &[AtomicU64; SLOTS], epoch: u32, skip: usize) -> u64 {
    slots
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, s)| unpack(s.load(Ordering::Acquire)))
        .filter(|(e, _)| live(*e, epoch))
        .fold(0u64, |acc, (_, n)| acc.saturating_add(n))
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("window", &self.inner.window)
            .field("ratio", &(self.inner.per_mille as f64 / 1000.0))
            .field("reserve", &self.inner.reserve)
            .field("remaining", &self.remaining())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_reserve_and_expiry() {
        let b = RetryBudget::new(Duration::from_secs(10), 0.2, 0);
        assert!(!b.withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        let clone = b.clone();
        assert!(clone.withdraw() && b.withdraw());
        assert!(!b.withdraw());
        assert_eq!(b.remaining(), 0);
        tokio::time::advance(Duration::from_secs(11)).await;
        // Old deposits and withdrawals have left the window; requests made
        // before any mark of the window count as none (the safe side).
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 0);
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(!b.withdraw());
        // A busy client marks the window itself, every 16 requests.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..100 {
            b.deposit();
        }
        let left = b.remaining();
        assert!((16..=20).contains(&left), "{left}");

        let reserve = RetryBudget::new(Duration::from_secs(2), 0.0, 3);
        assert_eq!(reserve.remaining(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn two_threads_deposit_on_two_cache_lines() {
        let b = RetryBudget::new(Duration::from_secs(10), 0.5, 0);
        let other = b.clone();
        std::thread::spawn(move || {
            for _ in 0..10 {
                other.deposit();
            }
        })
        .join()
        .unwrap();
        for _ in 0..10 {
            b.deposit();
        }
        let used: Vec<u64> = b
            .inner
            .deposits
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .filter(|n| *n > 0)
            .collect();
        assert_eq!(used, [10, 10], "one counter per thread");
        assert_eq!(b.inner.total(), 20);
        assert!(std::mem::align_of::<Stripe>() >= 128);
        // Both threads' requests count toward the ratio.
        assert_eq!(b.remaining(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_arguments_are_clamped() {
        let b = RetryBudget::new(Duration::MAX, f64::NAN, u32::MAX);
        assert!(b.withdraw());
        let b = RetryBudget::new(Duration::ZERO, f64::INFINITY, 0);
        b.deposit();
        assert!(b.withdraw());
    }
}
