//! The simulated provider's streams: each shape's exact events, the usage
//! they report against what the provider charged, the stream faults, the
//! timing of the events on tokio's clock, and the same over loopback HTTP.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready, task};
use tower::ServiceExt;
use tower_llm_resilience::classify::{parse_error_body, ErrorClass};
use tower_llm_resilience::sim::{
    count_tokens, Fault, SimBody, SimProvider, StreamEnd, Streamed, Style, Verdict,
};

/// A stream's record: (events planned, events sent, end).
fn progress(stream: Option<Streamed>) -> (u32, u32, Option<StreamEnd>) {
    let s = stream.expect("a streamed answer");
    (s.events_planned, s.events_sent, s.end)
}

const SYSTEM: &str = "Answer positive, negative or neutral.";

fn wall_start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A chat completion for `text`; `stream` is `None` (not streamed),
/// `Some(false)` (streamed, no usage asked) or `Some(true)` (streamed with
/// `stream_options.include_usage`).
fn chat(text: &str, stream: Option<bool>) -> Request<String> {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": format!("Text: {text}")}
        ]
    });
    if let Some(usage) = stream {
        body["stream"] = true.into();
        if usage {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
    }
    Request::post("/v1/chat/completions")
        .body(body.to_string())
        .unwrap()
}

fn messages(text: &str, stream: bool) -> Request<String> {
    let mut body = serde_json::json!({
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 16,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": format!("Text: {text}")}]
    });
    if stream {
        body["stream"] = true.into();
    }
    Request::post("/v1/messages")
        .body(body.to_string())
        .unwrap()
}

fn prompt_tokens(text: &str) -> u64 {
    count_tokens(SYSTEM.len() + "Text: ".len() + text.len())
}

/// What a body sent: its frames with the time each arrived (after the
/// call), and the error it ended with, if any.
struct Received {
    frames: Vec<(Duration, Bytes)>,
    error: Option<io::Error>,
}

impl Received {
    fn events(&self) -> Vec<String> {
        self.frames
            .iter()
            .map(|(_, f)| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    fn times_ms(&self) -> Vec<u128> {
        self.frames.iter().map(|(t, _)| t.as_millis()).collect()
    }
}

async fn call(sim: &SimProvider, request: Request<String>) -> (Response<()>, Received) {
    let start = Instant::now();
    let response = sim.clone().oneshot(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut received = Received {
        frames: Vec::new(),
        error: None,
    };
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received
                .frames
                .push((start.elapsed(), frame.into_data().unwrap())),
            Err(e) => {
                received.error = Some(e);
                break;
            }
        }
    }
    assert!(
        http_body::Body::is_end_stream(&body),
        "over after its last frame"
    );
    (Response::from_parts(parts, ()), received)
}

/// The data of an SSE event, parsed.
fn data(event: &str) -> serde_json::Value {
    let line = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    serde_json::from_str(line).unwrap()
}

fn chunk(delta: &str, finish: &str, usage: bool) -> String {
    let usage = if usage { r#","usage":null"# } else { "" };
    format!(
        "data: {{\"id\":\"chatcmpl-sim0\",\"object\":\"chat.completion.chunk\",\"created\":1800000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage}}}\n\n"
    )
}

#[tokio::test(start_paused = true)]
async fn openai_stream_has_the_exact_chunks_and_the_usage_charged() {
    let text = "I love it, great value";
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(400))
        .wall_clock(wall_start())
        .build();
    let (r, got) = call(&sim, chat(text, Some(true))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "499");
    let p = prompt_tokens(text);
    let usage = format!(
        "data: {{\"id\":\"chatcmpl-sim0\",\"object\":\"chat.completion.chunk\",\"created\":1800000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":2,\"total_tokens\":{}}}}}\n\n",
        p + 2
    );
    assert_eq!(
        got.events(),
        [
            chunk(r#"{"role":"assistant","content":""}"#, "null", true),
            chunk(r#"{"content":"posi"}"#, "null", true),
            chunk(r#"{"content":"tive"}"#, "null", true),
            chunk("{}", r#""stop""#, true),
            usage,
            "data: [DONE]\n\n".to_owned(),
        ]
    );
    assert!(got.error.is_none());
    // the head at once, the first token at half the latency, the last
    // event at the latency
    assert_eq!(got.times_ms(), [0, 200, 300, 400, 400, 400]);

    // the usage is what the provider logged, and what the same request
    // gets as a whole body
    let served = &sim.log()[0];
    assert_eq!(served.outcome, Verdict::Completed);
    assert_eq!(served.label, Some("positive"));
    assert_eq!(served.charged_tokens, p + 16);
    assert_eq!(progress(served.stream), (6, 6, Some(StreamEnd::Done)));
    let reported = &data(&got.events()[4])["usage"];
    assert_eq!(reported["prompt_tokens"], served.prompt_tokens);
    assert_eq!(reported["completion_tokens"], served.completion_tokens);
    let (_, whole) = call(&sim, chat(text, None)).await;
    let whole: serde_json::Value = serde_json::from_slice(&whole.frames[0].1).unwrap();
    assert_eq!(&whole["usage"], reported);
    assert_eq!(sim.log()[1].stream, None);
    let stats = sim.stats();
    assert_eq!((stats.streams, stats.completed), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn openai_stream_without_include_usage_has_no_usage_at_all() {
    let sim = SimProvider::builder().wall_clock(wall_start()).build();
    let (_, got) = call(&sim, chat("a chair", Some(false))).await;
    assert_eq!(
        got.events(),
        [
            chunk(r#"{"role":"assistant","content":""}"#, "null", false),
            chunk(r#"{"content":"neut"}"#, "null", false),
            chunk(r#"{"content":"ral"}"#, "null", false),
            chunk("{}", r#""stop""#, false),
            "data: [DONE]\n\n".to_owned(),
        ]
    );
    // zero latency: every event at once
    assert!(got.times_ms().iter().all(|&t| t == 0));
}

#[tokio::test(start_paused = true)]
async fn anthropic_stream_has_the_exact_events_and_the_usage_charged() {
    let text = "Terrible, it arrived broken";
    let sim = SimProvider::builder()
        .style(Style::Anthropic)
        .latency(Duration::from_millis(400))
        .build();
    let (r, got) = call(&sim, messages(text, true)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(r.headers()["anthropic-ratelimit-requests-remaining"], "499");
    let p = prompt_tokens(text);
    let delta = |t: &str| {
        format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}\n\n")
    };
    assert_eq!(
        got.events(),
        [
            format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_sim0\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-5-haiku-latest\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{p},\"output_tokens\":1}}}}}}\n\n"),
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n".to_owned(),
            delta("nega"),
            delta("tive"),
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned(),
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n".to_owned(),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
        ]
    );
    assert_eq!(got.times_ms(), [0, 0, 0, 200, 300, 400, 400, 400]);
    let served = &sim.log()[0];
    assert_eq!(served.label, Some("negative"));
    assert_eq!(progress(served.stream), (8, 8, Some(StreamEnd::Done)));
    let input = &data(&got.events()[0])["message"]["usage"]["input_tokens"];
    let output = &data(&got.events()[6])["usage"]["output_tokens"];
    assert_eq!(*input, served.prompt_tokens);
    assert_eq!(*output, served.completion_tokens);
    let (_, whole) = call(&sim, messages(text, false)).await;
    let whole: serde_json::Value = serde_json::from_slice(&whole.frames[0].1).unwrap();
    assert_eq!(whole["usage"]["input_tokens"], *input);
    assert_eq!(whole["usage"]["output_tokens"], *output);
}

#[tokio::test(start_paused = true)]
async fn the_first_event_arrives_before_the_last_is_produced() {
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(400))
        .build();
    let start = Instant::now();
    let response = sim
        .clone()
        .oneshot(chat("I love it", Some(true)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "the head comes at once");
    let mut body = response.into_body();
    assert!(body.is_stream());
    {
        let mut first = task::spawn(body.frame());
        let frame = assert_ready!(first.poll()).unwrap().unwrap();
        assert!(frame.into_data().unwrap().starts_with(b"data: {"));
    }
    assert_eq!(progress(sim.log()[0].stream), (6, 1, None));
    {
        let mut second = task::spawn(body.frame());
        assert_pending!(second.poll());
        advance(Duration::from_millis(199)).await;
        assert_pending!(second.poll());
        assert_eq!(progress(sim.log()[0].stream), (6, 1, None));
        advance(Duration::from_millis(1)).await;
        assert!(second.is_woken());
        assert_ready!(second.poll()).unwrap().unwrap();
    }
    assert_eq!(progress(sim.log()[0].stream), (6, 2, None));
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    assert_eq!(progress(sim.log()[0].stream), (6, 6, Some(StreamEnd::Done)));
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_midway_is_logged_as_dropped() {
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(400))
        .build();
    let response = sim.clone().oneshot(chat("x", Some(true))).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(
        progress(sim.log()[0].stream),
        (6, 1, Some(StreamEnd::Dropped))
    );
}

/// A sim of `style` with `fault` on every request; the request for the
/// style's endpoint.
fn faulty(style: Style, fault: Fault) -> (SimProvider, Request<String>) {
    let sim = SimProvider::builder()
        .style(style)
        .latency(Duration::from_millis(400))
        .fault(fault, 1.0)
        .build();
    let request = match style {
        Style::OpenAi => chat("I love it", Some(true)),
        Style::Anthropic => messages("I love it", true),
    };
    (sim, request)
}

/// The events before a stream fault strikes: the head and the first
/// content delta.
fn before_strike(style: Style) -> usize {
    match style {
        Style::OpenAi => 2,
        Style::Anthropic => 4,
    }
}

#[tokio::test(start_paused = true)]
async fn mid_stream_error_sends_the_error_event_after_the_first_delta_and_ends() {
    for style in [Style::OpenAi, Style::Anthropic] {
        let (sim, request) = faulty(style, Fault::MidStreamError);
        let (r, got) = call(&sim, request).await;
        assert_eq!(r.status(), StatusCode::OK, "{style:?}");
        let events = got.events();
        let n = before_strike(style);
        assert_eq!(events.len(), n + 1, "{style:?}: {events:?}");
        assert!(got.error.is_none());
        let error = &events[n];
        match style {
            Style::OpenAi => {
                assert_eq!(error, "data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
            }
            Style::Anthropic => {
                assert_eq!(error, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
            }
        }
        let class = parse_error_body(data(error).to_string().as_bytes()).class;
        let expected = match style {
            Style::OpenAi => ErrorClass::ServerError,
            Style::Anthropic => ErrorClass::Overloaded,
        };
        assert_eq!(class, Some(expected), "{style:?}");
        // the error comes when the second delta was due
        assert_eq!(*got.times_ms().last().unwrap(), 300);
        assert!(!events.concat().contains("[DONE]") && !events.concat().contains("message_stop"));
        let served = &sim.log()[0];
        assert_eq!(served.outcome, Verdict::Fault(Fault::MidStreamError));
        assert_eq!(served.label, None);
        assert!(served.charged_tokens > 0, "admitted and charged");
        let planned = n as u32 + 1;
        assert_eq!(
            progress(served.stream),
            (planned, planned, Some(StreamEnd::ErrorEvent))
        );
        let stats = sim.stats();
        assert_eq!(stats.mid_stream_errors, 1);
        assert_eq!(stats.failed_streams(), 1);
        assert_eq!(stats.completed, 0);
        assert_eq!(stats.tokens_admitted, served.charged_tokens);
    }
}

#[tokio::test(start_paused = true)]
async fn truncate_cuts_the_body_mid_event_with_an_error() {
    for style in [Style::OpenAi, Style::Anthropic] {
        let (sim, request) = faulty(style, Fault::Truncate);
        let (r, got) = call(&sim, request).await;
        assert_eq!(r.status(), StatusCode::OK);
        let events = got.events();
        let n = before_strike(style);
        assert_eq!(events.len(), n + 1, "{style:?}: {events:?}");
        let cut = &events[n];
        assert!(!cut.ends_with("\n\n"), "half an event: {cut:?}");
        let whole_next = match style {
            Style::OpenAi => "data: {\"id\":\"chatcmpl-sim0\"",
            Style::Anthropic => "event: content_block_delta\n",
        };
        assert!(
            cut.starts_with(whole_next) || whole_next.starts_with(cut.as_str()),
            "{cut:?}"
        );
        let error = got.error.expect("the body ends with an error");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let served = &sim.log()[0];
        assert_eq!(served.outcome, Verdict::Fault(Fault::Truncate));
        let planned = n as u32 + 1;
        assert_eq!(
            progress(served.stream),
            (planned, planned, Some(StreamEnd::Truncated))
        );
        assert_eq!(sim.stats().truncated, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn overloaded_first_event_is_a_200_whose_only_event_is_the_error() {
    for style in [Style::OpenAi, Style::Anthropic] {
        let (sim, request) = faulty(style, Fault::OverloadedFirstEvent);
        let (r, got) = call(&sim, request).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        let events = got.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(got.times_ms(), [0]);
        match style {
            Style::OpenAi => assert!(events[0].starts_with("data: {\"error\":")),
            Style::Anthropic => assert!(events[0].starts_with("event: error\n")),
        }
        let parsed = parse_error_body(data(&events[0]).to_string().as_bytes());
        assert_eq!(parsed.class, Some(ErrorClass::Overloaded), "{style:?}");
        let served = &sim.log()[0];
        assert_eq!(served.outcome, Verdict::Fault(Fault::OverloadedFirstEvent));
        assert_eq!(progress(served.stream), (1, 1, Some(StreamEnd::ErrorEvent)));
        assert_eq!(sim.stats().overloaded_first_events, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stall_stops_the_stream_for_its_length_then_it_goes_on() {
    let hour = Duration::from_secs(3600);
    for style in [Style::OpenAi, Style::Anthropic] {
        let (sim, request) = faulty(style, Fault::Stall(hour));
        let response = sim.clone().oneshot(request).await.unwrap();
        let mut body = response.into_body();
        let n = before_strike(style);
        let start = Instant::now();
        for _ in 0..n {
            body.frame().await.unwrap().unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        // nothing for an hour: an idle timeout's case
        {
            let mut next = task::spawn(body.frame());
            assert_pending!(next.poll());
            advance(hour).await;
            assert_pending!(next.poll());
            advance(Duration::from_millis(100)).await;
            assert_ready!(next.poll()).unwrap().unwrap();
        }
        let rest = body.collect().await.unwrap().to_bytes();
        let end: &[u8] = match style {
            Style::OpenAi => b"data: [DONE]\n\n",
            Style::Anthropic => b"data: {\"type\":\"message_stop\"}\n\n",
        };
        assert!(rest.ends_with(end));
        assert_eq!(start.elapsed(), hour + Duration::from_millis(400));
        let served = &sim.log()[0];
        assert_eq!(served.outcome, Verdict::Completed, "a stall only delays");
        assert_eq!(progress(served.stream).2, Some(StreamEnd::Done));
        let stats = sim.stats();
        assert_eq!(
            (stats.stalls, stats.completed, stats.failed_streams()),
            (1, 1, 0)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn slow_fault_spreads_a_stream_over_the_longer_latency() {
    let sim = SimProvider::builder()
        .latency(Duration::from_millis(400))
        .fault(Fault::Slow(Duration::from_millis(600)), 1.0)
        .build();
    let (_, got) = call(&sim, chat("I love it", Some(true))).await;
    assert_eq!(got.times_ms(), [0, 500, 750, 1000, 1000, 1000]);
    assert_eq!(sim.stats().slow, 1);
}

/// The log of 300 requests, not streamed, through a sim with the given
/// extra faults after a fixed mix.
async fn unstreamed_run(extra: &[Fault]) -> Vec<(Verdict, Option<&'static str>, u64)> {
    let mut builder = SimProvider::builder()
        .seed(11)
        .rpm(100)
        .fault(Fault::ServerError, 0.05)
        .fault(Fault::Slow(Duration::from_secs(1)), 0.05);
    for &f in extra {
        builder = builder.fault(f, 0.1);
    }
    let sim = builder.build();
    for i in 0..300 {
        let _ = call(&sim, chat(&format!("item {i} good"), None)).await;
        advance(Duration::from_millis(300)).await;
    }
    let stats = sim.stats();
    assert_eq!(stats.streams + stats.stalls + stats.failed_streams(), 0);
    sim.log()
        .into_iter()
        .map(|s| {
            assert_eq!(s.stream, None);
            (s.outcome, s.label, s.charged_tokens)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn stream_faults_leave_requests_that_do_not_stream_as_they_were() {
    let plain = unstreamed_run(&[]).await;
    let with_stream_faults = unstreamed_run(&[
        Fault::MidStreamError,
        Fault::Stall(Duration::from_secs(5)),
        Fault::Truncate,
        Fault::OverloadedFirstEvent,
    ])
    .await;
    assert_eq!(plain, with_stream_faults);
    assert!(plain
        .iter()
        .any(|(v, ..)| *v == Verdict::Fault(Fault::ServerError)));
    assert!(Fault::Truncate.is_stream_fault() && !Fault::Slow(Duration::ZERO).is_stream_fault());
}

#[tokio::test(start_paused = true)]
async fn a_streamed_request_over_the_limit_gets_a_json_429() {
    let sim = SimProvider::builder().rpm(1).build();
    let (r, _) = call(&sim, chat("a", Some(true))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (r, got) = call(&sim, chat("b", Some(true))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&got.frames[0].1).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(sim.log()[1].stream, None);
    assert_eq!(sim.stats().streams, 1);
}

#[tokio::test(start_paused = true)]
async fn a_whole_body_reports_its_size_and_is_not_a_stream() {
    let sim = SimProvider::builder().build();
    let response = sim.clone().oneshot(chat("a", None)).await.unwrap();
    let body: SimBody = response.into_body();
    assert!(!body.is_stream());
    let size = http_body::Body::size_hint(&body).exact().unwrap();
    assert_eq!(body.collect().await.unwrap().to_bytes().len() as u64, size);
}

// Over loopback HTTP: real time, and no test that waits on it: what is
// checked does not depend on how fast the machine is.

async fn loopback_stream(
    sim: &SimProvider,
) -> (
    tower_llm_resilience::sim::SimServer,
    Response<hyper::body::Incoming>,
) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let server = sim.serve().await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (_, body) = chat("I love it", Some(true)).into_parts();
    let request = Request::post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    (server, response)
}

#[tokio::test]
async fn over_loopback_a_stream_is_sent_event_by_event() {
    // a stall of an hour after the first delta: what the client has when
    // it holds the first two events was sent without the rest
    let sim = SimProvider::builder()
        .fault(Fault::Stall(Duration::from_secs(3600)), 1.0)
        .build();
    let (server, response) = loopback_stream(&sim).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(response.headers().get("content-length").is_none());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while text.windows(2).filter(|w| w == b"\n\n").count() < 2 {
        let frame = body.frame().await.unwrap().unwrap();
        text.extend_from_slice(&frame.into_data().unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(r#""delta":{"content":"posi"}"#), "{text}");
    assert!(!text.contains("tive"));
    assert_eq!(progress(sim.log()[0].stream), (6, 2, None));
    drop(body);
    server.shutdown().await;
}

#[tokio::test]
async fn over_loopback_a_whole_stream_arrives_and_truncate_cuts_the_connection() {
    let sim = SimProvider::builder().build();
    let (server, response) = loopback_stream(&sim).await;
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(text.starts_with(b"data: {\"id\":\"chatcmpl-sim0\""));
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(progress(sim.log()[0].stream), (6, 6, Some(StreamEnd::Done)));
    server.shutdown().await;

    let sim = SimProvider::builder().fault(Fault::Truncate, 1.0).build();
    let (server, response) = loopback_stream(&sim).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => text.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly: {}", String::from_utf8_lossy(&text)),
        }
    };
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains(r#""content":"posi""#), "{text}");
    assert!(
        !text.ends_with("\n\n") && !text.contains("[DONE]"),
        "{text}"
    );
    // hyper's client: the chunked body ended before its last chunk
    let cause = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    assert_eq!(cause, Some(io::ErrorKind::UnexpectedEof), "{error:?}");
    assert_eq!(
        progress(sim.log()[0].stream),
        (3, 3, Some(StreamEnd::Truncated))
    );
    server.shutdown().await;
}
