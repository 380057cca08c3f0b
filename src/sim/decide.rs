//! How the provider answers one request: a pipeline of steps in the order
//! of the [module docs](super#order-of-decisions-for-one-request). Each
//! step either hands the request on or stops it with its answer; the
//! answers' shapes are [`super::answer`]'s.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use rand::RngExt;
use tokio::time::Instant;

use super::answer::{self, Completion, Endpoint, OverLimit, Reply, Room};
use super::body::SimBody;
use super::config::{Config, Fault};
use super::model::label;
use super::prompt::{self, count_tokens};
use super::provider::State;
use super::served::{Served, Streamed, Verdict};
use super::sse::{self, Plan};
use super::window::Window;
use crate::BoxError;

/// What to send, decided under the lock, sent after it.
pub(super) struct Decision {
    pub(super) delay: Duration,
    pub(super) answer: Result<Response<SimBody>, io::Error>,
}

/// An admitted completion: a whole JSON body, or a stream.
enum Answer {
    Json(Reply),
    Stream(Plan),
}

/// Why a request ended before a completion: a step answered it (invalid,
/// outage, quota, fault, rate limit), or a fault reset its connection.
enum Stop {
    Reply(Reply),
    Reset(io::Error),
}

/// One request's turn at the provider: what the steps read and write.
struct Turn<'a> {
    cfg: &'a Config,
    st: &'a mut State,
    /// The lock `st` came from, for a stream to record its progress.
    shared: &'a Arc<Mutex<State>>,
    now: Instant,
    /// The provider's wall clock at `now`.
    wall: SystemTime,
    /// This request's fault draw.
    draw: f64,
    served: Served,
    headers: HeaderMap,
}

/// A valid completion call, as [`Turn::read`] found it.
struct Call {
    endpoint: Endpoint,
    last_user: String,
    prompt_tokens: u64,
    max_tokens: u64,
    /// Charged at admission: prompt tokens plus `max_tokens`.
    cost: u64,
    model: String,
    /// `"stream": true`.
    stream: bool,
    /// OpenAI's `stream_options.include_usage`.
    include_usage: bool,
}

/// Decides the answer to a request that arrived at `now` (the provider
/// was built at `epoch`), records it in `st` (locked from `shared`) and
/// returns what to send.
pub(super) fn decide(
    cfg: &Config,
    st: &mut State,
    shared: &Arc<Mutex<State>>,
    epoch: Instant,
    now: Instant,
    parts: &http::request::Parts,
    body: Result<Bytes, BoxError>,
) -> Decision {
    let mut turn = Turn::arrive(cfg, st, shared, epoch, now, parts);
    let end = turn.steps(parts, body);
    turn.finish(end)
}

impl<'a> Turn<'a> {
    /// Numbers the request, draws its fault number and starts its record
    /// and its headers.
    fn arrive(
        cfg: &'a Config,
        st: &'a mut State,
        shared: &'a Arc<Mutex<State>>,
        epoch: Instant,
        now: Instant,
        parts: &http::request::Parts,
    ) -> Self {
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
        let since_epoch = now.saturating_duration_since(epoch);
        let served = Served {
            seq,
            at: since_epoch,
            outcome: Verdict::Invalid,
            status: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            charged_tokens: 0,
            label: None,
            labels: Vec::new(),
            client_request_id,
            text: String::new(),
            stream: None,
        };
        let wall = cfg.wall_clock + since_epoch;
        Turn {
            cfg,
            st,
            shared,
            now,
            wall,
            draw,
            served,
            headers: answer::base_headers(cfg.style, wall, seq),
        }
    }

    /// The steps in order; `Err` is the answer of the step that stopped
    /// the request.
    fn steps(
        &mut self,
        parts: &http::request::Parts,
        body: Result<Bytes, BoxError>,
    ) -> Result<Answer, Stop> {
        let call = self.read(parts, body)?;
        self.outage()?;
        self.quota()?;
        let alter = self.fault()?;
        self.limits(&call)?;
        self.admit(&call, alter);
        Ok(self.complete(&call, alter))
    }

    /// Logs the request and makes the response.
    fn finish(self, end: Result<Answer, Stop>) -> Decision {
        let Turn {
            st,
            shared,
            now,
            mut served,
            mut headers,
            ..
        } = self;
        let decision = match end {
            Ok(Answer::Json(reply)) | Err(Stop::Reply(reply)) => {
                served.status = Some(reply.status);
                let mut response = Response::new(SimBody::whole(Bytes::from(reply.body)));
                *response.status_mut() = reply.status;
                *response.headers_mut() = headers;
                Decision {
                    delay: reply.delay,
                    answer: Ok(response),
                }
            }
            Ok(Answer::Stream(plan)) => {
                served.status = Some(StatusCode::OK);
                served.stream = Some(Streamed {
                    events_planned: plan.events,
                    events_sent: 0,
                    end: None,
                });
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                );
                let body = SimBody::stream(plan, now, shared.clone(), served.seq);
                let mut response = Response::new(body);
                *response.headers_mut() = headers;
                // the head at once; the events come when they are due
                Decision {
                    delay: Duration::ZERO,
                    answer: Ok(response),
                }
            }
            Err(Stop::Reset(e)) => Decision {
                delay: Duration::ZERO,
                answer: Err(e),
            },
        };
        st.log.push(served);
        decision
    }

    /// Step 1: a POST to a known endpoint with a body that parses, else
    /// 404 / 405 / 413 / 400.
    fn read(
        &mut self,
        parts: &http::request::Parts,
        body: Result<Bytes, BoxError>,
    ) -> Result<Call, Stop> {
        let path = parts.uri.path();
        let endpoint = if path.ends_with("/chat/completions") {
            Endpoint::Chat
        } else if path.ends_with("/messages") {
            Endpoint::Messages
        } else {
            return Err(self.invalid(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "Unknown endpoint.",
            ));
        };
        if parts.method != Method::POST {
            return Err(self.invalid(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "Only POST is supported.",
            ));
        }
        let Ok(body) = body else {
            return Err(self.invalid(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "Request body too large.",
            ));
        };
        let Some(parsed) = prompt::parse(&body) else {
            return Err(self.invalid(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "We could not parse the JSON body of your request.",
            ));
        };
        let prompt_tokens = count_tokens(parsed.chars);
        let max_tokens = parsed.max_tokens.unwrap_or(self.cfg.default_max_tokens);
        let model = parsed
            .model
            .as_deref()
            .unwrap_or(&self.cfg.model)
            .to_owned();
        self.served.prompt_tokens = prompt_tokens;
        self.served.text = prompt::text_of_prompt(&parsed.last_user).to_owned();
        Ok(Call {
            endpoint,
            last_user: parsed.last_user,
            prompt_tokens,
            max_tokens,
            cost: prompt_tokens.saturating_add(max_tokens),
            model,
            stream: parsed.stream,
            include_usage: parsed.include_usage,
        })
    }

    fn invalid(&mut self, status: StatusCode, kind: &str, message: &str) -> Stop {
        self.st.stats.invalid += 1;
        Stop::Reply(answer::error(self.cfg.style, status, kind, None, message))
    }

    /// Step 2: inside the outage window, 503.
    fn outage(&mut self) -> Result<(), Stop> {
        match self.cfg.outage {
            Some((start, end)) if (start..end).contains(&self.served.at) => {
                self.served.outcome = Verdict::Outage;
                self.st.stats.outage += 1;
                Err(Stop::Reply(answer::outage(self.cfg.style)))
            }
            _ => Ok(()),
        }
    }

    /// Step 3: past `quota_after`, the quota is spent.
    fn quota(&mut self) -> Result<(), Stop> {
        if self.cfg.quota_after.is_none_or(|n| self.served.seq < n) {
            return Ok(());
        }
        self.served.outcome = Verdict::QuotaExhausted;
        self.st.stats.quota_exhausted += 1;
        Err(Stop::Reply(answer::quota_exhausted(self.cfg.style)))
    }

    /// Step 4: the fault the draw picks, if any. A slow answer and the
    /// stream faults go on (`Ok` with the fault, which alters the admitted
    /// answer; `None` when no fault is drawn); every other fault stops the
    /// request before admission, consuming nothing.
    fn fault(&mut self) -> Result<Option<Fault>, Stop> {
        let draw = self.draw;
        let mut acc = 0.0;
        let drawn = self.cfg.faults.iter().find_map(|&(f, p)| {
            acc += p;
            (draw < acc).then_some(f)
        });
        let Some(fault) = drawn else {
            return Ok(None);
        };
        let stats = &mut self.st.stats;
        let counter = match fault {
            Fault::Slow(_)
            | Fault::MidStreamError
            | Fault::Stall(_)
            | Fault::Truncate
            | Fault::OverloadedFirstEvent => return Ok(Some(fault)),
            Fault::ConnectionReset => &mut stats.resets,
            Fault::ServerError => &mut stats.server_errors,
            Fault::ServiceUnavailable => &mut stats.unavailable,
            Fault::Overloaded => &mut stats.overloaded,
            Fault::InvalidApiKey => &mut stats.invalid_api_key,
        };
        *counter += 1;
        self.served.outcome = Verdict::Fault(fault);
        Err(match answer::fault(self.cfg.style, fault) {
            Some(reply) => Stop::Reply(reply),
            None => Stop::Reset(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated connection reset",
            )),
        })
    }

    /// Step 5: the sliding windows. A request that does not fit both is
    /// answered 429 with the wait until it fits, and consumes nothing.
    fn limits(&mut self, call: &Call) -> Result<(), Stop> {
        let (cfg, now) = (self.cfg, self.now);
        let wait_r = self.st.requests.wait_for(now, 1, cfg.rpm);
        let wait_t = self.st.tokens.wait_for(now, call.cost, cfg.tpm);
        let (wait_r, wait_t) = match (wait_r, wait_t) {
            (Some(r), Some(t)) if r.is_zero() && t.is_zero() => return Ok(()),
            blocked => blocked,
        };
        // a request larger than the token window is reported as such,
        // whatever the requests window says
        let by_requests = wait_r != Some(Duration::ZERO) && wait_t.is_some();
        let wait = match (wait_r, wait_t) {
            (Some(r), Some(t)) => Some(r.max(t)),
            _ => None, // larger than the window: waiting cannot help
        };
        let over = if by_requests {
            self.served.outcome = Verdict::RateLimitedRequests;
            self.st.stats.rate_limited_requests += 1;
            OverLimit {
                kind: "requests",
                limit: cfg.rpm,
                used: self.st.requests.used(now),
                requested: 1,
                model: &call.model,
            }
        } else {
            self.served.outcome = Verdict::RateLimitedTokens;
            self.st.stats.rate_limited_tokens += 1;
            OverLimit {
                kind: "tokens",
                limit: cfg.tpm,
                used: self.st.tokens.used(now),
                requested: call.cost,
                model: &call.model,
            }
        };
        self.limit_headers();
        if let Some(wait) = wait {
            answer::retry_after(cfg.style, wait, &mut self.headers);
        }
        Err(Stop::Reply(answer::rate_limited(cfg.style, &over, wait)))
    }

    /// Step 6: the request is admitted into both windows.
    fn admit(&mut self, call: &Call, alter: Option<Fault>) {
        let (st, now) = (&mut *self.st, self.now);
        st.requests.admit(now, 1);
        st.tokens.admit(now, call.cost);
        st.stats.tokens_admitted = st.stats.tokens_admitted.saturating_add(call.cost);
        st.series.push((self.served.at, call.cost));
        self.limit_headers();
        if matches!(alter, Some(Fault::Slow(d)) if !d.is_zero()) {
            self.st.stats.slow += 1;
        }
    }

    /// Step 7: the completion: the label (or labels) of the prompt's text,
    /// after the latency and a slow fault's delay; streamed, as a stream
    /// fault alters it (a request that is not streamed ignores those).
    fn complete(&mut self, call: &Call, alter: Option<Fault>) -> Answer {
        let (content, labels) = match prompt::batched_texts(&call.last_user) {
            Some(texts) => {
                let labels: Vec<&'static str> = texts.into_iter().map(label).collect();
                (serde_json::json!(labels).to_string(), labels)
            }
            None => {
                let label = label(&self.served.text);
                (label.to_owned(), vec![label])
            }
        };
        let completion_tokens = count_tokens(content.len()).min(call.max_tokens);
        let slow = match alter {
            Some(Fault::Slow(d)) => d,
            _ => Duration::ZERO,
        };
        let latency = self.cfg.latency.saturating_add(slow);
        let stream_fault = alter.filter(|f| call.stream && f.is_stream_fault());
        let stats = &mut self.st.stats;
        let served = &mut self.served;
        served.charged_tokens = call.cost;
        let failed = match stream_fault {
            Some(Fault::MidStreamError) => Some(&mut stats.mid_stream_errors),
            Some(Fault::Truncate) => Some(&mut stats.truncated),
            Some(Fault::OverloadedFirstEvent) => Some(&mut stats.overloaded_first_events),
            _ => None,
        };
        if let (Some(counter), Some(fault)) = (failed, stream_fault) {
            // admitted and charged, but the completion never arrives whole
            *counter += 1;
            served.outcome = Verdict::Fault(fault);
        } else {
            if matches!(stream_fault, Some(Fault::Stall(_))) {
                stats.stalls += 1;
            }
            stats.completed += 1;
            served.outcome = Verdict::Completed;
            served.label = labels.first().copied();
            served.labels = labels;
            served.completion_tokens = completion_tokens;
        }
        let completion = Completion {
            seq: served.seq,
            model: &call.model,
            content: &content,
            prompt_tokens: call.prompt_tokens,
            completion_tokens,
        };
        if call.stream {
            stats.streams += 1;
            return Answer::Stream(sse::plan(
                call.endpoint,
                self.wall,
                &completion,
                call.include_usage,
                latency,
                stream_fault,
            ));
        }
        Answer::Json(Reply {
            status: StatusCode::OK,
            body: answer::completion(call.endpoint, self.wall, &completion),
            delay: latency,
        })
    }

    /// The limit headers as the windows stand now.
    fn limit_headers(&mut self) {
        let now = self.now;
        let room = |window: &mut Window, limit: u64| Room {
            limit,
            remaining: limit.saturating_sub(window.used(now)),
            reset: window.reset_after(now),
        };
        let requests = room(&mut self.st.requests, self.cfg.rpm);
        let tokens = room(&mut self.st.tokens, self.cfg.tpm);
        answer::limit_headers(
            self.cfg.style,
            self.wall,
            requests,
            tokens,
            &mut self.headers,
        );
    }
}
