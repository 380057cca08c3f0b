//! Adapters between this crate's [`Classifier`] and tower-http's
//! [`ClassifyResponse`].

use std::any::Any;
use std::fmt;

use http::{HeaderMap, Response, StatusCode};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, NeverClassifyEos, SharedClassifier,
};

use super::{classify_transport_error, Classification, Classifier, ErrorClass, Provider};
use crate::BoxError;

/// Uses a [`Classifier`] as tower-http's [`ClassifyResponse`], so that
/// tower-http's `Trace` logs failures in this crate's taxonomy.
///
/// The failure class is the whole [`Classification`] (it implements
/// `Display`).
///
/// ```
/// use tower_http::classify::{ClassifiedResponse, ClassifyResponse};
/// use tower_http::trace::TraceLayer;
/// use tower_llm_resilience::classify::{ErrorClass, Provider, TowerHttpClassifier};
///
/// let classifier = TowerHttpClassifier::new(Provider::OpenAi);
/// let trace = TraceLayer::new(classifier.into_make_classifier());
/// # let _ = trace;
/// // What `Trace` is told of a 503 and of a 200:
/// let overloaded = http::Response::builder().status(503).body(()).unwrap();
/// match classifier.classify_response(&overloaded) {
///     ClassifiedResponse::Ready(Err(c)) => assert_eq!(c.class, Some(ErrorClass::Overloaded)),
///     _ => panic!("a 503 is a failure"),
/// }
/// let ok = http::Response::new(());
/// assert!(matches!(classifier.classify_response(&ok), ClassifiedResponse::Ready(Ok(()))));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TowerHttpClassifier<C = Provider> {
    classifier: C,
}

impl<C> TowerHttpClassifier<C> {
    /// Wraps `classifier`.
    pub const fn new(classifier: C) -> Self {
        TowerHttpClassifier { classifier }
    }

    /// The form tower-http's `TraceLayer::new` takes.
    pub fn into_make_classifier(self) -> SharedClassifier<Self>
    where
        C: Classifier + Clone + Send + 'static,
    {
        SharedClassifier::new(self)
    }
}

impl<C: Classifier + Clone> ClassifyResponse for TowerHttpClassifier<C> {
    type FailureClass = Classification;
    type ClassifyEos = NeverClassifyEos<Classification>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Classification, Self::ClassifyEos> {
        let c = self.classifier.classify_response(res);
        if c.is_success() {
            ClassifiedResponse::Ready(Ok(()))
        } else {
            ClassifiedResponse::Ready(Err(c))
        }
    }

    fn classify_error<E>(self, error: &E) -> Classification
    where
        E: fmt::Display + 'static,
    {
        let any: &dyn Any = error;
        if let Some(e) = any.downcast_ref::<BoxError>() {
            self.classifier.classify_error(&**e)
        } else if let Some(e) = any.downcast_ref::<crate::Error>() {
            *e.classification()
        } else if let Some(e) = any.downcast_ref::<std::io::Error>() {
            self.classifier.classify_error(e)
        } else if let Some(e) = any.downcast_ref::<tower::timeout::error::Elapsed>() {
            classify_transport_error(e)
        } else {
            Classification::failure(ErrorClass::Other)
        }
    }
}

/// Uses a tower-http [`ClassifyResponse`] as this crate's [`Classifier`]:
/// tower-http decides success or failure, `map` names the class of a
/// failure, and `headers` (default [`Provider::Auto`]) still reads the
/// server's wait and rate-limit headers.
///
/// A response tower-http can only judge at the end of its stream (gRPC) is
/// taken as a success here: the layers of this crate decide at the headers.
///
/// ```
/// use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass};
/// use tower_llm_resilience::classify::{Classifier, ErrorClass, FromTowerHttp};
///
/// let classifier = FromTowerHttp::new(ServerErrorsAsFailures::new(), |_: &ServerErrorsFailureClass| {
///     ErrorClass::ServerError
/// });
/// let response = http::Response::builder().status(500).body(()).unwrap();
/// assert_eq!(classifier.classify_response(&response).class, Some(ErrorClass::ServerError));
/// ```
#[derive(Clone, Copy)]
pub struct FromTowerHttp<T, F> {
    tower_http: T,
    map: F,
    headers: Provider,
}

impl<T, F> FromTowerHttp<T, F> {
    /// Wraps a tower-http classifier; `map` turns its failure class into an
    /// [`ErrorClass`].
    pub const fn new(tower_http: T, map: F) -> Self {
        FromTowerHttp {
            tower_http,
            map,
            headers: Provider::Auto,
        }
    }

    /// The profile that reads the wait and rate-limit headers (default
    /// [`Provider::Auto`]).
    pub const fn headers(mut self, provider: Provider) -> Self {
        self.headers = provider;
        self
    }
}

impl<T: fmt::Debug, F> fmt::Debug for FromTowerHttp<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromTowerHttp")
            .field("tower_http", &self.tower_http)
            .field("headers", &self.headers)
            .finish()
    }
}

impl<T, F> Classifier for FromTowerHttp<T, F>
where
    T: ClassifyResponse + Clone + Send + Sync,
    F: Fn(&T::FailureClass) -> ErrorClass + Send + Sync,
{
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers.clone();
        let mut c = self.headers.classify(status, headers, body);
        c.class = self.decide(&response);
        c
    }

    fn classify_response<B>(&self, response: &Response<B>) -> Classification {
        let mut c = match response.extensions().get::<Classification>() {
            Some(c) => *c,
            None => self
                .headers
                .classify(response.status(), response.headers(), None),
        };
        c.class = self.decide(response);
        c
    }
}

impl<T, F> FromTowerHttp<T, F>
where
    T: ClassifyResponse + Clone,
    F: Fn(&T::FailureClass) -> ErrorClass,
{
    fn decide<B>(&self, response: &Response<B>) -> Option<ErrorClass> {
        match self.tower_http.clone().classify_response(response) {
            ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => None,
            ClassifiedResponse::Ready(Err(failure)) => Some((self.map)(&failure)),
        }
    }
}
