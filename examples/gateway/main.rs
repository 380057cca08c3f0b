//! An OpenAI-compatible gateway: point any client's base URL at it and
//! every call goes through the whole stack (a quota per tenant, then the
//! circuit breaker, retry and the provider's quota) to the upstream.
//!
//! ```sh
//! cargo run --release --example gateway -- --listen 127.0.0.1:8080 \
//!   --rpm 500 --tpm 200000 --window-secs 60 --concurrency 64
//! ```
//!
//! Without `--upstream`, the upstream is the crate's simulated provider,
//! started on loopback with the same limits and a realistic fault mix
//! (`--sim-faults false` for none). With `--upstream URL` (the provider's
//! base URL, such as `https://api.openai.com/v1`), any OpenAI-compatible
//! server; the gateway's key for it comes from `OPENAI_API_KEY`, is sent
//! upstream only and is never printed.
//!
//! The first line on stdout is `listening on http://ADDR` (the real port
//! when `--listen` asks for port 0). SIGTERM or Ctrl-C stops accepting,
//! lets the requests in flight (streams included) finish, and prints the
//! stack's summary to stderr. The error answers are described in
//! `answer.rs`; the stack's warnings (breaker transitions, exhausted
//! quotas) go to stderr.

mod answer;
mod app;
mod upstream;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use http::header::HeaderName;
use tokio::net::TcpListener;
use tower_llm_resilience::config::LlmConfig;
use tower_llm_resilience::events::Summary;
use tower_llm_resilience::rate_limit::{Dimension, Limits};
use tower_llm_resilience::sim::{Fault, SimProvider, SimServer};

/// An OpenAI-compatible gateway in front of an upstream provider, with a
/// quota per tenant and one for the provider.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Where to listen (port 0: any free port, printed on the first line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The upstream's base URL, e.g. https://api.openai.com/v1 (key from
    /// OPENAI_API_KEY); without it, the embedded simulated provider.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// The provider's requests per window, shared by every tenant
    /// (default: the config's, else 500).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rpm: Option<u64>,
    /// The provider's tokens per window, shared by every tenant (default:
    /// the config's, else 200000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tpm: Option<u64>,
    /// The length of every window, in seconds (default: the config's,
    /// else 60).
    #[arg(long, value_name = "S")]
    window_secs: Option<f64>,
    /// Requests sent upstream at once (a stream counts until it ends).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Each tenant's requests per window (default: no limit of its own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tenant_rpm: Option<u64>,
    /// Each tenant's tokens per window (default: no limit of its own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tenant_tpm: Option<u64>,
    /// Tell tenants apart by this header (e.g. x-tenant) instead of their
    /// API key.
    #[arg(long, value_name = "NAME")]
    tenant_header: Option<HeaderName>,
    /// The longest a request waits for a quota before it is answered 429
    /// with Retry-After, in seconds (default: the config's `max_wait`,
    /// else 30).
    #[arg(long, value_name = "S")]
    max_wait_secs: Option<f64>,
    /// The embedded simulated provider injects faults (server errors,
    /// overloads, resets, slow answers, broken streams).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    sim_faults: bool,
    /// The stack's settings from a TOML file (the crate's `config`
    /// module: provider, limits, retry, breaker, timeouts);
    /// `TLR__SECTION__FIELD` environment variables override it, with or
    /// without a file, and the flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// The settings of `--config` with the environment's overrides.
fn load_config(args: &Args) -> Result<LlmConfig, String> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => String::new(),
    };
    LlmConfig::from_toml_with_env(&text, "TLR", std::env::vars()).map_err(|e| {
        let file = args.config.as_deref().unwrap_or("the environment".as_ref());
        format!("{}: {e}", file.display())
    })
}

/// Seconds from the command line, or the message that says which flag is
/// wrong.
fn seconds(flag: &str, s: f64, max: f64) -> Result<Duration, String> {
    if s.is_finite() && s > 0.0 && s <= max {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "--{flag} must be a number of seconds in (0, {max}]"
        ))
    }
}

fn window_limits(window: Duration, requests: Option<u64>, tokens: Option<u64>) -> Limits {
    let mut limits = Limits::new();
    if let Some(n) = requests {
        limits = limits.window(Dimension::Requests, window, n);
    }
    if let Some(n) = tokens {
        limits = limits.window(Dimension::Tokens, window, n);
    }
    limits
}

/// The simulated provider with the gateway's limits, and with
/// `faults` a mix of what real providers do.
fn simulated(args: &Args, (rpm, tpm): (u64, u64), window: Duration) -> SimProvider {
    let mut sim = SimProvider::builder()
        .rpm(rpm)
        .tpm(tpm)
        .window(window)
        .seed(2026)
        .latency(Duration::from_millis(150));
    if args.sim_faults {
        sim = sim
            .fault(Fault::ServerError, 0.02)
            .fault(Fault::ServiceUnavailable, 0.01)
            .fault(Fault::ConnectionReset, 0.01)
            .fault(Fault::Slow(Duration::from_secs(1)), 0.01)
            .fault(Fault::MidStreamError, 0.01)
            .fault(Fault::Truncate, 0.01);
    }
    sim.build()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = load_config(&args)?;
    let window = match args.window_secs {
        Some(s) => seconds("window-secs", s, 86_400.0)?,
        None => config.limits.window.unwrap_or(Duration::from_secs(60)),
    };
    let max_wait = match args.max_wait_secs {
        Some(s) => seconds("max-wait-secs", s, 86_400.0)?,
        None => config.stack.max_wait.unwrap_or(Duration::from_secs(30)),
    };
    let rpm = args.rpm.or(config.limits.rpm).unwrap_or(500);
    let tpm = args.tpm.or(config.limits.tpm).unwrap_or(200_000);
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();

    let mut sim_server: Option<SimServer> = None;
    let (upstream, api_key) = match &args.upstream {
        Some(url) => {
            let key = std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            if key.is_none() {
                eprintln!("warning: OPENAI_API_KEY is not set: requests go upstream without a key");
            }
            (url.clone(), key)
        }
        None => {
            let sim = simulated(&args, (rpm, tpm), window);
            let server = sim
                .serve()
                .await
                .map_err(|e| format!("cannot start the simulated provider: {e}"))?;
            let url = server.base_url();
            sim_server = Some(server);
            (url, None)
        }
    };

    // The config's limits (a per-day limit, input and output tokens),
    // with the provider's requests and tokens per window.
    let mut limits = config.limits.clone();
    (limits.rpm, limits.tpm, limits.window) = (Some(rpm), Some(tpm), Some(window));
    let mut settings = app::Settings::new(upstream, limits.to_limits());
    settings.config = config;
    settings.api_key = api_key;
    settings.tenant_limits = window_limits(window, args.tenant_rpm, args.tenant_tpm);
    settings.tenant_header = args.tenant_header.clone();
    settings.max_wait = max_wait;
    settings.concurrency = args.concurrency as usize;
    let gateway = app::gateway(settings)?;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    match &args.upstream {
        Some(url) => eprintln!("upstream: {url}"),
        None => eprintln!(
            "upstream: the simulated provider at {} ({})",
            sim_server
                .as_ref()
                .map_or(String::new(), SimServer::base_url),
            if args.sim_faults {
                "with faults"
            } else {
                "no faults"
            }
        ),
    }

    axum::serve(listener, gateway.router)
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| format!("the server failed: {e}"))?;
    if let Some(server) = sim_server {
        server.shutdown().await;
    }
    print_summary(
        &gateway.answers,
        &gateway.events.counters().snapshot(),
        &gateway.tenant_events.counters().snapshot(),
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("stopping: finishing the requests in flight");
}

fn print_summary(answers: &app::Answers, provider: &Summary, tenants: &Summary) {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let rows = [
        ("answered by the upstream", n(&answers.upstream).to_string()),
        (
            "refused: 429 tenant quota",
            n(&answers.tenant_quota).to_string(),
        ),
        (
            "refused: 429 provider quota",
            n(&answers.provider_quota).to_string(),
        ),
        (
            "refused: 503 circuit open",
            n(&answers.circuit_open).to_string(),
        ),
        ("other errors", n(&answers.other_errors).to_string()),
        (
            "waited on the provider quota",
            format!(
                "{} requests, {:.1} s in all",
                provider.rate_limit_waits,
                provider.rate_limit_wait_time.as_secs_f64()
            ),
        ),
        (
            "waited on a tenant quota",
            format!(
                "{} requests, {:.1} s in all",
                tenants.rate_limit_waits,
                tenants.rate_limit_wait_time.as_secs_f64()
            ),
        ),
        (
            "429s from the upstream",
            provider.rate_limited_responses.to_string(),
        ),
        ("retries", provider.retries.to_string()),
        ("retries given up", provider.gave_up.to_string()),
        ("breaker trips", provider.circuit_opened.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        eprintln!("{k:<width$}  {v}");
    }
}
