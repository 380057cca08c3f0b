//! Reading a simulated stream allocates nothing per event: its events are
//! slices of one buffer rendered at admission, and its timer is made once.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_llm_resilience::sim::SimProvider;

mod support;

use support::allocations;

// The counts are per thread; the paused runtime runs on this one.
#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

/// A streamed request for a batched prompt of `texts` texts, so that the
/// answer (a JSON array of labels) streams in many pieces.
fn batched(texts: usize) -> Request<String> {
    let mut prompt = String::from("Label each text; answer with a JSON array of labels.");
    for i in 1..=texts {
        prompt.push_str(&format!("\n{i}. a great chair"));
    }
    let body = serde_json::json!({
        "max_tokens": 4_000,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post("/v1/chat/completions")
        .body(body.to_string())
        .unwrap()
}

/// The events of one streamed answer of `texts` texts, and the
/// allocations made while reading them.
async fn read(sim: &SimProvider, texts: usize) -> (usize, u64) {
    let response = sim.clone().oneshot(batched(texts)).await.unwrap();
    let mut body = response.into_body();
    let mut events = 0;
    let before = allocations();
    while let Some(frame) = body.frame().await {
        drop(frame.unwrap());
        events += 1;
    }
    (events, allocations() - before)
}

#[test]
fn reading_a_stream_allocates_nothing_per_event() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = SimProvider::builder()
            .rpm(1_000)
            .tpm(1_000_000)
            .latency(Duration::from_millis(500))
            .build();
        read(&sim, 2).await; // warm up the runtime's timer
        let (small_events, small) = read(&sim, 2).await;
        let (large_events, large) = read(&sim, 100).await;
        assert!(
            large_events > 10 * small_events,
            "{small_events} vs {large_events} events"
        );
        // per stream, not per event: the boxed timer (and the buffer's
        // shared header, were it made on the first slice)
        assert!(small <= 2, "{small} allocations for {small_events} events");
        assert_eq!(
            large, small,
            "{large} allocations for {large_events} events, {small} for {small_events}"
        );
    });
}
