//! Exact OpenAI token counts with OpenAI's own tokenizer (feature
//! `tiktoken`).

use std::borrow::Cow;

use http::Request;
use serde::Deserialize;
use serde_json::value::RawValue;
use tiktoken_rs::tokenizer::Tokenizer;
use tiktoken_rs::CoreBPE;

use super::{BodyBytes, Estimator, JsonEstimator};
use crate::rate_limit::Costs;

/// Counts the input tokens of an OpenAI chat completions body exactly,
/// with OpenAI's tokenizer (the [tiktoken-rs](https://docs.rs/tiktoken-rs)
/// crate): each message's role, text and name, plus the framing OpenAI
/// documents (3 tokens per message, 1 more for a name, 3 to prime the
/// reply). The encoding follows the body's `model`: `o200k_base` for
/// gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series, `cl100k_base` for
/// gpt-4 and gpt-3.5 (tiktoken-rs's table of model names).
///
/// What it cannot read exactly falls back to the rule of its
/// [`JsonEstimator`] ([`fallback`](Self::fallback)): an image, file or
/// audio part counts the fallback's
/// [`image_tokens`](JsonEstimator::image_tokens); tool definitions, tool
/// calls and unknown content parts count by the fallback's rule for
/// their JSON; a body that is not a chat completions body (Anthropic,
/// Gemini, the responses API), a model it does not know, a body that is
/// not valid JSON, or a body longer than
/// [`exact_limit`](Self::exact_limit), counts by the fallback whole.
/// Output tokens are `max_completion_tokens`, else `max_tokens`, else the
/// fallback's default.
///
/// Each encoding is loaded once, on first use, and shared by every
/// estimator (loading `o200k_base` takes a fraction of a second;
/// [`preload`](Self::preload) does it ahead of the first request).
/// Counting costs tens of microseconds per KiB of text, and allocates:
/// far more than the [`JsonEstimator`]'s tens of nanoseconds, for an
/// exact count.
///
/// ```
/// use tower_llm_resilience::rate_limit::{Costs, TiktokenEstimator};
///
/// let estimator = TiktokenEstimator::new();
/// let body = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[
///     {"role":"system","content":"Answer with one word."},
///     {"role":"user","content":"tiktoken is great!"}]}"#;
/// // 3 + "system" (1) + 5 text tokens, 3 + "user" (1) + 6 text tokens,
/// // and 3 to prime the reply.
/// assert_eq!(estimator.estimate_bytes(Some(body)), Costs::new(22, 5));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tiktoken")))]
#[derive(Clone, Copy, Debug)]
pub struct TiktokenEstimator {
    fallback: JsonEstimator,
    exact_limit: usize,
}

impl Default for TiktokenEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl TiktokenEstimator {
    /// Counts with tiktoken, falling back to the default [`JsonEstimator`].
    pub const fn new() -> Self {
        TiktokenEstimator {
            fallback: JsonEstimator::new(),
            exact_limit: 64 << 10,
        }
    }

    /// The estimator for what cannot be counted exactly, and the source of
    /// the default output tokens and the price of an image (default
    /// [`JsonEstimator::new`]).
    pub const fn fallback(mut self, fallback: JsonEstimator) -> Self {
        self.fallback = fallback;
        self
    }

    /// The longest body counted exactly (default 64 KiB); a longer one
    /// counts by the fallback, so that one huge prompt cannot hold a
    /// thread for milliseconds.
    pub const fn exact_limit(mut self, n: usize) -> Self {
        self.exact_limit = n;
        self
    }

    /// Loads the encodings now rather than on the first request that needs
    /// them.
    pub fn preload(&self) {
        tiktoken_rs::o200k_base_singleton();
        tiktoken_rs::cl100k_base_singleton();
    }

    /// Estimates from raw body bytes.
    pub fn estimate_bytes(&self, body: Option<&[u8]>) -> Costs {
        body.filter(|body| body.len() <= self.exact_limit)
            .and_then(|body| self.exact(body))
            .unwrap_or_else(|| self.fallback.estimate_bytes(body))
    }

    /// The exact count, if the body is a chat body of a known model.
    fn exact(&self, body: &[u8]) -> Option<Costs> {
        let chat: ChatBody<'_> = serde_json::from_slice(body).ok()?;
        let bpe = encoding(&chat.model)?;
        let count = |text: &str| bpe.encode_ordinary(text).len() as u64;
        let json = |raw: &RawValue| self.fallback.fragment_tokens(raw.get().as_bytes());
        // the reply is primed with <|start|>assistant<|message|>
        // (saturating: an absurd image price must not overflow)
        let mut input = REPLY_PRIMING;
        let mut add = |tokens: u64| input = input.saturating_add(tokens);
        for message in &chat.messages {
            add(TOKENS_PER_MESSAGE + count(&message.role));
            if let Some(name) = &message.name {
                add(TOKENS_PER_NAME + count(name));
            }
            if let Some(content) = message.content {
                add(self.content_tokens(content, &count)?);
            }
            add(message.tool_calls.map_or(0, json));
            add(message.function_call.map_or(0, json));
        }
        add(chat.tools.map_or(0, json));
        add(chat.functions.map_or(0, json));
        let output = chat
            .max_completion_tokens
            .or(chat.max_tokens)
            .unwrap_or(self.fallback.default_max_tokens);
        Some(Costs::new(input, output))
    }

    /// A message's content: a string, or an array of parts.
    fn content_tokens(&self, content: &RawValue, count: &impl Fn(&str) -> u64) -> Option<u64> {
        let raw = content.get();
        if raw.starts_with('"') {
            let text: Cow<'_, str> = serde_json::from_str(raw).ok()?;
            return Some(count(&text));
        }
        if raw == "null" {
            return Some(0);
        }
        let parts: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
        let mut tokens = 0u64;
        for part in parts {
            let typed: Part<'_> = serde_json::from_str(part.get()).ok()?;
            tokens = tokens.saturating_add(match (&*typed.kind, typed.text) {
                ("text" | "input_text", Some(text)) => count(&text),
                ("image_url" | "input_image" | "input_audio" | "file" | "input_file", _) => {
                    self.fallback.image_tokens
                }
                _ => self.fallback.fragment_tokens(part.get().as_bytes()),
            });
        }
        Some(tokens)
    }
}

/// OpenAI's framing of a chat, from its cookbook ("How to count tokens
/// with tiktoken"): every message costs 3 tokens beside its role and text,
/// a name 1 more, and the reply is primed with 3.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// The chat encoding of an OpenAI model, loaded on first use.
fn encoding(model: &str) -> Option<&'static CoreBPE> {
    match tiktoken_rs::tokenizer::get_tokenizer(model)? {
        Tokenizer::O200kBase => Some(tiktoken_rs::o200k_base_singleton()),
        Tokenizer::Cl100kBase => Some(tiktoken_rs::cl100k_base_singleton()),
        _ => None,
    }
}

/// The fields of a chat completions body that cost input tokens.
#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

/// A content part: its type, and its text if it has one.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

impl<B: BodyBytes> Estimator<Request<B>> for TiktokenEstimator {
    fn estimate(&self, request: &Request<B>) -> Costs {
        self.estimate_bytes(request.body().body_bytes().as_deref())
    }

    /// The body's `max_tokens`, read by the fallback's scan.
    fn declared_output(&self, request: &Request<B>) -> Option<u64> {
        self.fallback.declared_output(request)
    }

    fn model<'r>(&self, request: &'r Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        self.fallback.model(request)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::MEASURED;
    use super::*;

    #[test]
    fn counts_known_strings_exactly() {
        let (cl100k, o200k) = (encoding("gpt-4").unwrap(), encoding("gpt-4o").unwrap());
        // OpenAI's cookbook example
        assert_eq!(
            cl100k.encode_ordinary("tiktoken is great!"),
            [83, 1609, 5963, 374, 2294, 0]
        );
        assert_eq!(
            o200k.encode_ordinary("tiktoken is great!"),
            [83, 8251, 2488, 382, 2212, 0]
        );
        assert_eq!(cl100k.encode_ordinary("hello world"), [15339, 1917]);
        // the counts the JSON estimator's rule is measured against
        for &(text, cl, o2, _) in MEASURED {
            assert_eq!(cl100k.encode_ordinary(text).len() as u64, cl, "{text}");
            assert_eq!(o200k.encode_ordinary(text).len() as u64, o2, "{text}");
        }
    }

    /// The chat of OpenAI's cookbook ("How to count tokens with tiktoken"),
    /// which the API counted as 129 prompt tokens for gpt-3.5-turbo and
    /// gpt-4, and 124 for gpt-4o and gpt-4o-mini.
    fn cookbook_chat(model: &str) -> String {
        json!({
            "model": model,
            "max_completion_tokens": 50,
            "max_tokens": 10,
            "messages": [
                {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
                {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
                {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
                {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
                {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
                {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
            ],
        })
        .to_string()
    }

    #[test]
    fn counts_a_chat_as_the_api_does() {
        let estimator = TiktokenEstimator::new();
        for (model, tokens) in [
            ("gpt-3.5-turbo", 129),
            ("gpt-4-0613", 129),
            ("gpt-4o", 124),
            ("gpt-4o-mini", 124),
        ] {
            let costs = estimator.estimate_bytes(Some(cookbook_chat(model).as_bytes()));
            assert_eq!(costs, Costs::new(tokens, 50), "{model}");
        }
    }

    #[test]
    fn picks_the_encoding_by_model() {
        let o200k = tiktoken_rs::o200k_base_singleton() as *const CoreBPE;
        let cl100k = tiktoken_rs::cl100k_base_singleton() as *const CoreBPE;
        let of = |model| encoding(model).map(|bpe| bpe as *const CoreBPE);
        for model in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "chatgpt-4o-latest",
            "gpt-4.1",
            "gpt-4.1-nano",
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-5",
        ] {
            assert_eq!(of(model), Some(o200k), "{model}");
        }
        for model in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo", "gpt-35-turbo"] {
            assert_eq!(of(model), Some(cl100k), "{model}");
        }
        for model in [
            "claude-sonnet-4-5",
            "llama-3.1-8b-instant",
            "gpt-oss-20b",
            "text-davinci-003",
            "",
        ] {
            assert_eq!(of(model), None, "{model}");
        }
    }

    #[test]
    fn falls_back_for_what_it_cannot_read() {
        let estimator = TiktokenEstimator::new();
        let fallback = JsonEstimator::new();
        let same = |body: &str| {
            assert_eq!(
                estimator.estimate_bytes(Some(body.as_bytes())),
                fallback.estimate_bytes(Some(body.as_bytes())),
                "{body}"
            );
        };
        // not a chat completions body, a model it does not know, not JSON
        same(
            r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        same(r#"{"model":"gpt-4o","input":"hi","max_output_tokens":9}"#);
        same(r#"{"model":"llama-3.1-8b-instant","messages":[{"role":"user","content":"hi"}]}"#);
        same(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}"#);
        same(r#"{"model":"gpt-4o","max_tokens":"many","messages":[]}"#);
        same("");
        assert_eq!(estimator.estimate_bytes(None), Costs::new(0, 1024));
        // longer than the exact limit
        let long = cookbook_chat("gpt-4o");
        let short_limit = estimator.exact_limit(long.len() - 1);
        assert_eq!(
            short_limit.estimate_bytes(Some(long.as_bytes())),
            fallback.estimate_bytes(Some(long.as_bytes()))
        );
    }

    #[test]
    fn images_and_tools_count_by_the_fallback() {
        let estimator = TiktokenEstimator::new().fallback(
            JsonEstimator::new()
                .image_tokens(765)
                .default_max_tokens(300),
        );
        let o200k = encoding("gpt-4o").unwrap();
        let text = |t: &str| o200k.encode_ordinary(t).len() as u64;
        let b64 = "iVBORw0KGgo".repeat(1_000);
        let body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Describe it."},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}},
            ]}],
        })
        .to_string();
        let costs = estimator.estimate_bytes(Some(body.as_bytes()));
        assert_eq!(
            costs,
            Costs::new(3 + text("user") + text("Describe it.") + 765 + 3, 300)
        );

        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let body = json!({"model": "gpt-4o", "tools": tools, "messages": [{"role": "user", "content": "Weather in Paris?"}]}).to_string();
        let costs = estimator.estimate_bytes(Some(body.as_bytes()));
        let tool_tokens = JsonEstimator::new().fragment_tokens(tools.to_string().as_bytes());
        assert!(tool_tokens > 10);
        assert_eq!(
            costs.input_tokens,
            3 + text("user") + text("Weather in Paris?") + 3 + tool_tokens
        );
    }
}
