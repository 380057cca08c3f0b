use std::time::SystemTime;

use http::{HeaderMap, Response, StatusCode};

use super::{classify_grpc, Classification, ErrorClass};
use crate::rate_limit::OutputCharge;

/// Decides what a provider's response or a transport error means.
///
/// Every layer of this crate asks a `Classifier`, so a user who teaches it a
/// new provider teaches the limiter, the retry and the breaker at once.
/// [`Provider`](super::Provider) is the implementation for the known
/// providers; implement the trait for anything else.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
///
/// let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// let status = StatusCode::from_u16(529).unwrap();
/// let c = Provider::Anthropic.classify(status, &HeaderMap::new(), Some(body));
/// assert_eq!(c.class, Some(ErrorClass::Overloaded));
/// assert!(c.is_retryable());
/// ```
pub trait Classifier: Send + Sync {
    /// Classifies a response from its status, its headers and, for an error
    /// response, a bounded prefix of its body (`None` when the body was not
    /// read).
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification;

    /// Whether a response with this status can be a failure at all.
    ///
    /// The layers take a response whose status this says `false` for, and
    /// that carries no stored classification, as a success without calling
    /// [`classify`](Self::classify), so that the success path scans no
    /// header; [`ClassifyLayer`](super::ClassifyLayer) reads no body for
    /// it. The default is `status >= 400`, which every [`Provider`](super::Provider)
    /// follows; override it for a server that reports failures with a 2xx.
    fn is_error_status(&self, status: StatusCode) -> bool {
        status.as_u16() >= 400
    }

    /// Classifies a failure of the inner service (no response at all).
    ///
    /// The default walks the error's `source()` chain: this crate's
    /// [`Error`](crate::Error), I/O errors (timed out, refused, reset,
    /// broken pipe...), tower's and tokio's `Elapsed`, hyper's and
    /// hyper-util's errors (with the `hyper` feature) and reqwest's (with
    /// the `reqwest` feature).
    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Classification {
        classify_transport_error(error)
    }

    /// What a response's trailers (the last frame of its body) report:
    /// `None` for a success, else the failure. The default reads gRPC's
    /// status ([`classify_grpc`]): the circuit breaker counts a
    /// `grpc-status` other than 0 at the end of a body as the failure it
    /// is, and the rate limiter's [`StreamHook`](crate::stream::StreamHook)
    /// hears of it, as of an error event in a stream; the trailers reach
    /// the caller untouched, for a gRPC client reads its status from them.
    /// [`ClassifyLayer`](super::ClassifyLayer) also asks it for the headers
    /// of a gRPC response that carries its status there (a trailers-only
    /// response, as a gRPC server answers an error before any message).
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
    ///
    /// let mut trailers = HeaderMap::new();
    /// trailers.insert("grpc-status", "14".parse().unwrap());
    /// let c = Provider::Auto.classify_trailers(&trailers).unwrap();
    /// assert_eq!(c.class, Some(ErrorClass::Overloaded));
    /// trailers.insert("grpc-status", "0".parse().unwrap());
    /// assert!(Provider::Auto.classify_trailers(&trailers).is_none());
    /// ```
    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Classification> {
        classify_grpc(trailers)
    }

    /// How the provider charges output tokens against its token limits,
    /// so that the rate limiter corrects its estimate from a response's
    /// reported usage the way the provider counts (see [`OutputCharge`]).
    /// The default, [`OutputCharge::Declared`], never charges less than
    /// the provider: override it for a provider that counts real output.
    fn output_charge(&self, headers: &HeaderMap) -> OutputCharge {
        let _ = headers;
        OutputCharge::Declared
    }

    /// Whether `response` is a failure, and which: the one rule the retry
    /// layer, the circuit breaker and the rate limiter follow, so that they
    /// never disagree about a response.
    ///
    /// - A response that carries a stored [`Classification`] (put there by
    ///   [`ClassifyLayer`](super::ClassifyLayer), which read the error
    ///   body) is judged by [`classify_response`](Self::classify_response).
    /// - A response without one whose status is not an
    ///   [error status](Self::is_error_status) is a success, without
    ///   calling [`classify`](Self::classify): the success path parses no
    ///   header.
    /// - Any other response is judged by `classify_response` from its
    ///   status and headers.
    ///
    /// `None` is a success; `Some` is the classification of a failure (its
    /// `class` is set). Teach the layers a new rule by overriding
    /// `is_error_status`, `classify` or `classify_response`, not this.
    ///
    /// ```
    /// use http::Response;
    /// use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
    ///
    /// let ok = Response::new(());
    /// assert!(Provider::Auto.failure_of(&ok).is_none());
    /// let down = Response::builder().status(503).body(()).unwrap();
    /// let c = Provider::Auto.failure_of(&down).unwrap();
    /// assert_eq!(c.class, Some(ErrorClass::Overloaded));
    /// ```
    fn failure_of<B>(&self, response: &Response<B>) -> Option<Classification>
    where
        Self: Sized,
    {
        if response.extensions().get::<Classification>().is_none()
            && !self.is_error_status(response.status())
        {
            return None;
        }
        let c = self.classify_response(response);
        c.class.is_some().then_some(c)
    }

    /// Classifies a whole response: the [`Classification`] that
    /// [`ClassifyLayer`](super::ClassifyLayer) stored in its extensions (it
    /// read the body's prefix), else one made from the status and headers.
    fn classify_response<B>(&self, response: &Response<B>) -> Classification
    where
        Self: Sized,
    {
        match response.extensions().get::<Classification>() {
            Some(c) => *c,
            None => self.classify(response.status(), response.headers(), None),
        }
    }
}

impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        (**self).classify(status, headers, body)
    }

    fn is_error_status(&self, status: StatusCode) -> bool {
        (**self).is_error_status(status)
    }

    fn output_charge(&self, headers: &HeaderMap) -> OutputCharge {
        (**self).output_charge(headers)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Classification> {
        (**self).classify_trailers(trailers)
    }

    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Classification {
        (**self).classify_error(error)
    }
}

impl<C: Classifier + ?Sized> Classifier for &C {
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        (**self).classify(status, headers, body)
    }

    fn is_error_status(&self, status: StatusCode) -> bool {
        (**self).is_error_status(status)
    }

    fn output_charge(&self, headers: &HeaderMap) -> OutputCharge {
        (**self).output_charge(headers)
    }

    fn classify_trailers(&self, trailers: &HeaderMap) -> Option<Classification> {
        (**self).classify_trailers(trailers)
    }

    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Classification {
        (**self).classify_error(error)
    }
}

/// The class of a transport error, found by walking its `source()` chain.
///
/// ```
/// use std::io;
/// use tower_llm_resilience::classify::{classify_transport_error, ErrorClass};
///
/// let e = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
/// assert_eq!(classify_transport_error(&e).class, Some(ErrorClass::Connect));
/// ```
pub fn classify_transport_error(error: &(dyn std::error::Error + 'static)) -> Classification {
    class_below(error).unwrap_or(Classification::failure(ErrorClass::Other))
}

/// The first class found down the chain from `error`, if any.
fn class_below(error: &(dyn std::error::Error + 'static)) -> Option<Classification> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(class) = class_of(e) {
            return Some(class);
        }
        next = e.source();
    }
    None
}

fn class_of(e: &(dyn std::error::Error + 'static)) -> Option<Classification> {
    use std::io::ErrorKind;

    if let Some(ours) = e.downcast_ref::<crate::Error>() {
        return Some(*ours.classification());
    }
    if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
        return Some(Classification::failure(ErrorClass::Timeout));
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        let class = match io.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ErrorClass::Timeout,
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::AddrNotAvailable
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::NetworkDown => ErrorClass::Connect,
            ErrorKind::Interrupted => ErrorClass::Cancelled,
            // Look further down the chain (an I/O error may wrap another).
            _ => return None,
        };
        return Some(Classification::failure(class));
    }
    #[cfg(feature = "reqwest")]
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        return Some(Classification::failure(reqwest_class(r)));
    }
    #[cfg(feature = "hyper")]
    {
        // Like the official SDKs (any httpx transport error is a retryable
        // connection error), a failure of the client or the connection that
        // is not a timeout counts as `connect`; only misuse of the client is
        // `other`.
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if client.is_connect() || e.source().is_none() {
                return Some(Classification::failure(ErrorClass::Connect));
            }
            return None; // the source (a hyper or I/O error) says more
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            let class = if h.is_timeout() {
                ErrorClass::Timeout
            } else if h.is_user() {
                ErrorClass::Other
            } else if h.is_parse() {
                ErrorClass::ServerError
            } else {
                // Closed, canceled, incomplete, HTTP/2 resets and GOAWAYs,
                // I/O failures underneath.
                match e.source().map(classify_transport_error) {
                    Some(c) if c.class == Some(ErrorClass::Timeout) => ErrorClass::Timeout,
                    _ => ErrorClass::Connect,
                }
            };
            return Some(Classification::failure(class));
        }
    }
    None
}

/// The class of a reqwest error, from reqwest's predicates (its timeout is
/// a private type, which only `is_timeout` finds in the chain) and, for a
/// failed request or body, from what failed underneath.
#[cfg(feature = "reqwest")]
fn reqwest_class(e: &reqwest::Error) -> ErrorClass {
    use std::error::Error as _;

    if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_connect() {
        ErrorClass::Connect
    } else if e.is_body() || e.is_request() || e.is_decode() {
        // As for hyper's errors: a transport failure that says nothing
        // more is a connection failure; a body that could not be decoded
        // is the server's.
        let below = e.source().and_then(class_below).and_then(|c| c.class);
        match below {
            Some(class) => class,
            None if e.is_decode() => ErrorClass::ServerError,
            None => ErrorClass::Connect,
        }
    } else {
        // A redirect loop, a URI that is not absolute, an upgrade: retrying
        // the same request would fail the same way.
        ErrorClass::Other
    }
}

/// The wall clock, read only when a response carries an absolute date and no
/// `Date` header to measure it against.
pub(crate) fn wall_clock() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn walks_the_source_chain() {
        let e = Wrapper(io::Error::new(io::ErrorKind::TimedOut, "slow"));
        assert_eq!(
            classify_transport_error(&e).class,
            Some(ErrorClass::Timeout)
        );
        let e = Wrapper(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(
            classify_transport_error(&e).class,
            Some(ErrorClass::Connect)
        );
        let e = Wrapper(io::Error::other("strange"));
        assert_eq!(classify_transport_error(&e).class, Some(ErrorClass::Other));
        let e = tower::timeout::error::Elapsed::new();
        assert_eq!(
            classify_transport_error(&e).class,
            Some(ErrorClass::Timeout)
        );
    }
}
