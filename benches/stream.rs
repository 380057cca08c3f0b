//! What watching a response body costs: the [`StreamWatcher`] per frame (a
//! typical 150-byte OpenAI chunk, an Anthropic text delta) and per response
//! (a 1 KiB JSON completion with usage, a 200-chunk stream), a
//! [`WatchedBody`] against the same body unwatched, and the allocations of
//! each. Baselines in the same run: finding `"usage"` with `memmem` (the
//! least a scan can do) and parsing the JSON with serde_json (what reading
//! usage by parsing every chunk would cost).
//!
//! `cargo bench --bench stream -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde::de::IgnoredAny;
use tower_llm_resilience::stream::{BodyShape, StreamWatcher, WatchedBody};

#[path = "../src/stream/fixtures.rs"]
mod fixtures;
mod support;

use fixtures::{ANTHROPIC_DELTA, OPENAI_CHAT_SSE, OPENAI_CHUNK};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

/// A chat completion of about 1 KiB: a long answer, then the usage.
fn completion_1k() -> String {
    let text = "The package arrived two days late and the box was crushed, but the \
                headphones inside work well. ";
    serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1718000000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text.repeat(8), "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 412, "completion_tokens": 188, "total_tokens": 600,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
        },
        "system_fingerprint": "fp_1"
    })
    .to_string()
}

/// A 200-chunk chat stream: 200 token chunks, the usage chunk, `[DONE]`.
fn stream_200() -> Vec<Bytes> {
    let tail: Vec<&str> = OPENAI_CHAT_SSE.split_inclusive("\n\n").collect();
    let mut frames = vec![Bytes::from_static(OPENAI_CHUNK.as_bytes()); 200];
    frames.push(Bytes::from_static(tail[3].as_bytes()));
    frames.push(Bytes::from_static(tail[4].as_bytes()));
    frames
}

/// A watcher in the middle of a stream (so per-frame figures exclude the
/// start).
fn mid_stream() -> StreamWatcher {
    let mut w = StreamWatcher::new(BodyShape::EventStream);
    for _ in 0..3 {
        w.feed(OPENAI_CHUNK.as_bytes());
        w.feed(ANTHROPIC_DELTA.as_bytes());
    }
    w
}

fn watch_frames(frames: &[Bytes]) -> StreamWatcher {
    let mut w = StreamWatcher::new(BodyShape::EventStream);
    for frame in frames {
        w.feed(frame);
    }
    w
}

/// Allocations of one call of `f`, on this thread.
fn allocations_of<T>(f: impl FnOnce() -> T) -> u64 {
    let before = support::allocations();
    black_box(f());
    support::allocations() - before
}

/// Prints the allocation counts (and fails the run if a frame allocates).
fn allocations() {
    let mut w = mid_stream();
    let per_frame = allocations_of(|| {
        for _ in 0..1000 {
            w.feed(OPENAI_CHUNK.as_bytes());
            w.feed(ANTHROPIC_DELTA.as_bytes());
        }
    });
    assert_eq!(per_frame, 0, "the watcher allocated while reading frames");
    let json = completion_1k();
    let whole = allocations_of(|| {
        let mut w = StreamWatcher::new(BodyShape::Json);
        w.feed(json.as_bytes());
        w.report()
    });
    let frames = stream_200();
    let stream = allocations_of(|| watch_frames(&frames).report());
    eprintln!(
        "allocations: per frame {per_frame} (2,000 frames), per 1 KiB JSON response {whole}, per 200-chunk stream {stream}"
    );
}

fn body_frames(frames: &[Bytes]) -> Vec<Result<Frame<Bytes>, std::convert::Infallible>> {
    frames.iter().cloned().map(|b| Ok(Frame::data(b))).collect()
}

fn bench(c: &mut Criterion) {
    allocations();
    let json = completion_1k();
    let frames = stream_200();
    let chunk_json = &OPENAI_CHUNK.as_bytes()["data: ".len()..OPENAI_CHUNK.len() - 2];

    let mut g = c.benchmark_group("stream_watcher_per_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("OpenAI chunk (150 B): baseline memmem \"usage\"", |b| {
        let finder = memchr::memmem::Finder::new(b"\"usage\"");
        b.iter(|| finder.find(black_box(OPENAI_CHUNK.as_bytes())))
    });
    g.bench_function("OpenAI chunk (150 B): baseline serde_json parse", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(chunk_json)).is_ok())
    });
    g.bench_function("OpenAI chunk (150 B): watcher", |b| {
        let mut w = mid_stream();
        b.iter(|| w.feed(black_box(OPENAI_CHUNK.as_bytes())))
    });
    g.bench_function("Anthropic delta (130 B): watcher", |b| {
        let mut w = mid_stream();
        b.iter(|| w.feed(black_box(ANTHROPIC_DELTA.as_bytes())))
    });
    g.finish();

    let mut g = c.benchmark_group("stream_watcher_per_response");
    g.bench_function("1 KiB JSON completion: baseline serde_json parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(json.as_bytes())).is_ok())
    });
    g.bench_function("1 KiB JSON completion: watcher", |b| {
        b.iter(|| {
            let mut w = StreamWatcher::new(BodyShape::Json);
            w.feed(black_box(json.as_bytes()));
            w.report()
        })
    });
    g.bench_function("200-chunk stream: watcher", |b| {
        b.iter(|| watch_frames(black_box(&frames)).report())
    });
    g.finish();

    let rt = support::rt();
    let mut g = c.benchmark_group("watched_body_200_chunks");
    g.bench_function("baseline: the body unwatched", |b| {
        b.iter_batched(
            || StreamBody::new(futures::stream::iter(body_frames(&frames))),
            |body| rt.block_on(body.collect()).is_ok(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("WatchedBody", |b| {
        b.iter_batched(
            || {
                let body = StreamBody::new(futures::stream::iter(body_frames(&frames)));
                WatchedBody::new(body, StreamWatcher::new(BodyShape::EventStream), ())
            },
            |body| rt.block_on(body.collect()).is_ok(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
