//! The permit of one call in flight: it records the call's outcome in the
//! key's breaker, and gives a half-open probe slot back if the call ends
//! without one (dropped, or a panic).

use std::time::Duration;

use tokio::time::Instant;

use super::circuit::Permit;
use super::outcome::CallOutcome;
use super::shared::Cell;
use crate::classify::Classifier;
use crate::per_clone::Handle;
use crate::{BoxError, Error};

/// Made before the inner service's `call`, so that a panic there (or in
/// the future's `poll`) gives a probe slot back as the stack unwinds.
pub(crate) struct Guard<C> {
    cell: Handle<Cell<C>>,
    /// Spent (no longer a probe) once the outcome is recorded, so that the
    /// drop that follows releases nothing.
    permit: Permit,
    /// When the call started; read only when a slow-call rate is set.
    start: Option<Instant>,
}

impl<C> Guard<C> {
    #[inline]
    pub(crate) fn new(cell: Handle<Cell<C>>, permit: Permit) -> Self {
        let start = cell.context.config.slow_calls_enabled().then(Instant::now);
        Guard {
            cell,
            permit,
            start,
        }
    }

    pub(crate) fn is_probe(&self) -> bool {
        self.permit.is_probe()
    }

    /// The call's duration so far (zero when no slow-call rate is set: no
    /// clock is read).
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records `outcome` once; the guard's drop then releases nothing.
    #[inline]
    pub(crate) fn record(&mut self, outcome: CallOutcome) {
        self.cell.record(self.permit, outcome);
        self.permit = self.permit.spent();
    }

    pub(crate) fn classifier(&self) -> &C {
        &self.cell.context.classifier
    }

    /// Records a successful answer that took `elapsed`.
    #[inline]
    pub(crate) fn succeed(&mut self, elapsed: Duration) {
        self.record(CallOutcome::success(elapsed));
    }

    /// Records what a classified failure means under the breaker's policy.
    #[cold]
    pub(crate) fn fail(&mut self, classification: &crate::Classification, elapsed: Duration) {
        let outcome = self.cell.context.config.outcome(classification, elapsed);
        self.record(outcome);
    }
}

impl<C: Classifier> Guard<C> {
    /// Turns an error of the inner service (or of a response body) into
    /// the crate's [`Error`], classified by the breaker's classifier, and
    /// records what it means: the breaker's one rule for errors.
    #[cold]
    pub(crate) fn fail_with(&mut self, error: impl Into<BoxError>, elapsed: Duration) -> Error {
        let error = Error::from_transport(error, |e| self.classifier().classify_error(e));
        self.fail(error.classification(), elapsed);
        error
    }
}

impl<C> Drop for Guard<C> {
    #[inline]
    fn drop(&mut self) {
        self.cell.release(self.permit);
    }
}
