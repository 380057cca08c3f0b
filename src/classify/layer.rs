use std::time::Duration;

use tower::Layer;

use super::{Classify, Provider, DEFAULT_BODY_PREFIX};

/// Classifies every error response next to the wire, reading a bounded
/// prefix of its body, and stores the [`Classification`](super::Classification)
/// and the [`BodyPrefix`](super::BodyPrefix) in its extensions (see the
/// [module docs](super)). A successful event stream is held until its
/// first event, which may make it a failure (an error event before any
/// token). Other successful responses pass through untouched, with no
/// allocation; layers classify them from their headers.
///
/// Defaults: the [`Provider::Auto`] classifier, a body prefix of
/// [`DEFAULT_BODY_PREFIX`] (8 KiB), and 5 s to read it (or to wait for a
/// stream's first event).
#[derive(Clone, Debug)]
pub struct ClassifyLayer<C = Provider> {
    classifier: C,
    max_body: usize,
    read_timeout: Duration,
}

/// How long a slow error body may take to yield its prefix before the
/// response is classified from what arrived.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl ClassifyLayer {
    /// A layer with the [`Provider::Auto`] classifier.
    pub const fn new() -> Self {
        ClassifyLayer {
            classifier: Provider::Auto,
            max_body: DEFAULT_BODY_PREFIX,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

impl Default for ClassifyLayer {
    fn default() -> Self {
        ClassifyLayer::new()
    }
}

impl<C> ClassifyLayer<C> {
    /// What responses mean (default [`Provider::Auto`]).
    pub fn classifier<C2>(self, classifier: C2) -> ClassifyLayer<C2> {
        ClassifyLayer {
            classifier,
            max_body: self.max_body,
            read_timeout: self.read_timeout,
        }
    }

    /// How many bytes of an error body, or of an event stream before its
    /// first event, to read at most (default 8 KiB; 0 reads none,
    /// classifies from the status and headers, and passes streams on
    /// unread).
    pub const fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long to wait for an error body's prefix, or for an event
    /// stream's first event (default 5 s); past it the response is
    /// classified from what arrived.
    pub const fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }
}

impl<S, C: Clone> Layer<S> for ClassifyLayer<C> {
    type Service = Classify<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify::new(inner, self.classifier.clone())
            .max_body(self.max_body)
            .read_timeout(self.read_timeout)
    }
}
