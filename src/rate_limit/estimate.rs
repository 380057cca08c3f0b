//! What a request will cost before it is sent.

use http::Request;

use super::limits::Costs;

mod body;
#[cfg(test)]
mod reference;
mod scan;
#[cfg(feature = "tiktoken")]
mod tiktoken;

pub use self::body::{BodyBytes, BodyView};
#[cfg(feature = "tiktoken")]
pub use self::tiktoken::TiktokenEstimator;

/// The caller's own token estimate for a request, set as a request
/// extension; it wins over any [`Estimator`].
///
/// [`TokenEstimate::new`] says input and output apart, so that each is
/// charged where it belongs: a key with separate input- and output-token
/// limits (Anthropic's) checks both, and a request whose output estimate is
/// above the key's whole output-token capacity fails at once.
/// [`TokenEstimate::total`] is a total not split into the two: it counts as
/// input tokens (so against token and input-token limits, not against an
/// output-token limit).
///
/// ```
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer, TokenEstimate};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Anthropic limits input and output tokens per minute separately.
/// let limits = Limits::new().input_tokens_per_minute(30_000).output_tokens_per_minute(8_000);
/// let mut svc = RateLimitLayer::new(limits).layer(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// let request = |estimate: TokenEstimate| {
///     let mut req = http::Request::new(String::from("{}"));
///     req.extensions_mut().insert(estimate);
///     req
/// };
/// // 1,000 in, 2,000 out: fits both limits.
/// svc.ready().await.unwrap().call(request(TokenEstimate::new(1_000, 2_000))).await.unwrap();
/// // 10,000 output tokens can never fit the minute's 8,000: fails at once,
/// // although the total would fit the input limit.
/// let error = svc.ready().await.unwrap().call(request(TokenEstimate::new(10, 10_000))).await.unwrap_err();
/// assert!(error.is_over_capacity());
/// // The same total, unsplit, counts as input tokens only.
/// svc.ready().await.unwrap().call(request(TokenEstimate::total(10_010))).await.unwrap();
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenEstimate {
    /// Estimated input (prompt) tokens.
    pub input_tokens: u64,
    /// Estimated output (completion) tokens.
    pub output_tokens: u64,
}

impl TokenEstimate {
    /// An estimate of `input_tokens` in and `output_tokens` out.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        TokenEstimate {
            input_tokens,
            output_tokens,
        }
    }

    /// A total estimate not split into input and output: counted as input
    /// tokens.
    pub const fn total(tokens: u64) -> Self {
        TokenEstimate::new(tokens, 0)
    }

    /// Input plus output tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl From<TokenEstimate> for Costs {
    /// One request costing the estimate's tokens.
    fn from(estimate: TokenEstimate) -> Self {
        Costs::new(estimate.input_tokens, estimate.output_tokens)
    }
}

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

    /// The model the request names, for events, metrics and spans: asked
    /// only while the limiter's events are observed (a listener, or a
    /// `tracing` subscriber that wants its spans) and only when the
    /// request's key names no model ([`Key::model`](crate::Key::model)).
    /// The default says `None`; the JSON estimators read it as
    /// [`ByModel`](crate::key::ByModel) does.
    fn model<'r>(&self, request: &'r Req) -> Option<std::borrow::Cow<'r, str>> {
        let _ = request;
        None
    }
}

impl<Req, F: Fn(&Req) -> Costs + Send + Sync> Estimator<Req> for F {
    fn estimate(&self, request: &Req) -> Costs {
        self(request)
    }
}

/// What an image costs by default: 1,600 tokens.
///
/// Anthropic charges `width × height / 750` tokens for an image, and
/// resizes one above about 1.15 megapixels, so an image costs at most
/// about 1,600 tokens (1,590 for 1092 × 1092). OpenAI charges 85 tokens
/// for `detail: low` and `85 + 170` per 512-pixel tile for `high` on
/// gpt-4o (765 for 1024 × 1024, at most 1,105), and one token per
/// 32-pixel patch, at most 1,536, on gpt-4.1. Exceptions that cost more
/// per image: gpt-4o-mini counts an image as about 33 times as many tokens
/// (2,833 + 5,667 per tile), and a PDF, audio or video costs by its pages
/// or its length; raise [`JsonEstimator::image_tokens`] or pass a
/// [`TokenEstimate`] for those.
pub const DEFAULT_IMAGE_TOKENS: u64 = 1_600;

/// An estimator for JSON request bodies (OpenAI chat completions and
/// responses, Anthropic messages, Gemini `generateContent`), in one cheap
/// pass over the body with no allocation and no JSON parse.
///
/// **Input tokens** count what the provider counts:
///
/// - text, by its characters: ASCII letters and spaces 4 to a token, ASCII
///   digits and punctuation 1 token each (code, numbers and identifiers
///   split into many tokens), every byte of a non-ASCII character 2/3 of a
///   token (2 tokens for a CJK character). The JSON around the text (keys,
///   quotes, brackets, numbers) counts 4 bytes to a token, which covers the
///   few tokens a provider adds per message;
/// - an image, file or audio part (OpenAI `image_url`, `input_image` or
///   `file`, Anthropic `image` or `document`, Gemini `inline_data` or
///   `file_data`) counts [`image_tokens`](Self::image_tokens) (default
///   [`DEFAULT_IMAGE_TOKENS`], 1,600), not its base64 bytes: a base64
///   payload (a `data:` URL, or a long run of the base64 alphabet in any
///   string) is never taken for text.
///
/// Measured against the real tokenizers (OpenAI's `cl100k_base` and
/// `o200k_base`, and the one Anthropic published for Claude 2, the latest
/// it made public) on 28 samples (English, code, CSV, logs, URLs, JSON,
/// German, French, Chinese, Japanese, Korean, Russian, Greek, Hebrew,
/// Arabic, Hindi, Thai, emoji): the rule is never under OpenAI's counts,
/// but for rare CJK characters, which `cl100k_base` splits into a token
/// per byte (3 or 4 where the rule counts 2 or 2.7); and a chat body's
/// estimate is never under any of the three tokenizers plus OpenAI's
/// framing. It is 1.05x to 1.65x `cl100k_base` on ASCII text, 1.1x to
/// 2.3x on other scripts, and 2x to 4.7x `o200k_base` (gpt-4o and later)
/// on non-Latin scripts: the safe side, which the response's
/// [`TokenUsage`] corrects. For OpenAI's exact count, see
/// `TiktokenEstimator` (feature `tiktoken`).
///
/// **Output tokens** are the body's `max_completion_tokens`, else
/// `max_tokens`, else `max_output_tokens` (OpenAI's current, OpenAI's and
/// Anthropic's, OpenAI's responses API names), read at the top level of
/// the body only (so that a tool's JSON schema with a `max_tokens`
/// property is not taken for it), or Gemini's
/// `generationConfig.maxOutputTokens`; else
/// [`default_max_tokens`](Self::default_max_tokens).
///
/// It scans at most [`scan_limit`](Self::scan_limit) bytes (default
/// 1 MiB); the rest of a longer body counts 4 bytes to a token (nothing
/// when the scan stopped inside a base64 payload, since the rest is more of
/// it), and its output tokens the default when no maximum was seen. A body
/// it cannot see counts the default output only.
///
/// ```
/// use tower_llm_resilience::rate_limit::{Costs, JsonEstimator};
///
/// let estimator = JsonEstimator::new();
/// let image = "iVBORw0KGgo".repeat(10_000); // 110 KB of base64
/// let body = format!(
///     r#"{{"model":"claude-sonnet-4-5","max_tokens":300,
///         "tools":[{{"name":"summarize","input_schema":{{"type":"object",
///             "properties":{{"max_tokens":{{"type":"integer"}}}}}}}}],
///         "messages":[{{"role":"user","content":[
///             {{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{image}"}}}},
///             {{"type":"text","text":"What is in this picture?"}}]}}]}}"#
/// );
/// let costs = estimator.estimate_bytes(Some(body.as_bytes()));
/// // The top-level max_tokens, not the schema's property.
/// assert_eq!(costs.output_tokens, 300);
/// // One image (1,600 tokens) and about 100 tokens of text and JSON,
/// // where bytes / 4 would have said 27,600.
/// assert!((1_650..1_800).contains(&costs.input_tokens), "{costs:?}");
///
/// // Chinese: 1.2 to 1.4 tokens a character in cl100k_base and Claude 2's
/// // tokenizer; counted 2 (14 for the 7 characters, 11 for the JSON around them).
/// let body = r#"{"messages":[{"role":"user","content":"包裹晚到了两天"}]}"#;
/// assert_eq!(estimator.estimate_bytes(Some(body.as_bytes())), Costs::new(25, 1024));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct JsonEstimator {
    default_max_tokens: u64,
    scan_limit: usize,
    image_tokens: u64,
}

impl Default for JsonEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonEstimator {
    /// The default estimator.
    pub const fn new() -> Self {
        JsonEstimator {
            default_max_tokens: 1024,
            scan_limit: 1 << 20,
            image_tokens: DEFAULT_IMAGE_TOKENS,
        }
    }

    /// Output tokens assumed when the body sets no maximum (default 1024;
    /// OpenAI's real default is the model's maximum, so a client that
    /// relies on it should set `max_tokens` or pass a [`TokenEstimate`]).
    pub const fn default_max_tokens(mut self, n: u64) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// The most body bytes scanned (default 1 MiB).
    pub const fn scan_limit(mut self, n: usize) -> Self {
        self.scan_limit = n;
        self
    }

    /// Input tokens counted for each image, file or audio part (default
    /// [`DEFAULT_IMAGE_TOKENS`], 1,600, which says why).
    pub const fn image_tokens(mut self, n: u64) -> Self {
        self.image_tokens = n;
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
        let scanned = &body[..body.len().min(self.scan_limit)];
        let scan = scan::scan(scanned);
        let rest = if scan.cut_in_payload {
            0
        } else {
            ((body.len() - scanned.len()) as u64).div_ceil(4)
        };
        let input = self.tokens_of(&scan).saturating_add(rest);
        let declared = scan.max_tokens;
        let output = declared.unwrap_or(self.default_max_tokens);
        (Costs::new(input, output), declared)
    }

    fn declared_bytes(&self, body: &[u8]) -> Option<u64> {
        scan::scan(&body[..body.len().min(self.scan_limit)]).max_tokens
    }

    /// The input tokens of a JSON fragment (a value inside a body) by this
    /// estimator's rule.
    #[cfg(feature = "tiktoken")]
    fn fragment_tokens(&self, json: &[u8]) -> u64 {
        self.tokens_of(&scan::scan(&json[..json.len().min(self.scan_limit)]))
    }

    fn tokens_of(&self, scan: &scan::Scan) -> u64 {
        scan.units
            .div_ceil(scan::UNITS_PER_TOKEN)
            .saturating_add(scan.attachments.saturating_mul(self.image_tokens))
    }
}

impl<B: BodyBytes> Estimator<Request<B>> for JsonEstimator {
    fn estimate(&self, request: &Request<B>) -> Costs {
        self.estimate_bytes(request.body().body_bytes().as_deref())
    }

    fn declared_output(&self, request: &Request<B>) -> Option<u64> {
        self.declared_bytes(&request.body().body_bytes()?)
    }

    fn estimate_declared(&self, request: &Request<B>) -> (Costs, Option<u64>) {
        self.estimate_declared_bytes(request.body().body_bytes().as_deref())
    }

    fn model<'r>(&self, request: &'r Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        crate::key::ByModel::new().model_of(request)
    }
}

#[cfg(test)]
mod tests;
