//! bf16 gradient buckets on the device path (`--bucket-dtype bf16`), on the emulated
//! GPU: the host ring on the emulated comm stream rounds each rank's values to bf16,
//! sums them in f32 in the ring's order and rounds the average to bf16. Two ranks as
//! threads over loopback: both end with the same bits, every value is a bf16, and each
//! is within the bound of the roundings of the f32 average (2^-8 of the mean of the
//! ranks' |g|, plus 2^-8 of |result|), for the all-reduce and the sharded
//! reduce-scatter. End to end, 2 launched emu ranks train with bf16 buckets, their loss
//! close to the f32 run's; without the device path the flag is a usage error.

use std::process::{Command, Output};
use std::time::Duration;

use frugal_comm::{
    Communicator, HostRingCollective, Rendezvous, Shards, SocketComm, SocketOptions,
};
use frugal_model::rng::Rng;
use frugal_runtime::collective::DeviceCollective;
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::stream::StreamKind;

mod common;
use common::*;

const N: usize = 5000;
/// The range reduced: not aligned, cut by the shards' boundary.
const RANGE: std::ops::Range<usize> = 37..4937;

/// Rank `rank`'s gradient values: magnitudes over several binades, both signs.
fn grads(rank: usize) -> Vec<f32> {
    let mut rng = Rng::new(77 + rank as u64);
    (0..N)
        .map(|i| (rng.normal() as f32) * 10f32.powi((i % 7) as i32 - 4))
        .collect()
}

/// Each rank's buffer after one all-reduce (`sharded`: reduce-scatter over the shards)
/// with bf16 buckets or not.
fn reduce(bf16: bool, sharded: bool) -> Vec<Vec<f32>> {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, 2, port, "bf16-test", Duration::from_secs(30));
                let comm: Box<dyn Communicator> =
                    Box::new(SocketComm::connect(&rv, SocketOptions::default()).unwrap());
                let shards = Shards::new(N, 2, 2048);
                let bounds = shards.bounds_in(RANGE);
                let mut c = HostRingCollective::new(comm, shards).unwrap();
                assert!(c.set_bf16_buckets(bf16));
                let dev = Device::open(DeviceSpec::Emu).unwrap();
                let mut buf = dev.alloc(N * 4, "grads").unwrap();
                buf.write(0, &grads(rank)).unwrap();
                let written = dev.record(StreamKind::Compute, "written").unwrap();
                let byte = RANGE.start * 4;
                let done = if sharded {
                    c.reduce_scatter_mean_f32(&dev, &buf, byte, RANGE, &bounds, &written)
                } else {
                    c.all_reduce_mean_f32(&dev, &buf, byte, RANGE, &written)
                }
                .unwrap();
                c.wait(&dev, &done).unwrap();
                buf.to_vec::<f32>().unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Checks `got` (bf16 buckets) against `exact` (f32) over `range`: bf16 values within
/// the roundings' bound.
fn check_bound(got: &[f32], exact: &[f32], range: std::ops::Range<usize>) {
    let (a, b) = (grads(0), grads(1));
    let mut worst = 0.0f64;
    for i in range {
        let g = got[i];
        assert_eq!(
            half::bf16::from_f32(g).to_f32().to_bits(),
            g.to_bits(),
            "element {i} is not a bf16: {g}"
        );
        let mean_abs = (f64::from(a[i].abs()) + f64::from(b[i].abs())) / 2.0;
        // Inputs rounded (2^-8 relative each: bf16 keeps 8 significant bits), the average rounded once more (2^-8 of
        // it), the f32 sum's own rounding (2^-24 of the sum, with room).
        let bound = 2f64.powi(-8) * mean_abs
            + 2f64.powi(-8) * f64::from(g.abs())
            + 2f64.powi(-22) * mean_abs;
        let err = (f64::from(g) - f64::from(exact[i])).abs();
        assert!(
            err <= bound,
            "element {i}: bf16 {g} vs f32 {} (error {err}, bound {bound})",
            exact[i]
        );
        if mean_abs > 0.0 {
            worst = worst.max(err / mean_abs);
        }
    }
    // The bound is not vacuous: bf16 buckets do change values.
    assert!(worst > 0.0, "no element changed: bf16 was not applied");
}

#[test]
fn bf16_buckets_give_every_rank_the_same_bf16_values_within_the_rounding_bound() {
    let exact = reduce(false, false);
    let got = reduce(true, false);
    let bits = |v: &[f32]| -> Vec<u32> { v[RANGE].iter().map(|x| x.to_bits()).collect() };
    assert!(bits(&got[0]) == bits(&got[1]), "the ranks differ");
    check_bound(&got[0], &exact[0], RANGE);
    // Outside the range nothing changed.
    assert!(got[0][..RANGE.start] == grads(0)[..RANGE.start]);
    assert!(got[1][RANGE.end..] == grads(1)[RANGE.end..]);

    // The reduce-scatter: each rank's chunk (its shard in the range) has the
    // all-reduce's bits, the rest of the range its own values.
    let scattered = reduce(true, true);
    let shards = Shards::new(N, 2, 2048);
    for (rank, s) in scattered.iter().enumerate() {
        let shard = shards.range(rank);
        let mine = shard.start.max(RANGE.start)..shard.end.min(RANGE.end);
        assert!(!mine.is_empty() && mine.len() < RANGE.len(), "{mine:?}");
        for i in RANGE {
            let want = if mine.contains(&i) {
                got[0][i]
            } else {
                grads(rank)[i]
            };
            assert!(
                s[i].to_bits() == want.to_bits(),
                "rank {rank} element {i}: {} where {want} was due (chunk {mine:?})",
                s[i]
            );
        }
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn launch(force: &str, extra: &[&str], metrics: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(["launch", "--nproc", "2", "--", "train", "--device", "emu"])
        .args([
            "--layers",
            "1",
            "--hidden",
            "128",
            "--heads",
            "2",
            "--ffn",
            "256",
            "--seq",
            "32",
            "--batch",
            "2",
            "--steps",
            "3",
            "--val-every",
            "0",
            "--ckpt-every",
            "never",
            "--shard",
            "grad-op",
        ])
        .args(extra)
        .args(["--metrics", metrics.to_str().unwrap()])
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("FRUGAL_JOB_TOKEN")
        .env("FRUGAL_COMM_TIMEOUT", "120")
        .env("FRUGAL_EMU_MEMORY_GIB", "16")
        .env("FRUGAL_DEVICE_COLLECTIVE", force)
        .output()
        .expect("run frugal launch")
}

#[test]
fn launched_ranks_train_with_bf16_buckets_close_to_f32_and_the_flag_needs_the_device_path() {
    let dir = scratch_in("device-collective-bf16", "launch");
    let mut losses = Vec::new();
    for dtype in ["f32", "bf16"] {
        let metrics = dir.join(format!("{dtype}.jsonl"));
        let out = dir.join(dtype);
        let o = launch(
            "1",
            &["--bucket-dtype", dtype, "--out", out.to_str().unwrap()],
            &metrics,
        );
        assert_ok(&o);
        let l: Vec<f64> = metrics_lines(&metrics)
            .iter()
            .filter(|l| l.contains_key("loss"))
            .map(|l| l["loss"].parse().unwrap())
            .collect();
        assert_eq!(l.len(), 3, "{dtype}: {l:?}");
        losses.push(l);
    }
    // The first step's loss is before any update: the same; later ones close, and not
    // the same (bf16 buckets were used).
    assert_eq!(losses[0][0], losses[1][0]);
    assert_ne!(losses[0][1..], losses[1][1..]);
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() <= 1e-2 * a.abs(), "f32 {a} vs bf16 {b}");
    }
    // The host-staged path sends f32: asking it for bf16 is a usage error (exit 2).
    let metrics = dir.join("host.jsonl");
    let out = dir.join("host");
    let o = launch(
        "0",
        &["--bucket-dtype", "bf16", "--out", out.to_str().unwrap()],
        &metrics,
    );
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("exit status 2") && err.contains("--bucket-dtype bf16"),
        "{err}"
    );
}
