//! `--cuda-graphs off|on|auto` on `train` and `bench step`, on the emulated GPU (whose
//! graphs are recorded launch lists, replayed like CUDA's): training with the step
//! replayed from graphs gives the losses and weights of plain launches, bit for bit, and
//! a bad value is a usage error listing the choices.

use std::path::PathBuf;
use std::process::Output;

use frugal_model::checkpoint::Checkpoint;

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// The smallest model the device kernels run (head size 64).
const SMALL: &[&str] = &[
    "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "256", "--seq", "32", "--batch",
    "2",
];

fn frugal(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env("FRUGAL_EMU_MEMORY_GIB", "16")
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    scratch_in("cuda-graphs", name)
}

#[test]
fn training_from_graphs_gives_the_bits_of_plain_launches() {
    let dir = scratch("bits");
    let mut runs = Vec::new();
    for mode in ["off", "on"] {
        let out = dir.join(mode);
        let metrics = dir.join(format!("{mode}.jsonl"));
        let mut args = vec!["train", "--device", "emu", "--cuda-graphs", mode];
        args.extend_from_slice(SMALL);
        args.extend_from_slice(&["--steps", "3", "--val-every", "2", "--val-batches", "1"]);
        args.extend_from_slice(&["--ckpt-every", "3", "--out", out.to_str().unwrap()]);
        args.extend_from_slice(&["--metrics", metrics.to_str().unwrap()]);
        assert_ok(&frugal(&args));
        runs.push((
            losses(&metrics),
            params_bits(&out.join(Checkpoint::file_name(3))),
        ));
    }
    assert_eq!(runs[0].0.len(), 3, "{:?}", runs[0].0);
    assert_eq!(runs[0].0, runs[1].0, "losses differ");
    assert!(runs[0].1 == runs[1].1, "weights differ");
}

#[test]
fn bench_step_reports_its_graph_mode() {
    let o = frugal(&[
        "bench",
        "step",
        "--device",
        "emu",
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "16",
        "--steps",
        "1",
        "--warmup",
        "2",
        "--cuda-graphs",
        "on",
        "--json",
    ]);
    assert_ok(&o);
    let line = text(&o).0;
    assert!(line.contains("\"cuda_graphs\": \"on\""), "{line}");
}

#[test]
fn bad_cuda_graphs_values_exit_2_listing_the_choices() {
    for args in [
        &["train", "--device", "emu", "--cuda-graphs", "yes"][..],
        &["bench", "step", "--device", "emu", "--cuda-graphs", "yes"][..],
    ] {
        let o = frugal(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}\n{out}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("--cuda-graphs 'yes' is not one of off, on, auto"),
            "{err}"
        );
    }
}
