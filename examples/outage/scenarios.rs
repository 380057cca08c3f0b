//! The outage scenarios of `examples/outage` and `tests/outage.rs`: a batch
//! of 300 classifications through the whole stack against a simulated
//! provider that goes down for a while, on tokio's paused clock.

use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::Layer;
use tower_llm_resilience::batch::{Batch, Patience};
use tower_llm_resilience::rate_limit::{Dimension, Limits, TokenEstimate};
use tower_llm_resilience::sim::{count_tokens, SimProvider, Verdict};
use tower_llm_resilience::{LlmLayer, Provider};

/// Items in the batch.
pub const ITEMS: usize = 300;
/// Calls in flight at once.
pub const CONCURRENCY: usize = 16;
/// The provider's window: 100 requests and 12,000 tokens per 10 s.
pub const WINDOW: Duration = Duration::from_secs(10);
const RPM: u64 = 100;
const TPM: u64 = 12_000;
const MAX_TOKENS: u64 = 4;
/// When the outage starts: after about 30 answers.
pub const OUTAGE_START: Duration = Duration::from_millis(300);
/// "Never comes back": down for longer than any patience.
pub const FOREVER: Duration = Duration::from_secs(7 * 24 * 3600);

/// One run: how long the provider is down, and whether the batch is
/// patient.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// How long every request is answered 503 `server_is_overloaded`,
    /// from [`OUTAGE_START`].
    pub outage: Duration,
    /// The batch's patience ([`Patience::default`] or fail fast).
    pub patience: Patience,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Items answered with a completion.
    pub succeeded: usize,
    /// Items answered with an error.
    pub lost: usize,
    /// Of `lost`, the items the batch gave up (its patience ran out).
    pub gave_up: usize,
    /// Whether every error was typed (the stack's `Error`, with a class).
    pub errors_typed: bool,
    /// Requests the provider received.
    pub sent: u64,
    /// Of `sent`, those that arrived while it was down.
    pub sent_during_outage: u64,
    /// Times the batch sent a held item again.
    pub resent: u64,
    /// Breaker trips.
    pub trips: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

/// The least time the batch can take with the provider healthy:
/// `W * (ceil(N / R) - 1)` (the requests limit binds; tokens are far below
/// theirs).
pub fn theoretical_minimum() -> Duration {
    WINDOW * (ITEMS as u64).div_ceil(RPM).saturating_sub(1) as u32
}

fn request(i: usize) -> Request<String> {
    let prompt = format!("Classify.\nText: review number {i} was great");
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}]
    });
    let mut req = Request::post("/v1/chat/completions")
        .header("x-request-id", i.to_string())
        .body(body.to_string())
        .expect("a valid request");
    let tokens = count_tokens(prompt.chars().count()) + MAX_TOKENS;
    req.extensions_mut().insert(TokenEstimate::total(tokens));
    req
}

/// Runs `scenario` on a fresh paused current-thread runtime: simulated
/// minutes take real milliseconds, and the figures are the same each time.
pub fn run(scenario: Scenario) -> Figures {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let sim = SimProvider::builder()
            .rpm(RPM)
            .tpm(TPM)
            .window(WINDOW)
            .latency(Duration::from_millis(150))
            .seed(11)
            .outage(OUTAGE_START, OUTAGE_START.saturating_add(scenario.outage))
            .build();
        let layer = LlmLayer::new(Provider::OpenAi)
            .limits(
                Limits::new()
                    .window(Dimension::Requests, WINDOW, RPM)
                    .window(Dimension::Tokens, WINDOW, TPM),
            )
            .retry(|r| r.seed(7));
        let events = layer.events_handle().clone();
        let stack = layer.layer(sim.clone());
        let start = Instant::now();
        let mut stream = Batch::new(stack)
            .concurrency(CONCURRENCY)
            .patience(scenario.patience.seed(5))
            .stream((0..ITEMS).map(request));
        let mut figures = Figures {
            succeeded: 0,
            lost: 0,
            gave_up: 0,
            errors_typed: true,
            sent: 0,
            sent_during_outage: 0,
            resent: 0,
            trips: 0,
            elapsed: Duration::ZERO,
        };
        use futures::StreamExt;
        while let Some(result) = stream.next().await {
            match result {
                Ok(response) if response.status().is_success() => figures.succeeded += 1,
                Ok(_) => figures.lost += 1,
                Err(e) => {
                    figures.lost += 1;
                    figures.gave_up += usize::from(e.is_gave_up());
                    figures.errors_typed &= e.class() != tower_llm_resilience::ErrorClass::Other;
                }
            }
        }
        figures.elapsed = start.elapsed();
        figures.resent = stream.progress().resent;
        let stats = sim.stats();
        figures.sent = stats.requests;
        figures.sent_during_outage = sim
            .log()
            .iter()
            .filter(|s| s.outcome == Verdict::Outage)
            .count() as u64;
        figures.trips = events.counters().snapshot().circuit_opened;
        figures
    })
}
