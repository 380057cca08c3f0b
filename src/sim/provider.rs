use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::time::Instant;
use tower::Service;

use super::config::{Config, Fault, SimProviderBuilder, Style};
use super::format::{self, ceil_ms, ceil_secs, count_tokens, go_duration, rfc3339_ceil};
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

/// What the provider did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// A completion (possibly slowed by [`Fault::Slow`]).
    Completed,
    /// 429 over the requests-per-window limit.
    RateLimitedRequests,
    /// 429 over the tokens-per-window limit (or larger than the window).
    RateLimitedTokens,
    /// `insufficient_quota` (after [`SimProviderBuilder::quota_after`]).
    QuotaExhausted,
    /// 503 inside the outage window.
    Outage,
    /// An injected fault other than [`Fault::Slow`].
    Fault(Fault),
    /// 400 / 404 / 405 / 413: the request was not a valid completion call.
    Invalid,
}

/// One request as the provider saw and answered it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Served {
    /// Arrival order, from 0.
    pub seq: u64,
    /// When it arrived, after the provider was built.
    pub at: Duration,
    /// What the provider did.
    pub outcome: Verdict,
    /// The status sent; `None` when the connection was reset.
    pub status: Option<StatusCode>,
    /// Prompt tokens counted (see [`count_tokens`](super::count_tokens)).
    pub prompt_tokens: u64,
    /// Completion tokens served (0 unless completed).
    pub completion_tokens: u64,
    /// Tokens charged against the window at admission (prompt plus
    /// `max_tokens`; 0 unless admitted).
    pub charged_tokens: u64,
    /// The label served (`Some` only when completed; for a batched prompt,
    /// the first of [`labels`](Self::labels)).
    pub label: Option<&'static str>,
    /// Every label served, in order: one for a plain prompt, one per text
    /// for a batched prompt ([`batched_texts`](super::batched_texts)); empty
    /// unless completed.
    pub labels: Vec<&'static str>,
    /// The client's `x-request-id` or `idempotency-key` header, if any.
    pub client_request_id: Option<String>,
    /// The text that was labelled (see [`text_of_prompt`](super::text_of_prompt)).
    pub text: String,
}

/// Counters of everything the provider answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests received.
    pub requests: u64,
    /// Completions served.
    pub completed: u64,
    /// 429s for the requests limit.
    pub rate_limited_requests: u64,
    /// 429s for the tokens limit.
    pub rate_limited_tokens: u64,
    /// `insufficient_quota` answers.
    pub quota_exhausted: u64,
    /// 503s of the outage window.
    pub outage: u64,
    /// Injected 500s.
    pub server_errors: u64,
    /// Injected 503 `server_is_overloaded`.
    pub unavailable: u64,
    /// Injected 529s.
    pub overloaded: u64,
    /// Injected connection resets.
    pub resets: u64,
    /// Slowed completions.
    pub slow: u64,
    /// Injected 401s.
    pub invalid_api_key: u64,
    /// Invalid requests (bad path, method or body).
    pub invalid: u64,
    /// Tokens admitted into the window in total.
    pub tokens_admitted: u64,
}

impl SimStats {
    /// All 429s sent for rate limits (not quota).
    pub const fn rate_limited(&self) -> u64 {
        self.rate_limited_requests + self.rate_limited_tokens
    }
}

struct State {
    requests: Window,
    tokens: Window,
    rng: StdRng,
    seq: u64,
    stats: SimStats,
    log: Vec<Served>,
    series: Vec<(Duration, u64)>,
}

/// What to send, decided under the lock, sent after it.
struct Decision {
    delay: Duration,
    answer: Result<Response<Full<Bytes>>, io::Error>,
}

enum Endpoint {
    Chat,
    Messages,
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

    fn wall(&self, now: Instant) -> SystemTime {
        self.config.wall_clock + now.saturating_duration_since(self.epoch)
    }

    async fn handle<B>(self, request: Request<B>) -> Result<Response<Full<Bytes>>, io::Error>
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
        let decision = self.decide(arrival, &parts, body);
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        decision.answer
    }

    fn decide(
        &self,
        now: Instant,
        parts: &http::request::Parts,
        body: Result<Bytes, BoxError>,
    ) -> Decision {
        let cfg = &*self.config;
        let mut st = self.lock();
        let st = &mut *st;
        let seq = st.seq;
        st.seq += 1;
        st.stats.requests += 1;
        // one draw per request, whatever happens to it: the same arrival
        // order gives the same faults
        let draw: f64 = st.rng.random();
        let client_request_id = ["x-request-id", "idempotency-key"]
            .iter()
            .find_map(|h| parts.headers.get(*h)?.to_str().ok())
            .map(str::to_owned);
        let mut served = Served {
            seq,
            at: now.saturating_duration_since(self.epoch),
            outcome: Verdict::Invalid,
            status: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            charged_tokens: 0,
            label: None,
            labels: Vec::new(),
            client_request_id,
            text: String::new(),
        };
        let wall = self.wall(now);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::DATE, header(httpdate::fmt_http_date(wall)));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let id_header = match cfg.style {
            Style::OpenAi => "x-request-id",
            Style::Anthropic => "request-id",
        };
        headers.insert(id_header, header(format!("req_sim_{seq}")));

        let decision =
            self.decide_inner(now, wall, parts, body, draw, st, &mut served, &mut headers);
        let decision = match decision {
            Ok((status, body, delay)) => {
                served.status = Some(status);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                Decision {
                    delay,
                    answer: Ok(response),
                }
            }
            Err(e) => Decision {
                delay: Duration::ZERO,
                answer: Err(e),
            },
        };
        st.log.push(served);
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_inner(
        &self,
        now: Instant,
        wall: SystemTime,
        parts: &http::request::Parts,
        body: Result<Bytes, BoxError>,
        draw: f64,
        st: &mut State,
        served: &mut Served,
        headers: &mut HeaderMap,
    ) -> Result<(StatusCode, String, Duration), io::Error> {
        let cfg = &*self.config;
        let style = cfg.style;
        let path = parts.uri.path();
        let endpoint = if path.ends_with("/chat/completions") {
            Endpoint::Chat
        } else if path.ends_with("/messages") {
            Endpoint::Messages
        } else {
            st.stats.invalid += 1;
            return Ok(error(
                style,
                StatusCode::NOT_FOUND,
                "not_found_error",
                None,
                "Unknown endpoint.",
            ));
        };
        if parts.method != Method::POST {
            st.stats.invalid += 1;
            return Ok(error(
                style,
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                "Only POST is supported.",
            ));
        }
        let body = match body {
            Ok(b) => b,
            Err(_) => {
                st.stats.invalid += 1;
                return Ok(error(
                    style,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    None,
                    "Request body too large.",
                ));
            }
        };
        let Some(parsed) = format::parse(&body) else {
            st.stats.invalid += 1;
            return Ok(error(
                style,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "We could not parse the JSON body of your request.",
            ));
        };
        let prompt_tokens = count_tokens(parsed.chars);
        let max_tokens = parsed.max_tokens.unwrap_or(cfg.default_max_tokens);
        let cost = prompt_tokens.saturating_add(max_tokens);
        let model = parsed.model.as_deref().unwrap_or(&cfg.model).to_owned();
        served.prompt_tokens = prompt_tokens;
        served.text = format::text_of_prompt(&parsed.last_user).to_owned();

        // 1. outage window
        if let Some((start, end)) = cfg.outage {
            if (start..end).contains(&served.at) {
                served.outcome = Verdict::Outage;
                st.stats.outage += 1;
                return Ok(error(
                    style,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    Some("server_is_overloaded"),
                    "The server is overloaded or not ready yet.",
                ));
            }
        }
        // 2. quota
        if cfg.quota_after.is_some_and(|n| served.seq >= n) {
            served.outcome = Verdict::QuotaExhausted;
            st.stats.quota_exhausted += 1;
            return Ok(match style {
                Style::OpenAi => error(style, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", Some("insufficient_quota"), "You exceeded your current quota, please check your plan and billing details."),
                Style::Anthropic => error(style, StatusCode::BAD_REQUEST, "invalid_request_error", None, "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."),
            });
        }
        // 3. faults
        let mut slow = Duration::ZERO;
        let mut acc = 0.0;
        let fault = cfg.faults.iter().find_map(|&(f, p)| {
            acc += p;
            (draw < acc).then_some(f)
        });
        if let Some(fault) = fault {
            let answer = match fault {
                Fault::Slow(d) => {
                    slow = d;
                    None
                }
                Fault::ConnectionReset => {
                    st.stats.resets += 1;
                    served.outcome = Verdict::Fault(fault);
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "simulated connection reset",
                    ));
                }
                Fault::ServerError => {
                    st.stats.server_errors += 1;
                    Some(error(
                        style,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        None,
                        "The server had an error while processing your request. Sorry about that!",
                    ))
                }
                Fault::ServiceUnavailable => {
                    st.stats.unavailable += 1;
                    Some(error(
                        style,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        Some("server_is_overloaded"),
                        "The server is overloaded or not ready yet.",
                    ))
                }
                Fault::Overloaded => {
                    st.stats.overloaded += 1;
                    Some(error(
                        style,
                        status_529(),
                        "overloaded_error",
                        Some("overloaded_error"),
                        "Overloaded",
                    ))
                }
                Fault::InvalidApiKey => {
                    st.stats.invalid_api_key += 1;
                    Some(error(style, StatusCode::UNAUTHORIZED, "auth", Some("invalid_api_key"), "Incorrect API key provided: sk-sim****. You can find your API key at https://platform.openai.com/account/api-keys."))
                }
            };
            if let Some(answer) = answer {
                served.outcome = Verdict::Fault(fault);
                return Ok(answer);
            }
        }
        // 4. limits
        let wait_r = st.requests.wait_for(now, 1, cfg.rpm);
        let wait_t = st.tokens.wait_for(now, cost, cfg.tpm);
        let blocked = match (wait_r, wait_t) {
            (Some(r), Some(t)) if r.is_zero() && t.is_zero() => None,
            (r, t) => Some((r, t)),
        };
        if let Some((wait_r, wait_t)) = blocked {
            // a request larger than the token window is reported as such,
            // whatever the requests window says
            let by_requests = wait_r != Some(Duration::ZERO) && wait_t.is_some();
            let wait = match (wait_r, wait_t) {
                (Some(r), Some(t)) => Some(r.max(t)),
                _ => None, // larger than the window: waiting cannot help
            };
            let (kind, limit, used, requested) = if by_requests {
                served.outcome = Verdict::RateLimitedRequests;
                st.stats.rate_limited_requests += 1;
                ("requests", cfg.rpm, st.requests.used(now), 1)
            } else {
                served.outcome = Verdict::RateLimitedTokens;
                st.stats.rate_limited_tokens += 1;
                ("tokens", cfg.tpm, st.tokens.used(now), cost)
            };
            self.limit_headers(now, wall, st, headers);
            if let Some(wait) = wait {
                headers.insert(
                    http::header::RETRY_AFTER,
                    header(ceil_secs(wait).to_string()),
                );
                if style == Style::OpenAi {
                    headers.insert("retry-after-ms", header(ceil_ms(wait).to_string()));
                }
            }
            let unit = if by_requests {
                "requests per min (RPM)"
            } else {
                "tokens per min (TPM)"
            };
            let message = match (style, wait) {
                (Style::OpenAi, Some(w)) => format!(
                    "Rate limit reached for {model} in organization org-sim on {unit}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}.",
                    go_duration(w)
                ),
                (Style::OpenAi, None) => format!(
                    "Request too large for {model} in organization org-sim on {unit}: Limit {limit}, Requested {requested}."
                ),
                (Style::Anthropic, _) => format!(
                    "This request would exceed your organization's rate limit of {limit} {kind} per minute."
                ),
            };
            return Ok(match style {
                Style::OpenAi => error(
                    style,
                    StatusCode::TOO_MANY_REQUESTS,
                    kind,
                    Some("rate_limit_exceeded"),
                    &message,
                ),
                Style::Anthropic => error(
                    style,
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    None,
                    &message,
                ),
            });
        }
        // 5. admitted: served
        st.requests.admit(now, 1);
        st.tokens.admit(now, cost);
        st.stats.tokens_admitted = st.stats.tokens_admitted.saturating_add(cost);
        st.series.push((served.at, cost));
        self.limit_headers(now, wall, st, headers);
        if !slow.is_zero() {
            st.stats.slow += 1;
        }
        st.stats.completed += 1;
        let (content, labels) = match format::batched_texts(&parsed.last_user) {
            Some(texts) => {
                let labels: Vec<&'static str> = texts.into_iter().map(format::label).collect();
                (json!(labels).to_string(), labels)
            }
            None => {
                let label = format::label(&served.text);
                (label.to_owned(), vec![label])
            }
        };
        let completion = count_tokens(content.len()).min(max_tokens);
        served.outcome = Verdict::Completed;
        served.label = labels.first().copied();
        served.labels = labels;
        served.charged_tokens = cost;
        served.completion_tokens = completion;
        let seq = served.seq;
        let body = match endpoint {
            Endpoint::Chat => json!({
                "id": format!("chatcmpl-sim{seq}"),
                "object": "chat.completion",
                "created": wall.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion
                }
            }),
            Endpoint::Messages => json!({
                "id": format!("msg_sim{seq}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": content}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion}
            }),
        };
        Ok((StatusCode::OK, body.to_string(), cfg.latency + slow))
    }

    fn limit_headers(
        &self,
        now: Instant,
        wall: SystemTime,
        st: &mut State,
        headers: &mut HeaderMap,
    ) {
        let cfg = &*self.config;
        let rem_r = cfg.rpm.saturating_sub(st.requests.used(now));
        let rem_t = cfg.tpm.saturating_sub(st.tokens.used(now));
        let reset_r = st.requests.reset_after(now);
        let reset_t = st.tokens.reset_after(now);
        match cfg.style {
            Style::OpenAi => {
                headers.insert("x-ratelimit-limit-requests", header(cfg.rpm.to_string()));
                headers.insert("x-ratelimit-limit-tokens", header(cfg.tpm.to_string()));
                headers.insert("x-ratelimit-remaining-requests", header(rem_r.to_string()));
                headers.insert("x-ratelimit-remaining-tokens", header(rem_t.to_string()));
                headers.insert("x-ratelimit-reset-requests", header(go_duration(reset_r)));
                headers.insert("x-ratelimit-reset-tokens", header(go_duration(reset_t)));
            }
            Style::Anthropic => {
                headers.insert(
                    "anthropic-ratelimit-requests-limit",
                    header(cfg.rpm.to_string()),
                );
                headers.insert(
                    "anthropic-ratelimit-requests-remaining",
                    header(rem_r.to_string()),
                );
                headers.insert(
                    "anthropic-ratelimit-requests-reset",
                    header(rfc3339_ceil(wall + reset_r)),
                );
                headers.insert(
                    "anthropic-ratelimit-tokens-limit",
                    header(cfg.tpm.to_string()),
                );
                headers.insert(
                    "anthropic-ratelimit-tokens-remaining",
                    header(rem_t.to_string()),
                );
                headers.insert(
                    "anthropic-ratelimit-tokens-reset",
                    header(rfc3339_ceil(wall + reset_t)),
                );
            }
        }
    }
}

fn status_529() -> StatusCode {
    StatusCode::from_u16(529).expect("529 is a valid status")
}

fn header(value: impl Into<String>) -> HeaderValue {
    HeaderValue::from_str(&value.into()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An error answer in the provider's shape. `kind` names the error type:
/// OpenAI bodies use it as `type` (with `"overloaded"` and `"auth"` mapped
/// to OpenAI's types), Anthropic bodies map it to theirs.
fn error(
    style: Style,
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> (StatusCode, String, Duration) {
    let body = match style {
        Style::OpenAi => {
            let ty = match kind {
                "overloaded" | "server_error" => "server_error",
                "auth" | "not_found_error" => "invalid_request_error",
                other => other,
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Style::Anthropic => {
            let ty = match kind {
                "overloaded" | "overloaded_error" => "overloaded_error",
                "server_error" => "api_error",
                "auth" => "authentication_error",
                "not_found_error" => "not_found_error",
                "requests" | "tokens" | "rate_limit_error" => "rate_limit_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    (status, body.to_string(), Duration::ZERO)
}

impl<B> Service<Request<B>> for SimProvider
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
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
