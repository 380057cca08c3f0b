//! What the stack survives: a batch of 300 classifications through the
//! whole stack (`LlmLayer` + a patient `Batch`) against a simulated
//! provider that goes down, in paused time.
//!
//! ```sh
//! cargo run --release --example outage
//! ```
//!
//! The provider (100 requests and 12,000 tokens per sliding 10 s window,
//! 150 ms per answer) answers every request 503 `server_is_overloaded`
//! from 0.3 s into the run (after about 30 answers) for 10 s, 60 s, 5 min,
//! or for good. Each outage runs twice: with the batch's default patience,
//! and fail-fast (every item ends with its first error, as a plain
//! `Batch` of a stack without patience did). The clock is tokio's paused
//! clock: the runs take a second, and the figures are the same every time.

mod scenarios;

use std::time::Duration;

use scenarios::{run, theoretical_minimum, Figures, Scenario, FOREVER, ITEMS};
use tower_llm_resilience::batch::Patience;

fn main() {
    println!(
        "{ITEMS} items, concurrency {}, limits 100 requests and 12,000 tokens per {} s; \
         theoretical minimum {:.0} s\n",
        scenarios::CONCURRENCY,
        scenarios::WINDOW.as_secs(),
        theoretical_minimum().as_secs_f64()
    );
    println!(
        "| outage | batch | items lost | time | requests sent | sent while down | breaker trips |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for outage in [
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(300),
        FOREVER,
    ] {
        for (name, patience) in [
            ("patient", Patience::default()),
            ("fail fast", Patience::fail_fast()),
        ] {
            let f = run(Scenario { outage, patience });
            row(outage, name, &f);
        }
    }
}

fn row(outage: Duration, batch: &str, f: &Figures) {
    let outage = if outage == FOREVER {
        "never back".to_owned()
    } else if outage.as_secs() >= 60 {
        format!("{} min", outage.as_secs() / 60)
    } else {
        format!("{} s", outage.as_secs())
    };
    let lost = if f.gave_up > 0 {
        format!("{} (gave up after 10 min)", f.lost)
    } else {
        f.lost.to_string()
    };
    println!(
        "| {outage} | {batch} | {lost} | {:.1} s | {} | {} | {} |",
        f.elapsed.as_secs_f64(),
        f.sent,
        f.sent_during_outage,
        f.trips
    );
}
