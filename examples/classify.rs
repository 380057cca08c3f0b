//! The main job: classify texts as positive / negative / neutral through the
//! whole stack (circuit breaker, retry, rate limit, classify) over HTTP.
//!
//! ```sh
//! cargo run --release --example classify
//! ```
//!
//! With no `--base-url`, it starts the simulated provider on loopback (real
//! sliding-window limits over a 2 s window, a realistic fault mix) and
//! classifies the bundled sample of 300 texts. With `--base-url`, the same
//! program runs against any OpenAI-compatible server; the API key comes from
//! `OPENAI_API_KEY` and is never printed. With `--stream`, every request
//! asks for a streamed answer (server-sent events, with the usage chunk)
//! and the label is read from the stream as it arrives; a stream that
//! fails midway (an error event, a cut connection) is sent again.
//!
//! Output: one JSON object per input line, in input order, to `--out`, or to
//! stdout when it is not a terminal (else to `classify-results.jsonl`). A
//! summary goes to stderr. Exit status: 0 when every item has a label, 1
//! when some failed, 2 on bad arguments or unreadable input.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use clap::Parser;
use futures::StreamExt;
use http::{header, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::batch::{Batch, Patience, Progress};
use tower_llm_resilience::classify::parse_error_body;
use tower_llm_resilience::config::LlmConfig;
use tower_llm_resilience::key::SingleKey;
use tower_llm_resilience::rate_limit::{Limits, Store, TokenEstimate};
use tower_llm_resilience::sim::{Fault, SimProvider, SimServer, SimStats};
use tower_llm_resilience::{BoxError, Classification, ErrorClass, LlmLayer, Provider};

const SAMPLE: &str = include_str!("data/reviews.txt");

/// Classify texts as positive / negative / neutral through the whole
/// tower-llm-resilience stack.
#[derive(Debug, Parser)]
#[command(about)]
pub(crate) struct Args {
    /// e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1; without
    /// it, the embedded simulated provider is used.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// One text per line (default: the bundled sample of 300 texts).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// JSONL output (default: stdout when not a terminal, else
    /// classify-results.jsonl).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The model to ask.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Requests per window (default: 500, or 40 for the simulated provider).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rpm: Option<u64>,
    /// Tokens per window (default: 200000, or 1500 for the simulated
    /// provider).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tpm: Option<u64>,
    /// Window length in seconds (default: 60, or 2 for the simulated
    /// provider).
    #[arg(long, value_name = "S")]
    window_secs: Option<f64>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Texts per request; with K > 1 the prompt asks for a JSON array of
    /// labels and the program splits it.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    batch_size: u64,
    /// Give up what is left once the provider has been failing for this
    /// many seconds with no success (the batch's patience; default 600).
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    give_up_after: f64,
    /// Simulated provider only: answer 503 to every request for this many
    /// seconds (an outage), starting `--outage-at` seconds into the run.
    #[arg(long, value_name = "S")]
    outage: Option<f64>,
    /// When the simulated outage starts, in seconds after the start.
    #[arg(long, value_name = "S", default_value_t = 1.0, requires = "outage")]
    outage_at: f64,
    /// Share the quota with other workers through Redis (e.g.
    /// redis://127.0.0.1:6379/); needs `--features redis`.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Ask for streamed answers (server-sent events, with
    /// `stream_options.include_usage`) and read each label from its stream.
    #[arg(long)]
    stream: bool,
    /// The stack's settings from a TOML file (the crate's `config` module:
    /// provider, limits, retry, breaker, timeouts). `TLR__SECTION__FIELD`
    /// environment variables override it (`TLR__LIMITS__RPM=600`), with or
    /// without a file; the flags above override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The settings of `--config` with the environment's overrides, and the
/// file's limits as defaults for `--rpm`, `--tpm` and `--window-secs`.
pub(crate) fn load_config(args: &mut Args) -> Result<LlmConfig, String> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => String::new(),
    };
    let config = LlmConfig::from_toml_with_env(&text, "TLR", std::env::vars()).map_err(|e| {
        let file = args.config.as_deref().unwrap_or("the environment".as_ref());
        format!("{}: {e}", file.display())
    })?;
    args.rpm = args.rpm.or(config.limits.rpm);
    args.tpm = args.tpm.or(config.limits.tpm);
    args.window_secs = args
        .window_secs
        .or(config.limits.window.map(|w| w.as_secs_f64()));
    Ok(config)
}

/// The stack: the config's settings, and its limits with the run's own
/// requests and tokens per window (the flags', or the simulated
/// provider's).
pub(crate) fn stack(config: &LlmConfig, setup: &Setup) -> LlmLayer<SingleKey, Provider> {
    config
        .apply(LlmLayer::new(config.provider.unwrap_or(Provider::Auto)))
        .limits(stack_limits(config, setup))
}

/// The config's limits, with the run's requests and tokens per window.
fn stack_limits(config: &LlmConfig, setup: &Setup) -> Limits {
    let mut limits = config.limits.clone();
    limits.rpm = Some(setup.rpm);
    limits.tpm = Some(setup.tpm);
    limits.window = Some(setup.window);
    limits.to_limits()
}

const SYSTEM: &str = "You label the sentiment of short texts. Answer with exactly one word: positive, negative or neutral.";
const SYSTEM_BATCH: &str = "You label the sentiment of short texts. Answer with a JSON array of strings, one label per numbered text, in order, each exactly positive, negative or neutral, and nothing else.";

/// The chat completion for a group of texts, and what it will cost in
/// tokens (characters / 4 of the messages plus `max_tokens`).
fn chat_request(
    setup: &Setup,
    model: &str,
    texts: &[&str],
    index: usize,
    stream: bool,
) -> (Request<String>, u64) {
    let (system, user) = if texts.len() == 1 {
        (SYSTEM, format!("Text: {}", texts[0]))
    } else {
        let numbered: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{}. {t}", i + 1))
            .collect();
        let ask = "Label each text; answer with a JSON array of labels.";
        (SYSTEM_BATCH, format!("{ask}\n{}", numbered.join("\n")))
    };
    let max_tokens = 4 + 6 * texts.len() as u64;
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let chars = system.chars().count() + user.chars().count();
    let tokens = (chars as u64).div_ceil(4) + max_tokens;
    let mut request = Request::post(format!(
        "{}/chat/completions",
        setup.base_url.trim_end_matches('/')
    ))
    .header(header::CONTENT_TYPE, "application/json")
    .header(header::AUTHORIZATION, format!("Bearer {}", setup.api_key))
    .header("x-request-id", index.to_string())
    .body(body.to_string())
    .expect("a valid request");
    request
        .extensions_mut()
        .insert(TokenEstimate::total(tokens));
    (request, tokens)
}

/// The answer's text in a chat completion.
fn content_of(body: &[u8]) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the response is not JSON: {e}"))?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the response has no choices[0].message.content".to_owned())
}

/// The labels in an answer's text, one per text.
fn labels(content: &str, count: usize) -> Result<Vec<String>, String> {
    let content = content.trim();
    if count == 1 {
        let word = content
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        return Ok(vec![word]);
    }
    let (start, end) = content
        .find('[')
        .zip(content.rfind(']'))
        .ok_or("the answer holds no JSON array")?;
    let array: Vec<String> =
        serde_json::from_str(&content[start..=end]).map_err(|e| format!("bad label array: {e}"))?;
    if array.len() != count {
        return Err(format!("expected {count} labels, got {}", array.len()));
    }
    Ok(array.into_iter().map(|s| s.trim().to_lowercase()).collect())
}

/// Counts what goes over the wire: requests sent, 429s received, and
/// streams that failed after their 200.
#[derive(Default)]
pub(crate) struct Wire {
    pub(crate) sent: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) stream_failures: AtomicU64,
}

pub(crate) struct Setup {
    base_url: String,
    api_key: String,
    window: Duration,
    rpm: u64,
    tpm: u64,
    pub(crate) sim: Option<SimProvider>,
    server: Option<SimServer>,
}

/// The simulated provider (real sliding-window limits, a realistic fault
/// mix), not yet served. The stream faults touch streamed requests only,
/// so a run without `--stream` meets exactly the faults it met before.
pub(crate) fn simulated(args: &Args) -> Setup {
    let window = Duration::from_secs_f64(args.window_secs.unwrap_or(2.0));
    let (rpm, tpm) = (args.rpm.unwrap_or(40), args.tpm.unwrap_or(1_500));
    let mut sim = SimProvider::builder()
        .rpm(rpm)
        .tpm(tpm)
        .window(window)
        .seed(2026)
        .latency(Duration::from_millis(150))
        .fault(Fault::ServerError, 0.02)
        .fault(Fault::ServiceUnavailable, 0.01)
        .fault(Fault::ConnectionReset, 0.01)
        .fault(Fault::Slow(Duration::from_secs(1)), 0.01)
        .fault(Fault::MidStreamError, 0.01)
        .fault(Fault::Truncate, 0.01);
    if let Some(length) = args.outage {
        let start = Duration::from_secs_f64(args.outage_at);
        sim = sim.outage(start, start + Duration::from_secs_f64(length));
    }
    Setup {
        // in process, only the path matters; `setup` puts the server's here
        base_url: "http://sim.invalid/v1".to_owned(),
        api_key: "sk-simulated".to_string(),
        window,
        rpm,
        tpm,
        sim: Some(sim.build()),
        server: None,
    }
}

async fn setup(args: &Args) -> io::Result<Setup> {
    match &args.base_url {
        Some(url) => Ok(Setup {
            base_url: url.clone(),
            api_key: std::env::var("OPENAI_API_KEY").unwrap_or_default(),
            window: Duration::from_secs_f64(args.window_secs.unwrap_or(60.0)),
            rpm: args.rpm.unwrap_or(500),
            tpm: args.tpm.unwrap_or(200_000),
            sim: None,
            server: None,
        }),
        None => {
            let mut setup = simulated(args);
            if let Some(sim) = &setup.sim {
                let server = sim.serve().await?;
                setup.base_url = server.base_url();
                setup.server = Some(server);
            }
            Ok(setup)
        }
    }
}

pub(crate) fn read_texts(args: &Args) -> io::Result<Vec<String>> {
    let text = match &args.input {
        Some(path) => std::fs::read_to_string(path)?,
        None => SAMPLE.to_string(),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn output(args: &Args) -> io::Result<(Box<dyn Write>, String)> {
    Ok(match &args.out {
        Some(path) => (
            Box::new(BufWriter::new(File::create(path)?)),
            path.display().to_string(),
        ),
        None if !io::stdout().is_terminal() => (
            Box::new(BufWriter::new(io::stdout().lock())),
            "stdout".into(),
        ),
        None => {
            let path = "classify-results.jsonl";
            (
                Box::new(BufWriter::new(File::create(path)?)),
                path.to_string(),
            )
        }
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    let config = match load_config(&mut args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args
        .window_secs
        .is_some_and(|w| !(w.is_finite() && w > 0.0 && w <= 86_400.0))
    {
        eprintln!("error: --window-secs must be a number of seconds in (0, 86400]");
        return ExitCode::from(2);
    }
    let seconds = |s: f64| (0.0..=7.0 * 86_400.0).contains(&s);
    if !seconds(args.give_up_after) || args.give_up_after == 0.0 {
        eprintln!("error: --give-up-after must be a number of seconds in (0, 604800]");
        return ExitCode::from(2);
    }
    if args.outage.is_some_and(|o| !seconds(o)) || !seconds(args.outage_at) {
        eprintln!("error: --outage and --outage-at must be numbers of seconds in [0, 604800]");
        return ExitCode::from(2);
    }
    if args.outage.is_some() && args.base_url.is_some() {
        eprintln!("error: --outage applies to the simulated provider only (no --base-url)");
        return ExitCode::from(2);
    }
    let texts = match read_texts(&args) {
        Ok(texts) if !texts.is_empty() => texts,
        Ok(_) => {
            eprintln!("error: the input holds no text");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "error: cannot read {}: {e}",
                args.input.as_deref().unwrap_or("sample".as_ref()).display()
            );
            return ExitCode::from(2);
        }
    };
    let (mut out, out_name) = match output(&args) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            return ExitCode::from(2);
        }
    };
    let setup = match setup(&args).await {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error: cannot start the simulated provider: {e}");
            return ExitCode::from(2);
        }
    };
    let layer = stack(&config, &setup);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, String>(https);
    let result = match &args.redis {
        None => run(&args, &setup, &texts, &mut out, layer, client).await,
        #[cfg(feature = "redis")]
        Some(url) => {
            use tower_llm_resilience::redis_store::RedisStore;
            match RedisStore::builder(stack_limits(&config, &setup)).build(url) {
                Ok(store) => {
                    let layer = layer.store(store);
                    run(&args, &setup, &texts, &mut out, layer, client).await
                }
                Err(e) => {
                    eprintln!("error: cannot use Redis at the given URL: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            eprintln!("error: --redis needs the redis feature: cargo run --release --features redis --example classify -- --redis URL");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(report) => {
            if let Err(e) = out.flush() {
                eprintln!("error: cannot write the output: {e}");
                return ExitCode::from(2);
            }
            report.print(&setup, &out_name);
            if let Some(server) = setup.server {
                server.shutdown().await;
            }
            if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(2)
        }
    }
}

pub(crate) struct Report {
    pub(crate) items: usize,
    pub(crate) succeeded: usize,
    pub(crate) failed: BTreeMap<String, usize>,
    requests: usize,
    tokens: u64,
    pub(crate) wire: Arc<Wire>,
    summary: tower_llm_resilience::events::Summary,
    pub(crate) elapsed: Duration,
    resent: u64,
    sim: Option<SimStats>,
    stream: bool,
}

/// Classifies `texts` through the whole stack over `client` (hyper-util's
/// client, or in tests the simulated provider itself), writes one line per
/// text to `out`, and reports.
pub(crate) async fn run<St, T, B>(
    args: &Args,
    setup: &Setup,
    texts: &[String],
    out: &mut dyn Write,
    layer: LlmLayer<SingleKey, Provider, St>,
    client: T,
) -> io::Result<Report>
where
    St: Store + Clone,
    T: Service<Request<String>, Response = Response<B>> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let wire = Arc::new(Wire::default());
    let counted = {
        let wire = wire.clone();
        tower::service_fn(move |request: Request<String>| {
            let mut client = client.clone();
            let wire = wire.clone();
            async move {
                wire.sent.fetch_add(1, Ordering::Relaxed);
                let response = client
                    .ready()
                    .await
                    .map_err(Into::into)?
                    .call(request)
                    .await
                    .map_err(Into::into)?;
                if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
                    wire.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, BoxError>(response)
            }
        })
    };

    let events = layer.events_handle().clone();
    // the answer is read inside the batch's call, so that a stream that
    // fails midway is held and sent again like any transient failure
    let stack = {
        let (wire, stream) = (wire.clone(), args.stream);
        layer
            .layer(counted)
            .and_then(move |response| read_answer(response, stream, wire))
    };

    let k = args.batch_size as usize;
    let groups: Vec<&[String]> = texts.chunks(k).collect();
    let mut tokens = 0;
    let requests: Vec<Request<String>> = groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let refs: Vec<&str> = group.iter().map(String::as_str).collect();
            let (request, cost) = chat_request(setup, &args.model, &refs, i, args.stream);
            tokens += cost;
            request
        })
        .collect();

    let bar = ProgressBar::new(texts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let progress_bar = bar.clone();
    let started = Instant::now();
    let patience = Patience::new().give_up_after(Duration::from_secs_f64(args.give_up_after));
    let mut results = Batch::new(stack)
        .concurrency(args.concurrency as usize)
        .patience(patience)
        .on_progress(move |p| progress_bar.set_message(state(p)))
        .stream(requests);

    let mut report = Report {
        items: texts.len(),
        succeeded: 0,
        failed: BTreeMap::new(),
        requests: groups.len(),
        tokens,
        wire: wire.clone(),
        summary: Default::default(),
        elapsed: Duration::ZERO,
        resent: 0,
        sim: None,
        stream: args.stream,
    };
    let mut index = 0;
    for group in &groups {
        let result = results.next().await.expect("one result per request");
        let outcome: Result<Vec<String>, (String, String)> = match result {
            Ok(content) => labels(&content, group.len()).map_err(|e| ("other".to_string(), e)),
            Err(e) if e.is_gave_up() => Err((format!("gave up ({})", e.class()), message(&e))),
            Err(e) => Err((e.class().as_str().to_string(), message(&e))),
        };
        for (j, text) in group.iter().enumerate() {
            let line = match &outcome {
                Ok(labels) => {
                    report.succeeded += 1;
                    json!({"index": index, "text": text, "label": labels[j]})
                }
                Err((class, message)) => {
                    *report.failed.entry(class.clone()).or_default() += 1;
                    json!({"index": index, "text": text, "error": {"class": class, "message": message}})
                }
            };
            writeln!(out, "{line}")?;
            index += 1;
        }
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    report.resent = results.progress().resent;
    report.summary = events.counters().snapshot();
    report.sim = setup.sim.as_ref().map(SimProvider::stats);
    Ok(report)
}

/// The progress bar's message: what is in flight, and while items wait
/// for a failing provider, for how long it has failed and when the next
/// try is.
fn state(p: &Progress) -> String {
    let mut message = format!("{} in flight, {} failed", p.in_flight, p.failed);
    if p.held > 0 {
        let class = p.last_failure.map_or("failing", |c| c.as_str());
        let down = p.failing_for.unwrap_or_default().as_secs();
        message = format!("provider {class} for {down} s, {} held", p.held);
        if let Some(next) = p.next_resend_in {
            message.push_str(&format!(", next try in {:.0} s", next.as_secs_f64().ceil()));
        }
        message.push_str(&format!("; {} in flight, {} failed", p.in_flight, p.failed));
    }
    message
}

/// An error and its causes, for the results file.
fn message(e: &tower_llm_resilience::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What went wrong in an answer's body after its 200.
#[derive(Debug)]
struct BodyFailure(String);

impl fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyFailure {}

/// A failure of the answer's body as the crate's error, with `class`: a
/// transient class (an error event's server error or overload, a cut body)
/// makes the batch hold the item and send it again.
fn body_failure(class: ErrorClass, message: String) -> tower_llm_resilience::Error {
    tower_llm_resilience::Error::from_transport(BodyFailure(message), |_| {
        Classification::failure(class)
    })
}

/// The answer's text: the whole body's `choices[0].message.content`, or,
/// when it asked for a stream and got one (`text/event-stream`), the
/// content deltas of its events up to the end of the stream.
async fn read_answer<B>(
    response: Response<B>,
    stream: bool,
    wire: Arc<Wire>,
) -> Result<String, tower_llm_resilience::Error>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    // a server that does not stream answers with a whole JSON body
    let stream = stream
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = response.into_body();
    if !stream {
        let body = body.collect().await.map_err(|e| {
            let e: BoxError = e.into();
            body_failure(ErrorClass::Connect, format!("the response body broke: {e}"))
        })?;
        return content_of(&body.to_bytes()).map_err(|e| body_failure(ErrorClass::Other, e));
    }
    let read = read_stream(body).await;
    if read.is_err() {
        wire.stream_failures.fetch_add(1, Ordering::Relaxed);
    }
    read
}

/// The content of an OpenAI chat completion stream: the `delta.content`
/// of every `chat.completion.chunk`, until `data: [DONE]`. An error event
/// (`data: {"error": ...}`), a body that breaks, or one that ends before
/// the answer is finished is a failure, classified from the event's code
/// (or as a connection failure).
async fn read_stream<B>(body: B) -> Result<String, tower_llm_resilience::Error>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut events = Sse::default();
    let mut answer = StreamedAnswer::default();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            body_failure(
                ErrorClass::Connect,
                format!("the stream broke after {received} bytes: {e}"),
            )
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            received += chunk.len();
            events
                .feed(chunk, |event| answer.event(event))
                .map_err(|e| body_failure(ErrorClass::Other, e))?;
            let n = chunk.len();
            data.advance(n);
        }
        if let Some(failure) = answer.failure.take() {
            return Err(failure);
        }
        if answer.done {
            return Ok(answer.content);
        }
    }
    if answer.finished {
        // a server that sends no `[DONE]` after the finish reason
        return Ok(answer.content);
    }
    Err(body_failure(
        ErrorClass::Connect,
        format!("the stream ended after {received} bytes, before its answer was finished"),
    ))
}

/// What the events of a chat completion stream said so far.
#[derive(Default)]
struct StreamedAnswer {
    content: String,
    /// A choice's `finish_reason` was seen.
    finished: bool,
    /// `[DONE]` was seen.
    done: bool,
    failure: Option<tower_llm_resilience::Error>,
}

impl StreamedAnswer {
    fn event(&mut self, data: &str) {
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.failure = Some(body_failure(
                ErrorClass::Other,
                format!("an event is not JSON: {data:.200}"),
            ));
            return;
        };
        if let Some(error) = v.get("error") {
            let class = parse_error_body(data.as_bytes())
                .class
                .unwrap_or(ErrorClass::ServerError);
            let message = error["message"].as_str().unwrap_or("no message");
            self.failure = Some(body_failure(
                class,
                format!("the stream sent an error after its 200: {message}"),
            ));
            return;
        }
        let Some(choice) = v["choices"].get(0) else {
            return; // the usage chunk
        };
        if let Some(piece) = choice["delta"]["content"].as_str() {
            self.content.push_str(piece);
        }
        self.finished |= !choice["finish_reason"].is_null();
    }
}

/// The longest event the reader keeps (a server that never ends a line
/// must not grow it without bound).
pub(crate) const MAX_EVENT: usize = 1 << 20;

/// A small reader of server-sent events: lines end with `\n` or `\r\n`,
/// a blank line ends an event, its `data:` lines are joined with `\n`;
/// comments (`:`), `event:`, `id:` and `retry:` are not needed here.
#[derive(Default)]
pub(crate) struct Sse {
    /// The start of a line not yet ended.
    line: Vec<u8>,
    /// The data of the event being read.
    data: String,
}

impl Sse {
    /// Reads `bytes`, calling `event` with the data of every event they
    /// end.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut event: impl FnMut(&str)) -> Result<(), String> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            rest = &after[1..];
            if self.line.is_empty() {
                self.line_done(line, &mut event);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_done(&whole, &mut event);
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() + self.data.len() > MAX_EVENT {
            return Err(format!("an event longer than {MAX_EVENT} bytes"));
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], event: &mut impl FnMut(&str)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.data.is_empty() {
                event(&self.data);
                self.data.clear();
            }
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
        }
    }
}

impl Report {
    /// The theoretical minimum: `W * (max(ceil(N/R), ceil(tokens/T)) - 1)`.
    pub(crate) fn minimum(&self, setup: &Setup) -> Duration {
        let windows = (self.requests as u64)
            .div_ceil(setup.rpm)
            .max(self.tokens.div_ceil(setup.tpm))
            .saturating_sub(1);
        setup.window.mul_f64(windows as f64)
    }

    fn print(&self, setup: &Setup, out_name: &str) {
        let w = setup.window.as_secs_f64();
        let minimum = self.minimum(setup).as_secs_f64();
        let elapsed = self.elapsed.as_secs_f64();
        let failed: u64 = self.failed.values().map(|&n| n as u64).sum();
        let mut rows: Vec<(String, String)> = vec![
            ("items".into(), self.items.to_string()),
            ("succeeded".into(), self.succeeded.to_string()),
            ("failed".into(), failed.to_string()),
        ];
        for (class, n) in &self.failed {
            rows.push((format!("  {class}"), n.to_string()));
        }
        let sent = self.wire.sent.load(Ordering::Relaxed);
        let limited = self.wire.rate_limited.load(Ordering::Relaxed);
        let stream_failures = self.wire.stream_failures.load(Ordering::Relaxed);
        rows.extend([
            ("requests needed".into(), self.requests.to_string()),
            ("requests sent".into(), sent.to_string()),
            (
                "429s received".into(),
                format!(
                    "{limited} ({:.2} % of requests sent)",
                    100.0 * limited as f64 / sent.max(1) as f64
                ),
            ),
            ("retries".into(), self.summary.retries.to_string()),
            ("held and sent again".into(), self.resent.to_string()),
            (
                "breaker trips".into(),
                self.summary.circuit_opened.to_string(),
            ),
            (
                "waited on the limiter".into(),
                format!(
                    "{} requests, {:.1} s in all",
                    self.summary.rate_limit_waits,
                    self.summary.rate_limit_wait_time.as_secs_f64()
                ),
            ),
            ("tokens (estimated)".into(), self.tokens.to_string()),
            (
                "limits".into(),
                format!("{} requests and {} tokens per {w} s", setup.rpm, setup.tpm),
            ),
            ("elapsed".into(), format!("{elapsed:.1} s")),
            (
                "theoretical minimum".into(),
                format!("{minimum:.1} s  (W * (max(ceil(N/R), ceil(tokens/T)) - 1))"),
            ),
        ]);
        if self.stream || stream_failures > 0 {
            let at = rows
                .iter()
                .position(|(k, _)| k == "held and sent again")
                .map_or(rows.len(), |i| i + 1);
            rows.insert(
                at,
                (
                    "stream failures".into(),
                    format!("{stream_failures} (failed after their 200, sent again)"),
                ),
            );
        }
        if minimum > 0.0 {
            rows.push((
                "elapsed / minimum".into(),
                format!("{:.3}", elapsed / minimum),
            ));
        }
        if let Some(sim) = &self.sim {
            rows.push((
                "provider saw".into(),
                format!(
                    "{} requests: {} completed, {} 429s, {} faults injected, {} during the outage",
                    sim.requests,
                    sim.completed,
                    sim.rate_limited(),
                    sim.server_errors
                        + sim.unavailable
                        + sim.overloaded
                        + sim.resets
                        + sim.failed_streams(),
                    sim.outage
                ),
            ));
        }
        rows.push(("results".into(), out_name.to_string()));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        eprintln!();
        for (k, v) in rows {
            eprintln!("{k:<width$}  {v}");
        }
    }
}
