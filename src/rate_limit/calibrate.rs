//! How far the input estimates run above what the provider counts, learned
//! from the usage responses report, so that a request waiting for room is
//! not charged three times its cost while it waits.
//!
//! A correction from usage fixes a request's charge only once its body
//! ends. Until then, an estimate too high holds room nobody uses: in
//! `examples/goodput`, estimates 3x too high kept 2 to 5 % of the quota
//! idle even with every correction moving the waiters earlier. The limiter
//! therefore scales each new request's *input* estimate by the ratio the
//! recent responses showed, with these bounds (nothing learned here is
//! sticky):
//!
//! - **Only down**: the factor is at most 1 (an estimate is never raised:
//!   under-counting is what the provider's `remaining` headers and its 429s
//!   correct) and at least [`MIN_ESTIMATE_FACTOR`] (1/4).
//! - **Up at once, down slowly**: a response that needed more than the
//!   factor allowed raises it to what it needed; one that needed less
//!   lowers it by a sixteenth of the gap. The factor follows the largest
//!   recent ratio, not the average.
//! - **Expires**: [`ESTIMATE_FACTOR_TTL`] (10 min) after the last report,
//!   estimates count whole again.
//! - **Output is never scaled**: a declared `max_tokens` is what OpenAI
//!   charges at admission, and what Anthropic checks its output limit
//!   against. An output shorter than declared never lowers the factor; a
//!   longer one raises it.
//!
//! One factor per limiter (per [`layer`](tower::Layer::layer) call, shared
//! by the service's clones), across its keys: the bias belongs to the
//! estimator and the traffic more than to a key, and the largest recent
//! ratio covers the keys with the higher one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::limits::Costs;

/// The smallest factor an input estimate is scaled by (1/4): an estimator
/// up to 4 times too high is recovered, one higher still keeps some of its
/// excess.
pub const MIN_ESTIMATE_FACTOR: f64 = 0.25;

/// How long a learned factor holds after the last response that taught
/// it (10 min): then estimates count whole again.
pub const ESTIMATE_FACTOR_TTL: Duration = Duration::from_secs(600);

/// 1.0 in the factor's fixed point (16 fractional bits).
const ONE: u32 = 1 << 16;
const FLOOR: u32 = ONE / 4;

/// The learned factor. Lock-free: one relaxed load on a request's path
/// while nothing was learned.
#[derive(Debug)]
pub(crate) struct Calibration {
    enabled: bool,
    /// The factor, in 1/65,536ths; `ONE` when nothing was learned.
    factor: AtomicU32,
    /// When it was last taught, in nanoseconds after `epoch`.
    taught: AtomicU64,
    epoch: Instant,
}

impl Calibration {
    pub(crate) fn new(enabled: bool) -> Self {
        Calibration {
            enabled,
            factor: AtomicU32::new(ONE),
            taught: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The factor in force at `now` (1.0 when nothing holds).
    pub(crate) fn factor(&self, now: Instant) -> f64 {
        f64::from(self.fixed(now)) / f64::from(ONE)
    }

    fn fixed(&self, now: Instant) -> u32 {
        let factor = self.factor.load(Relaxed);
        if factor >= ONE {
            return ONE;
        }
        let taught = Duration::from_nanos(self.taught.load(Relaxed));
        let age = now.saturating_duration_since(self.epoch + taught);
        if age > ESTIMATE_FACTOR_TTL {
            ONE
        } else {
            factor
        }
    }

    /// `estimate` with its input scaled by the factor in force at `now`.
    #[inline]
    pub(crate) fn apply(&self, estimate: Costs, now: Instant) -> Costs {
        if self.factor.load(Relaxed) >= ONE {
            return estimate;
        }
        let factor = u128::from(self.fixed(now));
        let input = (u128::from(estimate.input_tokens) * factor).div_ceil(u128::from(ONE));
        Costs {
            input_tokens: u64::try_from(input).unwrap_or(u64::MAX),
            ..estimate
        }
    }

    /// Learns from a request estimated at `input` input tokens and
    /// `output` output tokens (before scaling) whose whole response made
    /// the limiter charge `charged`.
    pub(crate) fn learn(&self, input: u64, output: u64, charged: &Costs, now: Instant) {
        if !self.enabled || input == 0 {
            return;
        }
        // What the input estimate had to cover: the charged input, and
        // whatever the output went over its estimate.
        let needed = u128::from(charged.input_tokens)
            + u128::from(charged.output_tokens.saturating_sub(output));
        let ratio = (needed * u128::from(ONE) / u128::from(input)).min(u128::from(ONE));
        let ratio = u32::try_from(ratio).unwrap_or(ONE).max(FLOOR);
        let taught = now.saturating_duration_since(self.epoch).as_nanos();
        let expired = self.fixed(now) == ONE;
        self.taught
            .store(u64::try_from(taught).unwrap_or(u64::MAX), Relaxed);
        let _ = self.factor.fetch_update(Relaxed, Relaxed, |old| {
            // An expired factor starts again from 1.
            let old = if expired { ONE } else { old };
            Some(if ratio >= old {
                ratio
            } else {
                old - (old - ratio).div_ceil(16)
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(input: u64, output: u64) -> Costs {
        Costs::new(input, output)
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_learned_changes_nothing() {
        let c = Calibration::new(true);
        let now = Instant::now();
        assert_eq!(c.apply(costs(900, 16), now), costs(900, 16));
        assert_eq!(c.factor(now), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_over_estimate_is_learned_down_to_its_ratio() {
        let c = Calibration::new(true);
        let now = Instant::now();
        // Estimated 900 input tokens, charged 300: a third.
        for _ in 0..200 {
            c.learn(900, 0, &costs(300, 0), now);
        }
        let f = c.factor(now);
        assert!((f - 1.0 / 3.0).abs() < 0.001, "{f}");
        assert_eq!(c.apply(costs(900, 16), now), costs(300, 16));
    }

    #[tokio::test(start_paused = true)]
    async fn it_rises_at_once_and_falls_slowly() {
        let c = Calibration::new(true);
        let now = Instant::now();
        for _ in 0..200 {
            c.learn(1000, 0, &costs(300, 0), now);
        }
        // One response that needed 600 of its 1,000: at once.
        c.learn(1000, 0, &costs(600, 0), now);
        assert!((c.factor(now) - 0.6).abs() < 0.001);
        // One that needed 300 again: a sixteenth of the way down.
        c.learn(1000, 0, &costs(300, 0), now);
        let f = c.factor(now);
        assert!(f < 0.6 && f > 0.58, "{f}");
    }

    #[tokio::test(start_paused = true)]
    async fn it_is_bounded_by_a_quarter_and_by_one() {
        let c = Calibration::new(true);
        let now = Instant::now();
        for _ in 0..500 {
            c.learn(1000, 0, &costs(1, 0), now);
        }
        assert_eq!(c.factor(now), MIN_ESTIMATE_FACTOR);
        // Under-estimated: never above 1.
        c.learn(100, 0, &costs(5_000, 0), now);
        assert_eq!(c.factor(now), 1.0);
        assert_eq!(c.apply(costs(100, 0), now), costs(100, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_output_never_lowers_it_and_a_longer_one_raises_it() {
        let c = Calibration::new(true);
        let now = Instant::now();
        // Exact input, output 3 of 256 declared (Anthropic counts 3).
        for _ in 0..100 {
            c.learn(500, 256, &costs(500, 3), now);
        }
        assert_eq!(c.factor(now), 1.0);
        for _ in 0..200 {
            c.learn(1000, 100, &costs(300, 100), now);
        }
        // Output 200 over an estimate of 100: the input estimate had to
        // cover 300 + 100 of its 1,000.
        c.learn(1000, 100, &costs(300, 200), now);
        assert!((c.factor(now) - 0.4).abs() < 0.001);
    }

    #[tokio::test(start_paused = true)]
    async fn it_expires_ten_minutes_after_the_last_report() {
        let c = Calibration::new(true);
        let start = Instant::now();
        for _ in 0..200 {
            c.learn(900, 0, &costs(300, 0), start);
        }
        tokio::time::advance(ESTIMATE_FACTOR_TTL).await;
        assert!(c.factor(Instant::now()) < 0.34, "still in force at the TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        assert_eq!(c.factor(now), 1.0);
        assert_eq!(c.apply(costs(900, 0), now), costs(900, 0));
        // A new report starts again from 1: one step down, not the old 1/3.
        c.learn(900, 0, &costs(300, 0), now);
        assert!(c.factor(now) > 0.9);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_learns_nothing() {
        let c = Calibration::new(false);
        let now = Instant::now();
        c.learn(900, 0, &costs(300, 0), now);
        assert_eq!(c.factor(now), 1.0);
    }
}
