//! `frugal plan` end to end: its memory is the planner's (`frugal arena --model`, the
//! plan `train --dry-run` prints), a configuration that does not fit is never the best,
//! the predictions move the right way (more bandwidth never slower, more devices never
//! more memory per rank under full sharding), prices come from `--prices`, and bad input
//! is a usage error (exit 2) naming the value.

mod common;

use std::process::{Command, Output};

use common::{assert_ok, scratch_in, text};
use serde_json::Value;

fn frugal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(args)
        .output()
        .unwrap()
}

/// `frugal plan ARGS --json`, parsed.
fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = frugal(&all);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o).0))
}

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"].as_array().expect("rows")
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The peak `frugal arena --model` plans for one rank.
fn arena_peak(model: &str, batch: &str, attention: &str, shard: &str, world: &str) -> u64 {
    let o = frugal(&[
        "arena",
        "--model",
        model,
        "--batch",
        batch,
        "--attention",
        attention,
        "--shard",
        shard,
        "--world",
        world,
        "--summary",
    ]);
    assert_ok(&o);
    let out = text(&o).0;
    let line = out
        .lines()
        .find(|l| l.starts_with("peak "))
        .unwrap_or_else(|| panic!("no peak line in\n{out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_is_the_planners() {
    for (model, batch, attention, shard, world) in [
        ("paper-100m", "8", "flash", "none", "1"),
        ("paper-100m", "4", "vanilla", "grad-op", "4"),
        ("paper-1b", "4", "flash", "full", "8"),
        ("paper-1b", "2", "flash", "grad-op", "64"),
    ] {
        let v = plan_json(&[
            "--model",
            model,
            "--gpus",
            "h100-sxm",
            "--devices",
            world,
            "--batch",
            batch,
            "--attention",
            attention,
            "--shard",
            shard,
        ]);
        let r = &rows(&v)[0];
        assert_eq!(
            u(r, "predicted_peak_bytes"),
            arena_peak(model, batch, attention, shard, world),
            "{model} {batch} {attention} {shard} {world}"
        );
    }
}

#[test]
fn the_largest_batch_is_the_planners() {
    // The planner's own search: arena names the largest batch that fits when asked for
    // more than fits.
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40",
        "--devices",
        "1",
        "--batch",
        "8",
    ]);
    let r = &rows(&v)[0];
    let usable = u(r, "usable_bytes").to_string();
    let largest = u(r, "predicted_largest_batch");
    let o = frugal(&[
        "arena",
        "--model",
        "paper-1b",
        "--batch",
        "1024",
        "--available",
        &usable,
        "--summary",
    ]);
    let err = text(&o).1;
    assert!(
        err.contains(&format!("largest batch that fits is {largest}")),
        "plan says {largest}; arena:\n{err}"
    );
    // And the batch above it does not fit, the batch itself does.
    let at = |b: u64| {
        let v = plan_json(&[
            "--model",
            "paper-1b",
            "--gpus",
            "a100-40",
            "--devices",
            "1",
            "--batch",
            &b.to_string(),
        ]);
        rows(&v)[0]["fits"].as_bool().unwrap()
    };
    assert!(at(largest));
    assert!(!at(largest + 1));
}

#[test]
fn a_configuration_that_does_not_fit_is_never_the_best() {
    // paper-1b at batch 64 needs far more than an A100-40GB; batch 4 fits.
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40,h100-sxm",
        "--devices",
        "1,8",
        "--batch",
        "4,64",
    ]);
    let all = rows(&v);
    assert!(all.iter().any(|r| r["fits"] == false));
    // Rows that fit come first, sorted by tokens per dollar.
    let fits: Vec<bool> = all.iter().map(|r| r["fits"].as_bool().unwrap()).collect();
    assert!(fits.windows(2).all(|w| w[0] || !w[1]), "{fits:?}");
    let per_usd: Vec<f64> = all
        .iter()
        .filter(|r| r["fits"] == true)
        .map(|r| f(r, "predicted_tokens_per_usd"))
        .collect();
    assert!(per_usd.windows(2).all(|w| w[0] >= w[1]), "{per_usd:?}");
    let best = v["best"].as_array().unwrap();
    assert_eq!(best.len(), 2, "one per GPU type");
    for b in best {
        assert_eq!(b["fits"], true, "{b}");
        assert_eq!(b["batch"], 4, "{b}");
    }

    // A grid where nothing fits names no best, and the table says why.
    let o = frugal(&[
        "plan",
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40",
        "--devices",
        "1",
        "--batch",
        "64",
    ]);
    assert_ok(&o);
    let out = text(&o).0;
    assert!(out.contains("does not fit ("), "{out}");
    assert!(out.contains(" GiB of 38.50 GiB)"), "{out}");
    assert!(out.contains("no configuration of the grid fits"), "{out}");
    assert!(out.contains("PREDICTED"), "{out}");
}

#[test]
fn more_bandwidth_never_predicts_a_slower_step() {
    for shard in ["none", "full"] {
        let mut last = f64::INFINITY;
        for net in ["ethernet-25g", "100g", "200g", "400g-ib"] {
            let v = plan_json(&[
                "--model",
                "paper-1b",
                "--gpus",
                "a100-80",
                "--devices",
                "64",
                "--batch",
                "8",
                "--shard",
                shard,
                "--network",
                net,
            ]);
            let step = f(&rows(&v)[0], "predicted_step_s");
            assert!(step <= last, "{shard} {net}: {step} after {last}");
            last = step;
        }
    }
    // NVLink is faster than PCIe inside a node.
    let step = |ic: &str| {
        let v = plan_json(&[
            "--model",
            "paper-1b",
            "--gpus",
            "h100-sxm",
            "--devices",
            "8",
            "--batch",
            "2",
            "--interconnect",
            ic,
        ]);
        f(&rows(&v)[0], "predicted_comm_s")
    };
    assert!(step("nvlink") < step("pcie"));
}

#[test]
fn more_devices_never_more_memory_per_rank_when_fully_sharded() {
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "h100-sxm",
        "--devices",
        "1,2,4,8,16,32,64",
        "--batch",
        "8",
        "--shard",
        "full",
    ]);
    let mut by_devices: Vec<(u64, u64)> = rows(&v)
        .iter()
        .map(|r| (u(r, "devices"), u(r, "predicted_peak_bytes")))
        .collect();
    by_devices.sort();
    assert_eq!(by_devices.len(), 7);
    assert!(
        by_devices.windows(2).all(|w| w[1].1 <= w[0].1),
        "{by_devices:?}"
    );
    assert!(by_devices[6].1 < by_devices[0].1);
}

#[test]
fn prices_come_from_the_file_when_given() {
    let dir = scratch_in("plan", "prices");
    let file = dir.join("prices.json");
    std::fs::write(
        &file,
        r#"{"H100-SXM-80GB": {"per_hour": 1.5, "source": "our contract"}}"#,
    )
    .unwrap();
    let v = plan_json(&[
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm",
        "--devices",
        "8",
        "--batch",
        "8",
        "--prices",
        file.to_str().unwrap(),
    ]);
    let r = &rows(&v)[0];
    assert_eq!(f(r, "usd_per_hour"), 12.0);
    assert!(r["price_source"].as_str().unwrap().contains("our contract"));
    let expected = f(r, "predicted_tokens_per_s") * 3600.0 / 12.0;
    assert!((f(r, "predicted_tokens_per_usd") / expected - 1.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_a_usage_error_naming_the_value() {
    let base = [
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm",
        "--devices",
        "8",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--gpus", "h100-sxm4"], "'h100-sxm4' is not a GPU"),
        (&["--gpus", "v100"], "H100-SXM-80GB"),
        (&["--model", "paper-3b"], "'paper-3b'"),
        (&["--batch", ""], "--batch is empty"),
        (&["--gpus", ","], "--gpus is empty"),
        (&["--devices", "8,12"], "'12'"),
        (&["--devices", "0"], "'0'"),
        (&["--batch", "4,0"], "'0'"),
        (&["--network", "10g"], "--network '10g'"),
        (&["--gpus", "l4"], "--interconnect pcie"),
        (&["--shard", "zero3"], "'zero3'"),
        (&["--attention", "sdpa"], "'sdpa'"),
        (&["--top", "0"], "--top 0"),
    ];
    for (change, needle) in cases {
        let mut args = vec!["plan"];
        for (i, w) in base.iter().enumerate() {
            // A changed flag replaces the base's value.
            if i % 2 == 1 && change.first() == Some(&base[i - 1]) {
                continue;
            }
            if i % 2 == 0 && change.first() == Some(w) {
                continue;
            }
            args.push(w);
        }
        args.extend_from_slice(change);
        let o = frugal(&args);
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = frugal(&["plan", "--help"]);
    assert_ok(&o);
    let help = text(&o).0;
    assert!(
        help.contains("Example") && help.contains("--network"),
        "{help}"
    );
}
