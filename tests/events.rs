//! What the stack reports while it is observed: the key and the model on
//! the retry layer's events and on the typed error, one `AttemptEnded` per
//! attempt with its class, duration and usage, the end of every wait for
//! the limiter, and a span per request with one per attempt inside it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::events::{Event, Events};
use tower_llm_resilience::key::ByModel;
use tower_llm_resilience::rate_limit::TokenUsage;
use tower_llm_resilience::{ErrorClass, Key, Limits, LlmLayer, Provider, RateLimitLayer};

const CHAT: &str =
    r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"model":"gpt-4o-mini"}"#;
const USAGE: &str =
    r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

fn chat() -> Request<String> {
    Request::post("https://api.openai.com/v1/chat/completions")
        .body(CHAT.to_owned())
        .unwrap()
}

/// An upstream that answers 503 `failures` times, then 200 with usage,
/// 50 ms after each call (paused time).
fn flaky(
    failures: u32,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    let calls = Arc::new(AtomicU32::new(0));
    tower::service_fn(move |_req: Request<String>| {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (status, body) = if n < failures {
                (503, r#"{"error":{"type":"server_error"}}"#)
            } else {
                (200, USAGE)
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body.to_owned());
            Ok::<_, Infallible>(response.unwrap())
        }
    })
}

/// An event as owned values, to look at after the run.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Retry(Option<String>, Option<String>, ErrorClass),
    GaveUp(Option<String>, Option<String>),
    Attempt(
        String,
        Option<String>,
        Option<ErrorClass>,
        Option<TokenUsage>,
        Duration,
    ),
    Wait(String),
    Admitted(String),
    WaitEnded(String),
}

fn recorder() -> (Events, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let events = Events::new().with_listener(move |event| {
        let name = |k: &Key| k.to_string();
        let owned = |m: Option<&str>| m.map(str::to_owned);
        let seen = match *event {
            Event::RetryScheduled {
                key, model, class, ..
            } => Seen::Retry(key.map(name), owned(model), class),
            Event::RetryGaveUp { key, model, .. } => Seen::GaveUp(key.map(name), owned(model)),
            Event::AttemptEnded {
                key,
                model,
                duration,
                class,
                usage,
            } => Seen::Attempt(name(key), owned(model), class, usage, duration),
            Event::RateLimitWait { key, .. } => Seen::Wait(name(key)),
            Event::RateLimitAdmitted { key, .. } => Seen::Admitted(name(key)),
            Event::RateLimitWaitEnded { key, .. } => Seen::WaitEnded(name(key)),
            _ => return,
        };
        log.lock().unwrap().push(seen);
    });
    (events, seen)
}

#[tokio::test(start_paused = true)]
async fn a_retry_names_the_failed_attempts_key_and_model_and_each_attempt_ends_once() {
    let (events, seen) = recorder();
    let mut client = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .events(events)
        .retry(|r| r.seed(1))
        .layer(flaky(1));
    let response = client.ready().await.unwrap().call(chat()).await.unwrap();
    response.into_body().collect().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let model = Some("gpt-4o-mini".to_owned());
    let usage = TokenUsage {
        input_tokens: 12,
        output_tokens: 3,
    };
    let ms50 = Duration::from_millis(50);
    assert_eq!(
        seen,
        [
            Seen::Retry(
                Some("default".into()),
                model.clone(),
                ErrorClass::Overloaded
            ),
            Seen::Attempt(
                "default".into(),
                model.clone(),
                Some(ErrorClass::Overloaded),
                None,
                ms50
            ),
            Seen::Attempt("default".into(), model, None, Some(usage), ms50),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_key_names_the_model_and_the_error_says_whose_it_was() {
    let (events, seen) = recorder();
    let mut client = LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100)
        .key_fn(ByModel::new())
        .events(events)
        .retry(|r| r.seed(1).max_attempts(2))
        .layer(flaky(10));
    let error = client
        .ready()
        .await
        .unwrap()
        .call(chat())
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Overloaded);
    assert_eq!(
        error.key().map(Key::to_string).as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(error.model(), Some("gpt-4o-mini"));

    let seen = seen.lock().unwrap().clone();
    let model = Some("gpt-4o-mini".to_owned());
    let key = Some("gpt-4o-mini".to_owned());
    assert_eq!(
        seen[0],
        Seen::Retry(key.clone(), model.clone(), ErrorClass::Overloaded)
    );
    assert!(seen.contains(&Seen::GaveUp(key, model)), "{seen:?}");
    let attempts = seen
        .iter()
        .filter(|s| matches!(s, Seen::Attempt(..)))
        .count();
    assert_eq!(attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn every_wait_for_the_limiter_ends_admitted_or_left() {
    let (events, seen) = recorder();
    let mut limiter = RateLimitLayer::new(Limits::new().requests_per_minute(1))
        .events(events)
        .layer(flaky(0));
    let first = limiter.ready().await.unwrap().call(chat());
    first.await.unwrap();
    // The second waits a minute; its caller gives up after a second.
    let second = limiter.ready().await.unwrap().call(chat());
    let gave_up = tokio::time::timeout(Duration::from_secs(1), second).await;
    assert!(gave_up.is_err());
    // The third waits for the minute, and is admitted.
    let third = limiter.ready().await.unwrap().call(chat());
    third.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let waits: Vec<_> = seen
        .into_iter()
        .filter(|s| !matches!(s, Seen::Attempt(..)))
        .collect();
    let d = || "default".to_owned();
    assert_eq!(
        waits,
        [
            Seen::Wait(d()),
            Seen::WaitEnded(d()),
            Seen::Wait(d()),
            Seen::Admitted(d()),
        ]
    );
}

/// A `tracing` subscriber that keeps each span's name, parent and the
/// fields recorded on it.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, Span>>,
    current: Mutex<Vec<u64>>,
}

#[derive(Clone, Debug)]
struct Span {
    name: &'static str,
    metadata: &'static tracing::Metadata<'static>,
    parent: Option<u64>,
    fields: HashMap<String, String>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The subscriber: a handle on the [`Spans`] the test reads.
struct Subscriber(Arc<Spans>);

impl std::ops::Deref for Subscriber {
    type Target = Spans;
    fn deref(&self) -> &Spans {
        &self.0
    }
}

impl tracing::Subscriber for Subscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = match attrs.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if attrs.is_contextual() => self.current.lock().unwrap().last().copied(),
            None => None,
        };
        let mut span = Span {
            name: attrs.metadata().name(),
            metadata: attrs.metadata(),
            parent,
            fields: HashMap::new(),
        };
        attrs.record(&mut Fields(&mut span.fields));
        self.spans.lock().unwrap().insert(id, span);
        tracing::span::Id::from_u64(id)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let current = self.current.lock().unwrap().last().copied();
        let spans = self.spans.lock().unwrap();
        match current.and_then(|id| Some((id, spans.get(&id)?.metadata))) {
            Some((id, metadata)) => {
                tracing_core::span::Current::new(tracing::span::Id::from_u64(id), metadata)
            }
            None => tracing_core::span::Current::none(),
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, id: &tracing::span::Id) {
        self.current.lock().unwrap().push(id.into_u64());
    }
    fn exit(&self, id: &tracing::span::Id) {
        let mut current = self.current.lock().unwrap();
        if let Some(at) = current.iter().rposition(|&c| c == id.into_u64()) {
            current.remove(at);
        }
    }
}

#[test]
fn a_request_span_holds_one_span_per_attempt_with_the_same_attributes() {
    let spans = Arc::new(Spans::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(Subscriber(spans.clone()), || {
        runtime.block_on(async {
            let mut client = LlmLayer::new(Provider::OpenAi)
                .requests_per_minute(100)
                .retry(|r| r.seed(1))
                .layer(flaky(1));
            let response = client.ready().await.unwrap().call(chat()).await.unwrap();
            response.into_body().collect().await.unwrap();
        })
    });
    let spans = spans.spans.lock().unwrap().clone();
    let of = |name| {
        let mut found: Vec<_> = spans.iter().filter(|(_, s)| s.name == name).collect();
        found.sort_by_key(|(id, _)| **id);
        found
    };
    let requests = of("llm.request");
    let attempts = of("llm.attempt");
    assert_eq!((requests.len(), attempts.len()), (1, 2), "{spans:?}");
    let (&request_id, request) = requests[0];
    let field = |s: &Span, f: &str| s.fields.get(f).cloned();
    assert_eq!(field(request, "llm.key").as_deref(), Some("default"));
    assert_eq!(
        field(request, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(field(request, "llm.attempts").as_deref(), Some("2"));
    assert_eq!(field(request, "error.type"), None);
    for (_, attempt) in &attempts {
        assert_eq!(attempt.parent, Some(request_id));
        assert_eq!(field(attempt, "llm.key").as_deref(), Some("default"));
        assert_eq!(
            field(attempt, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
    }
    assert_eq!(
        field(attempts[0].1, "error.type").as_deref(),
        Some("overloaded")
    );
    assert_eq!(field(attempts[1].1, "error.type"), None);
    assert_eq!(
        field(attempts[1].1, "gen_ai.usage.input_tokens").as_deref(),
        Some("12")
    );
    assert_eq!(
        field(attempts[1].1, "gen_ai.usage.output_tokens").as_deref(),
        Some("3")
    );
}
