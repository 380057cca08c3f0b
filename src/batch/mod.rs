//! Run many requests through a service: bounded concurrency, results in
//! input order, every input answered exactly once.
//!
//! A classification job, an embedding backfill or an evaluation run sends
//! hundreds or thousands of independent requests. [`Batch`] drives them
//! through any tower [`Service`](tower::Service) (typically the crate's
//! whole stack) and guarantees:
//!
//! - **bounded concurrency**: at most [`Batch::concurrency`] calls in
//!   flight, and a call starts only after the service's `poll_ready` said
//!   yes, so a rate limiter or a breaker upstream applies backpressure;
//! - **input order**: the n-th result belongs to the n-th request, even when
//!   calls finish out of order; a bounded reorder buffer
//!   ([`Batch::reorder_window`]) stops the driver from running arbitrarily
//!   far ahead of a slow item;
//! - **exactly one result per input**: a response or a typed
//!   [`Error`](crate::Error), never dropped, never duplicated;
//! - **patience**: an input that failed for a transient reason is held and
//!   sent again when the provider may be back, so a provider outage costs
//!   time, not items (see [Patience](#patience));
//! - **progress**: a [`Progress`] snapshot after every change (done, failed,
//!   in flight, held, buffered, waiting on readiness, how long the provider
//!   has been failing), through a callback or [`BatchStream::progress`];
//! - **cancellation**: with [`Batch::cancel_token`], cancelling stops the
//!   run early: calls in flight are dropped and each of their inputs gets an
//!   error whose class is [`ErrorClass::Cancelled`](crate::ErrorClass::Cancelled)
//!   ([`Error::is_cancelled`](crate::Error::is_cancelled)); inputs not yet
//!   started are not sent and are answered the same way (the source is
//!   drained, so give a finite source or drop the stream instead). Dropping
//!   the [`BatchStream`] stream or the [`Batch::run`] future drops the calls in
//!   flight and reports nothing more.
//!
//! # Patience
//!
//! A batch would rather wait than fail: only a permanent error ends an
//! input early. With the default [`Patience`]:
//!
//! - an input whose error is **transient** (rate limited, slow down,
//!   overloaded, 5xx, timeout, connection failure, and the stack's own
//!   refusals caused by those: circuit open, retry budget spent, deadline,
//!   rate-limit wait, store unavailable) is **held** and sent again after
//!   the error's [`retry_after`](crate::Error::retry_after) (an open
//!   circuit says when it lets a probe through), or after a backoff
//!   (1 s doubling to 30 s) when it names none. While the provider is down,
//!   the circuit breaker of the stack turns held inputs back at no cost,
//!   and only its half-open probes reach the provider: a long outage costs
//!   a few requests per open interval, not a flood. The first success after
//!   failures sends every held input again at once;
//! - an input whose error is **permanent** (quota exhausted, invalid API
//!   key, permission, invalid request, context length, not found, over
//!   capacity, `x-should-retry: false`) is answered with it at once;
//! - the job's limit, [`Patience::give_up_after`] (default 10 min of
//!   failing: from the first transient failure since the latest success,
//!   with no success since), ends every input still
//!   unanswered with an error for which
//!   [`is_gave_up`](crate::Error::is_gave_up) is true, whose class and
//!   `retry_after` are the last failure's: a provider that never comes
//!   back ends the run, it does not hang it. An input told to wait longer
//!   than the limit (a per-day quota's "come back tomorrow") gives up at
//!   once the same way.
//!
//! Holding an input means sending it again, so inputs must be `Clone`
//! (`http::Request<B>` is when `B` is). An input whose connection broke
//! after the provider received it may have been served (and charged)
//! once already: LLM completions are safe to repeat, as the official SDKs
//! assume, but a call that is not (one that sends an e-mail from a tool)
//! belongs in a fail-fast batch.
//!
//! **Which to use when.** A batch job (classification, extraction,
//! embeddings backfill, evaluation) wants every item done: keep the default.
//! An online caller (a request handler, an agent step, a user waiting)
//! wants to know at once: call the stack directly, or use
//! [`Patience::fail_fast`]; the typed [`Error`](crate::Error) says whether
//! and when waiting helps.
//!
//! ```
//! use tower::service_fn;
//! use tower_llm_resilience::batch::Batch;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) });
//! let results = Batch::new(svc).concurrency(4).run(0..10u32).await;
//! let doubled: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
//! assert_eq!(doubled, (0..10).map(|n| n * 2).collect::<Vec<_>>());
//! # }
//! ```

mod driver;
mod patience;
mod progress;
mod stream;

pub use self::driver::Batch;
pub use self::patience::{Patience, DEFAULT_GIVE_UP_AFTER};
pub use self::progress::Progress;
pub use self::stream::BatchStream;
