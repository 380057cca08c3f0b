//! Batch driver: order, bounds, exactly-once answers, cancellation,
//! backpressure, progress. Paused time throughout.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tower::service_fn;
use tower_llm_resilience::batch::{Batch, Progress};
use tower_llm_resilience::ErrorClass;

/// Counts calls in flight and the most ever seen.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<u32>>>,
}

impl Gauge {
    fn enter(&self, n: u32) {
        let v = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(v, Ordering::SeqCst);
        self.calls.lock().unwrap().push(n);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A service that answers `n * 10` after `latency(n)`, failing when `fail(n)`.
fn svc<L, F>(
    gauge: Gauge,
    latency: L,
    fail: F,
) -> impl tower::Service<
    u32,
    Response = u32,
    Error = io::Error,
    Future = impl std::future::Future<Output = io::Result<u32>> + Send,
> + Send
where
    L: Fn(u32) -> Duration + Clone + Send + 'static,
    F: Fn(u32) -> bool + Clone + Send + 'static,
{
    service_fn(move |n: u32| {
        let gauge = gauge.clone();
        let d = latency(n);
        let f = fail(n);
        async move {
            gauge.enter(n);
            sleep(d).await;
            gauge.leave();
            if f {
                Err(io::Error::other(format!("item {n} failed")))
            } else {
                Ok(n * 10)
            }
        }
    })
}

fn check_invariants(p: &Progress) {
    assert_eq!(
        p.submitted,
        p.queued + p.in_flight + p.succeeded + p.failed,
        "{p:?}"
    );
    assert_eq!(p.succeeded + p.failed, p.yielded + p.buffered, "{p:?}");
    assert!(p.cancelled <= p.failed, "{p:?}");
}

#[tokio::test(start_paused = true)]
async fn order_is_input_order_when_calls_finish_out_of_order() {
    let gauge = Gauge::default();
    // later items finish first
    let s = svc(
        gauge.clone(),
        |n| Duration::from_millis(100 - n as u64 * 5),
        |_| false,
    );
    let results = Batch::new(s).concurrency(5).run(0..20u32).await;
    let got: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..20).map(|n| n * 10).collect::<Vec<_>>());
    assert_eq!(gauge.max.load(Ordering::SeqCst), 5);
    let mut calls = gauge.calls.lock().unwrap().clone();
    calls.sort_unstable();
    assert_eq!(
        calls,
        (0..20).collect::<Vec<_>>(),
        "each input sent exactly once"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_bound_is_never_exceeded() {
    let gauge = Gauge::default();
    let s = svc(
        gauge.clone(),
        |n| Duration::from_millis(1 + (n as u64 * 37) % 50),
        |_| false,
    );
    let results = Batch::new(s).concurrency(3).run(0..200u32).await;
    assert_eq!(results.len(), 200);
    assert_eq!(gauge.max.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn errors_are_carried_per_item() {
    let s = svc(
        Gauge::default(),
        |_| Duration::from_millis(10),
        |n| n % 3 == 1,
    );
    let results = Batch::new(s).concurrency(4).run(0..12u32).await;
    assert_eq!(results.len(), 12);
    for (i, r) in results.iter().enumerate() {
        if i % 3 == 1 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_transport(), "{e:?}");
            let source = std::error::Error::source(e).unwrap().to_string();
            assert_eq!(source, format!("item {i} failed"));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32 * 10);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn stream_yields_the_prefix_as_soon_as_it_is_complete() {
    let start = Instant::now();
    // item 0 takes 1 s, the others 10 s
    let s = svc(
        Gauge::default(),
        |n| Duration::from_secs(if n == 0 { 1 } else { 10 }),
        |_| false,
    );
    let mut stream = Batch::new(s).concurrency(4).stream(0..4u32);
    assert_eq!(stream.next().await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    for n in 1..4 {
        assert_eq!(stream.next().await.unwrap().unwrap(), n * 10);
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(stream.next().await.is_none());
    assert!(stream.progress().is_finished());
}

#[tokio::test(start_paused = true)]
async fn reorder_window_bounds_how_far_the_run_gets_ahead() {
    let gauge = Gauge::default();
    // item 0 is slow; with a window of 4 only inputs 0..4 may start before it ends
    let s = svc(
        gauge.clone(),
        |n| Duration::from_secs(if n == 0 { 100 } else { 1 }),
        |_| false,
    );
    let mut stream = Batch::new(s)
        .concurrency(2)
        .reorder_window(4)
        .stream(0..10u32);
    let first = tokio::spawn(async move {
        let r = stream.next().await;
        (r, stream)
    });
    sleep(Duration::from_secs(50)).await;
    assert_eq!(
        gauge.calls.lock().unwrap().len(),
        4,
        "window of 4 caps the starts"
    );
    let (r, mut stream) = first.await.unwrap();
    assert_eq!(r.unwrap().unwrap(), 0);
    let mut n = 1;
    while let Some(r) = stream.next().await {
        assert_eq!(r.unwrap(), n * 10);
        n += 1;
    }
    assert_eq!(n, 10);
}

#[tokio::test(start_paused = true)]
async fn cancellation_answers_in_flight_and_unsent_inputs_as_cancelled() {
    let gauge = Gauge::default();
    let s = svc(gauge.clone(), |_| Duration::from_secs(1), |_| false);
    let token = CancellationToken::new();
    let run = tokio::spawn(
        Batch::new(s)
            .concurrency(2)
            .cancel_token(token.clone())
            .run(0..6u32),
    );
    sleep(Duration::from_millis(1500)).await; // 0 and 1 done, 2 and 3 in flight
    token.cancel();
    let results = run.await.unwrap();
    assert_eq!(results.len(), 6);
    assert_eq!(*results[0].as_ref().unwrap(), 0);
    assert_eq!(*results[1].as_ref().unwrap(), 10);
    for r in &results[2..] {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_cancelled());
        assert_eq!(e.class(), ErrorClass::Cancelled);
    }
    assert_eq!(
        *gauge.calls.lock().unwrap(),
        vec![0, 1, 2, 3],
        "4 and 5 never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_before_the_start_sends_nothing() {
    let gauge = Gauge::default();
    let s = svc(gauge.clone(), |_| Duration::from_secs(1), |_| false);
    let token = CancellationToken::new();
    token.cancel();
    let results = Batch::new(s).cancel_token(token).run(0..3u32).await;
    assert_eq!(results.len(), 3);
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().is_cancelled()));
    assert!(gauge.calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn poll_ready_backpressure_is_respected() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.allow(1);
    let mut stream = tokio_test::task::spawn(Batch::new(mock).concurrency(8).stream(0..3u32));
    assert!(stream.poll_next().is_pending());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 0);
    // the mock is not ready again: nothing more may be sent
    assert!(stream.poll_next().is_pending());
    assert!(handle.poll_request().is_pending());
    assert_eq!(stream.progress().queued, 1);
    assert_eq!(stream.progress().in_flight, 1);
    assert!(stream.progress().ready_waits >= 1);

    send.send_response(100);
    assert!(matches!(stream.poll_next(), Poll::Ready(Some(Ok(100)))));
    assert!(stream.poll_next().is_pending(), "still not ready");
    assert!(handle.poll_request().is_pending());

    handle.allow(2);
    assert!(stream.is_woken());
    assert!(stream.poll_next().is_pending());
    for expected in 1..3u32 {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, expected);
        send.send_response(req * 100);
    }
    assert!(matches!(stream.poll_next(), Poll::Ready(Some(Ok(100)))));
    assert!(matches!(stream.poll_next(), Poll::Ready(Some(Ok(200)))));
    assert!(matches!(stream.poll_next(), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn progress_counts_are_consistent() {
    let snapshots = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let snaps = snapshots.clone();
    let s = svc(
        Gauge::default(),
        |n| Duration::from_millis(1 + (n as u64 * 13) % 7),
        |n| n % 5 == 0,
    );
    let results = Batch::new(s)
        .concurrency(3)
        .on_progress(move |p| snaps.lock().unwrap().push(*p))
        .run(0..50u32)
        .await;
    assert_eq!(results.len(), 50);
    let snaps = snapshots.lock().unwrap();
    assert!(snaps.len() > 50);
    for p in snaps.iter() {
        check_invariants(p);
        assert!(p.in_flight <= 3);
    }
    let last = snaps.last().unwrap();
    assert!(last.is_finished());
    assert_eq!(last.submitted, 50);
    assert_eq!(last.failed, 10);
    assert_eq!(last.succeeded, 40);
    assert_eq!(last.yielded, 50);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn output_order_and_count_match_input(
        items in prop::collection::vec((0u64..200, any::<bool>()), 0..120),
        concurrency in 1usize..12,
        window in 0usize..40,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let table = Arc::new(items.clone());
        let gauge = Gauge::default();
        let (t1, t2) = (table.clone(), table);
        let s = svc(
            gauge.clone(),
            move |n| Duration::from_millis(t1[n as usize].0),
            move |n| t2[n as usize].1,
        );
        let results = rt.block_on(
            Batch::new(s)
                .concurrency(concurrency)
                .reorder_window(window)
                .run(0..items.len() as u32),
        );
        prop_assert_eq!(results.len(), items.len());
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(v) => prop_assert!(!items[i].1 && *v == i as u32 * 10),
                Err(e) => prop_assert!(items[i].1 && e.is_transport()),
            }
        }
        prop_assert!(gauge.max.load(Ordering::SeqCst) <= concurrency);
        prop_assert_eq!(gauge.calls.lock().unwrap().len(), items.len());
    }
}
