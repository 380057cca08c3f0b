//! Which quota (and which breaker) a request belongs to.
//!
//! A provider's limits belong to an API key, a model, a deployment: a
//! [`Key`] names one such bucket, and a [`KeyFn`] picks it for each request.
//! The rate limiter and the circuit breaker take the same `KeyFn`, so that
//! they agree on what "one provider" is.
//!
//! # Keys the way providers count
//!
//! Providers count their limits per model (OpenAI, Anthropic, Gemini),
//! per deployment (Azure) and per API key: [`ByModel`] reads a request's
//! model (a header, Gemini's path, Azure's deployment, or the body's
//! top-level `"model"`), and a tuple of key functions keys by all of them
//! at once, `(ByModel::new(), ByHeader::api_key())`, into one [`Key`] of
//! several [`parts`](Key::parts). Each key gets its own windows, gate and
//! breaker; [`LlmLayer::key_limits`](crate::LlmLayer::key_limits) gives
//! each its own limits (see [`ByModel`] for an example).
//!
//! # Fingerprints of secrets
//!
//! A key that stands for an API key ([`ByHeader`], [`Key::fingerprint`])
//! holds a **fingerprint**: HMAC-SHA256 of the header's value under a
//! fingerprint secret, 128 bits kept. It shows in logs, events and Redis key
//! names as `fp:` and 16 hex digits; it is never the API key, and without
//! the fingerprint secret nobody can tell which API key it stands for (an
//! unkeyed hash of a low-entropy or leaked key could be checked against
//! it).
//!
//! By default the fingerprint secret is random, drawn once per process from
//! the operating system: nothing logged can be linked to the API key, nor
//! across processes. Processes that must agree on a key (several workers
//! sharing one quota through a Redis store) must all set the same secret
//! with [`ByHeader::fingerprint_secret`]; see there.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, Mac};
use http::header::{HeaderName, AUTHORIZATION};
use http::Request;
use sha2::Sha256;

mod model;

pub use self::model::{ByModel, DEFAULT_MODEL_SCAN_LIMIT};

/// The name of one quota bucket: cheap to clone, hashable, and never the
/// secret itself (see [`Key::fingerprint`]).
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
    /// A model's name ([`ByModel`]): equal to a named key of the same
    /// name, and found by [`Key::model`].
    Model(Arc<str>),
    Fingerprint([u8; FINGERPRINT_LEN]),
    /// A key made of several (a tuple of key functions).
    Parts(Arc<[Key]>),
}

/// How many bytes of the HMAC-SHA256 a fingerprint keeps: 128 bits, so
/// that two API keys never share a bucket by chance.
const FINGERPRINT_LEN: usize = 16;
/// How many bytes of it [`Key`]'s `Display` shows (16 hex digits).
const SHOWN_LEN: usize = 8;

type HmacSha256 = Hmac<Sha256>;

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

    /// A key that names a model (what [`ByModel`] makes; one allocation):
    /// equal to [`Key::new`] of the same name, and found by
    /// [`model`](Key::model), so that events and metrics can say which
    /// model a request was for.
    ///
    /// ```
    /// use tower_llm_resilience::Key;
    ///
    /// let key = Key::join([Key::for_model("gpt-4o"), Key::from_static("api.openai.com")]);
    /// assert_eq!(key.model(), Some("gpt-4o"));
    /// assert_eq!(Key::for_model("gpt-4o"), Key::new("gpt-4o"));
    /// assert_eq!(Key::new("gpt-4o").model(), None);
    /// ```
    pub fn for_model(name: impl Into<Arc<str>>) -> Key {
        Key(Repr::Model(name.into()))
    }

    /// The model this key names: its own name when it was made by
    /// [`for_model`](Key::for_model) (as [`ByModel`] does), or that of its
    /// first such [part](Key::parts); `None` otherwise.
    pub fn model(&self) -> Option<&str> {
        match &self.0 {
            Repr::Model(name) => Some(name),
            Repr::Parts(parts) => parts.iter().find_map(Key::model),
            _ => None,
        }
    }

    /// A key that stands for a secret `value` (an API key) without holding
    /// it: its HMAC-SHA256 under this process's random fingerprint secret
    /// (drawn once from the operating system), 128 bits kept, shown as
    /// `fp:` and 16 hex digits.
    ///
    /// The same `value` gives the same key within a process, and a key that
    /// no other process can reproduce or link to the value. When processes
    /// must agree (a shared Redis store), use
    /// [`fingerprint_with`](Key::fingerprint_with) or
    /// [`ByHeader::fingerprint_secret`] with a secret they share.
    pub fn fingerprint(value: &[u8]) -> Key {
        Key::fingerprint_keyed(process_mac().clone(), value)
    }

    /// A key that stands for a secret `value` without holding it: its
    /// HMAC-SHA256 under `secret`, 128 bits kept, shown as `fp:` and 16 hex
    /// digits. A fixed value for a given secret, so that every process that
    /// holds the secret agrees on it; another secret gives another key.
    ///
    /// ```
    /// use tower_llm_resilience::Key;
    ///
    /// let key = Key::fingerprint_with(b"team-secret", b"Bearer sk-test-123");
    /// assert_eq!(key.to_string(), "fp:6153fea4facce817");
    /// assert_ne!(key, Key::fingerprint_with(b"other-secret", b"Bearer sk-test-123"));
    /// ```
    pub fn fingerprint_with(secret: &[u8], value: &[u8]) -> Key {
        Key::fingerprint_keyed(mac_of(secret), value)
    }

    fn fingerprint_keyed(mut mac: HmacSha256, value: &[u8]) -> Key {
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut kept = [0; FINGERPRINT_LEN];
        kept.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Key(Repr::Fingerprint(kept))
    }

    /// A key made of several, in order: what a tuple of key functions
    /// gives (`(ByModel::new(), ByHeader::api_key())`). One allocation;
    /// equal to another joined key of equal parts in the same order, never
    /// to a key of one part. It shows as its parts separated by `|`.
    ///
    /// ```
    /// use tower_llm_resilience::Key;
    ///
    /// let key = Key::join([Key::from_static("gpt-4o"), Key::from_static("api.openai.com")]);
    /// assert_eq!(key.to_string(), "gpt-4o|api.openai.com");
    /// assert_eq!(key.parts()[0].as_str(), Some("gpt-4o"));
    /// assert_ne!(key, Key::from_static("gpt-4o|api.openai.com"));
    /// ```
    pub fn join<const N: usize>(parts: [Key; N]) -> Key {
        Key(Repr::Parts(Arc::from(parts)))
    }

    /// The key's parts: those given to [`join`](Key::join), or the key
    /// itself for a key of one part. Per-key limits read them
    /// ([`MemoryStore::key_limits`](crate::rate_limit::MemoryStore::key_limits)
    /// gets the whole key).
    pub fn parts(&self) -> &[Key] {
        match &self.0 {
            Repr::Parts(parts) => parts,
            _ => std::slice::from_ref(self),
        }
    }

    /// The key's name, when it has a readable one (`None` for fingerprints
    /// and for keys of several [parts](Key::parts)).
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Repr::Static(s) => Some(s),
            Repr::Shared(s) | Repr::Model(s) => Some(s),
            Repr::Fingerprint(_) | Repr::Parts(_) => None,
        }
    }
}

/// The HMAC state keyed with `secret` (HMAC takes a key of any length).
fn mac_of(secret: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| {
        // Unreachable: HMAC accepts keys of every length.
        <HmacSha256 as Mac>::new_from_slice(&[]).expect("HMAC takes an empty key")
    })
}

/// The HMAC state keyed with this process's random fingerprint secret,
/// made once.
fn process_mac() -> &'static HmacSha256 {
    static MAC: OnceLock<HmacSha256> = OnceLock::new();
    MAC.get_or_init(|| {
        let mut secret = [0u8; 32];
        random_secret(&mut secret);
        mac_of(&secret)
    })
}

/// Fills `secret` from the operating system's random source. Should that
/// fail (no `getrandom`, an exhausted sandbox), it falls back to std's
/// per-process random hash keys (themselves seeded from the operating
/// system), mixed with the time and the process id: still unpredictable
/// from outside in practice, and never a panic.
fn random_secret(secret: &mut [u8; 32]) {
    use rand::TryRng;
    if rand::rngs::SysRng.try_fill_bytes(secret).is_ok() {
        return;
    }
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in secret.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
}

impl Default for Key {
    fn default() -> Self {
        Key::DEFAULT
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        match (&self.0, &other.0) {
            // The same static name (a key function's constant): no byte
            // comparison on the breaker's per-call cache check.
            (Repr::Static(a), Repr::Static(b)) if std::ptr::eq(*a, *b) => true,
            (Repr::Fingerprint(a), Repr::Fingerprint(b)) => a == b,
            (Repr::Parts(a), Repr::Parts(b)) => Arc::ptr_eq(a, b) || a == b,
            (Repr::Fingerprint(_) | Repr::Parts(_), _)
            | (_, Repr::Fingerprint(_) | Repr::Parts(_)) => false,
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
            Repr::Parts(parts) => {
                state.write_u8(2);
                parts.hash(state);
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
            Repr::Shared(s) | Repr::Model(s) => f.write_str(s),
            Repr::Fingerprint(fp) => {
                // `{:#}` shows every kept bit, `{}` a prefix.
                let shown = if f.alternate() {
                    &fp[..]
                } else {
                    &fp[..SHOWN_LEN]
                };
                f.write_str("fp:")?;
                for b in shown {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Repr::Parts(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    fmt::Display::fmt(part, f)?;
                }
                Ok(())
            }
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
/// Implemented for every `Fn(&Req) -> Key`, by [`SingleKey`] (the
/// default: one bucket), [`ByHost`], [`ByHeader`] and [`ByModel`], and by
/// pairs and triples of key functions (each combination its own bucket).
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

/// Keys by both: a [`Key::join`] of the two keys, so that each pair
/// (a model and an API key, say) has its own bucket.
///
/// ```
/// use http::Request;
/// use tower_llm_resilience::key::{ByHost, ByModel, Key, KeyFn};
///
/// let key_fn = (ByModel::new(), ByHost);
/// let req = Request::post("https://api.openai.com/v1/chat/completions")
///     .body(String::from(r#"{"model":"gpt-4o-mini","messages":[]}"#))
///     .unwrap();
/// let key = key_fn.key(&req);
/// assert_eq!(key.to_string(), "gpt-4o-mini|api.openai.com");
/// assert_eq!(key.parts()[0], Key::from_static("gpt-4o-mini"));
/// ```
impl<Req, A: KeyFn<Req>, B: KeyFn<Req>> KeyFn<Req> for (A, B) {
    fn key(&self, request: &Req) -> Key {
        Key::join([self.0.key(request), self.1.key(request)])
    }
}

/// Keys by all three: a [`Key::join`] of the three keys.
impl<Req, A: KeyFn<Req>, B: KeyFn<Req>, C: KeyFn<Req>> KeyFn<Req> for (A, B, C) {
    fn key(&self, request: &Req) -> Key {
        Key::join([
            self.0.key(request),
            self.1.key(request),
            self.2.key(request),
        ])
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

/// One bucket per value of a header, as a fingerprint (see
/// [Fingerprints of secrets](self#fingerprints-of-secrets)) so that the
/// secret never appears in a key: [`ByHeader::api_key`] buckets by the
/// `Authorization` header (OpenAI, Azure AD), [`ByHeader::new`] by any
/// (`x-api-key` for Anthropic, `api-key` for Azure). No allocation: one
/// HMAC-SHA256 of the header's value per request (well under a
/// microsecond).
///
/// # Several processes, one quota: set the same fingerprint secret
///
/// **By default the fingerprint secret is random per process**, so the same
/// API key gets a different [`Key`] in every process. That is what keeps a
/// logged `fp:...` from being linked to the API key or across machines,
/// and it is right for a limiter or breaker of one process. **Processes that
/// share a quota through a shared store (a
/// `redis_store::RedisStore`) name it by the key, so they must all call
/// [`fingerprint_secret`](ByHeader::fingerprint_secret) with the same
/// secret**: without it each process counts the API key under its own
/// name, each believes it has the whole quota, and together they overrun
/// it. Keep that secret as you keep the API keys (an environment variable
/// or a secret store), not in code; anyone who holds it can check a guessed
/// API key against a logged fingerprint.
///
/// ```
/// use http::Request;
/// use tower_llm_resilience::key::{ByHeader, KeyFn};
///
/// // Every worker of the fleet reads the same secret.
/// let secret = std::env::var("FINGERPRINT_SECRET").unwrap_or_else(|_| "dev-only".into());
/// let key_fn = ByHeader::api_key().fingerprint_secret(secret);
/// let req = Request::builder().header("authorization", "Bearer sk-1").body(()).unwrap();
/// let key = key_fn.key(&req);
/// assert!(key.to_string().starts_with("fp:"));
/// assert!(!format!("{key} {key:?} {key_fn:?}").contains("sk-1"));
/// ```
#[derive(Clone)]
pub struct ByHeader {
    name: HeaderName,
    /// The HMAC state keyed with the fingerprint secret; `None` for this
    /// process's random one.
    secret: Option<Arc<HmacSha256>>,
}

impl ByHeader {
    /// Buckets by the value of `name`, fingerprinted under this process's
    /// random secret.
    pub const fn new(name: HeaderName) -> Self {
        ByHeader { name, secret: None }
    }

    /// Buckets by the `Authorization` header, fingerprinted under this
    /// process's random secret.
    pub const fn api_key() -> Self {
        ByHeader::new(AUTHORIZATION)
    }

    /// Fingerprints under `secret` instead of this process's random one
    /// (default: random per process), so that every process with the same
    /// secret gives an API key the same [`Key`], as
    /// [`Key::fingerprint_with`] does. Required when processes share a
    /// quota through a shared store; see the [type's docs](ByHeader).
    /// The secret is not kept, only the HMAC state made from it, and it is
    /// never shown.
    pub fn fingerprint_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(Arc::new(mac_of(secret.as_ref())));
        self
    }
}

impl fmt::Debug for ByHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match self.secret {
            Some(_) => "set",
            None => "random per process",
        };
        f.debug_struct("ByHeader")
            .field("name", &self.name)
            .field("fingerprint_secret", &secret)
            .finish()
    }
}

impl<B> KeyFn<Request<B>> for ByHeader {
    fn key(&self, request: &Request<B>) -> Key {
        match request.headers().get(&self.name) {
            Some(value) => {
                let mac = match &self.secret {
                    Some(mac) => HmacSha256::clone(mac),
                    None => process_mac().clone(),
                };
                Key::fingerprint_keyed(mac, value.as_bytes())
            }
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
        // A fixed value for a given secret: HMAC-SHA256 of the empty
        // message under the empty key is b613679a0814d9ec772f95d7...
        assert_eq!(
            Key::fingerprint_with(b"", b"").to_string(),
            "fp:b613679a0814d9ec"
        );
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
