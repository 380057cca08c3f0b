//! What classification costs per response: headers only (the success path
//! every response takes), and an error response with a JSON body.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, StatusCode};
use tower_llm_resilience::classify::{parse_error_body, Classifier, Provider};

fn openai_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("openai-processing-ms", "312"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("x-ratelimit-remaining-tokens", "1999000"),
        ("x-ratelimit-reset-tokens", "30ms"),
        ("x-request-id", "req_0123456789abcdef"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    let empty = HeaderMap::new();
    let openai = openai_headers();
    let mut limited = openai_headers();
    limited.insert("retry-after-ms", HeaderValue::from_static("1500"));
    let body = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 500, Used 500, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

    g.bench_function("200, no headers", |b| {
        b.iter(|| Provider::Auto.classify(black_box(StatusCode::OK), black_box(&empty), None))
    });
    g.bench_function("200, OpenAI rate-limit headers", |b| {
        b.iter(|| Provider::Auto.classify(black_box(StatusCode::OK), black_box(&openai), None))
    });
    g.bench_function("429, headers and JSON body", |b| {
        b.iter(|| {
            Provider::OpenAi.classify(
                black_box(StatusCode::TOO_MANY_REQUESTS),
                black_box(&limited),
                Some(black_box(&body[..])),
            )
        })
    });
    g.bench_function("error body alone", |b| {
        b.iter(|| parse_error_body(black_box(&body[..])))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
