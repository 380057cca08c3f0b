//! [`ResponseBody`]: the body of a response the breaker let through, which
//! records a streamed success's outcome at the end of the body.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::Guard;
use crate::classify::{is_grpc, Classifier, Provider};
use crate::{BoxError, Error};

pin_project! {
    /// The body of every response [`CircuitBreaker`](super::CircuitBreaker)
    /// returns: the inner body, frame for frame, that tells the key's
    /// breaker how a stream ended.
    ///
    /// A 2xx **stream** (a `text/event-stream` response, as every provider
    /// streams a completion, or a gRPC response, `application/grpc`, whose
    /// status comes in its trailers) is not judged at its headers: a stream
    /// that breaks midway is a failure. Its outcome is recorded when the
    /// body ends:
    ///
    /// - **the end of the body** (the last frame, or `None`) is a success;
    /// - **trailers** that report a failure (gRPC's `grpc-status` other
    ///   than 0, by [`Classifier::classify_trailers`]) are that failure, by
    ///   the same rule as an error response; the trailers still reach the
    ///   caller as they are (a gRPC client reads its status there);
    /// - **an error item** (a reset connection, or what
    ///   [`WatchedBody`](crate::stream::WatchedBody) reports as a
    ///   [stream failure](crate::Error::is_stream_failure): an SSE `error`
    ///   event such as Anthropic's `overloaded_error`, a truncated stream,
    ///   an idle timeout) is classified as an error before the headers is,
    ///   by the same rule: an [`Error`] of this crate keeps its class, any
    ///   other error goes to the classifier's
    ///   [`classify_error`](Classifier::classify_error); a provider fault
    ///   counts as a failure (a failed half-open probe opens the breaker
    ///   again), a caller's fault or a cancellation says nothing. The item
    ///   reaches the caller as that [`Error`];
    /// - **a body dropped before its end** counts as a success: the
    ///   provider answered and the caller chose to stop (a stalled stream
    ///   reaches the caller as an idle-timeout error item first, which
    ///   counts as the failure it is). Dropped while a panic unwinds, it
    ///   records nothing and gives a probe slot back.
    ///
    /// A half-open probe keeps its slot until then, and never longer (its
    /// [`probe_timeout`](super::CircuitBreakerLayer::probe_timeout) still
    /// bounds it). A slow-call threshold applies to the time until the
    /// headers, not to the length of the answer.
    ///
    /// Every other response is judged at its headers, as before: error
    /// responses, a body already at its end, and a plain (not streamed)
    /// body, which a caller may well hold unread for a while (a batch keeps
    /// its answers until the last one) and which would otherwise hold a
    /// probe slot all that time. Its error items still reach the caller as
    /// classified [`Error`]s.
    ///
    /// Frames pass through untouched: no copy, no allocation, a branch per
    /// frame.
    pub struct ResponseBody<B, C = Provider> {
        #[pin]
        inner: B,
        guard: Guard<C>,
    }
}

impl<B, C> ResponseBody<B, C> {
    pub(crate) fn new(inner: B, guard: Guard<C>) -> Self {
        ResponseBody { inner, guard }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably (reading frames from it directly hides them
    /// from the breaker).
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The inner body, unwrapped. A streamed success still waiting for its
    /// end is recorded as one now (see the type's docs for a dropped body).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B, C> Body for ResponseBody<B, C>
where
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Data = B::Data;
    type Error = Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if this.guard.is_pending() {
                    if let Some(trailers) = frame.trailers_ref() {
                        // The trailers end the body, and may say it failed
                        // (gRPC's `grpc-status`); they go on untouched.
                        this.guard.end_with_trailers(trailers);
                    } else if this.inner.is_end_stream() {
                        // The last frame ends the body: no need to wait for
                        // a `None` that a reader who trusts `is_end_stream`
                        // never asks for.
                        this.guard.end();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                this.guard.end();
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(this.guard.fail_with(e)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A success whose body has not ended at its headers: a stream (a
/// `text/event-stream` or gRPC body) waits for the end of its body,
/// anything else is recorded now. Out of line: one header lookup, not on
/// the path of an answer whose body is already complete.
#[inline(never)]
pub(crate) fn judge_success<C>(guard: &mut Guard<C>, headers: &HeaderMap) {
    if is_stream(headers) {
        guard.stream();
    } else {
        guard.succeed();
    }
}

/// Whether the headers say `Content-Type: text/event-stream` (SSE, with
/// or without parameters, in any case) or gRPC's `application/grpc`.
fn is_stream(headers: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        (v.len() >= SSE.len() && v[..SSE.len()].eq_ignore_ascii_case(SSE)) || is_grpc(v)
    })
}

impl<B: fmt::Debug, C> fmt::Debug for ResponseBody<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("pending", &self.guard.is_pending())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_told_by_their_content_type() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(v));
            is_stream(&h)
        };
        assert!(with("text/event-stream"));
        assert!(with("text/event-stream; charset=utf-8"));
        assert!(with("Text/Event-Stream"));
        assert!(!with("application/json"));
        assert!(!with("text/event"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc-web"));
        assert!(!is_stream(&HeaderMap::new()));
    }
}
