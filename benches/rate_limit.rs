//! Per-request overhead of `RateLimit` next to the anchors, in one run:
//! a no-op baseline, ours (requests only; requests + tokens from a JSON
//! body), governor's direct `check()`, tower's `RateLimit`,
//! tower-resilience's rate limiter; 1 and 2 threads on one key for ours,
//! the baseline and governor (time per request of the group: the
//! throughput of 2 threads relative to 1 is `t1 / t2`); and the
//! allocations per request, counted before the timed runs.
//!
//! `cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`
//!
//! The estimators' instructions under callgrind: `CALLGRIND_CASE` names
//! one (see `estimator_instructions`); per estimate, the count of a run
//! with `CALLGRIND_ITERS=2000` less one with 1000, divided by 1000.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::key::Key;
use tower_llm_resilience::rate_limit::{
    Costs, Dimension, Limits, MemoryStore, RateLimitLayer, Store,
};

mod support;
use support::{allocations, contended, rt, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

type Noop = support::Noop<http_body_util::Empty<bytes::Bytes>>;
const NOOP: Noop = Noop::new();

/// Limits high enough that nothing waits. A 10 ms window keeps the log
/// at the number of requests in 10 ms (the log holds one entry per
/// request still in a window).
fn no_wait_limits() -> Limits {
    Limits::new().window(Dimension::Requests, Duration::from_millis(10), u64::MAX / 4)
}

fn no_wait_token_limits() -> Limits {
    no_wait_limits().window(Dimension::Tokens, Duration::from_millis(10), u64::MAX / 4)
}

fn body() -> String {
    String::new()
}

fn json() -> String {
    String::from(r#"{"model":"m","max_tokens":16,"messages":[]}"#)
}

/// `ready().await` + `call().await` for `iters` requests.
fn run<S, RB, E>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    make: fn() -> String,
) -> Duration
where
    S: Service<Request<String>, Response = Response<RB>, Error = E>,
    E: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let r = svc.ready().await.unwrap().call(Request::new(make())).await;
            black_box(r.unwrap());
        }
        start.elapsed()
    })
}

/// Allocations per request beyond the baseline's (the request body),
/// after a warm-up.
fn allocs_per_request<S, RB, E>(name: &str, mut svc: S, make: fn() -> String)
where
    S: Service<Request<String>, Response = Response<RB>, Error = E>,
    E: std::fmt::Debug,
{
    let rt = rt();
    const N: u64 = 10_000;
    run(&rt, &mut svc, N, make);
    let base = {
        let before = allocations();
        run(&rt, &mut NOOP.clone(), N, make);
        allocations() - before
    };
    let before = allocations();
    run(&rt, &mut svc, N, make);
    let ours = allocations() - before;
    println!(
        "allocations per request, {name}: {} (baseline's request: {})",
        (ours.saturating_sub(base)) as f64 / N as f64,
        base as f64 / N as f64
    );
}

fn per_request(c: &mut Criterion) {
    estimator_instructions();
    allocs_per_request(
        "ours_requests",
        RateLimitLayer::new(no_wait_limits()).layer(NOOP),
        body,
    );
    allocs_per_request(
        "ours_requests_tokens_json_body",
        RateLimitLayer::new(no_wait_token_limits()).layer(NOOP),
        json,
    );
    let rt = rt();
    let mut g = c.benchmark_group("rate_limit/per_request");

    let mut base = NOOP;
    g.bench_function("baseline_noop", |b| {
        b.iter_custom(|n| run(&rt, &mut base, n, body))
    });

    let mut ours = RateLimitLayer::new(no_wait_limits()).layer(NOOP);
    g.bench_function("ours_requests", |b| {
        b.iter_custom(|n| run(&rt, &mut ours, n, body))
    });

    let mut base_json = NOOP;
    g.bench_function("baseline_noop_json_body", |b| {
        b.iter_custom(|n| run(&rt, &mut base_json, n, json))
    });
    let mut ours_tokens = RateLimitLayer::new(no_wait_token_limits()).layer(NOOP);
    g.bench_function("ours_requests_tokens_json_body", |b| {
        b.iter_custom(|n| run(&rt, &mut ours_tokens, n, json))
    });

    let mut tower_rl = {
        let _in_runtime = rt.enter(); // tower's RateLimit makes its timer at once
        tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(1)).layer(NOOP)
    };
    g.bench_function("tower_rate_limit", |b| {
        b.iter_custom(|n| run(&rt, &mut tower_rl, n, body))
    });

    let mut tr = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(usize::MAX / 4)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::from_millis(1))
        .build()
        .unwrap()
        .layer(NOOP);
    g.bench_function("tower_resilience_rate_limiter", |b| {
        b.iter_custom(|n| run(&rt, &mut tr, n, body))
    });

    // The decision alone, next to governor's check: clock read, lock,
    // lookup, window update, reservation.
    let store = MemoryStore::new(no_wait_limits());
    let key = Key::DEFAULT;
    let one = Costs::new(0, 0);
    g.bench_function("ours_store_decision_op", |b| {
        b.iter(|| {
            let now = tokio::time::Instant::now();
            black_box(store.try_acquire(&key, &one, now, None))
        })
    });
    g.bench_function("clock_read_op", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
    g.bench_function("governor_check_op", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    g.finish();
}

/// 1 and 2 OS threads, each with its own current-thread runtime and its
/// own clone of the service, on one key.
fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/threads_one_key");
    for threads in [1, 2] {
        g.bench_function(
            format!("baseline_noop_json_body, {threads} thread(s)"),
            |b| {
                b.iter_custom(|n| {
                    contended(threads, n, || {
                        move |n| {
                            run(&rt(), &mut NOOP.clone(), n, json);
                        }
                    })
                })
            },
        );
        let ours = RateLimitLayer::new(no_wait_token_limits()).layer(NOOP);
        g.bench_function(
            format!("ours_requests_tokens_json_body, {threads} thread(s)"),
            |b| {
                b.iter_custom(|n| {
                    contended(threads, n, || {
                        let mut svc = ours.clone();
                        move |n| {
                            run(&rt(), &mut svc, n, json);
                        }
                    })
                })
            },
        );
        let store = MemoryStore::new(no_wait_token_limits());
        g.bench_function(
            format!("ours_store_decision_op, {threads} thread(s)"),
            |b| {
                b.iter_custom(|n| {
                    contended(threads, n, || {
                        let store = store.clone();
                        move |n| {
                            let costs = Costs::tokens(100);
                            for _ in 0..n {
                                let now = tokio::time::Instant::now();
                                black_box(store.try_acquire(&Key::DEFAULT, &costs, now, None));
                            }
                        }
                    })
                })
            },
        );
        let gov = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
            NonZeroU32::MAX,
        )));
        g.bench_function(format!("governor_check_op, {threads} thread(s)"), |b| {
            b.iter_custom(|n| {
                contended(threads, n, || {
                    let gov = gov.clone();
                    move |n| {
                        for _ in 0..n {
                            black_box(gov.check().is_ok());
                        }
                    }
                })
            })
        });
    }
    g.finish();
}

/// What the JSON estimator cost before issue #13 counted text by its
/// characters: bytes / 4, and one `memmem` pass for `max_tokens` anywhere
/// in the body. The baseline of the estimator rows.
fn bytes_over_four(body: &[u8]) -> Costs {
    static SUFFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"tokens\""));
    const NAMES: [&[u8]; 3] = [b"\"max_completion_", b"\"max_", b"\"max_output_"];
    let mut first: [Option<usize>; 3] = [None; 3];
    for hit in SUFFIX.find_iter(body) {
        for (slot, name) in first.iter_mut().zip(NAMES) {
            if slot.is_none() && body[..hit].ends_with(name) {
                *slot = Some(hit + b"tokens\"".len());
            }
        }
        if first.iter().all(Option::is_some) {
            break;
        }
    }
    let output = first.iter().find_map(|at| {
        let rest = &body[(*at)?..];
        let rest = rest
            .trim_ascii_start()
            .strip_prefix(b":")?
            .trim_ascii_start();
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    });
    Costs::new((body.len() as u64).div_ceil(4), output.unwrap_or(1024))
}

/// A body with a 100 KB base64 image and a line of text.
fn image_body() -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":300,"messages":[{{"role":"user","content":[
            {{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{}"}}}},
            {{"type":"text","text":"What is in this picture?"}}]}}]}}"#,
        "iVBORw0KGgoAAAANSUhEUgAA".repeat(4_200)
    )
}

/// `CALLGRIND_CASE=estimator:bytes4` (the old rule), `estimator:json`
/// (the chat body) or `estimator:image` runs that estimate
/// `CALLGRIND_ITERS` times (default 10,000) inside
/// `count_instructions_estimate` and exits, for
/// `valgrind --tool=callgrind --toggle-collect='*count_instructions*'`;
/// does nothing when it is not set.
fn estimator_instructions() {
    let Some((case, iters)) = support::callgrind_case() else {
        return;
    };
    let estimator = tower_llm_resilience::rate_limit::JsonEstimator::new();
    let (chat, image) = (support::chat_body(), image_body());
    match case.as_str() {
        "estimator:bytes4" => {
            count_instructions_estimate(|| bytes_over_four(black_box(chat.as_bytes())), iters)
        }
        "estimator:json" => count_instructions_estimate(
            || estimator.estimate_bytes(Some(black_box(chat.as_bytes()))),
            iters,
        ),
        "estimator:image" => count_instructions_estimate(
            || estimator.estimate_bytes(Some(black_box(image.as_bytes()))),
            iters,
        ),
        other => panic!("unknown case {other}"),
    }
    std::process::exit(0);
}

#[inline(never)]
fn count_instructions_estimate(estimate: impl Fn() -> Costs, iters: u64) {
    for _ in 0..iters {
        black_box(estimate());
    }
}

/// The estimators on the 1 KiB chat body (the old rule as the baseline,
/// in the same run), and the JSON estimator on a body with a 100 KB image.
fn estimator(c: &mut Criterion) {
    use tower_llm_resilience::rate_limit::JsonEstimator;
    let body = support::chat_body();
    let image = image_body();
    let estimator = JsonEstimator::new();
    let before = allocations();
    black_box(estimator.estimate_bytes(Some(black_box(body.as_bytes()))));
    println!(
        "JsonEstimator: {} allocations per estimate",
        allocations() - before
    );
    let mut g = c.benchmark_group("estimator");
    g.bench_function(
        format!("bytes / 4 (before #13), {} B chat body", body.len()),
        |b| b.iter(|| black_box(bytes_over_four(black_box(body.as_bytes())))),
    );
    g.bench_function(format!("JsonEstimator, {} B chat body", body.len()), |b| {
        b.iter(|| black_box(estimator.estimate_bytes(Some(black_box(body.as_bytes())))))
    });
    g.bench_function(
        format!(
            "JsonEstimator, {} KB body with an image",
            image.len() / 1000
        ),
        |b| b.iter(|| black_box(estimator.estimate_bytes(Some(black_box(image.as_bytes()))))),
    );
    #[cfg(feature = "tiktoken")]
    {
        use tower_llm_resilience::rate_limit::TiktokenEstimator;
        let tiktoken = TiktokenEstimator::new();
        tiktoken.preload();
        g.bench_function(
            format!("TiktokenEstimator, {} B chat body", body.len()),
            |b| b.iter(|| black_box(tiktoken.estimate_bytes(Some(black_box(body.as_bytes()))))),
        );
    }
    g.finish();
}

criterion_group!(benches, per_request, threads, estimator);
criterion_main!(benches);
