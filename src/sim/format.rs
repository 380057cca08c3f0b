//! Token counting, labels, bodies and header values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Tokens of `chars` characters of text: `ceil(chars / 4)`, the usual rule
/// of thumb for English with OpenAI's tokenizers.
pub fn count_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "love",
    "loved",
    "amazing",
    "happy",
    "wonderful",
    "best",
    "fantastic",
    "nice",
    "perfect",
    "enjoyed",
    "recommend",
    "delightful",
    "pleased",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "hated",
    "worst",
    "poor",
    "broken",
    "disappointed",
    "disappointing",
    "horrible",
    "slow",
    "refund",
    "angry",
    "useless",
    "rude",
];

/// The label the simulated provider answers for `text`: `"positive"`,
/// `"negative"` or `"neutral"`, from keyword counts (more positive than
/// negative words: positive; more negative: negative; else neutral).
///
/// Deterministic, so a test can check that every label it received is the
/// one the provider served for that text.
///
/// ```
/// use tower_llm_resilience::sim::label;
/// assert_eq!(label("I love it, great value"), "positive");
/// assert_eq!(label("Terrible. It arrived broken."), "negative");
/// assert_eq!(label("It is a chair."), "neutral");
/// ```
pub fn label(text: &str) -> &'static str {
    let (mut pos, mut neg) = (0u32, 0u32);
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_ascii_lowercase();
        if POSITIVE.contains(&w.as_str()) {
            pos += 1;
        } else if NEGATIVE.contains(&w.as_str()) {
            neg += 1;
        }
    }
    match pos.cmp(&neg) {
        std::cmp::Ordering::Greater => "positive",
        std::cmp::Ordering::Less => "negative",
        std::cmp::Ordering::Equal => "neutral",
    }
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
    })
}

/// A duration the way Go prints it (`6m0s`, `1.5s`, `12ms`), rounded up to
/// whole milliseconds so that a client waiting this long is never early.
pub fn go_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms % 60_000) / 1000;
    let frac = ms % 1000;
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Whole seconds, rounded up (for `retry-after`).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole milliseconds, rounded up (for `retry-after-ms`).
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// An RFC 3339 time rounded up to the whole second.
pub(crate) fn rfc3339_ceil(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let t = UNIX_EPOCH + Duration::from_secs(ceil_secs(since));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(11_200)), "12ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(90_500)), "1m30.5s");
        assert_eq!(go_duration(Duration::from_secs(7200)), "2h0m0s");
    }

    #[test]
    fn prompt_text() {
        assert_eq!(
            text_of_prompt("Classify as positive, negative or neutral.\nText: I love it"),
            "I love it"
        );
        assert_eq!(text_of_prompt("one\nthe bad one\n\n"), "the bad one");
    }
}
