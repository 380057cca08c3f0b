//! What the benches share.

/// A realistic chat request body of about 1 KiB: a system prompt, a user
/// turn and `max_tokens` at the end (the estimator's worst case: every
/// field name it looks for is searched through the whole body).
pub fn chat_body() -> String {
    let text = "The package arrived two days late and the box was crushed, but the \
                headphones inside work well and the sound is clear. ";
    serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You label the sentiment of short texts. Answer with exactly one word: positive, negative or neutral."},
            {"role": "user", "content": text.repeat(6)},
        ],
        "max_tokens": 5,
    })
    .to_string()
}
