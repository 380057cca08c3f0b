//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::config::Config;
use super::decision::{Attempts, Decision, Failure, GiveUp};
use super::replay::replay;
use crate::classify::{Classification, Classifier};
use crate::error::Origin;
use crate::events::RequestSpan;
use crate::per_clone::Handle;
use crate::{BoxError, Error};

pin_project! {
    /// The future of [`Retry`](super::Retry): the current attempt, the wait
    /// before the next one, or the wait for the inner service's readiness.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Option<Request<B>>,
        config: Handle<Config<C>>,
        attempts: Attempts,
        span: RequestSpan,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        // Boxed: allocated only when a retry is scheduled, so the future
        // stays small (and cheap to move) on the success path.
        Waiting { sleep: Pin<Box<Sleep>> },
        Retrying,
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    #[inline(always)]
    pub(crate) fn new(
        future: S::Future,
        service: S,
        request: Option<Request<B>>,
        config: Handle<Config<C>>,
        attempts: Attempts,
        span: RequestSpan,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            service,
            request,
            config,
            attempts,
            span,
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classifier,
    B: Clone,
{
    type Output = Result<Response<ResB>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let config = &**this.config;
                    let (failure, c, retryable) = match ready!(future.poll(cx)) {
                        Ok(response) => match config.classifier.failure_of(&response) {
                            None => {
                                this.span.end(this.attempts.made.max(1), None);
                                return Poll::Ready(Ok(response));
                            }
                            Some(c) => (Failure::Response(response), c, c.is_retryable()),
                        },
                        Err(e) => transport_failure(config, e),
                    };
                    let copy = this.request.is_some();
                    let state = this.state.as_mut();
                    if let Some(error) =
                        after_failure(config, copy, this.attempts, state, failure, c, retryable)
                    {
                        this.span
                            .end(this.attempts.made.max(1), Some(error.class()));
                        return Poll::Ready(Err(error));
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    let config = &**this.config;
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        let e = Error::from_transport(e, |e| config.classifier.classify_error(e));
                        return Poll::Ready(Err(e));
                    }
                    let request = match this.request.take() {
                        Some(request) => request,
                        // Unreachable: a retry is only scheduled with a copy.
                        None => {
                            return Poll::Ready(Err(Error::deadline_exceeded(Default::default())))
                        }
                    };
                    // Move the copy on the last attempt any class allows:
                    // nothing would send it again.
                    if this.attempts.made < config.most_attempts {
                        *this.request = Some(replay(&request));
                    }
                    let future = this.service.call(request);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// A transport failure of an attempt, classified.
#[cold]
fn transport_failure<C: Classifier, ResB>(
    config: &Config<C>,
    error: impl Into<BoxError>,
) -> (Failure<ResB>, Classification, bool) {
    let e = Error::from_transport(error, |e| config.classifier.classify_error(e));
    let c = *e.classification();
    let retryable = e.is_retryable();
    (Failure::Error(e), c, retryable)
}

/// After a failed attempt: schedules the retry (the state turns to
/// waiting), or gives up with the error the caller gets. Out of the
/// success path, which it would otherwise weigh down.
#[inline(never)]
fn after_failure<F, C: Classifier, ResB>(
    config: &Config<C>,
    copy: bool,
    attempts: &mut Attempts,
    mut state: Pin<&mut State<F>>,
    failure: Failure<ResB>,
    c: Classification,
    retryable: bool,
) -> Option<Error> {
    // Without a copy the request cannot be sent again: on the first
    // attempt no class may retry (and nothing is reported); after a
    // retry, this was the last attempt any class allows, and `decide`
    // gives up and says so.
    let decision = if copy || attempts.made > 1 {
        let origin = match &failure {
            Failure::Response(response) => response.extensions().get::<Origin>(),
            Failure::Error(error) => error.origin(),
        };
        config.decide_for(&c, retryable, attempts, Instant::now(), origin)
    } else {
        Decision::GiveUp(GiveUp::MaxAttempts)
    };
    match decision {
        Decision::Retry { wait, .. } => {
            state.set(State::Waiting {
                sleep: Box::pin(tokio::time::sleep(wait)),
            });
            None
        }
        Decision::GiveUp(why) => Some(config.give_up_error(why, failure, c)),
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts.made)
            .finish_non_exhaustive()
    }
}
