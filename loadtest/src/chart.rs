//! The run over time as an SVG (plotters' SVG backend: no fonts or system
//! libraries needed): throughput above, latency percentiles below.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::TimelinePoint;

pub fn draw(path: &Path, timeline: &[TimelinePoint], title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let (top, bottom) = root.split_vertically(350);
    let t_max = timeline.last().map_or(1.0, |p| p.t_s).max(1.0);
    let line = |f: fn(&TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        timeline.iter().map(|p| (p.t_s, f(p))).collect()
    };
    panel(
        &top,
        &format!("{title}: throughput"),
        "Gbit/s",
        t_max,
        0.001,
        [
            ("players in", BLUE, line(|p| p.in_gbit_per_s)),
            ("publishers out", GREEN, line(|p| p.out_gbit_per_s)),
        ],
    )?;
    panel(
        &bottom,
        "end-to-end latency (per second)",
        "ms",
        t_max,
        1.0,
        [
            ("p50", BLUE, line(|p| p.latency_p50_ms)),
            ("p99", RED, line(|p| p.latency_p99_ms)),
        ],
    )?;
    root.present().map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}

/// A named, coloured line of (seconds, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One chart: lines over time, the y axis up to 10% over their highest
/// point (at least `y_floor`), with a legend.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    y_desc: &str,
    t_max: f64,
    y_floor: f64,
    series: [Line<'_>; 2],
) -> anyhow::Result<()> {
    let y_max = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(y_floor)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("chart: {e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}
