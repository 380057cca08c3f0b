//! Which quota (and which breaker) a request belongs to.
//!
//! A provider's limits belong to an API key, a model, a deployment: a
//! [`Key`] names one such bucket, and a [`KeyFn`] picks it for each request.
//! The rate limiter and the circuit breaker take the same `KeyFn`, so that
//! they agree on what "one provider" is.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION};
use http::Request;

/// The name of one quota bucket: cheap to clone, hashable, and never the
/// secret itself (see [`Key::fingerprint`]).
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
    Fingerprint(u64),
}

impl Key {
    /// The key of a stack with a single bucket.
    pub const DEFAULT: Key = Key::from_static("default");

    /// A key named by a static string, with no allocation.
    pub const fn from_static(name: &'static str) -> Key {
        Key(Repr::Static(name))
    }

    /// A key named by a string (one allocation).
    pub fn new(name: impl Into<Arc<str>>) -> Key {
        Key(Repr::Shared(name.into()))
    }

    /// A key that stands for a secret (an API key) without holding it: a
    /// 64-bit hash, stable across processes, shown as `fp:0123abcd...`.
    pub fn fingerprint(secret: &[u8]) -> Key {
        Key(Repr::Fingerprint(fnv1a(secret)))
    }

    /// The key's name, when it has a readable one (`None` for fingerprints).
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Repr::Static(s) => Some(s),
            Repr::Shared(s) => Some(s),
            Repr::Fingerprint(_) => None,
        }
    }
}

/// FNV-1a: stable across processes and Rust versions, which a shared
/// store (Redis) needs; collisions are harmless here (two keys would share
/// one bucket), and the hash is not a security boundary.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Default for Key {
    fn default() -> Self {
        Key::DEFAULT
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        match (&self.0, &other.0) {
            (Repr::Fingerprint(a), Repr::Fingerprint(b)) => a == b,
            (Repr::Fingerprint(_), _) | (_, Repr::Fingerprint(_)) => false,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Fingerprint(fp) => {
                state.write_u8(1);
                fp.hash(state);
            }
            _ => {
                state.write_u8(0);
                self.as_str().hash(state);
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Static(s) => f.write_str(s),
            Repr::Shared(s) => f.write_str(s),
            Repr::Fingerprint(fp) => write!(f, "fp:{fp:016x}"),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl From<&'static str> for Key {
    fn from(name: &'static str) -> Key {
        Key::from_static(name)
    }
}

impl From<String> for Key {
    fn from(name: String) -> Key {
        Key::new(name)
    }
}

/// Picks the [`Key`] of a request.
///
/// Implemented for every `Fn(&Req) -> Key`, and by [`SingleKey`] (the
/// default: one bucket), [`ByHost`] and [`ByHeader`].
///
/// ```
/// use http::Request;
/// use tower_llm_resilience::key::{Key, KeyFn};
///
/// let by_model = |req: &Request<String>| match req.headers().get("x-model") {
///     Some(model) => Key::new(model.to_str().unwrap_or("unknown")),
///     None => Key::DEFAULT,
/// };
/// let req = Request::builder().header("x-model", "gpt-4o").body(String::new()).unwrap();
/// assert_eq!(by_model.key(&req), Key::from_static("gpt-4o"));
/// ```
pub trait KeyFn<Req> {
    /// The key of `request`.
    fn key(&self, request: &Req) -> Key;
}

impl<Req, F: Fn(&Req) -> Key> KeyFn<Req> for F {
    fn key(&self, request: &Req) -> Key {
        self(request)
    }
}

/// Every request in one bucket, [`Key::DEFAULT`]. No allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleKey;

impl<Req> KeyFn<Req> for SingleKey {
    fn key(&self, _: &Req) -> Key {
        Key::DEFAULT
    }
}

/// One bucket per host of the request's URI (`api.openai.com`), or
/// [`Key::DEFAULT`] for a URI without one. Allocates the name per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByHost;

impl<B> KeyFn<Request<B>> for ByHost {
    fn key(&self, request: &Request<B>) -> Key {
        match request.uri().host() {
            Some(host) => Key::new(host),
            None => Key::DEFAULT,
        }
    }
}

/// One bucket per value of a header, as a [`Key::fingerprint`] so that the
/// secret never appears in a key: [`ByHeader::api_key`] buckets by the
/// `Authorization` header (OpenAI, Azure AD), [`ByHeader::new`] by any
/// (`x-api-key` for Anthropic, `api-key` for Azure). No allocation.
#[derive(Clone, Debug)]
pub struct ByHeader {
    name: HeaderName,
}

impl ByHeader {
    /// Buckets by the value of `name`.
    pub const fn new(name: HeaderName) -> Self {
        ByHeader { name }
    }

    /// Buckets by the `Authorization` header.
    pub const fn api_key() -> Self {
        ByHeader::new(AUTHORIZATION)
    }
}

impl<B> KeyFn<Request<B>> for ByHeader {
    fn key(&self, request: &Request<B>) -> Key {
        match request.headers().get(&self.name) {
            Some(value) => Key::fingerprint(value.as_bytes()),
            None => Key::DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash(k: &Key) -> u64 {
        let mut h = DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    }

    #[test]
    fn static_and_shared_names_are_the_same_key() {
        let a = Key::from_static("gpt-4o");
        let b = Key::new(String::from("gpt-4o"));
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(a, Key::DEFAULT);
    }

    #[test]
    fn fingerprints_hide_the_secret() {
        let req = Request::builder()
            .header("authorization", "Bearer sk-secret-123")
            .body(())
            .unwrap();
        let key = ByHeader::api_key().key(&req);
        let shown = format!("{key} {key:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.starts_with("fp:"));
        assert_eq!(key, Key::fingerprint(b"Bearer sk-secret-123"));
        assert_ne!(key, Key::fingerprint(b"Bearer sk-other"));
        // Stable across processes: a fixed value, not a seeded hash.
        assert_eq!(Key::fingerprint(b"").to_string(), "fp:cbf29ce484222325");
    }

    #[test]
    fn by_host() {
        let req = Request::builder()
            .uri("https://api.openai.com/v1/chat/completions")
            .body(())
            .unwrap();
        assert_eq!(ByHost.key(&req), Key::from_static("api.openai.com"));
        let req = Request::builder().uri("/v1").body(()).unwrap();
        assert_eq!(ByHost.key(&req), Key::DEFAULT);
        assert_eq!(SingleKey.key(&req), Key::DEFAULT);
    }
}
