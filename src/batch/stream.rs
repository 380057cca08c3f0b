use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;

use super::call::{Done, Indexed};
use super::driver::{Batch, ProgressFn};
use super::patience::{Held, HeldItem, Patience};
use super::Progress;
use crate::classify::{Classification, Classifier};
use crate::{BoxError, Error, ErrorClass};

pin_project! {
    #[project = OrderedProj]
    /// The results of a batch run in input order: a [`Stream`] made by
    /// [`Batch::stream`] or [`Batch::stream_from`].
    ///
    /// It yields exactly one item per input, then ends.
    pub struct BatchStream<S, St, C>
    where
        St: Stream,
        S: Service<St::Item>,
    {
        service: S,
        #[pin]
        source: St,
        source_done: bool,
        queued: Option<Queued<St::Item>>,
        in_flight: FuturesUnordered<Indexed<S::Future, St::Item>>,
        // held items whose time has not come, and those whose time came
        held: FuturesUnordered<Held<St::Item>>,
        due: VecDeque<HeldItem<St::Item>>,
        // slot i holds the result of input `next_yield + i` once finished;
        // an empty slot is an input in flight, held, or queued again
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
        patience: Patience,
        rng: SmallRng,
        // the run's start, then the latest success (read only when patient)
        last_success: Option<Instant>,
        // the first transient failure since the latest success
        failing_since: Option<Instant>,
        last_failure: Option<Classification>,
        give_up: Option<Pin<Box<Sleep>>>,
        // set once the batch gave up: what is left is answered with it
        gave_up: Option<Classification>,
    }
}

/// An input waiting for the service to be ready: new from the source, or
/// held and due again (its slot and index are already taken).
enum Queued<Req> {
    New(Req),
    Again(HeldItem<Req>),
}

impl<S, St, C> BatchStream<S, St, C>
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
        BatchStream {
            service: batch.service,
            source,
            source_done: false,
            queued: None,
            in_flight: FuturesUnordered::new(),
            held: FuturesUnordered::new(),
            due: VecDeque::new(),
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
            patience: batch.patience,
            rng: SmallRng::seed_from_u64(batch.patience.seed),
            last_success: None,
            failing_since: None,
            last_failure: None,
            give_up: None,
            gave_up: None,
        }
    }
}

impl<S, St, C> BatchStream<S, St, C>
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

/// What to answer, and how to count it, when the run stops early
/// (cancelled, or given up with the last failure and the patience).
/// Built only on the paths of a stopped run, never stored.
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)]
enum Stop {
    Cancelled,
    GaveUp(Classification, Duration),
}

impl Stop {
    fn error(self) -> Error {
        match self {
            Stop::Cancelled => Error::cancelled(),
            Stop::GaveUp(c, patience) => Error::gave_up(c, patience),
        }
    }

    /// The error for a held item, keeping its last error as the source.
    fn error_for(self, last: Error) -> Error {
        match self {
            Stop::Cancelled => Error::cancelled(),
            Stop::GaveUp(_, patience) => {
                Error::gave_up(*last.classification(), patience).with_source(last)
            }
        }
    }

    fn count(self, p: &mut Progress, n: u64) {
        p.failed += n;
        p.buffered += n;
        match self {
            Stop::Cancelled => p.cancelled += n,
            Stop::GaveUp(..) => p.gave_up += n,
        }
    }
}

impl<S, St, C> Stream for BatchStream<S, St, C>
where
    St: Stream,
    St::Item: Clone,
    S: Service<St::Item>,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    type Item = Result<S::Response, Error>;

    /// One turn of the run: the steps below, in order, until the head's
    /// result is there or nothing more can happen now.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let before = *this.progress;
        let patient = this.patience.is_patient();
        if patient && this.last_success.is_none() {
            *this.last_success = Some(Instant::now());
        }
        this.poll_cancel(cx);
        let item = loop {
            if let Some(result) = this.pop_head() {
                break Poll::Ready(Some(result));
            }
            let mut progressed = this.start_calls(cx, patient);
            progressed |= this.collect_finished(cx, patient);
            progressed |= this.wake_due(cx);
            progressed |= this.poll_patience(cx);
            if !progressed {
                if this.is_drained() {
                    break Poll::Ready(None);
                }
                break Poll::Pending;
            }
        };
        this.report(before);
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = self.slots.len() + usize::from(matches!(self.queued, Some(Queued::New(_))));
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

impl<S, St, C> OrderedProj<'_, S, St, C>
where
    St: Stream,
    St::Item: Clone,
    S: Service<St::Item>,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    /// Stops the run once the cancellation token fires.
    fn poll_cancel(&mut self, cx: &mut Context<'_>) {
        if *self.cancelled {
            return;
        }
        if let Some(cancel) = self.cancel.as_mut() {
            if cancel.as_mut().poll(cx).is_ready() {
                *self.cancelled = true;
                self.stop_early(Stop::Cancelled);
            }
        }
    }

    /// Step 1: the head's result, if it is there.
    fn pop_head(&mut self) -> Option<Result<S::Response, Error>> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        let result = self.slots.pop_front().flatten().expect("checked");
        *self.next_yield += 1;
        self.progress.buffered -= 1;
        self.progress.yielded += 1;
        Some(result)
    }

    /// Whether the run stopped early.
    fn is_stopped(&self) -> bool {
        *self.cancelled || self.gave_up.is_some()
    }

    /// Why the run stopped early, if it did.
    fn stopped(&self) -> Option<Stop> {
        if *self.cancelled {
            Some(Stop::Cancelled)
        } else {
            self.gave_up
                .map(|c| Stop::GaveUp(c, self.patience.give_up_after.unwrap_or_default()))
        }
    }

    /// Step 2: starts calls while there is room: held items that came due
    /// before new inputs (they are older); once stopped, drains the source
    /// a window at a time. Whether anything changed.
    fn start_calls(&mut self, cx: &mut Context<'_>, patient: bool) -> bool {
        let stopped = self.is_stopped();
        let mut progressed = false;
        loop {
            if self.queued.is_none() {
                if let Some(item) = self.due.pop_front() {
                    *self.queued = Some(Queued::Again(item));
                } else if *self.source_done
                    || self.slots.len() >= *self.window
                    || (!stopped && self.in_flight.len() >= *self.concurrency)
                {
                    break;
                } else {
                    match self.source.as_mut().poll_next(cx) {
                        Poll::Pending => break,
                        Poll::Ready(None) => {
                            *self.source_done = true;
                            self.progress.source_done = true;
                            break;
                        }
                        Poll::Ready(Some(request)) => {
                            self.progress.submitted += 1;
                            if let Some(stop) = stopped.then(|| self.stopped()).flatten() {
                                // stopped: drain the source without sending
                                self.slots.push_back(Some(Err(stop.error())));
                                *self.next_index += 1;
                                stop.count(self.progress, 1);
                                progressed = true;
                                continue;
                            }
                            *self.queued = Some(Queued::New(request));
                            self.progress.queued = 1;
                        }
                    }
                }
            }
            if self.in_flight.len() >= *self.concurrency {
                break;
            }
            if matches!(self.queued, Some(Queued::New(_))) && self.slots.len() >= *self.window {
                break;
            }
            let ready = match self.service.poll_ready(cx) {
                Poll::Pending => {
                    self.progress.ready_waits += 1;
                    break;
                }
                Poll::Ready(ready) => ready,
            };
            let (index, request, holds) = match self.queued.take() {
                Some(Queued::New(request)) => {
                    self.progress.queued = 0;
                    let index = *self.next_index;
                    *self.next_index += 1;
                    self.slots.push_back(None);
                    (index, request, 0)
                }
                Some(Queued::Again(item)) => {
                    self.progress.held -= 1;
                    (item.index, item.request, item.holds)
                }
                None => unreachable!("queued above"),
            };
            progressed = true;
            match ready {
                Ok(()) => {
                    if holds > 0 {
                        self.progress.resent += 1;
                    }
                    let copy = patient.then(|| request.clone());
                    let future = self.service.call(request);
                    self.in_flight.push(Indexed {
                        future,
                        index,
                        copy,
                        holds,
                    });
                    self.progress.in_flight += 1;
                }
                Err(e) => {
                    // the service could not take this input: it is held
                    // when that may pass, else answered with the error;
                    // the next input asks the service again
                    let classifier = &*self.classifier;
                    let e = Error::from_transport(e, |e| classifier.classify_error(e));
                    if patient && Patience::is_transient(&e) {
                        self.hold(HeldItem {
                            index,
                            request,
                            holds,
                            last: e,
                        });
                    } else {
                        self.answer(index, Err(e));
                    }
                }
            }
        }
        progressed
    }

    /// Step 3: collects finished calls; holds what may succeed later.
    /// Whether anything changed.
    fn collect_finished(&mut self, cx: &mut Context<'_>, patient: bool) -> bool {
        let mut progressed = false;
        while let Poll::Ready(Some(done)) = self.in_flight.poll_next_unpin(cx) {
            progressed = true;
            let Done {
                index,
                result,
                copy,
                holds,
            } = done;
            self.progress.in_flight -= 1;
            let classifier = &*self.classifier;
            let result =
                result.map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)));
            let error = match result {
                Ok(response) => {
                    if patient {
                        self.succeeded();
                    }
                    self.progress.succeeded += 1;
                    self.progress.buffered += 1;
                    let slot = (index - *self.next_yield) as usize;
                    self.slots[slot] = Some(Ok(response));
                    continue;
                }
                Err(error) => error,
            };
            let transient = Patience::is_transient(&error);
            match (copy, transient) {
                (Some(request), true) => self.hold(HeldItem {
                    index,
                    request,
                    holds,
                    last: error,
                }),
                _ => self.answer(index, Err(error)),
            }
        }
        progressed
    }

    /// A success in a patient batch: the provider answers again, so what
    /// was held goes now, not at the end of its backoff or of the
    /// breaker's open time (the breaker, still half-open, lets through
    /// what it can and turns the rest back at no cost); a wait the
    /// provider named is kept.
    fn succeeded(&mut self) {
        let now = Instant::now();
        *self.last_success = Some(now);
        if self.failing_since.take().is_some() {
            for held in self.held.iter_mut() {
                held.wake_at(now);
            }
        }
    }

    /// Step 4: held items whose time came. Whether any did.
    fn wake_due(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        while let Poll::Ready(Some(item)) = self.held.poll_next_unpin(cx) {
            self.due.push_back(item);
            progressed = true;
        }
        progressed
    }

    /// Step 5: the batch's patience; gives up what is left once the
    /// provider has been failing for longer. Whether it gave up.
    fn poll_patience(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(limit), Some(last), None, false) = (
            self.patience.give_up_after,
            *self.last_success,
            *self.gave_up,
            *self.cancelled,
        ) else {
            return false;
        };
        // The clock runs from the first transient failure since the
        // latest success: slow calls alone never start it. A limit too
        // long to add to an instant never runs out.
        let since = self.failing_since.unwrap_or(last);
        let (true, Some(deadline)) = (self.progress.held > 0, since.checked_add(limit)) else {
            return false;
        };
        let timer = self
            .give_up
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let c = self
            .last_failure
            .unwrap_or_else(|| Classification::failure(ErrorClass::Other));
        *self.gave_up = Some(c);
        self.stop_early(Stop::GaveUp(c, limit));
        true
    }

    /// Whether every input has been answered and yielded.
    fn is_drained(&self) -> bool {
        *self.source_done
            && self.queued.is_none()
            && self.in_flight.is_empty()
            && self.held.is_empty()
            && self.due.is_empty()
            && self.slots.is_empty()
    }

    /// What the progress says of held items, and the callback when the
    /// progress changed since `before`.
    fn report(&mut self, before: Progress) {
        let p = &mut *self.progress;
        if p.held > 0 {
            let now = Instant::now();
            p.failing_for = self.failing_since.map(|s| now.saturating_duration_since(s));
            p.last_failure = self.last_failure.and_then(|c| c.class);
            p.next_resend_in = if self.due.is_empty() && self.queued.is_none() {
                self.held
                    .iter()
                    .map(Held::due)
                    .min()
                    .map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
        } else {
            p.failing_for = None;
            p.last_failure = None;
            p.next_resend_in = None;
        }
        if *p != before {
            if let Some(f) = self.on_progress.as_ref() {
                f(p);
            }
        }
    }

    /// Answers input `index` with `result`, a failure.
    fn answer(&mut self, index: u64, result: Result<S::Response, Error>) {
        let slot = (index - *self.next_yield) as usize;
        self.slots[slot] = Some(result);
        self.progress.failed += 1;
        self.progress.buffered += 1;
    }

    /// Holds `item`, which failed for a transient reason (its `holds`
    /// counts the holds before this one), until the wait its last error
    /// asks for, or answers it when that wait is past the batch's
    /// patience.
    fn hold(&mut self, mut item: HeldItem<St::Item>) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        *self.last_failure = Some(*item.last.classification());
        let slot = (item.index - *self.next_yield) as usize;
        let p = &mut *self.progress;
        match self.patience.hold_for(&item.last, item.holds, self.rng) {
            Some(wait) => {
                item.holds = item.holds.saturating_add(1);
                self.held.push(Held::new(item, far(now, wait)));
                p.held += 1;
            }
            None => {
                // it asks for a wait past the batch's patience
                let limit = self.patience.give_up_after.unwrap_or_default();
                let c = *item.last.classification();
                p.failed += 1;
                p.gave_up += 1;
                p.buffered += 1;
                self.slots[slot] = Some(Err(Error::gave_up(c, limit).with_source(item.last)));
            }
        }
    }

    /// Answers every input not yet answered with `stop`'s error: calls in
    /// flight are dropped, held ones keep their last error as the source,
    /// a queued new input gets a slot.
    fn stop_early(&mut self, stop: Stop) {
        let p = &mut *self.progress;
        let mut items: Vec<HeldItem<St::Item>> = std::mem::take(&mut *self.held)
            .into_iter()
            .filter_map(Held::into_item)
            .collect();
        items.extend(self.due.drain(..));
        match self.queued.take() {
            Some(Queued::Again(item)) => items.push(item),
            Some(Queued::New(_)) => {
                self.slots.push_back(Some(Err(stop.error())));
                *self.next_index += 1;
                p.queued = 0;
                stop.count(p, 1);
            }
            None => {}
        }
        let n = items.len() as u64;
        p.held -= n;
        stop.count(p, n);
        for item in items {
            let slot = (item.index - *self.next_yield) as usize;
            self.slots[slot] = Some(Err(stop.error_for(item.last)));
        }
        // what is left empty is exactly the calls in flight
        let n = self.in_flight.len() as u64;
        self.in_flight.clear();
        p.in_flight -= n;
        stop.count(p, n);
        for slot in self.slots.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(Err(stop.error()));
        }
    }
}

/// `now + wait`, or a day from now when that overflows.
fn far(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

impl<S, St, C> fmt::Debug for BatchStream<S, St, C>
where
    St: Stream,
    S: Service<St::Item>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchStream")
            .field("progress", &self.progress)
            .field("concurrency", &self.concurrency)
            .field("reorder_window", &self.window)
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}
