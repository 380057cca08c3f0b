/// Where a batch run stands, reported after every change.
///
/// The counts always satisfy
/// `submitted == in_flight + succeeded + failed + queued` and
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
    /// Inputs answered with a response.
    pub succeeded: u64,
    /// Inputs answered with an error (cancelled ones included).
    pub failed: u64,
    /// Of `failed`, the inputs answered as cancelled.
    pub cancelled: u64,
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
}

impl Progress {
    /// Inputs answered so far, successfully or not.
    pub const fn done(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Whether every input has been answered and yielded.
    pub const fn is_finished(&self) -> bool {
        self.source_done && self.queued == 0 && self.in_flight == 0 && self.buffered == 0
    }
}
