//! Keys: names, fingerprints of secrets, keys by model and their combinations.

use std::collections::HashSet;

use http::Request;
use tower_llm_resilience::key::{ByHeader, Key, KeyFn};

fn with_auth(value: &str) -> Request<()> {
    Request::builder()
        .header("authorization", value)
        .header("x-api-key", value)
        .body(())
        .unwrap()
}

/// Issue #11, finding 6: the fingerprint of an API key is a keyed hash
/// (HMAC-SHA256, 128 bits kept), a fixed value for a given secret (so
/// processes that share the secret agree on the key), another value with
/// another secret, and nothing shown of a key or of `ByHeader` contains
/// the secret or the API key.
#[test]
fn the_key_fingerprint_is_a_keyed_hash_that_hides_the_secret_and_the_api_key() {
    let api_key = "Bearer sk-test-123";
    let secret = "team-secret";
    // HMAC-SHA256("team-secret", "Bearer sk-test-123") =
    // 6153fea4facce817 e288119e323608d0 ab577368...
    let key = Key::fingerprint_with(secret.as_bytes(), api_key.as_bytes());
    assert_eq!(key.to_string(), "fp:6153fea4facce817");
    assert_eq!(format!("{key:#}"), "fp:6153fea4facce817e288119e323608d0");
    assert_eq!(key.as_str(), None);
    let other = Key::fingerprint_with(b"other-secret", api_key.as_bytes());
    assert_eq!(other.to_string(), "fp:d52f3ec0225bdb1e");
    assert_ne!(key, other);

    // `ByHeader` with the same secret gives the same key, in any process.
    let shared = ByHeader::api_key().fingerprint_secret(secret);
    assert_eq!(shared.key(&with_auth(api_key)), key);
    let anthropic = ByHeader::new(http::HeaderName::from_static("x-api-key"))
        .fingerprint_secret(secret.as_bytes());
    assert_eq!(anthropic.key(&with_auth(api_key)), key);
    assert_ne!(
        shared.key(&with_auth("Bearer sk-test-124")),
        key,
        "another API key"
    );

    // By default the secret is random per process: stable within it,
    // unlinkable to any fixed secret.
    let default = ByHeader::api_key();
    let a = default.key(&with_auth(api_key));
    assert_eq!(a, default.clone().key(&with_auth(api_key)));
    assert_eq!(a, Key::fingerprint(api_key.as_bytes()));
    assert_ne!(a, key);
    assert_ne!(a, Key::fingerprint_with(b"", api_key.as_bytes()));

    // Equality and hashing use every kept bit, not the shown prefix.
    let set: HashSet<Key> = [key.clone(), other.clone(), a.clone(), key.clone()].into();
    assert_eq!(set.len(), 3);

    // Nothing shown holds the secret or the API key.
    let secret_bytes = format!("{:?}", secret.as_bytes());
    let secret_hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let api_hex: String = api_key.bytes().map(|b| format!("{b:02x}")).collect();
    let shown = [
        format!("{key} {key:?} {key:#} {key:#?}"),
        format!("{a} {a:?} {a:#}"),
        format!("{shared:?} {shared:#?}"),
        format!("{anthropic:?} {default:?}"),
    ];
    for s in &shown {
        for needle in [
            secret,
            "sk-test",
            &secret_bytes[1..secret_bytes.len() - 1],
            &secret_hex,
            &api_hex,
        ] {
            assert!(!s.contains(needle), "{s:?} shows {needle:?}");
        }
    }
    assert!(shown[0].starts_with("fp:"), "{}", shown[0]);
}

/// A chat request for `model` with `auth`, the model after the messages
/// (as the SDKs write it).
fn chat(model: &str, auth: &str) -> Request<String> {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"hi","model":"not this"}}],"max_tokens":5,"model":"{model}"}}"#
    );
    Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", auth)
        .body(body)
        .unwrap()
}

/// Issue #14, item 5: one breaker per model. A model whose every answer is
/// a 503 opens its own circuit; another model's requests go on.
#[tokio::test(start_paused = true)]
async fn each_model_has_its_own_breaker() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::{Layer, Service, ServiceExt};
    use tower_llm_resilience::key::ByModel;
    use tower_llm_resilience::{LlmLayer, Provider};

    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let provider = tower::service_fn(move |req: Request<String>| {
        seen.fetch_add(1, Ordering::Relaxed);
        let status = if req.body().ends_with(r#""model":"down"}"#) {
            503
        } else {
            200
        };
        let response = http::Response::builder()
            .status(status)
            .body(String::from("{}"));
        async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
    });
    let mut client = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(10_000)
        .key_fn(ByModel::new())
        .retry(|retry| retry.max_attempts(1))
        .circuit_breaker(|breaker| breaker.minimum_calls(4))
        .layer(provider);
    let mut errors = Vec::new();
    for _ in 0..6 {
        let result = client.ready().await.unwrap().call(chat("down", "k")).await;
        errors.push(result.unwrap_err());
    }
    assert!(!errors[0].is_circuit_open());
    assert!(errors[5].is_circuit_open(), "{:?}", errors[5]);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "the open circuit fails fast"
    );
    for _ in 0..3 {
        let response = client.ready().await.unwrap().call(chat("up", "k")).await;
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(calls.load(Ordering::Relaxed), 7);
}

/// Issue #14, item 5: keys by model and API key at once, each model with
/// its own RPM: two API keys on the same model count separately, and a
/// model's limit comes from the key's first part.
#[tokio::test(start_paused = true)]
async fn model_and_api_key_keys_with_per_model_limits() {
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Layer, Service, ServiceExt};
    use tower_llm_resilience::key::ByModel;
    use tower_llm_resilience::{Limits, LlmLayer, Provider};

    let provider = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
    });
    let mut client = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(1_000)
        .key_fn((ByModel::new(), ByHeader::api_key()))
        .key_limits(|key| {
            let rpm = match key.parts()[0].as_str() {
                Some("gpt-4o") => 1,
                _ => 1_000,
            };
            Limits::new().requests_per_minute(rpm)
        })
        .layer(provider);
    let start = Instant::now();
    for (model, auth) in [
        ("gpt-4o", "Bearer sk-a"),
        ("gpt-4o", "Bearer sk-b"),
        ("gpt-4o-mini", "Bearer sk-a"),
        ("gpt-4o-mini", "Bearer sk-a"),
    ] {
        let response = client.ready().await.unwrap().call(chat(model, auth)).await;
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "no bucket was full");
    client
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o", "Bearer sk-a"))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(60),
        "gpt-4o with sk-a had spent its minute: {:?}",
        start.elapsed()
    );

    // The key: the model, then the API key's fingerprint, never the key.
    let key = (ByModel::new(), ByHeader::api_key()).key(&chat("gpt-4o", "Bearer sk-a"));
    let shown = key.to_string();
    assert!(shown.starts_with("gpt-4o|fp:"), "{shown}");
    assert!(!format!("{key:?}").contains("sk-a"));
    assert_eq!(key.parts().len(), 2);
    assert_eq!(key.parts()[1], Key::fingerprint(b"Bearer sk-a"));
    assert_ne!(
        key,
        (ByModel::new(), ByHeader::api_key()).key(&chat("gpt-4o", "Bearer sk-b"))
    );
}

mod model_scan {
    use proptest::prelude::*;
    use tower_llm_resilience::key::ByModel;

    /// JSON values with nested objects that may hold a `"model"` of their own.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(Into::into),
            ".{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Into::into),
                prop::collection::btree_map(
                    prop_oneof![Just("model".to_owned()), "[a-z{}\"\\\\]{0,6}"],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever comes before it, nested or escaped, the top-level
        /// model is found, exactly.
        #[test]
        fn finds_the_top_level_model(
            before in prop::collection::vec(("[a-z_\"{}\\\\]{1,8}", value()), 0..4),
            model in "[^\u{0}]{1,40}",
        ) {
            let mut body = String::from("{");
            for (i, (key, value)) in before.iter().enumerate() {
                if key == "model" {
                    continue;
                }
                body.push_str(&format!("{}:{value},", serde_json::json!(format!("{key}{i}"))));
            }
            body.push_str(&format!("\"model\" : {}}}", serde_json::json!(model)));
            let req = http::Request::new(body.clone());
            let found = ByModel::new().model_of(&req);
            prop_assert_eq!(found.as_deref(), Some(model.as_str()), "{}", body);
        }

        /// Any bytes: no panic, and a model found is a bounded name.
        #[test]
        fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let req = http::Request::new(body);
            if let Some(model) = ByModel::new().model_of(&req) {
                prop_assert!(!model.is_empty() && model.len() <= 256);
            }
        }
    }
}

/// The configuration's per-model tables reach the stack: with `ByModel`
/// as the key function, `[models."o3"]` holds o3 alone.
#[cfg(feature = "config")]
#[tokio::test(start_paused = true)]
async fn per_model_tables_from_the_configuration() {
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Layer, Service, ServiceExt};
    use tower_llm_resilience::config::LlmConfig;
    use tower_llm_resilience::key::ByModel;
    use tower_llm_resilience::{LlmLayer, Provider};

    let file = "[limits]\nrpm = 500\n[models.\"o3\"]\nrpm = 1\n";
    let config = LlmConfig::from_toml(file).unwrap();
    let provider = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("{}")))
    });
    let layer = LlmLayer::new(Provider::OpenAi).key_fn((ByModel::new(), ByHeader::api_key()));
    let mut client = config.apply(layer).layer(provider);
    let start = Instant::now();
    for model in ["o3", "gpt-4o-mini", "gpt-4o-mini"] {
        let response = client.ready().await.unwrap().call(chat(model, "k")).await;
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    client
        .ready()
        .await
        .unwrap()
        .call(chat("o3", "k"))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(60), "o3 has rpm 1");
}
