//! [`ByModel`]: one bucket per model, read from the request.

use std::borrow::Cow;

use http::header::HeaderName;
use http::Request;
use memchr::{memchr, memchr2};

use super::{Key, KeyFn};
use crate::rate_limit::{BodyBytes, BodyView};

/// How many bytes of a request body [`ByModel`] scans by default for its
/// top-level `"model"`: 1 MiB, as the token estimator. SDKs often write
/// the model after the messages (`{"messages":[...],"model":"..."}`), so
/// the scan must pass over the prompt; it jumps from quote to quote and
/// looks at nothing inside strings.
pub const DEFAULT_MODEL_SCAN_LIMIT: usize = 1 << 20;

/// The longest model name taken: a longer one is not a model, and the
/// request counts under [`Key::DEFAULT`] (so that a hostile body cannot
/// make a key of a megabyte).
const MAX_MODEL_LEN: usize = 256;
/// The longest JSON string that can decode to [`MAX_MODEL_LEN`] bytes
/// (`\uXXXX` is six bytes for one), so that no longer one is decoded.
const MAX_ESCAPED_LEN: usize = 6 * MAX_MODEL_LEN;

/// One bucket per model, as providers count their limits: each model gets
/// its own windows, gate and breaker, so that a model at its limit (or
/// down) holds back only its own requests.
///
/// The model is, in order:
///
/// 1. the value of [`header`](Self::header), when one is set and present;
/// 2. the path's model, for APIs that put it there: Gemini's
///    `/models/{model}:generateContent`, Azure OpenAI's
///    `/deployments/{deployment}/...` (Azure counts per deployment);
/// 3. the body's top-level `"model"` string (OpenAI, Anthropic and every
///    OpenAI-compatible API), found by a scan of at most
///    [`scan_limit`](Self::scan_limit) bytes that skips nested objects, so
///    that a `"model"` inside a message or a tool schema is not taken.
///
/// A request without one (or with a name over 256 bytes, or not UTF-8) is
/// counted under [`Key::DEFAULT`]. The body is read only when it is held in
/// memory ([`BodyBytes`]: `String`, `Bytes`, `Vec<u8>`, `Full<Bytes>`;
/// a streamed body behind [`BufferBodyLayer`](crate::retry::BufferBodyLayer)).
///
/// Cost: the scan allocates nothing; the key is one allocation (its name),
/// as for [`ByHost`](super::ByHost). The limiter and the breaker each ask
/// for the key, so the body is scanned twice per attempt.
///
/// Combine it with other key functions in a tuple, `(ByModel::new(),
/// ByHeader::api_key())`, for one bucket per model and API key; give each
/// model its limits with [`LlmLayer::key_limits`](crate::LlmLayer::key_limits):
///
/// ```
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::key::ByModel;
/// use tower_llm_resilience::{Limits, LlmLayer, Provider};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // gpt-4o: 1 request a minute; every other model: 100.
/// let layer = LlmLayer::new(Provider::OpenAi)
///     .requests_per_minute(100)
///     .key_fn(ByModel::new())
///     .key_limits(|key| match key.as_str() {
///         Some("gpt-4o") => Limits::new().requests_per_minute(1),
///         _ => Limits::new().requests_per_minute(100),
///     });
/// let mut client = layer.layer(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
/// }));
/// let chat = |model: &str| {
///     let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}"}}"#);
///     http::Request::post("https://api.openai.com/v1/chat/completions").body(body).unwrap()
/// };
/// let start = tokio::time::Instant::now();
/// client.ready().await.unwrap().call(chat("gpt-4o")).await.unwrap();
/// // gpt-4o's minute is spent; gpt-4o-mini is not held by it.
/// for _ in 0..3 {
///     client.ready().await.unwrap().call(chat("gpt-4o-mini")).await.unwrap();
/// }
/// assert_eq!(start.elapsed(), Duration::ZERO);
/// // A second gpt-4o call waits for its own window.
/// client.ready().await.unwrap().call(chat("gpt-4o")).await.unwrap();
/// assert!(start.elapsed() >= Duration::from_secs(60));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ByModel {
    header: Option<HeaderName>,
    scan_limit: usize,
}

impl Default for ByModel {
    fn default() -> Self {
        ByModel::new()
    }
}

impl ByModel {
    /// The model from the path or the body (no header; a scan of at most
    /// [`DEFAULT_MODEL_SCAN_LIMIT`] bytes).
    pub const fn new() -> Self {
        ByModel {
            header: None,
            scan_limit: DEFAULT_MODEL_SCAN_LIMIT,
        }
    }

    /// Reads the model from the header `name` first (default: no header),
    /// for a gateway whose callers name the model there (`x-model`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = Some(name);
        self
    }

    /// Scans at most `n` bytes of the body for its `"model"` (default
    /// [`DEFAULT_MODEL_SCAN_LIMIT`], 1 MiB; 0 reads no body).
    pub const fn scan_limit(mut self, n: usize) -> Self {
        self.scan_limit = n;
        self
    }

    /// The model `request` names, as [`ByModel`] finds it; borrowed from
    /// the request unless the body's string has escapes or the body only
    /// shares its bytes ([`BodyView::Shared`], `Full<Bytes>`).
    ///
    /// ```
    /// use http::Request;
    /// use tower_llm_resilience::key::ByModel;
    ///
    /// let body = r#"{"messages":[{"content":"{\"model\":\"no\"}"}],"tools":[{"model":"no"}],"model":"gpt-4o"}"#;
    /// let req = Request::post("/v1/chat/completions").body(body).unwrap();
    /// assert_eq!(ByModel::new().model_of(&req).as_deref(), Some("gpt-4o"));
    ///
    /// let gemini = Request::post("/v1beta/models/gemini-2.0-flash:generateContent").body("{}").unwrap();
    /// assert_eq!(ByModel::new().model_of(&gemini).as_deref(), Some("gemini-2.0-flash"));
    /// ```
    pub fn model_of<'a, B: BodyBytes>(&self, request: &'a Request<B>) -> Option<Cow<'a, str>> {
        match self.find(request)? {
            Found::Here(model) => Some(model),
            // A body that only shares its bytes (`Full<Bytes>`): the name
            // outlives the view only as a copy.
            Found::Shared(body) => self
                .model_in_body(&body)
                .map(|model| Cow::Owned(model.into_owned())),
        }
    }

    /// The model from the header or the path, or the body that holds it.
    fn find<'a, B: BodyBytes>(&self, request: &'a Request<B>) -> Option<Found<'a>> {
        if let Some(name) = &self.header {
            let value = request.headers().get(name).and_then(|v| v.to_str().ok());
            if let Some(model) = value.map(str::trim).filter(|m| is_name(m.as_bytes())) {
                return Some(Found::Here(Cow::Borrowed(model)));
            }
        }
        if let Some(model) = model_in_path(request.uri().path()) {
            return Some(Found::Here(Cow::Borrowed(model)));
        }
        match request.body().body_bytes()? {
            BodyView::Borrowed(body) => self.model_in_body(body).map(Found::Here),
            BodyView::Shared(body) => Some(Found::Shared(body)),
        }
    }

    fn model_in_body<'a>(&self, body: &'a [u8]) -> Option<Cow<'a, str>> {
        let raw = top_level_string(&body[..body.len().min(self.scan_limit)], b"model")?;
        if raw.len() > MAX_ESCAPED_LEN {
            return None; // too long even if every character were escaped
        }
        let model = if memchr(b'\\', raw).is_none() {
            Cow::Borrowed(std::str::from_utf8(raw).ok()?)
        } else {
            Cow::Owned(unescape(raw)?)
        };
        is_name(model.as_bytes()).then_some(model)
    }
}

impl<B: BodyBytes> KeyFn<Request<B>> for ByModel {
    fn key(&self, request: &Request<B>) -> Key {
        match self.find(request) {
            Some(Found::Here(model)) => Key::for_model(&*model),
            // The key is made while the shared view lives: no copy of the
            // name but the key's own.
            Some(Found::Shared(body)) => self
                .model_in_body(&body)
                .map_or(Key::DEFAULT, |model| Key::for_model(&*model)),
            None => Key::DEFAULT,
        }
    }
}

/// Where [`ByModel::find`] found the model: in the request (borrowed, or
/// unescaped), or in a body that only shares its bytes.
enum Found<'a> {
    Here(Cow<'a, str>),
    Shared(bytes::Bytes),
}

/// Whether `name` can be a model's name: not empty, not too long.
fn is_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= MAX_MODEL_LEN
}

/// The model a path names: Gemini's `/models/{model}:{method}` and Azure
/// OpenAI's `/deployments/{deployment}/...`. Compares segments (no
/// substring search, which costs more on every OpenAI path).
fn model_in_path(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    while let Some(segment) = segments.next() {
        let model = match segment {
            "models" => segments.next()?.split_once(':').map(|(model, _)| model),
            "deployments" => segments.next(),
            _ => continue,
        };
        if let Some(model) = model.filter(|m| is_name(m.as_bytes())) {
            return Some(model);
        }
    }
    None
}

/// The raw content (escapes kept) of the string value of the top-level
/// key `name` of a JSON object, if the first such key has a string value.
/// The bytes between strings (a few: `":"`, `","`, brackets) are walked
/// one by one to follow the nesting; each string is skipped with `memchr`.
fn top_level_string<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0usize;
    let mut pos = 0;
    loop {
        let open = loop {
            match body.get(pos)? {
                b'"' => break pos,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            pos += 1;
        };
        let end = string_end(body, open + 1)?;
        if depth == 1 && &body[open + 1..end] == name {
            if let Some(value) = after_colon(&body[end + 1..]) {
                // The key: its value is ours if it is a string.
                let value_at = body.len() - value.len();
                if value.first() != Some(&b'"') {
                    return None;
                }
                let value_end = string_end(body, value_at + 1)?;
                return Some(&body[value_at + 1..value_end]);
            }
        }
        pos = end + 1;
    }
}

/// The index of the quote that closes the string whose content starts at
/// `at`, or `None` if it does not close within `body`.
fn string_end(body: &[u8], mut at: usize) -> Option<usize> {
    while let Some(found) = body.get(at..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
        let i = at + found;
        if body[i] == b'"' {
            return Some(i);
        }
        at = i + 2; // an escape: skip the escaped byte
    }
    None
}

/// What follows a key's colon (whitespace skipped), if `rest` starts with
/// one (whitespace skipped): the string before was a key.
fn after_colon(rest: &[u8]) -> Option<&[u8]> {
    let rest = trim_start(rest).strip_prefix(b":")?;
    Some(trim_start(rest))
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// A JSON string's content with its escapes decoded; `None` if they are
/// not valid JSON. Allocates: only for a model name with escapes.
fn unescape(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(body: &str) -> Option<String> {
        let req = Request::post("/v1/chat/completions")
            .body(body.to_owned())
            .unwrap();
        ByModel::new().model_of(&req).map(Cow::into_owned)
    }

    #[test]
    fn finds_the_top_level_model_only() {
        assert_eq!(model(r#"{"model":"gpt-4o"}"#).as_deref(), Some("gpt-4o"));
        assert_eq!(
            model(" {\n  \"model\" :\t\"claude-sonnet-4-5\" ,\"max_tokens\":5}").as_deref(),
            Some("claude-sonnet-4-5")
        );
        // after the messages, past nested "model" keys and a "model" value
        let body = r#"{"messages":[{"role":"user","content":"model"},{"model":"inner"}],
            "tools":[{"function":{"parameters":{"model":{"type":"string"}}}}],
            "metadata":{"model":"meta"},"model":"gpt-4.1-mini"}"#;
        assert_eq!(model(body).as_deref(), Some("gpt-4.1-mini"));
        // braces and quotes inside strings are not structure
        let body = r#"{"messages":[{"content":"}}]] \"model\": \"x\" {{"}],"model":"o3"}"#;
        assert_eq!(model(body).as_deref(), Some("o3"));
        // escapes decoded; OpenRouter's names keep their slash
        assert_eq!(
            model(r#"{"model":"openai\/gpt-4o"}"#).as_deref(),
            Some("openai/gpt-4o")
        );
        assert_eq!(
            model(r#"{"model":"\u0067pt-4o"}"#).as_deref(),
            Some("gpt-4o")
        );
    }

    #[test]
    fn no_model_is_none() {
        for body in [
            "",
            "{}",
            "[]",
            r#"["model","gpt-4o"]"#,
            r#"{"model":null}"#,
            r#"{"model":42,"x":{"model":"inner"}}"#,
            r#"{"model":""}"#,
            r#"{"model":"unterminated"#,
            r#"{"model""#,
            r#"{"model":"bad \u12"}"#,
            r#"{"messages":[{"model":"inner"}]}"#,
            "\u{0}\u{1}\"\"\"\\",
        ] {
            assert_eq!(model(body), None, "{body:?}");
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(model(&long), None);
        let longest = "m".repeat(MAX_MODEL_LEN);
        assert_eq!(model(&format!(r#"{{"model":"{longest}"}}"#)), Some(longest));
        // escapes: the longest string that can decode to a name is read
        let escaped = "\\u0041".repeat(MAX_MODEL_LEN);
        assert_eq!(escaped.len(), MAX_ESCAPED_LEN);
        let decoded = model(&format!(r#"{{"model":"{escaped}"}}"#));
        assert_eq!(decoded, Some("A".repeat(MAX_MODEL_LEN)));
        let longer = format!(r#"{{"model":"{escaped}\u0041"}}"#);
        assert_eq!(model(&longer), None);
        let not_utf8 = Request::new(b"{\"model\":\"\xff\xfe\"}".to_vec());
        assert_eq!(ByModel::new().model_of(&not_utf8), None);
    }

    #[test]
    fn the_scan_is_bounded() {
        let body = format!(
            r#"{{"messages":[{{"content":"{}"}}],"model":"gpt-4o"}}"#,
            "x".repeat(1000)
        );
        let req = Request::new(body.clone());
        assert_eq!(ByModel::new().model_of(&req).as_deref(), Some("gpt-4o"));
        assert_eq!(ByModel::new().scan_limit(1000).model_of(&req), None);
        assert_eq!(ByModel::new().scan_limit(0).model_of(&req), None);
        let at = body.len();
        assert_eq!(
            ByModel::new().scan_limit(at).model_of(&req).as_deref(),
            Some("gpt-4o")
        );
        // cut inside the model's own string: not a model
        assert_eq!(ByModel::new().scan_limit(at - 4).model_of(&req), None);
    }

    #[test]
    fn header_then_path_then_body() {
        let by_header = ByModel::new().header(HeaderName::from_static("x-model"));
        let req = Request::post("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
            .header("x-model", " gpt-4o ")
            .body(r#"{"model":"in-body"}"#)
            .unwrap();
        assert_eq!(by_header.model_of(&req).as_deref(), Some("gpt-4o"));
        assert_eq!(
            ByModel::new().model_of(&req).as_deref(),
            Some("gemini-2.0-flash")
        );
        let azure = Request::post(
            "https://x.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        )
        .body(r#"{"model":"gpt-4o"}"#)
        .unwrap();
        assert_eq!(
            ByModel::new().model_of(&azure).as_deref(),
            Some("gpt4o-prod")
        );
        // an empty or missing header falls back to the body
        let req = Request::post("/v1/chat/completions")
            .header("x-model", "")
            .body(r#"{"model":"in-body"}"#)
            .unwrap();
        assert_eq!(by_header.model_of(&req).as_deref(), Some("in-body"));
        // paths that only look like it
        for path in [
            "/v1/models",
            "/v1/models/",
            "/v1/models/gpt-4o",
            "/v1/deployments/",
        ] {
            let req = Request::get(path).body(()).unwrap();
            assert_eq!(ByModel::new().model_of(&req), None, "{path}");
        }
        // a body that is not in memory: header and path only
        let req = Request::get("/v1/models/:x").body(()).unwrap();
        assert_eq!(ByModel::new().model_of(&req), None);
    }

    #[test]
    fn keys_are_models_or_the_default() {
        let req = Request::new(String::from(r#"{"model":"gpt-4o"}"#));
        assert_eq!(ByModel::new().key(&req), Key::from_static("gpt-4o"));
        let req = Request::new(String::from("{}"));
        assert_eq!(ByModel::new().key(&req), Key::DEFAULT);
    }
}
