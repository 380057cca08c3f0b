//! What the gateway sends upstream and what it hands back: the request's
//! URL under the upstream's base, the headers that cross (and
//! those that never do), and a response body that holds its concurrency
//! slot until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName};
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// The upstream's base URL (`https://api.openai.com/v1`), which a
/// client's `/v1/...` path continues.
#[derive(Clone, Debug)]
pub struct Base(String);

impl Base {
    /// Checks that `url` is an absolute http(s) URL with no credentials in
    /// it; a trailing `/` is dropped.
    pub fn parse(url: &str) -> Result<Base, String> {
        if url.contains('@') {
            // credentials in the URL would be printed and logged (and are
            // not how the gateway sends its key): refused without echoing
            return Err("the upstream URL holds an '@': give the key in OPENAI_API_KEY".into());
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the upstream URL {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => {}
            _ => return Err(format!("the upstream URL {url:?} is not an http(s) URL")),
        }
        if uri.query().is_some() {
            return Err(format!("the upstream URL {url:?} has a query"));
        }

        Ok(Base(url.trim_end_matches('/').to_owned()))
    }

    /// The upstream URL for a client's `/v1{rest}` (`rest` starts with `/`
    /// or is empty) and its query; `None` for a path that would climb out
    /// of the base (a `.` or `..` segment, plain or percent-encoded), where
    /// the gateway's key has no business.
    pub fn join(&self, rest: &str, query: Option<&str>) -> Option<Uri> {
        if rest.split('/').any(is_dot_segment) {
            return None;
        }
        let mut url = String::with_capacity(self.0.len() + rest.len() + 64);
        url.push_str(&self.0);
        url.push_str(rest);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        url.parse().ok()
    }
}

/// A path segment that means "here" or "up": `.` or `..`, each dot plain
/// or percent-encoded.
fn is_dot_segment(segment: &str) -> bool {
    let s = segment.as_bytes();
    let dot = |b: &[u8]| b == b"." || b.eq_ignore_ascii_case(b"%2e");
    match s.len() {
        1 | 3 => dot(s),
        2 => s == b"..",
        4 => (dot(&s[..1]) && dot(&s[1..])) || (dot(&s[..3]) && dot(&s[3..])),
        6 => dot(&s[..3]) && dot(&s[3..]),
        _ => false,
    }
}

/// The request headers that never cross to the upstream: the client's
/// credentials (the gateway sends its own key), the hop-by-hop headers,
/// those the HTTP client sets itself, `accept-encoding` (the stack reads
/// bodies as they pass: they must come uncompressed), and the organisation
/// and project headers that belong with a client's own key.
const REQUEST_HEADERS_KEPT_HOME: [&str; 15] = [
    "authorization",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "host",
    "content-length",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Makes a client's headers the upstream request's: drops what must not
/// cross (and `tenant_header`, which names the client's tenant), then
/// sets the gateway's key.
pub fn upstream_headers(
    headers: &mut HeaderMap,
    tenant_header: Option<&HeaderName>,
    authorization: Option<&http::HeaderValue>,
) {
    for name in REQUEST_HEADERS_KEPT_HOME {
        headers.remove(name);
    }
    if let Some(name) = tenant_header {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value.clone());
    }
}

/// Whether a response header stays with the gateway: hop-by-hop headers,
/// and the upstream's rate-limit headers and waits, which describe the
/// gateway's own key and quota, shared by every tenant (a client that
/// learned from them would throttle itself by another's usage; the
/// gateway's 429s carry its own `Retry-After`).
fn response_header_kept_home(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "trailer"
            | "te"
            | "ratelimit"
            | "ratelimit-policy"
            | "x-ms-retry-after-ms"
    ) || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
        || name.starts_with("retry-after")
}

/// Drops the response headers the client must not see (see
/// [`response_header_kept_home`]).
pub fn client_headers(headers: &mut HeaderMap) {
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|name| response_header_kept_home(name))
        .cloned()
        .collect();
    for name in gone {
        headers.remove(name);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds one of the gateway's concurrency slots
    /// until it ends or is dropped, so that a long stream counts as the
    /// request in flight it is.
    pub struct Permitted<B> {
        #[pin]
        body: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B> Permitted<B> {
    pub fn new(body: B, permit: OwnedSemaphorePermit) -> Self {
        Permitted {
            body,
            permit: Some(permit),
        }
    }
}

impl<B: Body> Body for Permitted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_path_continues_the_base() {
        let base = Base::parse("https://api.openai.com/v1/").unwrap();
        let uri = base.join("/chat/completions", None).unwrap();
        assert_eq!(uri, "https://api.openai.com/v1/chat/completions");
        let uri = base.join("/models", Some("limit=2")).unwrap();
        assert_eq!(uri, "https://api.openai.com/v1/models?limit=2");
        assert_eq!(base.join("/../admin", None), None);
        assert_eq!(base.join("/files/%2E%2e/keys", None), None);
        assert_eq!(base.join("/./models", None), None);
        assert_eq!(base.join("/a/.%2E", None), None);
        assert!(base.join("/a/.b/...", None).is_some());
        assert!(base.join("/files/file-abc.jsonl", None).is_some());
        assert!(Base::parse("api.openai.com/v1").is_err());
        assert!(Base::parse("ftp://example.com").is_err());
        let e = Base::parse("https://user:sk-secret@example.com/v1").unwrap_err();
        assert!(!e.contains("sk-secret"), "{e}");
        assert!(Base::parse("not a url").is_err());
    }

    #[test]
    fn client_credentials_never_cross() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer sk-client".parse().unwrap());
        headers.insert("x-api-key", "sk-client".parse().unwrap());
        headers.insert("x-tenant", "team-a".parse().unwrap());
        headers.insert("accept-encoding", "gzip".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let ours = http::HeaderValue::from_static("Bearer sk-gateway");
        let tenant = HeaderName::from_static("x-tenant");
        upstream_headers(&mut headers, Some(&tenant), Some(&ours));
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["authorization"], "Bearer sk-gateway");
        assert_eq!(headers["content-type"], "application/json");
    }

    #[test]
    fn the_upstreams_limits_stay_home() {
        let mut headers = HeaderMap::new();
        for name in [
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-tokens-remaining",
            "retry-after",
            "retry-after-ms",
            "transfer-encoding",
        ] {
            headers.insert(HeaderName::from_static(name), "1".parse().unwrap());
        }
        headers.insert("x-request-id", "req-1".parse().unwrap());
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        client_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-request-id"]);
    }
}
