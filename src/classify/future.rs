use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{response::Parts, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{BodyPrefix, Classifier, PeekedBody};
use crate::stream::{BodyShape, StreamWatcher};

pin_project! {
    /// The response future of [`Classify`](super::Classify).
    pub struct ResponseFuture<F, C, B: Body> {
        #[pin]
        state: State<F, B>,
        classifier: C,
        max_body: usize,
        read_timeout: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Calling {
            #[pin]
            future: F,
        },
        // Boxed: the future of a response that is handed on at once (every
        // success that is not a stream) stays small and cheap to move.
        Reading {
            read: Pin<Box<BodyRead<B>>>,
        },
        Done,
    }
}

pin_project! {
    /// A response whose body is read before it is handed on: an error's
    /// prefix, or an event stream's first event. One allocation per such
    /// response, none per frame.
    struct BodyRead<B: Body> {
        #[pin]
        deadline: Sleep,
        parts: Option<Parts>,
        body: Option<B>,
        frames: Frames<B::Data>,
    }
}

/// The frames read so far, and what they are read for.
struct Frames<D> {
    read: VecDeque<Frame<D>>,
    max: usize,
    purpose: Purpose<D>,
}

enum Purpose<D> {
    /// An error body's prefix, for the classifier.
    Error { prefix: BytesMut },
    /// An event stream's first event (the watcher says what it is); the
    /// first frame is kept apart to hand it on first.
    Peek {
        watcher: StreamWatcher,
        first: Option<Frame<D>>,
    },
}

impl<D: Buf> Frames<D> {
    /// Whether to read another frame: bounded in bytes and in frames (a
    /// hostile body of empty frames must not grow the buffer or spin
    /// forever), and for a stream until its first event or failure.
    fn want_more(&self) -> bool {
        match &self.purpose {
            Purpose::Error { prefix } => prefix.len() < self.max && self.read.len() < MAX_FRAMES,
            Purpose::Peek { watcher, first } => {
                watcher.delivered() < self.max as u64
                    && self.read.len() + usize::from(first.is_some()) < MAX_FRAMES
                    && watcher.events() == 0
                    && watcher.failure().is_none()
            }
        }
    }

    fn push(&mut self, frame: Frame<D>) {
        match &mut self.purpose {
            Purpose::Error { prefix } => {
                if let Some(data) = frame.data_ref() {
                    copy_prefix(data, prefix, self.max);
                }
                self.read.push_back(frame);
            }
            Purpose::Peek { watcher, first } => {
                if let Some(data) = frame.data_ref() {
                    watcher.feed_buf(data);
                }
                match first {
                    None => *first = Some(frame),
                    Some(_) => self.read.push_back(frame),
                }
            }
        }
    }
}

/// How a bounded read ended.
struct ReadEnd<E> {
    /// The body ended (nothing is left to hand on).
    ended: bool,
    /// The body failed.
    error: Option<E>,
}

impl<F, C, B: Body> ResponseFuture<F, C, B> {
    pub(crate) fn new(future: F, classifier: C, max_body: usize, read_timeout: Duration) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            classifier,
            max_body,
            read_timeout,
        }
    }
}

impl<F, C, B: Body + std::fmt::Debug> std::fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Reading { ref read } => match read.frames.purpose {
                Purpose::Error { .. } => "reading error body",
                Purpose::Peek { .. } => "waiting for the first event",
            },
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// The most frames read from one error body (or from an event stream before
/// its first event), whatever their size.
const MAX_FRAMES: usize = 64;

fn copy_prefix<D: Buf>(data: &D, prefix: &mut BytesMut, max: usize) {
    let mut slices = [IoSlice::new(&[]); 8];
    let n = data.chunks_vectored(&mut slices);
    for slice in &slices[..n] {
        let room = max.saturating_sub(prefix.len());
        prefix.extend_from_slice(&slice[..slice.len().min(room)]);
    }
}

impl<F, B: Body> State<F, B> {
    /// The state that reads `response`'s body for `purpose` before it is
    /// handed on, for at most `timeout` and `max` bytes.
    fn reading(
        response: Response<B>,
        timeout: Duration,
        max: usize,
        purpose: Purpose<B::Data>,
    ) -> Self {
        let (parts, body) = response.into_parts();
        State::Reading {
            read: Box::pin(BodyRead {
                deadline: tokio::time::sleep(timeout),
                parts: Some(parts),
                body: Some(body),
                frames: Frames {
                    read: VecDeque::new(),
                    max,
                    purpose,
                },
            }),
        }
    }
}

/// Reads `body` into `frames` while they want more, until it ends, fails,
/// or stalls past `deadline` (then what came is used).
fn read_frames<B: Body + Unpin>(
    body: &mut Option<B>,
    mut deadline: Pin<&mut Sleep>,
    frames: &mut Frames<B::Data>,
    cx: &mut Context<'_>,
) -> Poll<ReadEnd<B::Error>> {
    let end = |ended, error| Poll::Ready(ReadEnd { ended, error });
    loop {
        let Some(b) = body.as_mut().filter(|_| frames.want_more()) else {
            return end(false, None);
        };
        if b.is_end_stream() {
            return end(true, None);
        }
        match Pin::new(b).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
            Poll::Ready(Some(Err(error))) => return end(false, Some(error)),
            Poll::Ready(None) => return end(true, None),
            Poll::Pending => {
                // A stalled body: what came is used.
                ready!(deadline.as_mut().poll(cx));
                return end(false, None);
            }
        }
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classifier,
    B: Body + Unpin,
{
    type Output = Result<Response<PeekedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    if !this.classifier.is_error_status(response.status()) {
                        if *this.max_body > 0
                            && BodyShape::of(response.headers()) == BodyShape::EventStream
                        {
                            // A stream is not a success yet: hold it until
                            // its first event says what it is.
                            let watcher =
                                StreamWatcher::new(BodyShape::EventStream).without_usage();
                            let purpose = Purpose::Peek {
                                watcher,
                                first: None,
                            };
                            this.state.set(State::reading(
                                response,
                                *this.read_timeout,
                                *this.max_body,
                                purpose,
                            ));
                            continue;
                        }
                        // Success: nothing to read, nothing stored (an
                        // extension costs allocations on every response);
                        // layers classify it from its headers.
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response.map(PeekedBody::new)));
                    }
                    if *this.max_body == 0 {
                        let c =
                            this.classifier
                                .classify(response.status(), response.headers(), None);
                        let mut response = response.map(PeekedBody::new);
                        response.extensions_mut().insert(c);
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                    let purpose = Purpose::Error {
                        prefix: BytesMut::new(),
                    };
                    this.state.set(State::reading(
                        response,
                        *this.read_timeout,
                        *this.max_body,
                        purpose,
                    ));
                }
                StateProj::Reading { read } => {
                    let read = read.as_mut().project();
                    let end = ready!(read_frames(read.body, read.deadline, read.frames, cx));
                    let Some(mut parts) = read.parts.take() else {
                        unreachable!("parts are taken once, as the state ends");
                    };
                    let frames = &mut *read.frames;
                    let first = match &mut frames.purpose {
                        Purpose::Error { prefix } => {
                            let c = this.classifier.classify(
                                parts.status,
                                &parts.headers,
                                Some(prefix),
                            );
                            parts.extensions.insert(c);
                            parts
                                .extensions
                                .insert(BodyPrefix(std::mem::take(prefix).freeze()));
                            None
                        }
                        Purpose::Peek { watcher, first } => {
                            if let Some(failure) = watcher.failure() {
                                // An error before anything reached the
                                // caller: the response is that error, which
                                // every layer sees (and the retry layer may
                                // retry).
                                let mut c =
                                    this.classifier.classify(parts.status, &parts.headers, None);
                                c.class = Some(failure.class);
                                c.code = failure.code;
                                parts.extensions.insert(c);
                                let mut prefix = BytesMut::new();
                                for frame in first.iter().chain(frames.read.iter()) {
                                    if let Some(data) = frame.data_ref() {
                                        copy_prefix(data, &mut prefix, frames.max);
                                    }
                                }
                                parts.extensions.insert(BodyPrefix(prefix.freeze()));
                            }
                            first.take()
                        }
                    };
                    let rest = if end.ended || end.error.is_some() {
                        None
                    } else {
                        read.body.take()
                    };
                    let read = std::mem::take(&mut frames.read);
                    let body = PeekedBody::from_parts(first, read, end.error, rest);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
