//! The tower service against the pure state machine: random sequences of
//! calls (answers, latencies) and time steps go through the service and,
//! by hand, through a `Circuit` with the same config. The service's fast
//! paths (the lock-free closed check, the per-clone key cache, skipping
//! plain successes in a full healthy window) must change nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CallOutcome, Circuit, CircuitBreakerLayer, Config, FailureWindow,
};
use tower_llm_resilience::{BoxError, ErrorClass, Key};

#[derive(Clone, Copy, Debug)]
enum Step {
    Call { status: u16, latency_ms: u64 },
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (prop_oneof![4 => Just(200u16), 3 => Just(503u16), 1 => Just(400u16), 1 => Just(500u16)], 0u64..1_500)
            .prop_map(|(status, latency_ms)| Step::Call { status, latency_ms }),
        1 => Just(Step::Call { status: 401, latency_ms: 10 }),
        2 => (0u64..20_000).prop_map(Step::Advance),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            (1u32..12).prop_map(FailureWindow::Count),
            (1u64..20).prop_map(|s| FailureWindow::Time(Duration::from_secs(s))),
        ],
        1u32..10,
        prop_oneof![Just(0.3), Just(0.5), Just(1.0)],
        any::<bool>(),
        1u32..4,
        any::<bool>(),
    )
        .prop_map(|(window, minimum, rate, slow, probes, backoff)| {
            let mut c = Config::new()
                .window(window)
                .minimum_calls(minimum)
                .failure_rate(rate)
                .open_duration(Duration::from_secs(5))
                .half_open_probes(probes)
                .auth_open_duration(Duration::from_secs(30))
                .slow_call_duration(Duration::from_secs(1));
            if slow {
                c = c.slow_call_rate(0.5);
            }
            if backoff {
                c = c.open_backoff(2.0, Duration::from_secs(40));
            }
            c
        })
}

fn outcome(status: u16, elapsed: Duration) -> CallOutcome {
    match status {
        200 => CallOutcome::success(elapsed),
        503 => CallOutcome::failure(ErrorClass::Overloaded, elapsed),
        500 => CallOutcome::failure(ErrorClass::ServerError, elapsed),
        400 => CallOutcome::ignored(),
        401 => CallOutcome::trip(ErrorClass::Auth, Duration::from_secs(30)),
        _ => unreachable!(),
    }
}

async fn run(config: Config, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let next: Arc<Mutex<(u16, u64)>> = Arc::new(Mutex::new((200, 0)));
    let script = next.clone();
    let provider = service_fn(move |_req: Request<String>| {
        let (status, latency) = *script.lock().unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(latency)).await;
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(String::new())
                    .unwrap(),
            )
        }
    });
    let svc = CircuitBreakerLayer::new().config(config).layer(provider);
    let mut reference: Option<Circuit> = None;
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Step::Call { status, latency_ms } => {
                *next.lock().unwrap() = (status, latency_ms);
                let start = Instant::now();
                let circuit = reference.get_or_insert_with(|| Circuit::new(config, start));
                let (want, _) = circuit.try_acquire(start);
                let got = svc.clone().oneshot(Request::new(String::new())).await;
                let end = Instant::now();
                match (want, got) {
                    (Ok(permit), Ok(response)) => {
                        prop_assert_eq!(response.status().as_u16(), status, "step {}", i);
                        circuit.on_result(permit, outcome(status, end - start), end);
                    }
                    (Err(rejected), Err(error)) => {
                        prop_assert!(error.is_circuit_open(), "step {}: {:?}", i, error);
                        prop_assert_eq!(error.class(), rejected.class(), "step {}", i);
                        prop_assert_eq!(error.retry_after(), rejected.retry_after(), "step {}", i);
                    }
                    (want, got) => {
                        prop_assert!(false, "step {}: model {:?}, service {:?}", i, want, got)
                    }
                }
                prop_assert_eq!(svc.state(&Key::DEFAULT), circuit.state(), "step {}", i);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_service_follows_the_state_machine(config in config(), steps in prop::collection::vec(step(), 1..150)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(config, steps))?;
    }
}
