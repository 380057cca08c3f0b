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
///
/// With [`headers_timeout`](Self::headers_timeout) it bounds the first
/// silence too, the wait for the response headers (the attempt timeout of
/// [`LlmLayer`](crate::LlmLayer)): the call fails with tower's
/// [`Elapsed`](tower::timeout::error::Elapsed), a
/// [timeout](crate::ErrorClass::Timeout), as with tower's `Timeout`.
#[derive(Clone, Copy, Debug)]
pub struct IdleTimeoutLayer {
    idle: Duration,
    headers: Option<Duration>,
}

impl IdleTimeoutLayer {
    /// Bodies fail after `idle` without a frame.
    pub const fn new(idle: Duration) -> Self {
        IdleTimeoutLayer {
            idle,
            headers: None,
        }
    }

    /// Calls fail when the response headers take longer than `timeout`
    /// (default: no bound). See [`IdleTimeout::headers_timeout`].
    pub const fn headers_timeout(mut self, timeout: Duration) -> Self {
        self.headers = Some(timeout);
        self
    }
}

impl<S> Layer<S> for IdleTimeoutLayer {
    type Service = IdleTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleTimeout {
            inner,
            idle: self.idle,
            headers: self.headers,
        }
    }
}

/// The service of [`IdleTimeoutLayer`]: wraps each response body in an
/// [`IdleTimeoutBody`], and bounds the wait for the headers when told to.
#[derive(Clone, Copy, Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    headers: Option<Duration>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`; its response bodies fail after `idle` without a frame.
    pub const fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            headers: None,
        }
    }

    /// Calls fail with tower's [`Elapsed`](tower::timeout::error::Elapsed)
    /// when the response headers take longer than `timeout` (default: no
    /// bound).
    ///
    /// Unlike tower's `Timeout`, the timer is armed only when the inner
    /// future is not ready at its first poll, and its clock starts then:
    /// a response that is there at once (an in-process service, a cache)
    /// costs no clock read and no timer. The stack polls a call as soon as
    /// it makes it, so the wait counted is the provider's.
    pub const fn headers_timeout(mut self, timeout: Duration) -> Self {
        self.headers = Some(timeout);
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

impl<S, Req, B> Service<Req> for IdleTimeout<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<IdleTimeoutBody<B>>;
    type Error = BoxError;
    type Future = IdleTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        IdleTimeoutFuture {
            future: self.inner.call(request),
            headers: HeadersTimer::Unarmed {
                limit: self.headers,
            },
            idle: self.idle,
        }
    }
}

pin_project! {
    /// The response future of [`IdleTimeout`].
    pub struct IdleTimeoutFuture<F> {
        #[pin]
        future: F,
        #[pin]
        headers: HeadersTimer,
        idle: Duration,
    }
}

pin_project! {
    /// The wait for the headers: not yet armed (and maybe never, when the
    /// response is ready at the first poll), or armed inline (no
    /// allocation).
    #[project = HeadersTimerProj]
    enum HeadersTimer {
        Unarmed { limit: Option<Duration> },
        Armed { #[pin] sleep: Sleep },
    }
}

impl<F> fmt::Debug for IdleTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeoutFuture")
            .field("idle", &self.idle)
            .field(
                "headers_armed",
                &matches!(self.headers, HeadersTimer::Armed { .. }),
            )
            .finish()
    }
}

impl<F, B, E> Future for IdleTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<IdleTimeoutBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The response first: one that is ready is never lost to the timer.
        if let Poll::Ready(result) = this.future.poll(cx) {
            let idle = *this.idle;
            return Poll::Ready(match result {
                Ok(response) => Ok(response.map(|body| IdleTimeoutBody::new(body, idle))),
                Err(error) => Err(error.into()),
            });
        }
        loop {
            match this.headers.as_mut().project() {
                HeadersTimerProj::Unarmed { limit: None } => return Poll::Pending,
                HeadersTimerProj::Unarmed { limit: Some(limit) } => {
                    let sleep = tokio::time::sleep_until(deadline(*limit));
                    this.headers.set(HeadersTimer::Armed { sleep });
                }
                HeadersTimerProj::Armed { sleep } => {
                    ready!(sleep.poll(cx));
                    return Poll::Ready(Err(Box::new(tower::timeout::error::Elapsed::new())));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// A provider whose headers come after `delay`.
    fn answering_after(
        delay: Duration,
    ) -> impl Service<(), Response = Response<String>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(move |()| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn headers_within_the_bound_pass_and_later_ones_fail_at_the_bound() {
        let bound = Duration::from_secs(30);
        let layer = IdleTimeoutLayer::new(Duration::from_secs(300)).headers_timeout(bound);

        let start = Instant::now();
        let mut client = layer.layer(answering_after(bound - Duration::from_millis(1)));
        let response = client.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(start.elapsed(), bound - Duration::from_millis(1));

        let start = Instant::now();
        let mut client = layer.layer(answering_after(bound + Duration::from_millis(1)));
        let error = client.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
        assert_eq!(start.elapsed(), bound);
        let error = Error::from_transport(error, |e| {
            crate::classify::Classifier::classify_error(&crate::Provider::OpenAi, e)
        });
        assert!(error.is_timeout() && error.is_retryable(), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_response_arms_no_timer_and_no_bound_waits_as_long_as_it_takes() {
        let layer = IdleTimeoutLayer::new(Duration::from_secs(1)).headers_timeout(Duration::ZERO);
        let mut client = layer.layer(tower::service_fn(|()| {
            std::future::ready(Ok::<_, Infallible>(Response::new(String::new())))
        }));
        // Even a zero bound lets a response that is there at once through:
        // the timer is armed only when the response is not ready.
        let mut future = std::pin::pin!(client.ready().await.unwrap().call(()));
        let waker = futures_util::task::noop_waker();
        let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Ok(_))));

        // Without `headers_timeout`, a slow answer is waited for.
        let start = Instant::now();
        let slow = Duration::from_secs(3_600);
        let mut client = IdleTimeoutLayer::new(Duration::from_secs(1)).layer(answering_after(slow));
        let response = client.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(start.elapsed(), slow);
    }
}
