use std::fmt;
use std::sync::Arc;

use futures_core::Stream;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{BatchStream, Patience, Progress};
use crate::classify::{Classifier, Provider};
use crate::{BoxError, Error};

pub(super) type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Runs a batch of requests through a service with bounded concurrency and
/// returns the results in input order. See the [module docs](super).
///
/// Defaults: concurrency 16, reorder window 4 × concurrency, patient
/// ([`Patience::default`]: a transiently failed input is held and sent
/// again; the batch gives up after 10 minutes of failing), no
/// progress callback, no cancellation token, classifier [`Provider::Auto`]
/// (used only to classify the service's transport errors).
///
/// Inputs must be `Clone` (an `http::Request<B>` is when its body is), so
/// that a held input can be sent again.
pub struct Batch<S, C = Provider> {
    pub(super) service: S,
    pub(super) concurrency: usize,
    pub(super) reorder_window: Option<usize>,
    pub(super) on_progress: Option<ProgressFn>,
    pub(super) cancel: Option<CancellationToken>,
    pub(super) classifier: C,
    pub(super) patience: Patience,
}

impl<S> Batch<S> {
    /// A batch driver over `service` with the defaults above.
    pub fn new(service: S) -> Self {
        Batch {
            service,
            concurrency: 16,
            reorder_window: None,
            on_progress: None,
            cancel: None,
            classifier: Provider::Auto,
            patience: Patience::default(),
        }
    }
}

impl<S, C> Batch<S, C> {
    /// The most calls in flight at once (default 16; 0 is taken as 1).
    ///
    /// Set it to what the provider and the stack's rate limiter can
    /// usefully overlap; the limiter, not this number, keeps the run inside
    /// the quota.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many results the driver may hold ahead of the oldest unanswered
    /// input (default 4 × concurrency; never less than the concurrency).
    ///
    /// A slow item at the head keeps later results buffered so that they come
    /// out in order; this bound caps that buffer, and with it memory: when
    /// it is full, no new call starts until the head finishes.
    pub fn reorder_window(mut self, n: usize) -> Self {
        self.reorder_window = Some(n);
        self
    }

    /// Calls `f` with a [`Progress`] snapshot after every change (default:
    /// none). `f` runs inside the stream's `poll_next`: keep it short (update
    /// a progress bar, store the snapshot).
    pub fn on_progress<F>(mut self, f: F) -> Self
    where
        F: Fn(&Progress) + Send + Sync + 'static,
    {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Stops the run when `token` is cancelled (default: not cancellable
    /// except by dropping). Every input still gets exactly one result: those
    /// in flight or not yet started are answered with a cancelled
    /// [`Error`].
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// What the batch does with an input that failed for a transient
    /// reason (default [`Patience::default`]: hold it and send it again,
    /// give up after 10 minutes of failing; [`Patience::fail_fast`]
    /// answers every input with its first error). See the
    /// [module docs](super#patience).
    pub fn patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Classifies the service's own errors (default [`Provider::Auto`]).
    pub fn classifier<C2>(self, classifier: C2) -> Batch<S, C2> {
        Batch {
            service: self.service,
            concurrency: self.concurrency,
            reorder_window: self.reorder_window,
            on_progress: self.on_progress,
            cancel: self.cancel,
            classifier,
            patience: self.patience,
        }
    }

    /// A shared reference to the service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// A mutable reference to the service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// The service back.
    pub fn into_inner(self) -> S {
        self.service
    }

    /// The results of `requests`, as a stream in input order, each yielded
    /// as soon as every earlier one has been.
    pub fn stream<I>(
        self,
        requests: I,
    ) -> BatchStream<S, futures_util::stream::Iter<I::IntoIter>, C>
    where
        I: IntoIterator,
        I::Item: Clone,
        S: Service<I::Item>,
        S::Error: Into<BoxError>,
        C: Classifier,
    {
        BatchStream::new(self, futures_util::stream::iter(requests))
    }

    /// Like [`stream`](Self::stream), for requests that come from a
    /// [`Stream`] (a file being read, a channel).
    pub fn stream_from<St>(self, requests: St) -> BatchStream<S, St, C>
    where
        St: Stream,
        St::Item: Clone,
        S: Service<St::Item>,
        S::Error: Into<BoxError>,
        C: Classifier,
    {
        BatchStream::new(self, requests)
    }

    /// Runs every request and returns all results, in input order.
    pub async fn run<I>(self, requests: I) -> Vec<Result<S::Response, Error>>
    where
        I: IntoIterator,
        I::Item: Clone,
        S: Service<I::Item>,
        S::Error: Into<BoxError>,
        C: Classifier,
    {
        self.stream(requests).collect().await
    }

    /// Like [`run`](Self::run), for requests that come from a [`Stream`].
    pub async fn run_stream<St>(self, requests: St) -> Vec<Result<S::Response, Error>>
    where
        St: Stream,
        St::Item: Clone,
        S: Service<St::Item>,
        S::Error: Into<BoxError>,
        C: Classifier,
    {
        self.stream_from(requests).collect().await
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Batch<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("service", &self.service)
            .field("concurrency", &self.concurrency)
            .field("reorder_window", &self.reorder_window)
            .field("on_progress", &self.on_progress.is_some())
            .field("cancel", &self.cancel)
            .field("classifier", &self.classifier)
            .field("patience", &self.patience)
            .finish()
    }
}
