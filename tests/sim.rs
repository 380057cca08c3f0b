//! The simulated provider: sliding windows, headers that this crate's
//! classifier reads back, seeded faults, outage, quota, loopback HTTP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{advance, Instant};
use tower::ServiceExt;
use tower_llm_resilience::classify::{Classifier, ErrorClass, Provider};
use tower_llm_resilience::sim::{label, Fault, SimProvider, Style, Verdict};

fn chat(text: &str) -> Request<String> {
    chat_with(text, 16)
}

fn chat_with(text: &str, max_tokens: u64) -> Request<String> {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": max_tokens,
        "messages": [
            {"role": "system", "content": "Answer positive, negative or neutral."},
            {"role": "user", "content": format!("Classify the sentiment.\nText: {text}")}
        ]
    });
    Request::post("/v1/chat/completions")
        .header("x-request-id", format!("client-{text}"))
        .body(body.to_string())
        .unwrap()
}

fn messages(text: &str) -> Request<String> {
    let body = serde_json::json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 16,
        "system": "Answer positive, negative or neutral.",
        "messages": [{"role": "user", "content": format!("Text: {text}")}]
    });
    Request::post("/v1/messages")
        .body(body.to_string())
        .unwrap()
}

async fn send(sim: &SimProvider, req: Request<String>) -> std::io::Result<(Response<()>, Bytes)> {
    let response = sim.clone().oneshot(req).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok((Response::from_parts(parts, ()), body))
}

fn classify(p: Provider, r: &Response<()>, body: &[u8]) -> tower_llm_resilience::Classification {
    // the sim's Date header is the reference for absolute times
    p.classify(r.status(), r.headers(), Some(body))
}

fn wall_start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[tokio::test(start_paused = true)]
async fn completion_has_real_shape_usage_and_headers() {
    let sim = SimProvider::builder()
        .rpm(60)
        .tpm(10_000)
        .wall_clock(wall_start())
        .build();
    let (r, body) = send(&sim, chat("I love it, great value")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["message"]["content"], "positive");
    let prompt_chars = "Answer positive, negative or neutral.".len()
        + "Classify the sentiment.\nText: I love it, great value".len();
    let prompt_tokens = (prompt_chars as u64).div_ceil(4);
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 2);
    let h = r.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "60");
    assert_eq!(h["x-ratelimit-remaining-requests"], "59");
    assert_eq!(h["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(
        h["x-ratelimit-remaining-tokens"],
        (10_000 - prompt_tokens - 16).to_string().as_str()
    );
    assert_eq!(h["date"], httpdate::fmt_http_date(wall_start()).as_str());
    assert_eq!(h["x-request-id"], "req_sim_0");
    let c = classify(Provider::OpenAi, &r, &body);
    assert_eq!(c.class, None);
    assert_eq!(c.limits.requests.unwrap().remaining, Some(59));
    assert_eq!(
        c.limits.requests.unwrap().reset,
        Some(Duration::from_secs(60))
    );

    let log = sim.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].label, Some("positive"));
    assert_eq!(log[0].text, "I love it, great value");
    assert_eq!(
        log[0].client_request_id.as_deref(),
        Some("client-I love it, great value")
    );
    assert_eq!(log[0].charged_tokens, prompt_tokens + 16);
}

#[tokio::test(start_paused = true)]
async fn anthropic_messages_shape_and_headers() {
    let sim = SimProvider::builder()
        .style(Style::Anthropic)
        .rpm(50)
        .tpm(40_000)
        .wall_clock(wall_start())
        .build();
    let (r, body) = send(&sim, messages("Terrible, it arrived broken"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "negative");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["output_tokens"], 2);
    let h = r.headers();
    assert_eq!(h["anthropic-ratelimit-requests-limit"], "50");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "49");
    assert_eq!(
        h["anthropic-ratelimit-requests-reset"],
        "2027-01-15T08:01:00Z"
    );
    let c = classify(Provider::Auto, &r, &body);
    assert_eq!(c.provider, Some(Provider::Anthropic));
    assert_eq!(c.limits.requests.unwrap().limit, Some(50));
    assert_eq!(
        c.limits.requests.unwrap().reset,
        Some(Duration::from_secs(60))
    );
}

#[tokio::test(start_paused = true)]
async fn rpm_429_exactly_when_the_window_is_full_with_the_time_until_room() {
    let sim = SimProvider::builder()
        .rpm(3)
        .tpm(1_000_000)
        .window(Duration::from_secs(60))
        .build();
    // admissions at t = 0, 10, 20
    for i in 0..3 {
        let (r, _) = send(&sim, chat(&format!("item {i}"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        advance(Duration::from_secs(10)).await;
    }
    // t = 30: full; room when the t = 0 admission leaves, at t = 60
    let (r, body) = send(&sim, chat("one more")).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(r.headers()["retry-after-ms"], "30000");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset-requests"], "50s");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert!(v["error"]["param"].is_null());
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("on requests per min (RPM): Limit 3, Used 3, Requested 1."),
        "{msg}"
    );
    let c = classify(Provider::OpenAi, &r, &body);
    assert_eq!(c.class, Some(ErrorClass::RateLimited));
    assert_eq!(c.retry_after, Some(Duration::from_secs(30)));
    assert_eq!(c.limits.requests.unwrap().limit, Some(3));
    assert_eq!(c.limits.requests.unwrap().remaining, Some(0));

    // one millisecond early: still full; on time: admitted
    advance(Duration::from_millis(29_999)).await;
    let (r, _) = send(&sim, chat("early")).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after-ms"], "1");
    advance(Duration::from_millis(1)).await;
    let (r, _) = send(&sim, chat("on time")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let stats = sim.stats();
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.completed, 4);
    assert_eq!(stats.rate_limited_requests, 2);
    assert_eq!(sim.max_in_any_window().0, 3);
}

#[tokio::test(start_paused = true)]
async fn tpm_charges_prompt_plus_max_tokens_at_admission() {
    let sim = SimProvider::builder().rpm(1000).tpm(1_000).build();
    // each request: ~20 prompt tokens + 400 max_tokens
    let (r1, _) = send(&sim, chat_with("a", 400)).await.unwrap();
    let (r2, _) = send(&sim, chat_with("b", 400)).await.unwrap();
    assert_eq!(r1.status(), StatusCode::OK);
    assert_eq!(r2.status(), StatusCode::OK);
    advance(Duration::from_secs(5)).await;
    let (r3, body) = send(&sim, chat_with("c", 400)).await.unwrap();
    assert_eq!(r3.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    let c = classify(Provider::OpenAi, &r3, &body);
    assert_eq!(c.class, Some(ErrorClass::RateLimited));
    // room when the first admission leaves: 55 s from now
    assert_eq!(c.retry_after, Some(Duration::from_secs(55)));
    // a request larger than the whole window: 429 without a wait
    let (r4, body) = send(&sim, chat_with("d", 5_000)).await.unwrap();
    assert_eq!(r4.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r4.headers().get("retry-after").is_none());
    assert!(String::from_utf8_lossy(&body).contains("Request too large"));
    assert_eq!(sim.stats().rate_limited_tokens, 2);
    assert_eq!(sim.max_in_any_window().1, sim.stats().tokens_admitted);

    // too large is reported as such even when the requests window is full too
    let sim = SimProvider::builder().rpm(1).tpm(1_000).build();
    assert_eq!(send(&sim, chat("a")).await.unwrap().0.status(), 200);
    let (r, body) = send(&sim, chat_with("b", 5_000)).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("Request too large"));
    assert_eq!(sim.log()[1].outcome, Verdict::RateLimitedTokens);
}

#[tokio::test(start_paused = true)]
async fn anthropic_429_classifies_with_retry_after_and_limits() {
    let sim = SimProvider::builder()
        .style(Style::Anthropic)
        .rpm(1)
        .wall_clock(wall_start())
        .build();
    let (r, _) = send(&sim, messages("x")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    advance(Duration::from_secs(20)).await;
    let (r, body) = send(&sim, messages("y")).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(r.headers()["retry-after"], "40");
    let c = classify(Provider::Anthropic, &r, &body);
    assert_eq!(c.class, Some(ErrorClass::RateLimited));
    assert_eq!(c.retry_after, Some(Duration::from_secs(40)));
    let requests = c.limits.requests.unwrap();
    assert_eq!(requests.limit, Some(1));
    assert_eq!(requests.remaining, Some(0));
    assert_eq!(requests.reset, Some(Duration::from_secs(40)));
}

#[tokio::test(start_paused = true)]
async fn quota_after_n_requests_classifies_quota_exhausted() {
    for style in [Style::OpenAi, Style::Anthropic] {
        let sim = SimProvider::builder().style(style).quota_after(2).build();
        let (provider, req): (Provider, fn(&str) -> Request<String>) = match style {
            Style::OpenAi => (Provider::OpenAi, chat),
            Style::Anthropic => (Provider::Anthropic, messages),
        };
        for i in 0..2 {
            assert_eq!(send(&sim, req("ok")).await.unwrap().0.status(), 200, "{i}");
        }
        let (r, body) = send(&sim, req("no")).await.unwrap();
        let c = classify(provider, &r, &body);
        assert_eq!(c.class, Some(ErrorClass::QuotaExhausted), "{style:?}");
        assert!(!c.is_retryable());
        assert_eq!(sim.log()[2].outcome, Verdict::QuotaExhausted);
        assert_eq!(sim.stats().quota_exhausted, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn injected_faults_classify_as_their_class() {
    let cases = [
        (Fault::ServerError, 500, ErrorClass::ServerError),
        (Fault::ServiceUnavailable, 503, ErrorClass::Overloaded),
        (Fault::Overloaded, 529, ErrorClass::Overloaded),
        (Fault::InvalidApiKey, 401, ErrorClass::Auth),
    ];
    for style in [Style::OpenAi, Style::Anthropic] {
        let provider = match style {
            Style::OpenAi => Provider::OpenAi,
            Style::Anthropic => Provider::Anthropic,
        };
        for (fault, status, class) in cases {
            let sim = SimProvider::builder()
                .style(style)
                .fault(fault, 1.0)
                .build();
            let (r, body) = send(&sim, chat("x")).await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{style:?} {fault:?}");
            let c = classify(provider, &r, &body);
            assert_eq!(c.class, Some(class), "{style:?} {fault:?}");
            assert_eq!(sim.log()[0].outcome, Verdict::Fault(fault));
            assert_eq!(sim.stats().tokens_admitted, 0, "faults consume no quota");
        }
    }
    let sim = SimProvider::builder()
        .fault(Fault::ConnectionReset, 1.0)
        .build();
    let err = send(&sim, chat("x")).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        Provider::OpenAi.classify_error(&err).class,
        Some(ErrorClass::Connect)
    );
    assert_eq!(sim.log()[0].status, None);
    assert_eq!(sim.stats().resets, 1);
}

#[tokio::test(start_paused = true)]
async fn slow_fault_and_latency_delay_the_answer() {
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(300))
        .fault(Fault::Slow(Duration::from_secs(5)), 1.0)
        .build();
    let start = Instant::now();
    let (r, _) = send(&sim, chat("x")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_millis(5_300));
    assert_eq!(sim.stats().slow, 1);
    assert_eq!(sim.log()[0].outcome, Verdict::Completed);
}

async fn fault_trace(seed: u64) -> Vec<Verdict> {
    let sim = SimProvider::builder()
        .seed(seed)
        .fault(Fault::ServerError, 0.1)
        .fault(Fault::ServiceUnavailable, 0.1)
        .fault(Fault::Overloaded, 0.05)
        .fault(Fault::ConnectionReset, 0.05)
        .build();
    for i in 0..200 {
        let _ = send(&sim, chat(&i.to_string())).await;
    }
    sim.log().into_iter().map(|s| s.outcome).collect()
}

#[tokio::test(start_paused = true)]
async fn seeded_faults_are_reproducible() {
    let a = fault_trace(7).await;
    let b = fault_trace(7).await;
    let c = fault_trace(8).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let faults = a.iter().filter(|o| **o != Verdict::Completed).count();
    // 30 % configured: 60 expected out of 200; allow a wide, seed-fixed margin
    assert!((35..=85).contains(&faults), "{faults}");
    assert!(a.contains(&Verdict::Fault(Fault::ConnectionReset)));
}

#[tokio::test(start_paused = true)]
async fn outage_window_answers_503() {
    let sim = SimProvider::builder()
        .outage(Duration::from_secs(10), Duration::from_secs(20))
        .build();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(&sim, chat("x")).await.unwrap().0.status().as_u16());
        advance(Duration::from_secs(5)).await;
    }
    // t = 0, 5 ok; 10, 15 in the outage
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    let (r, body) = send(&sim, chat("x")).await.unwrap(); // t = 20: over
    assert_eq!(r.status(), 200);
    let _ = body;
    assert_eq!(sim.stats().outage, 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_are_rejected_and_logged() {
    let sim = SimProvider::builder().build();
    let bad_path = Request::post("/v1/embeddings").body(String::new()).unwrap();
    assert_eq!(send(&sim, bad_path).await.unwrap().0.status(), 404);
    let bad_json = Request::post("/v1/chat/completions")
        .body("{not json".to_owned())
        .unwrap();
    let (r, body) = send(&sim, bad_json).await.unwrap();
    assert_eq!(r.status(), 400);
    let c = classify(Provider::OpenAi, &r, &body);
    assert_eq!(c.class, Some(ErrorClass::InvalidRequest));
    let get = Request::get("/v1/chat/completions")
        .body(String::new())
        .unwrap();
    assert_eq!(send(&sim, get).await.unwrap().0.status(), 405);
    assert_eq!(sim.stats().invalid, 3);
    assert_eq!(sim.log().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn accepts_full_bytes_bodies() {
    let sim = SimProvider::builder().build();
    let body = r#"{"messages":[{"role":"user","content":"Text: the best"}]}"#;
    let req = Request::post("/chat/completions")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let r = sim.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.log()[0].label, Some("positive"));
}

#[tokio::test]
async fn loopback_http_end_to_end() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let sim = SimProvider::builder()
        .rpm(2)
        .fault(Fault::ConnectionReset, 0.0)
        .build();
    let server = sim.serve().await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let texts = ["I love it", "awful and broken", "a chair", "one too many"];
    let mut statuses = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": format!("Text: {text}")}]
        });
        let req = Request::post(format!("{}/chat/completions", server.base_url()))
            .header("content-type", "application/json")
            .header("x-request-id", format!("item-{i}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        statuses.push(status.as_u16());
        if status == StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], label(text));
            assert!(headers.contains_key("x-ratelimit-remaining-requests"));
            assert!(headers.contains_key("date"));
        } else {
            let c = Provider::OpenAi.classify(status, &headers, Some(&body));
            assert_eq!(c.class, Some(ErrorClass::RateLimited));
            assert!(c.retry_after.unwrap() > Duration::from_secs(59));
        }
    }
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    let log = sim.log();
    assert_eq!(log.len(), 4, "each request logged once");
    for (i, s) in log.iter().enumerate() {
        assert_eq!(s.seq, i as u64);
        assert_eq!(
            s.client_request_id.as_deref(),
            Some(format!("item-{i}").as_str())
        );
    }
    assert_eq!(log[0].label, Some("positive"));
    assert_eq!(log[1].label, Some("negative"));
    server.shutdown().await;
}

#[tokio::test]
async fn loopback_connection_reset_drops_the_connection() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let sim = SimProvider::builder()
        .fault(Fault::ConnectionReset, 1.0)
        .build();
    let server = sim.serve().await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{}/chat/completions", server.base_url()))
        .body(Full::new(Bytes::from(r#"{"messages":[]}"#)))
        .unwrap();
    let err = client.request(req).await.unwrap_err();
    let c = Provider::OpenAi.classify_error(&err);
    assert!(
        matches!(c.class, Some(ErrorClass::Connect)),
        "{err:?} -> {c:?}"
    );
    assert_eq!(sim.stats().resets, 1);
    assert_eq!(sim.log().len(), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batched_prompt_gets_a_json_array_of_labels() {
    let sim = SimProvider::builder().build();
    let prompt = "Classify each text as positive, negative or neutral. Answer with a JSON array of labels, in order.\n1. I love it\n2. awful, broken\n3. a chair";
    let body = serde_json::json!({"messages": [{"role": "user", "content": prompt}]});
    let req = Request::post("/v1/chat/completions")
        .body(body.to_string())
        .unwrap();
    let (r, body) = send(&sim, req).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let labels: Vec<String> = serde_json::from_str(content).unwrap();
    assert_eq!(labels, vec!["positive", "negative", "neutral"]);
    assert_eq!(sim.log()[0].labels, vec!["positive", "negative", "neutral"]);
    assert_eq!(
        v["usage"]["completion_tokens"],
        (content.len() as u64).div_ceil(4).min(16)
    );
}
