//! The batch's patience: transient failures are held and sent again,
//! permanent ones end the item at once, and the job limit ends what is
//! left with typed errors. Paused time throughout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tower::service_fn;
use tower_llm_resilience::batch::{Batch, Patience, Progress};
use tower_llm_resilience::{Classification, Error, ErrorClass};

/// What the service answers to the `k`-th call of input `n` (from 0).
type Script = fn(u32, u32) -> Result<u32, Error>;

fn failure(class: ErrorClass, wait: Option<Duration>) -> Error {
    let mut c = Classification::failure(class);
    c.retry_after = wait;
    Error::from_response(c)
}

/// A service that answers by `script`, after 100 ms, and logs each call's
/// input and instant.
fn scripted(
    script: Script,
    log: Arc<Mutex<Vec<(u32, Instant)>>>,
) -> impl tower::Service<
    u32,
    Response = u32,
    Error = Error,
    Future = impl std::future::Future<Output = Result<u32, Error>> + Send,
> + Send {
    let calls: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    service_fn(move |n: u32| {
        let k = {
            let mut calls = calls.lock().unwrap();
            let k = calls.entry(n).or_default();
            *k += 1;
            *k - 1
        };
        log.lock().unwrap().push((n, Instant::now()));
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            script(n, k)
        }
    })
}

fn check(p: &Progress) {
    assert_eq!(
        p.submitted,
        p.queued + p.in_flight + p.held + p.succeeded + p.failed,
        "{p:?}"
    );
    assert_eq!(p.succeeded + p.failed, p.yielded + p.buffered, "{p:?}");
    assert!(p.gave_up + p.cancelled <= p.failed, "{p:?}");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_held_and_sent_again_after_the_named_wait() {
    // every input is overloaded twice (the second time with a 5 s wait),
    // then answers
    let script: Script = |n, k| match k {
        0 => Err(failure(ErrorClass::Overloaded, None)),
        1 => Err(failure(
            ErrorClass::Overloaded,
            Some(Duration::from_secs(5)),
        )),
        _ => Ok(n * 10),
    };
    let log = Arc::default();
    let start = Instant::now();
    let results = Batch::new(scripted(script, Arc::clone(&log)))
        .concurrency(4)
        .on_progress(check)
        .run(0..8u32)
        .await;
    let got: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..8).map(|n| n * 10).collect::<Vec<_>>());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 24, "each input three times");
    for n in 0..8 {
        let at: Vec<Instant> = log.iter().filter(|(m, _)| *m == n).map(|e| e.1).collect();
        // the first hold is the backoff (1 s, equal jitter: at least 0.5 s)
        let first = at[1] - at[0];
        assert!(first >= Duration::from_millis(600), "{n}: {first:?}");
        // the second, the named wait plus at most 10 % (and 1 s) of it
        let second = at[2] - at[1];
        assert!(
            second >= Duration::from_millis(5_100) && second <= Duration::from_millis(5_601),
            "{n}: {second:?}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_end_the_item_at_once() {
    let script: Script = |n, _| match n {
        0 => Err(failure(
            ErrorClass::QuotaExhausted,
            Some(Duration::from_secs(5)),
        )),
        1 => Err(failure(ErrorClass::Auth, None)),
        2 => Err(failure(ErrorClass::InvalidRequest, None)),
        3 => Err(failure(ErrorClass::ContextLengthExceeded, None)),
        4 => Err(failure(ErrorClass::Permission, None)),
        5 => Err(failure(ErrorClass::NotFound, None)),
        6 => Err(failure(ErrorClass::Other, None)),
        _ => Ok(n),
    };
    let log = Arc::default();
    let results = Batch::new(scripted(script, Arc::clone(&log)))
        .run(0..8u32)
        .await;
    let classes: Vec<Option<ErrorClass>> = results
        .iter()
        .map(|r| r.as_ref().err().map(Error::class))
        .collect();
    assert_eq!(
        classes,
        [
            Some(ErrorClass::QuotaExhausted),
            Some(ErrorClass::Auth),
            Some(ErrorClass::InvalidRequest),
            Some(ErrorClass::ContextLengthExceeded),
            Some(ErrorClass::Permission),
            Some(ErrorClass::NotFound),
            Some(ErrorClass::Other),
            None
        ]
    );
    assert_eq!(log.lock().unwrap().len(), 8, "nothing sent twice");
}

#[tokio::test(start_paused = true)]
async fn the_job_limit_ends_held_in_flight_and_unsent_items_with_typed_errors() {
    // input 0 succeeds; everything after is overloaded forever
    let script: Script = |n, _| match n {
        0 => Ok(0),
        _ => Err(failure(ErrorClass::Overloaded, None)),
    };
    let log = Arc::default();
    let start = Instant::now();
    let limit = Duration::from_secs(60);
    let mut last = Progress::default();
    let mut stream = Batch::new(scripted(script, Arc::clone(&log)))
        .concurrency(2)
        .reorder_window(4)
        .patience(Patience::new().give_up_after(limit))
        .on_progress(check)
        .stream(0..20u32);
    let mut results = Vec::new();
    while let Some(r) = stream.next().await {
        results.push(r);
        last = stream.progress();
    }
    let elapsed = start.elapsed();
    assert_eq!(results.len(), 20);
    assert_eq!(*results[0].as_ref().unwrap(), 0);
    for (i, r) in results.iter().enumerate().skip(1) {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_gave_up(), "{i}: {e:?}");
        assert_eq!(
            e.class(),
            ErrorClass::Overloaded,
            "{i}: the last failure's class"
        );
        assert!(e.is_retryable());
        assert!(e.to_string().contains("60.000s"), "{e}");
    }
    // the held ones keep their last error as the source
    assert!(results[1..4]
        .iter()
        .any(|r| std::error::Error::source(r.as_ref().unwrap_err()).is_some()));
    // by the limit: it runs from the last success (at 100 ms)
    assert!(
        elapsed >= limit && elapsed <= limit + Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_eq!(last.gave_up, 19);
    assert!(last.is_finished());
    // items past the reorder window were never sent
    let sent: std::collections::HashSet<u32> = log.lock().unwrap().iter().map(|e| e.0).collect();
    assert!(sent.len() <= 5, "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_the_patience_ends_the_item_at_once() {
    // a per-day quota that says "come back tomorrow", as a rate limit
    let script: Script = |n, _| match n {
        0 => Err(failure(
            ErrorClass::RateLimited,
            Some(Duration::from_secs(86_400)),
        )),
        _ => Ok(n),
    };
    let start = Instant::now();
    let results = Batch::new(scripted(script, Arc::default()))
        .run(0..3u32)
        .await;
    let e = results[0].as_ref().unwrap_err();
    assert!(e.is_gave_up() && e.is_rate_limited(), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(86_400)));
    assert_eq!(*results[2].as_ref().unwrap(), 2);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_answers_each_input_with_its_first_error() {
    let script: Script = |_, _| Err(failure(ErrorClass::Overloaded, None));
    let log = Arc::default();
    let results = Batch::new(scripted(script, Arc::clone(&log)))
        .patience(Patience::fail_fast())
        .run(0..5u32)
        .await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_overloaded()));
    assert_eq!(log.lock().unwrap().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn progress_says_how_long_the_provider_has_been_failing() {
    // down for the first 10 s of the run
    let t0 = Instant::now();
    let down = move || Instant::now() < t0 + Duration::from_secs(10);
    let svc = service_fn(move |n: u32| {
        let fail = down();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fail {
                Err(failure(
                    ErrorClass::Overloaded,
                    Some(Duration::from_secs(2)),
                ))
            } else {
                Ok(n)
            }
        }
    });
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let record = Arc::clone(&seen);
    let results = Batch::new(svc)
        .concurrency(2)
        .on_progress(move |p| record.lock().unwrap().push(*p))
        .run(0..4u32)
        .await;
    assert!(results.iter().all(Result::is_ok));
    let seen = seen.lock().unwrap();
    let failing = seen.iter().filter_map(|p| p.failing_for).max().unwrap();
    assert!(failing >= Duration::from_secs(9), "{failing:?}");
    assert!(seen
        .iter()
        .any(|p| p.last_failure == Some(ErrorClass::Overloaded) && p.next_resend_in.is_some()));
    let last = seen.last().unwrap();
    assert_eq!(
        (last.held, last.failing_for, last.last_failure),
        (0, None, None)
    );
    assert!(last.resent >= 4);
}

#[tokio::test(start_paused = true)]
async fn cancellation_answers_held_items_as_cancelled() {
    let script: Script = |n, _| match n {
        0 => Ok(0),
        _ => Err(failure(
            ErrorClass::Overloaded,
            Some(Duration::from_secs(30)),
        )),
    };
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(
        Batch::new(scripted(script, Arc::default()))
            .cancel_token(token.clone())
            .on_progress(check)
            .run(0..6u32),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    token.cancel();
    let results = run.await.unwrap();
    assert_eq!(*results[0].as_ref().unwrap(), 0);
    assert!(results[1..]
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_cancelled()));
}

// Found in review: each failed before its fix.

#[tokio::test(start_paused = true)]
async fn give_up_after_max_never_gives_up() {
    let script: Script = |n, k| match k {
        0 => Err(failure(
            ErrorClass::Overloaded,
            Some(Duration::from_secs(1)),
        )),
        _ => Ok(n),
    };
    let results = Batch::new(scripted(script, Arc::default()))
        .concurrency(1)
        .patience(Patience::new().give_up_after(Duration::MAX))
        .run(0..1u32)
        .await;
    assert_eq!(*results[0].as_ref().unwrap(), 0, "{:?}", results[0]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_that_fails_once_is_sent_again() {
    // no success for 11 minutes because the first call is slow, then it
    // times out: that is not ten minutes of outage
    let calls = Arc::new(Mutex::new(0u32));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |n: u32| {
        let k = {
            let mut c = c.lock().unwrap();
            *c += 1;
            *c - 1
        };
        async move {
            if k == 0 {
                tokio::time::sleep(Duration::from_secs(11 * 60)).await;
                Err(failure(ErrorClass::Timeout, None))
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(n)
            }
        }
    });
    let results = Batch::new(svc)
        .concurrency(1)
        .patience(Patience::new().give_up_after(Duration::from_secs(600)))
        .run(0..1u32)
        .await;
    assert_eq!(*results[0].as_ref().unwrap(), 0, "{:?}", results[0]);
}

#[tokio::test(start_paused = true)]
async fn cancel_keeps_the_reorder_window() {
    let svc = service_fn(|n: u32| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Error>(n)
    });
    let token = tokio_util::sync::CancellationToken::new();
    let max_buffered = Arc::new(Mutex::new(0u64));
    let m = Arc::clone(&max_buffered);
    let mut stream = Batch::new(svc)
        .concurrency(2)
        .reorder_window(4)
        .cancel_token(token.clone())
        .on_progress(move |p: &Progress| {
            let mut m = m.lock().unwrap();
            *m = (*m).max(p.buffered);
        })
        .stream(0..100_000u32);
    assert!(stream.next().await.unwrap().is_ok());
    token.cancel();
    let mut n = 1;
    while let Some(r) = stream.next().await {
        assert!(n < 4 || r.unwrap_err().is_cancelled());
        n += 1;
    }
    assert_eq!(n, 100_000);
    let max = *max_buffered.lock().unwrap();
    assert!(
        max <= 4,
        "buffered {max} results with a reorder window of 4"
    );
}

/// Fails its next `poll_ready`s with a connection error.
#[derive(Clone)]
struct FlakyReady {
    fail_next_ready: Arc<Mutex<u32>>,
}

impl tower::Service<u32> for FlakyReady {
    type Response = u32;
    type Error = Error;
    type Future = std::future::Ready<Result<u32, Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        let mut n = self.fail_next_ready.lock().unwrap();
        if *n > 0 {
            *n -= 1;
            return std::task::Poll::Ready(Err(failure(ErrorClass::Connect, None)));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

#[tokio::test(start_paused = true)]
async fn a_transient_readiness_error_is_held_in_a_patient_batch() {
    let svc = FlakyReady {
        fail_next_ready: Arc::new(Mutex::new(1)),
    };
    let mut stream = Batch::new(svc).on_progress(check).stream(0..2u32);
    let mut results = Vec::new();
    while let Some(r) = stream.next().await {
        results.push(r);
    }
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(stream.progress().resent, 1);
}
