//! The provider itself: its shared state, what it can tell of what it
//! served, and its tower `Service`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tower::Service;

use super::body::SimBody;
use super::config::{Config, SimProviderBuilder};
use super::decide::decide;
use super::served::{Served, SimStats};
use super::window::Window;
use crate::BoxError;

/// A simulated AI provider: OpenAI- and Anthropic-shaped endpoints, true
/// sliding-window RPM and TPM limits, seeded faults, and a log of what it
/// served. See the [module docs](super).
///
/// Clones share one provider (limits, random draws, log).
#[derive(Clone)]
pub struct SimProvider {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
    epoch: Instant,
}

/// What the provider remembers, behind its one lock.
pub(super) struct State {
    pub(super) requests: Window,
    pub(super) tokens: Window,
    pub(super) rng: StdRng,
    /// The next request's number.
    pub(super) seq: u64,
    pub(super) stats: SimStats,
    pub(super) log: Vec<Served>,
    /// (time after build, tokens charged) per admission.
    pub(super) series: Vec<(Duration, u64)>,
}

impl SimProvider {
    /// A builder with the documented defaults.
    pub fn builder() -> SimProviderBuilder {
        SimProviderBuilder::default()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let state = State {
            requests: Window::new(config.window),
            tokens: Window::new(config.window),
            rng: StdRng::seed_from_u64(config.seed),
            seq: 0,
            stats: SimStats::default(),
            log: Vec::new(),
            series: Vec::new(),
        };
        SimProvider {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<Served> {
        self.lock().log.clone()
    }

    /// Every admission so far: (time after build, tokens charged). Bin it
    /// by second to draw admitted tokens per second against the limit.
    pub fn admitted_tokens(&self) -> Vec<(Duration, u64)> {
        self.lock().series.clone()
    }

    /// The largest number of requests and of tokens admitted in any window
    /// of the configured length, from the admissions so far. Never above
    /// the limits: a check of the simulator itself.
    pub fn max_in_any_window(&self) -> (u64, u64) {
        let series = self.admitted_tokens();
        let len = self.config.window;
        let (mut best_r, mut best_t) = (0u64, 0u64);
        let (mut start, mut tokens) = (0usize, 0u64);
        for (end, &(at, t)) in series.iter().enumerate() {
            tokens += t;
            while series[start].0 + len <= at {
                tokens -= series[start].1;
                start += 1;
            }
            best_r = best_r.max((end + 1 - start) as u64);
            best_t = best_t.max(tokens);
        }
        (best_r, best_t)
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.config.window
    }

    async fn handle<B>(self, request: Request<B>) -> Result<Response<SimBody>, io::Error>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let arrival = Instant::now();
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, self.config.max_body)
            .collect()
            .await
            .map(|c| c.to_bytes());
        let decision = decide(
            &self.config,
            &mut self.lock(),
            &self.state,
            self.epoch,
            arrival,
            &parts,
            body,
        );
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        decision.answer
    }
}

impl<B> Service<Request<B>> for SimProvider
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<SimBody>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(self.clone().handle(request))
    }
}

impl fmt::Debug for SimProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimProvider")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
