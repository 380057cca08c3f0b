use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;

use super::driver::{Batch, ProgressFn};
use super::Progress;
use crate::classify::Classifier;
use crate::{BoxError, Error};

pin_project! {
    /// The results of a batch run in input order: a [`Stream`] made by
    /// [`Batch::stream`] or [`Batch::stream_from`].
    ///
    /// It yields exactly one item per input, then ends.
    pub struct Ordered<S, St, C>
    where
        St: Stream,
        S: Service<St::Item>,
    {
        service: S,
        #[pin]
        source: St,
        source_done: bool,
        queued: Option<St::Item>,
        in_flight: FuturesUnordered<Indexed<S::Future>>,
        // slot i holds the result of input `next_yield + i` once finished
        slots: VecDeque<Option<Result<S::Response, Error>>>,
        next_index: u64,
        next_yield: u64,
        concurrency: usize,
        window: usize,
        progress: Progress,
        on_progress: Option<ProgressFn>,
        cancel: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        cancelled: bool,
        classifier: C,
    }
}

impl<S, St, C> Ordered<S, St, C>
where
    St: Stream,
    S: Service<St::Item>,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    pub(super) fn new(batch: Batch<S, C>, source: St) -> Self {
        let concurrency = batch.concurrency.max(1);
        let window = batch
            .reorder_window
            .unwrap_or_else(|| concurrency.saturating_mul(4))
            .max(concurrency);
        Ordered {
            service: batch.service,
            source,
            source_done: false,
            queued: None,
            in_flight: FuturesUnordered::new(),
            slots: VecDeque::new(),
            next_index: 0,
            next_yield: 0,
            concurrency,
            window,
            progress: Progress::default(),
            on_progress: batch.on_progress,
            cancel: batch.cancel.map(|t| Box::pin(t.cancelled_owned())),
            cancelled: false,
            classifier: batch.classifier,
        }
    }
}

impl<S, St, C> Ordered<S, St, C>
where
    St: Stream,
    S: Service<St::Item>,
{
    /// The run's progress so far.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// A shared reference to the service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S, St, C> Stream for Ordered<S, St, C>
where
    St: Stream,
    S: Service<St::Item>,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    type Item = Result<S::Response, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let before = *this.progress;
        let p = this.progress;

        if !*this.cancelled {
            if let Some(cancel) = this.cancel.as_mut() {
                if cancel.as_mut().poll(cx).is_ready() {
                    *this.cancelled = true;
                    // every call in flight is dropped and answered "cancelled"
                    // an empty slot is exactly an input whose call is in flight
                    for slot in this.slots.iter_mut().filter(|s| s.is_none()) {
                        *slot = Some(Err(Error::cancelled()));
                    }
                    let n = this.in_flight.len() as u64;
                    this.in_flight.clear();
                    p.in_flight -= n;
                    p.failed += n;
                    p.cancelled += n;
                    p.buffered += n;
                    if this.queued.take().is_some() {
                        this.slots.push_back(Some(Err(Error::cancelled())));
                        *this.next_index += 1;
                        p.queued = 0;
                        p.failed += 1;
                        p.cancelled += 1;
                        p.buffered += 1;
                    }
                }
            }
        }

        let item = loop {
            // 1. the head's result, if it is there
            if let Some(Some(_)) = this.slots.front() {
                let result = this.slots.pop_front().flatten().expect("checked");
                *this.next_yield += 1;
                p.buffered -= 1;
                p.yielded += 1;
                break Poll::Ready(Some(result));
            }

            let mut progressed = false;

            // 2. start calls while there is room
            while !(*this.source_done && this.queued.is_none())
                && (*this.cancelled
                    || (this.in_flight.len() < *this.concurrency
                        && this.slots.len() < *this.window))
            {
                if this.queued.is_none() {
                    match this.source.as_mut().poll_next(cx) {
                        Poll::Pending => break,
                        Poll::Ready(None) => {
                            *this.source_done = true;
                            p.source_done = true;
                            break;
                        }
                        Poll::Ready(Some(request)) => {
                            p.submitted += 1;
                            if *this.cancelled {
                                // cancelled: drain the source without sending
                                this.slots.push_back(Some(Err(Error::cancelled())));
                                *this.next_index += 1;
                                p.failed += 1;
                                p.cancelled += 1;
                                p.buffered += 1;
                                progressed = true;
                                continue;
                            }
                            *this.queued = Some(request);
                            p.queued = 1;
                        }
                    }
                }
                match this.service.poll_ready(cx) {
                    Poll::Pending => {
                        p.ready_waits += 1;
                        break;
                    }
                    Poll::Ready(ready) => {
                        let request = this.queued.take().expect("queued above");
                        p.queued = 0;
                        let index = *this.next_index;
                        *this.next_index += 1;
                        progressed = true;
                        match ready {
                            Ok(()) => {
                                let future = this.service.call(request);
                                this.slots.push_back(None);
                                this.in_flight.push(Indexed { future, index });
                                p.in_flight += 1;
                            }
                            Err(e) => {
                                // the service could not take this input: it is
                                // answered with that error; the next input asks
                                // the service again
                                let classifier = &*this.classifier;
                                let e = Error::from_transport(e, |e| classifier.classify_error(e));
                                this.slots.push_back(Some(Err(e)));
                                p.failed += 1;
                                p.buffered += 1;
                            }
                        }
                    }
                }
            }

            // 3. collect finished calls
            while let Poll::Ready(Some((index, result))) = this.in_flight.poll_next_unpin(cx) {
                let classifier = &*this.classifier;
                let result =
                    result.map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)));
                p.in_flight -= 1;
                p.buffered += 1;
                if result.is_ok() {
                    p.succeeded += 1;
                } else {
                    p.failed += 1;
                }
                let slot = (index - *this.next_yield) as usize;
                this.slots[slot] = Some(result);
                progressed = true;
            }

            if !progressed {
                if *this.source_done
                    && this.queued.is_none()
                    && this.in_flight.is_empty()
                    && this.slots.is_empty()
                {
                    break Poll::Ready(None);
                }
                break Poll::Pending;
            }
        };

        if *p != before {
            if let Some(f) = this.on_progress.as_ref() {
                f(p);
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = self.slots.len() + usize::from(self.queued.is_some());
        let (lo, hi) = if self.source_done {
            (0, Some(0))
        } else {
            self.source.size_hint()
        };
        (
            pending.saturating_add(lo),
            hi.and_then(|h| h.checked_add(pending)),
        )
    }
}

impl<S, St, C> fmt::Debug for Ordered<S, St, C>
where
    St: Stream,
    S: Service<St::Item>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ordered")
            .field("progress", &self.progress)
            .field("concurrency", &self.concurrency)
            .field("reorder_window", &self.window)
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A call in flight and the index of its input.
    pub(super) struct Indexed<F> {
        #[pin]
        future: F,
        index: u64,
    }
}

impl<F, T, E> Future for Indexed<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = (u64, Result<T, E>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(|r| (*this.index, r))
    }
}
