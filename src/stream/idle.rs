//! The idle timeout: a stalled stream is a timeout, not a hang.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::{BoxError, Error};

/// Ends every response body that goes `idle` without a frame with a
/// [timeout](crate::ErrorClass::Timeout) error: a stream that stalls
/// midway fails instead of hanging its caller.
///
/// The clock starts when the body is first polled (the response's headers
/// have arrived) and restarts at every frame. A request's attempt timeout
/// bounds the wait for the headers; this bounds each wait between frames,
/// however long the whole stream lasts. Choose it above the model's
/// longest silence: a reasoning model may think for minutes before its
/// first token on a chat-completions stream (Anthropic sends `ping`
/// events meanwhile; OpenAI does not).
///
/// ```
/// use std::time::Duration;
/// use http_body_util::BodyExt;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::stream::IdleTimeoutLayer;
/// use tower_llm_resilience::Error;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // A provider that sends the headers, then nothing.
/// let stalled = tower::service_fn(|_req: http::Request<()>| async {
///     let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
///         Result<http_body::Frame<bytes::Bytes>, std::io::Error>,
///     >());
///     Ok::<_, std::convert::Infallible>(http::Response::new(body))
/// });
/// let mut client = IdleTimeoutLayer::new(Duration::from_secs(30)).layer(stalled);
/// let response = client.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// let error = response.into_body().collect().await.unwrap_err();
/// let error = error.downcast::<Error>().unwrap();
/// assert!(error.is_timeout() && error.is_stream_failure());
/// assert_eq!(error.delivered(), Some(0));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct IdleTimeoutLayer {
    idle: Duration,
}

impl IdleTimeoutLayer {
    /// Bodies fail after `idle` without a frame.
    pub const fn new(idle: Duration) -> Self {
        IdleTimeoutLayer { idle }
    }
}

impl<S> Layer<S> for IdleTimeoutLayer {
    type Service = IdleTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleTimeout::new(inner, self.idle)
    }
}

/// The service of [`IdleTimeoutLayer`]: wraps each response body in an
/// [`IdleTimeoutBody`].
#[derive(Clone, Copy, Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`; its response bodies fail after `idle` without a frame.
    pub const fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout { inner, idle }
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

impl<S, Req, B> Service<Req> for IdleTimeout<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<IdleTimeoutBody<B>>;
    type Error = S::Error;
    type Future = IdleTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        IdleTimeoutFuture {
            future: self.inner.call(request),
            idle: self.idle,
        }
    }
}

pin_project! {
    /// The response future of [`IdleTimeout`].
    pub struct IdleTimeoutFuture<F> {
        #[pin]
        future: F,
        idle: Duration,
    }
}

impl<F> fmt::Debug for IdleTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeoutFuture")
            .field("idle", &self.idle)
            .finish()
    }
}

impl<F, B, E> Future for IdleTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<IdleTimeoutBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let idle = *this.idle;
        Poll::Ready(Ok(response.map(|body| IdleTimeoutBody::new(body, idle))))
    }
}

pin_project! {
    /// A body that fails with a [timeout](crate::ErrorClass::Timeout) after
    /// `idle` without a frame (see [`IdleTimeoutLayer`]).
    ///
    /// Its error is a [`BoxError`], so that the inner body's errors pass
    /// unchanged for the layer above to classify; its own is a boxed
    /// [`Error`] that [`is_timeout`](Error::is_timeout) and
    /// [`is_stream_failure`](Error::is_stream_failure), says how long the
    /// stream was idle and how many bytes it had delivered. The body ends
    /// after either error.
    ///
    /// The clock is read only when the inner body has no frame ready: the
    /// timer is armed then (a [`Sleep`] boxed the first time, so a body
    /// whose frames are always ready allocates nothing, and the body stays
    /// `Unpin` when the inner body is) and re-armed after a frame came, so
    /// nothing is allocated per frame and the caller's own time between
    /// polls never counts as the provider's silence. It must be polled
    /// within a tokio runtime.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        // The timer's deadline counts from the last wait, not from before
        // the last frame.
        armed: bool,
        idle: Duration,
        delivered: u64,
        // It timed out, or the inner body failed: nothing more.
        ended: bool,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// Wraps `inner`: it fails after `idle` without a frame while it is
    /// polled.
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            sleep: None,
            armed: false,
            idle,
            delivered: 0,
            ended: false,
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for IdleTimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeoutBody")
            .field("inner", &self.inner)
            .field("idle", &self.idle)
            .field("delivered", &self.delivered)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        // The body first: a frame that is ready is never lost to the timer.
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.delivered = this.delivered.saturating_add(data.remaining() as u64);
                }
                *this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                *this.ended = true;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let sleep = match this.sleep {
                    Some(sleep) => {
                        if !*this.armed {
                            sleep.as_mut().reset(deadline(*this.idle));
                        }
                        sleep
                    }
                    None => this
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline(*this.idle)))),
                };
                *this.armed = true;
                ready!(sleep.as_mut().poll(cx));
                *this.ended = true;
                let error = Error::stream_idle(*this.idle, *this.delivered);
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// `idle` from now, saturating far in the future for an absurd duration.
fn deadline(idle: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(idle)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}
