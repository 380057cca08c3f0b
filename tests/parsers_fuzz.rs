//! The fuzz targets of `fuzz/` on stable: proptest feeds arbitrary bytes
//! (and bytes shaped like real header values) to the same entry points,
//! `tower_llm_resilience::classify::fuzzing`, which panic when a parser
//! breaks a promise of the `classify` module (a panic, an overflow, a wait
//! above `MAX_SERVER_WAIT`, an integer not read as itself).

use proptest::prelude::*;
use tower_llm_resilience::classify::fuzzing;

/// Text that looks like what servers send in these headers, as bytes.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<u64>().prop_map(|n| format!("{n}ms")),
        (any::<u32>(), any::<u32>()).prop_map(|(m, s)| format!("{m}m{s}.5s")),
        Just("1e308".to_owned()),
        Just("NaN".to_owned()),
        Just("-inf".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("9999-12-31T23:59:59.999999999Z".to_owned()),
        Just("2024-05-01T12:00:00+23:59".to_owned()),
        "[0-9]{1,4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "\"[a-z]{1,8}\";[qwrt]=-?[0-9]{1,20}(\\.[0-9]{1,3})?(;[qwrt]=[0-9]{1,5})?",
        "[ -~]{0,48}",
    ]
    .prop_map(String::into_bytes)
}

/// Eight bytes of wall-clock time, then a header-like value.
fn timed() -> impl Strategy<Value = Vec<u8>> {
    (any::<[u8; 8]>(), header_like()).prop_map(|(now, value)| [&now[..], &value].concat())
}

/// Values separated by newlines, for the multi-header targets.
fn lines(n: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(header_like(), n).prop_map(|values| values.join(&b'\n'))
}

/// Error bodies: JSON in the shape of each provider's, and garbage.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just("insufficient_quota".to_owned()),
        Just("rate_limit_exceeded".to_owned()),
        Just("overloaded_error".to_owned()),
        Just("RESOURCE_EXHAUSTED".to_owned()),
        Just("context_length_exceeded".to_owned()),
        "[a-z_]{0,20}",
    ];
    prop_oneof![
        (code.clone(), "[ -~]{0,30}").prop_map(|(c, m)| format!(
            r#"{{"error":{{"message":"{m}","type":"{c}","code":"{c}"}}}}"#
        )
        .into_bytes()),
        (code, "[0-9a-z.]{0,10}", "[A-Za-z]{0,20}").prop_map(|(c, d, q)| format!(
            r#"[{{"error":{{"status":"{c}","details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{d}"}},{{"@type":"google.rpc.QuotaFailure","violations":[{{"quotaId":"{q}"}}]}}]}}}}]"#
        )
        .into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A response for [`fuzzing::classify`]: its status, provider and time,
/// then headers named by index, then a body.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let header = (0u8..40, header_like()).prop_map(|(name, mut value)| {
        value.truncate(255);
        let mut bytes = vec![name, value.len() as u8];
        bytes.extend(value);
        bytes
    });
    (
        any::<[u8; 2]>(),
        any::<u8>(),
        any::<[u8; 8]>(),
        proptest::collection::vec(header, 0..12),
        body(),
    )
        .prop_map(|(status, flags, now, headers, body)| {
            let mut bytes = status.to_vec();
            bytes.push(flags);
            bytes.extend(now);
            bytes.push(headers.len() as u8);
            bytes.extend(headers.concat());
            bytes.extend(body);
            bytes
        })
}

/// A gRPC status, message and pushback as servers send them.
fn grpc() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![(0u32..20).prop_map(|n| n.to_string()), "[ -~]{0,12}"];
    let message = prop_oneof![
        Just("Quota exceeded for quota metric 'requests per day'".to_owned()),
        Just("insufficient_quota".to_owned()),
        "[ -~]{0,40}",
    ];
    (status, message, header_like())
        .prop_map(|(s, m, p)| [s.into_bytes(), m.into_bytes(), p].join(&b'\n'))
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn retry_after(data in prop_oneof![bytes(), timed()]) {
        fuzzing::retry_after(&data);
    }

    #[test]
    fn retry_after_ms(data in prop_oneof![bytes(), header_like()]) {
        fuzzing::retry_after_ms(&data);
    }

    #[test]
    fn go_duration(data in prop_oneof![bytes(), header_like()]) {
        fuzzing::go_duration(&data);
    }

    #[test]
    fn rfc3339_reset(data in prop_oneof![bytes(), timed()]) {
        fuzzing::rfc3339_reset(&data);
    }

    #[test]
    fn ratelimit_fields(data in prop_oneof![bytes(), lines(5)]) {
        fuzzing::ratelimit_fields(&data);
    }

    #[test]
    fn x_ratelimit(data in prop_oneof![bytes(), lines(3)]) {
        fuzzing::x_ratelimit(&data);
    }

    #[test]
    fn error_body(data in prop_oneof![bytes(), body()]) {
        fuzzing::error_body(&data);
    }

    #[test]
    fn grpc_status(data in prop_oneof![bytes(), lines(3), grpc()]) {
        fuzzing::grpc_status(&data);
    }

    #[test]
    fn classify(data in prop_oneof![bytes(), response()]) {
        fuzzing::classify(&data);
    }
}
