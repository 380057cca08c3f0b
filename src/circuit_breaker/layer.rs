use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::config::{Config, FailureWindow};
use super::shared::{Breakers, Context};
use super::CircuitBreaker;
use crate::classify::Provider;
use crate::events::Events;
use crate::key::SingleKey;

/// Stops sending to a provider (or model, or API key) that cannot answer,
/// fails fast with a typed error that says until when, and probes it back.
///
/// Defaults: the policy of [`Config::default`] (failure rate 0.5 over the
/// last 20 calls once 10 were seen, open 10 s, 3 probes, quota and auth
/// open at once for the provider's reset or 5 min, never more than 1 h),
/// one key ([`SingleKey`]), the [`Provider::Auto`] classifier, no event
/// listener, at most 10 000 keys.
///
/// Each service this layer wraps gets its own breakers; the clones of that
/// service share them.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<K = SingleKey, C = Provider> {
    config: Config,
    key_fn: K,
    classifier: C,
    events: Events,
    max_keys: usize,
}

/// The default bound on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

impl CircuitBreakerLayer {
    /// A layer with the defaults.
    pub fn new() -> Self {
        CircuitBreakerLayer {
            config: Config::default(),
            key_fn: SingleKey,
            classifier: Provider::Auto,
            events: Events::default(),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        CircuitBreakerLayer::new()
    }
}

macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.config = self.config.$name($($arg),*);
                self
            }
        )*
    };
}

impl<K, C> CircuitBreakerLayer<K, C> {
    /// Replaces the whole policy.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    forward! {
        /// See [`Config::failure_rate`] (default 0.5).
        failure_rate(rate: f64);
        /// See [`Config::slow_call_rate`] (default off).
        slow_call_rate(rate: f64);
        /// See [`Config::slow_call_duration`] (default 60 s).
        slow_call_duration(duration: Duration);
        /// See [`Config::window`] (default `FailureWindow::Count(20)`).
        window(window: FailureWindow);
        /// See [`Config::minimum_calls`] (default 10).
        minimum_calls(n: u32);
        /// See [`Config::open_duration`] (default 10 s).
        open_duration(duration: Duration);
        /// See [`Config::open_backoff`] (default off).
        open_backoff(factor: f64, max: Duration);
        /// See [`Config::half_open_probes`] (default 3).
        half_open_probes(n: u32);
        /// See [`Config::probe_timeout`] (default 5 min).
        probe_timeout(timeout: Duration);
        /// See [`Config::count_rate_limited`] (default `false`).
        count_rate_limited(count: bool);
        /// See [`Config::quota_open_duration`] (default 5 min).
        quota_open_duration(duration: Duration);
        /// See [`Config::auth_open_duration`] (default 5 min).
        auth_open_duration(duration: Duration);
        /// See [`Config::max_trip_open`] (default 1 h).
        max_trip_open(duration: Duration);
    }

    /// Where transitions and quota signals are reported (default: a fresh
    /// [`Events`] with no listener).
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// At most this many keys keep a breaker (default 10 000). At the
    /// bound, the idle closed breakers are forgotten; see
    /// [`CircuitBreaker`] for what happens when none is.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n.max(1);
        self
    }

    /// One breaker per key that `key_fn` gives (default [`SingleKey`]); use
    /// the same key function as the rate limiter.
    pub fn key_fn<K2>(self, key_fn: K2) -> CircuitBreakerLayer<K2, C> {
        CircuitBreakerLayer {
            config: self.config,
            key_fn,
            classifier: self.classifier,
            events: self.events,
            max_keys: self.max_keys,
        }
    }

    /// What a response or error means (default [`Provider::Auto`]).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<K, C2> {
        CircuitBreakerLayer {
            config: self.config,
            key_fn: self.key_fn,
            classifier,
            events: self.events,
            max_keys: self.max_keys,
        }
    }
}

impl<S, K: Clone, C: Clone> Layer<S> for CircuitBreakerLayer<K, C> {
    type Service = CircuitBreaker<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let context = Context {
            config: self.config,
            events: self.events.clone(),
            classifier: self.classifier.clone(),
        };
        let breakers = Arc::new(Breakers::new(context, self.max_keys));
        CircuitBreaker::new(inner, self.key_fn.clone(), breakers)
    }
}
