use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::CONTENT_TYPE;
use http::{response::Parts, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{is_grpc, BodyPrefix, Classification, Classifier, PeekedBody};
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
        Reading {
            #[pin]
            deadline: Sleep,
            parts: Option<Parts>,
            body: Option<B>,
            read: VecDeque<Frame<B::Data>>,
            prefix: BytesMut,
        },
        Peeking {
            #[pin]
            deadline: Sleep,
            parts: Option<Parts>,
            body: Option<B>,
            peek: Box<Peek<B::Data>>,
            read: VecDeque<Frame<B::Data>>,
        },
        Done,
    }
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
            State::Reading { .. } => "reading error body",
            State::Peeking { .. } => "waiting for the first event",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// What an event stream's first frames said, boxed so that the future of
/// every other response stays small: one allocation per event-stream
/// response, none per frame.
struct Peek<D> {
    watcher: StreamWatcher,
    first: Option<Frame<D>>,
}

/// The failure a gRPC response reports in its headers (a trailers-only
/// response), by the classifier's [`Classifier::classify_trailers`],
/// completed with what [`Classifier::classify`] reads in the headers
/// (waits, rate limits).
fn trailers_only<C: Classifier, B>(
    classifier: &C,
    response: &Response<B>,
) -> Option<Classification> {
    let failure = classifier.classify_trailers(response.headers())?;
    let mut c = classifier.classify(response.status(), response.headers(), None);
    if c.class.is_none() {
        c.class = failure.class;
        c.code = failure.code;
        c.retry_after = failure.retry_after.or(c.retry_after);
        c.should_retry = failure.should_retry.or(c.should_retry);
    }
    Some(c)
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
                        let content_type = response.headers().get(CONTENT_TYPE);
                        if content_type.is_some_and(|v| is_grpc(v.as_bytes())) {
                            // A gRPC answer may carry its status in its
                            // headers (trailers-only): an error there is
                            // stored, for every layer to see.
                            let mut response = response.map(PeekedBody::new);
                            if let Some(c) = trailers_only(&*this.classifier, &response) {
                                response.extensions_mut().insert(c);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        if *this.max_body > 0
                            && BodyShape::of_content_type(content_type) == BodyShape::EventStream
                        {
                            // A stream is not a success yet: hold it until
                            // its first event says what it is.
                            let (parts, body) = response.into_parts();
                            this.state.set(State::Peeking {
                                deadline: tokio::time::sleep(*this.read_timeout),
                                parts: Some(parts),
                                body: Some(body),
                                peek: Box::new(Peek {
                                    watcher: StreamWatcher::new(BodyShape::EventStream)
                                        .without_usage(),
                                    first: None,
                                }),
                                read: VecDeque::new(),
                            });
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
                    let (parts, body) = response.into_parts();
                    this.state.set(State::Reading {
                        deadline: tokio::time::sleep(*this.read_timeout),
                        parts: Some(parts),
                        body: Some(body),
                        read: VecDeque::new(),
                        prefix: BytesMut::new(),
                    });
                }
                StateProj::Reading {
                    mut deadline,
                    parts,
                    body,
                    read,
                    prefix,
                } => {
                    let mut error = None;
                    let mut ended = false;
                    let max = *this.max_body;
                    // Bounded in bytes and in frames: a hostile body of empty
                    // frames must not grow the buffer or spin forever.
                    while let Some(b) = body
                        .as_mut()
                        .filter(|_| prefix.len() < max && read.len() < MAX_FRAMES)
                    {
                        if b.is_end_stream() {
                            ended = true;
                            break;
                        }
                        match Pin::new(b).poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Some(data) = frame.data_ref() {
                                    copy_prefix(data, prefix, max);
                                }
                                read.push_back(frame);
                            }
                            Poll::Ready(Some(Err(e))) => {
                                error = Some(e);
                                break;
                            }
                            Poll::Ready(None) => {
                                ended = true;
                                break;
                            }
                            Poll::Pending => {
                                // A stalled body: classify from what came.
                                ready!(deadline.as_mut().poll(cx));
                                break;
                            }
                        }
                    }
                    let Some(mut parts) = parts.take() else {
                        unreachable!("parts are taken once, as the state ends");
                    };
                    let c = this
                        .classifier
                        .classify(parts.status, &parts.headers, Some(prefix));
                    parts.extensions.insert(c);
                    parts
                        .extensions
                        .insert(BodyPrefix(std::mem::take(prefix).freeze()));
                    let rest = if ended || error.is_some() {
                        None
                    } else {
                        body.take()
                    };
                    let body = PeekedBody::from_parts(None, std::mem::take(read), error, rest);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::Peeking {
                    mut deadline,
                    parts,
                    body,
                    peek,
                    read,
                } => {
                    let Peek { watcher, first } = &mut **peek;
                    let mut error = None;
                    let mut ended = false;
                    let max = *this.max_body as u64;
                    // Bounded in bytes, frames and time (the read timeout):
                    // a stream that sends nothing, or only comments, is
                    // passed on as it is.
                    while let Some(b) = body.as_mut().filter(|_| {
                        watcher.delivered() < max
                            && read.len() + usize::from(first.is_some()) < MAX_FRAMES
                            && watcher.events() == 0
                            && watcher.failure().is_none()
                    }) {
                        if b.is_end_stream() {
                            ended = true;
                            break;
                        }
                        match Pin::new(b).poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Some(data) = frame.data_ref() {
                                    watcher.feed_buf(data);
                                }
                                match first {
                                    None => *first = Some(frame),
                                    Some(_) => read.push_back(frame),
                                }
                            }
                            Poll::Ready(Some(Err(e))) => {
                                error = Some(e);
                                break;
                            }
                            Poll::Ready(None) => {
                                ended = true;
                                break;
                            }
                            Poll::Pending => {
                                ready!(deadline.as_mut().poll(cx));
                                break;
                            }
                        }
                    }
                    let Some(mut parts) = parts.take() else {
                        unreachable!("parts are taken once, as the state ends");
                    };
                    if let Some(failure) = watcher.failure() {
                        // An error before anything reached the caller: the
                        // response is that error, which every layer sees
                        // (and the retry layer may retry).
                        let mut c = this.classifier.classify(parts.status, &parts.headers, None);
                        c.class = Some(failure.class);
                        c.code = failure.code;
                        parts.extensions.insert(c);
                        let mut prefix = BytesMut::new();
                        for frame in first.iter().chain(read.iter()) {
                            if let Some(data) = frame.data_ref() {
                                copy_prefix(data, &mut prefix, *this.max_body);
                            }
                        }
                        parts.extensions.insert(BodyPrefix(prefix.freeze()));
                    }
                    let rest = if ended || error.is_some() {
                        None
                    } else {
                        body.take()
                    };
                    let body =
                        PeekedBody::from_parts(first.take(), std::mem::take(read), error, rest);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
