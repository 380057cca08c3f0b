//! A response body watched as it passes: frames go through unchanged, the
//! watcher reads them, a hook hears once how the body ended.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{StreamReport, StreamWatcher};
use crate::classify::{classify_grpc, classify_transport_error, Classification, ErrorClass};
use crate::{BoxError, Error};

/// Told how a [`WatchedBody`] ended, exactly once: when the body ends,
/// fails, or is dropped before either.
///
/// The rate limiter implements it to replace a request's estimate with the
/// usage the body reported; the circuit breaker to count a stream that
/// failed midway as the failure it is.
pub trait StreamHook: Send {
    /// How a transport error of the body is classified (the layer's
    /// classifier). Errors of this crate keep their own class and are not
    /// passed here.
    fn classify_error(&self, error: &BoxError) -> Classification;

    /// What the body's trailers report: `None` for a success, else the
    /// failure, with which the body then ends ([`Ending::Failed`]). The
    /// default reads gRPC's status ([`classify_grpc`]); the layers' hooks
    /// ask their classifier ([`Classifier::classify_trailers`]).
    ///
    /// [`Classifier::classify_trailers`]: crate::Classifier::classify_trailers
    fn classify_trailers(&self, trailers: &http::HeaderMap) -> Option<Classification> {
        classify_grpc(trailers)
    }

    /// The body ended; called once, with what was seen.
    fn on_end(self, end: StreamEnd);
}

/// The hook that does nothing: a [`WatchedBody`] that only turns a failed
/// stream into a typed [`Error`]. Transport errors are classified by
/// [`classify_transport_error`].
impl StreamHook for () {
    fn classify_error(&self, error: &BoxError) -> Classification {
        classify_transport_error(&**error)
    }

    fn on_end(self, _: StreamEnd) {}
}

/// A [`StreamHook`] made of a closure called with the [`StreamEnd`];
/// transport errors are classified by [`classify_transport_error`].
///
/// ```
/// use tower_llm_resilience::stream::{OnEnd, StreamEnd};
///
/// let hook = OnEnd(|end: StreamEnd| println!("{:?}", end.report.usage));
/// # let _ = hook;
/// ```
#[derive(Clone, Copy)]
pub struct OnEnd<F>(pub F);

impl<F> fmt::Debug for OnEnd<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnEnd(..)")
    }
}

impl<F: FnOnce(StreamEnd) + Send> StreamHook for OnEnd<F> {
    fn classify_error(&self, error: &BoxError) -> Classification {
        classify_transport_error(&**error)
    }

    fn on_end(self, end: StreamEnd) {
        (self.0)(end)
    }
}

/// How a watched body ended, and what it said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// What the watcher saw: usage, the error reported, bytes delivered.
    pub report: StreamReport,
    /// How it ended.
    pub ending: Ending,
}

/// How a watched body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The body ended normally.
    Complete,
    /// The body failed with this class: an error event, a truncated event
    /// stream, a transport error or an idle timeout, after which the
    /// caller received an [`Error`] that
    /// [`is_stream_failure`](Error::is_stream_failure); or trailers that
    /// report a failure (gRPC's `grpc-status`), which the caller received
    /// as they are.
    Failed(ErrorClass),
    /// The body was dropped before its end (the caller stopped reading).
    Dropped,
}

pin_project! {
    /// A response body watched by a [`StreamWatcher`] as it passes.
    ///
    /// Trailers that report a failure (gRPC's `grpc-status`, by the hook's
    /// [`StreamHook::classify_trailers`]) end the body as that failure for
    /// the hook, and reach the caller unchanged.
    ///
    /// Every frame is handed on as soon as the inner body yields it, never
    /// buffered; data frames are fed to the watcher on the way. The body
    /// ends with an [`Error`] that [`is_stream_failure`](Error::is_stream_failure)
    /// when the provider reports an error inside it (the frame holding the
    /// error event is handed on first), when an event stream in a known
    /// format ends without its terminator ("truncated", a
    /// [`ServerError`](ErrorClass::ServerError)), or when the inner body
    /// fails. The [`StreamHook`] hears how it ended exactly once, also
    /// when the body is dropped early.
    pub struct WatchedBody<B: Body, H: StreamHook> {
        #[pin]
        inner: B,
        watcher: StreamWatcher,
        hook: Option<H>,
        state: State,
    }

    impl<B: Body, H: StreamHook> PinnedDrop for WatchedBody<B, H> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Nothing more to read (an empty body never polled) is an end.
            let ending = if matches!(this.state, State::Streaming)
                && this.inner.is_end_stream()
                && !this.watcher.report().is_truncated()
            {
                Ending::Complete
            } else {
                Ending::Dropped
            };
            finish(this.hook, this.watcher, ending);
        }
    }
}

#[derive(Debug)]
enum State {
    Streaming,
    /// The body failed; this error is the next item, then the end.
    Failing(Error),
    Done,
}

impl<B: Body, H: StreamHook> WatchedBody<B, H> {
    /// Watches `inner` with `watcher` (see
    /// [`StreamWatcher::for_response`]), telling `hook` how it ended.
    pub fn new(inner: B, watcher: StreamWatcher, hook: H) -> Self {
        WatchedBody {
            inner,
            watcher,
            hook: Some(hook),
            state: State::Streaming,
        }
    }

    /// What the watcher saw so far.
    pub fn report(&self) -> StreamReport {
        self.watcher.report()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body + fmt::Debug, H: StreamHook> fmt::Debug for WatchedBody<B, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedBody")
            .field("inner", &self.inner)
            .field("report", &self.watcher.report())
            .field("state", &self.state)
            .finish()
    }
}

/// Tells the hook, if it was not told yet.
fn finish<H: StreamHook>(hook: &mut Option<H>, watcher: &StreamWatcher, ending: Ending) {
    if let Some(hook) = hook.take() {
        hook.on_end(StreamEnd {
            report: watcher.report(),
            ending,
        });
    }
}

/// The trailers came: the failure they report ends the body as one. They
/// go on to the caller as they are: a gRPC client reads its status there,
/// and an error item in their place would hide it.
#[cold]
fn trailers_ended<H: StreamHook>(
    hook: &mut Option<H>,
    watcher: &StreamWatcher,
    trailers: &http::HeaderMap,
) {
    let failed = hook.as_ref().and_then(|h| h.classify_trailers(trailers));
    if let Some(c) = failed {
        let class = c.class.unwrap_or(ErrorClass::ServerError);
        finish(hook, watcher, Ending::Failed(class));
    }
}

/// The inner body ended: complete, or a truncated event stream's error.
fn ended<H: StreamHook>(hook: &mut Option<H>, watcher: &StreamWatcher) -> Option<Error> {
    if watcher.report().is_truncated() {
        finish(hook, watcher, Ending::Failed(ErrorClass::ServerError));
        return Some(Error::stream_truncated(watcher.delivered()));
    }
    finish(hook, watcher, Ending::Complete);
    None
}

impl<B, H> Body for WatchedBody<B, H>
where
    B: Body,
    B::Error: Into<BoxError>,
    H: StreamHook,
{
    type Data = B::Data;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match std::mem::replace(this.state, State::Done) {
            State::Streaming => {}
            State::Failing(error) => return Poll::Ready(Some(Err(error))),
            State::Done => return Poll::Ready(None),
        }
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                *this.state = State::Streaming;
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                let delivered = this.watcher.delivered();
                let error = match this.hook.as_ref() {
                    Some(hook) => {
                        Error::stream_broken(error, delivered, |e| hook.classify_error(e))
                    }
                    None => {
                        Error::stream_broken(error, delivered, |e| classify_transport_error(&**e))
                    }
                };
                finish(this.hook, this.watcher, Ending::Failed(error.class()));
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Ready(None) => {
                return match ended(this.hook, this.watcher) {
                    Some(error) => Poll::Ready(Some(Err(error))),
                    None => Poll::Ready(None),
                };
            }
        };
        *this.state = State::Streaming;
        if let Some(data) = frame.data_ref() {
            let had_failed = this.watcher.failure().is_some();
            this.watcher.feed_buf(data);
            if let (Some(failure), false) = (this.watcher.failure(), had_failed) {
                // Hand on the frame holding the error, then the error.
                finish(this.hook, this.watcher, Ending::Failed(failure.class));
                let error = Error::stream_error_event(failure, this.watcher.delivered());
                *this.state = State::Failing(error);
                return Poll::Ready(Some(Ok(frame)));
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            trailers_ended(this.hook, this.watcher, trailers);
        }
        if this.inner.is_end_stream() {
            // The inner body says it has nothing more: end now, so that a
            // caller that stops polling here still reports the end.
            *this.state = match ended(this.hook, this.watcher) {
                Some(error) => State::Failing(error),
                None => State::Done,
            };
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Streaming => self.inner.is_end_stream() && !self.watcher.report().is_truncated(),
            State::Failing(_) => false,
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Streaming => self.inner.size_hint(),
            State::Failing(_) | State::Done => SizeHint::with_exact(0),
        }
    }
}
