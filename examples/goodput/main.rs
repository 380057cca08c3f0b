//! Goodput: the same batch through four clients against a simulated
//! provider with RPM and TPM limits and a 5 % fault mix, in paused time.
//!
//! ```sh
//! cargo run --release --example goodput
//! ```
//!
//! 2,000 chat completions of mixed sizes (seeded) go through each client
//! with the same batch driver at the same concurrency, against a fresh
//! simulated provider (500 requests and 200,000 tokens per sliding 60 s
//! window; 1.5 % 500s, 1.5 % 503s, 1 % connection resets, 1 % responses
//! 10 s slow). The clock is tokio's paused clock: minutes of simulated
//! time take well under a second, and the figures are the same on every run.
//!
//! It prints one table (completion time against the theoretical minimum
//! `W * (max(ceil(N / R), ceil(tokens / T)) - 1)`, requests sent, 429s,
//! items lost) and draws the admitted-tokens curve of (a) and (b) against
//! the limit to `docs/goodput.svg`. The table has one diagnostic row, (a'):
//! the same stack with the provider's rate-limit headers hidden from it, to
//! show what learning from them costs in this run.
//!
//! A second table runs the stack over 12 seeds (workload, faults and
//! jitter drawn again): one seed's figure moves by a few percent with
//! where its 1 % of 10 s slow completions fall (a slow completion among
//! the last requests ends the batch 10 s late, whatever the client), and
//! with how full its last window is. It shows the median and the worst,
//! and two diagnostic rows: no slow completions, and no faults at all (the
//! floor that the concurrency and the latency leave).
//!
//! A third table runs the stack (a) again with each request delayed on
//! its way to the provider (a seeded network: the provider counts a request
//! when it arrives), over a few arrival margins: the measurement behind the
//! limiter's default margin.

mod comparison;
mod plot;

use std::path::Path;

use std::time::Duration;

use comparison::{run, theoretical_minimum, workload, Contender, Network, Outcome, Setup};
use plotters::style::RGBColor;

fn main() {
    let setup = Setup::full();
    let jobs = workload(&setup);
    let minimum = theoretical_minimum(&setup, &jobs);
    let tokens: u64 = jobs.iter().map(|j| j.cost).sum();
    println!(
        "{} requests, {tokens} tokens; limits {} requests and {} tokens per {} s; \
         concurrency {}; theoretical minimum {:.0} s\n",
        setup.requests,
        setup.rpm,
        setup.tpm,
        setup.window.as_secs(),
        setup.concurrency,
        minimum.as_secs_f64()
    );
    let outcomes: Vec<Outcome> = Contender::ALL
        .iter()
        .map(|&c| run(&setup, &jobs, c))
        .collect();
    print_table(&setup, minimum, &outcomes);
    print_seeds(&setup);
    print_margins(&setup, &jobs, minimum);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/goodput.svg");
    let curves = [
        (&outcomes[0], RGBColor(0x1f, 0x77, 0xb4)),
        (&outcomes[2], RGBColor(0xd6, 0x27, 0x28)),
    ];
    if let Err(e) = std::fs::create_dir_all(path.parent().expect("a parent"))
        .map_err(Into::into)
        .and_then(|()| plot::draw(&path, &setup, &curves))
    {
        eprintln!("could not draw {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("\nadmitted tokens vs the limit: {}", path.display());
}

/// The seeds of the seeds table.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=12;

/// The stack's rows over every seed, and two diagnostic rows, in Markdown.
fn print_seeds(setup: &Setup) {
    let rows: [(&str, Contender, Setup); 5] = [
        (Contender::Stack.name(), Contender::Stack, *setup),
        (
            Contender::StackStreaming.name(),
            Contender::StackStreaming,
            *setup,
        ),
        (
            Contender::StackEstimate3x.name(),
            Contender::StackEstimate3x,
            *setup,
        ),
        (
            "(a) diagnostic: no slow completions",
            Contender::Stack,
            Setup {
                slow: Duration::ZERO,
                ..*setup
            },
        ),
        (
            "(a) diagnostic: no faults (the floor)",
            Contender::Stack,
            Setup {
                faults: false,
                ..*setup
            },
        ),
    ];
    println!(
        "\n| over seeds {}..={} | median x minimum | worst | seeds <= 1.03x | median quota used | 429s | items lost |",
        SEEDS.start(),
        SEEDS.end()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, contender, setup) in rows {
        let (mut ratios, mut quotas) = (Vec::new(), Vec::new());
        let (mut sent, mut limited, mut lost) = (0, 0, 0);
        for seed in SEEDS {
            let setup = Setup { seed, ..setup };
            let jobs = workload(&setup);
            let minimum = theoretical_minimum(&setup, &jobs);
            let o = run(&setup, &jobs, contender);
            ratios.push(o.elapsed.as_secs_f64() / minimum.as_secs_f64());
            quotas.push(o.quota_used(&setup).unwrap_or(0.0));
            sent += o.sent;
            limited += o.rate_limited;
            lost += o.lost;
        }
        let within = ratios.iter().filter(|&&r| r <= 1.03).count();
        let worst = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.3} | {worst:.3} | {within} of {} | {:.1} % | {limited} ({:.2} %) | {lost} |",
            median(&mut ratios),
            ratios.len(),
            median(&mut quotas) * 100.0,
            limited as f64 * 100.0 / sent.max(1) as f64,
        );
    }
}

/// The median (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The networks of the margin table.
const NETWORKS: [(&str, Network); 3] = [
    ("in process", Network::NONE),
    (
        "20 ms + U(0, 50 ms)",
        Network {
            base: Duration::from_millis(20),
            jitter: Duration::from_millis(50),
            spikes: 0.0,
            spike: Duration::ZERO,
        },
    ),
    (
        "same, 1 % +200 ms",
        Network {
            base: Duration::from_millis(20),
            jitter: Duration::from_millis(50),
            spikes: 0.01,
            spike: Duration::from_millis(200),
        },
    ),
];

/// The margins of the margin table.
const MARGINS: [u64; 6] = [0, 50, 100, 250, 500, 1000];

/// Stack (a) over each network and margin, in Markdown.
fn print_margins(setup: &Setup, jobs: &[comparison::Job], minimum: Duration) {
    println!("\n| network to the provider | arrival margin | x minimum | 429s | items lost | quota used |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, network) in NETWORKS {
        for ms in MARGINS {
            let setup = Setup {
                network,
                margin: Some(Duration::from_millis(ms)),
                ..*setup
            };
            let o = run(&setup, jobs, Contender::Stack);
            let quota = o
                .quota_used(&setup)
                .map_or_else(|| "-".to_owned(), |q| format!("{:.1} %", q * 100.0));
            println!(
                "| {name} | {ms} ms | {:.3} | {} ({:.2} %) | {} | {quota} |",
                o.elapsed.as_secs_f64() / minimum.as_secs_f64(),
                o.rate_limited,
                o.rate_limited_share() * 100.0,
                o.lost,
            );
        }
    }
}

/// The one table, in Markdown.
fn print_table(setup: &Setup, minimum: std::time::Duration, outcomes: &[Outcome]) {
    println!("| client | completion | x minimum | requests sent | 429s | items lost | quota used | retries |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let quota = o
            .quota_used(setup)
            .map_or_else(|| "-".to_owned(), |q| format!("{:.1} %", q * 100.0));
        let retries = o.retries.map_or_else(|| "-".to_owned(), |r| r.to_string());
        println!(
            "| {} | {:.1} s | {:.3} | {} | {} ({:.1} %) | {} | {quota} | {retries} |",
            o.contender.name(),
            o.elapsed.as_secs_f64(),
            o.elapsed.as_secs_f64() / minimum.as_secs_f64(),
            o.sent,
            o.rate_limited,
            o.rate_limited_share() * 100.0,
            o.lost,
        );
    }
}
