//! What a provider's response means: one error taxonomy for every layer.
//!
//! [`ErrorClass`] names what went wrong (rate limited, quota exhausted,
//! overloaded, context length exceeded...). A [`Classifier`] turns a
//! response's status, headers and the first bytes of an error body into a
//! [`Classification`]: the class, the wait the server asked for, and the
//! rate-limit state its headers report. [`Provider`] is the classifier for
//! OpenAI, Azure OpenAI, Anthropic, Gemini, Groq, OpenRouter and any
//! OpenAI-compatible or plain HTTP server.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use std::time::Duration;
//! use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
//!
//! // The same status, two meanings: only the body tells them apart.
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after-ms", "1500".parse().unwrap());
//! let slow_down = br#"{"error":{"type":"tokens","code":"rate_limit_exceeded"}}"#;
//! let c = Provider::OpenAi.classify(StatusCode::TOO_MANY_REQUESTS, &headers, Some(slow_down));
//! assert_eq!(c.class, Some(ErrorClass::RateLimited));
//! assert_eq!(c.retry_after, Some(Duration::from_millis(1500)));
//! assert!(c.is_retryable());
//!
//! let broke = br#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#;
//! let c = Provider::OpenAi.classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), Some(broke));
//! assert_eq!(c.class, Some(ErrorClass::QuotaExhausted));
//! assert!(!c.is_retryable());
//! ```
//!
//! # Reading error bodies without breaking streaming
//!
//! Headers alone cannot tell `insufficient_quota` from `rate_limit_exceeded`.
//! [`ClassifyLayer`] sits next to the HTTP client and, **only for error
//! responses** (status 400 and above), reads at most
//! [`DEFAULT_BODY_PREFIX`] bytes of the body, classifies, stores the
//! [`Classification`] in the response's extensions and hands the body on
//! whole: the bytes it read are replayed first, then the rest of the stream.
//! Every layer's [`Classifier::classify_response`] reuses that stored
//! classification.
//!
//! A successful `text/event-stream` response is held until its first
//! event has arrived (at most the same prefix of bytes, 64 frames and the
//! read timeout, after which it passes on as it is): when that event is an
//! error (Anthropic's `event: error` with `overloaded_error`, OpenAI's
//! `data: {"error": ...}`), the response is classified as that error, so
//! that every layer counts it as a failure and the retry layer may retry
//! it, since nothing reached the caller yet. A normal first event is
//! replayed and the stream passes on at once; errors later in the stream
//! are [`stream`](crate::stream)'s to report. The stack's attempt timeout
//! sits outside this layer; the read timeout is what bounds the wait for a
//! silent stream here. Other successful responses pass through untouched,
//! with no allocation.
//!
//! # gRPC
//!
//! A gRPC answer is a 200 whose status comes in `grpc-status` (and
//! `grpc-message`): in the trailers at the end of its body, or, for an
//! error before any message, in its headers (a trailers-only answer).
//! [`classify_grpc`] maps it to the taxonomy (`UNAVAILABLE` overloaded,
//! `RESOURCE_EXHAUSTED` rate limited or, when its message says so, quota
//! exhausted, `DEADLINE_EXCEEDED` timeout, `UNAUTHENTICATED` auth,
//! `INVALID_ARGUMENT` invalid request, `INTERNAL` server error, ...), with
//! `grpc-retry-pushback-ms` as the wait. Every [`Provider`] reads it in the
//! headers; [`ClassifyLayer`] stores a trailers-only failure, so that the
//! retry layer retries an `UNAVAILABLE` and the breaker counts it; and
//! [`Classifier::classify_trailers`] judges the trailers, which the breaker
//! and the limiter's stream watch read as a body ends (a failure there
//! counts as one, as an error event in a stream does), while the trailers
//! reach the caller as they were sent. An `application/grpc` success waits
//! for its trailers in the breaker, as an event stream waits for its end.
//!
//! A tonic `Channel` goes under [`LlmLayer`](crate::LlmLayer) behind
//! [`BufferBodyLayer`](crate::retry::BufferBodyLayer) (tonic's request
//! body is a stream; the stack replays a `Full<Bytes>`), with the body
//! mapped back for the channel:
//! `ServiceBuilder::new().layer(BufferBodyLayer::default()).layer(llm_layer)
//! .map_request(|r: Request<Full<Bytes>>| r.map(tonic::body::Body::new))
//! .service(channel)`, then `tonic::client::Grpc::new(stack)` or a
//! generated client's `with_origin`/`new`. A status the server sends
//! reaches tonic as it is; a call the stack itself answers (an open
//! circuit, a limiter's refusal, a trailers-only failure after its
//! retries) reaches tonic as its `Status` `Unknown`, whose `source()` is
//! this crate's [`Error`](crate::Error) with the class. The crate's tests
//! drive tonic's client this way over loopback HTTP/2.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/grpc".parse().unwrap());
//! headers.insert("grpc-status", "14".parse().unwrap());
//! let c = Provider::Auto.classify(StatusCode::OK, &headers, None);
//! assert_eq!(c.class, Some(ErrorClass::Overloaded));
//! assert_eq!(c.code, Some("UNAVAILABLE"));
//! ```
//!
//! # One rule for "is this a failure?"
//!
//! The retry layer, the circuit breaker and the rate limiter decide
//! whether a response failed with the same method,
//! [`Classifier::failure_of`]: a stored classification wins; without one,
//! a status that is not an [error status](Classifier::is_error_status) is
//! a success without parsing a header; an error status is classified.
//! What each layer then does with a failure's class is its own policy (the
//! retry layer retries `server_error`, the breaker counts it, the limiter
//! refunds its charge).
//!
//! # Robustness
//!
//! Every parser takes arbitrary input: a malformed value gives `None`, an
//! absurd wait (`retry-after: 99999999999`, a date in year 9999) is clamped
//! to [`MAX_SERVER_WAIT`], a negative or NaN one is ignored, a date in the
//! past is a zero wait.

mod body;
mod class;
mod classification;
mod classifier;
mod future;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod layer;
mod peek;
mod provider;
mod scan;
mod service;
#[cfg(feature = "tower-http")]
mod tower_http;
mod values;

pub(crate) use self::body::code_class;
pub use self::body::{parse_error_body, ErrorBody, DEFAULT_BODY_PREFIX};
pub use self::class::{ErrorClass, UnknownClass};
pub use self::classification::{Classification, ReportedLimit, ReportedLimits};
pub use self::classifier::{classify_transport_error, Classifier};
pub use self::future::ResponseFuture;
pub use self::grpc::classify_grpc;
pub(crate) use self::grpc::is_grpc;
pub use self::layer::ClassifyLayer;
pub use self::peek::{BodyPrefix, PeekedBody};
pub use self::provider::{ParseProviderError, Provider};
pub use self::service::Classify;
#[cfg(feature = "tower-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-http")))]
pub use self::tower_http::{FromTowerHttp, TowerHttpClassifier};
pub use self::values::{
    parse_go_duration, parse_retry_after, parse_retry_after_ms, parse_rfc3339_reset,
    MAX_SERVER_WAIT,
};
