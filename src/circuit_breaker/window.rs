//! The sliding windows of outcomes: a ring of the last `n` calls, or
//! per-bucket counters over a duration. Plain data, driven by `now`.

use std::time::Duration;

use tokio::time::Instant;

use super::config::FailureWindow;

/// Counts over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

const FAILURE: u8 = 1;
const SLOW: u8 = 2;

// One per key, inside the key's `Arc`: its size costs no copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Outcomes {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Outcomes {
    pub(crate) fn new(window: FailureWindow, now: Instant) -> Self {
        match window {
            FailureWindow::Count(n) => Outcomes::Count(CountWindow::new(n)),
            FailureWindow::Time(d) => Outcomes::Time(TimeWindow::new(d, now)),
        }
    }

    /// Adds one outcome; `now` is read by time windows only (a count
    /// window takes `None`).
    pub(crate) fn record(&mut self, failure: bool, slow: bool, now: Option<Instant>) -> Totals {
        match self {
            Outcomes::Count(w) => w.record(failure, slow),
            Outcomes::Time(w) => {
                let now = now.unwrap_or_else(Instant::now);
                w.record(failure, slow, now)
            }
        }
    }

    /// Forgets every outcome (on a transition).
    pub(crate) fn reset(&mut self) {
        match self {
            Outcomes::Count(w) => w.reset(),
            Outcomes::Time(w) => w.reset(),
        }
    }

    /// Whether this is a count window whose every slot holds a plain
    /// success.
    pub(crate) fn is_full_and_clean(&self) -> bool {
        match self {
            Outcomes::Count(w) => {
                w.totals.calls as usize == w.ring.len()
                    && w.totals.failures == 0
                    && w.totals.slow == 0
            }
            Outcomes::Time(_) => false,
        }
    }

    /// The size of a count window, which caps the minimum number of calls.
    pub(crate) fn capacity(&self) -> u32 {
        match self {
            Outcomes::Count(w) => w.ring.len() as u32,
            Outcomes::Time(_) => u32::MAX,
        }
    }
}

/// The last `n` outcomes in a ring, one byte each, with running totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[u8]>,
    next: usize,
    totals: Totals,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        CountWindow {
            ring: vec![0; n.max(1) as usize].into_boxed_slice(),
            next: 0,
            totals: Totals::default(),
        }
    }

    fn record(&mut self, failure: bool, slow: bool) -> Totals {
        let flags = (u8::from(failure) * FAILURE) | (u8::from(slow) * SLOW);
        let len = self.ring.len();
        if self.totals.calls as usize == len {
            let old = self.ring[self.next];
            self.totals.failures -= u32::from(old & FAILURE != 0);
            self.totals.slow -= u32::from(old & SLOW != 0);
        } else {
            self.totals.calls += 1;
        }
        self.ring[self.next] = flags;
        self.next = if self.next + 1 == len {
            0
        } else {
            self.next + 1
        };
        self.totals.failures += u32::from(failure);
        self.totals.slow += u32::from(slow);
        self.totals
    }

    fn reset(&mut self) {
        self.next = 0;
        self.totals = Totals::default();
    }
}

/// Outcomes of the last `duration`, in [`FailureWindow::BUCKETS`] buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    bucket: Duration,
    /// `(bucket index since origin, totals)`; a bucket whose index is older
    /// than the window counts as empty.
    buckets: [(u64, Totals); FailureWindow::BUCKETS as usize],
}

const EMPTY: (u64, Totals) = (
    u64::MAX,
    Totals {
        calls: 0,
        failures: 0,
        slow: 0,
    },
);

impl TimeWindow {
    fn new(duration: Duration, origin: Instant) -> Self {
        TimeWindow {
            origin,
            bucket: (duration / FailureWindow::BUCKETS).max(Duration::from_millis(1)),
            buckets: [EMPTY; FailureWindow::BUCKETS as usize],
        }
    }

    fn record(&mut self, failure: bool, slow: bool, now: Instant) -> Totals {
        let since = now.saturating_duration_since(self.origin);
        let index = u64::try_from(since.as_nanos() / self.bucket.as_nanos().max(1))
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1);
        let slot = (index % u64::from(FailureWindow::BUCKETS)) as usize;
        let b = &mut self.buckets[slot];
        if b.0 != index {
            *b = (index, Totals::default());
        }
        b.1.calls = b.1.calls.saturating_add(1);
        b.1.failures = b.1.failures.saturating_add(u32::from(failure));
        b.1.slow = b.1.slow.saturating_add(u32::from(slow));
        let oldest = index.saturating_sub(u64::from(FailureWindow::BUCKETS - 1));
        let mut totals = Totals::default();
        for (i, t) in &self.buckets {
            if *i != u64::MAX && *i >= oldest && *i <= index {
                totals.calls = totals.calls.saturating_add(t.calls);
                totals.failures = totals.failures.saturating_add(t.failures);
                totals.slow = totals.slow.saturating_add(t.slow);
            }
        }
        totals
    }

    fn reset(&mut self) {
        self.buckets = [EMPTY; FailureWindow::BUCKETS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_slides() {
        let mut w = CountWindow::new(3);
        assert_eq!(w.record(true, false).failures, 1);
        w.record(false, true);
        let t = w.record(false, false);
        assert_eq!((t.calls, t.failures, t.slow), (3, 1, 1));
        let t = w.record(false, false); // the failure leaves
        assert_eq!((t.calls, t.failures, t.slow), (3, 0, 1));
        let t = w.record(true, false); // the slow call leaves
        assert_eq!((t.calls, t.failures, t.slow), (3, 1, 0));
        w.reset();
        assert_eq!(w.record(false, false).calls, 1);
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let t0 = Instant::now();
        let mut w = TimeWindow::new(Duration::from_secs(10), t0);
        w.record(true, false, t0);
        w.record(true, false, t0 + Duration::from_secs(5));
        let t = w.record(false, false, t0 + Duration::from_millis(9_999));
        assert_eq!((t.calls, t.failures), (3, 2));
        // Bucket 0 ([0, 1 s)) leaves at 10 s.
        let t = w.record(false, false, t0 + Duration::from_secs(10));
        assert_eq!((t.calls, t.failures), (3, 1));
        // Far later: everything old is gone, even slots reused long ago.
        let t = w.record(false, false, t0 + Duration::from_secs(1_000));
        assert_eq!((t.calls, t.failures), (1, 0));
    }
}
