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

use super::limits::Costs;
use super::policy::{after_response, refund};
use super::service::Shared;
use super::store::{Decision, Reservation, Store};
use super::usage::{ResponseBody, UsageHook};
use crate::classify::Classifier;
use crate::error::Origin;
use crate::events::{model_of, Attempt, Event, Events};
use crate::key::Key;
use crate::stream::{StreamWatcher, WatchedBody};
use crate::{BoxError, Error};

/// Gives a reservation back if the request was never sent (and says the
/// wait ended).
struct Guard<St: Store> {
    store: Arc<St>,
    reservation: Option<Reservation>,
    events: Events,
    model: Option<Key>,
    started: Instant,
}

impl<St: Store> Drop for Guard<St> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.store.cancel(&r);
            self.events.emit(Event::RateLimitWaitEnded {
                key: &r.key,
                model: r.key.model().or(self.model.as_ref().and_then(Key::as_str)),
                waited: Instant::now().saturating_duration_since(self.started),
            });
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
        state: State<S::Future, St::Acquire, St>,
        // The inner service and the request, boxed: only a request that
        // must wait (or ask a remote store) carries them.
        parked: Option<Box<(S, Req)>>,
        key: Key,
        started: Instant,
        reservation: Option<Reservation>,
        // The body's `max_tokens`, for the correction from usage.
        declared: Option<u64>,
        // The input estimate before calibration, to learn from the usage.
        estimated_input: u64,
        // Only while the events are observed: the model, the span.
        attempt: Option<Box<Attempt>>,
        shared: Arc<Shared<K, C, E, St>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, A, St: Store> {
        Acquiring { #[pin] acquire: A },
        // Boxed: only a waiting request pays for the timer's size.
        Waiting { sleep: Pin<Box<Sleep>>, guard: Box<Guard<St>> },
        Calling { #[pin] future: F },
        Failed { error: Option<Error> },
        Done,
    }
}

impl<S, Req, K, C, E, St> ResponseFuture<S, Req, K, C, E, St>
where
    S: Service<Req>,
    St: Store,
{
    /// Starts a request: decides at once when the store can (the
    /// in-memory store always can), and on the common path (admitted now)
    /// calls the ready inner service right away, with no clone of it.
    pub(crate) fn start(
        inner: &mut S,
        request: Req,
        key: Key,
        costs: Costs,
        declared: Option<u64>,
        attempt: Option<Box<Attempt>>,
        shared: &Arc<Shared<K, C, E, St>>,
    ) -> Self
    where
        S: Clone,
    {
        let now = Instant::now();
        let estimated_input = costs.input_tokens;
        let costs = shared.calibration.apply(costs, now);
        let deadline = shared.max_wait.and_then(|d| now.checked_add(d));
        let state = match shared.store.try_acquire(&key, &costs, now, deadline) {
            None => {
                let acquire = shared.store.acquire(&key, &costs, now, deadline);
                State::Acquiring { acquire }
            }
            // Admitted now, or a hair later: another caller that read the
            // clock after us locked first (the store keeps time order).
            Some(Ok(Decision::Admitted(r))) if r.at <= now || r.at <= Instant::now() => {
                let future = inner.call(request);
                return ResponseFuture {
                    state: State::Calling { future },
                    parked: None,
                    key,
                    started: now,
                    reservation: Some(r),
                    declared,
                    estimated_input,
                    attempt,
                    shared: shared.clone(),
                };
            }
            Some(Ok(Decision::Admitted(r))) => {
                let state = State::waiting(r, now, &key, attempt.as_deref(), shared);
                let clone = inner.clone();
                return ResponseFuture {
                    state,
                    parked: Some(Box::new((std::mem::replace(inner, clone), request))),
                    key,
                    started: now,
                    reservation: None,
                    declared,
                    estimated_input,
                    attempt,
                    shared: shared.clone(),
                };
            }
            Some(decision) => State::Failed {
                error: Some(refused(decision, now).with_origin(&key, model_key(&attempt))),
            },
        };
        let clone = inner.clone();
        ResponseFuture {
            state,
            parked: Some(Box::new((std::mem::replace(inner, clone), request))),
            key,
            started: now,
            reservation: None,
            declared,
            estimated_input,
            attempt,
            shared: shared.clone(),
        }
    }
}

impl<F, A, St: Store> State<F, A, St> {
    /// A reservation that must wait: waits, unless the wait is on a gate
    /// longer than the gate bound (then the reservation is given back and
    /// the request fails at once).
    fn waiting<K, C, E>(
        r: Reservation,
        started: Instant,
        key: &Key,
        attempt: Option<&Attempt>,
        shared: &Arc<Shared<K, C, E, St>>,
    ) -> Self {
        let now = Instant::now();
        if let Some(gate) = shared.store.gate_until(key, now) {
            let wait = gate.saturating_duration_since(now);
            if wait > shared.max_gate_wait {
                shared.store.cancel(&r);
                return State::Failed {
                    error: Some(gate_refusal(shared, key, attempt, wait)),
                };
            }
        }
        shared.events.emit(Event::RateLimitWait {
            key,
            model: model_of(attempt, key),
            wait: r.at - started,
        });
        State::Waiting {
            sleep: Box::pin(tokio::time::sleep_until(r.at)),
            guard: Box::new(Guard {
                store: shared.store.clone(),
                reservation: Some(r),
                events: shared.events.clone(),
                model: attempt.and_then(Attempt::model_key).cloned(),
                started,
            }),
        }
    }
}

/// Reports and makes the error of a wait on a gate past the gate bound.
fn gate_refusal<K, C, E, St>(
    shared: &Shared<K, C, E, St>,
    key: &Key,
    attempt: Option<&Attempt>,
    wait: Duration,
) -> Error {
    let model = model_of(attempt, key);
    shared
        .events
        .emit(Event::GateWaitRefused { key, model, wait });
    Error::rate_limit_timeout(wait).with_origin(key, attempt.and_then(Attempt::model_key))
}

/// The shared model name an observed attempt read from its request.
fn model_key(attempt: &Option<Box<Attempt>>) -> Option<&Key> {
    attempt.as_deref().and_then(Attempt::model_key)
}

/// The error for a decision that admits nothing.
fn refused(decision: Result<Decision, Error>, started: Instant) -> Error {
    match decision {
        Ok(Decision::TooLate(at)) => {
            Error::rate_limit_timeout(at.saturating_duration_since(started))
        }
        Ok(Decision::Never { cost, capacity }) => Error::over_capacity(cost, capacity),
        Ok(Decision::Admitted(_)) => unreachable!("an admission is not refused"),
        Err(e) => e,
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
            State::Failed { .. } => "failed",
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
    RB: http_body::Body,
    RB::Error: Into<BoxError>,
    K: Send + Sync,
    C: Classifier,
    E: Send + Sync,
    St: Store,
{
    type Output = Result<Response<ResponseBody<RB, K, C, E, St>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.attempt.as_deref().map(|a| a.span().clone().entered());
        loop {
            match this.state.as_mut().project() {
                StateProj::Acquiring { acquire } => {
                    let r = match ready!(acquire.poll(cx)) {
                        Ok(Decision::Admitted(r)) => r,
                        refusal => {
                            this.state.set(State::Done);
                            let error = refused(refusal, *this.started);
                            return Poll::Ready(Err(
                                error.with_origin(this.key, model_key(this.attempt))
                            ));
                        }
                    };
                    if r.at <= Instant::now() {
                        *this.reservation = Some(r);
                        if let Some(attempt) = this.attempt.as_deref_mut() {
                            attempt.sent = Instant::now();
                        }
                        let (mut inner, req) =
                            *this.parked.take().expect("polled after completion");
                        let future = inner.call(req);
                        this.state.set(State::Calling { future });
                    } else {
                        let attempt = this.attempt.as_deref();
                        let state =
                            State::waiting(r, *this.started, this.key, attempt, this.shared);
                        this.state.set(state);
                    }
                }
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Waiting { sleep, guard } => {
                    // A cancellation ahead of us may have moved us earlier,
                    // a gate closed since we were booked later (see the
                    // contract of `Store::watch`).
                    if let Some(r) = &guard.reservation {
                        if let Some(at) = this.shared.store.watch(r, cx.waker()) {
                            let booked = sleep.deadline();
                            if at > booked {
                                let wait = at.saturating_duration_since(Instant::now());
                                if wait > this.shared.max_gate_wait {
                                    let attempt = this.attempt.as_deref();
                                    let error = gate_refusal(this.shared, this.key, attempt, wait);
                                    // Dropping the guard gives the reservation back.
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(error));
                                }
                            }
                            if at != booked {
                                sleep.as_mut().reset(at);
                            }
                        }
                    }
                    ready!(sleep.as_mut().poll(cx));
                    let classifier = &this.shared.classifier;
                    let parked = this.parked.as_mut().expect("polled after completion");
                    if let Err(e) = ready!(parked.0.poll_ready(cx)) {
                        this.state.set(State::Done);
                        // Not sent: the guard gives the reservation back.
                        let error = Error::from_transport(e, |e| classifier.classify_error(e));
                        return Poll::Ready(Err(
                            error.with_origin(this.key, model_key(this.attempt))
                        ));
                    }
                    let now = Instant::now();
                    let waited = now.saturating_duration_since(*this.started);
                    this.shared.events.emit(Event::RateLimitAdmitted {
                        key: this.key,
                        model: model_of(this.attempt.as_deref(), this.key),
                        waited,
                    });
                    if let Some(attempt) = this.attempt.as_deref_mut() {
                        attempt.sent = now;
                    }
                    *this.reservation = guard.reservation.take();
                    if let Some(r) = this.reservation.as_ref() {
                        this.shared.store.unwatch(r);
                    }
                    let (mut inner, req) = *this.parked.take().expect("polled after completion");
                    let future = inner.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let shared = &**this.shared;
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            let attempt = this.attempt.as_deref();
                            let class = after_response(
                                shared,
                                this.key,
                                attempt,
                                this.reservation.as_ref(),
                                *this.declared,
                                &response,
                            );
                            refund(shared, this.reservation.as_ref(), class);
                            if class.is_some() {
                                // For the layers above, which report it.
                                response.extensions_mut().insert(Origin {
                                    key: this.key.clone(),
                                    model: model_key(this.attempt).cloned(),
                                });
                            }
                            let mut attempt = this.attempt.take();
                            if let Some(attempt) = attempt.as_deref_mut() {
                                attempt.class = class;
                                attempt.usage = response.extensions().get().copied();
                            }
                            // A success's charge is settled when its body
                            // ends, from the usage the body reports.
                            let reservation = this.reservation.take().filter(|_| class.is_none());
                            let rule = shared.classifier.output_charge(response.headers());
                            let watcher = StreamWatcher::for_response(response.headers());
                            let hook = UsageHook::new(
                                this.shared.clone(),
                                reservation,
                                *this.declared,
                                *this.estimated_input,
                                rule,
                                attempt,
                            );
                            Ok(response.map(|body| WatchedBody::new(body, watcher, hook)))
                        }
                        Err(e) => {
                            let error =
                                Error::from_transport(e, |e| shared.classifier.classify_error(e));
                            refund(shared, this.reservation.as_ref(), Some(error.class()));
                            let error = error.with_origin(this.key, model_key(this.attempt));
                            if let Some(attempt) = this.attempt.take() {
                                attempt.end(&shared.events, Some(error.class()), None);
                            }
                            Err(error)
                        }
                    });
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
