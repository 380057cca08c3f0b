use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::{is_stream, ResponseBody};
use super::guard::Guard;
use crate::classify::Classifier;
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

impl<F, C> ResponseFuture<F, C> {
    #[inline]
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
            .field("probe", &self.guard.as_ref().is_some_and(Guard::is_probe))
            .finish()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    C: Classifier,
{
    type Output = Result<Response<ResponseBody<B, C>>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            StateProj::Called { future } => ready!(future.poll(cx)),
            StateProj::Rejected { error } => return Poll::Ready(Err(take(error))),
        };
        let Some(mut guard) = this.guard.take() else {
            panic!("ResponseFuture polled after completion")
        };
        match result {
            Ok(response) => {
                // The rule every layer shares: a success scans no header
                // (the breaker needs nothing else from them).
                match guard.classifier().failure_of(&response) {
                    // A stream is judged at its end (see `ResponseBody`).
                    None if is_stream(&response) => guard.stream(),
                    None => guard.succeed(),
                    Some(c) => guard.fail(&c),
                }
                Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, guard))))
            }
            Err(e) => Poll::Ready(Err(guard.fail_with(e))),
        }
    }
}

/// The refusal of a rejected future (it completes at its first poll).
#[cold]
fn take(error: &mut Option<Error>) -> Error {
    error
        .take()
        .expect("ResponseFuture polled after completion")
}
