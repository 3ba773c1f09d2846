//! `frugal profile` plans the step for each --gpu's architecture: on an sm_90 part
//! (h100-sxm) the wgmma + TMA matmul and the wgmma flash forward run, and their rows carry
//! tensor FLOPs, the TMA traffic and wgmma's shared-memory operand reads the emulator
//! counts; an sm_80 part (a100) in the same call keeps the mma.sync step. `--kernel matmul`
//! and `--kernel flash-fwd` do the same for one kernel, with counts worked out exactly.

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
        // wgmma reads its operands from shared memory: counted, in 128-byte wavefronts.
        assert!(f(&c["wgmma_shared_read_bytes"]) > 0.0, "{k}");
        assert_eq!(
            f(&c["wgmma_shared_wavefronts"]) * 128.0,
            f(&c["wgmma_shared_read_bytes"]),
            "{k}"
        );
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
    assert!(f(&fwd["counters"]["wgmma_shared_read_bytes"]) > 0.0);
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
    // wgmma's shared reads: per tile, 2 consumer warpgroups x 8 k16 steps of m64n128k16, each
    // reading A's 64 x 16 and B's 128 x 16 bf16 (6144 bytes), in 128-byte wavefronts (the
    // tiles are 128B-swizzled: no conflicts).
    assert_eq!(f(&c["wgmma_requests"]), 4.0 * 2.0 * 8.0);
    assert_eq!(f(&c["wgmma_shared_read_bytes"]), 4.0 * 2.0 * 8.0 * 6144.0);
    assert_eq!(
        f(&c["wgmma_shared_wavefronts"]),
        4.0 * 2.0 * 8.0 * 6144.0 / 128.0
    );
    assert_eq!(f(&c["wgmma_shared_bank_conflicts"]), 0.0);
    let a100 = gpus[1]["kernels"][0]["kernel"].as_str().unwrap();
    assert!(a100.starts_with("matmul_tc_"), "{a100}");
}

#[test]
fn kernel_flash_fwd_on_h100_is_the_wgmma_forward_with_exact_counts() {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["profile", "--kernel", "flash-fwd", "--shape", "1,2,256,64"])
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
    let h100 = gpus[0]["kernels"].as_array().unwrap();
    assert_eq!(h100.len(), 1, "{v}");
    assert_eq!(h100[0]["kernel"], "flash_attn_fwd_wgmma_hs64", "{v}");
    let c = &h100[0]["counters"];
    // Causal, T = 256 in 128-row tiles: query tile 0 meets key tile 0, query tile 1 key tiles
    // 0 and 1: 3 (query, key) tile pairs per head, 6 in all. Per pair each of the 2 consumer
    // warpgroups issues S = Q K^T as HS/16 = 4 m64n128k16 (A = Q, B = K from shared: 2048 +
    // 4096 bytes each) and O += P V as 128/16 = 8 m64n64k16 (P in registers, B = V: 2048
    // bytes each).
    let per_pair = 2.0 * (4.0 * 6144.0 + 8.0 * 2048.0);
    assert_eq!(f(&c["wgmma_requests"]), 6.0 * 2.0 * 12.0);
    assert_eq!(f(&c["wgmma_shared_read_bytes"]), 6.0 * per_pair);
    assert_eq!(f(&c["wgmma_shared_wavefronts"]), 6.0 * per_pair / 128.0);
    assert_eq!(f(&c["wgmma_shared_bank_conflicts"]), 0.0);
    // 2·64·16·N per wgmma: 4 with N = 128 and 8 with N = 64 per pair and warpgroup.
    let flops = 2.0 * 64.0 * 16.0 * (4.0 * 128.0 + 8.0 * 64.0);
    assert_eq!(f(&c["tensor_flops"]), 6.0 * 2.0 * flops);
    // TMA: per CTA the Q tile and each key tile's K and V, 128 x 64 bf16 = 16 KiB each:
    // 3 + 5 tiles per head.
    assert_eq!(f(&c["bulk_global_read_bytes"]), 2.0 * 8.0 * 16384.0);
    // The A100 runs FlashAttention-2's mma.sync forward.
    let a100 = gpus[1]["kernels"][0]["kernel"].as_str().unwrap();
    assert_eq!(a100, "flash_attn_fwd_hs64", "{v}");
}
