//! The stack's settings from a file (feature `config`): limits, retry,
//! breaker and the stack's own settings, per-model limit tables, read from
//! TOML with environment overrides, every mistake a [`ConfigError`] that
//! names the field.
//!
//! ```toml
//! provider = "openai"            # auto, openai, azure, anthropic, gemini, groq, openrouter, generic
//!
//! [limits]                       # the key's limits; `window` replaces the minute
//! rpm = 500
//! tpm = 200_000
//! rpd = 10_000
//!
//! [models."gpt-4o"]              # per-model tables (see `LlmConfig::model_limits`)
//! rpm = 500
//! tpm = 30_000
//!
//! [retry]
//! max_attempts = 4
//! base = "500ms"
//! cap = "8s"
//! jitter = "equal"               # none, full, equal, decorrelated
//!
//! [breaker]
//! failure_rate = 0.5
//! open_duration = "10s"
//!
//! [stack]
//! attempt_timeout = "10m"
//! max_wait = "5m"
//! ```
//!
//! Every field is optional: what a file does not say keeps the crate's
//! default. Unknown fields are errors (a typo must not be a silent
//! default), and so are values the builders would quietly clamp: a limit
//! of 0, a rate outside (0, 1], a factor below 1.
//!
//! # Environment overrides
//!
//! [`LlmConfig::from_toml_with_env`] applies variables named
//! `PREFIX__SECTION__FIELD` (double underscores between the parts, case
//! ignored): `TLR__LIMITS__RPM=600`, `TLR__STACK__MAX_WAIT=30s`,
//! `TLR__PROVIDER=anthropic`. A value is read as a TOML value when it is
//! one (`600`, `true`, `0.5`), else as a string (`30s`).
//!
//! ```
//! use tower_llm_resilience::config::LlmConfig;
//!
//! let file = r#"
//!     provider = "openai"
//!     [limits]
//!     rpm = 500
//!     tpm = 200_000
//! "#;
//! let env = [("TLR__LIMITS__RPM", "600"), ("HOME", "/root")];
//! let config = LlmConfig::from_toml_with_env(file, "TLR", env).unwrap();
//! assert_eq!(config.limits.rpm, Some(600));
//!
//! let error = LlmConfig::from_toml("[limits]\nrpm = -1").unwrap_err();
//! assert_eq!(error.path(), "limits.rpm");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::circuit_breaker::{self, CircuitBreakerLayer, FailureWindow};
use crate::classify::Provider;
use crate::key::KeyFn;
use crate::rate_limit::{Dimension, Limits};
use crate::retry::{Backoff, Jitter, RetryLayer};
use crate::stack::LlmLayer;

#[cfg(test)]
mod tests;

/// A setting that is wrong, and where: the dotted path of the field
/// (`limits.rpm`, `models.gpt-4o.tpm`, `breaker.failure_rate`) and what
/// is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the field (empty for the file as a whole: a TOML
    /// syntax error).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration at `{}`: {}",
                self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole file: the provider, its limits, per-model limits, and the
/// layers' settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LlmConfig {
    /// The provider profile (default [`Provider::Auto`]).
    #[serde(default, deserialize_with = "provider")]
    pub provider: Option<Provider>,
    /// The limits of every key (unless `models` names its model).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Limits per model name, for a key function that keys by model.
    #[serde(default)]
    pub models: BTreeMap<String, LimitsConfig>,
    /// The retry layer.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The stack's own settings.
    #[serde(default)]
    pub stack: StackConfig,
}

/// One key's limits. `rpm`, `tpm`, `input_tpm` and `output_tpm` count over
/// `window` (default one minute: give the provider's own window), `rpd`
/// and `tpd` over a day.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens (input and output) per window.
    pub tpm: Option<u64>,
    /// Input tokens per window (Anthropic).
    pub input_tpm: Option<u64>,
    /// Output tokens per window (Anthropic).
    pub output_tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
    /// The window of the per-minute limits (default 60 s).
    #[serde(default, deserialize_with = "duration")]
    pub window: Option<Duration>,
}

/// The retry layer's settings ([`RetryLayer`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all, for every class but rate limits (at least 1).
    pub max_attempts: Option<u32>,
    /// The first backoff.
    #[serde(default, deserialize_with = "duration")]
    pub base: Option<Duration>,
    /// The longest backoff.
    #[serde(default, deserialize_with = "duration")]
    pub cap: Option<Duration>,
    /// The backoff's growth per retry (at least 1).
    pub factor: Option<f64>,
    /// `none`, `full`, `equal` or `decorrelated`.
    #[serde(default, deserialize_with = "jitter")]
    pub jitter: Option<Jitter>,
    /// The longest server-given wait honoured; above it the request fails.
    #[serde(default, deserialize_with = "duration")]
    pub max_retry_after: Option<Duration>,
    /// The whole time a request may take, retries included.
    #[serde(default, deserialize_with = "duration")]
    pub deadline: Option<Duration>,
    /// Seeds the jitter (for reproducible runs).
    pub seed: Option<u64>,
}

/// The circuit breaker's settings ([`circuit_breaker::Config`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// The failure rate that opens it, in (0, 1].
    pub failure_rate: Option<f64>,
    /// The slow-call rate that opens it, in (0, 1].
    pub slow_call_rate: Option<f64>,
    /// What counts as a slow call.
    #[serde(default, deserialize_with = "duration")]
    pub slow_call_duration: Option<Duration>,
    /// A window of the last N calls (give this or `window_time`).
    pub window_calls: Option<u32>,
    /// A window of the calls in the last span of time.
    #[serde(default, deserialize_with = "duration")]
    pub window_time: Option<Duration>,
    /// The calls a window needs before a rate counts.
    pub minimum_calls: Option<u32>,
    /// How long it stays open.
    #[serde(default, deserialize_with = "duration")]
    pub open_duration: Option<Duration>,
    /// The open duration's growth on repeated trips (at least 1), with
    /// `open_backoff_max`.
    pub open_backoff_factor: Option<f64>,
    /// The longest open duration the growth reaches.
    #[serde(default, deserialize_with = "duration")]
    pub open_backoff_max: Option<Duration>,
    /// Calls let through half-open.
    pub half_open_probes: Option<u32>,
    /// How long a probe may take before it counts as failed.
    #[serde(default, deserialize_with = "duration")]
    pub probe_timeout: Option<Duration>,
    /// Whether 429s count as failures.
    pub count_rate_limited: Option<bool>,
    /// How long it opens on quota exhaustion without a reset.
    #[serde(default, deserialize_with = "duration")]
    pub quota_open_duration: Option<Duration>,
    /// How long it opens on an invalid key (401).
    #[serde(default, deserialize_with = "duration")]
    pub auth_open_duration: Option<Duration>,
    /// The longest any trip stays open.
    #[serde(default, deserialize_with = "duration")]
    pub max_trip_open: Option<Duration>,
}

/// The stack's own settings ([`LlmLayer`]).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StackConfig {
    /// The longest a request waits for the limiter.
    #[serde(default, deserialize_with = "duration")]
    pub max_wait: Option<Duration>,
    /// The longest a request waits on a key's Retry-After gate.
    #[serde(default, deserialize_with = "duration")]
    pub max_gate_wait: Option<Duration>,
    /// How long one attempt may wait for the response's headers.
    #[serde(default, deserialize_with = "duration")]
    pub attempt_timeout: Option<Duration>,
    /// How long a response body may stay silent between frames.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// How much longer than its window each admission counts.
    #[serde(default, deserialize_with = "duration")]
    pub arrival_margin: Option<Duration>,
    /// How long a limit learned from headers holds.
    #[serde(default, deserialize_with = "duration")]
    pub learned_ttl: Option<Duration>,
    /// Whether headers may raise limits, not only lower them.
    pub learn_limits: Option<bool>,
    /// Whether input estimates are scaled by the usage reported.
    pub calibrate_estimates: Option<bool>,
}

impl LlmConfig {
    /// Reads a TOML file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let value: toml::Value = text
            .parse::<toml::Table>()
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::new("", e.message().to_owned()))?;
        Self::from_value(value)
    }

    /// Reads a TOML file's text, then applies the overrides among `env`
    /// (pass `std::env::vars()`) named `PREFIX__SECTION__FIELD` (see the
    /// [module docs](self#environment-overrides)).
    pub fn from_toml_with_env<I, N, V>(
        text: &str,
        prefix: &str,
        env: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::new("", e.message().to_owned()))?;
        let head = format!("{}__", prefix.to_ascii_lowercase());
        for (name, value) in env {
            let name = name.as_ref().to_ascii_lowercase();
            let Some(path) = name.strip_prefix(&head) else {
                continue;
            };
            let parts: Vec<&str> = path.split("__").collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::new(
                    parts.join("."),
                    format!(
                        "the variable `{}` names an empty field",
                        name.to_ascii_uppercase()
                    ),
                ));
            }
            set(&mut table, &parts, env_value(value.as_ref()))?;
        }
        Self::from_value(toml::Value::Table(table))
    }

    fn from_value(value: toml::Value) -> Result<Self, ConfigError> {
        let config: LlmConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        config.check()?;
        Ok(config)
    }

    /// Every value the builders would clamp or ignore is an error here.
    fn check(&self) -> Result<(), ConfigError> {
        self.limits.check("limits")?;
        for (model, limits) in &self.models {
            limits.check(&format!("models.{model}"))?;
        }
        self.retry.check()?;
        self.breaker.check()
    }

    /// The limits of a key whose model `models` does not name.
    pub fn limits(&self) -> Limits {
        self.limits.to_limits()
    }

    /// The per-model limit tables, each model's own limits over the file's
    /// `[limits]` (a model's table replaces only the fields it sets).
    pub fn model_limits(&self) -> impl Iterator<Item = (&str, Limits)> + '_ {
        self.models
            .iter()
            .map(|(name, own)| (name.as_str(), own.over(&self.limits).to_limits()))
    }

    /// The circuit breaker's configuration.
    pub fn breaker_config(&self) -> circuit_breaker::Config {
        self.breaker.to_config()
    }

    /// Applies the retry settings to a retry layer.
    pub fn apply_retry<C>(&self, layer: RetryLayer<C>) -> RetryLayer<C> {
        self.retry.apply(layer)
    }

    /// The whole stack, [`LlmLayer`], with these settings.
    pub fn layer(&self) -> LlmLayer {
        self.apply(LlmLayer::new(self.provider.unwrap_or_default()))
    }

    /// Applies these settings (all but the provider) to a stack built
    /// elsewhere, e.g. with its own key function.
    pub fn apply<K, C, St>(&self, layer: LlmLayer<K, C, St>) -> LlmLayer<K, C, St>
    where
        K: KeyFn<http::Request<String>> + Clone,
    {
        let s = &self.stack;
        let mut layer = layer
            .limits(self.limits())
            .retry(|r| self.retry.apply(r))
            .circuit_breaker(|b: CircuitBreakerLayer<K, C>| b.config(self.breaker.to_config()));
        if let Some(d) = s.max_wait {
            layer = layer.max_wait(d);
        }
        if let Some(d) = s.max_gate_wait {
            layer = layer.max_gate_wait(d);
        }
        if let Some(d) = s.attempt_timeout {
            layer = layer.attempt_timeout(d);
        }
        if let Some(d) = s.idle_timeout {
            layer = layer.idle_timeout(d);
        }
        if let Some(d) = s.arrival_margin {
            layer = layer.arrival_margin(d);
        }
        if let Some(d) = s.learned_ttl {
            layer = layer.learned_ttl(d);
        }
        if let Some(yes) = s.learn_limits {
            layer = layer.learn_limits(yes);
        }
        if let Some(yes) = s.calibrate_estimates {
            layer = layer.calibrate_estimates(yes);
        }
        layer
    }
}

impl LimitsConfig {
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        let fields = [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("input_tpm", self.input_tpm),
            ("output_tpm", self.output_tpm),
            ("rpd", self.rpd),
            ("tpd", self.tpd),
        ];
        for (name, value) in fields {
            if value == Some(0) {
                return Err(ConfigError::new(
                    format!("{at}.{name}"),
                    "a limit of 0 would refuse every request; leave the field out for no limit",
                ));
            }
        }
        if self.window.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::new(
                format!("{at}.window"),
                "a window must be longer than 0",
            ));
        }
        Ok(())
    }

    /// `self`'s fields, and `base`'s where `self` has none.
    fn over(&self, base: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            rpm: self.rpm.or(base.rpm),
            tpm: self.tpm.or(base.tpm),
            input_tpm: self.input_tpm.or(base.input_tpm),
            output_tpm: self.output_tpm.or(base.output_tpm),
            rpd: self.rpd.or(base.rpd),
            tpd: self.tpd.or(base.tpd),
            window: self.window.or(base.window),
        }
    }

    /// The [`Limits`] these fields describe.
    pub fn to_limits(&self) -> Limits {
        let window = self.window.unwrap_or(Duration::from_secs(60));
        let day = Duration::from_secs(24 * 3600);
        let limits = [
            (Dimension::Requests, window, self.rpm),
            (Dimension::Tokens, window, self.tpm),
            (Dimension::InputTokens, window, self.input_tpm),
            (Dimension::OutputTokens, window, self.output_tpm),
            (Dimension::Requests, day, self.rpd),
            (Dimension::Tokens, day, self.tpd),
        ];
        limits
            .into_iter()
            .fold(Limits::new(), |limits, (dimension, window, n)| match n {
                Some(n) => limits.window(dimension, window, n),
                None => limits,
            })
    }
}

impl RetryConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_attempts == Some(0) {
            return Err(ConfigError::new(
                "retry.max_attempts",
                "at least 1 (the first attempt)",
            ));
        }
        if let Some(f) = self.factor.filter(|f| !(f.is_finite() && *f >= 1.0)) {
            return Err(ConfigError::new(
                "retry.factor",
                format!("{f} is not a growth factor (at least 1)"),
            ));
        }
        if let (Some(base), Some(cap)) = (self.base, self.cap) {
            if base > cap {
                return Err(ConfigError::new(
                    "retry.cap",
                    format!("{cap:?} is below `base` ({base:?})"),
                ));
            }
        }
        Ok(())
    }

    fn apply<C>(&self, mut layer: RetryLayer<C>) -> RetryLayer<C> {
        if let Some(n) = self.max_attempts {
            layer = layer.max_attempts(n);
        }
        if self.base.is_some()
            || self.cap.is_some()
            || self.factor.is_some()
            || self.jitter.is_some()
        {
            let default = Backoff::default();
            let mut backoff = Backoff::new(
                self.base.unwrap_or(default.base()),
                self.cap.unwrap_or(default.cap()),
            );
            if let Some(f) = self.factor {
                backoff = backoff.factor(f);
            }
            if let Some(j) = self.jitter {
                backoff = backoff.jitter(j);
            }
            layer = layer.backoff(backoff);
        }
        if let Some(d) = self.max_retry_after {
            layer = layer.max_retry_after(d);
        }
        if let Some(d) = self.deadline {
            layer = layer.deadline(d);
        }
        if let Some(seed) = self.seed {
            layer = layer.seed(seed);
        }
        layer
    }
}

impl BreakerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("slow_call_rate", self.slow_call_rate),
        ] {
            if let Some(r) = rate.filter(|r| !(*r > 0.0 && *r <= 1.0)) {
                return Err(ConfigError::new(
                    format!("breaker.{name}"),
                    format!("{r} is not a rate in (0, 1]"),
                ));
            }
        }
        if self.window_calls.is_some() && self.window_time.is_some() {
            return Err(ConfigError::new(
                "breaker.window_time",
                "give `window_calls` or `window_time`, not both",
            ));
        }
        if self.window_calls == Some(0) || self.window_time.is_some_and(|d| d.is_zero()) {
            let name = if self.window_calls.is_some() {
                "window_calls"
            } else {
                "window_time"
            };
            return Err(ConfigError::new(
                format!("breaker.{name}"),
                "an empty window",
            ));
        }
        if let Some(f) = self
            .open_backoff_factor
            .filter(|f| !(f.is_finite() && *f >= 1.0))
        {
            return Err(ConfigError::new(
                "breaker.open_backoff_factor",
                format!("{f} is not a growth factor (at least 1)"),
            ));
        }
        if self.half_open_probes == Some(0) {
            return Err(ConfigError::new(
                "breaker.half_open_probes",
                "at least 1: a breaker with no probe would never close",
            ));
        }
        Ok(())
    }

    /// The [`circuit_breaker::Config`] these fields describe.
    pub fn to_config(&self) -> circuit_breaker::Config {
        let mut c = circuit_breaker::Config::new();
        if let Some(r) = self.failure_rate {
            c = c.failure_rate(r);
        }
        if let Some(r) = self.slow_call_rate {
            c = c.slow_call_rate(r);
        }
        if let Some(d) = self.slow_call_duration {
            c = c.slow_call_duration(d);
        }
        if let Some(n) = self.window_calls {
            c = c.window(FailureWindow::Count(n));
        }
        if let Some(d) = self.window_time {
            c = c.window(FailureWindow::Time(d));
        }
        if let Some(n) = self.minimum_calls {
            c = c.minimum_calls(n);
        }
        if let Some(d) = self.open_duration {
            c = c.open_duration(d);
        }
        if self.open_backoff_factor.is_some() || self.open_backoff_max.is_some() {
            let max = self.open_backoff_max.unwrap_or(Duration::from_secs(600));
            c = c.open_backoff(self.open_backoff_factor.unwrap_or(2.0), max);
        }
        if let Some(n) = self.half_open_probes {
            c = c.half_open_probes(n);
        }
        if let Some(d) = self.probe_timeout {
            c = c.probe_timeout(d);
        }
        if let Some(yes) = self.count_rate_limited {
            c = c.count_rate_limited(yes);
        }
        if let Some(d) = self.quota_open_duration {
            c = c.quota_open_duration(d);
        }
        if let Some(d) = self.auth_open_duration {
            c = c.auth_open_duration(d);
        }
        if let Some(d) = self.max_trip_open {
            c = c.max_trip_open(d);
        }
        c
    }
}

/// Sets `parts` (a path of lowercased names) in `table` to `value`,
/// making the tables on the way.
fn set(table: &mut toml::Table, parts: &[&str], value: toml::Value) -> Result<(), ConfigError> {
    let (last, on_the_way) = parts.split_last().expect("a path has a part");
    let mut here = table;
    for (i, part) in on_the_way.iter().enumerate() {
        let entry = here
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = entry.as_table_mut().ok_or_else(|| {
            ConfigError::new(
                parts[..=i].join("."),
                "an override names a field inside a value",
            )
        })?;
    }
    here.insert((*last).to_owned(), value);
    Ok(())
}

/// An environment value as TOML when it is one, else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// A duration as a humantime string (`"500ms"`, `"1m 30s"`) or a number of
/// seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => humantime::parse_duration(&s).map(Some).map_err(|e| {
            de::Error::custom(format!(
                "`{s}` is not a duration ({e}): write \"500ms\", \"30s\", \"1m 30s\""
            ))
        }),
        Raw::Seconds(s) => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{s} is not a number of seconds"))),
    }
}

fn provider<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Provider>, D::Error> {
    let s = String::deserialize(d)?;
    Provider::from_str(&s).map(Some).map_err(de::Error::custom)
}

fn jitter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Jitter>, D::Error> {
    let s = String::deserialize(d)?;
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(Some(Jitter::None)),
        "full" => Ok(Some(Jitter::Full)),
        "equal" => Ok(Some(Jitter::Equal)),
        "decorrelated" => Ok(Some(Jitter::Decorrelated)),
        _ => Err(de::Error::custom(format!(
            "`{s}` is not a jitter: none, full, equal or decorrelated"
        ))),
    }
}
