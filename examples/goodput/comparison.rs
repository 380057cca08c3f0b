//! The goodput comparison itself: one seeded workload, one simulated
//! provider per run, the same batch driver and concurrency for every
//! client, each run on a fresh paused clock.
//!
//! Shared by the `goodput` example (which prints the table and draws the
//! curve) and by `tests/goodput.rs` (which runs a smaller version and
//! asserts the stack's properties).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rand::rngs::{SmallRng, StdRng};
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tower::retry::backoff::{
    Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::batch::{Batch, Patience};
use tower_llm_resilience::classify::ReportedLimits;
use tower_llm_resilience::key::SingleKey;
use tower_llm_resilience::rate_limit::{Dimension, Limits, TokenEstimate};
use tower_llm_resilience::sim::{count_tokens, Fault, SimProvider};
use tower_llm_resilience::{BoxError, Classification, Classifier, LlmLayer, Provider};

/// The workload and the provider's limits, the same for every contender.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Requests in the batch.
    pub requests: usize,
    /// The provider's sliding window.
    pub window: Duration,
    /// Requests admitted per window.
    pub rpm: u64,
    /// Tokens admitted per window.
    pub tpm: u64,
    /// Calls in flight at once, for every contender.
    pub concurrency: usize,
    /// How long a completion takes.
    pub latency: Duration,
    /// How much longer a slow completion takes.
    pub slow: Duration,
    /// Seeds the workload, the provider's faults and every jitter.
    pub seed: u64,
    /// How long a request takes to reach the provider.
    pub network: Network,
    /// The stack's arrival margin (`None`: its default).
    pub margin: Option<Duration>,
    /// Whether the provider injects its 5 % fault mix (off: the floor
    /// that the concurrency and the latency alone leave).
    pub faults: bool,
}

impl Setup {
    /// The full run: 2,000 requests against OpenAI's tier-1 limits for
    /// `gpt-4o-mini` (500 RPM, 200,000 TPM over a 60 s window); the
    /// workload is token-bound (about 6.9 windows of tokens, 4 of requests).
    pub const fn full() -> Self {
        Setup {
            requests: 2_000,
            window: Duration::from_secs(60),
            rpm: 500,
            tpm: 200_000,
            concurrency: 32,
            latency: Duration::from_millis(800),
            slow: Duration::from_secs(10),
            seed: 7,
            network: Network::NONE,
            margin: None,
            faults: true,
        }
    }

    /// A smaller run for CI (`tests/goodput.rs`): 400 requests, limits
    /// scaled down (100 requests and 40,000 tokens per 60 s: a 60 s window,
    /// so that the stack learns from the provider's headers, which do not
    /// say their window), the same fault mix.
    #[allow(dead_code)] // used by the test, not by the example
    pub const fn small() -> Self {
        Setup {
            requests: 400,
            window: Duration::from_secs(60),
            rpm: 100,
            tpm: 40_000,
            concurrency: 16,
            latency: Duration::from_millis(800),
            slow: Duration::from_secs(5),
            seed: 11,
            network: Network::NONE,
            margin: None,
            faults: true,
        }
    }

    /// The provider, with a 5 % fault mix: 1.5 % 500, 1.5 % 503
    /// `server_is_overloaded`, 1 % connection resets (none of them charged
    /// against the limits) and 1 % slow completions.
    fn provider(&self) -> SimProvider {
        let share = if self.faults { 1.0 } else { 0.0 };
        SimProvider::builder()
            .rpm(self.rpm)
            .tpm(self.tpm)
            .window(self.window)
            .seed(self.seed)
            .fault(Fault::ServerError, 0.015 * share)
            .fault(Fault::ServiceUnavailable, 0.015 * share)
            .fault(Fault::ConnectionReset, 0.01 * share)
            .fault(Fault::Slow(self.slow), 0.01 * share)
            .latency(self.latency)
            // a fixed wall clock: every header is the same on every run
            .wall_clock(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .build()
    }
}

/// How long each request takes to reach the provider (which counts it when
/// it arrives): `base`, plus a uniform draw in `[0, jitter)`, plus `spike`
/// for a share `spikes` of the requests (a retransmitted packet, a new
/// connection). Seeded. The answer comes back at once after the provider's
/// latency (the way back changes nothing the provider counts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    /// The delay every request has.
    pub base: Duration,
    /// The width of the uniform jitter on top.
    pub jitter: Duration,
    /// The share of requests delayed by `spike` more.
    pub spikes: f64,
    /// The extra delay of a spike.
    pub spike: Duration,
}

impl Network {
    /// In process: the provider counts a request the instant it is sent.
    pub const NONE: Network = Network {
        base: Duration::ZERO,
        jitter: Duration::ZERO,
        spikes: 0.0,
        spike: Duration::ZERO,
    };

    fn is_none(&self) -> bool {
        *self == Network::NONE
    }

    fn draw(&self, rng: &mut StdRng) -> Duration {
        let jitter = self.jitter.mul_f64(rng.random::<f64>());
        let spike = if rng.random::<f64>() < self.spikes {
            self.spike
        } else {
            Duration::ZERO
        };
        self.base + jitter + spike
    }
}

/// The simulated provider behind a [`Network`]: each request reaches it
/// after its draw.
#[derive(Clone)]
struct OnTheWay {
    sim: SimProvider,
    network: Network,
    rng: Arc<Mutex<StdRng>>,
}

impl Service<Request<String>> for OnTheWay {
    type Response = <SimProvider as Service<Request<String>>>::Response;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let delay = self
            .network
            .draw(&mut self.rng.lock().expect("not poisoned"));
        let sim = self.sim.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            sim.oneshot(request).await
        })
    }
}

/// One chat completion of the workload.
#[derive(Clone, Debug)]
pub struct Job {
    prompt: String,
    max_tokens: u64,
    /// What the provider charges: prompt tokens plus `max_tokens`.
    pub cost: u64,
}

const WORDS: &[&str] = &[
    "great", "the", "delivery", "awful", "chair", "was", "love", "and", "broken", "table", "best",
    "it", "rude", "service", "fine", "a",
];

/// The seeded workload: 70 % short prompts, 25 % medium, 5 % long (about
/// 30 to 6,000 prompt tokens), with `max_tokens` of 16, 64 or 256.
pub fn workload(setup: &Setup) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(setup.seed);
    (0..setup.requests)
        .map(|_| {
            let words = match rng.random_range(0..100u32) {
                0..70 => rng.random_range(20..150),
                70..95 => rng.random_range(300..1_000),
                _ => rng.random_range(2_000..4_500),
            };
            let text: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let prompt = format!("Classify the sentiment.\nText: {}", text.join(" "));
            let max_tokens = [16, 64, 256][rng.random_range(0..3)];
            let cost = count_tokens(prompt.chars().count()) + max_tokens;
            Job {
                prompt,
                max_tokens,
                cost,
            }
        })
        .collect()
}

/// How the requests of a run are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ask {
    /// Asks for a stream of server-sent events with its usage at the end.
    stream: bool,
    /// The token estimate attached, as a multiple of the exact cost.
    estimate_factor: u64,
}

impl Ask {
    const PLAIN: Ask = Ask {
        stream: false,
        estimate_factor: 1,
    };
}

/// The request for job `i`, its cost (times the run's factor) attached as
/// a [`TokenEstimate`] (only this crate's limiter reads it).
fn request(i: usize, job: &Job, ask: Ask) -> Request<String> {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": job.max_tokens,
        "messages": [{"role": "user", "content": job.prompt}]
    });
    if ask.stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut req = Request::post("/v1/chat/completions")
        .header("x-request-id", i.to_string())
        .header("content-type", "application/json")
        .body(body.to_string())
        .expect("a valid request");
    req.extensions_mut().insert(TokenEstimate::total(
        job.cost.saturating_mul(ask.estimate_factor),
    ));
    req
}

/// The theoretical minimum completion time,
/// `W * (max(ceil(N / R), ceil(tokens / T)) - 1)`: the instant the last
/// window's worth of work can start, ignoring latency and concurrency.
pub fn theoretical_minimum(setup: &Setup, jobs: &[Job]) -> Duration {
    let tokens: u64 = jobs.iter().map(|j| j.cost).sum();
    let by_requests = (jobs.len() as u64).div_ceil(setup.rpm);
    let by_tokens = tokens.div_ceil(setup.tpm);
    let windows = by_requests.max(by_tokens).saturating_sub(1);
    setup.window * u32::try_from(windows).unwrap_or(u32::MAX)
}

/// The clients compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// This crate's whole stack as shipped (`LlmLayer`: breaker, retry,
    /// token-aware sliding-window limiter, classify) given the provider's
    /// limits and each request's token count.
    Stack,
    /// The same stack, every request streamed (server-sent events, the
    /// usage in the last chunk).
    StackStreaming,
    /// The same stack given estimates 3x too high: the usage each response
    /// reports must give the quota back.
    StackEstimate3x,
    /// A diagnostic, not a client to copy: the same stack with the
    /// provider's rate-limit headers hidden from it, to measure what
    /// learning from them costs here.
    StackWithoutHeaders,
    /// What a tower user builds from stock parts: `RateLimit` at the
    /// provider's RPM over its window (it knows nothing of tokens), shared
    /// through `Buffer`, under `Retry` with `ExponentialBackoff` (500 ms
    /// doubling to 8 s, 3 retries of 429s, 5xx and connection errors).
    TowerStock,
    /// openai-python's retry loop with no limiter: 2 retries, the server's
    /// `retry-after-ms` / `retry-after` when in (0, 60 s], else
    /// 0.5 s x 2^n up to 8 s times U(0.75, 1).
    OpenAiPython,
    /// The bare client: every request sent once, whatever happens.
    Bare,
}

impl Contender {
    /// Every contender, in table order.
    pub const ALL: [Contender; 7] = [
        Contender::Stack,
        Contender::StackStreaming,
        Contender::StackEstimate3x,
        Contender::StackWithoutHeaders,
        Contender::TowerStock,
        Contender::OpenAiPython,
        Contender::Bare,
    ];

    /// The name in the table.
    pub const fn name(self) -> &'static str {
        match self {
            Contender::Stack => "(a) this crate's LlmLayer",
            Contender::StackStreaming => "(a) same, streamed",
            Contender::StackEstimate3x => "(a) same, estimates 3x too high",
            Contender::StackWithoutHeaders => "(a') same, limit headers hidden (diagnostic)",
            Contender::TowerStock => "(b) tower RateLimit (RPM) + Retry",
            Contender::OpenAiPython => "(c) openai-python-like retry",
            Contender::Bare => "(d) no middleware",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Who ran.
    pub contender: Contender,
    /// From the first request to the last result.
    pub elapsed: Duration,
    /// Requests the provider received (first attempts and retries).
    pub sent: u64,
    /// 429s the provider answered.
    pub rate_limited: u64,
    /// Items whose final result was an error or a non-2xx response.
    pub lost: u64,
    /// Every admission: (time after start, tokens charged).
    pub admitted: Vec<(Duration, u64)>,
    /// Retries the stack scheduled (only for the stack).
    pub retries: Option<u64>,
}

impl Outcome {
    /// 429s as a share of the requests sent.
    pub fn rate_limited_share(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.rate_limited as f64 / self.sent as f64
        }
    }

    /// The share of the token limit the provider admitted over the whole
    /// windows before the last admission: how much of the quota the client
    /// used while it still had work. `None` for a run shorter than two
    /// windows.
    pub fn quota_used(&self, setup: &Setup) -> Option<f64> {
        let last = self.admitted.last()?.0;
        let windows = (last.as_nanos() / setup.window.as_nanos().max(1)) as u32;
        if windows == 0 {
            return None;
        }
        let end = setup.window * windows;
        let tokens: u64 = self
            .admitted
            .iter()
            .take_while(|(at, _)| *at < end)
            .map(|(_, t)| t)
            .sum();
        Some(tokens as f64 / (setup.tpm as f64 * f64::from(windows)))
    }
}

/// Runs `jobs` through `contender` against a fresh provider, on a fresh
/// current-thread runtime whose clock is paused: the run takes simulated
/// minutes and real milliseconds, and gives the same figures every time.
pub fn run(setup: &Setup, jobs: &[Job], contender: Contender) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let sim = setup.provider();
        let ask = match contender {
            Contender::StackStreaming => Ask {
                stream: true,
                ..Ask::PLAIN
            },
            Contender::StackEstimate3x => Ask {
                estimate_factor: 3,
                ..Ask::PLAIN
            },
            _ => Ask::PLAIN,
        };
        let requests: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| request(i, j, ask))
            .collect();
        let start = Instant::now();
        let mut retries = None;
        let lost = match contender {
            Contender::Stack | Contender::StackStreaming | Contender::StackEstimate3x => {
                let layer = stack(setup, Provider::OpenAi);
                let (lost, r) = run_stack(layer, &sim, requests, setup).await;
                retries = Some(r);
                lost
            }
            Contender::StackWithoutHeaders => {
                let layer = stack(setup, HideLimitHeaders(Provider::OpenAi));
                let (lost, r) = run_stack(layer, &sim, requests, setup).await;
                retries = Some(r);
                lost
            }
            Contender::TowerStock => drive(tower_stock(setup, sim.clone()), requests, setup).await,
            Contender::OpenAiPython => {
                let client = tower::retry::RetryLayer::new(OpenAiPython::new(setup.seed));
                drive(client.layer(sim.clone()), requests, setup).await
            }
            Contender::Bare => drive(sim.clone(), requests, setup).await,
        };
        let elapsed = start.elapsed();
        let stats = sim.stats();
        Outcome {
            contender,
            elapsed,
            sent: stats.requests,
            rate_limited: stats.rate_limited(),
            lost,
            admitted: sim.admitted_tokens(),
            retries,
        }
    })
}

/// Drives the requests through `layer` over the provider (behind the
/// setup's network); the items lost and the retries scheduled.
async fn run_stack<C>(
    layer: LlmLayer<SingleKey, C>,
    sim: &SimProvider,
    requests: Vec<Request<String>>,
    setup: &Setup,
) -> (u64, u64)
where
    C: Classifier + Clone + Send + Sync + 'static,
{
    let events = layer.events_handle().clone();
    let lost = if setup.network.is_none() {
        drive(layer.layer(sim.clone()), requests, setup).await
    } else {
        let network = OnTheWay {
            sim: sim.clone(),
            network: setup.network,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(setup.seed))),
        };
        drive(layer.layer(network), requests, setup).await
    };
    (lost, events.counters().snapshot().retries)
}

/// Sends every request through `client` with the shared concurrency and
/// counts the items whose final result is not a 2xx response read to its
/// end.
///
/// Each body is read as soon as its response arrives, as a real caller
/// does: the usage at its end reaches the limiter while the batch runs.
///
/// The batch is fail-fast: what is compared is each client's own
/// handling of the faults, not the batch's patience (which would send the
/// items a client lost again).
///
/// The reorder window is the whole batch: the results are counted at the
/// end, and with the default (4 x concurrency) an item stuck in retries at
/// the head of the batch would hold back new calls for every contender.
async fn drive<S, RB>(client: S, requests: Vec<Request<String>>, setup: &Setup) -> u64
where
    S: Service<Request<String>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
    RB::Error: Into<BoxError>,
{
    let client =
        client
            .map_err(Into::<BoxError>::into)
            .and_then(|response: Response<RB>| async move {
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                Ok::<_, BoxError>(Response::from_parts(parts, bytes))
            });
    let results = Batch::new(client)
        .concurrency(setup.concurrency)
        .reorder_window(setup.requests)
        .patience(Patience::fail_fast())
        .run(requests)
        .await;
    results
        .iter()
        .filter(|r| !matches!(r, Ok(response) if response.status().is_success()))
        .count() as u64
}

/// (a) The crate's stack: the provider's two limits over its own window
/// (the limiter adds its arrival margin), and a seeded retry jitter so
/// that the run is reproducible.
fn stack<C: Clone>(setup: &Setup, classifier: C) -> LlmLayer<SingleKey, C> {
    let layer = LlmLayer::new(Provider::Auto)
        .classifier(classifier)
        .limits(
            Limits::new()
                .window(Dimension::Requests, setup.window, setup.rpm)
                .window(Dimension::Tokens, setup.window, setup.tpm),
        )
        .retry(|retry| retry.seed(setup.seed));
    match setup.margin {
        Some(margin) => layer.arrival_margin(margin),
        None => layer,
    }
}

/// (a') A classifier that reports no rate-limit headers, so that the
/// limiter paces on its own window alone.
#[derive(Clone, Copy, Debug)]
struct HideLimitHeaders(Provider);

impl Classifier for HideLimitHeaders {
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        let mut c = self.0.classify(status, headers, body);
        c.limits = ReportedLimits::EMPTY;
        c
    }
}

/// (b) tower's stock parts: `Retry` over a `Buffer` (tower's `RateLimit`
/// is not `Clone`; `Buffer` is how it is shared) over `RateLimit`.
fn tower_stock(
    setup: &Setup,
    sim: SimProvider,
) -> impl Service<
    Request<String>,
    Response = Response<impl http_body::Body<Error: Into<BoxError>>>,
    Error = BoxError,
> {
    let backoff = ExponentialBackoffMaker::new(
        Duration::from_millis(500),
        Duration::from_secs(8),
        0.99,
        Seeded(SmallRng::seed_from_u64(setup.seed)),
    )
    .expect("valid backoff")
    .make_backoff();
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(TowerStock {
            backoff,
            retries: 3,
        }))
        .buffer(setup.concurrency)
        .rate_limit(setup.rpm, setup.window)
        .service(sim)
}

/// tower's `Rng` over a seeded generator, so that its jitter is reproducible.
#[derive(Clone)]
struct Seeded(SmallRng);

impl tower::util::rng::Rng for Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0.random()
    }
}

/// Whether a plain HTTP client retries this: a connection error, a 408,
/// 409, 429 or any 5xx.
fn retryable<RB, E>(result: &Result<Response<RB>, E>) -> bool {
    match result {
        Err(_) => true,
        Ok(r) => {
            let s = r.status();
            s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::CONFLICT
                || s == StatusCode::TOO_MANY_REQUESTS
                || s.is_server_error()
        }
    }
}

/// (b)'s policy: tower's `ExponentialBackoff`, a fixed number of retries.
/// It cannot read `Retry-After`.
#[derive(Clone)]
struct TowerStock {
    backoff: ExponentialBackoff<Seeded>,
    retries: u32,
}

impl<RB, E> tower::retry::Policy<Request<String>, Response<RB>, E> for TowerStock {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<String>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        if self.retries == 0 || !retryable(result) {
            return None;
        }
        self.retries -= 1;
        Some(self.backoff.next_backoff())
    }

    fn clone_request(&mut self, req: &Request<String>) -> Option<Request<String>> {
        Some(req.clone())
    }
}

/// (c)'s policy: openai-python's `_calculate_retry_timeout`.
#[derive(Clone)]
struct OpenAiPython {
    retries_taken: u32,
    max_retries: u32,
    rng: Arc<Mutex<StdRng>>,
}

impl OpenAiPython {
    fn new(seed: u64) -> Self {
        OpenAiPython {
            retries_taken: 0,
            max_retries: 2,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// The server's wait in seconds: `retry-after-ms`, else `retry-after`.
    fn server_wait<RB>(response: &Response<RB>) -> Option<f64> {
        let header = |name| {
            response
                .headers()
                .get(name)?
                .to_str()
                .ok()?
                .parse::<f64>()
                .ok()
        };
        header("retry-after-ms")
            .map(|ms| ms / 1000.0)
            .or_else(|| header("retry-after"))
    }
}

impl<RB, E> tower::retry::Policy<Request<String>, Response<RB>, E> for OpenAiPython {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<String>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        if self.retries_taken >= self.max_retries || !retryable(result) {
            return None;
        }
        let server = result.as_ref().ok().and_then(Self::server_wait);
        let wait = match server {
            Some(secs) if secs > 0.0 && secs <= 60.0 => secs,
            _ => {
                let base = (0.5 * 2f64.powi(self.retries_taken as i32)).min(8.0);
                let draw: f64 = self.rng.lock().expect("not poisoned").random();
                base * (1.0 - 0.25 * draw)
            }
        };
        self.retries_taken += 1;
        Some(tokio::time::sleep(Duration::from_secs_f64(wait)))
    }

    fn clone_request(&mut self, req: &Request<String>) -> Option<Request<String>> {
        Some(req.clone())
    }
}
