use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::circuit::Permit;
use super::config::CallOutcome;
use super::shared::Cell;
use crate::classify::{Classification, Classifier};
use crate::{BoxError, Error};

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker):
    /// the inner call, whose outcome it records in the key's breaker when it
    /// completes, or the breaker's refusal. Dropped before completion, it
    /// gives a half-open probe slot back; so does a panic in the inner
    /// service's `call` or in its future.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F>,
        guard: Option<Guard<C>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
        },
        Rejected {
            error: Option<Error>,
        },
    }
}

/// The permit of one call in flight; releases a probe slot on drop unless
/// the outcome was recorded. Made before the inner service's `call`, so
/// that a panic there (or in the future's `poll`) gives the slot back as
/// the stack unwinds.
pub(crate) struct Guard<C> {
    cell: Arc<Cell<C>>,
    permit: Permit,
    start: Option<Instant>,
    done: bool,
}

impl<C> Guard<C> {
    pub(crate) fn new(cell: Arc<Cell<C>>, permit: Permit, start: Option<Instant>) -> Self {
        Guard {
            cell,
            permit,
            start,
            done: false,
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.done {
            self.cell.release(self.permit);
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, guard: Guard<C>) -> Self {
        ResponseFuture {
            state: State::Called { future },
            guard: Some(guard),
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
            guard: None,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field(
                "probe",
                &self.guard.as_ref().is_some_and(|g| g.permit.is_probe()),
            )
            .finish()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classifier,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProj::Called { future } => {
                let result = ready!(future.poll(cx));
                let Some(mut guard) = this.guard.take() else {
                    panic!("ResponseFuture polled after completion");
                };
                let context = &guard.cell.context;
                let elapsed = guard.start.map_or(Duration::ZERO, |s| s.elapsed());
                let result = result.map_err(|e| {
                    Error::from_transport(e, |e| context.classifier.classify_error(e))
                });
                let outcome = match &result {
                    Ok(response) => match response.extensions().get::<Classification>() {
                        Some(c) => context.config.outcome(c, elapsed),
                        // Not an error status and unclassified: a success,
                        // without scanning its headers (the breaker needs
                        // nothing else from them).
                        None if !context.classifier.is_error_status(response.status()) => {
                            CallOutcome::success(elapsed)
                        }
                        None => context
                            .config
                            .outcome(&context.classifier.classify_response(response), elapsed),
                    },
                    Err(error) => context.config.outcome(error.classification(), elapsed),
                };
                guard.cell.record(guard.permit, outcome);
                guard.done = true;
                Poll::Ready(result)
            }
        }
    }
}
