//! The run over time as an SVG (plotters' SVG backend: no fonts or system
//! libraries needed): throughput above, latency percentiles below.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::TimelinePoint;

pub fn draw(path: &Path, timeline: &[TimelinePoint], title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let (top, bottom) = root.split_vertically(350);
    let t_max = timeline.last().map_or(1.0, |p| p.t_s).max(1.0);

    let rate_max = timeline
        .iter()
        .map(|p| p.in_gbit_per_s.max(p.out_gbit_per_s))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: throughput"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("Gbit/s")
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    let series = [
        (
            "players in",
            BLUE,
            timeline
                .iter()
                .map(|p| (p.t_s, p.in_gbit_per_s))
                .collect::<Vec<_>>(),
        ),
        (
            "publishers out",
            GREEN,
            timeline.iter().map(|p| (p.t_s, p.out_gbit_per_s)).collect(),
        ),
    ];
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

    let lat_max = timeline
        .iter()
        .map(|p| p.latency_p99_ms)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("end-to-end latency (per second)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    let series = [
        (
            "p50",
            BLUE,
            timeline
                .iter()
                .map(|p| (p.t_s, p.latency_p50_ms))
                .collect::<Vec<_>>(),
        ),
        (
            "p99",
            RED,
            timeline.iter().map(|p| (p.t_s, p.latency_p99_ms)).collect(),
        ),
    ];
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
    root.present().map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}
