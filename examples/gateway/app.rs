//! The gateway as an axum [`Router`]: every `/v1/...` request goes through
//! a per-tenant limiter, then the whole stack ([`LlmLayer`]: breaker,
//! retry, the provider's limiter) in front of the upstream.
//!
//! ```text
//! client ─▶ tenant quota ─▶ concurrency slot ─▶ CircuitBreaker ─▶ Retry ─▶ provider quota ─▶ upstream
//! ```
//!
//! - **Tenants** are told apart by their API key (`Authorization`) or by a
//!   header of the operator's choice, fingerprinted by the crate's
//!   [`ByHeader`] (HMAC under a per-process secret): neither is stored nor
//!   logged in clear. A request with neither is the anonymous tenant.
//!   The gateway does not authenticate them: a client that changes its
//!   key gets a new tenant quota, never more of the provider's (and a
//!   flood of made-up keys meets the tenant limiter's bound on keys, past
//!   which a new key is answered 429).
//! - **One provider quota** in front of the upstream, shared by all.
//! - **The upstream key** is the gateway's: the clients' credentials never
//!   cross (see [`upstream_headers`]).
//! - **Bodies**: a request body is read whole by the crate's
//!   [`BufferBodyLayer`], at most `max_body` bytes, into a `Full<Bytes>`
//!   (the retry layer replays it, the limiters estimate its tokens); a
//!   response body, streamed or not, passes through frame by frame, and
//!   holds its concurrency slot until it ends.
//! - **`GET /metrics`**: the provider level's metrics (the crate's
//!   `metrics` feature: tokens, attempt durations, waits, 429s, retries,
//!   breakers, quotas) in Prometheus' text format, from a recorder of the
//!   gateway's own (no global one is installed).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_llm_resilience::config::LlmConfig;
use tower_llm_resilience::events::Events;
use tower_llm_resilience::key::{ByHeader, Key, KeyFn};
use tower_llm_resilience::metrics::{self as llm_metrics, MetricsListener};
use tower_llm_resilience::rate_limit::{Limits, RateLimitLayer};
use tower_llm_resilience::retry::BufferBodyLayer;
use tower_llm_resilience::{Error, LlmLayer, Provider};

use crate::answer::{self, Level};
use crate::upstream::{client_headers, upstream_headers, Base, Permitted};

/// What the gateway needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The upstream's base URL, such as `https://api.openai.com/v1`.
    pub upstream: String,
    /// The gateway's key for the upstream (sent as `Authorization:
    /// Bearer ...`); `None` sends none.
    pub api_key: Option<String>,
    /// The provider's quota, shared by every tenant.
    pub limits: Limits,
    /// Each tenant's quota (no limit when empty).
    pub tenant_limits: Limits,
    /// Tells tenants apart by this header instead of `Authorization`.
    pub tenant_header: Option<HeaderName>,
    /// The longest a request waits for a quota (its tenant's or the
    /// provider's) before it is answered 429 with `Retry-After`.
    pub max_wait: Duration,
    /// Requests sent upstream at once (a stream counts until it ends);
    /// more wait for a slot.
    pub concurrency: usize,
    /// The largest request body read.
    pub max_body: usize,
    /// The stack's other settings (provider, retry, breaker, timeouts,
    /// per-model tables), from `--config`; `limits` and `max_wait` win.
    pub config: LlmConfig,
}

impl Settings {
    /// The gateway in front of `upstream` with the provider's `limits`,
    /// no tenant limit, a 30 s max wait, 64 requests at once and 16 MiB
    /// bodies.
    pub fn new(upstream: impl Into<String>, limits: Limits) -> Self {
        Settings {
            upstream: upstream.into(),
            api_key: None,
            limits,
            tenant_limits: Limits::new(),
            tenant_header: None,
            max_wait: Duration::from_secs(30),
            concurrency: 64,
            max_body: 16 << 20,
            config: LlmConfig::default(),
        }
    }
}

/// The gateway's router, the events its stack reports to (one summary
/// for the provider level, one for the tenants') and its answers so far.
#[derive(Debug)]
pub struct Gateway {
    pub router: Router,
    pub events: Events,
    pub tenant_events: Events,
    pub answers: Arc<Answers>,
}

/// How the gateway answered the `/v1/...` requests it read, by kind.
#[derive(Debug, Default)]
pub struct Answers {
    /// The upstream's answer (its headers arrived; a stream may still
    /// have broken after them).
    pub upstream: AtomicU64,
    /// 429: a tenant's quota.
    pub tenant_quota: AtomicU64,
    /// 429: the provider quota.
    pub provider_quota: AtomicU64,
    /// 503: the circuit breaker was open.
    pub circuit_open: AtomicU64,
    /// Any other error: the provider's, passed on after the retries it
    /// deserved, a failure before any response, or a bad request.
    pub other_errors: AtomicU64,
}

/// A request body as the stack holds it: read whole, cheap to clone.
type RequestBody = Full<Bytes>;

/// The whole stack, the client's request in (its body read by
/// [`BufferBodyLayer`]), response (or the stack's typed error) out.
type Stack = BoxCloneSyncService<http::Request<Body>, Response<Body>, Error>;

struct Shared {
    stack: Stack,
    base: Base,
    tenant: ByHeader,
    tenant_header: Option<HeaderName>,
    /// `Bearer <key>`, marked sensitive.
    authorization: Option<HeaderValue>,
    answers: Arc<Answers>,
    metrics: PrometheusHandle,
}

/// The tenant of a request, as [`forward`] fingerprinted it before it
/// dropped the client's credentials.
#[derive(Clone, Debug)]
struct Tenant(Key);

/// The tenant limiter's key: the request's [`Tenant`].
#[derive(Clone, Copy, Debug)]
struct ByTenant;

impl<B> KeyFn<http::Request<B>> for ByTenant {
    fn key(&self, request: &http::Request<B>) -> Key {
        request
            .extensions()
            .get::<Tenant>()
            .map_or(Key::DEFAULT, |t| t.0.clone())
    }
}

/// A failure below the tenant limiter: the provider level's, so that the
/// answer can say whose quota refused a request.
#[derive(Debug)]
struct Upstream(Error);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the provider level failed")
    }
}

impl std::error::Error for Upstream {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Builds the gateway. Fails on an upstream URL that is not an http(s)
/// URL, or a key that cannot be a header (the message never shows it).
pub fn gateway(settings: Settings) -> Result<Gateway, String> {
    let base = Base::parse(&settings.upstream)?;
    let authorization = match &settings.api_key {
        None => None,
        Some(key) => {
            let mut value = HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(|_| "the upstream key holds characters a header cannot".to_owned())?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, RequestBody>(https);
    // `max_wait` bounds every wait of a request in the gateway: the
    // provider quota's, and the retry layer's (a provider's Retry-After,
    // or the wait of a quota refusal, which it would otherwise sleep
    // through and try again).
    let provider = settings.config.provider.unwrap_or(Provider::Auto);
    let (metrics, listener) = prometheus(provider)?;
    let layer = settings
        .config
        .apply(LlmLayer::new(provider))
        .events(listener.events())
        .limits(settings.limits)
        .max_wait(settings.max_wait)
        .retry(|retry| retry.max_retry_after(settings.max_wait));
    let events = layer.events_handle().clone();
    let provider = layer.layer(client);

    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let upstream = tower::service_fn(move |request: http::Request<RequestBody>| {
        let (provider, slots) = (provider.clone(), slots.clone());
        async move {
            // never closed: the gateway holds it
            let permit = slots.acquire_owned().await.expect("the semaphore is open");
            match provider.oneshot(request).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    client_headers(&mut parts.headers);
                    Ok(Response::from_parts(parts, Permitted::new(body, permit)))
                }
                Err(e) => Err(Upstream(e)),
            }
        }
    });
    let tenant_events = Events::new();
    let tenants = RateLimitLayer::new(settings.tenant_limits)
        .key_fn(ByTenant)
        .max_wait(settings.max_wait)
        .events(tenant_events.clone())
        .layer(upstream);
    let stack =
        BufferBodyLayer::new(settings.max_body).layer(tenants.map_response(|r| r.map(Body::new)));
    let stack = BoxCloneSyncService::new(stack);

    let tenant = match &settings.tenant_header {
        Some(name) => ByHeader::new(name.clone()),
        None => ByHeader::api_key(),
    };
    let answers = Arc::new(Answers::default());
    let shared = Arc::new(Shared {
        stack,
        base,
        tenant,
        tenant_header: settings.tenant_header,
        authorization,
        answers: answers.clone(),
        metrics,
    });
    let router = Router::new()
        .route("/v1/{*path}", any(forward))
        .route("/metrics", get(scrape))
        .fallback(not_found)
        .with_state(shared);
    Ok(Gateway {
        router,
        events,
        tenant_events,
        answers,
    })
}

/// A Prometheus recorder of the gateway's own, with the GenAI
/// conventions' buckets, and the listener that records the stack's
/// events into it.
fn prometheus(provider: Provider) -> Result<(PrometheusHandle, MetricsListener), String> {
    let buckets = [
        (llm_metrics::TOKEN_USAGE, &llm_metrics::TOKEN_USAGE_BUCKETS),
        (
            llm_metrics::OPERATION_DURATION,
            &llm_metrics::DURATION_BUCKETS,
        ),
        (llm_metrics::RATE_LIMIT_WAIT, &llm_metrics::DURATION_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .map_err(|e| format!("cannot set the buckets of {name}: {e}"))?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let listener = MetricsListener::new(provider).recorder(Arc::new(recorder));
    listener.describe();
    Ok((handle, listener))
}

/// `GET /metrics`: the Prometheus text format.
async fn scrape(State(gw): State<Arc<Shared>>) -> Response<Body> {
    let mut response = Response::new(Body::from(gw.metrics.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Sends a client's `/v1/...` request through the stack to the upstream.
async fn forward(State(gw): State<Arc<Shared>>, request: Request) -> Response<Body> {
    let (answer, kind) = match send(&gw, request).await {
        Ok(response) => (response, &gw.answers.upstream),
        Err(Refused::Quota(answer, Level::Tenant)) => (answer, &gw.answers.tenant_quota),
        Err(Refused::Quota(answer, Level::Provider)) => (answer, &gw.answers.provider_quota),
        Err(Refused::CircuitOpen(answer)) => (answer, &gw.answers.circuit_open),
        Err(Refused::Other(answer)) => (answer, &gw.answers.other_errors),
    };
    kind.fetch_add(1, Relaxed);
    answer
}

/// The answer to a request that failed, by why.
enum Refused {
    Quota(Response<Body>, Level),
    CircuitOpen(Response<Body>),
    Other(Response<Body>),
}

async fn send(gw: &Shared, mut request: Request) -> Result<Response<Body>, Refused> {
    let tenant = gw.tenant.key(&request);
    let rest = request.uri().path().strip_prefix("/v1").unwrap_or_default();
    let Some(uri) = gw.base.join(rest, request.uri().query()) else {
        let message = "the request's path cannot continue the upstream's base URL";
        let answer = answer::ours(StatusCode::BAD_REQUEST, "invalid_path", message);
        return Err(Refused::Other(answer));
    };
    *request.uri_mut() = uri;
    upstream_headers(
        request.headers_mut(),
        gw.tenant_header.as_ref(),
        gw.authorization.as_ref(),
    );
    request.extensions_mut().insert(Tenant(tenant));
    gw.stack.clone().oneshot(request).await.map_err(|e| {
        let upstream = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Upstream>());
        let (error, level) = match upstream {
            Some(Upstream(inner)) => (inner, Level::Provider),
            None => (&e, Level::Tenant),
        };
        let answer = answer::from_error(error, level);
        if error.is_circuit_open() {
            Refused::CircuitOpen(answer)
        } else if answer::is_quota_wait(error) {
            Refused::Quota(answer, level)
        } else {
            Refused::Other(answer)
        }
    })
}

async fn not_found(request: Request) -> Response<Body> {
    let message = format!(
        "the gateway serves /v1/... only, not {}",
        request.uri().path()
    );
    answer::ours(StatusCode::NOT_FOUND, "not_found", &message)
}
