use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::config::Config;
use super::future::ResponseFuture;
use super::replay::replay;
use crate::classify::Classifier;
use crate::events::RequestSpan;
use crate::per_clone::PerClone;
use crate::{BoxError, Error};

/// The service of [`RetryLayer`](super::RetryLayer): sends a request again
/// after a retryable failure, and returns a typed [`Error`] when it stops on
/// a failure.
///
/// Clones share the layer's budget, random generator, events and spike
/// alert. It keeps a copy of each request to replay (made before the first
/// attempt, so keep bodies cheap to clone: `Bytes` and `Full<Bytes>` clone
/// by reference count); use [`BufferBodyLayer`](super::BufferBodyLayer) for
/// a body that is not `Clone`.
pub struct Retry<S, C = crate::Provider> {
    inner: S,
    config: PerClone<Config<C>>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the defaults of [`RetryLayer::new`](super::RetryLayer::new)
    /// (use the layer's builder to change them).
    pub fn new(inner: S) -> Self {
        tower::Layer::layer(&super::RetryLayer::new(), inner)
    }
}

impl<S, C> Retry<S, C> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<C>>) -> Self {
        Retry {
            inner,
            config: PerClone::new(config),
        }
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
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &**self.config.shared())
            .finish()
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Retry<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classifier,
    B: Clone,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let classifier = &self.config.shared().classifier;
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)))
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service makes this attempt and any retry; this service
        // keeps a clone that must be driven to readiness again.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.handle();
        let attempts = config.first_attempt();
        // No copy when no request is ever sent again (max attempts 1).
        let copy = (config.most_attempts > 1).then(|| replay(&request));
        let span = RequestSpan::new();
        let future = {
            let _entered = span.enter();
            inner.call(request)
        };
        ResponseFuture::new(future, inner, copy, config, attempts, span)
    }
}
