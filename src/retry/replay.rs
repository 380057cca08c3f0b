//! Copying an `http::Request` so that it can be sent again.

use http::Request;

/// A copy of `request` to send again: method, URI, version, headers,
/// extensions and body (`http::Request` is `Clone` when its body is).
///
/// A `Bytes` or `Full<Bytes>` body is copied by reference count, a
/// `String` for real (an allocation and a copy of every byte); the header
/// map is copied for real (two allocations), and a header value or URI
/// parsed from a string is moved to a shared buffer on its first copy (one
/// allocation each). The retry layer makes this copy only when the request
/// may be sent again (see [`Config::most_attempts`](super::config::Config)).
pub(crate) fn replay<B: Clone>(request: &Request<B>) -> Request<B> {
    request.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u8);

    #[test]
    fn every_part_is_copied() {
        let mut r = Request::post("https://api.example/v1/chat")
            .version(http::Version::HTTP_2)
            .header("authorization", "Bearer sk-x")
            .body(bytes::Bytes::from_static(b"{}"))
            .unwrap();
        r.extensions_mut().insert(Tag(3));
        let c = replay(&r);
        assert_eq!(c.method(), r.method());
        assert_eq!(c.uri(), r.uri());
        assert_eq!(c.version(), http::Version::HTTP_2);
        assert_eq!(c.headers(), r.headers());
        assert_eq!(c.extensions().get::<Tag>(), Some(&Tag(3)));
        assert_eq!(c.body(), r.body());
    }
}
