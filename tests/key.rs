//! Keys: names and fingerprints of secrets.

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
