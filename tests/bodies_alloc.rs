//! Reading a request body for its estimate and its model allocates
//! nothing, for every body type held in memory (`Full<Bytes>` shares its
//! bytes by reference count); the key is one allocation, its name.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower_llm_resilience::key::ByModel;
use tower_llm_resilience::rate_limit::{BodyBytes, Estimator, JsonEstimator};
use tower_llm_resilience::{Key, KeyFn};

mod support;

use support::allocations;

// The counts are per thread; everything here runs on this one.
#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

const CHAT: &str = r#"{"messages":[{"role":"user","content":"Is this review positive? The parcel came two days late."}],"max_tokens":5,"model":"gpt-4o-mini"}"#;

/// Allocations of 1,000 estimates, 1,000 model look-ups and 1,000 keys.
fn costs<B: BodyBytes>(request: &Request<B>) -> [u64; 3] {
    let estimator = JsonEstimator::new();
    let by_model = ByModel::new();
    // Warm up: the first clone of a `Bytes` made from a `Vec` moves it to
    // a shared buffer (once; the retry layer's copy of the request does it
    // anyway).
    let _ = request.body().body_bytes();
    let before = allocations();
    for _ in 0..1_000 {
        let (costs, declared) = estimator.estimate_declared(request);
        assert_eq!((costs.output_tokens, declared), (5, Some(5)));
    }
    let estimates = allocations() - before;
    let before = allocations();
    for _ in 0..1_000 {
        assert_eq!(by_model.model_of(request).as_deref(), Some("gpt-4o-mini"));
    }
    let models = allocations() - before;
    let before = allocations();
    for _ in 0..1_000 {
        assert_eq!(by_model.key(request), Key::new("gpt-4o-mini"));
    }
    // `Key::new` here allocates too: 2 per round, of which the key fn's 1.
    [estimates, models, allocations() - before]
}

#[test]
fn reading_a_body_allocates_nothing_and_a_key_its_name() {
    let request = || {
        Request::post("/v1/chat/completions")
            .body(CHAT.to_owned())
            .unwrap()
    };
    let before = allocations();
    let _probe = Key::new("gpt-4o-mini");
    assert_eq!(allocations() - before, 1, "a key's name is one allocation");
    assert_eq!(costs(&request()), [0, 0, 2_000], "String");
    assert_eq!(
        costs(&request().map(String::into_bytes)),
        [0, 0, 2_000],
        "Vec<u8>"
    );
    assert_eq!(costs(&request().map(Bytes::from)), [0, 0, 2_000], "Bytes");
    assert_eq!(costs(&Request::new(CHAT)), [0, 0, 2_000], "&'static str");
    // `Full` shares its bytes: the estimate and the key cost what they cost
    // for the others; `model_of` hands out a copy of the name (the key
    // function does not need one).
    let full = request().map(|b| Full::new(Bytes::from(b)));
    assert_eq!(costs(&full), [0, 1_000, 2_000], "Full<Bytes>");
    let full = Request::new(Full::new(Bytes::from_static(CHAT.as_bytes())));
    assert_eq!(costs(&full), [0, 1_000, 2_000], "Full<Bytes>, static");
}
