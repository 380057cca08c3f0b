//! What a key function costs per request: `SingleKey` (the baseline),
//! `ByHost`, `ByHeader::api_key()`, `ByModel` on a 1 KiB chat body with
//! the model first and last (SDKs write it after the messages) and on a
//! 64 KiB body, and `(ByModel, ByHeader)`; the token estimator's pass over
//! the same 1 KiB body, which the stack makes anyway, for scale. Each
//! case also prints its allocations per call.
//!
//! `cargo bench --bench key -- --warm-up-time 1 --measurement-time 3`, or
//! `BURSTS=1 cargo bench --bench key` for interleaved bursts (ratios to
//! `SingleKey` from one run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tower_llm_resilience::key::{ByHeader, ByHost, ByModel, KeyFn, SingleKey};
use tower_llm_resilience::rate_limit::{Estimator, JsonEstimator};

mod support;

#[global_allocator]
static ALLOC: support::Counting = support::Counting;

fn request(body: String) -> Request<String> {
    Request::post("https://api.openai.com/v1/chat/completions")
        .header(
            "authorization",
            "Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz",
        )
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// The chat body with its `"model"` moved first or last (serde_json
/// writes keys in order, which puts it after the messages).
fn with_model(body: &str, first: bool) -> String {
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    let model = value.as_object_mut().unwrap().remove("model").unwrap();
    let text = value.to_string();
    if first {
        format!("{{\"model\":{model},{}", &text[1..])
    } else {
        format!("{},\"model\":{model}}}", &text[..text.len() - 1])
    }
}

/// A chat body of about `kib` KiB, the model last.
fn long_body(kib: usize) -> String {
    let turn = serde_json::json!({"role": "user", "content": "The package arrived two days late and the box was crushed. ".repeat(16)});
    let turns = vec![turn; kib];
    format!(
        "{{\"messages\":{},\"max_tokens\":5,\"model\":\"gpt-4o-mini\"}}",
        serde_json::Value::from(turns)
    )
}

type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);

fn cases<'a>(
    first: &'a Request<String>,
    last: &'a Request<String>,
    long: &'a Request<String>,
) -> Vec<Case<'a>> {
    vec![
        (
            "SingleKey",
            Box::new(move || drop(black_box(SingleKey.key(black_box(first))))),
        ),
        (
            "ByHost",
            Box::new(move || drop(black_box(ByHost.key(black_box(first))))),
        ),
        (
            "ByHeader::api_key()",
            Box::new(move || drop(black_box(ByHeader::api_key().key(black_box(first))))),
        ),
        (
            "ByModel, 1 KiB, model first",
            Box::new(move || drop(black_box(ByModel::new().key(black_box(first))))),
        ),
        (
            "ByModel, 1 KiB, model last",
            Box::new(move || drop(black_box(ByModel::new().key(black_box(last))))),
        ),
        (
            "ByModel, 64 KiB, model last",
            Box::new(move || drop(black_box(ByModel::new().key(black_box(long))))),
        ),
        (
            "(ByModel, ByHeader), 1 KiB, model last",
            Box::new(move || {
                drop(black_box(
                    (ByModel::new(), ByHeader::api_key()).key(black_box(last)),
                ))
            }),
        ),
        (
            "JsonEstimator, 1 KiB (for scale)",
            Box::new(move || {
                black_box(JsonEstimator::new().estimate(black_box(last)));
            }),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let body = support::chat_body();
    let first = request(with_model(&body, true));
    let last = request(with_model(&body, false));
    let long = request(long_body(64));
    assert!(first.body().starts_with(r#"{"model":"gpt-4o-mini","#));
    assert!(last.body().ends_with(r#","model":"gpt-4o-mini"}"#));
    assert_eq!(
        ByModel::new().model_of(&last).as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        ByModel::new().model_of(&long).as_deref(),
        Some("gpt-4o-mini")
    );
    let cases = cases(&first, &last, &long);
    for (name, run) in &cases {
        let before = support::allocations();
        for _ in 0..1_000 {
            run();
        }
        let per_call = (support::allocations() - before) as f64 / 1_000.0;
        println!("{name:<40} {per_call} allocation(s) per call");
    }
    if std::env::var_os("BURSTS").is_some() {
        let mut bursts: Vec<support::Burst<'_>> = cases
            .iter()
            .map(|(name, run)| {
                let run: Box<dyn FnMut(u64)> = Box::new(move |n| {
                    for _ in 0..n {
                        run();
                    }
                });
                (*name, run)
            })
            .collect();
        support::bursts(&mut bursts);
        return;
    }
    let mut g = c.benchmark_group("key");
    for (name, run) in &cases {
        g.bench_function(*name, |b| b.iter(run));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
