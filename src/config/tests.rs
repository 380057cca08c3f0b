use super::*;
use crate::rate_limit::Limit;

fn limits_of(l: &Limits) -> Vec<(Dimension, Duration, u64)> {
    l.iter()
        .map(|l: &Limit| (l.dimension, l.window, l.limit))
        .collect()
}

const FULL: &str = r#"
provider = "anthropic"

[limits]
rpm = 50
input_tpm = 40_000
output_tpm = 8_000
window = "60s"

[models."claude-haiku"]
rpm = 100

[retry]
max_attempts = 3
base = "250ms"
cap = "4s"
factor = 3.0
jitter = "full"
max_retry_after = "30s"
deadline = "2m"
seed = 7

[breaker]
failure_rate = 0.25
window_time = "30s"
minimum_calls = 5
open_duration = "20s"
half_open_probes = 2
quota_open_duration = "10m"

[stack]
max_wait = "5m"
max_gate_wait = "30s"
attempt_timeout = 120
idle_timeout = "1m"
arrival_margin = "100ms"
learned_ttl = "2m"
learn_limits = true
calibrate_estimates = false
"#;

#[test]
fn a_whole_file_reads_into_every_setting() {
    let c = LlmConfig::from_toml(FULL).unwrap();
    assert_eq!(c.provider, Some(Provider::Anthropic));
    let minute = Duration::from_secs(60);
    assert_eq!(
        limits_of(&c.limits()),
        vec![
            (Dimension::Requests, minute, 50),
            (Dimension::InputTokens, minute, 40_000),
            (Dimension::OutputTokens, minute, 8_000),
        ]
    );
    // A model's table replaces only what it sets.
    let models: Vec<_> = c.model_limits().collect();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].0, "claude-haiku");
    assert_eq!(
        limits_of(&models[0].1),
        vec![
            (Dimension::Requests, minute, 100),
            (Dimension::InputTokens, minute, 40_000),
            (Dimension::OutputTokens, minute, 8_000),
        ]
    );
    assert_eq!(c.retry.max_attempts, Some(3));
    assert_eq!(c.retry.base, Some(Duration::from_millis(250)));
    assert_eq!(c.retry.jitter, Some(Jitter::Full));
    assert_eq!(c.stack.attempt_timeout, Some(Duration::from_secs(120)));
    assert_eq!(c.stack.calibrate_estimates, Some(false));
    let expected = circuit_breaker::Config::new()
        .failure_rate(0.25)
        .window(FailureWindow::Time(Duration::from_secs(30)))
        .minimum_calls(5)
        .open_duration(Duration::from_secs(20))
        .half_open_probes(2)
        .quota_open_duration(Duration::from_secs(600));
    assert_eq!(c.breaker_config(), expected);
    // And it builds the stack.
    let _layer: LlmLayer = c.layer();
}

#[test]
fn an_empty_file_is_every_default() {
    let c = LlmConfig::from_toml("").unwrap();
    assert_eq!(c, LlmConfig::default());
    assert!(limits_of(&c.limits()).is_empty());
    assert_eq!(c.breaker_config(), circuit_breaker::Config::default());
}

#[test]
fn the_window_replaces_the_minute_and_days_stay_days() {
    let c = LlmConfig::from_toml("[limits]\nrpm = 10\ntpd = 1000\nwindow = \"10s\"").unwrap();
    assert_eq!(
        limits_of(&c.limits()),
        vec![
            (Dimension::Requests, Duration::from_secs(10), 10),
            (Dimension::Tokens, Duration::from_secs(24 * 3600), 1000),
        ]
    );
}

/// Each mistake names its field.
#[test]
fn bad_values_name_their_field() {
    let cases = [
        ("[limits]\nrpm = -1", "limits.rpm"),
        ("[limits]\nrpm = 0", "limits.rpm"),
        ("[limits]\nrpmm = 5", "limits.rpmm"),
        ("[limits]\nwindow = \"soon\"", "limits.window"),
        ("[models.\"gpt-4o\"]\ntpm = 0", "models.gpt-4o.tpm"),
        ("[models.\"gpt-4o\"]\ntpm = \"many\"", "models.gpt-4o.tpm"),
        ("provider = \"open-ai\"", "provider"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
        ("[retry]\nfactor = 0.5", "retry.factor"),
        ("[retry]\nbase = \"5s\"\ncap = \"1s\"", "retry.cap"),
        ("[retry]\njitter = \"some\"", "retry.jitter"),
        ("[breaker]\nfailure_rate = 1.5", "breaker.failure_rate"),
        (
            "[breaker]\nhalf_open_probes = 0",
            "breaker.half_open_probes",
        ),
        (
            "[breaker]\nwindow_calls = 10\nwindow_time = \"1m\"",
            "breaker.window_time",
        ),
        ("[stack]\nmax_wait = true", "stack.max_wait"),
        ("[stack]\nmax_wiat = \"1m\"", "stack.max_wiat"),
        ("unknown = 1", "unknown"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|&(text, path)| {
            let e = LlmConfig::from_toml(text).unwrap_err();
            let right = e.path() == path && !e.message().is_empty() && e.to_string().contains(path);
            (!right).then(|| format!("{text:?}: path {:?}, {e}", e.path()))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // A syntax error is the file's, with toml's own message.
    let e = LlmConfig::from_toml("[limits\nrpm = 1").unwrap_err();
    assert_eq!(e.path(), "");
    // An unknown field says which ones exist.
    let e = LlmConfig::from_toml("[limits]\nrpmm = 5").unwrap_err();
    assert!(
        e.message().contains("rpmm") && e.message().contains("rpm"),
        "{e}"
    );
}

#[test]
fn the_environment_overrides_the_file() {
    let env = [
        ("TLR__LIMITS__RPM", "600"),
        ("tlr__stack__max_wait", "30s"),
        ("TLR__PROVIDER", "openai"),
        ("TLR__MODELS__gpt-4o__TPM", "1000"),
        ("TLR__BREAKER__COUNT_RATE_LIMITED", "true"),
        ("OTHER__LIMITS__RPM", "1"),
    ];
    let c = LlmConfig::from_toml_with_env(FULL, "TLR", env).unwrap();
    assert_eq!(c.limits.rpm, Some(600));
    assert_eq!(c.stack.max_wait, Some(Duration::from_secs(30)));
    assert_eq!(c.provider, Some(Provider::OpenAi));
    assert_eq!(c.models["gpt-4o"].tpm, Some(1000));
    assert_eq!(c.breaker.count_rate_limited, Some(true));
    // A bad override names the field it set.
    let e = LlmConfig::from_toml_with_env("", "TLR", [("TLR__LIMITS__RPM", "lots")]).unwrap_err();
    assert_eq!(e.path(), "limits.rpm");
    let e = LlmConfig::from_toml_with_env("", "TLR", [("TLR__LIMITS____RPM", "1")]).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = LlmConfig::from_toml_with_env("", "TLR", [("TLR__PROVIDER__NAME", "x")])
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.path(), "provider");
}

/// The settings reach the running stack: a limit of 1 request per 10 s
/// from the file holds the second request for 10 s.
#[tokio::test(start_paused = true)]
async fn the_file_drives_the_stack() {
    use tower::{Layer, Service, ServiceExt};
    let c = LlmConfig::from_toml(
        "provider = \"openai\"\n[limits]\nrpm = 1\nwindow = \"10s\"\n[stack]\narrival_margin = \"0s\"",
    )
    .unwrap();
    let inner = tower::service_fn(|_req: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let mut svc = c.layer().layer(inner);
    let start = tokio::time::Instant::now();
    for _ in 0..2 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

/// The retry and breaker sections reach the running stack: two attempts
/// in all, and a breaker that opens after two failed calls.
#[tokio::test(start_paused = true)]
async fn retry_and_breaker_settings_reach_the_stack() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::{Layer, Service, ServiceExt};
    let c = LlmConfig::from_toml(
        "provider = \"openai\"\n[retry]\nmax_attempts = 2\nbase = \"10ms\"\ncap = \"10ms\"\n\
         [breaker]\nwindow_calls = 2\nminimum_calls = 2\nfailure_rate = 1.0\nopen_duration = \"1m\"",
    )
    .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_req: http::Request<String>| {
        seen.fetch_add(1, Ordering::Relaxed);
        async {
            let response = http::Response::builder()
                .status(500)
                .body(String::from(r#"{"error":{"type":"server_error"}}"#))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut svc = c.layer().layer(inner);
    for _ in 0..2 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(String::new()))
            .await;
    }
    assert_eq!(calls.load(Ordering::Relaxed), 4, "two attempts per request");
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap_err();
    assert!(error.is_circuit_open(), "{error:?}");
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "the open breaker sent nothing"
    );
}
