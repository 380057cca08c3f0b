use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A true sliding window: every admission is remembered with its time and
/// cost, and leaves the window exactly `len` after it entered. The window at
/// `now` holds the admissions made in `(now - len, now]`.
///
/// The simulated provider keeps its own window on purpose: it is the
/// independent judge of the crate's rate limiter, so it shares no code with
/// it.
#[derive(Debug)]
pub(crate) struct Window {
    len: Duration,
    entries: VecDeque<(Instant, u64)>,
    used: u64,
}

impl Window {
    pub(crate) fn new(len: Duration) -> Self {
        Window {
            len,
            entries: VecDeque::new(),
            used: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, cost)) = self.entries.front() {
            if at + self.len <= now {
                self.entries.pop_front();
                self.used -= cost;
            } else {
                break;
            }
        }
    }

    /// What the window holds at `now`.
    pub(crate) fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.used
    }

    /// How long until `cost` more fits under `limit`: zero when it fits
    /// now, `None` when it never can (`cost > limit`).
    pub(crate) fn wait_for(&mut self, now: Instant, cost: u64, limit: u64) -> Option<Duration> {
        if cost > limit {
            return None;
        }
        self.expire(now);
        if self.used.saturating_add(cost) <= limit {
            return Some(Duration::ZERO);
        }
        let mut left = self.used;
        for &(at, c) in &self.entries {
            left -= c;
            if left + cost <= limit {
                return Some((at + self.len).saturating_duration_since(now));
            }
        }
        Some(self.len) // not reached: the loop empties the window
    }

    /// Records an admission of `cost` at `now`.
    pub(crate) fn admit(&mut self, now: Instant, cost: u64) {
        self.expire(now);
        self.entries.push_back((now, cost));
        self.used = self.used.saturating_add(cost);
    }

    /// How long until the window is empty again ("fully replenished").
    pub(crate) fn reset_after(&mut self, now: Instant) -> Duration {
        self.expire(now);
        self.entries.back().map_or(Duration::ZERO, |&(at, _)| {
            (at + self.len).saturating_duration_since(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_exactly_len_later() {
        let t0 = Instant::now();
        let len = Duration::from_secs(60);
        let mut w = Window::new(len);
        for i in 0..3 {
            assert_eq!(
                w.wait_for(t0 + Duration::from_secs(i), 1, 3),
                Some(Duration::ZERO)
            );
            w.admit(t0 + Duration::from_secs(i), 1);
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(w.wait_for(now, 1, 3), Some(Duration::from_secs(50)));
        assert_eq!(w.wait_for(now, 2, 3), Some(Duration::from_secs(51)));
        assert_eq!(w.wait_for(now, 4, 3), None);
        assert_eq!(w.reset_after(now), Duration::from_secs(52));
        assert_eq!(w.used(t0 + len), 2);
        assert_eq!(w.used(t0 + len + Duration::from_secs(2)), 0);
    }
}
