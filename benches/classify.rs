//! What classification costs per response: headers only (the success path
//! every response takes), and an error response with a JSON body; and the
//! success path of [`ClassifyLayer`] as a service over a no-op inner
//! service (a 200 with no header, and with OpenAI's rate-limit headers),
//! next to that no-op alone.
//!
//! `cargo bench --bench classify -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
mod support;

use tower_llm_resilience::classify::{parse_error_body, Classifier, ClassifyLayer, Provider};

/// Answers 200 at once, with the given headers (cloned: a response's
/// headers are made for each response).
#[derive(Clone)]
struct Noop(HeaderMap);

impl Service<Request<String>> for Noop {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        let mut response = Response::new(String::new());
        if !self.0.is_empty() {
            *response.headers_mut() = self.0.clone();
        }
        ready(Ok(response))
    }
}

fn single<S>(b: &mut Bencher<'_>, mut svc: S)
where
    S: Service<Request<String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    b.iter_custom(|iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                if let Ok(svc) = svc.ready().await {
                    black_box(svc.call(Request::new(String::new())).await.is_ok());
                }
            }
            start.elapsed()
        })
    });
}

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

/// Runs the case named by `CALLGRIND_CASE` (`noop`, `layer`; `openai:`
/// first for the response with OpenAI's rate-limit headers)
/// `CALLGRIND_ITERS` times (default 10,000) and exits; does nothing when
/// it is not set.
fn instructions() {
    let Some((case, iters)) = support::callgrind_case() else {
        return;
    };
    let (name, headers) = match case.strip_prefix("openai:") {
        Some(name) => (name, openai_headers()),
        None => (case.as_str(), HeaderMap::new()),
    };
    match name {
        "noop" => support::count_instructions(Noop(headers), empty_request, iters),
        "layer" => support::count_instructions(
            ClassifyLayer::new().layer(Noop(headers)),
            empty_request,
            iters,
        ),
        other => panic!("unknown case {other}"),
    }
    std::process::exit(0);
}

fn empty_request() -> Request<String> {
    Request::new(String::new())
}

fn bench(c: &mut Criterion) {
    instructions();
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

    let mut g = c.benchmark_group("classify_layer_success_path");
    for (name, headers) in [
        ("200, no headers", empty.clone()),
        ("200, OpenAI rate-limit headers", openai.clone()),
    ] {
        g.bench_function(format!("{name}: baseline no-op"), |b| {
            single(b, Noop(headers.clone()))
        });
        g.bench_function(format!("{name}: ClassifyLayer"), |b| {
            single(b, ClassifyLayer::new().layer(Noop(headers.clone())))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
