//! The simulated model: the label it answers for a text.

/// Words that count for a positive label.
const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "love",
    "loved",
    "amazing",
    "happy",
    "wonderful",
    "wonderfully",
    "beautifully",
    "best",
    "fantastic",
    "nice",
    "perfect",
    "premium",
    "delight",
    "delightful",
    "impressed",
    "exceeded",
    "friendly",
    "enjoyed",
    "recommend",
    "pleased",
    "worth",
];

/// Words that count for a negative label.
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "hated",
    "worst",
    "poor",
    "broke",
    "broken",
    "damaged",
    "cheap",
    "flimsy",
    "crashes",
    "buggy",
    "confusing",
    "frustrated",
    "disappointed",
    "disappointing",
    "horrible",
    "slow",
    "painfully",
    "waste",
    "refund",
    "angry",
    "useless",
    "rude",
    "unhelpful",
];

/// Phrases whose words are neutral alone: each counts once, for its side.
const PHRASES: &[(&str, bool)] = &[
    ("made my day", true),
    ("never showed up", false),
    ("stopped working", false),
];

/// The label the simulated provider answers for `text`: `"positive"`,
/// `"negative"` or `"neutral"`, from a small sentiment word list (more
/// positive than negative words and phrases: positive; more negative:
/// negative; else neutral).
///
/// The list covers the bundled sample (`examples/data/reviews.txt`), so
/// that the main job's labels read right: "cheap and flimsy" is negative,
/// "made my day" positive, "comes with a manual" neutral. Case is ignored;
/// words are split at every character that is not a letter or a digit.
///
/// Deterministic, so a test can check that every label it received is the
/// one the provider served for that text.
///
/// ```
/// use tower_llm_resilience::sim::label;
/// assert_eq!(label("I love it, great value"), "positive");
/// assert_eq!(label("Terrible. It arrived broken."), "negative");
/// assert_eq!(label("This blender feels cheap and flimsy."), "negative");
/// assert_eq!(label("The pizza made my day."), "positive");
/// assert_eq!(label("It is a chair."), "neutral");
/// ```
pub fn label(text: &str) -> &'static str {
    let (mut pos, mut neg) = (0u32, 0u32);
    let mut words = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        if POSITIVE.contains(&w.as_str()) {
            pos += 1;
        } else if NEGATIVE.contains(&w.as_str()) {
            neg += 1;
        }
        words.push(w);
    }
    for (phrase, positive) in PHRASES {
        let phrase: Vec<&str> = phrase.split(' ').collect();
        let found = words
            .windows(phrase.len())
            .filter(|w| w.iter().zip(&phrase).all(|(a, b)| a == b))
            .count() as u32;
        if *positive {
            pos += found;
        } else {
            neg += found;
        }
    }
    match pos.cmp(&neg) {
        std::cmp::Ordering::Greater => "positive",
        std::cmp::Ordering::Less => "negative",
        std::cmp::Ordering::Equal => "neutral",
    }
}

#[cfg(test)]
mod tests {
    use super::label;

    /// The bundled sample reads right: each of its sentence kinds gets the
    /// label a reader gives it, whatever filler follows.
    #[test]
    fn the_bundled_sample_reads_right() {
        let positive = [
            "The coffee feels premium.",
            "The museum tour is fantastic.",
            "The pizza is the best I have used.",
            "The API is wonderfully simple.",
            "The gym made my day.",
            "The invoice was quick and friendly.",
            "The screen works beautifully.",
            "This novel exceeded my expectations.",
            "The battery impressed the whole team.",
            "The camera was a delight.",
            "The concert is worth every penny.",
            "The mattress arrived early and in perfect shape.",
        ];
        let negative = [
            "The keyboard arrived damaged.",
            "The update is painfully slow.",
            "The mattress is the worst I have used.",
            "The camera never showed up.",
            "The laptop fan broke after two days.",
            "The coffee crashes constantly.",
            "This blender feels cheap and flimsy.",
            "The API left me frustrated.",
            "The headphones stopped working overnight.",
            "The printer is confusing and buggy.",
            "The gym was a complete waste of money.",
            "The invoice was rude and unhelpful.",
        ];
        let neutral = [
            "The dashboard has an average size.",
            "The screen is available in three colours.",
            "The update is described on the website.",
            "The coffee comes with a manual.",
            "This blender opens at nine.",
            "The train was replaced last month.",
            "The battery arrived on Tuesday.",
            "The concert has a standard layout.",
            "The delivery runs on the usual schedule.",
            "The rental car uses a USB-C cable.",
            "The invoice was about what I expected.",
            "The pizza was delivered in a cardboard box.",
        ];
        let fillers = [
            "",
            " Would mention it to a friend.",
            " Five stars from me? Decide yourself.",
            " Honestly.",
            " That is all.",
            " Noted for next time.",
        ];
        for (texts, want) in [
            (&positive, "positive"),
            (&negative, "negative"),
            (&neutral, "neutral"),
        ] {
            for text in texts {
                for filler in fillers {
                    let text = format!("{text}{filler}");
                    assert_eq!(label(&text), want, "{text}");
                }
            }
        }
    }

    #[test]
    fn phrases_count_once_each_and_words_alone_do_not() {
        assert_eq!(label("It made my day, then it never showed up."), "neutral");
        assert_eq!(label("My day was made."), "neutral");
        assert_eq!(label("NEVER SHOWED UP"), "negative");
        assert_eq!(label(""), "neutral");
        assert_eq!(label("¿Qué? 日本語 — 😀"), "neutral");
    }
}
