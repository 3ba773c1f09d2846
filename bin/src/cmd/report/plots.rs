//! The report's plots, in the paper's manner, as data for [`chart`]:
//! - tokens/s per device vs batch, a line per device count (per model and
//!   device type);
//! - tokens per money unit vs device count, a line per device type (per model);
//! - planned memory vs batch, a line per device count (and shard mode where it
//!   varies), the device's capacity as a level, oom points crossed (per model
//!   and device type);
//! - flash/vanilla speed-up vs batch, a line per device count (per model and
//!   device type, where both attentions ran).
//!
//! Each point is the best configuration over the axes the plot does not show;
//! its note says which axes those are. A plot with nothing to show is not
//! drawn, and [`Skipped`] says why.

use std::collections::{BTreeMap, BTreeSet};

use super::chart::{self, Chart, Level, Mark, Point, Series};
use super::{device_type, table::sig4};
use crate::cmd::sweep::record::{Record, Status};

/// One drawn plot.
#[derive(Clone, Debug)]
pub struct Plot {
    pub model: String,
    /// Its file name in the output folder: `[a-z0-9._-]` only.
    pub file: String,
    pub title: String,
    pub note: String,
    pub svg: String,
}

/// A plot that was not drawn, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub model: String,
    pub title: String,
    pub why: String,
}

/// Every plot of a report.
#[derive(Debug, Default)]
pub struct Drawn {
    pub plots: Vec<Plot>,
    pub skipped: Vec<Skipped>,
}

/// The file-name prefixes of the plots (so that stale ones can be found).
const KINDS: [&str; 4] = [
    "tokens-per-s_",
    "tokens-per-money_",
    "memory_",
    "flash-speedup_",
];

/// Whether `name` is a file name this module gives a plot.
pub fn is_plot_name(name: &str) -> bool {
    name.ends_with(".svg") && KINDS.iter().any(|k| name.starts_with(k))
}

/// `text` as a file-name part: lowercase, `[a-z0-9._-]` only, other runs of
/// characters as one `-`.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for ch in text.to_lowercase().chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_') {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches(|c| c == '-' || c == '.').to_string();
    if out.is_empty() {
        "unnamed".into()
    } else {
        out
    }
}

/// Draws every plot of `records` (already one per configuration).
pub fn draw_all(records: &[Record]) -> Drawn {
    let mut drawn = Drawn::default();
    let models: BTreeSet<&str> = records.iter().map(|r| r.config.model.as_str()).collect();
    for model in models {
        let of_model: Vec<&Record> = records.iter().filter(|r| r.config.model == model).collect();
        let devices: BTreeSet<String> = of_model.iter().map(|r| device_type(r)).collect();
        for device in &devices {
            let here: Vec<&Record> = of_model
                .iter()
                .copied()
                .filter(|r| &device_type(r) == device)
                .collect();
            add(&mut drawn, model, speed(model, device, &here));
            add(&mut drawn, model, memory(model, device, &here));
            if let Some(p) = speedup(model, device, &here) {
                add(&mut drawn, model, p);
            }
        }
        let units: BTreeSet<&str> = of_model.iter().map(|r| r.money_label()).collect();
        for unit in &units {
            let in_unit: Vec<&Record> = of_model
                .iter()
                .copied()
                .filter(|r| r.money_label() == *unit)
                .collect();
            add(
                &mut drawn,
                model,
                per_money(model, unit, units.len() > 1, &in_unit),
            );
        }
    }
    drawn
}

/// A plot's name and chart, or why there is none.
type Planned = (String, Result<Chart, String>);

fn add(drawn: &mut Drawn, model: &str, (file, chart): Planned) {
    let chart = match chart {
        Ok(c) => c,
        Err(why) => {
            drawn.skipped.push(Skipped {
                model: model.into(),
                title: file,
                why,
            });
            return;
        }
    };
    // Two device names may make one slug: the later plot gets a number.
    let mut name = format!("{file}.svg");
    let mut n = 2;
    while drawn.plots.iter().any(|p| p.file == name) {
        name = format!("{file}-{n}.svg");
        n += 1;
    }
    match chart::svg(&chart) {
        Ok(svg) => drawn.plots.push(Plot {
            model: model.into(),
            file: name,
            title: chart.title.clone(),
            note: chart.note.clone(),
            svg,
        }),
        Err(e) => drawn.skipped.push(Skipped {
            model: model.into(),
            title: chart.title,
            why: format!("plotting failed: {e}"),
        }),
    }
}

/// Why nothing ran: "no configuration ran (2 oom, 1 failed)".
fn none_ran(records: &[&Record]) -> String {
    let count = |s: Status| records.iter().filter(|r| r.status == s).count();
    let parts: Vec<String> = [
        (Status::Oom, "oom"),
        (Status::Failed, "failed"),
        (Status::Timeout, "timeout"),
    ]
    .iter()
    .filter(|(s, _)| count(*s) > 0)
    .map(|(s, word)| format!("{} {word}", count(*s)))
    .collect();
    format!("no configuration ran ({})", parts.join(", "))
}

/// The axes among `axes` on which `records` differ, for a plot's note.
fn varying(records: &[&Record], axes: &[&'static str]) -> Vec<&'static str> {
    axes.iter()
        .copied()
        .filter(|axis| {
            let values: BTreeSet<String> = records.iter().map(|r| axis_value(r, axis)).collect();
            values.len() > 1
        })
        .collect()
}

fn axis_value(r: &Record, axis: &str) -> String {
    let c = &r.config;
    match axis {
        "attention" => c.attention.clone(),
        "shard" => c.shard.clone(),
        "comm" => c.comm.clone(),
        "threads" => format!("{:?}", c.threads),
        "batch" => c.batch.to_string(),
        "device type" => device_type(r),
        _ => String::new(),
    }
}

/// "each point is the best tokens/s over attention and comm", or what a point
/// is when nothing else varies.
fn best_over_note(what: &str, over: &[&str]) -> String {
    match over {
        [] => "each point is one configuration".into(),
        [one] => format!("each point is the best {what} over {one}"),
        [rest @ .., last] => format!(
            "each point is the best {what} over {} and {last}",
            rest.join(", ")
        ),
    }
}

fn devices_label(n: usize) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

/// Tokens/s per device vs batch, a line per device count.
fn speed(model: &str, device: &str, records: &[&Record]) -> Planned {
    let file = format!("tokens-per-s_{}_{}", slug(model), slug(device));
    let ran: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok && r.tokens_per_s_per_device.is_some())
        .collect();
    if ran.is_empty() {
        return (file, Err(none_ran(records)));
    }
    let value = |r: &Record| r.tokens_per_s_per_device.as_ref().map_or(0.0, |s| s.mean);
    // (devices, batch) -> the best record there.
    let mut best: BTreeMap<(usize, usize), &Record> = BTreeMap::new();
    for r in &ran {
        let slot = best.entry((r.config.devices, r.config.batch)).or_insert(r);
        if value(r) > value(slot) {
            *slot = r;
        }
    }
    let series = series_by_devices(best.iter().map(|(&(d, b), r)| (d, b, value(r))));
    let top = ran
        .iter()
        .copied()
        .max_by(|a, b| value(a).total_cmp(&value(b)));
    let mark = top.map(|r| Mark {
        x: r.config.batch as f64,
        y: value(r),
        tag: "best".into(),
        label: format!(
            "{} tokens/s per device ({}, batch {})",
            sig4(value(r)),
            devices_label(r.config.devices),
            r.config.batch
        ),
    });
    let over = varying(&ran, &["attention", "shard", "comm", "threads"]);
    let chart = Chart {
        title: format!("{model} on {device}: tokens/s per device vs batch"),
        x_label: "batch (sequences per device)".into(),
        y_label: "tokens/s per device".into(),
        x_log2: true,
        series,
        level: None,
        mark,
        note: best_over_note("tokens/s", &over),
    };
    (file, Ok(chart))
}

/// Lines of (x, y) keyed by device count, from (devices, x, y).
fn series_by_devices(points: impl Iterator<Item = (usize, usize, f64)>) -> Vec<Series> {
    let mut lines: BTreeMap<usize, Vec<Point>> = BTreeMap::new();
    for (devices, x, y) in points {
        lines
            .entry(devices)
            .or_default()
            .push(Point::at(x as f64, y));
    }
    lines
        .into_iter()
        .map(|(d, mut points)| {
            points.sort_by(|a, b| a.x.total_cmp(&b.x));
            Series {
                label: devices_label(d),
                points,
            }
        })
        .collect()
}

/// Tokens per money unit vs device count, a line per device type.
fn per_money(model: &str, unit: &str, several_units: bool, records: &[&Record]) -> Planned {
    let unit_part = if several_units {
        format!("_{}", slug(unit))
    } else {
        String::new()
    };
    let file = format!("tokens-per-money_{}{unit_part}", slug(model));
    let ran: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok && r.tokens_per_dollar.is_some())
        .collect();
    if ran.is_empty() {
        let why = if records.iter().any(|r| r.status == Status::Ok) {
            "no configuration that ran has a price (its device type has no listed price)".into()
        } else {
            none_ran(records)
        };
        return (file, Err(why));
    }
    let value = |r: &Record| r.tokens_per_dollar.unwrap_or(0.0);
    let mut best: BTreeMap<(String, usize), &Record> = BTreeMap::new();
    for r in &ran {
        let slot = best.entry((device_type(r), r.config.devices)).or_insert(r);
        if value(r) > value(slot) {
            *slot = r;
        }
    }
    let mut lines: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
    for ((device, devices), r) in &best {
        lines
            .entry(device.as_str())
            .or_default()
            .push(Point::at(*devices as f64, value(r)));
    }
    let series = lines
        .into_iter()
        .map(|(device, points)| Series {
            label: device.to_string(),
            points,
        })
        .collect();
    let top = ran
        .iter()
        .copied()
        .max_by(|a, b| value(a).total_cmp(&value(b)));
    let mark = top.map(|r| Mark {
        x: r.config.devices as f64,
        y: value(r),
        tag: "best".into(),
        label: format!(
            "{} tokens per {unit} ({}, {}, batch {})",
            sig4(value(r)),
            device_type(r),
            devices_label(r.config.devices),
            r.config.batch
        ),
    });
    let mut over = vec!["batch"];
    over.extend(varying(&ran, &["attention", "shard", "comm", "threads"]));
    let chart = Chart {
        title: format!("{model}: tokens per {unit} vs device count"),
        x_label: "devices".into(),
        y_label: format!("tokens per {unit}"),
        x_log2: true,
        series,
        level: None,
        mark,
        note: best_over_note(&format!("tokens per {unit}"), &over),
    };
    (file, Ok(chart))
}

/// Planned memory vs batch, a line per device count (and shard mode where it
/// varies), with the device's capacity.
fn memory(model: &str, device: &str, records: &[&Record]) -> Planned {
    let file = format!("memory_{}_{}", slug(model), slug(device));
    let planned: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.planned_bytes.is_some())
        .collect();
    if planned.is_empty() {
        return (file, Err("no configuration has a memory plan".into()));
    }
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let shard_varies = !varying(&planned, &["shard"]).is_empty();
    // (devices, shard, batch) -> the smallest plan there.
    let mut smallest: BTreeMap<(usize, String, usize), &Record> = BTreeMap::new();
    for r in &planned {
        let shard = if shard_varies {
            r.config.shard.clone()
        } else {
            String::new()
        };
        let slot = smallest
            .entry((r.config.devices, shard, r.config.batch))
            .or_insert(r);
        if r.planned_bytes < slot.planned_bytes {
            *slot = r;
        }
    }
    let mut lines: BTreeMap<(usize, String), Vec<Point>> = BTreeMap::new();
    for ((devices, shard, batch), r) in &smallest {
        lines
            .entry((*devices, shard.clone()))
            .or_default()
            .push(Point {
                x: *batch as f64,
                y: gib(r.planned_bytes.unwrap_or(0)),
                crossed: r.status == Status::Oom,
            });
    }
    let series = lines
        .into_iter()
        .map(|((devices, shard), points)| Series {
            label: if shard.is_empty() {
                devices_label(devices)
            } else {
                format!("{}, shard {shard}", devices_label(devices))
            },
            points,
        })
        .collect();
    let capacity = planned.iter().filter_map(|r| r.capacity_bytes).min();
    let level = capacity.map(|c| Level {
        y: gib(c),
        label: format!("capacity {:.2} GiB", gib(c)),
    });
    // The largest plan that fits: how close to the capacity the grid went.
    let fits = smallest
        .values()
        .copied()
        .filter(|r| r.status != Status::Oom)
        .max_by_key(|r| r.planned_bytes);
    let mark = fits.map(|r| Mark {
        x: r.config.batch as f64,
        y: gib(r.planned_bytes.unwrap_or(0)),
        tag: "largest that fits".into(),
        label: format!(
            "{:.2} GiB ({}, batch {})",
            gib(r.planned_bytes.unwrap_or(0)),
            devices_label(r.config.devices),
            r.config.batch
        ),
    });
    let over = varying(&planned, &["attention", "comm", "threads"]);
    let mut note = match over.as_slice() {
        [] => "each point is one configuration's plan".to_string(),
        axes => format!("each point is the smallest plan over {}", axes.join(", ")),
    };
    note.push_str("; a cross: did not fit (oom), not run");
    let chart = Chart {
        title: format!("{model} on {device}: planned memory per device vs batch"),
        x_label: "batch (sequences per device)".into(),
        y_label: "planned memory per device (GiB)".into(),
        x_log2: true,
        series,
        level,
        mark,
        note,
    };
    (file, Ok(chart))
}

/// Flash/vanilla speed-up vs batch, a line per device count; `None` where the
/// records hold only one attention (nothing to compare, nothing to say).
fn speedup(model: &str, device: &str, records: &[&Record]) -> Option<Planned> {
    let attentions: BTreeSet<&str> = records
        .iter()
        .map(|r| r.config.attention.as_str())
        .collect();
    if !(attentions.contains("flash") && attentions.contains("vanilla")) {
        return None;
    }
    let file = format!("flash-speedup_{}_{}", slug(model), slug(device));
    let value = |r: &Record| r.tokens_per_s.as_ref().map_or(0.0, |s| s.mean);
    // (devices, batch) -> best tokens/s of each attention.
    let mut best: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
    let ran: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok && r.tokens_per_s.is_some())
        .collect();
    for r in &ran {
        let slot = best.entry((r.config.devices, r.config.batch)).or_default();
        match r.config.attention.as_str() {
            "flash" => slot.0 = slot.0.max(value(r)),
            "vanilla" => slot.1 = slot.1.max(value(r)),
            _ => {}
        }
    }
    let ratios: Vec<(usize, usize, f64)> = best
        .iter()
        .filter(|(_, (f, v))| *f > 0.0 && *v > 0.0)
        .map(|(&(d, b), (f, v))| (d, b, f / v))
        .collect();
    if ratios.is_empty() {
        let why = "no batch and device count where both flash and vanilla ran".into();
        return Some((file, Err(why)));
    }
    let top = ratios.iter().max_by(|a, b| a.2.total_cmp(&b.2));
    let mark = top.map(|&(d, b, s)| Mark {
        x: b as f64,
        y: s,
        tag: "largest".into(),
        label: format!("{s:.2}× ({}, batch {b})", devices_label(d)),
    });
    let series = series_by_devices(ratios.iter().copied());
    let over = varying(&ran, &["shard", "comm", "threads"]);
    let note = match over.as_slice() {
        [] => "each point is flash tokens/s ÷ vanilla tokens/s, other axes equal".to_string(),
        axes => format!(
            "each point is the best flash tokens/s ÷ the best vanilla tokens/s over {}",
            axes.join(", ")
        ),
    };
    let chart = Chart {
        title: format!("{model} on {device}: flash / vanilla attention speed-up vs batch"),
        x_label: "batch (sequences per device)".into(),
        y_label: "speed-up (flash tokens/s ÷ vanilla tokens/s)".into(),
        x_log2: true,
        series,
        level: Some(Level {
            y: 1.0,
            label: "no speed-up".into(),
        }),
        mark,
        note,
    };
    Some((file, Ok(chart)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::report::tests::record;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        assert_eq!(slug("paper-100m"), "paper-100m");
        assert_eq!(slug("../x/ÿ"), "x");
        assert_eq!(slug("///"), "unnamed");
        assert!(is_plot_name("memory_tiny_cpu.svg"));
        assert!(!is_plot_name("memory_tiny_cpu.png"));
        assert!(!is_plot_name("results.svg"));
    }

    #[test]
    fn each_point_is_the_best_over_the_axes_not_shown() {
        let mut vanilla = record("tiny", 1, 2, 50.0);
        vanilla.config.attention = "vanilla".into();
        let records = [
            record("tiny", 1, 1, 100.0),
            record("tiny", 1, 2, 150.0),
            vanilla,
            record("tiny", 2, 2, 400.0),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let (file, chart) = speed("tiny", "H100", &refs);
        let chart = chart.unwrap();
        assert_eq!(file, "tokens-per-s_tiny_h100");
        assert_eq!(chart.series.len(), 2);
        assert_eq!(
            chart.series[0].points,
            vec![Point::at(1.0, 100.0), Point::at(2.0, 150.0)]
        );
        assert_eq!(chart.series[1].points, vec![Point::at(2.0, 200.0)]);
        assert_eq!(chart.note, "each point is the best tokens/s over attention");
        let mark = chart.mark.unwrap();
        assert_eq!((mark.x, mark.y), (2.0, 200.0));

        let (_, up) = speedup("tiny", "H100", &refs).unwrap();
        let up = up.unwrap();
        assert_eq!(up.series.len(), 1);
        assert_eq!(up.series[0].points, vec![Point::at(2.0, 3.0)]);
    }

    #[test]
    fn a_plot_with_nothing_ran_is_skipped_with_why() {
        let mut oom = record("tiny", 1, 64, 0.0);
        oom.status = Status::Oom;
        oom.tokens_per_s = None;
        oom.tokens_per_s_per_device = None;
        let (_, chart) = speed("tiny", "H100", &[&oom]);
        assert_eq!(chart.unwrap_err(), "no configuration ran (1 oom)");
        // Its plan is still drawn, crossed.
        let (_, mem) = memory("tiny", "H100", &[&oom]);
        let mem = mem.unwrap();
        assert!(mem.series[0].points[0].crossed);
        assert!(mem.mark.is_none());
        assert!(speedup("tiny", "H100", &[&oom]).is_none());
    }
}
