//! [`RateLimit`]: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::Service;

use super::calibrate::Calibration;
use super::estimate::{Estimator, JsonEstimator, TokenEstimate};
use super::future::ResponseFuture;
use super::limits::{Costs, Limits};
use super::memory::MemoryStore;
use super::store::Store;
use super::usage::ResponseBody;
use crate::classify::{Classifier, Provider};
use crate::events::{Attempt, Events};
use crate::key::{KeyFn, SingleKey};
use crate::{BoxError, Error};

pub(crate) struct Shared<K, C, E, St> {
    pub(crate) key_fn: K,
    pub(crate) classifier: C,
    pub(crate) estimator: E,
    pub(crate) store: Arc<St>,
    pub(crate) events: Events,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) max_gate_wait: Duration,
    pub(crate) estimate: bool,
    pub(crate) refund_failed: bool,
    pub(crate) calibration: Calibration,
}

/// Holds each request until its key's windows have room, then sends it;
/// learns from each response. Made by [`RateLimitLayer`](super::RateLimitLayer).
///
/// `poll_ready` only asks the inner service; `call` takes the ready inner
/// service (leaving a clone in its place) into the returned future, which
/// reserves capacity, waits if it must, checks the inner service is still
/// ready, and sends. Nothing is reserved before `call`, and a future dropped
/// while it waits gives its reservation back.
pub struct RateLimit<S, K, C, E, St> {
    inner: S,
    shared: Arc<Shared<K, C, E, St>>,
}

impl<S> RateLimit<S, SingleKey, Provider, JsonEstimator, MemoryStore> {
    /// A limiter around `inner` where every request has `limits`, with the
    /// defaults of [`RateLimitLayer::new`](super::RateLimitLayer::new): the
    /// same as `RateLimitLayer::new(limits).layer(inner)`.
    pub fn new(inner: S, limits: Limits) -> Self {
        tower::Layer::layer(&super::RateLimitLayer::new(limits), inner)
    }
}

impl<S, K, C, E, St> RateLimit<S, K, C, E, St> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<K, C, E, St>>) -> Self {
        RateLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The store (to peek at a key's state, or share it).
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The factor new input estimates are scaled by, as learned from the
    /// usage responses reported (1.0 when nothing was learned or it
    /// expired; see [`RateLimitLayer::calibrate_estimates`]).
    ///
    /// [`RateLimitLayer::calibrate_estimates`]: super::RateLimitLayer::calibrate_estimates
    pub fn estimate_factor(&self) -> f64 {
        self.shared.calibration.factor(tokio::time::Instant::now())
    }
}

impl<S: Clone, K, C, E, St> Clone for RateLimit<S, K, C, E, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C, E, St: fmt::Debug> fmt::Debug for RateLimit<S, K, C, E, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .field("max_wait", &self.shared.max_wait)
            .field("max_gate_wait", &self.shared.max_gate_wait)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB, K, C, E, St> Service<Request<B>> for RateLimit<S, K, C, E, St>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
    RB::Error: Into<BoxError>,
    K: KeyFn<Request<B>> + Send + Sync,
    C: Classifier,
    E: Estimator<Request<B>>,
    St: Store,
{
    type Response = Response<ResponseBody<RB, K, C, E, St>>;
    type Error = Error;
    type Future = ResponseFuture<S, Request<B>, K, C, E, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let classifier = &self.shared.classifier;
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let key = shared.key_fn.key(&request);
        let attempt = Attempt::start(&shared.events, &key, || shared.estimator.model(&request));
        let (costs, declared) = match request.extensions().get::<TokenEstimate>() {
            Some(&estimate) => (
                Costs::from(estimate),
                shared.estimator.declared_output(&request),
            ),
            None if shared.estimate => shared.estimator.estimate_declared(&request),
            None => (Costs::new(0, 0), None),
        };
        ResponseFuture::start(
            &mut self.inner,
            request,
            key,
            costs,
            declared,
            attempt,
            shared,
        )
    }
}
