//! The main job (`examples/classify.rs`) end to end, against the simulated
//! provider in process under paused time: every text labelled as the
//! provider labelled it, no 429, with and without `--stream`; and the
//! example's reader of server-sent events.

#[allow(dead_code)]
#[path = "../examples/classify.rs"]
mod classify;

use clap::Parser;
use tower_llm_resilience::sim::{label, SimProvider};

/// Runs the job with `flags` over the example's simulated provider, in
/// process; returns its report, its results and the provider.
async fn job(flags: &[&str]) -> (classify::Report, Vec<serde_json::Value>, SimProvider) {
    let mut args =
        classify::Args::parse_from(std::iter::once("classify").chain(flags.iter().copied()));
    let config = classify::load_config(&mut args).unwrap();
    let setup = classify::simulated(&args);
    let sim = setup.sim.clone().unwrap();
    let texts = classify::read_texts(&args).unwrap();
    let layer = classify::stack(&config, &setup);
    let mut out = Vec::new();
    let report = classify::run(&args, &setup, &texts, &mut out, layer, sim.clone())
        .await
        .unwrap();
    let results: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), texts.len());
    for (i, (r, text)) in results.iter().zip(&texts).enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["text"], text.as_str());
        assert_eq!(r["label"], label(text), "{r}");
    }
    let minimum = report.minimum(&setup);
    assert!(
        report.elapsed >= minimum,
        "{:?} < {minimum:?}",
        report.elapsed
    );
    println!(
        "{flags:?}: elapsed {:?}, minimum {minimum:?}, ratio {:.3}, {:?}",
        report.elapsed,
        report.elapsed.as_secs_f64() / minimum.as_secs_f64(),
        sim.stats()
    );
    (report, results, sim)
}

#[tokio::test(start_paused = true)]
async fn stream_labels_every_text_with_no_429_and_sends_failed_streams_again() {
    let (report, _, sim) = job(&["--stream"]).await;
    assert_eq!((report.items, report.succeeded), (300, 300));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let wire = &report.wire;
    assert_eq!(
        wire.rate_limited.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let stats = sim.stats();
    assert_eq!(stats.rate_limited(), 0);
    assert!(stats.streams >= 300, "{stats:?}");
    // the seed's fault mix cuts some streams and ends others with an error
    // event: each was read as a failure and its item sent again
    assert!(
        stats.truncated > 0 && stats.mid_stream_errors > 0,
        "{stats:?}"
    );
    let failures = wire
        .stream_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failures, stats.failed_streams());
    assert!(sim
        .log()
        .iter()
        .all(|s| s.stream.is_none() || s.status == Some(http::StatusCode::OK)));
}

#[tokio::test(start_paused = true)]
async fn without_stream_the_stream_faults_never_strike() {
    let (report, _, sim) = job(&[]).await;
    assert_eq!(report.succeeded, 300);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited(), 0);
    assert_eq!((stats.streams, stats.failed_streams()), (0, 0));
    assert_eq!(
        report
            .wire
            .stream_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A file for `--config`, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tlr-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--config`: the file's limits drive the simulated provider and the
/// stack (at half the requests per window, the theoretical minimum goes
/// from 18 s to 28 s: the run is partly token-bound), and the flags win
/// over the file.
#[tokio::test(start_paused = true)]
async fn config_file_sets_the_limits_and_the_flags_win() {
    let (fast, _, _) = job(&[]).await;
    let file = ConfigFile::new(
        "limits",
        "provider = \"openai\"\n[limits]\nrpm = 20\ntpm = 1500\nwindow = \"2s\"\n[retry]\nmax_attempts = 6\n",
    );
    let path = file.0.to_str().unwrap();
    let (slow, _, sim) = job(&["--config", path]).await;
    assert_eq!(slow.succeeded, 300);
    assert_eq!(sim.stats().rate_limited(), 0);
    let ratio = slow.elapsed.as_secs_f64() / fast.elapsed.as_secs_f64();
    assert!(ratio > 1.4, "20 rpm took {ratio:.2}x the time of 40");
    // --rpm wins over the file: back to the default run's pace.
    let (flagged, _, _) = job(&["--config", path, "--rpm", "40"]).await;
    let ratio = flagged.elapsed.as_secs_f64() / fast.elapsed.as_secs_f64();
    assert!((0.9..1.1).contains(&ratio), "{ratio:.2}");
}

/// A bad file is a clear error naming the file and the field.
#[test]
fn a_bad_config_names_the_file_and_the_field() {
    let file = ConfigFile::new("bad", "[limits]\nrpm = 0\n");
    let path = file.0.to_str().unwrap();
    let mut args = classify::Args::parse_from(["classify", "--config", path]);
    let error = classify::load_config(&mut args).unwrap_err();
    assert!(
        error.contains(path) && error.contains("limits.rpm"),
        "{error}"
    );
    let mut args = classify::Args::parse_from(["classify", "--config", "/nonexistent/x.toml"]);
    let error = classify::load_config(&mut args).unwrap_err();
    assert!(error.contains("cannot read /nonexistent/x.toml"), "{error}");
}

fn events(chunks: &[&[u8]]) -> Result<Vec<String>, String> {
    let mut sse = classify::Sse::default();
    let mut got = Vec::new();
    for chunk in chunks {
        sse.feed(chunk, |data| got.push(data.to_owned()))?;
    }
    Ok(got)
}

#[test]
fn the_sse_reader_splits_events_wherever_the_frames_cut_them() {
    let stream = b"data: {\"a\":1}\n\n: a comment\nevent: x\ndata:{\"b\":2}\r\n\r\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
    let whole = events(&[stream]).unwrap();
    assert_eq!(whole, ["{\"a\":1}", "{\"b\":2}", "one\ntwo", "[DONE]"]);
    // any cut, down to one byte per frame, gives the same events
    for cut in 1..stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(events(&[a, b]).unwrap(), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(events(&bytes).unwrap(), whole);
    // an event never ended is not delivered
    assert!(events(&[b"data: partial"]).unwrap().is_empty());
}

#[test]
fn the_sse_reader_bounds_a_line_that_never_ends() {
    let long = vec![b'x'; classify::MAX_EVENT + 1];
    assert!(events(&[b"data: ", &long]).is_err());
    let many: Vec<&[u8]> = std::iter::repeat_n(&b"data: 0123456789abcdef\n"[..], 70_000).collect();
    assert!(
        events(&many).is_err(),
        "data lines without a blank line are bounded too"
    );
}
