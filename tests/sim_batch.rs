//! The batch driver against the simulated provider: every input answered
//! once, in order, and the provider's log agrees.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_llm_resilience::batch::{Batch, Patience};
use tower_llm_resilience::sim::{label, Fault, SimProvider, Verdict};

const WORDS: &[&str] = &[
    "love", "awful", "chair", "great", "broken", "table", "best", "rude",
];

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{} {} item {i}", WORDS[i % 8], WORDS[(i * 3 + 1) % 8]))
        .collect()
}

fn request(i: usize, text: &str, base: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": format!("Classify.\nText: {text}")}]
    });
    Request::post(format!("{base}/chat/completions"))
        .header("x-request-id", i.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn content(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn batch_through_the_sim_in_process_answers_each_input_once() {
    let sim = SimProvider::builder()
        .rpm(1_000)
        .seed(3)
        .fault(Fault::ServerError, 0.05)
        .fault(Fault::ConnectionReset, 0.03)
        .latency(Duration::from_millis(200))
        .build();
    let texts = texts(300);
    let provider = sim.clone();
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let provider = provider.clone();
        async move {
            let r = provider.oneshot(req).await?;
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, std::io::Error>((status, body))
        }
    });
    let requests: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| request(i, t, "/v1"))
        .collect();
    let results = Batch::new(svc)
        .concurrency(8)
        .patience(Patience::fail_fast())
        .run(requests)
        .await;
    assert_eq!(results.len(), 300);

    let log = sim.log();
    assert_eq!(
        log.len(),
        300,
        "fail fast: the provider saw each request once"
    );
    let by_id: HashMap<usize, _> = log
        .iter()
        .map(|s| (s.client_request_id.as_deref().unwrap().parse().unwrap(), s))
        .collect();
    assert_eq!(by_id.len(), 300, "no request id twice");
    let (mut ok, mut failed) = (0, 0);
    for (i, result) in results.iter().enumerate() {
        let served = by_id[&i];
        match result {
            Ok((status, body)) if status.is_success() => {
                ok += 1;
                assert_eq!(served.outcome, Verdict::Completed);
                assert_eq!(content(body), label(&texts[i]));
                assert_eq!(served.label, Some(label(&texts[i])));
            }
            Ok((status, _)) => {
                failed += 1;
                assert_eq!(status.as_u16(), 500);
                assert_eq!(served.outcome, Verdict::Fault(Fault::ServerError));
            }
            Err(e) => {
                failed += 1;
                assert!(e.is_transport(), "{e:?}");
                assert_eq!(served.outcome, Verdict::Fault(Fault::ConnectionReset));
            }
        }
    }
    let stats = sim.stats();
    assert_eq!(ok, stats.completed);
    assert_eq!(failed, stats.server_errors + stats.resets);
    assert!(failed > 0);
}

#[tokio::test(start_paused = true)]
async fn patient_batch_sends_reset_inputs_again_until_each_is_answered() {
    let sim = SimProvider::builder()
        .rpm(1_000)
        .seed(3)
        .fault(Fault::ConnectionReset, 0.2)
        .latency(Duration::from_millis(200))
        .build();
    let texts = texts(300);
    let provider = sim.clone();
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let provider = provider.clone();
        async move {
            let r = provider.oneshot(req).await?;
            let body = r.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, std::io::Error>(body)
        }
    });
    let requests: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| request(i, t, "/v1"))
        .collect();
    let mut stream = Batch::new(svc).concurrency(8).stream(requests);
    let mut results = Vec::new();
    while let Some(r) = stream.next().await {
        results.push(r);
    }
    let progress = stream.progress();
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(content(r.as_ref().unwrap()), label(&texts[i]), "item {i}");
    }
    let stats = sim.stats();
    assert!(stats.resets > 30, "{stats:?}");
    assert_eq!(stats.completed, 300, "each input completed exactly once");
    assert_eq!(stats.requests, 300 + stats.resets);
    assert_eq!(progress.resent, stats.resets);
    assert_eq!(
        (progress.succeeded, progress.failed, progress.held),
        (300, 0, 0)
    );
}

#[tokio::test]
async fn batch_over_loopback_http_answers_each_input_once_in_order() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let sim = SimProvider::builder().rpm(10_000).build();
    let server = sim.serve().await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let texts = texts(100);
    let requests: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| request(i, t, &server.base_url()))
        .collect();
    let svc = tower::service_fn(move |req| {
        let client = client.clone();
        async move {
            let r = client.request(req).await?;
            let body = r.into_body().collect().await?.to_bytes();
            Ok::<_, tower_llm_resilience::BoxError>(body)
        }
    });
    let results = Batch::new(svc).concurrency(10).run(requests).await;
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(content(r.as_ref().unwrap()), label(&texts[i]), "item {i}");
    }
    let log = sim.log();
    assert_eq!(log.len(), 100);
    let mut ids: Vec<usize> = log
        .iter()
        .map(|s| s.client_request_id.as_deref().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    server.shutdown().await;
}
