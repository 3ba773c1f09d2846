//! End-to-end tests of `frugal bench kernels` and `frugal bench step`: they run the
//! built binary at tiny sizes (the emulator for the kernels, a short CPU step) and check
//! the output's columns and that every figure is a positive, finite number. They never
//! assert on how fast anything is.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// Kernels at the tiny preset's widths with 16 tokens: every case runs in well under a
/// second under the emulator except AdamW over the tiny model's 3.5M parameters.
const KERNELS_TINY: &[&str] = &[
    "bench", "kernels", "--device", "emu", "--model", "tiny", "--batch", "1", "--seq", "16",
    "--iters", "1",
];

/// One micro-step of the tiny preset on one thread.
const STEP_TINY: &[&str] = &[
    "bench",
    "step",
    "--model",
    "tiny",
    "--batch",
    "1",
    "--seq",
    "16",
    "--threads",
    "1",
    "--steps",
    "2",
    "--warmup",
    "1",
];

/// Every case the kernels bench must report for the tiny preset, in the order its step
/// first launches them (the flash step's, then the vanilla attention's softmax), with
/// the launches per step of its 4 layers (a renamed, lost or miscounted case fails here).
const OPS: &[(&str, usize)] = &[
    ("embedding_fwd", 1),
    ("rmsnorm_fwd", 1),
    ("rope_fwd", 8),
    ("rmsnorm_fwd_residual", 8),
    ("swiglu_fwd", 8),
    ("cross_entropy", 1),
    ("cross_entropy_mean", 1),
    ("rmsnorm_bwd", 9),
    ("rmsnorm_dg_reduce", 9),
    ("swiglu_bwd", 4),
    ("rope_bwd", 8),
    ("embedding_bwd", 1),
    ("grad_norm_partial", 1),
    ("grad_norm_finish", 1),
    ("adamw", 1),
    ("attn_softmax_fwd", 4),
    ("attn_softmax_bwd", 4),
];

fn frugal(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(o: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    (out, err)
}

/// The value of `"key": ` in a flat JSON object, up to the next `,` or `}` (strings
/// keep their quotes).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": ");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len();
    let rest = &line[at..];
    if let Some(body) = rest.strip_prefix('"') {
        let end = body.find('"').unwrap() + 2;
        &rest[..end]
    } else {
        let end = rest.find([',', '}']).unwrap();
        rest[..end].trim()
    }
}

fn positive(line: &str, key: &str) -> f64 {
    let v: f64 = field(line, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"));
    assert!(v.is_finite() && v > 0.0, "{key} = {v} in {line}");
    v
}

#[test]
fn kernels_json_has_one_labelled_object_per_kernel() {
    let mut args = KERNELS_TINY.to_vec();
    args.push("--json");
    let (out, err) = ok(&frugal(&args));
    assert!(
        err.contains("EMULATED"),
        "the emulated label goes to stderr: {err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), OPS.len(), "{out}");
    for (line, (op, count)) in lines.iter().zip(OPS) {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert_eq!(field(line, "op"), format!("\"{op}\""));
        assert_eq!(field(line, "count"), count.to_string(), "{line}");
        assert_eq!(field(line, "emulated"), "true", "{line}");
        assert!(field(line, "timing").contains("emulated"), "{line}");
        assert_eq!(field(line, "model"), "\"tiny\"");
        assert_eq!(field(line, "batch"), "1");
        assert_eq!(field(line, "seq"), "16");
        let bytes = positive(line, "bytes");
        let us = positive(line, "time_us");
        let gbps = positive(line, "gbps");
        // gbps is printed with 7 significant digits and time_us to 4 decimals (of at
        // least a microsecond): relative 1e-3 is far above both roundings, far below
        // any formula error.
        let expect = bytes / (us * 1e-6) / 1e9;
        assert!(
            (gbps - expect).abs() <= 1e-3 * expect,
            "gbps {gbps} vs bytes/time {expect} in {line}"
        );
        positive(line, "emu_warp_instructions");
    }
}

#[test]
fn kernels_table_has_its_columns_and_labels_emulated_figures() {
    let (out, _) = ok(&frugal(KERNELS_TINY));
    assert!(out.contains("EMULATED"), "{out}");
    assert!(out.contains("meaningless for GPU speed"), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no header in {out}"));
    for col in [
        "kernel",
        "shape",
        "count",
        "bytes",
        "iters",
        "us/launch(EMU)",
        "GB/s(EMU)",
    ] {
        assert!(header.contains(col), "{col} missing from {header}");
    }
    for (op, _) in OPS {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(*op))
            .unwrap_or_else(|| panic!("no row for {op} in {out}"));
        let words: Vec<&str> = row.split_whitespace().collect();
        let n = words.len();
        let iters: usize = words[n - 3].parse().unwrap();
        assert_eq!(iters, 1, "{row}");
        for w in &words[n - 2..] {
            let v: f64 = w.parse().unwrap_or_else(|e| panic!("{w} in {row}: {e}"));
            assert!(v.is_finite() && v > 0.0, "{row}");
        }
    }
}

#[test]
fn kernels_refuse_the_cpu_and_bad_flags() {
    let o = frugal(&["bench", "kernels", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bench step"));
    let o = frugal(&["bench", "kernels", "--device", "emu", "--model", "huge"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("known presets"));
    let o = frugal(&["bench", "kernels", "--device", "emu", "--iters", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn step_json_figures_are_positive_and_consistent() {
    let mut args = STEP_TINY.to_vec();
    args.push("--json");
    let (out, _) = ok(&frugal(&args));
    let line = out.trim();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(field(line, "device"), "\"cpu\"");
    assert_eq!(field(line, "steps"), "2");
    let mean = positive(line, "step_ms_mean");
    let min = positive(line, "step_ms_min");
    let max = positive(line, "step_ms_max");
    assert!(min <= mean && mean <= max, "{line}");
    let sd: f64 = field(line, "step_ms_stddev").parse().unwrap();
    assert!(sd.is_finite() && sd >= 0.0, "{line}");
    let tps = positive(line, "tokens_per_s");
    let fpt = positive(line, "train_flops_per_token");
    let gflops = positive(line, "gflops");
    // tokens/s = B·T / mean step time; GFLOP/s = tokens/s × FLOPs per token. Relative
    // 1e-3 covers the printed digits (mean to 4 decimals of ms, tokens/s to 2).
    let expect_tps = 16.0 / (mean * 1e-3);
    assert!((tps - expect_tps).abs() <= 1e-3 * expect_tps, "{line}");
    let expect_gf = tps * fpt / 1e9;
    assert!((gflops - expect_gf).abs() <= 1e-3 * expect_gf, "{line}");
    for key in ["first_loss", "last_loss"] {
        positive(line, key);
    }
}

#[test]
fn step_table_has_its_columns() {
    let (out, _) = ok(&frugal(STEP_TINY));
    assert!(out.contains("CPU training step"), "{out}");
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("step_ms"));
    let header = lines.next().unwrap_or_else(|| panic!("no header in {out}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "step_ms",
            "stddev_ms",
            "min_ms",
            "max_ms",
            "tokens/s",
            "GFLOP/s"
        ]
    );
    let values: Vec<f64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(values.len(), cols.len());
    for (i, v) in values.iter().enumerate() {
        // stddev may be 0; every other figure is a positive time or rate.
        assert!(
            v.is_finite() && (*v > 0.0 || (i == 1 && *v == 0.0)),
            "{header}\n{values:?}"
        );
    }
}

#[test]
fn bad_step_flags_exit_2_and_a_missing_gpu_exits_1() {
    // The device step itself is tested in tests/cli_device.rs (it needs the
    // emulator's time); here only what fails before it runs.
    if frugal_runtime::device::cuda::device_count().is_err() {
        let o = frugal(&["bench", "step", "--device", "cuda"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("CUDA is not available"));
    }
    for bad in [
        &["--steps", "0"][..],
        &["--device", "gpu"],
        &["--attention", "fast"],
    ] {
        let o = frugal(&[&["bench", "step"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

/// `frugal bench attention` on the emulator at a tiny size: one JSON object per (attention,
/// pass), in the schema `scripts/torch/attention.py` shares (the join fields and the
/// measurements), with TFLOP/s equal to FlashAttention's FLOP count over the time.
#[test]
fn attention_json_has_both_paths_and_passes_in_the_torch_schema() {
    let (out, err) = ok(&frugal(&[
        "bench",
        "attention",
        "--device",
        "emu",
        "--model",
        "paper-100m",
        "--batch",
        "1",
        "--seq",
        "24",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--json",
    ]));
    assert!(err.contains("EMULATED"), "the label goes to stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        ("flash", "fwd"),
        ("flash", "fwd_bwd"),
        ("vanilla", "fwd"),
        ("vanilla", "fwd_bwd"),
    ];
    assert_eq!(lines.len(), expect.len(), "{out}");
    for (line, (attention, pass)) in lines.iter().zip(expect) {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert_eq!(
            field(line, "name"),
            format!("\"paper-100m {attention} {pass}\"")
        );
        assert_eq!(field(line, "attention"), format!("\"{attention}\""));
        assert_eq!(field(line, "pass"), format!("\"{pass}\""));
        assert_eq!(field(line, "model"), "\"paper-100m\"");
        for (key, want) in [
            ("batch", "1"),
            ("seq", "24"),
            ("heads", "2"),
            ("kv_heads", "1"),
            ("head_dim", "64"),
            ("causal", "true"),
            ("impl", "\"frugal\""),
            ("emulated", "true"),
        ] {
            assert_eq!(field(line, key), want, "{key} in {line}");
        }
        let flops = positive(line, "flops");
        let fwd = 4.0 * 2.0 * 24.0 * 24.0 * 64.0 / 2.0;
        let want = if pass == "fwd" { fwd } else { 3.5 * fwd };
        assert_eq!(flops, want, "{line}");
        let ms = positive(line, "time_ms");
        let tflops = positive(line, "tflops");
        // tflops has 7 significant digits, time_ms 6 decimals of at least a millisecond
        // under the emulator: 1e-3 relative is far above both, far below a formula error.
        let expect = flops / (ms * 1e-3) / 1e12;
        assert!(
            (tflops - expect).abs() <= 1e-3 * expect,
            "tflops {tflops} vs flops/time {expect} in {line}"
        );
        positive(line, "launches");
        positive(line, "extra_bytes");
    }
}

#[test]
fn attention_refuses_bad_flags() {
    for bad in [
        &["--attention", "fast"][..],
        &["--dq", "sometimes"],
        &["--heads", "4", "--kv-heads", "3"],
        &["--seq", "0"],
        &["--device", "cpu"],
        &["--model", "paper-3b"],
    ] {
        let o = frugal(&[&["bench", "attention", "--device", "emu"][..], bad].concat());
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

/// Usage mistakes on any benchmark exit 2 and say what is wrong: a flag given twice
/// (with its values), a misspelt flag (with clap's suggestion), an unknown benchmark.
#[test]
fn usage_mistakes_are_named_with_exit_2() {
    let o = frugal(&["bench", "matmul", "--iters", "2", "--iters=3"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bench matmul: --iters given twice ('2', then '3')"),
        "{err}"
    );
    let o = frugal(&["bench", "step", "--stepz", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--steps"));
    let o = frugal(&["bench", "kernels", "--iters", "ten"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bench kernels: --iters 'ten' is not valid"),
        "{err}"
    );
    for words in [&["bench"][..], &["bench", "nosuch"], &["arena"]] {
        assert_eq!(frugal(words).status.code(), Some(2), "{words:?}");
    }
    for words in [
        &["bench", "--help"][..],
        &["bench", "step", "--help"],
        &["arena", "--help"],
    ] {
        assert_eq!(frugal(words).status.code(), Some(0), "{words:?}");
    }
}

/// `bench matmul --list --json` lists the step's products without a device, in the
/// schema `scripts/torch/matmul.py` reads.
#[test]
fn matmul_list_names_every_product_with_its_shape() {
    let (out, _) = ok(&frugal(&[
        "bench", "matmul", "--list", "--json", "--model", "tiny",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "{out}");
    for line in lines {
        for key in [
            "\"product\":",
            "\"layout\":",
            "\"m\":",
            "\"lda\":",
            "\"alpha\":",
            "\"count\":",
        ] {
            assert!(line.contains(key), "{key} missing from {line}");
        }
        assert!(
            !line.contains("\"us\""),
            "a listed product has no time: {line}"
        );
    }
}

/// `bench matmul --tma` on the emulator plans for sm_90: with tiny's dimensions at B*T = 256
/// every product takes the wgmma + TMA kernel (tensor maps encoded for the device, packed
/// by the runtime's launch path), and each line names it.
#[test]
fn matmul_tma_runs_every_product_on_the_wgmma_kernel() {
    let (out, _) = ok(&frugal(&[
        "bench", "matmul", "--device", "emu", "--json", "--tma", "--model", "tiny", "--batch", "2",
        "--seq", "128",
    ]));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("\"product\":")).collect();
    assert!(!lines.is_empty(), "{out}");
    for line in lines {
        assert!(line.contains("matmul_wgmma_128x128x64_"), "{line}");
    }
}

/// The counters of a `--counters` JSON line, checked for the figures every kernel has.
fn counters_of(line: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let c = v["counters"].clone();
    assert_eq!(c["source"], "emulator", "{line}");
    assert!(c["instructions"].as_u64().unwrap_or(0) > 0, "{line}");
    let read = c["dram_read_sectors"].as_u64().unwrap_or(0);
    assert!(read > 0, "{line}");
    if let Some(x) = c["coalescing"].as_f64() {
        assert!(x > 0.0 && x <= 1.0, "{line}");
    }
    c
}

#[test]
fn counters_on_the_emulator_are_printed_and_in_the_json() {
    // Matmul: the pick's tensor FLOPs are 2*M*N*K over whole tiles, at least the product's.
    let (out, _) = ok(&frugal(&[
        "bench",
        "matmul",
        "--device",
        "emu",
        "--model",
        "tiny",
        "--seq",
        "64",
        "--counters",
        "--json",
    ]));
    let products: Vec<&str> = out.lines().filter(|l| !l.contains("\"summary\"")).collect();
    assert!(!products.is_empty(), "{out}");
    for line in products {
        let c = counters_of(line);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let flops = v["flops"].as_f64().unwrap();
        let tensor = c["tensor_flops"].as_f64().unwrap();
        assert!(
            tensor >= flops && tensor < 4.0 * flops,
            "{tensor} vs {flops}: {line}"
        );
        assert!(c["sectors_per_request"].as_f64().unwrap() >= 1.0, "{line}");
    }
    // Attention: both passes of flash run tensor-core instructions.
    let (out, _) = ok(&frugal(&[
        "bench",
        "attention",
        "--device",
        "emu",
        "--attention",
        "flash",
        "--seq",
        "32",
        "--heads",
        "2",
        "--counters",
        "--json",
    ]));
    assert_eq!(out.lines().count(), 2, "{out}");
    for line in out.lines() {
        assert!(
            counters_of(line)["tensor_flops"].as_u64().unwrap_or(0) > 0,
            "{line}"
        );
    }
    // Kernels, as a table: a counters line under each row.
    let mut args = KERNELS_TINY.to_vec();
    args.push("--counters");
    let (out, _) = ok(&frugal(&args));
    assert_eq!(
        out.matches("counters (emulated): sectors/req").count(),
        OPS.len(),
        "{out}"
    );
}

/// `bench step --counters`: one more step counted; sampled (at most 4 CTAs a launch, the
/// default) it extrapolates to within a few percent of counting every CTA, and the optimizer's
/// launches are counted even though a sampled gradient norm is meaningless.
#[test]
fn step_counters_sampled_agree_with_every_cta() {
    let step = |sample: &str| {
        let (out, _) = ok(&frugal(&[
            "bench",
            "step",
            "--device",
            "emu",
            "--batch",
            "1",
            "--seq",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--counters",
            "--sample-ctas",
            sample,
            "--json",
        ]));
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let c = counters_of(out.trim());
        let tokens = 32.0;
        // The tensor cores do at least the step's matmul and attention FLOPs (whole tiles:
        // more at this small shape), and not wildly more.
        let flops = v["train_flops_per_token"].as_f64().unwrap_or(0.0) * tokens;
        let tensor = c["tensor_flops"].as_f64().unwrap_or(0.0);
        assert!(
            tensor >= flops && tensor < 4.0 * flops,
            "{tensor} vs {flops}: {out}"
        );
        c
    };
    let (sampled, full) = (step("4"), step("0"));
    assert_eq!(sampled["tensor_flops"], full["tensor_flops"]);
    for key in ["instructions", "dram_read_sectors", "dram_write_sectors"] {
        let (s, f) = (
            sampled[key].as_f64().unwrap_or(0.0),
            full[key].as_f64().unwrap_or(0.0),
        );
        assert!(
            (s - f).abs() <= 0.15 * f,
            "{key}: sampled {s} vs every CTA {f}"
        );
    }
    // As text: the summary line, and where the per-kernel view is.
    let (out, _) = ok(&frugal(&[
        "bench",
        "step",
        "--device",
        "emu",
        "--batch",
        "1",
        "--seq",
        "32",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--counters",
    ]));
    assert!(out.contains("counters (emulated): sectors/req"), "{out}");
    assert!(out.contains("extrapolated from at most 4 CTAs"), "{out}");
    assert!(out.contains("frugal profile"), "{out}");
}

#[test]
fn counters_off_the_emulator_are_a_usage_error_pointing_at_nsight() {
    for bench in ["matmul", "attention", "kernels", "step"] {
        for device in ["cpu", "cuda"] {
            let o = frugal(&["bench", bench, "--device", device, "--counters"]);
            assert_eq!(o.status.code(), Some(2), "{bench} {device}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("emulator") && err.contains("Nsight"), "{err}");
        }
    }
}
