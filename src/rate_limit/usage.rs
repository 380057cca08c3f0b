//! What a request really cost, once its response said: the rule that turns
//! the usage a response reports into the charge the limiter keeps.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::estimate::TokenUsage;
use super::limits::Costs;
use super::service::Shared;
use super::store::{Reservation, Store};
use crate::classify::{Classification, Classifier};
use crate::events::Attempt;
use crate::stream::{Ending, StreamEnd, StreamHook, WatchedBody};
use crate::BoxError;

/// The body of a response that came through [`RateLimit`](super::RateLimit):
/// the inner body, frame by frame, watched for the usage the provider
/// reports (the limiter then corrects the request's charge) and for a
/// failure midway (a typed [`Error`](crate::Error) item: see
/// [`crate::stream`]).
pub type ResponseBody<B, K, C, E, St> = WatchedBody<B, UsageHook<K, C, E, St>>;

/// What [`RateLimit`](super::RateLimit) does when a response's body ends:
/// it replaces the request's estimated charge with what the body said it
/// used, by the provider's rule ([`OutputCharge`]).
pub struct UsageHook<K, C, E, St> {
    shared: Arc<Shared<K, C, E, St>>,
    /// The charge to correct: `None` for a response that is not a
    /// success (its charge was settled when it arrived).
    reservation: Option<Reservation>,
    declared: Option<u64>,
    /// The input estimate before the limiter's calibration scaled it.
    estimated_input: u64,
    rule: OutputCharge,
    /// The attempt, while the events are observed: it ends with the body.
    attempt: Option<Box<Attempt>>,
}

impl<K, C, E, St> UsageHook<K, C, E, St> {
    pub(super) fn new(
        shared: Arc<Shared<K, C, E, St>>,
        reservation: Option<Reservation>,
        declared: Option<u64>,
        estimated_input: u64,
        rule: OutputCharge,
        attempt: Option<Box<Attempt>>,
    ) -> Self {
        UsageHook {
            shared,
            reservation,
            declared,
            estimated_input,
            rule,
            attempt,
        }
    }
}

impl<K, C, E, St> fmt::Debug for UsageHook<K, C, E, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageHook")
            .field("reservation", &self.reservation)
            .field("declared", &self.declared)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl<K, C, E, St> StreamHook for UsageHook<K, C, E, St>
where
    K: Send + Sync,
    C: Classifier,
    E: Send + Sync,
    St: Store,
{
    fn classify_error(&self, error: &BoxError) -> Classification {
        self.shared.classifier.classify_error(&**error)
    }

    fn classify_trailers(&self, trailers: &http::HeaderMap) -> Option<Classification> {
        self.shared.classifier.classify_trailers(trailers)
    }

    fn on_end(mut self, end: StreamEnd) {
        if let Some(attempt) = self.attempt.take() {
            let class = match end.ending {
                Ending::Failed(class) => Some(class),
                Ending::Complete | Ending::Dropped => None,
            };
            attempt.end(&self.shared.events, class, end.report.usage);
        }
        let (Some(r), Some(usage)) = (self.reservation, end.report.usage) else {
            // Nothing reported (an interrupted stream, a body without
            // `usage`): the estimate stands.
            return;
        };
        let seen = match end.ending {
            Ending::Dropped => Seen::Partial,
            _ => Seen::Whole,
        };
        let actual = corrected(&r.costs, self.declared, usage, self.rule, seen);
        let now = Instant::now();
        if seen == Seen::Whole && usage.input_tokens > 0 {
            self.shared.calibration.learn(
                self.estimated_input,
                r.costs.output_tokens,
                &actual,
                now,
            );
        }
        if actual != r.costs {
            self.shared.store.correct(&r, &actual, now);
        }
    }
}

/// How a provider charges a request's output tokens against its token
/// limits: the rule by which the limiter corrects its estimate from the
/// usage a response reports ([`Classifier::output_charge`]).
///
/// [`Classifier::output_charge`]: crate::Classifier::output_charge
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OutputCharge {
    /// The provider charges the declared `max_tokens` at admission and
    /// gives nothing back when the completion is shorter (OpenAI: "your
    /// rate limit is calculated as the maximum of `max_tokens` and the
    /// estimated number of tokens"). The corrected output charge is the
    /// larger of the real output and the declared maximum. The default:
    /// it never charges less than the provider does.
    #[default]
    Declared,
    /// The provider counts the real output tokens once the request ends
    /// (Anthropic's output-token limits are "adjusted at the end of the
    /// request to reflect the actual number of output tokens used"). The
    /// corrected output charge is the real output.
    Actual,
}

/// How a response's body ended, for the correction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The body was read to its end (or failed there): what it reported is
    /// the request's whole usage.
    Whole,
    /// The caller dropped the body before its end: the provider may have
    /// counted more than the body said so far.
    Partial,
}

/// The charge to keep for a request estimated at `estimate` (with
/// `declared` the body's `max_tokens`, when it named one) whose response
/// reported `usage`.
///
/// - Input: the reported input tokens (a usage that reports 0 input, as
///   some stream shapes do before their last event, keeps the estimate).
/// - Output: per `rule`; with [`OutputCharge::Declared`] never below the
///   declared maximum.
/// - A body dropped early ([`Seen::Partial`]) only ever raises the charge:
///   what it did not show may still have been counted.
pub(crate) fn corrected(
    estimate: &Costs,
    declared: Option<u64>,
    usage: TokenUsage,
    rule: OutputCharge,
    seen: Seen,
) -> Costs {
    let input = if usage.input_tokens == 0 {
        estimate.input_tokens
    } else {
        usage.input_tokens
    };
    let output = match rule {
        OutputCharge::Actual => usage.output_tokens,
        OutputCharge::Declared => usage.output_tokens.max(declared.unwrap_or(0)),
    };
    let (input, output) = match seen {
        Seen::Whole => (input, output),
        Seen::Partial => (
            input.max(estimate.input_tokens),
            output.max(estimate.output_tokens),
        ),
    };
    Costs {
        input_tokens: input,
        output_tokens: output,
        ..*estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input_tokens: u64, output_tokens: u64) -> TokenUsage {
        TokenUsage {
            input_tokens,
            output_tokens,
        }
    }

    #[test]
    fn openai_keeps_the_declared_maximum_and_takes_the_real_input() {
        // estimated 300 in (bytes / 4) + 256 out (max_tokens); used 120 + 3
        let estimate = Costs::new(300, 256);
        let c = corrected(
            &estimate,
            Some(256),
            usage(120, 3),
            OutputCharge::Declared,
            Seen::Whole,
        );
        assert_eq!(c, Costs::new(120, 256));
        // no max_tokens in the body: the default guess gives way to the real output
        let c = corrected(
            &Costs::new(300, 1024),
            None,
            usage(120, 3),
            OutputCharge::Declared,
            Seen::Whole,
        );
        assert_eq!(c, Costs::new(120, 3));
    }

    #[test]
    fn anthropic_takes_the_real_output() {
        let c = corrected(
            &Costs::new(300, 256),
            Some(256),
            usage(120, 3),
            OutputCharge::Actual,
            Seen::Whole,
        );
        assert_eq!(c, Costs::new(120, 3));
    }

    #[test]
    fn an_estimate_three_times_too_high_comes_back_to_what_the_provider_charges() {
        // a caller's TokenEstimate of 3x the true 400 (counted as input)
        let c = corrected(
            &Costs::tokens(1_200),
            Some(64),
            usage(336, 2),
            OutputCharge::Declared,
            Seen::Whole,
        );
        assert_eq!(c.total_tokens(), 400);
    }

    #[test]
    fn a_dropped_body_only_raises_the_charge() {
        let estimate = Costs::new(300, 256);
        // Anthropic's message_start: the input is known, output 1 so far
        let c = corrected(
            &estimate,
            Some(256),
            usage(120, 1),
            OutputCharge::Actual,
            Seen::Partial,
        );
        assert_eq!(c, estimate);
        let c = corrected(
            &estimate,
            Some(256),
            usage(500, 1),
            OutputCharge::Actual,
            Seen::Partial,
        );
        assert_eq!(c, Costs::new(500, 256));
    }

    #[test]
    fn the_request_charge_stays() {
        let estimate = Costs::new(10, 10);
        let c = corrected(
            &estimate,
            None,
            usage(1, 1),
            OutputCharge::Actual,
            Seen::Whole,
        );
        assert_eq!(c.requests, estimate.requests);
    }
}
