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

    proptest::proptest! {
        /// `wait_for` is the earliest time at which the cost fits, checked
        /// against a brute-force count; admitting never exceeds the limit.
        #[test]
        fn wait_for_matches_brute_force(
            steps in proptest::collection::vec((0u64..5_000, 1u64..40), 1..60),
            limit in 1u64..200,
        ) {
            let t0 = Instant::now();
            let len = Duration::from_secs(10);
            let mut w = Window::new(len);
            let mut all: Vec<(Instant, u64)> = Vec::new();
            let mut now = t0;
            for (gap_ms, cost) in steps {
                now += Duration::from_millis(gap_ms);
                let in_window = |all: &[(Instant, u64)], at: Instant| -> u64 {
                    all.iter().filter(|(t, _)| *t + len > at).map(|(_, c)| c).sum()
                };
                let got = w.wait_for(now, cost, limit);
                if cost > limit {
                    proptest::prop_assert_eq!(got, None);
                    continue;
                }
                let mut candidates: Vec<Duration> = all
                    .iter()
                    .map(|(t, _)| (*t + len).saturating_duration_since(now))
                    .collect();
                candidates.push(Duration::ZERO);
                candidates.sort();
                let expected = candidates
                    .into_iter()
                    .find(|d| in_window(&all, now + *d) + cost <= limit);
                proptest::prop_assert_eq!(got, expected);
                if got == Some(Duration::ZERO) {
                    w.admit(now, cost);
                    all.push((now, cost));
                    proptest::prop_assert!(in_window(&all, now) <= limit);
                    proptest::prop_assert_eq!(w.used(now), in_window(&all, now));
                }
            }
        }
    }
}
