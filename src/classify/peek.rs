use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The bytes of an error body that [`ClassifyLayer`](super::ClassifyLayer)
/// read, stored in the response's extensions beside the
/// [`Classification`](super::Classification), so that an
/// [`Error`](crate::Error) made from the response can keep the provider's
/// message ([`Error::body`](crate::Error::body)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyPrefix(pub bytes::Bytes);

pin_project! {
    /// A response body whose first frames were read to classify it (an
    /// error response's prefix, an event stream's first event); it replays
    /// them, then streams the rest.
    ///
    /// For a successful response nothing was read and it is the inner body
    /// as it was, with no allocation; an event stream whose first event
    /// came in one frame keeps that frame inline, with no allocation either.
    pub struct PeekedBody<B: Body> {
        first: Option<Frame<B::Data>>,
        read: VecDeque<Frame<B::Data>>,
        error: Option<B::Error>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B: Body> PeekedBody<B> {
    /// The body untouched.
    pub fn new(body: B) -> Self {
        PeekedBody {
            first: None,
            read: VecDeque::new(),
            error: None,
            rest: Some(body),
        }
    }

    /// `first`, then `read`, then `error` or `rest`.
    pub(crate) fn from_parts(
        first: Option<Frame<B::Data>>,
        read: VecDeque<Frame<B::Data>>,
        error: Option<B::Error>,
        rest: Option<B>,
    ) -> Self {
        PeekedBody {
            first,
            read,
            error,
            rest,
        }
    }
}

impl<B: Body + fmt::Debug> fmt::Debug for PeekedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeekedBody")
            .field(
                "frames_read",
                &(usize::from(self.first.is_some()) + self.read.len()),
            )
            .field("failed", &self.error.is_some())
            .field("rest", &self.rest)
            .finish()
    }
}

impl<B: Body> Body for PeekedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(frame) = this.first.take().or_else(|| this.read.pop_front()) {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            this.rest.set(None);
            return Poll::Ready(Some(Err(error)));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && self.read.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .first
            .iter()
            .chain(&self.read)
            .filter_map(|f| f.data_ref())
            .map(|d| bytes::Buf::remaining(d) as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}
