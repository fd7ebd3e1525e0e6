//! The scheduling benchmark's plot: TTFT p90 against the request rate, one
//! line per configuration, one panel per workload (PNG, `plotters`). Text
//! is drawn with DejaVu Sans from the system's fonts (Debian's
//! fonts-dejavu-core).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::schedule::Figures;

const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .with_context(|| {
            format!("no DejaVu Sans font at {FONTS:?} (Debian: apt-get install fonts-dejavu-core)")
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a font plotters can read"))?;
    Ok(())
}

/// `results[(workload, config)]`: (rate, figures) in rate order.
pub fn ttft_p90(
    path: &Path,
    results: &BTreeMap<(&'static str, &'static str), Vec<(f64, Figures)>>,
) -> anyhow::Result<()> {
    register_font()?;
    let mut workloads: Vec<&str> = results.keys().map(|(w, _)| *w).collect();
    workloads.dedup();
    let root =
        BitMapBackend::new(path, (560 * workloads.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, workloads.len().max(1)));
    let colors = [RED, BLUE, GREEN];
    for (panel, workload) in panels.iter().zip(&workloads) {
        let lines: Vec<(&str, &Vec<(f64, Figures)>)> = results
            .iter()
            .filter(|((w, _), _)| w == workload)
            .map(|((_, c), v)| (*c, v))
            .collect();
        let points = lines.iter().flat_map(|(_, v)| v.iter());
        let max_rate = points.clone().map(|(r, _)| *r).fold(1.0, f64::max);
        let max_ttft = points
            .map(|(_, f)| f.ttft_p90 / 1000.0)
            .filter(|t| t.is_finite())
            .fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{workload}: TTFT p90"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_rate * 1.05, 0.0..max_ttft * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("requests/s")
            .y_desc("seconds")
            .label_style(("sans-serif", 13))
            .draw()?;
        // Configurations in the benchmark's order.
        for (n, config) in crate::schedule::CONFIGS.iter().enumerate() {
            let Some((_, series)) = lines.iter().find(|(c, _)| c == config) else {
                continue;
            };
            let color = colors[n % colors.len()];
            let data: Vec<(f64, f64)> = series
                .iter()
                .filter(|(_, f)| f.ttft_p90.is_finite())
                .map(|(r, f)| (*r, f.ttft_p90 / 1000.0))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
                .label(*config)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(data.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
