//! The admitted-tokens curve against the limit, as an SVG drawn with
//! plotters (text as plain SVG `<text>`: no font files needed).

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::comparison::{Outcome, Setup};

/// Tokens per second the provider admitted, averaged over the trailing
/// window (the quantity its limit bounds), sampled every second up to `end`.
fn trailing_rate(outcome: &Outcome, window: Duration, end: u64) -> Vec<(f64, f64)> {
    let admitted = &outcome.admitted;
    let (mut first, mut next, mut sum) = (0usize, 0usize, 0u64);
    (0..=end)
        .map(|s| {
            let now = Duration::from_secs(s);
            // admissions in (now - window, now]
            while next < admitted.len() && admitted[next].0 <= now {
                sum += admitted[next].1;
                next += 1;
            }
            while first < next && admitted[first].0 + window <= now {
                sum -= admitted[first].1;
                first += 1;
            }
            (s as f64, sum as f64 / window.as_secs_f64())
        })
        .collect()
}

/// Draws one curve per outcome and the limit (`tpm` per window) to `path`.
pub fn draw(
    path: &Path,
    setup: &Setup,
    outcomes: &[(&Outcome, RGBColor)],
) -> Result<(), Box<dyn std::error::Error>> {
    let limit = setup.tpm as f64 / setup.window.as_secs_f64();
    // every curve runs to the end of the slowest run
    let end = outcomes
        .iter()
        .map(|(o, _)| o.elapsed.as_secs() + 1)
        .max()
        .unwrap_or(0);
    let x_max = end as f64;
    let curves: Vec<_> = outcomes
        .iter()
        .map(|(o, color)| {
            (
                o.contender.name(),
                trailing_rate(o, setup.window, end),
                *color,
            )
        })
        .collect();

    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Tokens admitted by the provider (trailing {} s average) vs its limit",
                setup.window.as_secs()
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..limit * 1.45)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("tokens / s")
        .light_line_style(WHITE)
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, limit), (x_max, limit)],
            BLACK.stroke_width(1),
        ))?
        .label(format!("limit: {} TPM = {limit:.0} tokens/s", setup.tpm))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (name, points, color) in curves {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
