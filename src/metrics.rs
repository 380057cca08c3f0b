//! Metrics of what the layers did, through the [`metrics`](https://docs.rs/metrics)
//! crate's facade: any exporter installed as its recorder (Prometheus,
//! StatsD, OpenTelemetry) reads them; this crate brings none.
//!
//! [`MetricsListener`] turns [`Events`] into metrics: give the stack its
//! [`events`](MetricsListener::events) handle (or call
//! [`record`](MetricsListener::record) from a listener of your own). A
//! stack without it pays nothing for this module; with it, each event
//! costs one call of the listener, and each attempt one small allocation
//! (the model and send time it keeps while observed).
//!
//! ```
//! use tower_llm_resilience::metrics::MetricsListener;
//! use tower_llm_resilience::{LlmLayer, Provider};
//!
//! let layer = LlmLayer::new(Provider::OpenAi)
//!     .requests_per_minute(500)
//!     .events(MetricsListener::new(Provider::OpenAi).events());
//! assert!(layer.events_handle().has_listener());
//! ```
//!
//! # Names
//!
//! Where the [OpenTelemetry GenAI semantic conventions] name a metric or
//! an attribute, it has that name: the client metrics
//! `gen_ai.client.token.usage` and `gen_ai.client.operation.duration`, and
//! the attributes `gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.token.type` and `error.type`. These are the names of semantic
//! conventions v1.36, which the conventions' transition plan tells
//! instrumentations to keep emitting by default; later versions (v1.37
//! on) name the provider `gen_ai.provider.name` instead of
//! `gen_ai.system`. `gen_ai.operation.name` (`chat`, `embeddings`...) is
//! not set: the layers do not know which operation a request is. An
//! exporter may rewrite the names (Prometheus: `gen_ai_client_token_usage`).
//!
//! | name | kind | unit | attributes | what |
//! | --- | --- | --- | --- | --- |
//! | `gen_ai.client.token.usage` | histogram | token | system, model, key, `gen_ai.token.type` (`input`, `output`) | the tokens each attempt's response reported ([`Event::AttemptEnded`]) |
//! | `gen_ai.client.operation.duration` | histogram | s | system, model, key, `error.type` (on failures) | each attempt, from its send to the end of its response's body ([`Event::AttemptEnded`]) |
//! | `llm.rate_limit.wait.duration` | histogram | s | key, model | how long each request that waited waited for the limiter ([`Event::RateLimitAdmitted`]) |
//! | `llm.rate_limit.queue.depth` | gauge | requests | key | requests waiting for the limiter now ([`Event::RateLimitWait`] minus admitted and left) |
//! | `llm.rate_limit.responses` | counter | responses | system, key, model, `error.type` | rate-limit answers (429s, `slow_down`, `quota_exhausted`) ([`Event::RateLimitedResponse`]) |
//! | `llm.rate_limit.gate.closed` | counter | gates | key | a `Retry-After` closed the key's gate ([`Event::GateClosed`]) |
//! | `llm.rate_limit.limit` | gauge | requests or tokens | key, `llm.dimension` | the limit in force after the limiter learned it from headers ([`Event::LimitLearned`]) |
//! | `llm.quota.remaining` | gauge | requests or tokens | key, `llm.dimension` | what the provider last said remains ([`Event::QuotaReported`]) |
//! | `llm.quota.exhausted` | counter | signals | key | quota-exhausted signals ([`Event::QuotaExhausted`]) |
//! | `llm.retries` | counter | retries | key, model, `error.type` | retries scheduled, by the class that caused them ([`Event::RetryScheduled`]) |
//! | `llm.retry.gave_up` | counter | requests | `error.type`, `llm.reason` | requests the retry layer stopped on ([`Event::RetryGaveUp`]) |
//! | `llm.circuit.state` | gauge | 0 closed, 1 half-open, 2 open | key | each breaker's state ([`Event::CircuitTransition`]) |
//! | `llm.circuit.trips` | counter | openings | key, `error.type` | times a breaker opened |
//!
//! "system" is `gen_ai.system`, from the [`Provider`] given to
//! [`MetricsListener::new`]; "model" is `gen_ai.request.model`, present
//! when the event knows the model (see [`Event`]); "key" is `llm.key`,
//! the request's [`Key`] as it shows (a name, or the
//! fingerprint of an API key: never the key itself), left out with
//! [`key_label(false)`](MetricsListener::key_label) when there are too many
//! keys for a time series each.
//!
//! [OpenTelemetry GenAI semantic conventions]: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Label, Recorder, Unit};

use crate::classify::{ErrorClass, Provider};
use crate::events::{CircuitState, Event, Events};
use crate::key::Key;

/// `gen_ai.client.token.usage`.
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// `gen_ai.client.operation.duration`.
pub const OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// `llm.rate_limit.wait.duration`.
pub const RATE_LIMIT_WAIT: &str = "llm.rate_limit.wait.duration";
/// `llm.rate_limit.queue.depth`.
pub const QUEUE_DEPTH: &str = "llm.rate_limit.queue.depth";
/// `llm.rate_limit.responses`.
pub const RATE_LIMITED_RESPONSES: &str = "llm.rate_limit.responses";
/// `llm.rate_limit.gate.closed`.
pub const GATES_CLOSED: &str = "llm.rate_limit.gate.closed";
/// `llm.rate_limit.limit`.
pub const LIMIT: &str = "llm.rate_limit.limit";
/// `llm.quota.remaining`.
pub const QUOTA_REMAINING: &str = "llm.quota.remaining";
/// `llm.quota.exhausted`.
pub const QUOTA_EXHAUSTED: &str = "llm.quota.exhausted";
/// `llm.retries`.
pub const RETRIES: &str = "llm.retries";
/// `llm.retry.gave_up`.
pub const RETRIES_GAVE_UP: &str = "llm.retry.gave_up";
/// `llm.circuit.state`.
pub const CIRCUIT_STATE: &str = "llm.circuit.state";
/// `llm.circuit.trips`.
pub const CIRCUIT_TRIPS: &str = "llm.circuit.trips";

/// The bucket boundaries the GenAI conventions give for
/// `gen_ai.client.token.usage`, for exporters that take buckets.
pub const TOKEN_USAGE_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The bucket boundaries (seconds) the GenAI conventions give for
/// `gen_ai.client.operation.duration`; they fit the limiter's waits too.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Records [`Event`]s as metrics (see the [module](self) for the names),
/// into the global recorder or one of its own.
#[derive(Clone)]
pub struct MetricsListener {
    system: &'static str,
    key_label: bool,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl fmt::Debug for MetricsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsListener")
            .field("system", &self.system)
            .field("key_label", &self.key_label)
            .field("recorder", &self.recorder.is_some())
            .finish()
    }
}

impl MetricsListener {
    /// A listener whose `gen_ai.system` is `provider`'s (see
    /// [`system_name`]); keys are labelled.
    pub fn new(provider: Provider) -> Self {
        MetricsListener {
            system: system_name(provider),
            key_label: true,
            recorder: None,
        }
    }

    /// Records into `recorder` instead of the global one (default: the
    /// recorder installed with `metrics::set_global_recorder`): a gateway
    /// that serves its own scrape, stacks that must not mix their
    /// figures, tests.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Whether metrics carry the `llm.key` label (default `true`). Turn it
    /// off when keys are many (one per tenant) and a time series each
    /// would cost too much.
    pub fn key_label(mut self, yes: bool) -> Self {
        self.key_label = yes;
        self
    }

    /// A fresh [`Events`] handle that records every event with this
    /// listener (its [`Counters`](crate::events::Counters) still count).
    pub fn events(self) -> Events {
        Events::new().with_listener(move |event| self.record(event))
    }

    /// Describes every metric (unit and help text) to the listener's
    /// recorder; call it once, for exporters that show descriptions
    /// (Prometheus' `# HELP`).
    pub fn describe(&self) {
        match &self.recorder {
            Some(recorder) => ::metrics::with_local_recorder(&**recorder, describe),
            None => describe(),
        }
    }

    /// Records one event.
    pub fn record(&self, event: &Event<'_>) {
        match &self.recorder {
            Some(recorder) => {
                ::metrics::with_local_recorder(&**recorder, || self.record_now(event))
            }
            None => self.record_now(event),
        }
    }
}

/// Describes every metric to the recorder in force.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(TOKEN_USAGE, Unit::Count, "Input and output tokens used");
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "GenAI operation duration (one attempt)"
    );
    describe_histogram!(RATE_LIMIT_WAIT, Unit::Seconds, "Wait for the rate limiter");
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Requests waiting for the rate limiter"
    );
    describe_counter!(
        RATE_LIMITED_RESPONSES,
        Unit::Count,
        "Rate-limit answers of the provider"
    );
    describe_counter!(GATES_CLOSED, Unit::Count, "Retry-After gates closed");
    describe_gauge!(LIMIT, Unit::Count, "Limit learned from headers");
    describe_gauge!(
        QUOTA_REMAINING,
        Unit::Count,
        "Remaining quota the provider reported"
    );
    describe_counter!(QUOTA_EXHAUSTED, Unit::Count, "Quota-exhausted signals");
    describe_counter!(RETRIES, Unit::Count, "Retries scheduled");
    describe_counter!(
        RETRIES_GAVE_UP,
        Unit::Count,
        "Requests the retry layer gave up on"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        Unit::Count,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(CIRCUIT_TRIPS, Unit::Count, "Circuit breaker openings");
}

impl MetricsListener {
    fn record_now(&self, event: &Event<'_>) {
        match *event {
            Event::AttemptEnded {
                key,
                model,
                duration,
                class,
                usage,
            } => {
                let mut labels = self.labels(Some(key), model);
                if let Some(usage) = usage {
                    for (kind, n) in [
                        ("input", usage.input_tokens),
                        ("output", usage.output_tokens),
                    ] {
                        let mut labels = labels.clone();
                        labels.push(Label::from_static_parts("gen_ai.token.type", kind));
                        ::metrics::histogram!(TOKEN_USAGE, labels).record(n as f64);
                    }
                }
                push_class(&mut labels, class);
                ::metrics::histogram!(OPERATION_DURATION, labels).record(secs(duration));
            }
            Event::RateLimitWait { key, .. } => {
                ::metrics::gauge!(QUEUE_DEPTH, self.key_only(key)).increment(1.0);
            }
            Event::RateLimitAdmitted { key, model, waited } => {
                ::metrics::gauge!(QUEUE_DEPTH, self.key_only(key)).decrement(1.0);
                let labels = self.plain_labels(Some(key), model);
                ::metrics::histogram!(RATE_LIMIT_WAIT, labels).record(secs(waited));
            }
            Event::RateLimitWaitEnded { key, .. } => {
                ::metrics::gauge!(QUEUE_DEPTH, self.key_only(key)).decrement(1.0);
            }
            Event::RateLimitedResponse {
                key, model, class, ..
            } => {
                let mut labels = self.labels(Some(key), model);
                push_class(&mut labels, Some(class));
                ::metrics::counter!(RATE_LIMITED_RESPONSES, labels).increment(1);
            }
            Event::GateClosed { key, .. } => {
                ::metrics::counter!(GATES_CLOSED, self.key_only(key)).increment(1);
            }
            Event::LimitLearned {
                key,
                dimension,
                limit,
                remaining,
                ..
            } => {
                let labels = self.dimension_labels(key, dimension);
                ::metrics::gauge!(LIMIT, labels.clone()).set(limit as f64);
                if let Some(remaining) = remaining {
                    ::metrics::gauge!(QUOTA_REMAINING, labels).set(remaining as f64);
                }
            }
            Event::QuotaReported {
                key,
                dimension,
                remaining,
                ..
            } => {
                let labels = self.dimension_labels(key, dimension);
                ::metrics::gauge!(QUOTA_REMAINING, labels).set(remaining as f64);
            }
            Event::QuotaExhausted { key, .. } => {
                ::metrics::counter!(QUOTA_EXHAUSTED, self.key_only(key)).increment(1);
            }
            Event::RetryScheduled {
                key, model, class, ..
            } => {
                let mut labels = self.plain_labels(key, model);
                push_class(&mut labels, Some(class));
                ::metrics::counter!(RETRIES, labels).increment(1);
            }
            Event::RetryGaveUp { class, reason, .. } => {
                let labels = vec![
                    Label::from_static_parts("error.type", class.as_str()),
                    Label::from_static_parts("llm.reason", reason),
                ];
                ::metrics::counter!(RETRIES_GAVE_UP, labels).increment(1);
            }
            Event::GateWaitRefused { .. } => {}
            Event::CircuitTransition { key, to, class, .. } => {
                let state = match to {
                    CircuitState::Closed => 0.0,
                    CircuitState::HalfOpen => 1.0,
                    CircuitState::Open => 2.0,
                };
                ::metrics::gauge!(CIRCUIT_STATE, self.key_only(key)).set(state);
                if to == CircuitState::Open {
                    let mut labels = self.key_only(key);
                    push_class(&mut labels, class);
                    ::metrics::counter!(CIRCUIT_TRIPS, labels).increment(1);
                }
            }
        }
    }

    /// `gen_ai.system`, `llm.key` and `gen_ai.request.model`.
    fn labels(&self, key: Option<&Key>, model: Option<&str>) -> Vec<Label> {
        let mut labels = Vec::with_capacity(5);
        labels.push(Label::from_static_parts("gen_ai.system", self.system));
        self.push_key_model(&mut labels, key, model);
        labels
    }

    /// `llm.key` and `gen_ai.request.model`.
    fn plain_labels(&self, key: Option<&Key>, model: Option<&str>) -> Vec<Label> {
        let mut labels = Vec::with_capacity(3);
        self.push_key_model(&mut labels, key, model);
        labels
    }

    fn key_only(&self, key: &Key) -> Vec<Label> {
        self.plain_labels(Some(key), None)
    }

    fn dimension_labels(&self, key: &Key, dimension: &'static str) -> Vec<Label> {
        let mut labels = self.key_only(key);
        labels.push(Label::from_static_parts("llm.dimension", dimension));
        labels
    }

    fn push_key_model(&self, labels: &mut Vec<Label>, key: Option<&Key>, model: Option<&str>) {
        if let (true, Some(key)) = (self.key_label, key) {
            labels.push(Label::new("llm.key", key.to_string()));
        }
        if let Some(model) = model {
            labels.push(Label::new("gen_ai.request.model", model.to_owned()));
        }
    }
}

fn push_class(labels: &mut Vec<Label>, class: Option<ErrorClass>) {
    if let Some(class) = class {
        labels.push(Label::from_static_parts("error.type", class.as_str()));
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The `gen_ai.system` of a provider: the conventions' well-known value
/// where there is one (`openai`, `anthropic`, `az.ai.openai`,
/// `gcp.gemini`, `groq`), `openrouter` for OpenRouter, and `_OTHER` (the
/// conventions' value for an unknown system) for
/// [`Provider::Auto`] and [`Provider::Generic`].
///
/// ```
/// use tower_llm_resilience::metrics::system_name;
/// use tower_llm_resilience::Provider;
///
/// assert_eq!(system_name(Provider::Anthropic), "anthropic");
/// assert_eq!(system_name(Provider::Generic), "_OTHER");
/// ```
pub const fn system_name(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "openai",
        Provider::AzureOpenAi => "az.ai.openai",
        Provider::Anthropic => "anthropic",
        Provider::Gemini => "gcp.gemini",
        Provider::Groq => "groq",
        Provider::OpenRouter => "openrouter",
        Provider::Auto | Provider::Generic => "_OTHER",
    }
}
