//! `frugal report` as a user meets it: sweeps' results.jsonl (written here by
//! hand, field for field as `bin/src/cmd/sweep/record.rs` serialises a
//! Record) turned into report.md, SVG plots and index.html; every figure in
//! the tables checked against the records to the precision it is printed
//! with; bad input refused with what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

const GPU: &str = "NVIDIA H100 80GB HBM3";
const CPU: &str = "Test CPU @ 2.0GHz";
const GIB: f64 = (1u64 << 30) as f64;

fn frugal(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The sample mean and standard deviation, as `Spread::of` computes them.
fn spread(each: &[f64]) -> Value {
    let n = each.len() as f64;
    let mean = each.iter().sum::<f64>() / n;
    let std = if each.len() > 1 {
        (each.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    json!({"mean": mean, "std": std, "each": each})
}

/// A configuration's record, measured (status "ok") at a made-up speed that
/// depends on every axis, with figures that have many digits.
fn measured(model: &str, gpu: bool, devices: u64, batch: u64, attention: &str) -> Value {
    let base = if model == "tiny" { 5123.4567 } else { 811.0917 };
    let base = if gpu { base * 37.3 } else { base };
    let flash = if attention == "flash" {
        1.0 + 0.9 / batch as f64
    } else {
        1.0
    };
    let per_device = base * (batch as f64).powf(0.63) * flash * (devices as f64).powf(-0.07);
    let each: Vec<f64> = [0.987, 1.0, 1.0131]
        .iter()
        .map(|k| per_device * devices as f64 * k)
        .collect();
    let whole = spread(&each);
    let per_dev: Vec<f64> = each.iter().map(|t| t / devices as f64).collect();
    let price = if gpu { 2.53 } else { 0.0417 };
    let mean = whole["mean"].as_f64().unwrap();
    let planned = (0.7 + 1.3 * batch as f64) * GIB + 12345.0;
    let mut r = record(model, gpu, devices, batch, attention);
    r["status"] = json!("ok");
    r["tokens_per_s"] = whole;
    r["tokens_per_s_per_device"] = spread(&per_dev);
    r["mfu"] = if gpu {
        json!(0.0371 * batch as f64)
    } else {
        Value::Null
    };
    r["planned_bytes"] = json!(planned as u64);
    r["measured_peak_bytes"] = json!((planned * 0.93) as u64);
    r["tokens_per_dollar"] = json!(mean * 3600.0 / (price * devices as f64));
    r["comm_wait_ms"] = json!(if devices > 1 {
        0.4137 * devices as f64
    } else {
        0.0
    });
    r["first_loss"] = json!(10.3739_f32);
    r["last_loss"] = json!(7.25 + 1.0 / batch as f32);
    r
}

/// A record with no measurement yet (the figures null), status to be set.
fn record(model: &str, gpu: bool, devices: u64, batch: u64, attention: &str) -> Value {
    let (device, comm, threads) = if gpu {
        ("cuda", "nccl", Value::Null)
    } else {
        ("cpu", "socket", json!(2))
    };
    let threads_key = if gpu {
        String::new()
    } else {
        ",threads=2".into()
    };
    let key = format!(
        "model={model},device={device},devices={devices},batch={batch},attention={attention},shard=none,comm={comm}{threads_key}"
    );
    json!({
        "key": key,
        "config": {
            "model": model, "devices": devices, "batch": batch, "attention": attention,
            "shard": "none", "comm": comm, "device": device, "threads": threads
        },
        "train_flags": ["--seq", "64"],
        "status": "failed",
        "reason": null,
        "protocol": {"repeats": 3, "warmup_steps": 2, "steps": 10},
        "tokens_per_step": devices * batch * 64,
        "tokens_per_s": null,
        "tokens_per_s_per_device": null,
        "mfu": null,
        "planned_bytes": null,
        "capacity_bytes": if gpu { 85_000_000_000u64 } else { 16u64 << 30 },
        "measured_peak_bytes": null,
        "measured_peak_what": if gpu { "device memory in use" } else { "resident set" },
        "price": {
            "per_device_hour": if gpu { 2.53 } else { 0.0417 },
            "units": "usd",
            "source": if gpu { "typical cloud list price" } else { "per-core default" },
            "date": if gpu { json!("2025-01") } else { Value::Null }
        },
        "tokens_per_dollar": null,
        "comm_wait_ms": null,
        "first_loss": null,
        "last_loss": null,
        "device_name": if gpu { GPU } else { CPU },
        "driver": if gpu { json!("550.54.15") } else { Value::Null },
        "frugal_version": "0.1.0",
        "commit": "0123abc",
        "finished_at": "2025-06-01T12:00:00Z",
        "wall_s": 12.5
    })
}

/// The records of the test's two sweeps (CPU, GPU) as written, in order.
fn sweeps() -> (Vec<Value>, Vec<Value>) {
    let mut cpu = Vec::new();
    let mut gpu = Vec::new();
    for model in ["tiny", "small"] {
        for devices in [1, 2, 4] {
            for batch in [1, 2, 4, 8] {
                for attention in ["flash", "vanilla"] {
                    cpu.push(measured(model, false, devices, batch, attention));
                    gpu.push(measured(model, true, devices, batch, attention));
                }
            }
        }
    }
    let mut oom = record("tiny", true, 1, 64, "flash");
    oom["status"] = json!("oom");
    oom["reason"] = json!("oom (planned 95.50 GiB of 79.16)");
    oom["planned_bytes"] = json!((95.5 * GIB) as u64);
    gpu.push(oom);
    let mut failed = record("small", true, 4, 16, "vanilla");
    failed["reason"] = json!("rank 1 exited with status 1: <oops> | a pipe\nmore output");
    gpu.push(failed);
    let mut timeout = record("small", false, 1, 16, "flash");
    timeout["status"] = json!("timeout");
    timeout["reason"] = json!("stopped after 600 s (--timeout 600)");
    cpu.push(timeout);
    // A model whose only configuration did not fit: its speed plots have no data.
    let mut huge = record("huge", true, 1, 4, "flash");
    huge["status"] = json!("oom");
    huge["reason"] = json!("oom (planned 410.00 GiB of 79.16)");
    huge["planned_bytes"] = json!(410u64 << 30);
    gpu.push(huge);
    // Re-measured with --redo: the later line wins.
    let mut redo = measured("tiny", false, 2, 4, "flash");
    redo["tokens_per_s"]["mean"] = json!(99999.123);
    redo["tokens_per_dollar"] = json!(7.654321e9);
    cpu.push(redo);
    (cpu, gpu)
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// Writes the two sweeps, the GPU one ending in a line cut off mid-write.
fn write_sweeps(root: &Path) -> (PathBuf, PathBuf, Vec<Value>) {
    let (cpu, gpu) = sweeps();
    let (a, b) = (root.join("cpu"), root.join("gpu"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("results.jsonl"), jsonl(&cpu)).unwrap();
    let cut = format!("{}{{\"key\":\"model=tiny,device=cuda,dev", jsonl(&gpu));
    std::fs::write(b.join("results.jsonl"), cut).unwrap();
    // What the report must show: one record per configuration, the later wins.
    let mut kept: BTreeMap<String, Value> = BTreeMap::new();
    for r in cpu.iter().chain(&gpu) {
        kept.insert(row_key(r), r.clone());
    }
    (a, b, kept.into_values().collect())
}

/// A record's identity as the table shows it: model, device and every axis.
fn row_key(r: &Value) -> String {
    let c = &r["config"];
    let threads = c["threads"].as_u64().map_or("-".into(), |t| t.to_string());
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        c["model"].as_str().unwrap(),
        r["device_name"].as_str().unwrap(),
        c["devices"],
        c["batch"],
        c["attention"].as_str().unwrap(),
        c["shard"].as_str().unwrap(),
        c["comm"].as_str().unwrap(),
        threads
    )
}

/// The cells of a markdown table row, `\|` unescaped.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.iter()
        .map(|c| c.trim().replace("&lt;", "<").replace("&gt;", ">"))
        .collect()
}

/// report.md's tables: (model, "best" or "all") -> rows as column -> cell.
fn tables(md: &str) -> BTreeMap<(String, String), Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<(String, String), Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let (mut model, mut which) = (String::new(), String::new());
    let mut columns: Option<Vec<String>> = None;
    for line in md.lines() {
        if let Some(m) = line.strip_prefix("## ") {
            model = m.to_string();
        } else if line.starts_with("### Best") {
            which = "best".into();
        } else if line.starts_with("### All") {
            which = "all".into();
        } else if line.starts_with('|') {
            let row = cells(line);
            match &columns {
                None => columns = Some(row),
                Some(_) if row.iter().all(|c| c == "---") => {}
                Some(cols) => {
                    assert_eq!(cols.len(), row.len(), "{line}");
                    let key = (model.clone(), which.clone());
                    out.entry(key)
                        .or_default()
                        .push(cols.iter().cloned().zip(row).collect());
                }
            }
        } else {
            columns = None;
        }
    }
    out
}

/// `printed` equals `actual` to the decimals it shows.
fn agrees(printed: &str, actual: f64) {
    let p: f64 = printed
        .trim_start_matches('$')
        .parse()
        .unwrap_or_else(|_| panic!("'{printed}' is not a number"));
    let decimals = printed.split('.').nth(1).map_or(0, str::len);
    let tolerance = 0.5 * 10f64.powi(-(decimals as i32)) * (1.0 + 1e-9) + 1e-12;
    assert!(
        (p - actual).abs() <= tolerance,
        "printed {printed}, record {actual}"
    );
}

/// "mean ± std" against a spread.
fn agrees_spread(cell: &str, s: &Value) {
    let (mean, std) = cell.split_once(" ± ").unwrap_or_else(|| panic!("{cell}"));
    agrees(mean, s["mean"].as_f64().unwrap());
    agrees(std, s["std"].as_f64().unwrap());
}

fn agrees_gib(cell: &str, bytes: &Value) {
    agrees(cell, bytes.as_u64().unwrap() as f64 / GIB);
}

/// Every figure of a table row against its record.
fn check_row(row: &BTreeMap<String, String>, r: &Value) {
    let ok = r["status"] == "ok";
    let cell = |c: &str| {
        row.get(c)
            .unwrap_or_else(|| panic!("no column {c}"))
            .as_str()
    };
    if ok {
        agrees_spread(cell("tokens/s"), &r["tokens_per_s"]);
        agrees_spread(cell("tokens/s per device"), &r["tokens_per_s_per_device"]);
        match r["mfu"].as_f64() {
            Some(m) => agrees(cell("MFU").trim_end_matches('%'), m * 100.0),
            None => assert_eq!(cell("MFU"), "unknown"),
        }
        agrees_gib(cell("measured peak GiB"), &r["measured_peak_bytes"]);
        let per_money = cell("tokens per money unit");
        agrees(
            per_money.strip_suffix(" per $").unwrap(),
            r["tokens_per_dollar"].as_f64().unwrap(),
        );
        agrees(cell("comm wait ms"), r["comm_wait_ms"].as_f64().unwrap());
        let (first, last) = cell("loss first→last").split_once('→').unwrap();
        agrees(first, r["first_loss"].as_f64().unwrap());
        agrees(last, r["last_loss"].as_f64().unwrap());
        assert_eq!(cell("status"), "ok");
    } else {
        for c in [
            "tokens/s",
            "tokens/s per device",
            "MFU",
            "tokens per money unit",
        ] {
            assert_eq!(cell(c), "-", "{c} of {}", r["key"]);
        }
        let status = r["status"].as_str().unwrap();
        let reason = r["reason"].as_str().unwrap();
        let first_line = reason.lines().next().unwrap();
        match status {
            "oom" => assert_eq!(cell("status"), reason),
            _ => assert_eq!(cell("status"), format!("{status}: {first_line}")),
        }
    }
    agrees(
        cell("price per device-hour"),
        r["price"]["per_device_hour"].as_f64().unwrap(),
    );
    let (planned, capacity) = cell("planned / capacity GiB").split_once(" / ").unwrap();
    if r["planned_bytes"].is_null() {
        assert_eq!(planned, "?");
    } else {
        agrees_gib(planned, &r["planned_bytes"]);
    }
    agrees_gib(capacity, &r["capacity_bytes"]);
}

fn row_key_of(model: &str, row: &BTreeMap<String, String>) -> String {
    let axes = [
        "device",
        "devices",
        "batch",
        "attention",
        "shard",
        "comm",
        "threads",
    ];
    let mut parts = vec![model.to_string()];
    parts.extend(axes.iter().map(|a| row[*a].clone()));
    parts.join("|")
}

/// The record of `records` with the largest `figure`, among those that ran.
fn best_by<'a>(records: &'a [Value], model: &str, figure: impl Fn(&Value) -> f64) -> &'a Value {
    records
        .iter()
        .filter(|r| r["config"]["model"] == model && r["status"] == "ok")
        .max_by(|a, b| figure(a).total_cmp(&figure(b)))
        .unwrap()
}

/// Every text of an SVG document.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}"));
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.descendants().filter_map(|t| t.text()).collect::<String>())
        .collect()
}

#[test]
fn the_report_shows_the_records() {
    let root = scratch_in("report", "records");
    let (a, b, kept) = write_sweeps(&root);
    let out = root.join("out");
    // A plot left by an earlier report whose data is gone is removed.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("tokens-per-s_gone_cpu.svg"), "<svg/>").unwrap();
    let o = frugal(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let (_, err) = text(&o);
    assert!(err.contains("the last line is cut off"), "{err}");

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("3 repeat(s) × 10 measured step(s) after 2 warm-up step(s)"),
        "{md}"
    );
    assert!(md.contains("NVIDIA H100 80GB HBM3 (cuda, driver 550.54.15)"));
    assert!(md.contains("source: typical cloud list price, 2025-01"));
    assert!(md.contains("source: per-core default, date unknown"));
    assert!(md.contains("frugal**: 0.1.0 (commit 0123abc)"));
    let ok = kept.iter().filter(|r| r["status"] == "ok").count();
    let counts = format!(
        "{}: {ok} ok, 2 oom, 1 failed, 1 timeout; 1 earlier",
        kept.len()
    );
    assert!(md.contains(&counts), "{counts} not in the header");

    let tables = tables(&md);
    let by_key: BTreeMap<String, &Value> = kept.iter().map(|r| (row_key(r), r)).collect();
    for model in ["tiny", "small", "huge"] {
        let rows = &tables[&(model.to_string(), "all".to_string())];
        let expected = kept
            .iter()
            .filter(|r| r["config"]["model"] == model)
            .count();
        assert_eq!(rows.len(), expected, "{model}");
        for row in rows {
            let key = row_key_of(model, row);
            let r = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("no record {key}"));
            check_row(row, r);
        }
    }
    // The redo's later line is the one shown.
    assert!(
        md.contains("| 99999 ±"),
        "the re-measured figure is missing"
    );

    for model in ["tiny", "small"] {
        let best = &tables[&(model.to_string(), "best".to_string())];
        let money = best_by(&kept, model, |r| r["tokens_per_dollar"].as_f64().unwrap());
        let speed = best_by(&kept, model, |r| {
            r["tokens_per_s"]["mean"].as_f64().unwrap()
        });
        assert_eq!(best.len(), 2, "{model}");
        assert_eq!(best[0]["best by"], "tokens per $");
        assert_eq!(row_key_of(model, &best[0]), row_key(money));
        check_row(&best[0], money);
        assert_eq!(best[1]["best by"], "tokens/s");
        assert_eq!(row_key_of(model, &best[1]), row_key(speed));
        check_row(&best[1], speed);
    }
    assert!(!tables.contains_key(&("huge".to_string(), "best".to_string())));
    assert!(md.contains("No configuration of this model ran."));

    // Plots: which exist, each XML with its title and axes.
    let gpu = "nvidia-h100-80gb-hbm3";
    let cpu = "test-cpu-2.0ghz";
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for model in ["tiny", "small"] {
        for device in [gpu, cpu] {
            for kind in ["tokens-per-s", "memory", "flash-speedup"] {
                expected.insert(format!("{kind}_{model}_{device}.svg"));
            }
        }
        expected.insert(format!("tokens-per-money_{model}.svg"));
    }
    expected.insert(format!("memory_huge_{gpu}.svg"));
    let written: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    assert_eq!(written, expected);
    assert!(md.contains(&format!(
        "not drawn: tokens-per-s_huge_{gpu}: no configuration ran (1 oom)"
    )));
    for name in &written {
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)));
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        let texts = svg_texts(&svg);
        let has = |t: &str| texts.iter().any(|x| x.contains(t));
        let (title, x, y) = match name.split('_').next().unwrap() {
            "tokens-per-s" => (
                "tokens/s per device vs batch",
                "batch (sequences per device)",
                "tokens/s per device",
            ),
            "memory" => (
                "planned memory per device vs batch",
                "batch (sequences per device)",
                "GiB",
            ),
            "flash-speedup" => (
                "flash / vanilla attention speed-up vs batch",
                "batch (sequences per device)",
                "speed-up",
            ),
            "tokens-per-money" => ("tokens per $ vs device count", "devices", "tokens per $"),
            other => panic!("unexpected plot {other}"),
        };
        for t in [title, x, y] {
            assert!(has(t), "{name}: no text '{t}' in {texts:?}");
        }
        // The one model whose only configuration did not fit has no best point.
        if !name.contains("_huge_") {
            assert!(
                has("best") || has("largest"),
                "{name}: the best point is not labelled"
            );
        }
        assert!(
            md.contains(&format!("]({name})")),
            "report.md does not show {name}"
        );
    }
    // The memory plot shows the capacity, and the oom point crossed.
    let mem = std::fs::read_to_string(out.join(format!("memory_tiny_{gpu}.svg"))).unwrap();
    assert!(svg_texts(&mem)
        .iter()
        .any(|t| t.contains("capacity 79.16 GiB")));

    // index.html: one XML document holding every plot and every table row.
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    // `<!DOCTYPE html>` is a DTD to an XML parser.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(&html, options).expect("index.html is well-formed");
    let svgs = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
    assert_eq!(svgs, written.len());
    let rows = doc.descendants().filter(|n| n.has_tag_name("tr")).count();
    let md_rows: usize = tables.values().map(Vec::len).sum();
    // Each table has one header row besides its rows.
    assert_eq!(rows, md_rows + tables.len());
    assert!(
        html.contains("&lt;oops&gt; | a pipe"),
        "the reason is escaped"
    );
    assert!(!html.contains("<oops>"));
    assert!(html.contains("<td>99999 ± "));
}

#[test]
fn the_report_goes_into_the_sweep_by_default() {
    let root = scratch_in("report", "default-out");
    let (a, _, _) = write_sweeps(&root);
    assert_ok(&frugal(&["report", a.to_str().unwrap()]));
    for f in ["report.md", "index.html", "tokens-per-money_tiny.svg"] {
        assert!(a.join(f).is_file(), "{f}");
    }
    // Nothing half-written is left beside them.
    let leftovers: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let root = scratch_in("report", "bad");
    let missing = root.join("never-swept");
    let err = assert_fails_cleanly(&frugal(&["report", missing.to_str().unwrap()]));
    assert!(err.contains("never-swept"), "{err}");
    assert!(err.contains("frugal sweep --out"), "{err}");

    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let (cpu, _) = sweeps();
    let lines = format!("{}{{not json}}\n{}", jsonl(&cpu[..2]), jsonl(&cpu[2..3]));
    std::fs::write(broken.join("results.jsonl"), lines).unwrap();
    let err = assert_fails_cleanly(&frugal(&["report", broken.to_str().unwrap()]));
    assert!(err.contains("results.jsonl:3: not a sweep record"), "{err}");
    assert!(!broken.join("report.md").exists());

    let o = frugal(&["report"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

#[test]
fn a_sweep_with_no_record_yet_reports_so() {
    let root = scratch_in("report", "empty");
    std::fs::write(root.join("results.jsonl"), "").unwrap();
    assert_ok(&frugal(&["report", root.to_str().unwrap()]));
    let md = std::fs::read_to_string(root.join("report.md")).unwrap();
    assert!(md.contains("No configuration has finished yet"), "{md}");
    assert!(md.contains("0: 0 ok, 0 oom, 0 failed, 0 timeout"), "{md}");
}
