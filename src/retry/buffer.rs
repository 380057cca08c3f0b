//! Buffering a request body that is not `Clone`, so that it can be replayed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::Request;
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::classify::classify_transport_error;
use crate::{BoxError, Error};

/// The default cap on a buffered request body: 16 MiB. A chat request that
/// carries a base64 image or a long document runs to a few MiB; OpenAI's
/// own limit on image inputs is 20 MB per request.
pub const DEFAULT_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a request body that is not `Clone` (a stream: hyper's
/// `Incoming` in a server, axum's `Body`, a `BoxBody`) once into a
/// [`Full<Bytes>`], which clones by reference count, so that
/// [`Retry`](super::Retry) placed inside this layer can replay it, and
/// which the stack's [`JsonEstimator`](crate::rate_limit::JsonEstimator)
/// and [`ByModel`](crate::key::ByModel) read
/// ([`BodyBytes`](crate::rate_limit::BodyBytes)): put it in front of
/// [`LlmLayer`](crate::LlmLayer) to stack that on a server's requests.
/// The body is read with http-body-util's `Limited` and `collect`.
///
/// A body it cannot buffer is not sent at all, and the caller gets an
/// [`Error`] of class [`InvalidRequest`](crate::ErrorClass::InvalidRequest),
/// not retryable: larger than the cap,
/// [`is_body_too_large`](Error::is_body_too_large); failed while it was
/// read (the client's upload broke),
/// [`is_body_unreadable`](Error::is_body_unreadable), with the body's error
/// as its source. Retries are never silently turned off.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{combinators::BoxBody, BodyExt, Full};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_llm_resilience::retry::{BufferBodyLayer, RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut stack = ServiceBuilder::new()
///     .layer(BufferBodyLayer::new(1024))
///     .layer(RetryLayer::new())
///     .service_fn(|_req: http::Request<Full<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// // A boxed body is not `Clone`; buffered, it can be replayed.
/// type Boxed = http::Request<BoxBody<Bytes, std::convert::Infallible>>;
/// let small: Boxed = http::Request::new(Full::new(Bytes::from_static(b"{}")).boxed());
/// assert!(ServiceExt::<Boxed>::ready(&mut stack).await.unwrap().call(small).await.is_ok());
/// // Past the cap the request is not sent at all.
/// let large: Boxed = http::Request::new(Full::new(Bytes::from(vec![b' '; 2048])).boxed());
/// let error = ServiceExt::<Boxed>::ready(&mut stack).await.unwrap().call(large).await.unwrap_err();
/// assert!(error.is_body_too_large());
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers bodies of at most `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        BufferBodyLayer { limit }
    }
}

impl Default for BufferBodyLayer {
    /// A cap of [`DEFAULT_BUFFER_LIMIT`] (16 MiB).
    fn default() -> Self {
        BufferBodyLayer::new(DEFAULT_BUFFER_LIMIT)
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Clone, Debug)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// Wraps `inner`, buffering bodies of at most `limit` bytes.
    pub const fn new(inner: S, limit: usize) -> Self {
        BufferBody { inner, limit }
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

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_transport(e, classify_transport_error))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        BufferFuture {
            state: BufferState::Collecting {
                collect: Limited::new(body, self.limit).collect(),
                parts: Some(parts),
                service: Some(service),
            },
            limit: self.limit,
        }
    }
}

pin_project! {
    /// The future of [`BufferBody`]: reads the body, then calls the inner
    /// service.
    pub struct BufferFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: BufferState<S, B>,
        limit: usize,
    }
}

pin_project! {
    #[project = BufferStateProj]
    enum BufferState<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Collecting {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<Parts>,
            service: Option<S>,
        },
        Called { #[pin] future: S::Future },
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                BufferStateProj::Collecting {
                    collect,
                    parts,
                    service,
                } => {
                    let body = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) => {
                            let error = if e.is::<LengthLimitError>() {
                                Error::body_too_large(*this.limit)
                            } else {
                                Error::body_unreadable(e)
                            };
                            return Poll::Ready(Err(error));
                        }
                    };
                    let (Some(parts), Some(mut service)) = (parts.take(), service.take()) else {
                        // Polled again after completion.
                        return Poll::Pending;
                    };
                    let future = service.call(Request::from_parts(parts, Full::new(body)));
                    this.state.set(BufferState::Called { future });
                }
                BufferStateProj::Called { future } => {
                    return future
                        .poll(cx)
                        .map_err(|e| Error::from_transport(e, classify_transport_error));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for BufferFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}
