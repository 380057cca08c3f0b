//! The crate's one error type.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::classify::{BodyPrefix, Classification, ErrorClass};
use crate::key::Key;

/// A boxed error of any kind, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error every layer of this crate returns.
///
/// It is opaque: ask it what happened with [`class`](Self::class),
/// [`status`](Self::status), [`retry_after`](Self::retry_after) and the
/// `is_*` predicates, never by matching its message. The failure of an inner
/// service is kept as the [`source`](std::error::Error::source).
///
/// Two families of errors share the type:
///
/// - **The provider's**: it answered with an error status
///   ([`is_response`](Self::is_response)), the transport failed
///   ([`is_transport`](Self::is_transport)), or a response body failed
///   after the response began ([`is_stream_failure`](Self::is_stream_failure):
///   an error event, a truncated, broken or stalled stream, with the bytes
///   [`delivered`](Self::delivered) before it); the class says what that
///   means.
/// - **A layer's own decision**: the rate limiter cannot admit the request
///   ([`is_over_capacity`](Self::is_over_capacity),
///   [`is_rate_limit_timeout`](Self::is_rate_limit_timeout)), the retry
///   layer stops ([`is_retry_after_too_long`](Self::is_retry_after_too_long),
///   [`is_retry_budget_exhausted`](Self::is_retry_budget_exhausted),
///   [`is_deadline_exceeded`](Self::is_deadline_exceeded),
///   [`is_body_too_large`](Self::is_body_too_large),
///   [`is_body_unreadable`](Self::is_body_unreadable)), or the breaker is open
///   ([`is_circuit_open`](Self::is_circuit_open)). These still carry the
///   class of the provider's state that caused them (a breaker opened by
///   `insufficient_quota` says [`ErrorClass::QuotaExhausted`]).
///
/// [`retry_after`](Self::retry_after) answers "would waiting help, and how
/// long": `Some` when a server or a layer knows when the call may succeed.
///
/// The error never holds request headers, so an API key cannot leak through
/// its `Debug` or `Display`.
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: Kind,
    classification: Classification,
    source: Option<BoxError>,
    body: Option<Bytes>,
    /// The key (and model) of the attempt that failed, when a rate
    /// limiter sent it.
    origin: Option<Origin>,
}

/// Which key and model an attempt was for: set by the rate limiter on the
/// errors it returns and (as an extension) on the failed responses it
/// passes on, so that the layers above can say it in their events.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) key: Key,
    pub(crate) model: Option<Key>,
}

impl Origin {
    /// The model: the one the key names, else the one read from the
    /// request.
    pub(crate) fn model(&self) -> Option<&str> {
        self.key
            .model()
            .or_else(|| self.model.as_ref().and_then(Key::as_str))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The provider answered with an error status.
    Response,
    /// The inner service failed before a response.
    Transport,
    /// The request's cost exceeds what the window can ever admit.
    OverCapacity { cost: u64, capacity: u64 },
    /// The request would wait for the limiter longer than allowed.
    RateLimitTimeout { wait: Duration },
    /// The server asked to wait longer than the retry cap.
    RetryAfterTooLong { cap: Duration },
    /// The shared retry budget is spent.
    RetryBudgetExhausted,
    /// The next attempt could not start before the overall deadline.
    DeadlineExceeded,
    /// A body to replay was larger than the buffering cap.
    BodyTooLarge { limit: usize },
    /// A body to replay failed while it was read; the body's error is the
    /// source.
    BodyUnreadable,
    /// The circuit breaker of the request's key is open.
    CircuitOpen,
    /// The shared store (e.g. Redis) could not be reached.
    StoreUnavailable,
    /// The caller cancelled the call before it finished (batch driver).
    Cancelled,
    /// A patient batch ran out of patience: no success for this long, or
    /// the provider asked to wait longer than that.
    GaveUp { patience: Duration },
    /// The limiter's in-memory store holds as many keys as it may, all of
    /// them still counting usage: a new key cannot be admitted.
    TooManyKeys { max: usize },
    /// A response body failed after the response began: `delivered` bytes
    /// of it had reached the caller.
    Stream { delivered: u64, cause: StreamCause },
}

/// What ended a response body early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamCause {
    /// The provider sent an error event (or an error object) in the body.
    ErrorEvent,
    /// The body ended without its format's terminator.
    Truncated,
    /// Reading the body failed (a reset, a broken connection); the inner
    /// error is the source.
    Body,
    /// No frame came for this long.
    Idle { idle: Duration },
}

impl Error {
    fn new(kind: Kind, classification: Classification) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                classification,
                source: None,
                body: None,
                origin: None,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// An error response from the provider, as classified.
    ///
    /// A layer uses this to turn a final error response into an `Err`; the
    /// classification keeps the status, the server's wait and the
    /// rate-limit headers.
    pub fn from_response(classification: Classification) -> Self {
        let mut c = classification;
        c.class.get_or_insert(ErrorClass::Other);
        Error::new(Kind::Response, c)
    }

    /// An error response from the provider: its classification (stored by
    /// [`ClassifyLayer`](crate::classify::ClassifyLayer), else made by
    /// `classifier` from the status and headers) and the body prefix that
    /// layer read, so that the provider's message is not lost.
    pub fn from_error_response<B>(
        response: &Response<B>,
        classifier: &impl crate::Classifier,
    ) -> Self {
        let mut error = Error::from_response(classifier.classify_response(response));
        if let Some(BodyPrefix(body)) = response.extensions().get::<BodyPrefix>() {
            error.inner.body = Some(body.clone());
        }
        error.inner.origin = response.extensions().get::<Origin>().cloned();
        error
    }

    /// The key of the attempt that failed, when a rate limiter sent it
    /// (its [`KeyFn`](crate::KeyFn)'s key): which quota, model or tenant
    /// the error concerns.
    pub fn key(&self) -> Option<&Key> {
        self.inner.origin.as_ref().map(|o| &o.key)
    }

    /// The model of the attempt that failed, when known: the one its
    /// [`key`](Self::key) names ([`Key::model`]), else the body's
    /// `"model"` as the limiter read it while its events were observed.
    pub fn model(&self) -> Option<&str> {
        self.inner.origin.as_ref().and_then(Origin::model)
    }

    /// Where the failed attempt came from (see [`Origin`]).
    pub(crate) fn origin(&self) -> Option<&Origin> {
        self.inner.origin.as_ref()
    }

    /// Marks the error with the attempt's key and model, unless a layer
    /// below already did.
    pub(crate) fn with_origin(mut self, key: &Key, model: Option<&Key>) -> Self {
        if self.inner.origin.is_none() {
            self.inner.origin = Some(Origin {
                key: key.clone(),
                model: model.cloned(),
            });
        }
        self
    }

    /// The first bytes of the provider's error body (up to the
    /// [`ClassifyLayer`](crate::classify::ClassifyLayer)'s cap), when the
    /// error came from a response that layer read.
    pub fn body(&self) -> Option<&[u8]> {
        self.inner.body.as_deref()
    }

    /// A transport failure of the inner service, with its class (see
    /// [`Classifier::classify_error`](crate::classify::Classifier::classify_error)).
    ///
    /// When `error` already is (or boxes) this crate's `Error`, it is
    /// returned as it is, so that errors pass through stacked layers
    /// unchanged.
    pub fn from_transport(
        error: impl Into<BoxError>,
        classify: impl FnOnce(&(dyn std::error::Error + 'static)) -> Classification,
    ) -> Self {
        let error: BoxError = error.into();
        match error.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => {
                let mut c = classify(&*other);
                c.class.get_or_insert(ErrorClass::Other);
                Error::new(Kind::Transport, c).with_source(other)
            }
        }
    }

    pub(crate) fn over_capacity(cost: u64, capacity: u64) -> Self {
        Error::new(
            Kind::OverCapacity { cost, capacity },
            Classification::failure(ErrorClass::InvalidRequest),
        )
    }

    pub(crate) fn rate_limit_timeout(wait: Duration) -> Self {
        Error::new(
            Kind::RateLimitTimeout { wait },
            Classification::failure(ErrorClass::RateLimited).with_retry_after(wait),
        )
    }

    pub(crate) fn retry_after_too_long(last: Classification, cap: Duration) -> Self {
        Error::new(Kind::RetryAfterTooLong { cap }, last)
    }

    pub(crate) fn retry_budget_exhausted(last: Classification) -> Self {
        Error::new(Kind::RetryBudgetExhausted, last)
    }

    pub(crate) fn deadline_exceeded(last: Classification) -> Self {
        Error::new(Kind::DeadlineExceeded, last)
    }

    pub(crate) fn body_too_large(limit: usize) -> Self {
        Error::new(
            Kind::BodyTooLarge { limit },
            Classification::failure(ErrorClass::InvalidRequest),
        )
    }

    pub(crate) fn body_unreadable(source: BoxError) -> Self {
        Error::new(
            Kind::BodyUnreadable,
            Classification::failure(ErrorClass::InvalidRequest),
        )
        .with_source(source)
    }

    pub(crate) fn circuit_open(class: ErrorClass, retry_after: Option<Duration>) -> Self {
        let mut c = Classification::failure(class);
        c.retry_after = retry_after;
        Error::new(Kind::CircuitOpen, c)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis store's
    pub(crate) fn store_unavailable(source: impl Into<BoxError>) -> Self {
        Error::new(
            Kind::StoreUnavailable,
            Classification::failure(ErrorClass::Connect),
        )
        .with_source(source)
    }

    pub(crate) fn cancelled() -> Self {
        Error::new(
            Kind::Cancelled,
            Classification::failure(ErrorClass::Cancelled),
        )
    }

    /// A batch item ended by the batch's patience
    /// ([`Patience::give_up_after`](crate::batch::Patience::give_up_after)):
    /// `last` is what the provider or the stack last said about the item
    /// (or about the batch, for an item never sent). Its classification is
    /// kept, so [`class`](Self::class) and [`retry_after`](Self::retry_after)
    /// still say why and when.
    pub(crate) fn gave_up(last: Classification, patience: Duration) -> Self {
        Error::new(Kind::GaveUp { patience }, last)
    }

    /// The provider reported an error inside a successful response's body
    /// (see [`stream`](crate::stream)).
    pub(crate) fn stream_error_event(
        failure: crate::stream::StreamFailure,
        delivered: u64,
    ) -> Self {
        let mut c = Classification::failure(failure.class);
        c.code = failure.code;
        Error::new(
            Kind::Stream {
                delivered,
                cause: StreamCause::ErrorEvent,
            },
            c,
        )
    }

    /// An event stream ended without its terminator.
    pub(crate) fn stream_truncated(delivered: u64) -> Self {
        Error::new(
            Kind::Stream {
                delivered,
                cause: StreamCause::Truncated,
            },
            Classification::failure(ErrorClass::ServerError),
        )
    }

    /// Reading a response body failed: `source` is the body's error, with
    /// its classification (a crate error that is already a stream failure
    /// is returned as it is).
    pub(crate) fn stream_broken(
        source: BoxError,
        delivered: u64,
        classify: impl FnOnce(&BoxError) -> Classification,
    ) -> Self {
        let classification = match source.downcast_ref::<Error>() {
            Some(ours) if ours.is_stream_failure() => {
                return *source
                    .downcast::<Error>()
                    .unwrap_or_else(|_| unreachable!())
            }
            Some(ours) => *ours.classification(),
            None => classify(&source),
        };
        let mut c = classification;
        c.class.get_or_insert(ErrorClass::Other);
        Error::new(
            Kind::Stream {
                delivered,
                cause: StreamCause::Body,
            },
            c,
        )
        .with_source(source)
    }

    /// No frame of a response body came for `idle`.
    pub(crate) fn stream_idle(idle: Duration, delivered: u64) -> Self {
        Error::new(
            Kind::Stream {
                delivered,
                cause: StreamCause::Idle { idle },
            },
            Classification::failure(ErrorClass::Timeout),
        )
    }

    pub(crate) fn too_many_keys(max: usize, retry_after: Duration) -> Self {
        Error::new(
            Kind::TooManyKeys { max },
            Classification::failure(ErrorClass::RateLimited).with_retry_after(retry_after),
        )
    }

    /// What went wrong, in the crate's taxonomy.
    pub fn class(&self) -> ErrorClass {
        self.inner.classification.class.unwrap_or(ErrorClass::Other)
    }

    /// The provider's status, when the error comes from (or was caused by) a
    /// response.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.classification.status
    }

    /// How long to wait before the call may succeed, when anyone knows: the
    /// server's `Retry-After` (even when it was above the retry cap), the
    /// time until an open breaker half-opens or a quota resets, or the
    /// limiter's wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.classification.retry_after
    }

    /// The full classification behind the error: status, class, the
    /// server's wait, its rate-limit headers and the provider's error code.
    pub fn classification(&self) -> &Classification {
        &self.inner.classification
    }

    /// The provider's error code that decided the class, such as
    /// `"insufficient_quota"`.
    pub fn code(&self) -> Option<&'static str> {
        self.inner.classification.code
    }

    /// Whether sending the same request again may succeed. `false` for every
    /// layer decision that waiting will not change (over capacity, body too
    /// large) and for non-retryable classes.
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            Kind::OverCapacity { .. } | Kind::BodyTooLarge { .. } | Kind::BodyUnreadable => false,
            Kind::RateLimitTimeout { .. }
            | Kind::RetryAfterTooLong { .. }
            | Kind::RetryBudgetExhausted
            | Kind::DeadlineExceeded
            | Kind::CircuitOpen
            | Kind::StoreUnavailable
            | Kind::Cancelled
            | Kind::GaveUp { .. }
            | Kind::TooManyKeys { .. }
            | Kind::Stream { .. } => self.class().is_retryable(),
            Kind::Response | Kind::Transport => self.inner.classification.is_retryable(),
        }
    }

    /// The provider answered with an error status.
    pub fn is_response(&self) -> bool {
        self.inner.kind == Kind::Response
    }

    /// The inner service failed before any response (connection, timeout).
    pub fn is_transport(&self) -> bool {
        self.inner.kind == Kind::Transport
    }

    /// The class is [`ErrorClass::RateLimited`] or [`ErrorClass::SlowDown`].
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.class(), ErrorClass::RateLimited | ErrorClass::SlowDown)
    }

    /// The class is [`ErrorClass::QuotaExhausted`].
    pub fn is_quota_exhausted(&self) -> bool {
        self.class() == ErrorClass::QuotaExhausted
    }

    /// The class is [`ErrorClass::Overloaded`].
    pub fn is_overloaded(&self) -> bool {
        self.class() == ErrorClass::Overloaded
    }

    /// The class is [`ErrorClass::ServerError`].
    pub fn is_server_error(&self) -> bool {
        self.class() == ErrorClass::ServerError
    }

    /// The class is [`ErrorClass::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.class() == ErrorClass::Timeout
    }

    /// The class is [`ErrorClass::Connect`].
    pub fn is_connect(&self) -> bool {
        self.class() == ErrorClass::Connect
    }

    /// The class is [`ErrorClass::Auth`] or [`ErrorClass::Permission`].
    pub fn is_auth(&self) -> bool {
        matches!(self.class(), ErrorClass::Auth | ErrorClass::Permission)
    }

    /// The class is [`ErrorClass::InvalidRequest`] or
    /// [`ErrorClass::ContextLengthExceeded`]: the request must change.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::InvalidRequest | ErrorClass::ContextLengthExceeded
        )
    }

    /// The class is [`ErrorClass::ContextLengthExceeded`].
    pub fn is_context_length_exceeded(&self) -> bool {
        self.class() == ErrorClass::ContextLengthExceeded
    }

    /// The limiter refused a request whose cost exceeds what its window can
    /// ever admit; it would wait forever, so it fails at once.
    pub fn is_over_capacity(&self) -> bool {
        matches!(self.inner.kind, Kind::OverCapacity { .. })
    }

    /// The request would have waited for the limiter longer than its
    /// configured maximum; [`retry_after`](Self::retry_after) says how long.
    pub fn is_rate_limit_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::RateLimitTimeout { .. })
    }

    /// The server asked for a wait above the retry layer's cap; the wait it
    /// asked for is in [`retry_after`](Self::retry_after).
    pub fn is_retry_after_too_long(&self) -> bool {
        matches!(self.inner.kind, Kind::RetryAfterTooLong { .. })
    }

    /// The retry budget shared by the service's clones is spent.
    pub fn is_retry_budget_exhausted(&self) -> bool {
        self.inner.kind == Kind::RetryBudgetExhausted
    }

    /// No further attempt could start before the overall deadline.
    pub fn is_deadline_exceeded(&self) -> bool {
        self.inner.kind == Kind::DeadlineExceeded
    }

    /// A request body to buffer for replay was larger than the cap.
    pub fn is_body_too_large(&self) -> bool {
        matches!(self.inner.kind, Kind::BodyTooLarge { .. })
    }

    /// A request body to buffer for replay failed while it was read (the
    /// caller's stream broke; the body's error is the
    /// [`source`](std::error::Error::source)). Its class is
    /// [`ErrorClass::InvalidRequest`]: the request cannot be sent, and the
    /// body is gone, so it is not retryable.
    pub fn is_body_unreadable(&self) -> bool {
        self.inner.kind == Kind::BodyUnreadable
    }

    /// The circuit breaker refused the call without sending it.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == Kind::CircuitOpen
    }

    /// A shared store (such as Redis) could not be reached.
    pub fn is_store_unavailable(&self) -> bool {
        self.inner.kind == Kind::StoreUnavailable
    }

    /// The caller cancelled the call (e.g. a [`batch`](crate::batch) run's
    /// cancellation token fired) before it finished.
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == Kind::Cancelled
    }

    /// A patient [`batch`](crate::batch) gave the item up: the provider
    /// did not recover within the batch's
    /// [`give_up_after`](crate::batch::Patience::give_up_after), or asked
    /// to wait longer than that. [`class`](Self::class) is the last
    /// failure's, and the last error is the [`source`](std::error::Error::source)
    /// when the item was sent at all.
    pub fn is_gave_up(&self) -> bool {
        matches!(self.inner.kind, Kind::GaveUp { .. })
    }

    /// The rate limiter's in-memory store could not take the request's key:
    /// it already holds its hard bound of keys (4 times
    /// [`max_keys`](crate::rate_limit::MemoryStore::max_keys)), every one
    /// of them still counting usage, which it never forgets to make room.
    /// Class [`ErrorClass::RateLimited`]; [`retry_after`](Self::retry_after)
    /// says when the first held key may go.
    pub fn is_too_many_keys(&self) -> bool {
        matches!(self.inner.kind, Kind::TooManyKeys { .. })
    }

    /// A response body failed after the response began (its status and
    /// headers had arrived): the provider sent an error event, the stream
    /// was truncated, broke or stalled. [`class`](Self::class) says which
    /// failure it was (`overloaded`, `server_error`, `connect`,
    /// `timeout`...) and [`delivered`](Self::delivered) how much of the
    /// body the caller had received. See [`stream`](crate::stream).
    pub fn is_stream_failure(&self) -> bool {
        matches!(self.inner.kind, Kind::Stream { .. })
    }

    /// For a [stream failure](Self::is_stream_failure): how many bytes of
    /// the body reached the caller before it failed. Retrying is safe for
    /// the caller only when this is 0 (nothing was shown yet).
    pub fn delivered(&self) -> Option<u64> {
        match self.inner.kind {
            Kind::Stream { delivered, .. } => Some(delivered),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.classification;
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("class", &self.class());
        if let Some(status) = c.status {
            d.field("status", &status);
        }
        if let Some(wait) = c.retry_after {
            d.field("retry_after", &wait);
        }
        if let Some(code) = c.code {
            d.field("code", &code);
        }
        if let Some(body) = &self.inner.body {
            d.field("body_len", &body.len());
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.classification;
        let class = self.class();
        match self.inner.kind {
            Kind::Response => match c.status {
                Some(status) => write!(f, "provider answered {status} ({class}")?,
                None => write!(f, "provider answered with an error ({class}")?,
            },
            Kind::Transport => write!(f, "request failed before a response ({class}")?,
            Kind::OverCapacity { cost, capacity } => {
                return write!(
                    f,
                    "request cost {cost} exceeds the rate limit's whole window capacity {capacity}; it can never be admitted"
                )
            }
            Kind::RateLimitTimeout { wait } => {
                return write!(
                    f,
                    "rate limit: admission would wait {}, longer than the configured maximum",
                    Secs(wait)
                )
            }
            Kind::RetryAfterTooLong { cap } => {
                write!(f, "server asked to wait longer than the retry cap {} ({class}", Secs(cap))?
            }
            Kind::RetryBudgetExhausted => write!(f, "retry budget exhausted ({class}")?,
            Kind::DeadlineExceeded => {
                write!(f, "deadline exceeded before the next attempt ({class}")?
            }
            Kind::BodyTooLarge { limit } => {
                return write!(f, "request body larger than the {limit}-byte replay buffer")
            }
            Kind::BodyUnreadable => {
                return f.write_str("request body could not be read into the replay buffer")
            }
            Kind::CircuitOpen => write!(f, "circuit breaker open ({class}")?,
            Kind::StoreUnavailable => return f.write_str("rate-limit store unavailable"),
            Kind::Cancelled => return f.write_str("cancelled before it finished"),
            Kind::GaveUp { patience } => write!(
                f,
                "batch gave up: the provider did not recover within its patience of {}, or asked to wait longer ({class}",
                Secs(patience)
            )?,
            Kind::TooManyKeys { max } => {
                return write!(
                    f,
                    "rate limit: the store already holds {max} keys, all still counting usage; a new key must wait, retry after {}",
                    Secs(c.retry_after.unwrap_or_default())
                )
            }
            Kind::Stream { delivered, cause } => match cause {
                StreamCause::ErrorEvent => write!(
                    f,
                    "stream failed after {delivered} bytes: the provider sent an error event ({class}"
                )?,
                StreamCause::Truncated => write!(
                    f,
                    "stream truncated after {delivered} bytes: it ended without its terminator ({class}"
                )?,
                StreamCause::Body => {
                    write!(f, "stream broke after {delivered} bytes ({class}")?
                }
                StreamCause::Idle { idle } => write!(
                    f,
                    "stream idle for {} after {delivered} bytes ({class}",
                    Secs(idle)
                )?,
            },
        }
        if let Some(code) = c.code {
            write!(f, ": {code}")?;
        }
        if let Some(wait) = c.retry_after {
            write!(f, ", retry after {}", Secs(wait))?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_error_reports_its_classification() {
        let mut c = Classification::failure(ErrorClass::QuotaExhausted)
            .with_status(StatusCode::TOO_MANY_REQUESTS);
        c.code = Some("insufficient_quota");
        let e = Error::from_response(c);
        assert!(e.is_response());
        assert!(e.is_quota_exhausted());
        assert!(!e.is_retryable());
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(e.code(), Some("insufficient_quota"));
        assert_eq!(
            e.to_string(),
            "provider answered 429 Too Many Requests (quota_exhausted: insufficient_quota)"
        );
    }

    #[test]
    fn transport_errors_keep_their_source_and_pass_ours_through() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::from_transport(io, |_| Classification::failure(ErrorClass::Connect));
        assert!(e.is_transport() && e.is_connect() && e.is_retryable());
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "reset");

        let ours = Error::over_capacity(10, 5);
        let boxed: BoxError = Box::new(ours);
        let back = Error::from_transport(boxed, |_| unreachable!("not classified again"));
        assert!(back.is_over_capacity());
        assert!(!back.is_retryable());
    }

    #[test]
    fn layer_errors_say_when() {
        let e = Error::rate_limit_timeout(Duration::from_secs(3));
        assert!(e.is_rate_limit_timeout() && e.is_rate_limited() && e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let e = Error::circuit_open(ErrorClass::QuotaExhausted, Some(Duration::from_secs(60)));
        assert!(e.is_circuit_open() && e.is_quota_exhausted() && !e.is_retryable());
        assert_eq!(
            e.to_string(),
            "circuit breaker open (quota_exhausted, retry after 60.000s)"
        );
    }

    #[test]
    fn error_is_small_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
