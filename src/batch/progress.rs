use std::time::Duration;

use crate::ErrorClass;

/// Where a batch run stands, reported after every change.
///
/// The counts always satisfy
/// `submitted == queued + in_flight + held + succeeded + failed` and
/// `succeeded + failed == yielded + buffered`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Inputs taken from the source so far.
    pub submitted: u64,
    /// Input taken from the source, waiting for the service to be ready
    /// (0 or 1).
    pub queued: u64,
    /// Calls started and not finished.
    pub in_flight: u64,
    /// Inputs that failed for a transient reason and wait to be sent again
    /// (see [`Patience`](super::Patience)).
    pub held: u64,
    /// Inputs answered with a response.
    pub succeeded: u64,
    /// Inputs answered with an error (cancelled and given-up ones
    /// included).
    pub failed: u64,
    /// Of `failed`, the inputs answered as cancelled.
    pub cancelled: u64,
    /// Of `failed`, the inputs the batch gave up
    /// ([`Error::is_gave_up`](crate::Error::is_gave_up)).
    pub gave_up: u64,
    /// How many times a held input was sent again, in all.
    pub resent: u64,
    /// Results finished but held back until every earlier input's result
    /// has been yielded.
    pub buffered: u64,
    /// Results handed to the caller, in input order.
    pub yielded: u64,
    /// How many times the service said "not ready" (`poll_ready` returned
    /// `Pending`): the driver waited on backpressure.
    pub ready_waits: u64,
    /// Whether the source has no more inputs.
    pub source_done: bool,
    /// While inputs are held: how long since the first transient failure
    /// after the latest success (how long the provider has been failing).
    pub failing_for: Option<Duration>,
    /// While inputs are held: the class of the latest transient failure
    /// (e.g. `overloaded`, or the class an open circuit reports).
    pub last_failure: Option<ErrorClass>,
    /// While inputs are held: how long until the next one is sent again.
    pub next_resend_in: Option<Duration>,
}

impl Progress {
    /// Inputs answered so far, successfully or not.
    pub const fn done(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Whether every input has been answered and yielded.
    pub const fn is_finished(&self) -> bool {
        self.source_done
            && self.queued == 0
            && self.in_flight == 0
            && self.held == 0
            && self.buffered == 0
    }
}
