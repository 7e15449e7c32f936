//! Percentile plots of benchmark results (SVG, via plotters).

use std::path::Path;

use plotters::prelude::*;

/// One line of a percentile plot: a label and latencies (ms) at p50, p90, p99, p99.9, max.
pub struct Line {
    pub label: String,
    pub ms: [f64; 5],
}

const TICKS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// Writes an SVG with one line per setup: latency (log scale, ms) against percentile.
///
/// Errors: the file cannot be written.
pub fn percentile_plot(path: &Path, title: &str, lines: &[Line]) -> anyhow::Result<()> {
    let max = lines.iter().flat_map(|l| l.ms).fold(1.0f64, f64::max) * 1.5;
    let min = lines.iter().flat_map(|l| l.ms).filter(|v| *v > 0.0).fold(max, f64::min) / 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.2f64..4.2f64, (min.max(0.01)..max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| TICKS.get(x.round() as usize).map(|s| s.to_string()).unwrap_or_default())
        .y_desc("latency (ms, log scale)")
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = line.ms.iter().enumerate().map(|(x, y)| (x as f64, y.max(0.01))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}
