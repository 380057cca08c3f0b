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
//! - **progress**: a [`Progress`] snapshot after every change (done, failed,
//!   in flight, buffered, waiting on readiness), through a callback or
//!   [`Ordered::progress`];
//! - **cancellation**: with [`Batch::cancel_token`], cancelling stops the
//!   run early: calls in flight are dropped and each of their inputs gets an
//!   error whose class is [`ErrorClass::Cancelled`](crate::ErrorClass::Cancelled)
//!   ([`Error::is_cancelled`](crate::Error::is_cancelled)); inputs not yet
//!   started are not sent and are answered the same way (the source is
//!   drained, so give a finite source or drop the stream instead). Dropping
//!   the [`Ordered`] stream or the [`Batch::run`] future drops the calls in
//!   flight and reports nothing more.
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
mod progress;
mod stream;

pub use self::driver::Batch;
pub use self::progress::Progress;
pub use self::stream::Ordered;
