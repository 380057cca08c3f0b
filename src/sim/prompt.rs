//! What the provider reads from a request: its body, its prompt's text and
//! the tokens it counts for it.

use serde_json::Value;

/// Tokens of `chars` characters of text: `ceil(chars / 4)`, the usual rule
/// of thumb for English with OpenAI's tokenizers.
pub fn count_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// The text a prompt asks to classify: what follows the last `Text:` of the
/// last user message, else that message's last non-empty line.
pub fn text_of_prompt(message: &str) -> &str {
    if let Some(i) = message.rfind("Text:") {
        return message[i + 5..].trim();
    }
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The texts of a batched prompt, one per numbered line (`1. text` or
/// `1) text`), when the message asks for a "JSON array"; `None` otherwise.
/// The provider then answers a JSON array of labels, one per text, in order.
///
/// ```
/// use tower_llm_resilience::sim::batched_texts;
/// let prompt = "Label each text; answer with a JSON array of labels.\n1. I love it\n2) awful";
/// assert_eq!(batched_texts(prompt), Some(vec!["I love it", "awful"]));
/// assert_eq!(batched_texts("Text: I love it"), None);
/// ```
pub fn batched_texts(message: &str) -> Option<Vec<&str>> {
    if !message.to_ascii_lowercase().contains("json array") {
        return None;
    }
    let texts: Vec<&str> = message
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return None;
            }
            let rest = &line[digits..];
            rest.strip_prefix(". ")
                .or_else(|| rest.strip_prefix(") "))
                .map(str::trim)
        })
        .collect();
    (!texts.is_empty()).then_some(texts)
}

/// What the provider reads from a request body.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) model: Option<String>,
    pub(crate) chars: usize,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) last_user: String,
    /// `"stream": true`.
    pub(crate) stream: bool,
    /// `"stream_options": {"include_usage": true}` (OpenAI).
    pub(crate) include_usage: bool,
}

fn content_text(content: &Value, out: &mut String) {
    match content {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn parse(body: &[u8]) -> Option<Parsed> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let messages = v.get("messages")?.as_array()?;
    let mut chars = 0;
    let mut last_user = String::new();
    if let Some(system) = v.get("system") {
        let mut s = String::new();
        content_text(system, &mut s);
        chars += s.chars().count();
    }
    for m in messages {
        let mut s = String::new();
        content_text(m.get("content").unwrap_or(&Value::Null), &mut s);
        chars += s.chars().count();
        if m.get("role").and_then(Value::as_str) == Some("user") {
            last_user = s;
        }
    }
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64));
    Some(Parsed {
        model: v.get("model").and_then(Value::as_str).map(str::to_owned),
        chars,
        max_tokens,
        last_user,
        stream: v.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_text() {
        assert_eq!(
            text_of_prompt("Classify as positive, negative or neutral.\nText: I love it"),
            "I love it"
        );
        assert_eq!(text_of_prompt("one\nthe bad one\n\n"), "the bad one");
    }
}
