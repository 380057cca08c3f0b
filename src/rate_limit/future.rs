//! [`ResponseFuture`]: reserve, wait, send, learn.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::estimate::TokenUsage;
use super::service::Shared;
use super::store::{Decision, Reservation, Store};
use super::window::{Costs, Dimension};
use crate::classify::{Classifier, ErrorClass, LimitState};
use crate::events::Event;
use crate::key::Key;
use crate::{BoxError, Error};

const MINUTE: Duration = Duration::from_secs(60);

/// Gives a reservation back if the request was never sent.
struct Guard<St: Store> {
    store: Arc<St>,
    reservation: Option<Reservation>,
}

impl<St: Store> Drop for Guard<St> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.store.cancel(&r);
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`](super::RateLimit): it reserves capacity,
    /// waits until the admission instant (one timer, no polling), sends the
    /// request, and learns from the response.
    pub struct ResponseFuture<S, Req, K, C, E, St>
    where
        S: Service<Req>,
        St: Store,
    {
        #[pin]
        state: State<S::Future, St::Acquire>,
        inner: Option<S>,
        request: Option<Req>,
        key: Key,
        started: Instant,
        reservation: Option<Reservation>,
        guard: Option<Guard<St>>,
        shared: Arc<Shared<K, C, E, St>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, A> {
        Acquiring { #[pin] acquire: A },
        Waiting { #[pin] sleep: Sleep },
        Calling { #[pin] future: F },
        Done,
    }
}

impl<S, Req, K, C, E, St> ResponseFuture<S, Req, K, C, E, St>
where
    S: Service<Req>,
    St: Store,
{
    pub(crate) fn new(
        acquire: St::Acquire,
        inner: S,
        request: Req,
        key: Key,
        started: Instant,
        shared: Arc<Shared<K, C, E, St>>,
    ) -> Self {
        ResponseFuture {
            state: State::Acquiring { acquire },
            inner: Some(inner),
            request: Some(request),
            key,
            started,
            reservation: None,
            guard: None,
            shared,
        }
    }
}

impl<S, Req, K, C, E, St> fmt::Debug for ResponseFuture<S, Req, K, C, E, St>
where
    S: Service<Req>,
    St: Store,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Acquiring { .. } => "acquiring",
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("key", &self.key)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB, K, C, E, St> Future for ResponseFuture<S, Request<B>, K, C, E, St>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    C: Classifier,
    St: Store,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Acquiring { acquire } => {
                    let decision = ready!(acquire.poll(cx));
                    let r = match decision {
                        Ok(Decision::Admitted(r)) => r,
                        Ok(Decision::TooLate(at)) => {
                            this.state.set(State::Done);
                            let wait = at.saturating_duration_since(*this.started);
                            return Poll::Ready(Err(Error::rate_limit_timeout(wait)));
                        }
                        Ok(Decision::Never { cost, capacity }) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Error::over_capacity(cost, capacity)));
                        }
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    if r.at <= *this.started {
                        *this.reservation = Some(r);
                        let (Some(mut inner), Some(req)) = (this.inner.take(), this.request.take())
                        else {
                            unreachable!("polled after completion")
                        };
                        let future = inner.call(req);
                        this.state.set(State::Calling { future });
                    } else {
                        let wait = r.at - *this.started;
                        this.shared.events.emit(Event::RateLimitWait {
                            key: this.key,
                            wait,
                        });
                        let at = r.at;
                        *this.guard = Some(Guard {
                            store: this.shared.store.clone(),
                            reservation: Some(r),
                        });
                        this.state.set(State::Waiting {
                            sleep: tokio::time::sleep_until(at),
                        });
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    let classifier = &this.shared.classifier;
                    let inner = this.inner.as_mut().expect("polled after completion");
                    if let Err(e) = ready!(inner.poll_ready(cx)) {
                        this.state.set(State::Done);
                        // Not sent: the guard gives the reservation back.
                        return Poll::Ready(Err(Error::from_transport(e, |e| {
                            classifier.classify_error(e)
                        })));
                    }
                    let waited = Instant::now().saturating_duration_since(*this.started);
                    this.shared.events.emit(Event::RateLimitAdmitted {
                        key: this.key,
                        waited,
                    });
                    *this.reservation = this.guard.as_mut().and_then(|g| g.reservation.take());
                    *this.guard = None;
                    let (Some(mut inner), Some(req)) = (this.inner.take(), this.request.take())
                    else {
                        unreachable!("polled after completion")
                    };
                    let future = inner.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let shared = &**this.shared;
                    return Poll::Ready(match result {
                        Ok(response) => {
                            after_response(shared, this.key, this.reservation.as_ref(), &response);
                            Ok(response)
                        }
                        Err(e) => Err(Error::from_transport(e, |e| {
                            shared.classifier.classify_error(e)
                        })),
                    });
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Learns from a response: usage correction, the provider's budget, the
/// shared gate. Cheap when the response carries nothing to learn.
fn after_response<K, C, E, St, RB>(
    shared: &Shared<K, C, E, St>,
    key: &Key,
    reservation: Option<&Reservation>,
    response: &Response<RB>,
) where
    C: Classifier,
    St: Store,
{
    if let (Some(r), Some(usage)) = (reservation, response.extensions().get::<TokenUsage>()) {
        let actual = Costs::new(usage.input_tokens, usage.output_tokens);
        if actual != r.costs {
            shared.store.correct(r, &actual, Instant::now());
        }
    }
    let c = shared.classifier.classify_response(response);
    if c.limits.is_empty() && c.is_success() {
        return;
    }
    let now = Instant::now();
    let request_window = c
        .provider
        .and_then(|p| p.request_limit_window())
        .unwrap_or(MINUTE);
    let dims: [(Dimension, Option<LimitState>, Duration); 4] = [
        (Dimension::Requests, c.limits.requests, request_window),
        (Dimension::Tokens, c.limits.tokens, MINUTE),
        (Dimension::InputTokens, c.limits.input_tokens, MINUTE),
        (Dimension::OutputTokens, c.limits.output_tokens, MINUTE),
    ];
    for (dimension, state, default_window) in dims {
        let Some(state) = state else { continue };
        let window = state.window.unwrap_or(default_window);
        if let Some(limit) = shared.store.learn(key, dimension, window, state, now) {
            shared.events.emit(Event::LimitLearned {
                key,
                dimension: dimension.as_str(),
                limit,
                remaining: state.remaining,
            });
        }
    }
    if let Some(class) = c.class {
        if matches!(
            class,
            ErrorClass::RateLimited | ErrorClass::SlowDown | ErrorClass::QuotaExhausted
        ) {
            shared.events.emit(Event::RateLimitedResponse {
                key,
                class,
                retry_after: c.retry_after,
            });
            if class == ErrorClass::QuotaExhausted {
                shared.events.emit(Event::QuotaExhausted {
                    key,
                    until: c.retry_after,
                });
            }
            if let Some(wait) = c.retry_after {
                if let Some(until) = now.checked_add(wait) {
                    shared.store.gate(key, until);
                }
            }
        }
    }
}
