//! The simulated model: the label it answers for a text.

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
