//! `frugal bench attention --tma`: the flash rows run the sm_90a wgmma forward (the emulator
//! runs sm_90a), forward+backward adds FlashAttention-2's backward as the sm_90 step does,
//! and the JSON lines keep the shape fields `scripts/bench-join.py` joins on; without --tma
//! the rows are FlashAttention-2's. (scripts/gpu-check.sh times it against torch SDPA.)

mod common;

use std::process::Command;

use common::assert_ok;
use serde_json::Value;

fn lines(extra: &[&str]) -> Vec<Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args([
            "bench",
            "attention",
            "--device",
            "emu",
            "--attention",
            "flash",
        ])
        .args([
            "--model",
            "paper-100m",
            "--seq",
            "128",
            "--batch",
            "1",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert_ok(&o);
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn tma_rows_time_the_wgmma_forward_with_the_same_shape_fields() {
    let plain = lines(&[]);
    let tma = lines(&["--tma"]);
    assert_eq!(plain.len(), 2);
    assert_eq!(tma.len(), 2);
    for (p, t) in plain.iter().zip(&tma) {
        assert!(p["kernel"].is_null(), "{p}");
        assert_eq!(t["kernel"], "flash_attn_fwd_wgmma_hs64", "{t}");
        for field in [
            "name",
            "attention",
            "pass",
            "batch",
            "seq",
            "heads",
            "kv_heads",
            "head_dim",
            "causal",
            "flops",
        ] {
            assert_eq!(p[field], t[field], "{field}");
        }
    }
    // The forward is the one wgmma launch; forward+backward the same backward launches.
    assert_eq!(tma[0]["pass"], "fwd");
    assert_eq!(tma[0]["launches"], 1);
    assert_eq!(tma[1]["launches"], plain[1]["launches"]);
}
