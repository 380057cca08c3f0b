//! Every row of PROVIDERS.md as a real-shaped response: status, headers and
//! body in, class and wait out.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{Classification, ErrorClass, Provider, ReportedLimit};

/// 2024-05-01T12:00:00Z, the `Date` of every canned response.
const NOW_SECS: u64 = 1_714_564_800;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

struct Case {
    name: &'static str,
    provider: Provider,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    class: Option<ErrorClass>,
    wait: Option<Duration>,
}

fn classify(case: &Case) -> Classification {
    let mut headers = HeaderMap::new();
    headers.insert(
        "date",
        HeaderValue::from_static("Wed, 01 May 2024 12:00:00 GMT"),
    );
    for (k, v) in case.headers {
        headers.append(*k, HeaderValue::from_static(v));
    }
    let status = StatusCode::from_u16(case.status).unwrap();
    let body = (!case.body.is_empty()).then_some(case.body.as_bytes());
    // A wall clock far from the `Date` header: dates must be measured against
    // the header, not the client's clock.
    let skewed = now() + Duration::from_secs(3600);
    case.provider.classify_at(status, &headers, body, skewed)
}

const fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

const fn ms(m: u64) -> Option<Duration> {
    Some(Duration::from_millis(m))
}

const OPENAI_429_HEADERS: &[(&str, &str)] = &[
    ("retry-after", "2"),
    ("retry-after-ms", "1500"),
    ("x-ratelimit-limit-requests", "500"),
    ("x-ratelimit-remaining-requests", "0"),
    ("x-ratelimit-reset-requests", "1.2s"),
    ("x-ratelimit-limit-tokens", "200000"),
    ("x-ratelimit-remaining-tokens", "199000"),
    ("x-ratelimit-reset-tokens", "300ms"),
    ("openai-processing-ms", "5"),
];

const CASES: &[Case] = &[
    // --- OpenAI ---
    Case {
        name: "openai 429 rate_limit_exceeded (requests)",
        provider: Provider::OpenAi,
        status: 429,
        headers: OPENAI_429_HEADERS,
        body: r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: ms(1500),
    },
    Case {
        name: "openai 429 tokens, retry-after only",
        provider: Provider::OpenAi,
        status: 429,
        headers: &[("retry-after", "20")],
        body: r#"{"error":{"message":"Rate limit reached ... on tokens per min (TPM)","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(20),
    },
    Case {
        name: "openai 429 insufficient_quota",
        provider: Provider::OpenAi,
        status: 429,
        headers: &[],
        body: r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: None,
    },
    Case {
        name: "openai 429 credit_balance_exhausted",
        provider: Provider::OpenAi,
        status: 429,
        headers: &[],
        body: r#"{"error":{"message":"Your credit balance is exhausted.","type":"insufficient_quota","code":"credit_balance_exhausted"}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: None,
    },
    Case {
        name: "openai 429 slow_down",
        provider: Provider::OpenAi,
        status: 429,
        headers: &[("retry-after", "1")],
        body: r#"{"error":{"message":"Please reduce your rate of requests.","type":"slow_down","code":"slow_down"}}"#,
        class: Some(ErrorClass::SlowDown),
        wait: secs(1),
    },
    Case {
        name: "openai 500",
        provider: Provider::OpenAi,
        status: 500,
        headers: &[],
        body: r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#,
        class: Some(ErrorClass::ServerError),
        wait: None,
    },
    Case {
        name: "openai 502 html",
        provider: Provider::OpenAi,
        status: 502,
        headers: &[],
        body: "<html><body>502 Bad Gateway</body></html>",
        class: Some(ErrorClass::ServerError),
        wait: None,
    },
    Case {
        name: "openai 503 server_is_overloaded",
        provider: Provider::OpenAi,
        status: 503,
        headers: &[],
        body: r#"{"error":{"message":"The engine is currently overloaded, please try again later.","type":"server_error","code":"server_is_overloaded"}}"#,
        class: Some(ErrorClass::Overloaded),
        wait: None,
    },
    Case {
        name: "openai 504",
        provider: Provider::OpenAi,
        status: 504,
        headers: &[],
        body: "",
        class: Some(ErrorClass::Timeout),
        wait: None,
    },
    Case {
        name: "openai 408",
        provider: Provider::OpenAi,
        status: 408,
        headers: &[],
        body: "",
        class: Some(ErrorClass::Timeout),
        wait: None,
    },
    Case {
        name: "openai 409",
        provider: Provider::OpenAi,
        status: 409,
        headers: &[],
        body: "",
        class: Some(ErrorClass::ServerError),
        wait: None,
    },
    Case {
        name: "openai 400 context_length_exceeded",
        provider: Provider::OpenAi,
        status: 400,
        headers: &[],
        body: r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        class: Some(ErrorClass::ContextLengthExceeded),
        wait: None,
    },
    Case {
        name: "openai 400 invalid request",
        provider: Provider::OpenAi,
        status: 400,
        headers: &[],
        body: r#"{"error":{"message":"Unrecognized request argument supplied: foo","type":"invalid_request_error","param":null,"code":null}}"#,
        class: Some(ErrorClass::InvalidRequest),
        wait: None,
    },
    Case {
        name: "openai 401",
        provider: Provider::OpenAi,
        status: 401,
        headers: &[],
        body: r#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        class: Some(ErrorClass::Auth),
        wait: None,
    },
    Case {
        name: "openai 403",
        provider: Provider::OpenAi,
        status: 403,
        headers: &[],
        body: r#"{"error":{"message":"Country, region, or territory not supported","type":"request_forbidden","param":null,"code":"unsupported_country_region_territory"}}"#,
        class: Some(ErrorClass::Permission),
        wait: None,
    },
    Case {
        name: "openai 404 model_not_found",
        provider: Provider::OpenAi,
        status: 404,
        headers: &[],
        body: r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        class: Some(ErrorClass::NotFound),
        wait: None,
    },
    Case {
        name: "openai x-should-retry false on a 500",
        provider: Provider::OpenAi,
        status: 500,
        headers: &[("x-should-retry", "false")],
        body: "",
        class: Some(ErrorClass::ServerError),
        wait: None,
    },
    Case {
        name: "openai 200 with rate-limit headers",
        provider: Provider::OpenAi,
        status: 200,
        headers: OPENAI_429_HEADERS,
        body: "",
        class: None,
        wait: ms(1500),
    },
    // --- Anthropic ---
    Case {
        name: "anthropic 429 rate_limit_error",
        provider: Provider::Anthropic,
        status: 429,
        headers: &[
            ("retry-after", "7"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:07Z"),
        ],
        body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(7),
    },
    Case {
        name: "anthropic 429 without retry-after: the exhausted reset",
        provider: Provider::Anthropic,
        status: 429,
        headers: &[
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-05-01T12:00:12Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "5000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-05-01T12:00:30Z",
            ),
        ],
        body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(12),
    },
    Case {
        name: "anthropic 529 overloaded_error",
        provider: Provider::Anthropic,
        status: 529,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        class: Some(ErrorClass::Overloaded),
        wait: None,
    },
    Case {
        name: "anthropic 500 api_error",
        provider: Provider::Anthropic,
        status: 500,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        class: Some(ErrorClass::ServerError),
        wait: None,
    },
    Case {
        name: "anthropic 400 credit balance too low",
        provider: Provider::Anthropic,
        status: 400,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: None,
    },
    Case {
        name: "anthropic 403 enforced_spend_limit_reached",
        provider: Provider::Anthropic,
        status: 403,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"enforced_spend_limit_reached","message":"You have reached your spend limit."}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: None,
    },
    Case {
        name: "anthropic 400 prompt too long",
        provider: Provider::Anthropic,
        status: 400,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
        class: Some(ErrorClass::ContextLengthExceeded),
        wait: None,
    },
    Case {
        name: "anthropic 401",
        provider: Provider::Anthropic,
        status: 401,
        headers: &[],
        body: r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        class: Some(ErrorClass::Auth),
        wait: None,
    },
    // --- Azure OpenAI ---
    Case {
        name: "azure 429 retry-after-ms",
        provider: Provider::AzureOpenAi,
        status: 429,
        headers: &[
            ("retry-after-ms", "800"),
            ("x-ms-retry-after-ms", "900"),
            ("retry-after", "1"),
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-remaining-tokens", "-1"),
        ],
        body: r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-02-01 have exceeded token rate limit of your current OpenAI S0 pricing tier."}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: ms(800),
    },
    Case {
        name: "azure 429 x-ms-retry-after-ms only",
        provider: Provider::AzureOpenAi,
        status: 429,
        headers: &[("x-ms-retry-after-ms", "900")],
        body: r#"{"error":{"code":"RateLimitReached","message":"Rate limit is exceeded."}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: ms(900),
    },
    Case {
        name: "azure 400 content_filter",
        provider: Provider::AzureOpenAi,
        status: 400,
        headers: &[],
        body: r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#,
        class: Some(ErrorClass::InvalidRequest),
        wait: None,
    },
    Case {
        name: "azure 404 DeploymentNotFound",
        provider: Provider::AzureOpenAi,
        status: 404,
        headers: &[],
        body: r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#,
        class: Some(ErrorClass::NotFound),
        wait: None,
    },
    // --- Gemini ---
    Case {
        name: "gemini 429 per-minute quota with RetryInfo",
        provider: Provider::Gemini,
        status: 429,
        headers: &[],
        body: r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(27),
    },
    Case {
        name: "gemini 429 per-day quota",
        provider: Provider::Gemini,
        status: 429,
        headers: &[],
        body: r#"{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"1500"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"41s"}]}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: secs(41),
    },
    Case {
        name: "gemini 503 UNAVAILABLE",
        provider: Provider::Gemini,
        status: 503,
        headers: &[],
        body: r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
        class: Some(ErrorClass::Overloaded),
        wait: None,
    },
    Case {
        name: "gemini 400 INVALID_ARGUMENT",
        provider: Provider::Gemini,
        status: 400,
        headers: &[],
        body: r#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#,
        class: Some(ErrorClass::InvalidRequest),
        wait: None,
    },
    Case {
        name: "gemini 403 PERMISSION_DENIED",
        provider: Provider::Gemini,
        status: 403,
        headers: &[],
        body: r#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers.","status":"PERMISSION_DENIED"}}"#,
        class: Some(ErrorClass::Permission),
        wait: None,
    },
    // --- Groq ---
    Case {
        name: "groq 429 retry-after",
        provider: Provider::Groq,
        status: 429,
        headers: &[
            ("retry-after", "3"),
            ("x-ratelimit-limit-requests", "14400"),
            ("x-ratelimit-remaining-requests", "14000"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-limit-tokens", "6000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "7.66s"),
        ],
        body: r#"{"error":{"message":"Rate limit reached for model `llama3-8b-8192` on tokens per minute (TPM)","type":"tokens","code":"rate_limit_exceeded"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(3),
    },
    // --- OpenRouter ---
    Case {
        name: "openrouter 402",
        provider: Provider::OpenRouter,
        status: 402,
        headers: &[],
        body: r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#,
        class: Some(ErrorClass::QuotaExhausted),
        wait: None,
    },
    // --- RFC 9110 / generic ---
    Case {
        name: "generic 429 with HTTP-date Retry-After",
        provider: Provider::Generic,
        status: 429,
        headers: &[("retry-after", "Wed, 01 May 2024 12:01:00 GMT")],
        body: r#"{"error":{"code":"insufficient_quota"}}"#,
        class: Some(ErrorClass::RateLimited),
        wait: secs(60),
    },
    Case {
        name: "generic 503 with delay-seconds",
        provider: Provider::Generic,
        status: 503,
        headers: &[("retry-after", "120"), ("retry-after-ms", "5")],
        body: "",
        class: Some(ErrorClass::Overloaded),
        wait: secs(120),
    },
    Case {
        name: "generic 429 with IETF RateLimit fields",
        provider: Provider::Generic,
        status: 429,
        headers: &[
            ("ratelimit-policy", "\"default\";q=50;w=30"),
            ("ratelimit", "\"default\";r=0;t=30"),
        ],
        body: "",
        class: Some(ErrorClass::RateLimited),
        wait: secs(30), // nothing remains: the reset is the wait
    },
    // --- any provider: absurd and garbage values ---
    Case {
        name: "absurd retry-after is clamped",
        provider: Provider::Auto,
        status: 429,
        headers: &[("retry-after", "99999999999")],
        body: "",
        class: Some(ErrorClass::RateLimited),
        wait: secs(86_400),
    },
    Case {
        name: "negative retry-after-ms is ignored",
        provider: Provider::Auto,
        status: 429,
        headers: &[("retry-after-ms", "-10"), ("retry-after", "NaN")],
        body: "garbage{{{",
        class: Some(ErrorClass::RateLimited),
        wait: None,
    },
    Case {
        name: "past HTTP-date is a zero wait",
        provider: Provider::Auto,
        status: 503,
        headers: &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
        body: "",
        class: Some(ErrorClass::Overloaded),
        wait: Some(Duration::ZERO),
    },
];

#[test]
fn every_provider_row() {
    let mut failures = Vec::new();
    for case in CASES {
        let c = classify(case);
        if c.class != case.class || c.retry_after != case.wait {
            failures.push(format!(
                "{}: got class {:?} wait {:?}, expected {:?} {:?}",
                case.name, c.class, c.retry_after, case.class, case.wait
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn quota_is_not_retryable_but_rate_limits_are() {
    for case in CASES {
        let c = classify(case);
        match c.class {
            Some(ErrorClass::QuotaExhausted) => assert!(!c.is_retryable(), "{}", case.name),
            Some(ErrorClass::RateLimited | ErrorClass::Overloaded) => {
                assert!(c.is_retryable(), "{}", case.name)
            }
            _ => {}
        }
    }
}

#[test]
fn x_should_retry_overrides_the_class() {
    let case = CASES
        .iter()
        .find(|c| c.name.contains("x-should-retry"))
        .unwrap();
    let c = classify(case);
    assert_eq!(c.should_retry, Some(false));
    assert!(!c.is_retryable());
}

#[test]
fn rate_limit_state_is_reported() {
    let case = &CASES[0];
    let c = classify(case);
    assert_eq!(c.code, Some("rate_limit_exceeded"));
    assert_eq!(c.provider, Some(Provider::OpenAi));
    assert_eq!(
        c.limits.requests,
        Some(ReportedLimit::new(Some(500), Some(0), ms(1200)))
    );
    assert_eq!(
        c.limits.tokens,
        Some(ReportedLimit::new(Some(200_000), Some(199_000), ms(300)))
    );

    // Anthropic resets are measured against the response's Date header.
    let anthropic = CASES
        .iter()
        .find(|c| c.name.contains("exhausted reset"))
        .unwrap();
    let c = classify(anthropic);
    assert_eq!(
        c.limits.input_tokens,
        Some(ReportedLimit::new(Some(40_000), Some(0), secs(12)))
    );
    assert_eq!(
        c.limits.output_tokens,
        Some(ReportedLimit::new(Some(8_000), Some(5_000), secs(30)))
    );
}

#[test]
fn generic_ignores_provider_specific_signals() {
    let case = CASES
        .iter()
        .find(|c| c.name.starts_with("generic 429 with HTTP-date"))
        .unwrap();
    let c = classify(case);
    assert_eq!(c.code, None, "the generic profile reads no bodies");
    let ietf = CASES.iter().find(|c| c.name.contains("IETF")).unwrap();
    let c = classify(ietf);
    let mut expected = ReportedLimit::new(Some(50), Some(0), secs(30));
    expected.window = secs(30);
    assert_eq!(c.limits.requests, Some(expected));
}

#[test]
fn auto_detects_the_provider() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "anthropic-ratelimit-requests-limit",
        HeaderValue::from_static("50"),
    );
    assert_eq!(Provider::detect(&headers), Some(Provider::Anthropic));
    let mut headers = HeaderMap::new();
    headers.insert("x-ms-region", HeaderValue::from_static("East US"));
    assert_eq!(Provider::detect(&headers), Some(Provider::AzureOpenAi));
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("50"));
    assert_eq!(
        Provider::detect(&headers),
        None,
        "x-ratelimit-* alone is ambiguous"
    );

    let c = Provider::Auto.classify_at(StatusCode::OK, &headers, None, now());
    assert_eq!(c.provider, None, "auto could not tell");
    assert_eq!(c.limits.requests.and_then(|s| s.limit), Some(50));
}
