//! Exponential backoff with jitter: a pure calculation, no tower, no clock.

use std::time::Duration;

use rand::{Rng, RngExt};

/// How the wait is spread around the exponential bound, so that clients who
/// failed together do not all come back at the same instant.
///
/// With `bound = min(cap, base * factor^n)` for the `n`-th retry (from 0):
///
/// | jitter | wait |
/// |---|---|
/// | `None` | `bound` |
/// | `Full` | uniform in `[0, bound)` |
/// | `Equal` | `bound / 2` + uniform in `[0, bound / 2)` |
/// | `Decorrelated` | uniform in `[base, 3 * previous wait)`, at most `cap` |
///
/// AWS's study ("Exponential backoff and jitter") found full jitter does the
/// least total work among clients contending for one lock. Against a full
/// rate-limit window, where the server's wait is a floor under the backoff,
/// equal jitter did less work and lost no request in this crate's
/// comparison (`examples/retry_comparison.rs`): full jitter's near-zero
/// draws send a refused request straight back into the full window. Equal
/// jitter is the default; openai-python's x U(0.75, 1) is close to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Jitter {
    /// The bound itself: deterministic, and every client comes back at once.
    None,
    /// Uniform in `[0, bound)`.
    Full,
    /// Half the bound plus uniform in the other half: never less than half
    /// (the default).
    #[default]
    Equal,
    /// Uniform between the base and three times the previous wait (Polly's
    /// and AWS's "decorrelated jitter"), capped.
    Decorrelated,
}

/// Exponential backoff with a base, a factor, a cap and a [`Jitter`].
///
/// Every method takes any input without panicking: absurd factors,
/// durations or attempt numbers saturate at the cap, a NaN or negative
/// factor is read as 1, and every wait is within `[0, cap]`.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::retry::{Backoff, Jitter};
///
/// let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(8)).jitter(Jitter::None);
/// assert_eq!(b.bound(0), Duration::from_millis(500));
/// assert_eq!(b.bound(3), Duration::from_secs(4));
/// assert_eq!(b.bound(1000), Duration::from_secs(8));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 500 ms doubling up to 8 s with equal jitter: openai-python's and
    /// anthropic-sdk-python's shape (0.5 s x 2^n, max 8 s); equal jitter
    /// (x U(0.5, 1)) spreads clients a little more than their x U(0.75, 1).
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(8))
    }
}

impl Backoff {
    /// Doubling from `base` up to `cap`, with [`Jitter::Equal`].
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            factor: 2.0,
            cap,
            jitter: Jitter::Equal,
        }
    }

    /// The growth factor per retry (default 2). A NaN, infinite or
    /// below-1 factor is read as 1 (a constant backoff).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        self
    }

    /// The jitter (default [`Jitter::Equal`]).
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first wait's bound.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The largest wait this backoff ever returns.
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter in use.
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// `min(cap, base * factor^retry)`: the exponential bound of the
    /// `retry`-th retry (counting from 0), before jitter.
    pub fn bound(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            return self.cap;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The wait before the `retry`-th retry (counting from 0), drawn from
    /// `rng`. `previous` is the wait before the previous retry (only
    /// [`Jitter::Decorrelated`] reads it; pass [`Duration::ZERO`] at first).
    pub fn wait(&self, retry: u32, previous: Duration, rng: &mut impl Rng) -> Duration {
        let bound = self.bound(retry);
        let wait = match self.jitter {
            Jitter::None => bound,
            Jitter::Full => scale(bound, unit(rng)),
            Jitter::Equal => {
                let half = bound / 2;
                half.saturating_add(scale(bound - half, unit(rng)))
            }
            Jitter::Decorrelated => {
                let low = self.base.min(self.cap);
                let high = previous.saturating_mul(3).max(low);
                low.saturating_add(scale(high - low, unit(rng)))
            }
        };
        wait.min(self.cap)
    }
}

/// `d * x` for `x` in `[0, 1]`, never above `d` and never panicking
/// (`Duration::mul_f64` panics when rounding lifts a product of a huge
/// duration above `Duration::MAX`).
pub(crate) fn scale(d: Duration, x: f64) -> Duration {
    let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
    Duration::try_from_secs_f64(d.as_secs_f64() * x)
        .unwrap_or(d)
        .min(d)
}

/// A uniform draw in `[0, 1)`.
pub(crate) fn unit(rng: &mut impl Rng) -> f64 {
    let x: f64 = rng.random();
    if (0.0..1.0).contains(&x) {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn each_jitter_stays_in_its_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).jitter(Jitter::Full);
        for n in 0..10 {
            let bound = b.bound(n);
            let full = b.wait(n, Duration::ZERO, &mut rng);
            assert!(full <= bound);
            let eq = b.jitter(Jitter::Equal).wait(n, Duration::ZERO, &mut rng);
            assert!(eq >= bound / 2 && eq <= bound);
            assert_eq!(
                b.jitter(Jitter::None).wait(n, Duration::ZERO, &mut rng),
                bound
            );
            let d = b
                .jitter(Jitter::Decorrelated)
                .wait(n, Duration::from_secs(4), &mut rng);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(12));
        }
    }

    #[test]
    fn absurd_inputs_saturate() {
        let mut rng = SmallRng::seed_from_u64(1);
        let b = Backoff::new(Duration::MAX, Duration::MAX).factor(f64::INFINITY);
        assert_eq!(b.bound(u32::MAX), Duration::MAX);
        assert!(b.wait(u32::MAX, Duration::MAX, &mut rng) <= Duration::MAX);
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(2)).factor(f64::NAN);
        assert_eq!(b.bound(50), Duration::from_secs(1));
        for x in [0.0, 0.5, 0.999_999_999_999, 1.0, f64::NAN, 7.0] {
            assert!(scale(Duration::MAX, x) <= Duration::MAX);
        }
        assert_eq!(scale(Duration::from_secs(2), 0.5), Duration::from_secs(1));
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(b.bound(0), Duration::from_secs(2));
        let d = b
            .jitter(Jitter::Decorrelated)
            .wait(3, Duration::MAX, &mut rng);
        assert!(d <= Duration::from_secs(2));
    }
}
