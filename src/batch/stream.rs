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

use super::driver::{Batch, ProgressFn};
use super::patience::{Held, HeldItem, Patience};
use super::Progress;
use crate::classify::{Classification, Classifier};
use crate::{BoxError, Error, ErrorClass};

pin_project! {
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
/// (cancelled, or given up).
#[derive(Clone, Copy)]
enum Stop<'a> {
    Cancelled,
    GaveUp(&'a Classification, Duration),
}

impl Stop<'_> {
    fn error(self) -> Error {
        match self {
            Stop::Cancelled => Error::cancelled(),
            Stop::GaveUp(c, patience) => Error::gave_up(*c, patience),
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

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let before = *this.progress;
        let patient = this.patience.is_patient();
        if patient && this.last_success.is_none() {
            *this.last_success = Some(Instant::now());
        }

        if !*this.cancelled {
            if let Some(cancel) = this.cancel.as_mut() {
                if cancel.as_mut().poll(cx).is_ready() {
                    *this.cancelled = true;
                    stop_early(
                        Stop::Cancelled,
                        this.slots,
                        this.next_yield,
                        this.next_index,
                        this.queued,
                        this.in_flight,
                        this.held,
                        this.due,
                        this.progress,
                    );
                }
            }
        }

        let item = loop {
            let p = &mut *this.progress;
            // 1. the head's result, if it is there
            if let Some(Some(_)) = this.slots.front() {
                let result = this.slots.pop_front().flatten().expect("checked");
                *this.next_yield += 1;
                p.buffered -= 1;
                p.yielded += 1;
                break Poll::Ready(Some(result));
            }

            let mut progressed = false;
            let stop = if *this.cancelled {
                Some(Stop::Cancelled)
            } else {
                this.gave_up
                    .as_ref()
                    .map(|c| Stop::GaveUp(c, this.patience.give_up_after.unwrap_or_default()))
            };

            // 2. start calls while there is room: held items that came due
            // before new inputs (they are older); once stopped, drain the
            // source a window at a time
            loop {
                if this.queued.is_none() {
                    if let Some(item) = this.due.pop_front() {
                        *this.queued = Some(Queued::Again(item));
                    } else if *this.source_done
                        || this.slots.len() >= *this.window
                        || (stop.is_none() && this.in_flight.len() >= *this.concurrency)
                    {
                        break;
                    } else {
                        match this.source.as_mut().poll_next(cx) {
                            Poll::Pending => break,
                            Poll::Ready(None) => {
                                *this.source_done = true;
                                p.source_done = true;
                                break;
                            }
                            Poll::Ready(Some(request)) => {
                                p.submitted += 1;
                                if let Some(stop) = stop {
                                    // stopped: drain the source without sending
                                    this.slots.push_back(Some(Err(stop.error())));
                                    *this.next_index += 1;
                                    stop.count(p, 1);
                                    progressed = true;
                                    continue;
                                }
                                *this.queued = Some(Queued::New(request));
                                p.queued = 1;
                            }
                        }
                    }
                }
                if this.in_flight.len() >= *this.concurrency {
                    break;
                }
                if matches!(this.queued, Some(Queued::New(_))) && this.slots.len() >= *this.window {
                    break;
                }
                match this.service.poll_ready(cx) {
                    Poll::Pending => {
                        p.ready_waits += 1;
                        break;
                    }
                    Poll::Ready(ready) => {
                        let (index, request, holds) = match this.queued.take() {
                            Some(Queued::New(request)) => {
                                p.queued = 0;
                                let index = *this.next_index;
                                *this.next_index += 1;
                                this.slots.push_back(None);
                                (index, request, 0)
                            }
                            Some(Queued::Again(item)) => {
                                p.held -= 1;
                                (item.index, item.request, item.holds)
                            }
                            None => unreachable!("queued above"),
                        };
                        progressed = true;
                        let slot = (index - *this.next_yield) as usize;
                        match ready {
                            Ok(()) => {
                                if holds > 0 {
                                    p.resent += 1;
                                }
                                let copy = patient.then(|| request.clone());
                                let future = this.service.call(request);
                                this.in_flight.push(Indexed {
                                    future,
                                    index,
                                    copy,
                                    holds,
                                });
                                p.in_flight += 1;
                            }
                            Err(e) => {
                                // the service could not take this input: it is
                                // held when that may pass, else answered with
                                // the error; the next input asks the service
                                // again
                                let classifier = &*this.classifier;
                                let e = Error::from_transport(e, |e| classifier.classify_error(e));
                                if patient && Patience::is_transient(&e) {
                                    let now = Instant::now();
                                    this.failing_since.get_or_insert(now);
                                    *this.last_failure = Some(*e.classification());
                                    let item = HeldItem {
                                        index,
                                        request,
                                        holds,
                                        last: e,
                                    };
                                    hold(
                                        this.patience,
                                        this.rng,
                                        this.held,
                                        &mut this.slots[slot],
                                        p,
                                        item,
                                        now,
                                    );
                                } else {
                                    this.slots[slot] = Some(Err(e));
                                    p.failed += 1;
                                    p.buffered += 1;
                                }
                            }
                        }
                    }
                }
            }

            // 3. collect finished calls; hold what may succeed later
            while let Poll::Ready(Some(done)) = this.in_flight.poll_next_unpin(cx) {
                progressed = true;
                let Done {
                    index,
                    result,
                    copy,
                    holds,
                } = done;
                p.in_flight -= 1;
                let classifier = &*this.classifier;
                let result =
                    result.map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)));
                let slot = (index - *this.next_yield) as usize;
                let error = match result {
                    Ok(response) => {
                        if patient {
                            let now = Instant::now();
                            *this.last_success = Some(now);
                            // The provider answers again: what was held
                            // goes now, not at the end of its backoff or of
                            // the breaker's open time (the breaker, still
                            // half-open, lets through what it can and turns
                            // the rest back at no cost); a wait the
                            // provider named is kept.
                            if this.failing_since.take().is_some() {
                                for held in this.held.iter_mut() {
                                    held.wake_at(now);
                                }
                            }
                        }
                        p.succeeded += 1;
                        p.buffered += 1;
                        this.slots[slot] = Some(Ok(response));
                        continue;
                    }
                    Err(error) => error,
                };
                let transient = Patience::is_transient(&error);
                let (Some(request), true) = (copy, transient) else {
                    p.failed += 1;
                    p.buffered += 1;
                    this.slots[slot] = Some(Err(error));
                    continue;
                };
                let now = Instant::now();
                this.failing_since.get_or_insert(now);
                *this.last_failure = Some(*error.classification());
                let item = HeldItem {
                    index,
                    request,
                    holds,
                    last: error,
                };
                hold(
                    this.patience,
                    this.rng,
                    this.held,
                    &mut this.slots[slot],
                    p,
                    item,
                    now,
                );
            }

            // 4. held items whose time came
            while let Poll::Ready(Some(item)) = this.held.poll_next_unpin(cx) {
                this.due.push_back(item);
                progressed = true;
            }

            // 5. the batch's patience
            if let (Some(limit), Some(last), None, false) = (
                this.patience.give_up_after,
                *this.last_success,
                *this.gave_up,
                *this.cancelled,
            ) {
                // The clock runs from the first transient failure since the
                // latest success: slow calls alone never start it. A limit
                // too long to add to an instant never runs out.
                let since = this.failing_since.unwrap_or(last);
                if let (true, Some(deadline)) = (p.held > 0, since.checked_add(limit)) {
                    let timer = this
                        .give_up
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        let c = this
                            .last_failure
                            .unwrap_or_else(|| Classification::failure(ErrorClass::Other));
                        *this.gave_up = Some(c);
                        stop_early(
                            Stop::GaveUp(&c, limit),
                            this.slots,
                            this.next_yield,
                            this.next_index,
                            this.queued,
                            this.in_flight,
                            this.held,
                            this.due,
                            this.progress,
                        );
                        progressed = true;
                    }
                }
            }

            if !progressed {
                if *this.source_done
                    && this.queued.is_none()
                    && this.in_flight.is_empty()
                    && this.held.is_empty()
                    && this.due.is_empty()
                    && this.slots.is_empty()
                {
                    break Poll::Ready(None);
                }
                break Poll::Pending;
            }
        };

        let p = &mut *this.progress;
        if p.held > 0 {
            let now = Instant::now();
            p.failing_for = this.failing_since.map(|s| now.saturating_duration_since(s));
            p.last_failure = this.last_failure.and_then(|c| c.class);
            p.next_resend_in = if this.due.is_empty() && this.queued.is_none() {
                this.held
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
            if let Some(f) = this.on_progress.as_ref() {
                f(p);
            }
        }
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

/// Holds `item` (its `holds` counts the holds before this one) until the
/// wait its last error asks for, or answers it in `slot` when that wait is
/// past the batch's patience.
fn hold<Req, T>(
    patience: &Patience,
    rng: &mut SmallRng,
    held: &mut FuturesUnordered<Held<Req>>,
    slot: &mut Option<Result<T, Error>>,
    p: &mut Progress,
    mut item: HeldItem<Req>,
    now: Instant,
) {
    match patience.hold_for(&item.last, item.holds, rng) {
        Some(wait) => {
            item.holds = item.holds.saturating_add(1);
            held.push(Held::new(item, far(now, wait)));
            p.held += 1;
        }
        None => {
            // it asks for a wait past the batch's patience
            let limit = patience.give_up_after.unwrap_or_default();
            let c = *item.last.classification();
            p.failed += 1;
            p.gave_up += 1;
            p.buffered += 1;
            *slot = Some(Err(Error::gave_up(c, limit).with_source(item.last)));
        }
    }
}

/// `now + wait`, or a day from now when that overflows.
fn far(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Answers every input not yet answered with `stop`'s error: calls in
/// flight are dropped, held ones keep their last error as the source, a
/// queued new input gets a slot.
#[allow(clippy::too_many_arguments)]
fn stop_early<F, Req, T>(
    stop: Stop<'_>,
    slots: &mut VecDeque<Option<Result<T, Error>>>,
    next_yield: &u64,
    next_index: &mut u64,
    queued: &mut Option<Queued<Req>>,
    in_flight: &mut FuturesUnordered<Indexed<F, Req>>,
    held: &mut FuturesUnordered<Held<Req>>,
    due: &mut VecDeque<HeldItem<Req>>,
    p: &mut Progress,
) {
    let mut items: Vec<HeldItem<Req>> = std::mem::take(held)
        .into_iter()
        .filter_map(Held::into_item)
        .collect();
    items.extend(due.drain(..));
    match queued.take() {
        Some(Queued::Again(item)) => items.push(item),
        Some(Queued::New(_)) => {
            slots.push_back(Some(Err(stop.error())));
            *next_index += 1;
            p.queued = 0;
            stop.count(p, 1);
        }
        None => {}
    }
    let n = items.len() as u64;
    p.held -= n;
    stop.count(p, n);
    for item in items {
        let slot = (item.index - *next_yield) as usize;
        slots[slot] = Some(Err(stop.error_for(item.last)));
    }
    // what is left empty is exactly the calls in flight
    let n = in_flight.len() as u64;
    in_flight.clear();
    p.in_flight -= n;
    stop.count(p, n);
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = Some(Err(stop.error()));
    }
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

pin_project! {
    /// A call in flight, the index of its input, and (when the batch is
    /// patient) a copy of the input to send again.
    pub(super) struct Indexed<F, Req> {
        #[pin]
        future: F,
        index: u64,
        copy: Option<Req>,
        holds: u32,
    }
}

/// A finished call.
pub(super) struct Done<T, E, Req> {
    index: u64,
    result: Result<T, E>,
    copy: Option<Req>,
    holds: u32,
}

impl<F, T, E, Req> Future for Indexed<F, Req>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Done<T, E, Req>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        Poll::Ready(Done {
            index: *this.index,
            result,
            copy: this.copy.take(),
            holds: *this.holds,
        })
    }
}
