//! The permit of one call in flight: it records the call's outcome in the
//! key's breaker once, and decides what a call that ends without one
//! means when it is dropped.

use std::time::Duration;

use tokio::time::Instant;

use super::circuit::Permit;
use super::outcome::CallOutcome;
use super::shared::Cell;
use crate::classify::{Classification, Classifier};
use crate::per_clone::Handle;
use crate::{BoxError, Error};

/// Made before the inner service's `call`, so that a panic there (or in
/// the future's `poll`) gives a probe slot back as the stack unwinds; then
/// held by the response future, and by the [`ResponseBody`](super::ResponseBody)
/// of the response.
///
/// Dropped with its outcome unrecorded, it gives a probe slot back while
/// the call waits for its response headers (a cancelled call says nothing
/// about the provider), and records a success once a stream's headers
/// arrived (a body dropped before its end: the provider answered, the
/// caller chose to stop), except while a panic unwinds.
pub(crate) struct Guard<C> {
    cell: Handle<Cell<C>>,
    /// `None` once the outcome is recorded (or the slot released).
    permit: Option<Permit>,
    clock: Clock,
}

enum Clock {
    /// Waiting for the response headers, since this instant (`None`
    /// without a slow-call rate: no clock is read).
    Waiting(Option<Instant>),
    /// The headers arrived this long after the call; the body streams.
    Streaming(Duration),
}

impl<C> Guard<C> {
    #[inline]
    pub(crate) fn new(cell: Handle<Cell<C>>, permit: Permit) -> Self {
        let start = cell.context.config.slow_calls_enabled().then(Instant::now);
        Guard {
            cell,
            permit: Some(permit),
            clock: Clock::Waiting(start),
        }
    }

    pub(crate) fn is_probe(&self) -> bool {
        self.permit.is_some_and(|p| p.is_probe())
    }

    /// Whether the outcome is still to be recorded.
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.permit.is_some()
    }

    /// The call's duration: until now while it waits for its headers,
    /// until its headers once its body streams (so a slow-call threshold
    /// applies to the time to the first byte, not to the length of the
    /// answer). Zero when no slow-call rate is set: no clock is read.
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        match self.clock {
            Clock::Waiting(start) => start.map_or(Duration::ZERO, |s| s.elapsed()),
            Clock::Streaming(elapsed) => elapsed,
        }
    }

    /// The headers of a stream arrived: the outcome waits for the end of
    /// its body, and the call's duration stops here.
    pub(crate) fn stream(&mut self) {
        self.clock = Clock::Streaming(self.elapsed());
    }

    /// Records `outcome`, once: later calls do nothing.
    #[inline]
    pub(crate) fn record(&mut self, outcome: CallOutcome) {
        if let Some(permit) = self.permit.take() {
            self.cell.record(permit, outcome);
        }
    }

    /// Records a success.
    #[inline]
    pub(crate) fn succeed(&mut self) {
        let elapsed = self.elapsed();
        self.record(CallOutcome::success(elapsed));
    }

    /// The end of a body: records a success if the outcome waits for it.
    /// Out of line, so that the per-frame path stays a branch.
    #[inline(never)]
    pub(crate) fn end(&mut self) {
        self.succeed();
    }

    /// Records what a classified failure means under the breaker's policy.
    #[cold]
    pub(crate) fn fail(&mut self, classification: &Classification) {
        let outcome = self
            .cell
            .context
            .config
            .outcome(classification, self.elapsed());
        self.record(outcome);
    }

    pub(crate) fn classifier(&self) -> &C {
        &self.cell.context.classifier
    }
}

impl<C: Classifier> Guard<C> {
    /// Turns an error of the inner service (or of a response body) into
    /// the crate's [`Error`], classified by the breaker's classifier (an
    /// `Error` of this crate keeps its class), and records what it means:
    /// the breaker's one rule for errors, before or after the headers.
    #[cold]
    pub(crate) fn fail_with(&mut self, error: impl Into<BoxError>) -> Error {
        let error = Error::from_transport(error, |e| self.classifier().classify_error(e));
        self.fail(error.classification());
        error
    }
}

impl<C: Classifier> Guard<C> {
    /// The trailers that end a body: the failure they report (gRPC's
    /// status, by [`Classifier::classify_trailers`]) is recorded as one,
    /// else the end is a success.
    #[inline(never)]
    pub(crate) fn end_with_trailers(&mut self, trailers: &http::HeaderMap) {
        match self.classifier().classify_trailers(trailers) {
            Some(c) => self.fail(&c),
            None => self.succeed(),
        }
    }
}

impl<C> Drop for Guard<C> {
    #[inline]
    fn drop(&mut self) {
        if let Some(permit) = self.permit {
            self.unrecorded(permit);
        }
    }
}

impl<C> Guard<C> {
    /// A drop with the outcome unrecorded (see the type's docs).
    #[inline(never)]
    fn unrecorded(&mut self, permit: Permit) {
        match self.clock {
            Clock::Streaming(elapsed) if !std::thread::panicking() => {
                self.record(CallOutcome::success(elapsed));
            }
            _ => {
                self.permit = None;
                self.cell.release(permit);
            }
        }
    }
}
