//! What a request will cost before it is sent.

use bytes::Bytes;
use http::Request;

use super::limits::Costs;

/// The caller's own token estimate for a request, set as a request
/// extension; it wins over any [`Estimator`]. Counted as input tokens.
///
/// ```
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = RateLimitLayer::new(Limits::new().tokens_per_minute(1_000));
/// let mut svc = limiter.layer(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// let mut req = http::Request::new(String::from("{}"));
/// req.extensions_mut().insert(TokenEstimate(1_200));
/// // Charged 1,200 tokens whatever the body says: more than the minute's
/// // whole 1,000, so it can never fit and fails at once.
/// let error = svc.ready().await.unwrap().call(req).await.unwrap_err();
/// assert!(error.is_over_capacity());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenEstimate(pub u32);

/// The real token usage of a response, set as a response extension by
/// whoever can read it (a layer that parsed the body's `usage`, the
/// simulated provider); the limiter then corrects the request's charge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    /// Input (prompt) tokens used.
    pub input_tokens: u64,
    /// Output (completion) tokens used.
    pub output_tokens: u64,
}

/// Estimates what a request will cost in tokens when the caller did not
/// say ([`TokenEstimate`]). Called only when the key's limits count
/// tokens; must be cheap and must never read an unbounded body.
pub trait Estimator<Req>: Send + Sync {
    /// The request's estimated cost.
    fn estimate(&self, request: &Req) -> Costs;

    /// The output maximum the request declares (its `max_tokens`), if
    /// any: a provider that charges it at admission
    /// ([`OutputCharge::Declared`](super::OutputCharge::Declared)) keeps
    /// charging it when the completion is shorter, so the limiter's
    /// correction from the response's usage never goes below it. Asked
    /// only when the caller set a [`TokenEstimate`]; the default says
    /// `None`.
    fn declared_output(&self, request: &Req) -> Option<u64> {
        let _ = request;
        None
    }

    /// [`estimate`](Self::estimate) and
    /// [`declared_output`](Self::declared_output) at once, for an
    /// estimator that finds both in one pass (the default asks each).
    fn estimate_declared(&self, request: &Req) -> (Costs, Option<u64>) {
        (self.estimate(request), self.declared_output(request))
    }
}

impl<Req, F: Fn(&Req) -> Costs + Send + Sync> Estimator<Req> for F {
    fn estimate(&self, request: &Req) -> Costs {
        self(request)
    }
}

/// Request bodies whose bytes can be looked at without consuming them.
pub trait BodyBytes {
    /// The body's bytes, when they are in memory.
    fn body_bytes(&self) -> Option<&[u8]>;
}

impl BodyBytes for String {
    fn body_bytes(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }
}
impl BodyBytes for &'static str {
    fn body_bytes(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }
}
impl BodyBytes for Vec<u8> {
    fn body_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}
impl BodyBytes for Bytes {
    fn body_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}
impl BodyBytes for () {
    fn body_bytes(&self) -> Option<&[u8]> {
        None
    }
}
impl<D> BodyBytes for http_body_util::Empty<D> {
    fn body_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// An estimator for OpenAI- and Anthropic-style JSON chat bodies: input
/// tokens = body bytes / 4 (JSON punctuation makes this a slight
/// over-estimate, which is the safe side), output tokens = the body's
/// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, else
/// [`default_max_tokens`](Self::default_max_tokens).
///
/// It scans at most [`scan_limit`](Self::scan_limit) bytes (default
/// 1 MiB); a longer body counts as its full length / 4 for input and the
/// default for output. A body it cannot see counts the default only.
#[derive(Clone, Copy, Debug)]
pub struct JsonEstimator {
    default_max_tokens: u64,
    scan_limit: usize,
}

impl Default for JsonEstimator {
    fn default() -> Self {
        JsonEstimator {
            default_max_tokens: 1024,
            scan_limit: 1 << 20,
        }
    }
}

impl JsonEstimator {
    /// The default estimator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Output tokens assumed when the body sets no maximum (default 1024;
    /// OpenAI's real default is the model's maximum, so a client that
    /// relies on it should set `max_tokens` or pass a [`TokenEstimate`]).
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// The most body bytes scanned for a `max_tokens` field (default 1 MiB).
    pub fn scan_limit(mut self, n: usize) -> Self {
        self.scan_limit = n;
        self
    }

    /// Estimates from raw body bytes.
    pub fn estimate_bytes(&self, body: Option<&[u8]>) -> Costs {
        self.estimate_declared_bytes(body).0
    }

    /// Estimates from raw body bytes, with the `max_tokens` the body
    /// declares, if any (see [`Estimator::declared_output`]).
    pub fn estimate_declared_bytes(&self, body: Option<&[u8]>) -> (Costs, Option<u64>) {
        let Some(body) = body else {
            return (Costs::new(0, self.default_max_tokens), None);
        };
        let input = (body.len() as u64).div_ceil(4);
        let declared = self.declared_bytes(body);
        let output = declared.unwrap_or(self.default_max_tokens);
        (Costs::new(input, output), declared)
    }

    fn declared_bytes(&self, body: &[u8]) -> Option<u64> {
        max_tokens(&body[..body.len().min(self.scan_limit)])
    }
}

/// The output-token maximum a JSON body names: the first
/// `"max_completion_tokens"`, else the first `"max_tokens"`, else the first
/// `"max_output_tokens"` (OpenAI's current, OpenAI's and Anthropic's, and
/// Gemini's names), each followed by a colon and an unsigned integer.
///
/// One pass over the body with a SIMD substring search for what the three
/// names end with, `tokens"`, then a look at the few bytes before each hit:
/// a 1 KiB chat body costs tens of nanoseconds, where three byte-window
/// scans cost microseconds.
fn max_tokens(body: &[u8]) -> Option<u64> {
    static SUFFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"tokens\""));
    // the first occurrence of each name, in order of preference
    const NAMES: [&[u8]; 3] = [b"\"max_completion_", b"\"max_", b"\"max_output_"];
    let mut first: [Option<usize>; 3] = [None; 3];
    for hit in SUFFIX.find_iter(body) {
        let before = &body[..hit];
        for (slot, name) in first.iter_mut().zip(NAMES) {
            if slot.is_none() && before.ends_with(name) {
                *slot = Some(hit + b"tokens\"".len());
            }
        }
        if first.iter().all(Option::is_some) {
            break;
        }
    }
    first
        .iter()
        .find_map(|at| at.and_then(|at| value_u64(&body[at..])))
}

/// The unsigned integer after optional spaces, a colon and optional
/// spaces, if any.
fn value_u64(rest: &[u8]) -> Option<u64> {
    let rest = trim(rest);
    let rest = trim(rest.strip_prefix(b":")?);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

impl<B: BodyBytes> Estimator<Request<B>> for JsonEstimator {
    fn estimate(&self, request: &Request<B>) -> Costs {
        self.estimate_bytes(request.body().body_bytes())
    }

    fn declared_output(&self, request: &Request<B>) -> Option<u64> {
        self.declared_bytes(request.body().body_bytes()?)
    }

    fn estimate_declared(&self, request: &Request<B>) -> (Costs, Option<u64>) {
        self.estimate_declared_bytes(request.body().body_bytes())
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_tokens_and_counts_bytes() {
        let e = JsonEstimator::new();
        let body =
            br#"{"model":"gpt-4o","max_tokens": 200,"messages":[{"role":"user","content":"hi"}]}"#;
        let c = e.estimate_bytes(Some(body));
        assert_eq!(c.output_tokens, 200);
        assert_eq!(c.input_tokens, (body.len() as u64).div_ceil(4));
        let c = e.estimate_bytes(Some(br#"{"max_completion_tokens":7}"#));
        assert_eq!(c.output_tokens, 7);
        let c = e.estimate_bytes(Some(br#"{"max_tokens":"x"}"#));
        assert_eq!(c.output_tokens, 1024);
        assert_eq!(e.estimate_bytes(None), Costs::new(0, 1024));
    }

    #[test]
    fn the_names_keep_their_order_of_preference() {
        let e = JsonEstimator::new();
        let out = |b: &[u8]| e.estimate_bytes(Some(b)).output_tokens;
        // the first name that is present with a number wins, in this order
        assert_eq!(out(br#"{"max_tokens":3,"max_completion_tokens":9}"#), 9);
        assert_eq!(out(br#"{"max_output_tokens":4,"max_tokens":3}"#), 3);
        assert_eq!(out(br#"{"generationConfig":{"max_output_tokens": 7}}"#), 7);
        // only a name's first occurrence counts
        assert_eq!(out(br#"{"max_tokens":"x","max_tokens":5}"#), 1024);
        assert_eq!(out(br#"{"max_tokens":"x","max_output_tokens":5}"#), 5);
        // near misses are not the names
        assert_eq!(
            out(br#"{"xmax_tokens":5,"max_tokens_x":6,"tokens":7}"#),
            1024
        );
        assert_eq!(out(br#"{"max_tokens" : 12 }"#), 12);
        assert_eq!(out(br#"{"max_tokens":18446744073709551616}"#), 1024);
        assert_eq!(out(b"tokens\""), 1024);
    }

    /// The byte-window search the single pass replaced, kept as the
    /// reference.
    fn reference(hay: &[u8]) -> Option<u64> {
        [
            "\"max_completion_tokens\"",
            "\"max_tokens\"",
            "\"max_output_tokens\"",
        ]
        .iter()
        .find_map(|name| {
            let name = name.as_bytes();
            let pos = hay.windows(name.len()).position(|w| w == name)?;
            value_u64(&hay[pos + name.len()..])
        })
    }

    proptest::proptest! {
        #[test]
        fn the_single_pass_agrees_with_the_reference(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "\"max_tokens\"", "\"max_completion_tokens\"", "\"max_output_tokens\"",
                    "\"tokens\"", "tokens\"", "\"max_", ":", " ", "12", "7", "\"x\"", ",", "{", "}",
                    "\"max_tokens_x\"", "completion_", "output_", "\"",
                ]),
                0..24,
            )
        ) {
            let body = parts.concat();
            proptest::prop_assert_eq!(max_tokens(body.as_bytes()), reference(body.as_bytes()), "{}", body);
        }
    }

    #[test]
    fn scan_is_bounded() {
        let e = JsonEstimator::new().scan_limit(8);
        let c = e.estimate_bytes(Some(br#"{"aaaaaaaaaa":1,"max_tokens":5}"#));
        assert_eq!(c.output_tokens, 1024);
    }
}
