//! `frugal profile` plans the step for each --gpu's architecture: on an sm_90 part
//! (h100-sxm) the wgmma + TMA matmul and the wgmma flash forward run, and their rows carry
//! tensor FLOPs and the TMA traffic the emulator counts; an sm_80 part (a100) in the same
//! call keeps the mma.sync step.

mod common;

use std::process::Command;

use common::assert_ok;
use serde_json::Value;

/// N = B*T = 256 tokens and widths of 128 and 256: projections, MLP and LM head pass the
/// wgmma dispatch (M >= 256, N >= 128, K >= 64); head size 64 has a wgmma forward.
const DIMS: &[&str] = &[
    "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "256", "--seq", "128", "--batch",
    "2", "--vocab", "256",
];

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn h100_rows_show_the_wgmma_kernels_with_their_flops_and_tma_bytes() {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg("profile")
        .args(DIMS)
        .args([
            "--gpu",
            "h100-sxm,a100-40gb",
            "--sample-ctas",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus[0]["step_arch"], 90);
    assert_eq!(gpus[1]["step_arch"], 80);
    let rows = |g: &Value| g["kernels"].as_array().unwrap().clone();
    let h100 = rows(&gpus[0]);
    let wgmma: Vec<&Value> = h100
        .iter()
        .filter(|k| k["kernel"].as_str().unwrap().starts_with("matmul_wgmma_"))
        .collect();
    assert!(!wgmma.is_empty(), "no wgmma matmul row: {h100:?}");
    for k in wgmma {
        let c = &k["counters"];
        assert!(f(&c["tensor_flops"]) > 0.0, "{k}");
        // Operands arrive by TMA only: bytes read, sectors through L2 and DRAM.
        assert!(f(&c["bulk_global_read_bytes"]) > 0.0, "{k}");
        assert!(
            f(&c["bulk_sectors"]) * 32.0 >= f(&c["bulk_global_read_bytes"]),
            "{k}"
        );
        assert!(f(&c["dram_read_sectors"]) > 0.0, "{k}");
        // The forward's products (nt, bf16, overwrite) read nothing but their operands;
        // the accumulating gradients also read C.
        if k["kernel"].as_str().unwrap().ends_with("_nt_bf16") {
            assert_eq!(f(&c["global_load_sectors"]), 0.0, "{k}");
        }
        assert!(f(&k["predicted_s"]) > 0.0);
    }
    let names = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|k| k["kernel"].as_str().unwrap().to_string())
            .collect()
    };
    let fwd = h100
        .iter()
        .find(|k| k["kernel"] == "flash_attn_fwd_wgmma_hs64")
        .unwrap_or_else(|| panic!("no wgmma flash forward: {:?}", names(&h100)));
    assert!(f(&fwd["counters"]["tensor_flops"]) > 0.0);
    assert!(f(&fwd["counters"]["bulk_global_read_bytes"]) > 0.0);
    // The A100 in the same call runs the sm_80 step.
    let a100 = names(&rows(&gpus[1]));
    assert!(a100.iter().all(|k| !k.contains("wgmma")), "{a100:?}");
    assert!(a100.iter().any(|k| k.starts_with("matmul_tc_")), "{a100:?}");
}

#[test]
fn kernel_matmul_on_h100_is_the_wgmma_kernel_with_exact_flops_and_tma_bytes() {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["profile", "--kernel", "matmul", "--shape", "256,256,128"])
        .args([
            "--gpu",
            "h100-sxm,a100-80gb",
            "--sample-ctas",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gpus = v["gpus"].as_array().unwrap();
    let h100 = &gpus[0]["kernels"][0];
    assert_eq!(h100["kernel"], "matmul_wgmma_128x128x64_nt_bf16", "{v}");
    let c = &h100["counters"];
    assert_eq!(f(&c["tensor_flops"]), 2.0 * 256.0 * 256.0 * 128.0);
    // 2 x 2 tiles of 128 x 128, each reading a 128-row panel of A and of B over K = 128
    // in bf16 by TMA: 4 x 2 x 128 x 128 x 2 bytes; every byte in bounds.
    assert_eq!(
        f(&c["bulk_global_read_bytes"]),
        4.0 * 2.0 * 128.0 * 128.0 * 2.0
    );
    assert_eq!(
        f(&c["bulk_sectors"]) * 32.0,
        f(&c["bulk_global_read_bytes"])
    );
    // Distinct DRAM bytes: A and B once each.
    assert_eq!(f(&c["dram_read_sectors"]) * 32.0, 2.0 * 256.0 * 128.0 * 2.0);
    let a100 = gpus[1]["kernels"][0]["kernel"].as_str().unwrap();
    assert!(a100.starts_with("matmul_tc_"), "{a100}");
}
