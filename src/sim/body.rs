//! The body of the provider's answers: a whole body, or a stream of
//! server-sent events that arrive over time on tokio's clock.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::provider::State;
use super::served::StreamEnd;
use super::sse::{Plan, Schedule};

/// The body of a [`SimProvider`](super::SimProvider) answer: a whole JSON
/// body, or a stream of server-sent events (`"stream": true`), one event
/// per frame, each sent when it is due on tokio's clock (so paused time
/// drives it).
///
/// A stream's events are slices of one buffer rendered at admission;
/// sending one allocates nothing, and the timer between events is made
/// once per stream. A [`Fault::Truncate`](super::Fault::Truncate) stream
/// ends with an `io::Error` of kind `UnexpectedEof` (hyper then cuts the
/// connection).
pub struct SimBody {
    kind: Kind,
}

enum Kind {
    Whole(Option<Bytes>),
    Stream(Stream),
}

struct Stream {
    /// What is left to send.
    rest: Bytes,
    /// Events sent so far.
    sent: u32,
    began: Instant,
    schedule: Schedule,
    /// The latest due time known to have passed.
    passed: Duration,
    /// The timer of the next event, made when an event first has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// How the stream ends once its text is sent.
    end: StreamEnd,
    /// Whether the end was recorded (and no more frames come).
    ended: bool,
    /// Whether a cut stream has yielded before its error.
    cut_pending: bool,
    log: LogEntry,
}

/// Where the stream's progress goes: its entry in the provider's log.
struct LogEntry {
    state: Arc<Mutex<State>>,
    seq: usize,
}

impl LogEntry {
    fn record(&self, sent: u32, end: Option<StreamEnd>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = state.log.get_mut(self.seq).and_then(|s| s.stream.as_mut()) {
            stream.events_sent = sent;
            stream.end = end;
        }
    }
}

impl SimBody {
    pub(super) fn whole(bytes: Bytes) -> Self {
        SimBody {
            kind: Kind::Whole(Some(bytes)),
        }
    }

    /// The stream of `plan`, begun at `began`, recording its progress in
    /// the log entry `seq` of `state`.
    pub(super) fn stream(plan: Plan, began: Instant, state: Arc<Mutex<State>>, seq: u64) -> Self {
        SimBody {
            kind: Kind::Stream(Stream {
                rest: plan.text,
                sent: 0,
                began,
                schedule: plan.schedule,
                passed: Duration::ZERO,
                timer: None,
                end: plan.end,
                ended: false,
                cut_pending: false,
                log: LogEntry {
                    state,
                    seq: usize::try_from(seq).unwrap_or(usize::MAX),
                },
            }),
        }
    }

    /// Whether this is a stream of server-sent events.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream(_))
    }
}

impl Stream {
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.rest.is_empty() {
            // only a cut stream gets here: the others end with their last
            // event. Yield once first, so that hyper flushes what was sent
            // before the error closes the connection.
            if !self.cut_pending {
                self.cut_pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ended = true;
            self.log.record(self.sent, Some(self.end));
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "simulated truncated stream",
            ))));
        }
        let due = self.schedule.due(self.sent);
        if due > self.passed {
            let deadline = self.began.checked_add(due).unwrap_or_else(far_future);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            self.passed = due;
        }
        let len = memchr::memmem::find(&self.rest, b"\n\n").map_or(self.rest.len(), |i| i + 2);
        let event = self.rest.split_to(len);
        self.sent += 1;
        let end = (self.rest.is_empty() && self.end != StreamEnd::Truncated).then_some(self.end);
        self.ended = end.is_some();
        self.log.record(self.sent, end);
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

/// A deadline past any run (tokio's own "far future" is 30 years).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(stream) => stream.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Stream(stream) => stream.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // a cut stream sends less than its text: no exact size
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.ended {
            self.log.record(self.sent, Some(StreamEnd::Dropped));
        }
    }
}

impl fmt::Debug for SimBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Whole(bytes) => f
                .debug_struct("SimBody")
                .field("whole", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream(s) => f
                .debug_struct("SimBody")
                .field("events_sent", &s.sent)
                .field("bytes_left", &s.rest.len())
                .field("ended", &s.ended)
                .finish(),
        }
    }
}
