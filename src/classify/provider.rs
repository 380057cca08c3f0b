use std::cell::OnceCell;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::body::parse_error_body;
use super::classifier::wall_clock;
use super::scan::Scan;
use super::{classify_grpc, Classification, Classifier, ErrorClass, ReportedLimit};
use crate::rate_limit::OutputCharge;

/// The AI providers whose signals this crate knows, as a [`Classifier`].
///
/// Every profile but [`Generic`](Self::Generic) reads every provider's
/// signals (OpenAI's `x-ratelimit-*` and `retry-after-ms`, Azure's
/// `x-ms-retry-after-ms`, Anthropic's `anthropic-ratelimit-*`, Gemini's
/// `RetryInfo`, every known error code): their names do not collide, and
/// gateways and OpenAI-compatible servers mix them. The profile names the
/// provider in [`Classification::provider`] and tells the limiter which
/// window a provider's headers describe (see
/// [`request_limit_window`](Self::request_limit_window)).
/// [`Auto`](Self::Auto), the default, detects the provider from each
/// response's headers where they are unambiguous. Every profile, also
/// [`Generic`](Self::Generic), reads gRPC's `grpc-status` in the headers
/// ([`classify_grpc`]), which then decides over the HTTP status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// Detect from the response's headers (see [`Provider::detect`]); read
    /// every provider's signals.
    #[default]
    Auto,
    /// OpenAI, and OpenAI-compatible servers such as vLLM, LiteLLM, Ollama.
    OpenAi,
    /// Azure OpenAI (deployments; `x-ms-retry-after-ms`, remaining `-1`).
    AzureOpenAi,
    /// Anthropic (`anthropic-ratelimit-*` with RFC 3339 resets, 529).
    Anthropic,
    /// Google Gemini API (`RESOURCE_EXHAUSTED` with `RetryInfo` and
    /// `QuotaFailure`).
    Gemini,
    /// Groq (OpenAI-style headers; `x-ratelimit-*-requests` counts per day).
    Groq,
    /// OpenRouter (OpenAI-style; 402 when credits run out).
    OpenRouter,
    /// Any HTTP server: status codes, `Retry-After` and the IETF `RateLimit`
    /// fields only, no provider-specific headers or bodies.
    Generic,
}

/// [`Provider`] from its name, case ignored: `auto`, `openai`,
/// `azure` (or `azure-openai`), `anthropic`, `gemini`, `groq`,
/// `openrouter`, `generic`; for configuration files and command lines.
///
/// ```
/// use tower_llm_resilience::Provider;
///
/// assert_eq!("Anthropic".parse(), Ok(Provider::Anthropic));
/// assert_eq!("azure-openai".parse(), Ok(Provider::AzureOpenAi));
/// let error = "open-ai".parse::<Provider>().unwrap_err();
/// assert!(error.to_string().contains("openai"), "{error}");
/// ```
impl std::str::FromStr for Provider {
    type Err = ParseProviderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        Ok(match name.as_str() {
            "auto" => Provider::Auto,
            "openai" | "openai-compatible" => Provider::OpenAi,
            "azure" | "azure-openai" | "azureopenai" => Provider::AzureOpenAi,
            "anthropic" => Provider::Anthropic,
            "gemini" | "google" => Provider::Gemini,
            "groq" => Provider::Groq,
            "openrouter" => Provider::OpenRouter,
            "generic" => Provider::Generic,
            _ => return Err(ParseProviderError(s.to_owned())),
        })
    }
}

/// A provider name [`Provider::from_str`](std::str::FromStr) does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseProviderError(String);

impl std::fmt::Display for ParseProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is not a provider: auto, openai, azure, anthropic, gemini, groq, openrouter or generic",
            self.0
        )
    }
}

impl std::error::Error for ParseProviderError {}

impl Provider {
    /// The provider a response's headers name, when they are unambiguous:
    /// `anthropic-*` rate-limit or organisation headers, Azure's `x-ms-*` /
    /// `apim-request-id`, OpenAI's `openai-*`, Groq's `x-groq-region`.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_llm_resilience::classify::Provider;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("openai-processing-ms", "120".parse().unwrap());
    /// assert_eq!(Provider::detect(&headers), Some(Provider::OpenAi));
    /// assert_eq!(Provider::detect(&HeaderMap::new()), None);
    /// ```
    pub fn detect(headers: &HeaderMap) -> Option<Provider> {
        Scan::new(headers).detected()
    }

    /// The window the provider's `requests` limit header describes, when it
    /// is known and not simply "until reset": Groq reports requests per day.
    /// `None` means the header does not say; learn the window from the
    /// reset time or use the configured one.
    pub const fn request_limit_window(self) -> Option<Duration> {
        match self {
            Provider::Groq => Some(Duration::from_secs(24 * 60 * 60)),
            _ => None,
        }
    }

    /// The profile's name in snake_case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::OpenAi => "openai",
            Provider::AzureOpenAi => "azure_openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Groq => "groq",
            Provider::OpenRouter => "openrouter",
            Provider::Generic => "generic",
        }
    }

    /// Classifies with `now` as the wall-clock time used for absolute dates
    /// when the response has no `Date` header. [`Classifier::classify`] uses
    /// the system clock; this form makes tests deterministic.
    pub fn classify_at(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Classification {
        self.classify_with(status, headers, body, &|| now)
    }

    fn classify_with(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        clock: &dyn Fn() -> SystemTime,
    ) -> Classification {
        let mut c = Classification::success().with_status(status);
        let mut grpc = None;
        if !headers.is_empty() {
            let scan = Scan::new(headers);
            if scan.grpc {
                grpc = classify_grpc(headers);
            }
            let date = OnceCell::new();
            let now = || *date.get_or_init(|| scan.now(clock));
            c.provider = match self {
                Provider::Auto => scan.detected(),
                named => Some(named),
            };
            if self == Provider::Generic {
                c.retry_after = scan.rfc_retry_after(&now);
                scan.ietf(&mut c.limits);
            } else {
                c.retry_after = scan.retry_after(&now);
                c.limits = scan.rate_limits(&now);
                c.should_retry = scan.should_retry();
            }
        } else if self != Provider::Auto {
            c.provider = Some(self);
        }
        if let Some(g) = grpc {
            // gRPC's status is more precise than the HTTP status (a 200, or
            // a proxy's): it decides, with its pushback as the wait.
            c.class = g.class;
            c.code = g.code;
            c.retry_after = g.retry_after.or(c.retry_after);
            c.should_retry = g.should_retry.or(c.should_retry);
            return c;
        }
        let Some(by_status) = ErrorClass::from_status(status) else {
            return c; // success
        };
        let mut class = by_status;
        if self != Provider::Generic {
            if let Some(found) = body.map(parse_error_body) {
                if let Some(by_body) = found.class {
                    // A specific code decides; a generic one (a gRPC status,
                    // `invalid_request_error`) only fills in for an
                    // unknown status.
                    if found.is_specific() || by_status == ErrorClass::Other {
                        class = by_body;
                    }
                    c.code = found.code;
                }
                if c.retry_after.is_none() {
                    c.retry_after = found.retry_delay;
                }
            }
        }
        c.class = Some(class);
        if class == ErrorClass::RateLimited && c.retry_after.is_none() {
            c.retry_after = exhausted_reset(&c);
        }
        c
    }
}

/// For a 429 without `Retry-After`: the latest reset among the dimensions
/// the headers report as exhausted.
fn exhausted_reset(c: &Classification) -> Option<Duration> {
    let l = &c.limits;
    [l.requests, l.tokens, l.input_tokens, l.output_tokens]
        .into_iter()
        .flatten()
        .filter(|s: &ReportedLimit| s.remaining == Some(0))
        .filter_map(|s| s.reset)
        .max()
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Classifier for Provider {
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        self.classify_with(status, headers, body, &wall_clock)
    }

    /// Anthropic and Gemini count the real output tokens
    /// ([`OutputCharge::Actual`]); OpenAI and the OpenAI-style providers
    /// charge the declared `max_tokens` ([`OutputCharge::Declared`]);
    /// [`Provider::Auto`] asks the headers ([`Provider::detect`]) and
    /// otherwise takes the safe side, `Declared`.
    fn output_charge(&self, headers: &HeaderMap) -> OutputCharge {
        let provider = match self {
            Provider::Auto => Provider::detect(headers),
            named => Some(*named),
        };
        match provider {
            Some(Provider::Anthropic | Provider::Gemini) => OutputCharge::Actual,
            _ => OutputCharge::Declared,
        }
    }
}
