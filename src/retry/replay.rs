//! Copying an `http::Request` so that it can be sent again.

use http::Request;

/// A copy of `request` to send again: method, URI, version, headers,
/// extensions and body.
///
/// `http::Request` is not `Clone`, but every part of it is when the body
/// is (`String`, `Bytes`, `Full<Bytes>`...). A `Bytes` body is copied by
/// reference count; headers are copied for real, which is most of the cost
/// of keeping a replay copy.
pub(crate) fn replay<B: Clone>(request: &Request<B>) -> Request<B> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
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
