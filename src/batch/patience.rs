//! What a batch does with an item that failed for a transient reason: hold
//! it, and send it again when the provider may be back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::SmallRng;
use tokio::time::{Instant, Sleep};

use crate::retry::{
    scale, unit, Backoff, DEFAULT_SERVER_JITTER as JITTER, SERVER_JITTER_MAX as JITTER_MAX,
};
use crate::Error;

/// How long a batch waits for a provider that fails, before it gives its
/// items up. See the [module docs](super#patience).
///
/// Defaults ([`Patience::default`]): patient; an item that failed for a
/// transient reason is sent again after the error's
/// [`retry_after`](Error::retry_after) (plus up to 10 % of it, at most
/// 1 s, so that held items do not all come back at one instant), or when
/// the error names no wait, after a backoff of 1 s doubling up to 30 s
/// (equal jitter); the batch gives up once the provider has been failing
/// for 10 minutes with no success ([`give_up_after`](Self::give_up_after)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Patience {
    pub(super) give_up_after: Option<Duration>,
    pub(super) backoff: Backoff,
    pub(super) seed: u64,
}

/// The default of [`Patience::give_up_after`]: 10 minutes. Longer than the
/// outages that providers' status pages show most often (minutes), and
/// short enough that a job against a provider that is gone for good ends
/// within a coffee break with every item answered.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(600);

impl Default for Patience {
    fn default() -> Self {
        Patience {
            give_up_after: Some(DEFAULT_GIVE_UP_AFTER),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            seed: crate::retry::process_seed(),
        }
    }
}

impl Patience {
    /// The defaults above.
    pub fn new() -> Self {
        Patience::default()
    }

    /// No patience: every item ends with its first error, whatever its
    /// class (what an online caller wants; the stack's own retry layer
    /// still retries inside each call).
    pub fn fail_fast() -> Self {
        Patience {
            give_up_after: None,
            ..Patience::default()
        }
    }

    /// Ends every item still unanswered, with an error for which
    /// [`Error::is_gave_up`] is true, once the provider has been failing
    /// for `limit`: from the first transient failure after the latest
    /// success, with no success since and some item held (default
    /// [`DEFAULT_GIVE_UP_AFTER`], 10 min). A long job against a healthy
    /// provider never hits it, and slow calls do not either (the clock
    /// starts only with a failure). An item whose error asks for a wait
    /// longer than `limit` ends at once the same way: waiting a day for a
    /// per-day quota is not patience, it is a hang. A limit too long to
    /// add to an instant (`Duration::MAX`) never runs out.
    ///
    /// Calls still in flight when the limit passes are dropped and
    /// answered the same way, and so is every input the source yields
    /// after it, without being sent: giving up ends the run, even for a
    /// long-lived source such as a channel.
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = Some(limit);
        self
    }

    /// The wait before an item whose error named no wait is sent again
    /// (default 1 s doubling up to 30 s, equal jitter): the `n`-th hold of
    /// an item waits `backoff.wait(n)`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The seed of the resend jitter (default: drawn per batch, so that
    /// workers hit by one outage do not all come back at the same
    /// instants). Set it for a run that is the same every time (paused-time
    /// simulations).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether failed items may be held at all.
    pub(super) fn is_patient(&self) -> bool {
        self.give_up_after.is_some()
    }

    /// Whether `error` is worth waiting for: the provider (or the stack in
    /// front of it) may answer the same request later. True for every
    /// retryable class (rate limited, slow down, overloaded, server error,
    /// timeout, connect) and for the layers' decisions caused by them
    /// (circuit open, retry budget spent, deadline, rate-limit wait, store
    /// unavailable); false for what waiting will not change: quota
    /// exhausted, auth, permission, invalid request, context length, not
    /// found, over capacity, a server that said `x-should-retry: false`,
    /// and cancellation.
    pub(super) fn is_transient(error: &Error) -> bool {
        error.is_retryable() && !error.is_cancelled()
    }

    /// How long to hold an item whose `holds`-th failure is `error`
    /// (`holds` counts from 0), or `None` when the wait it asks for is past
    /// the batch's patience.
    pub(super) fn hold_for(
        &self,
        error: &Error,
        holds: u32,
        rng: &mut SmallRng,
    ) -> Option<Duration> {
        let limit = self.give_up_after?;
        let wait = match error.retry_after() {
            Some(wait) if wait > limit => return None,
            Some(wait) => {
                let jitter = scale(wait, JITTER * unit(rng)).min(JITTER_MAX);
                wait.saturating_add(jitter)
            }
            None => self.backoff.wait(holds, Duration::ZERO, rng),
        };
        // a hold longer than the patience could only end in giving up
        Some(wait.min(limit))
    }
}

/// An item held until it may be sent again (boxed timer: holds are rare,
/// and an `Unpin` future can be taken out of the set when the batch gives
/// up).
pub(super) struct Held<Req> {
    sleep: Pin<Box<Sleep>>,
    item: Option<HeldItem<Req>>,
    /// Whether the first success after failures sends it at once: not when
    /// the provider named the wait itself.
    wakes_on_success: bool,
}

/// A held item and what the batch knows of it.
pub(super) struct HeldItem<Req> {
    pub(super) index: u64,
    pub(super) request: Req,
    /// How many times it was held so far (for the backoff).
    pub(super) holds: u32,
    /// Its last error, answered if the batch gives it up.
    pub(super) last: Error,
}

impl<Req> Held<Req> {
    pub(super) fn new(item: HeldItem<Req>, until: Instant) -> Self {
        let last = &item.last;
        let wakes_on_success = last.retry_after().is_none() || last.is_circuit_open();
        Held {
            sleep: Box::pin(tokio::time::sleep_until(until)),
            item: Some(item),
            wakes_on_success,
        }
    }

    /// When it comes due.
    pub(super) fn due(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Makes it due at `at` if that is sooner, unless the provider named
    /// its wait (an open circuit's wait is the breaker's, not the
    /// provider's: it is cut short).
    pub(super) fn wake_at(&mut self, at: Instant) {
        if self.wakes_on_success && at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    /// The item, taken out (when the batch gives up or is cancelled).
    pub(super) fn into_item(self) -> Option<HeldItem<Req>> {
        self.item
    }
}

impl<Req> Unpin for Held<Req> {}

impl<Req> Future for Held<Req> {
    type Output = HeldItem<Req>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(self.item.take().expect("Held polled after completion"))
    }
}
