//! Parsers and classifiers take anything a server or a proxy may send:
//! never a panic, never an overflow, never a wait above the clamp.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use tower_llm_resilience::classify::{
    classify_grpc, parse_error_body, parse_go_duration, parse_retry_after, parse_retry_after_ms,
    parse_rfc3339_reset, Classification, Provider, MAX_SERVER_WAIT,
};

/// Every header name the classifier reads (shared with the fuzz targets).
const NAMES: &[&str] = tower_llm_resilience::classify::fuzzing::HEADER_NAMES;

/// Values that have broken parsers elsewhere, plus arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("99999999999".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("1e309".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551616".to_string()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("0001-01-01T00:00:00Z".to_string()),
        Just("2024-05-01T12:00:00+99:99".to_string()),
        Just("1h2m3.5s".to_string()),
        Just("999999999999h".to_string()),
        Just("\"default\";r=99999999999999;t=99999999999999".to_string()),
        Just("\"tokens\";q=-5;w=-1".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| format!("{u}ms")),
        "[ -~]{0,40}",
        ".{0,40}",
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((prop::sample::select(NAMES), value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        Just(br#"{"error":{"code":"insufficient_quota","details":[{"@type":"google.rpc.RetryInfo","retryDelay":"99999999999s"}]}}"#.to_vec()),
        Just(br#"[{"error":{"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":"oops"}]}}]"#.to_vec()),
        Just(br#"{"error":{"message":null,"code":[1,2],"details":{"a":1}}}"#.to_vec()),
        "[ -~]{0,200}".prop_map(String::into_bytes),
    ]
}

fn within_clamp(c: &Classification) -> bool {
    let l = &c.limits;
    let resets = [l.requests, l.tokens, l.input_tokens, l.output_tokens]
        .into_iter()
        .flatten()
        .flat_map(|s| [s.reset, s.window])
        .flatten();
    c.retry_after
        .into_iter()
        .chain(resets)
        .all(|d| d <= MAX_SERVER_WAIT)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn value_parsers_never_panic_and_stay_clamped(v in value(), now_secs in 0u64..=253_402_300_799) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        for wait in [
            parse_retry_after(&v, now),
            parse_retry_after_ms(&v),
            parse_go_duration(&v),
            parse_rfc3339_reset(&v, now),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!(wait <= MAX_SERVER_WAIT, "{v:?} gave {wait:?}");
        }
    }

    #[test]
    fn classifiers_never_panic(
        headers in headers(),
        body in body(),
        status in 100u16..=999,
        provider in prop::sample::select(vec![
            Provider::Auto, Provider::OpenAi, Provider::AzureOpenAi, Provider::Anthropic,
            Provider::Gemini, Provider::Groq, Provider::OpenRouter, Provider::Generic,
        ]),
        now_secs in 0u64..=253_402_300_799,
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        let c = provider.classify_at(status, &headers, Some(&body), now);
        prop_assert!(within_clamp(&c), "{c:?}");
        // A failed gRPC status in the headers is a failure at any status.
        let grpc = classify_grpc(&headers);
        prop_assert_eq!(c.class.is_none(), status.as_u16() < 400 && grpc.is_none());
        let _ = parse_error_body(&body);
    }
}

#[test]
fn negative_nan_and_huge_values_are_absent_or_clamped() {
    let now = SystemTime::UNIX_EPOCH;
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("NaN", now), None);
    assert_eq!(parse_retry_after("1e309", now), Some(MAX_SERVER_WAIT));
    assert_eq!(parse_retry_after("99999999999", now), Some(MAX_SERVER_WAIT));
    assert_eq!(parse_retry_after_ms("NaN"), None);
    assert_eq!(parse_retry_after_ms("1e309"), Some(MAX_SERVER_WAIT));
    assert_eq!(parse_go_duration("-1s"), None);
    assert_eq!(
        parse_go_duration("1e309s"),
        None,
        "Go durations have no exponent"
    );
    assert_eq!(
        parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
        Some(MAX_SERVER_WAIT)
    );
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        parse_rfc3339_reset("1999-01-01T00:00:00Z", later),
        Some(Duration::ZERO)
    );
}
