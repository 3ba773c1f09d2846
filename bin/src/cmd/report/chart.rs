//! One line chart drawn as SVG text with `plotters` (its SVG backend alone:
//! text is written as `<text>` elements, no font is read). The plots in
//! `plots.rs` are data; this is the one place that knows plotters.
//!
//! Integer axes that grow by doubling (batch, device count) are drawn on a
//! log2 scale: the points sit at log2(x) and the ticks are labelled with the
//! powers of two, so 1, 2, 4 ... 64 are evenly spaced.

use plotters::prelude::*;
use plotters::style::text_anchor;

/// One line: its legend label and points (x, y), sorted by x.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// One point of a series; `crossed` draws it as a cross (a configuration that
/// did not fit, shown where its plan is).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub crossed: bool,
}

impl Point {
    pub fn at(x: f64, y: f64) -> Point {
        Point {
            x,
            y,
            crossed: false,
        }
    }
}

/// A horizontal reference line (a device's capacity, a speed-up of 1).
#[derive(Clone, Debug)]
pub struct Level {
    pub y: f64,
    pub label: String,
}

/// A marked and labelled point (the best one): circled, `tag` beside it
/// ("best"), `label` (what it is, with its figure) under the chart, where it
/// cannot cover a line or the legend.
#[derive(Clone, Debug)]
pub struct Mark {
    pub x: f64,
    pub y: f64,
    pub tag: String,
    pub label: String,
}

/// Everything one chart shows.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// x values are powers of two (or near them): draw on a log2 scale.
    pub x_log2: bool,
    pub series: Vec<Series>,
    pub level: Option<Level>,
    pub mark: Option<Mark>,
    /// A line under the chart: what each point is.
    pub note: String,
}

const WIDTH: u32 = 860;
const HEIGHT: u32 = 540;
/// Room under the chart for the mark's label and the note.
const NOTE_HEIGHT: u32 = 48;

/// The chart as an SVG document.
///
/// # Errors
/// plotters' error as text (it writes into a String, so only a formatting
/// failure can come back).
pub fn svg(chart: &Chart) -> Result<String, String> {
    let mut out = String::new();
    draw(chart, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(chart: &Chart, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (area, note_area) = root.split_vertically(HEIGHT - NOTE_HEIGHT);

    let x_of = |x: f64| if chart.x_log2 { x.log2() } else { x };
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| x_of(p.x)));
    let (x_min, x_max) = bounds(xs);
    let (x_lo, x_hi) = if chart.x_log2 {
        (x_min - 0.3, x_max + 0.3)
    } else {
        let pad = ((x_max - x_min) * 0.05).max(0.5);
        (x_min - pad, x_max + pad)
    };
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.y));
    let (_, y_max) = bounds(ys.chain(chart.level.iter().map(|l| l.y)));
    let y_hi = if y_max > 0.0 { y_max * 1.18 } else { 1.0 };

    let mut c = ChartBuilder::on(&area)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)?;
    let x_ticks = if chart.x_log2 {
        (x_hi.floor() - x_lo.ceil()) as usize + 1
    } else {
        8
    };
    let x_text = |v: &f64| x_tick(*v, chart.x_log2);
    let y_text = |v: &f64| compact(*v);
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_labels(x_ticks.max(2))
        .y_labels(8)
        .x_label_formatter(&x_text)
        .y_label_formatter(&y_text)
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    if let Some(level) = &chart.level {
        let style = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(2);
        c.draw_series(LineSeries::new([(x_lo, level.y), (x_hi, level.y)], style))?
            .label(level.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (x_of(p.x), p.y)).collect();
        c.draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(
            s.points
                .iter()
                .filter(|p| !p.crossed)
                .map(|p| Circle::new((x_of(p.x), p.y), 4, color.filled())),
        )?;
        c.draw_series(
            s.points
                .iter()
                .filter(|p| p.crossed)
                .map(|p| Cross::new((x_of(p.x), p.y), 6, RED.stroke_width(2))),
        )?;
    }
    if let Some(mark) = &chart.mark {
        let at = (x_of(mark.x), mark.y);
        // The tag goes to the left of a point in the right half, so that it
        // stays inside the plot.
        let dx = if at.0 > (x_lo + x_hi) / 2.0 { -12 } else { 12 };
        let anchor = if dx < 0 {
            ("sans-serif", 14)
                .into_text_style(&area)
                .pos(text_anchor::Pos::new(
                    text_anchor::HPos::Right,
                    text_anchor::VPos::Bottom,
                ))
        } else {
            ("sans-serif", 14).into_text_style(&area)
        };
        c.draw_series(std::iter::once(
            EmptyElement::at(at)
                + Circle::new((0, 0), 9, BLACK.stroke_width(2))
                + Text::new(mark.tag.clone(), (dx, -14), anchor),
        ))?;
    }
    c.configure_series_labels()
        .position(legend_corner(chart, (x_lo, x_hi), y_hi))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    let small = ("sans-serif", 13).into_text_style(&note_area);
    if let Some(mark) = &chart.mark {
        note_area.draw_text(&format!("{}: {}", mark.tag, mark.label), &small, (12, 4))?;
    }
    note_area.draw_text(&chart.note, &small, (12, 24))?;
    root.present()?;
    Ok(())
}

/// The corner of the plot with the fewest points (and no reference line)
/// under it, for the legend: upper left, upper right, lower right, lower left,
/// the first of those with the fewest.
fn legend_corner(chart: &Chart, (x_lo, x_hi): (f64, f64), y_hi: f64) -> SeriesLabelPosition {
    let x_of = |x: f64| if chart.x_log2 { x.log2() } else { x };
    // Where a point lies across the plot, 0 to 1 each way.
    let spots: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|p| ((x_of(p.x) - x_lo) / (x_hi - x_lo), p.y / y_hi))
        .collect();
    let corners = [
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let in_band = |v: f64, upper: bool| if upper { v > 0.6 } else { v < 0.4 };
    let crowding = |right: bool, upper: bool| {
        let points = spots
            .iter()
            .filter(|(u, v)| in_band(*v, upper) && if right { *u > 0.55 } else { *u < 0.45 })
            .count();
        let level = chart
            .level
            .as_ref()
            .is_some_and(|l| in_band(l.y / y_hi, upper));
        points + usize::from(level)
    };
    let mut best = (SeriesLabelPosition::UpperLeft, usize::MAX);
    for (corner, right, upper) in corners {
        let n = crowding(right, upper);
        if n < best.1 {
            best = (corner, n);
        }
    }
    best.0
}

/// The least and greatest of `values` (0, 1 when there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// An x tick's label: on a log2 axis the power of two at whole exponents and
/// nothing between them.
fn x_tick(v: f64, log2: bool) -> String {
    if !log2 {
        return compact(v);
    }
    if (v - v.round()).abs() > 1e-6 {
        return String::new();
    }
    format!("{}", 2f64.powi(v.round() as i32))
}

/// A tick label: 3 significant digits with k/M/G for thousands and up.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if scaled == 0.0 {
        "0".to_string()
    } else if scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    // "2.50k" reads as "2.5k".
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(compact(2500.0), "2.5k");
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(123_456_789.0), "123M");
        assert_eq!(compact(0.126), "0.13");
        assert_eq!(x_tick(3.0, true), "8");
        assert_eq!(x_tick(2.5, true), "");
        assert_eq!(x_tick(3.0, false), "3");
    }

    #[test]
    fn a_chart_is_svg_with_its_texts() {
        let chart = Chart {
            title: "tiny & co: <speed>".into(),
            x_label: "batch (sequences per device)".into(),
            y_label: "tokens/s per device".into(),
            x_log2: true,
            series: vec![Series {
                label: "1 device".into(),
                points: vec![Point::at(1.0, 10.0), Point::at(4.0, 30.0)],
            }],
            level: Some(Level {
                y: 40.0,
                label: "capacity".into(),
            }),
            mark: Some(Mark {
                x: 4.0,
                y: 30.0,
                tag: "best".into(),
                label: "30 tokens/s".into(),
            }),
            note: "each point is the best tokens/s over attention".into(),
        };
        let svg = svg(&chart).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("tiny &amp; co: &lt;speed&gt;"));
        for text in [
            "batch (sequences per device)",
            "tokens/s per device",
            "capacity",
            "best",
        ] {
            assert!(svg.contains(text), "{text}");
        }
    }
}
