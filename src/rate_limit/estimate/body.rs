//! [`BodyBytes`]: the request bodies whose bytes the estimators and
//! [`ByModel`](crate::key::ByModel) can read without consuming them.

use std::ops::Deref;

use bytes::Bytes;
use http_body_util::{Empty, Full};

/// Request bodies whose bytes can be looked at without consuming them:
/// what the [`JsonEstimator`](super::JsonEstimator) and
/// [`ByModel`](crate::key::ByModel) read.
///
/// Implemented for the bodies held whole in memory: `String`,
/// `&'static str`, `Vec<u8>` and `Bytes` (borrowed, no copy), `Full<Bytes>`
/// (its `Bytes` shared by reference count, no copy: `Full` lends no
/// reference to its data, so the view holds a clone of it), and the
/// bodies with nothing to read, `()` and `Empty`. A streamed body (hyper's
/// `Incoming`, axum's `Body`) has no bytes until it is read: put
/// [`BufferBodyLayer`](crate::retry::BufferBodyLayer) in front of the
/// stack, which reads it once, up to a bound, into a `Full<Bytes>`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_llm_resilience::rate_limit::BodyBytes;
///
/// let body = Full::new(Bytes::from_static(br#"{"model":"gpt-4o"}"#));
/// assert_eq!(body.body_bytes().as_deref(), Some(&br#"{"model":"gpt-4o"}"#[..]));
/// // Reading it took nothing from it.
/// assert!(body.body_bytes().is_some());
/// assert!(().body_bytes().is_none());
/// ```
pub trait BodyBytes {
    /// The body's bytes, when they are in memory: borrowed from the body,
    /// or shared with it.
    fn body_bytes(&self) -> Option<BodyView<'_>>;
}

/// The bytes of a body held in memory, from [`BodyBytes::body_bytes`]:
/// borrowed from the body, or a [`Bytes`] shared with it (a reference
/// count, not a copy). Derefs to the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyView<'a> {
    /// Bytes borrowed from the body.
    Borrowed(&'a [u8]),
    /// Bytes shared with the body.
    Shared(Bytes),
}

impl Deref for BodyView<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BodyView::Borrowed(bytes) => bytes,
            BodyView::Shared(bytes) => bytes,
        }
    }
}

impl<'a> From<&'a [u8]> for BodyView<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        BodyView::Borrowed(bytes)
    }
}

impl BodyBytes for String {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        Some(BodyView::Borrowed(self.as_bytes()))
    }
}
impl BodyBytes for &'static str {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        Some(BodyView::Borrowed(self.as_bytes()))
    }
}
impl BodyBytes for Vec<u8> {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        Some(BodyView::Borrowed(self))
    }
}
impl BodyBytes for Bytes {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        Some(BodyView::Borrowed(self))
    }
}
/// A `Full` not yet read holds its bytes; once read (polled), it is empty.
impl BodyBytes for Full<Bytes> {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        // `Full` is `Clone` and gives its data up only by value: the clone
        // is the `Bytes`'s reference count, never a copy of the body.
        let bytes = self.clone().into_inner().unwrap_or_default();
        Some(BodyView::Shared(bytes))
    }
}
impl BodyBytes for () {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        None
    }
}
impl<D> BodyBytes for Empty<D> {
    fn body_bytes(&self) -> Option<BodyView<'_>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_in_memory_body_shows_the_same_bytes() {
        let json = br#"{"model":"m","messages":[]}"#;
        let views = [
            String::from_utf8(json.to_vec())
                .unwrap()
                .body_bytes()
                .map(|v| v.to_vec()),
            json.to_vec().body_bytes().map(|v| v.to_vec()),
            Bytes::from_static(json).body_bytes().map(|v| v.to_vec()),
            Full::new(Bytes::from_static(json))
                .body_bytes()
                .map(|v| v.to_vec()),
        ];
        for view in views {
            assert_eq!(view.as_deref(), Some(&json[..]));
        }
        // An empty Full (as `Full::new` makes of no bytes) is an empty body,
        // which the estimators read as one, not as a body they cannot see.
        assert_eq!(
            Full::new(Bytes::new()).body_bytes().as_deref(),
            Some(&[][..])
        );
        assert_eq!(Empty::<Bytes>::new().body_bytes(), None);
    }

    #[test]
    fn a_full_body_is_shared_not_copied() {
        let bytes = Bytes::from(vec![b'x'; 1024]);
        let body = Full::new(bytes.clone());
        let Some(BodyView::Shared(view)) = body.body_bytes() else {
            panic!("a Full body is shared");
        };
        assert_eq!(view.as_ptr(), bytes.as_ptr());
    }
}
