//! What the retry layer decides with: its defaults, and [`Config`], the
//! settings that [`RetryLayer`](super::RetryLayer) builds and every service
//! and [`RetryPolicy`](super::RetryPolicy) built from it shares.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::backoff::{scale, unit};
use super::decision::Attempts;
use super::spike::SpikeAlert;
use super::{Backoff, RetryBudget};
use crate::classify::{Classification, ErrorClass};
use crate::events::Events;

/// Default attempts (first + retries) for every retryable class: 4, one more
/// than openai-python's and anthropic-sdk-python's 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default attempts for `rate_limited` and `slow_down`: 10. A 429 means a
/// window is full; with the default backoff as a floor under the server's
/// wait, 9 retries span about 24 s on average and at most about 48 s plus
/// the server's waits: enough to ride out a per-minute limit (OpenAI's and
/// Anthropic's are per minute), where 2 retries give up within seconds.
pub const DEFAULT_RATE_LIMITED_ATTEMPTS: u32 = 10;
/// Default cap on a server-given wait: 60 s. anthropic-sdk-python and older
/// openai-python releases honour `Retry-After` up to 60 s; a longer wait
/// usually means a per-day limit or a quota, which the caller should see at
/// once rather than sleep through.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default jitter added to a server-given wait: up to 10 % of it, and at
/// most [`SERVER_JITTER_MAX`], so that clients told the same instant do not
/// all return at once.
pub const DEFAULT_SERVER_JITTER: f64 = 0.1;
/// The largest jitter ever added to a server-given wait: 1 s.
pub const SERVER_JITTER_MAX: Duration = Duration::from_secs(1);
/// Default for [`RetryLayer::budget_exempt_retry_after`]: 1 ms, that is,
/// any server-given wait above zero. Only a rate-limited answer
/// (`rate_limited`, `slow_down`) whose wait is at least this long is exempt
/// from the [`RetryBudget`]: the provider is pacing the key (a sliding
/// window says to the millisecond when a slot frees; the rate limiter's
/// gate holds the key's requests until then), and each such retry still
/// waits at least its backoff and counts against the attempts for its
/// class. `Retry-After: 0` paces nothing, and a wait on a 5xx or an
/// overload does not stop other requests from piling on: those retries
/// draw from the budget like any other.
///
/// Why not 1 s: a provider's sliding window answers a 429 with the exact
/// time until its oldest request leaves, often a few milliseconds
/// (OpenAI's and Azure's `retry-after-ms`). With a 1 s floor those retries
/// spend the budget, and in `examples/retry_comparison.rs` (200 requests
/// at 8/s against 5/s, retry layer alone) 60 requests are lost instead of
/// none. Raise it with [`RetryLayer::budget_exempt_retry_after`] to budget
/// short waits too.
///
/// [`RetryLayer::budget_exempt_retry_after`]: super::RetryLayer::budget_exempt_retry_after
pub const DEFAULT_BUDGET_EXEMPT_RETRY_AFTER: Duration = Duration::from_millis(1);

type Predicate = dyn Fn(&Classification) -> bool + Send + Sync;

/// Everything the retry layer and [`RetryPolicy`] decide with; shared by
/// clones behind an `Arc`.
pub(crate) struct Config<C> {
    pub(crate) classifier: C,
    pub(crate) max_attempts: u32,
    pub(crate) per_class: Vec<(ErrorClass, u32)>,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) server_jitter: f64,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<RetryBudget>,
    /// Whether `budget` is the layer's own default (a new one for each
    /// service) rather than a budget given to `RetryLayer::budget`
    /// (shared on purpose).
    pub(crate) own_budget: bool,
    /// The generator's seed given to `RetryLayer::seed` (`None`: a new
    /// seed for each service).
    pub(crate) seed: Option<u64>,
    pub(crate) budget_exempt_retry_after: Duration,
    pub(crate) predicate: Option<Arc<Predicate>>,
    pub(crate) rng: Arc<Mutex<SmallRng>>,
    pub(crate) events: Option<Events>,
    pub(crate) spike: Option<SpikeAlert>,
    /// The most attempts any class may make, set by [`Config::finished`].
    pub(crate) most_attempts: u32,
}

impl<C: Clone> Clone for Config<C> {
    fn clone(&self) -> Self {
        Config {
            classifier: self.classifier.clone(),
            max_attempts: self.max_attempts,
            per_class: self.per_class.clone(),
            backoff: self.backoff,
            max_retry_after: self.max_retry_after,
            server_jitter: self.server_jitter,
            deadline: self.deadline,
            budget: self.budget.clone(),
            own_budget: self.own_budget,
            seed: self.seed,
            budget_exempt_retry_after: self.budget_exempt_retry_after,
            predicate: self.predicate.clone(),
            rng: self.rng.clone(),
            events: self.events.clone(),
            spike: self.spike.clone(),
            most_attempts: self.most_attempts,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Config<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("classifier", &self.classifier)
            .field("max_attempts", &self.max_attempts)
            .field("per_class", &self.per_class)
            .field("backoff", &self.backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("server_jitter", &self.server_jitter)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .field("budget_exempt_retry_after", &self.budget_exempt_retry_after)
            .field("predicate", &self.predicate.is_some())
            .field("events", &self.events)
            .field("spike", &self.spike)
            .finish()
    }
}

impl<C> Config<C> {
    pub(crate) fn new(classifier: C) -> Self {
        Config {
            classifier,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            per_class: vec![
                (ErrorClass::RateLimited, DEFAULT_RATE_LIMITED_ATTEMPTS),
                (ErrorClass::SlowDown, DEFAULT_RATE_LIMITED_ATTEMPTS),
            ],
            backoff: Backoff::default(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            server_jitter: DEFAULT_SERVER_JITTER,
            deadline: None,
            budget: Some(RetryBudget::default()),
            own_budget: true,
            seed: None,
            budget_exempt_retry_after: DEFAULT_BUDGET_EXEMPT_RETRY_AFTER,
            predicate: None,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(process_seed()))),
            events: None,
            spike: None,
            most_attempts: DEFAULT_RATE_LIMITED_ATTEMPTS,
        }
    }

    /// The attempts allowed for `class`.
    pub(crate) fn max_attempts_for(&self, class: ErrorClass) -> u32 {
        self.per_class
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(self.max_attempts, |(_, n)| *n)
    }

    /// The settings as one service (or policy) uses them: with
    /// [`most_attempts`](Self::most_attempts) computed once, so that the
    /// success path does not walk the per-class limits, and with the state
    /// of its own (the crate's builder convention): a new default budget,
    /// a new generator (from the given seed, else a new seed) and a new
    /// spike window. A budget given to `RetryLayer::budget` stays shared.
    pub(crate) fn finished(mut self) -> Self {
        if self.own_budget && self.budget.is_some() {
            self.budget = Some(RetryBudget::default());
        }
        let seed = self.seed.unwrap_or_else(process_seed);
        self.rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
        self.spike = self.spike.as_ref().map(SpikeAlert::fresh);
        self.most_attempts = self
            .per_class
            .iter()
            .fold(self.max_attempts, |most, (_, n)| most.max(*n));
        self
    }

    /// Bookkeeping for a new request: a budget deposit, and the start time
    /// when a deadline is set.
    #[inline]
    pub(crate) fn first_attempt(&self) -> Attempts {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        Attempts {
            made: 0,
            started: self.deadline.map(|_| Instant::now()),
            previous: Duration::ZERO,
        }
    }

    /// The server's wait plus up to `server_jitter` of it (at most
    /// [`SERVER_JITTER_MAX`]).
    pub(crate) fn server_wait(&self, server: Duration) -> Duration {
        if self.server_jitter <= 0.0 {
            return server;
        }
        let draw = {
            let mut rng = match self.rng.lock() {
                Ok(rng) => rng,
                Err(poisoned) => poisoned.into_inner(),
            };
            unit(&mut *rng)
        };
        let extra = scale(server, self.server_jitter * draw).min(SERVER_JITTER_MAX);
        server.saturating_add(extra)
    }
}

/// A seed that differs between processes (std's `RandomState` is keyed
/// from the OS per process) and between layers of one process, so that
/// clients started together do not draw the same jitter.
pub(crate) fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAYERS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(LAYERS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}
