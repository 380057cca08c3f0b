use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::future::ResponseFuture;
use super::layer::DEFAULT_READ_TIMEOUT;
use super::{Classifier, PeekedBody, DEFAULT_BODY_PREFIX};

/// The service of [`ClassifyLayer`](super::ClassifyLayer).
#[derive(Clone, Debug)]
pub struct Classify<S, C> {
    inner: S,
    classifier: C,
    max_body: usize,
    read_timeout: Duration,
}

impl<S, C> Classify<S, C> {
    /// Wraps `inner`, classifying its responses with `classifier`.
    pub const fn new(inner: S, classifier: C) -> Self {
        Classify {
            inner,
            classifier,
            max_body: DEFAULT_BODY_PREFIX,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// See [`ClassifyLayer::max_body`](super::ClassifyLayer::max_body).
    pub const fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// See [`ClassifyLayer::read_timeout`](super::ClassifyLayer::read_timeout).
    pub const fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
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

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Classify<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: Classifier + Clone,
    ResB: Body + Unpin,
{
    type Response = Response<PeekedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        ResponseFuture::new(
            self.inner.call(request),
            self.classifier.clone(),
            self.max_body,
            self.read_timeout,
        )
    }
}
