//! The chart of `orcwire bench --plot FILE.svg`: p50 round trip against
//! payload size, one line per transport and direction, both axes
//! logarithmic.
//!
//! Drawn with `plotters` and only its SVG backend. Without the `ttf`
//! feature plotters estimates text extents itself and the SVG backend
//! writes labels as `<text>` elements for the viewer to render, so no font
//! library (fontconfig, freetype) is linked or needed.
//!
//! Only round-trip cases with a payload are plotted: throughput cases have
//! no size axis, and the floors' bare ping-pong (payload 0) has no place
//! on a logarithmic axis.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::bench::{CaseResult, Direction, Mode, TransportKind};

/// Width and height of the whole picture, in SVG pixels.
const SIZE: (u32, u32) = (1040, 640);
/// Width of the legend column at the right, outside the plot so that it
/// never hides a line.
const LEGEND_WIDTH: u32 = 230;

/// Why the chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The results hold no round trip with a payload to plot.
    #[error(
        "no round-trip case with a payload to plot; run cases with --payloads of at least 1 byte"
    )]
    NothingToPlot,
    /// plotters failed to lay out or draw the chart.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// The SVG file could not be written.
    #[error(
        "writing the chart to {path}: {source}; check that the directory exists and is writable"
    )]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One plotted line: its name and its `(payload, p50 µs)` points,
/// ascending by payload.
type Line = (String, Vec<(f64, f64)>);

/// The lines to draw: round trips with a payload, grouped by transport and
/// direction, in the order they first appear in `results`.
fn lines(results: &[CaseResult]) -> Vec<Line> {
    let mut order: Vec<(TransportKind, Direction)> = Vec::new();
    let mut points: BTreeMap<(usize, usize), Vec<(f64, f64)>> = BTreeMap::new();
    for c in results {
        if c.mode != Mode::Rtt || c.payload == 0 {
            continue;
        }
        let key = (c.transport, c.direction);
        let index = match order.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                order.push(key);
                order.len() - 1
            }
        };
        // A p50 of 0 ns cannot be placed on a log axis; 1 ns is below
        // anything measurable here.
        let us = c.summary.p50_ns.max(1) as f64 / 1e3;
        points
            .entry((index, c.payload))
            .or_default()
            .push((c.payload as f64, us));
    }
    order
        .iter()
        .enumerate()
        .map(|(i, (t, d))| {
            let pts = points
                .range((i, 0)..=(i, usize::MAX))
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            (format!("{} {}", t.name(), d.name()), pts)
        })
        .collect()
}

/// A tick on the payload axis. plotters puts log ticks at powers of ten,
/// so they read as decimal units.
fn bytes_label(bytes: f64) -> String {
    let b = bytes.round();
    match b {
        b if b >= 1e6 => format!("{} MB", b / 1e6),
        b if b >= 1e3 => format!("{} kB", b / 1e3),
        b => format!("{b} B"),
    }
}

fn us_label(us: f64) -> String {
    if us >= 1.0 && us.fract() == 0.0 {
        format!("{us:.0}")
    } else if us >= 1.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

/// The chart as an SVG document.
///
/// ```
/// use std::time::Duration;
/// use orcwire_tools::bench::{CaseResult, Direction, Mode, Summary, TransportKind};
///
/// let case = |payload, p50_ns| CaseResult {
///     transport: TransportKind::Pipe,
///     direction: Direction::ToExecutor,
///     payload,
///     mode: Mode::Rtt,
///     summary: Summary { calls: 10, p50_ns, p99_ns: p50_ns, p999_ns: p50_ns, ops_per_s: 1.0 },
/// };
/// let svg = orcwire_tools::plot::render_svg(&[case(8, 40_000), case(4096, 55_000)])?;
/// assert!(svg.starts_with("<svg") && svg.contains("pipe to-executor"));
/// # Ok::<(), orcwire_tools::plot::PlotError>(())
/// ```
///
/// # Errors
/// [`PlotError::NothingToPlot`] when `results` hold no round trip with a
/// payload; [`PlotError::Draw`] when plotters fails.
pub fn render_svg(results: &[CaseResult]) -> Result<String, PlotError> {
    let lines = lines(results);
    let all = || lines.iter().flat_map(|(_, p)| p.iter().copied());
    let (Some(x_min), Some(x_max)) = (
        all().map(|p| p.0).reduce(f64::min),
        all().map(|p| p.0).reduce(f64::max),
    ) else {
        return Err(PlotError::NothingToPlot);
    };
    let y_min = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max);
    let draw = |e: &dyn std::fmt::Display| PlotError::Draw(e.to_string());

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(
                "orcwire bench: p50 round trip by payload",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_min / 1.6..x_max * 1.6).log_scale(),
                (y_min / 1.6..y_max * 1.6).log_scale(),
            )
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("payload (bytes, each way)")
            .y_desc("p50 round trip (µs)")
            .x_label_formatter(&|x| bytes_label(*x))
            .y_label_formatter(&|y| us_label(*y))
            .draw()
            .map_err(|e| draw(&e))?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(
                    LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(3),
                )
                .map_err(|e| draw(&e))?;
            // The legend entry: a short stroke and the line's name.
            let y = 60 + 22 * i as i32;
            legend_area
                .draw(&PathElement::new(
                    vec![(8, y), (36, y)],
                    color.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?;
            legend_area
                .draw(&Text::new(
                    name.clone(),
                    (44, y - 7),
                    ("sans-serif", 14).into_font(),
                ))
                .map_err(|e| draw(&e))?;
        }
        root.present().map_err(|e| draw(&e))?;
    }
    Ok(svg)
}

/// Writes [`render_svg`]'s chart to `path`.
///
/// # Errors
/// As [`render_svg`], and [`PlotError::Write`] when the file cannot be
/// written.
pub fn write_svg(results: &[CaseResult], path: &Path) -> Result<(), PlotError> {
    let svg = render_svg(results)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Summary;

    fn case(t: TransportKind, d: Direction, payload: usize, p50: u64, mode: Mode) -> CaseResult {
        CaseResult {
            transport: t,
            direction: d,
            payload,
            mode,
            summary: Summary {
                calls: 10,
                p50_ns: p50,
                p99_ns: p50,
                p999_ns: p50,
                ops_per_s: 1.0,
            },
        }
    }

    #[test]
    fn one_line_per_transport_and_direction_without_throughput_or_bare_floor() {
        let (te, tc) = (Direction::ToExecutor, Direction::ToController);
        let tp = Mode::Throughput {
            threads: 1,
            window: 64,
        };
        let results = vec![
            case(TransportKind::FloorSpin, te, 0, 100, Mode::Rtt),
            case(TransportKind::FloorSpin, te, 4096, 900, Mode::Rtt),
            case(TransportKind::FloorSpin, te, 8, 150, Mode::Rtt),
            case(TransportKind::ShmSpin, te, 8, 400, Mode::Rtt),
            case(TransportKind::ShmSpin, tc, 8, 450, Mode::Rtt),
            case(TransportKind::ShmSpin, te, 64, 0, tp),
        ];
        let l = lines(&results);
        let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "floor-spin to-executor",
                "shm-spin to-executor",
                "shm-spin to-controller"
            ]
        );
        assert_eq!(l[0].1, vec![(8.0, 0.15), (4096.0, 0.9)]);
        let svg = render_svg(&results).unwrap();
        assert!(svg.contains("p50 round trip (µs)"));
        assert!(matches!(
            render_svg(&results[5..]),
            Err(PlotError::NothingToPlot)
        ));
    }
}
