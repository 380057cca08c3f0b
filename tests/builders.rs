//! The builder convention of the crate docs ("Building layers: one
//! convention"), checked on every layer: each `layer()` call makes new
//! state and the clones of a service share it; a handle passed to a layer
//! is shared on purpose; the classifier and the events are set the same
//! way everywhere; every service has a `new` with its layer's defaults.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use tower_llm_resilience::classify::{Classification, Classify, ClassifyLayer};
use tower_llm_resilience::events::{CircuitState, Event, Events};
use tower_llm_resilience::rate_limit::{
    Limits, MemoryStore, RateLimit, RateLimitLayer, DEFAULT_ARRIVAL_MARGIN,
};
use tower_llm_resilience::retry::{Retry, RetryBudget, RetryLayer};
use tower_llm_resilience::{BoxError, Classifier, Error, ErrorClass, Key, LlmLayer, Provider};

mod support;

use support::{counting, response, Answer};

type Req = Request<String>;

fn req() -> Req {
    Request::new(String::new())
}

/// One request per minute, and no waiting: a second request of the same
/// limiter fails at once.
fn one_per_minute() -> RateLimitLayer {
    RateLimitLayer::new(Limits::new().requests_per_minute(1)).max_wait(Duration::ZERO)
}

async fn send<S, B>(svc: &mut S) -> Result<Response<B>, Error>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    let r = svc.ready().await.map_err(Into::into);
    let r = match r {
        Ok(svc) => svc.call(req()).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    r.map_err(|e: BoxError| match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => panic!("not this crate's error: {e}"),
    })
}

#[tokio::test(start_paused = true)]
async fn each_layer_call_makes_a_new_limiter_and_the_clones_of_a_service_share_it() {
    let layer = one_per_minute();
    let mut a = layer.layer(Answer(StatusCode::OK));
    let mut a_clone = a.clone();
    let mut b = layer.layer(Answer(StatusCode::OK));

    send(&mut a).await.unwrap();
    let err = send(&mut a_clone).await.unwrap_err();
    assert!(
        err.is_rate_limit_timeout(),
        "a clone shares the limiter: {err}"
    );
    send(&mut b)
        .await
        .expect("another layer() call is another limiter");
}

#[tokio::test(start_paused = true)]
async fn a_store_given_to_the_layer_is_one_quota_for_every_service_built_with_it() {
    let store = MemoryStore::new(Limits::new().requests_per_minute(1));
    let layer = one_per_minute().store(store.clone());
    let mut a = layer.layer(Answer(StatusCode::OK));
    let mut b = layer.layer(Answer(StatusCode::OK));
    // A second layer, built apart, given the same handle.
    let mut c = one_per_minute()
        .store(store.clone())
        .layer(Answer(StatusCode::OK));

    send(&mut a).await.unwrap();
    assert!(send(&mut b).await.unwrap_err().is_rate_limit_timeout());
    assert!(send(&mut c).await.unwrap_err().is_rate_limit_timeout());
    assert_eq!(store.len(), 1, "the one key lives in the given store");
}

#[tokio::test(start_paused = true)]
async fn a_setter_on_a_clone_of_a_layer_leaves_the_original_alone() {
    let layer = one_per_minute();
    let _small = layer.clone().max_keys(1);
    // The original still holds 10,000 keys: two keys do not refuse.
    let by_header = |r: &Req| {
        Key::new(
            r.headers()
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned(),
        )
    };
    let mut svc = layer.key_fn(by_header).layer(Answer(StatusCode::OK));
    for key in ["a", "b", "c"] {
        let r = Request::builder()
            .header("x-key", key)
            .body(String::new())
            .unwrap();
        svc.ready().await.unwrap().call(r).await.unwrap();
    }
    assert_eq!(svc.store().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn each_layer_call_makes_new_breakers_and_the_clones_of_a_service_share_them() {
    let layer = CircuitBreakerLayer::new();
    let (_, unauthorized) = counting(|_| async { Ok::<_, Infallible>(response(401, &[])) });
    let mut a = layer.layer(unauthorized.clone());
    let a_clone = a.clone();
    let b = layer.layer(unauthorized);

    // An invalid key opens the breaker at once.
    let r = send(&mut a).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(a.state(&Key::DEFAULT), CircuitState::Open);
    assert_eq!(a_clone.state(&Key::DEFAULT), CircuitState::Open);
    assert_eq!(b.state(&Key::DEFAULT), CircuitState::Closed);
}

/// A classifier of one's own: a 200 that carries `x-overloaded` is an
/// overload (a provider that reports errors in a 200).
#[derive(Clone, Copy, Debug)]
struct OverloadedHeader;

impl Classifier for OverloadedHeader {
    fn classify(
        &self,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: Option<&[u8]>,
    ) -> Classification {
        if headers.contains_key("x-overloaded") {
            Classification::failure(ErrorClass::Overloaded).with_status(status)
        } else {
            Provider::Auto.classify(status, headers, body)
        }
    }
    fn is_error_status(&self, _: StatusCode) -> bool {
        true
    }
}

/// A provider whose first answer is a 200 with `x-overloaded`, then plain
/// 200s.
fn overloaded_once() -> (
    support::Calls,
    impl Service<Req, Response = Response<String>, Error = Infallible, Future = impl Send>
        + Clone
        + Send,
) {
    counting(|n| async move {
        Ok::<_, Infallible>(if n == 0 {
            response(200, &[("x-overloaded", "1")])
        } else {
            response(200, &[])
        })
    })
}

#[tokio::test(start_paused = true)]
async fn every_layer_takes_its_classifier_and_events_by_the_same_setters() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let events = Events::new().with_listener(move |e| {
        let name = match e {
            Event::RetryScheduled { .. } => "retry",
            _ => return,
        };
        log.lock().unwrap().push(name);
    });

    // Retry: the classifier says the 200 is an overload, so it is retried.
    let (calls, provider) = overloaded_once();
    let mut svc = RetryLayer::new()
        .classifier(OverloadedHeader)
        .events(events.clone())
        .layer(provider);
    assert_eq!(send(&mut svc).await.unwrap().status(), 200);
    assert_eq!(calls.get(), 2, "retried on the classifier's word");
    assert_eq!(*seen.lock().unwrap(), ["retry"]);

    // The whole stack: the classifier reaches its retry layer...
    let (calls, provider) = overloaded_once();
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .events(events.clone())
        .classifier(OverloadedHeader)
        .layer(provider);
    assert_eq!(send(&mut svc).await.unwrap().status(), 200);
    assert_eq!(calls.get(), 2, "retried on the classifier's word");
    // ...and the settings made before it are kept.
    let (calls, provider) = overloaded_once();
    let mut svc = LlmLayer::new(Provider::OpenAi)
        .retry(|r| r.max_attempts(1))
        .classifier(OverloadedHeader)
        .layer(provider);
    let err = send(&mut svc).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Overloaded, "{err}");
    assert_eq!(calls.get(), 1, "max_attempts(1) kept");

    // The breaker and the limiter take the same setters.
    let _breaker = CircuitBreakerLayer::new()
        .classifier(OverloadedHeader)
        .events(events.clone());
    let _limiter = one_per_minute()
        .classifier(OverloadedHeader)
        .events(events.clone());
    let _classify = ClassifyLayer::new().classifier(OverloadedHeader);
}

#[tokio::test(start_paused = true)]
async fn every_service_has_a_new_with_its_layers_defaults() {
    // RateLimit::new: one request per minute, the second waits it out
    // (and the default arrival margin).
    let mut limited = RateLimit::new(Answer(StatusCode::OK), Limits::new().requests_per_minute(1));
    let started = Instant::now();
    send(&mut limited).await.unwrap();
    send(&mut limited).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(60) + DEFAULT_ARRIVAL_MARGIN
    );

    // CircuitBreaker::new: an invalid key opens it.
    let mut breaker = CircuitBreaker::new(Answer(StatusCode::UNAUTHORIZED));
    send(&mut breaker).await.unwrap();
    assert!(send(&mut breaker).await.unwrap_err().is_circuit_open());

    // Retry::new: a 503 is retried.
    let (calls, flaky) =
        counting(
            |n| async move { Ok::<_, Infallible>(response(if n == 0 { 503 } else { 200 }, &[])) },
        );
    let mut retried = Retry::new(flaky);
    assert_eq!(send(&mut retried).await.unwrap().status(), 200);
    assert_eq!(calls.get(), 2);

    // Classify::new: the classification is stored on an error response.
    let mut classified = Classify::new(Answer(StatusCode::TOO_MANY_REQUESTS), Provider::OpenAi);
    let r = send(&mut classified).await.unwrap();
    let c = r.extensions().get::<Classification>().unwrap();
    assert_eq!(c.class, Some(ErrorClass::RateLimited));
}

#[tokio::test(start_paused = true)]
async fn each_layer_call_has_its_own_retry_budget_and_a_given_budget_is_shared() {
    // Always overloaded. 20 requests at once, each may retry once: the
    // default budget (10 retries in reserve, plus 20 % of the requests)
    // refuses some of them.
    let (calls, overloaded) = counting(|_| async { Ok::<_, Infallible>(response(503, &[])) });
    async fn refused<S>(svc: &S) -> usize
    where
        S: Service<Req, Response = Response<String>, Error = Error> + Clone,
    {
        let all = (0..20).map(|_| {
            let mut svc = svc.clone();
            async move { send(&mut svc).await.unwrap_err() }
        });
        futures::future::join_all(all)
            .await
            .iter()
            .filter(|e| e.is_retry_budget_exhausted())
            .count()
    }
    // Seeded: both services draw the same backoff, so that they see the
    // same instants.
    let layer = RetryLayer::new().max_attempts(2).seed(1);
    let a = layer.layer(overloaded.clone());
    let b = layer.layer(overloaded.clone());
    let refused_a = refused(&a).await;
    assert!(refused_a > 0 && refused_a < 20, "{refused_a} refused");
    assert_eq!(
        refused(&b).await,
        refused_a,
        "b has a whole budget of its own"
    );
    let again = refused(&a).await;
    assert!(
        again > refused_a,
        "a clone shares a's spent budget: {again}"
    );

    // One budget given to the layer: one retry in all, for every service.
    let budget = RetryBudget::new(Duration::from_secs(1), 0.0, 1);
    let layer = RetryLayer::new().max_attempts(1_000).budget(budget.clone());
    let mut a = layer.layer(overloaded.clone());
    let mut b = layer.layer(overloaded);
    let before = calls.get();
    assert!(send(&mut a).await.unwrap_err().is_retry_budget_exhausted());
    assert_eq!(calls.get() - before, 2, "one retry");
    assert_eq!(budget.remaining(), 0);
    assert!(send(&mut b).await.unwrap_err().is_retry_budget_exhausted());
    assert_eq!(calls.get() - before, 3, "b has no retry left");
}
