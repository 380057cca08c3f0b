//! How an inner service's error says what it means to the retry rules.

use crate::classify::{Classification, Classifier};
use crate::{BoxError, Error};

/// How an inner service's error type tells [`RetryPolicy`](super::RetryPolicy) what it means.
///
/// Implemented for this crate's [`Error`] (its own classification), for
/// [`BoxError`] (this crate's `Error` inside one, else the classifier's
/// [`classify_error`](Classifier::classify_error)), the error types of the
/// stacks this crate builds, and for `Infallible`.
pub trait ClassifiableError {
    /// The classification of this error, and whether it may be retried.
    fn classify_with<C: Classifier>(&self, classifier: &C) -> (Classification, bool);
}

impl ClassifiableError for Error {
    fn classify_with<C: Classifier>(&self, _: &C) -> (Classification, bool) {
        (*self.classification(), self.is_retryable())
    }
}

impl ClassifiableError for std::convert::Infallible {
    fn classify_with<C: Classifier>(&self, _: &C) -> (Classification, bool) {
        match *self {}
    }
}

impl ClassifiableError for BoxError {
    fn classify_with<C: Classifier>(&self, classifier: &C) -> (Classification, bool) {
        match self.downcast_ref::<Error>() {
            Some(ours) => ours.classify_with(classifier),
            None => {
                let c = classifier.classify_error(&**self);
                (c, c.is_retryable())
            }
        }
    }
}
