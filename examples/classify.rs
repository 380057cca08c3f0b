//! The main job, for now: classify real-shaped provider responses with the
//! crate's taxonomy and show what every layer will do with them.
//!
//! `cargo run --release --example classify`
//!
//! (The batch classification run against the simulated provider through the
//! whole stack replaces this once the layers are in; see the README.)

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{Classifier, Provider};

struct Canned {
    what: &'static str,
    provider: Provider,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const CANNED: &[Canned] = &[
    Canned {
        what: "OpenAI: over RPM",
        provider: Provider::Auto,
        status: 429,
        headers: &[
            ("retry-after-ms", "1500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("openai-version", "2020-10-01"),
        ],
        body: r#"{"error":{"type":"requests","code":"rate_limit_exceeded","message":"Rate limit reached"}}"#,
    },
    Canned {
        what: "OpenAI: billing quota gone",
        provider: Provider::Auto,
        status: 429,
        headers: &[("openai-version", "2020-10-01")],
        body: r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota","message":"You exceeded your current quota"}}"#,
    },
    Canned {
        what: "OpenAI: prompt too long",
        provider: Provider::OpenAi,
        status: 400,
        headers: &[],
        body: r#"{"error":{"type":"invalid_request_error","code":"context_length_exceeded"}}"#,
    },
    Canned {
        what: "Anthropic: overloaded",
        provider: Provider::Auto,
        status: 529,
        headers: &[("anthropic-organization-id", "org")],
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    },
    Canned {
        what: "Anthropic: over input TPM",
        provider: Provider::Anthropic,
        status: 429,
        headers: &[
            ("retry-after", "12"),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
        ],
        body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
    },
    Canned {
        what: "Azure: deployment TPM",
        provider: Provider::Auto,
        status: 429,
        headers: &[("x-ms-retry-after-ms", "900"), ("x-ms-region", "East US")],
        body: r#"{"error":{"code":"429","message":"exceeded token rate limit"}}"#,
    },
    Canned {
        what: "Gemini: per-minute quota",
        provider: Provider::Gemini,
        status: 429,
        headers: &[],
        body: r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}"#,
    },
    Canned {
        what: "Gemini: per-day quota",
        provider: Provider::Gemini,
        status: 429,
        headers: &[],
        body: r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#,
    },
    Canned {
        what: "OpenRouter: no credits",
        provider: Provider::OpenRouter,
        status: 402,
        headers: &[],
        body: r#"{"error":{"code":402,"message":"Insufficient credits"}}"#,
    },
    Canned {
        what: "Server says do not retry",
        provider: Provider::Auto,
        status: 500,
        headers: &[("x-should-retry", "false")],
        body: "",
    },
    Canned {
        what: "Absurd Retry-After",
        provider: Provider::Generic,
        status: 503,
        headers: &[("retry-after", "99999999999")],
        body: "",
    },
    Canned {
        what: "Success with limits",
        provider: Provider::Auto,
        status: 200,
        headers: &[
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "150000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        body: "",
    },
];

fn main() {
    let started = std::time::Instant::now();
    println!(
        "{:<28} {:<8} {:<12} {:<24} {:<10} {:>10}  code",
        "response", "status", "provider", "class", "retryable", "wait"
    );
    for canned in CANNED {
        let mut headers = HeaderMap::new();
        for (k, v) in canned.headers {
            headers.append(*k, HeaderValue::from_static(v));
        }
        let status = StatusCode::from_u16(canned.status).expect("valid status");
        let body = (!canned.body.is_empty()).then_some(canned.body.as_bytes());
        let c = canned.provider.classify(status, &headers, body);
        let class = c.class.map_or("success", |class| class.as_str());
        let wait = c.retry_after.map_or_else(
            || "-".to_string(),
            |d: Duration| format!("{:.1}s", d.as_secs_f64()),
        );
        println!(
            "{:<28} {:<8} {:<12} {:<24} {:<10} {:>10}  {}",
            canned.what,
            status.as_u16(),
            c.provider.unwrap_or_default().as_str(),
            class,
            c.is_retryable(),
            wait,
            c.code.unwrap_or("-"),
        );
        if let Some(tokens) = c.limits.tokens {
            println!(
                "{:<28} tokens: limit {:?}, remaining {:?}, full again in {:?}",
                "", tokens.limit, tokens.remaining, tokens.reset
            );
        }
    }
    println!(
        "\nclassified {} responses in {:?}",
        CANNED.len(),
        started.elapsed()
    );
}
