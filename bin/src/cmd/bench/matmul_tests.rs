//! Unit tests of `bench matmul` (kept apart: the command is long enough).

use super::*;
use frugal_model::device::program::Work;
use frugal_ptx::matmul::Layout;

fn gqa() -> Config {
    Config {
        vocab_size: 320,
        dim: 256,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 344,
        seq_len: 16,
        rope_theta: 500000.0,
        norm_eps: 1e-6,
    }
}

#[test]
fn step_products_cover_every_linear_and_count_flops() {
    let cfg = gqa();
    let (b, t) = (2, 16);
    let (c, kv, f, v, l) = (256, 128, 344, 320, 3);
    let ps = step_products(&cfg, b, t).unwrap();
    let n = b * t;
    // Linear FLOPs per step: 3 products x 2*N*C_in*C_out each, L times per layer.
    let per_layer = (c * c + 2 * c * kv + c * c + 3 * c * f) as f64;
    let want = 3.0 * 2.0 * n as f64 * (per_layer * l as f64 + (c * v) as f64);
    let got: f64 = ps.iter().map(|p| p.gemm.flops() * p.count as f64).sum();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    assert!(ps
        .iter()
        .filter(|p| p.name.starts_with("dW"))
        .all(|p| p.gemm.epilogue == Epilogue::Accumulate && p.gemm.out == OutType::F32));
    // Q, K and V run as separate products, K and V at NKV*HS (one shape for both).
    let kv_fwd = Gemm::dense(Layout::Nt, OutType::Bf16, n, kv, c);
    let k_and_v = ps.iter().find(|p| p.gemm == kv_fwd).unwrap();
    assert_eq!(
        (k_and_v.name.as_str(), k_and_v.count),
        ("k = a·Wkᵀ | v = a·Wvᵀ", 2 * l)
    );
    assert!(!ps
        .iter()
        .any(|p| p.gemm.n == c + 2 * kv || p.gemm.m == c + 2 * kv));
}

/// The list `bench matmul` times is the step program's matmul operations: every
/// launch of the step, once per shape, with its count.
#[test]
fn step_products_are_the_programs_matmuls() {
    let cfg = gqa();
    let prog = Program::plan_only(&cfg, 2, 16, StepOptions::default()).unwrap();
    let launches: Vec<Gemm> = prog
        .ops()
        .filter_map(|op| match op.work() {
            Work::Matmul(g) => Some(*g),
            _ => None,
        })
        .collect();
    let ps = step_products(&cfg, 2, 16).unwrap();
    assert_eq!(ps.iter().map(|p| p.count).sum::<usize>(), launches.len());
    for p in &ps {
        let runs = launches.iter().filter(|g| **g == p.gemm).count();
        assert_eq!(runs, p.count, "{}", p.name);
    }
    assert!(launches.iter().all(|g| ps.iter().any(|p| p.gemm == *g)));
}

/// Every product of every preset, at its default batch and at 64 sequences of its T,
/// runs on tensor cores on sm_80 and sm_90 (odd F included), and every candidate the
/// autotuner would time can run.
#[test]
fn every_preset_product_gets_tensor_cores() {
    for preset in frugal_model::config::PRESETS {
        let cfg = preset.config();
        for b in [preset.default_batch, 64] {
            let ps = step_products(&cfg, b, preset.seq_len).unwrap();
            for p in &ps {
                let g = &p.gemm;
                let align = g.alignment(0, 0);
                for arch in [80, 90] {
                    let choice = matmul::choose(arch, g, align);
                    assert!(
                        matches!(choice.kernel, KernelKind::MmaSync(_)),
                        "{} B={b} {} sm_{arch}: {choice:?}",
                        preset.name,
                        p.name
                    );
                    let cands = candidates(arch, g, align);
                    assert!(cands.contains(&Choice {
                        kernel: choice.kernel,
                        split_k: None
                    }));
                    for c in cands {
                        assert!(matmul::feasible(c.kernel, arch, align), "{c:?}");
                        assert!(g.batch == 1 || c.split_k.is_none());
                        let ws = matmul::workspace_bytes(&c, g);
                        let max = Choice {
                            kernel: c.kernel,
                            split_k: Some(table::MAX_SPLIT),
                        };
                        assert!(ws <= matmul::workspace_bytes(&max, g));
                    }
                }
            }
        }
    }
}

fn run_words(words: &[&str]) -> Result<(), CliError> {
    run(super::super::shared::parse_flags(words))
}

#[test]
fn autotune_needs_a_gpu_and_bad_flags_are_refused() {
    // The emulator's timings would pick nonsense: refused with a message saying why.
    match run_words(&[
        "--device",
        "emu",
        "--autotune",
        "--out",
        "never-written.txt",
    ]) {
        Err(e @ CliError::AutotuneNeedsGpu { .. }) => {
            assert!(e.to_string().contains("needs a GPU"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!std::path::Path::new("never-written.txt").exists());
    for bad in [
        &["--device", "emu", "--out", "x.txt"][..],
        &["--device", "cpu"],
        &["--device", "emu", "--ffn", "0"],
    ] {
        assert!(
            matches!(
                run_words(bad),
                Err(CliError::Usage(_) | CliError::UsageWithHelp { .. })
            ),
            "{bad:?} must be a usage error"
        );
    }
    match run_words(&["--device", "emu", "--compare", "no/such/file.jsonl"]) {
        Err(e @ CliError::Bench { .. }) => {
            assert!(e.to_string().contains("no/such/file.jsonl"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn json_lines_parse_back_and_compare_reads_them() {
    let p = Product {
        name: "ffn_down \"dW\"".into(),
        gemm: Gemm::dense(Layout::Tn, OutType::F32, 2496, 6739, 8192)
            .with_epilogue(Epilogue::Accumulate, 1.0),
        count: 24,
    };
    let line = json_line(
        "paper-2b",
        &p,
        "matmul_tc_128x128x32_rs_tn_f32",
        2,
        812.5,
        false,
    );
    let fields = parse_json_object(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let get = |k: &str| fields.get(k).cloned();
    assert_eq!(get("product"), Some(Value::from(p.name.clone())));
    assert_eq!(get("k"), Some(Value::from(8192)));
    assert_eq!(get("ldb"), Some(Value::from(6739)));
    assert_eq!(get("split"), Some(Value::from(2)));
    assert_eq!(get("us"), Some(Value::from(812.5)));
    assert_eq!(get("emulated"), Some(Value::Bool(false)));
    assert_eq!(get("epilogue"), Some(Value::from("accumulate")));
    let Some(tf) = get("tflops").and_then(|v| v.as_f64()) else {
        panic!("no tflops in {line}");
    };
    assert!((tf - p.gemm.flops() / 812.5e-6 / 1e12).abs() < 1e-9 * tf);
    // A zero time gives null TFLOP/s, still valid.
    let zero = json_line("m", &p, "k", 1, 0.0, true);
    assert!(parse_json_object(&zero).is_ok(), "{zero}");
    let summary = "{\"bench\":\"matmul\",\"summary\":true,\"us\":null}";
    let text = format!("{line}\n\n{summary}\n");
    let rows = read_compare("t.jsonl", &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rows.len(), 1);
    assert!(rows[0].is(&p) && rows[0].us == 812.5, "{rows:?}");
    let other = Product {
        gemm: Gemm::dense(Layout::Tn, OutType::F32, 1920, 5184, 8192),
        ..p.clone()
    };
    assert!(!rows[0].is(&other), "another preset's shape must not match");
    for bad in [
        "not json",
        "{\"product\":\"x\"}",
        "{\"product\":\"x\",\"m\":1,\"n\":1,\"k\":1,\"batch\":1,\"us\":-1}",
        "{\"product\":\"x\",\"m\":1.5,\"n\":1,\"k\":1,\"batch\":1,\"us\":1}",
        "{\"product\":\"x\",\"us\":1",
        "{\"product\":\"x\",\"us\":1} extra",
    ] {
        match read_compare("t.jsonl", &format!("{line}\n{bad}")) {
            Err(e @ CliError::CompareLine { .. }) => {
                assert!(e.to_string().contains("t.jsonl:2"), "{e}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}
