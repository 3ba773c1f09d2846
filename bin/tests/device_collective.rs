//! The device-collective path of DDP on the emulated GPU, two ranks as two threads over
//! the socket ring on loopback: each rank's last micro-batch reduces its gradient ranges
//! in place on the emulated comm stream (`HostRingCollective`, the code path NCCL takes
//! on `cuda`), and training gives the bits of the host-staged path (the DDP engine) and
//! of one process at the same global batch. A peer that dies mid-step makes the other
//! rank fail naming it, within the timeout. End to end, `frugal launch` of 2 emu ranks
//! with `FRUGAL_DEVICE_COLLECTIVE=1` trains the bits of the host-staged run.

use std::ops::Range;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use frugal_model::checkpoint::Checkpoint;

mod common;
use common::*;

use frugal_comm::{
    Communicator, Ddp, HostRingCollective, Reduce, Rendezvous, Shards, SocketComm, SocketOptions,
};
use frugal_model::config::{Config, ParamLayout};
use frugal_model::device::{Attention, DeviceModel, OptimHyper, StepOptions};
use frugal_model::rng::Rng;
use frugal_ptx::kernels::adamw::NORM_CHUNK;
use frugal_runtime::device::{Device, DeviceSpec};

const HYPER: OptimHyper = OptimHyper {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};
const STEPS: u64 = 2;
const T: usize = 16;

fn cfg() -> Config {
    Config {
        vocab_size: 96,
        dim: 128,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        ffn_dim: 344,
        seq_len: T,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

fn model() -> DeviceModel {
    let cfg = cfg();
    let p = ParamLayout::new(&cfg).total();
    let dev = Device::open(DeviceSpec::Emu).unwrap();
    let opts = StepOptions::deterministic(Attention::Flash);
    let mut dm = DeviceModel::new_with(dev, &cfg, 1, T, opts, HYPER).unwrap();
    let mut rng = Rng::new(3);
    let params: Vec<f32> = (0..p).map(|_| (rng.normal() * 0.05) as f32).collect();
    dm.set_state(&params, &vec![0.0; p], &vec![0.0; p], 0)
        .unwrap();
    dm
}

/// The micro-batch of `rank` at `step`.
fn batch(step: u64, rank: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(1000 * step + rank as u64);
    let v = cfg().vocab_size as u64;
    let i = (0..T).map(|_| rng.below(v) as u32).collect();
    let t = (0..T).map(|_| rng.below(v) as u32).collect();
    (i, t)
}

/// Per step the norm's bits, then the final weights and moments' bits.
type Bits = (Vec<u64>, Vec<u32>);

fn finish(dm: &DeviceModel, norms: Vec<u64>) -> Bits {
    let (master, m, v) = dm.state().unwrap();
    let state = master
        .iter()
        .chain(&m)
        .chain(&v)
        .map(|x| x.to_bits())
        .collect();
    (norms, state)
}

fn one_process() -> Bits {
    let mut dm = model();
    let mut norms = Vec::new();
    for step in 0..STEPS {
        dm.zero_grads().unwrap();
        for rank in 0..2 {
            let (i, t) = batch(step, rank);
            dm.forward_backward(&i, &t, 0.5, None).unwrap();
        }
        norms.push(dm.optimizer_step(1e-3, 0.05).unwrap().to_bits());
    }
    finish(&dm, norms)
}

fn connect(rank: usize, port: u16, timeout: Duration) -> Box<dyn Communicator> {
    let rv = Rendezvous::loopback(rank, 2, port, "device-collective-test", timeout);
    Box::new(SocketComm::connect(&rv, SocketOptions::default()).unwrap())
}

/// Runs `f(rank, comm)` on two threads joined over loopback.
fn two_ranks<R: Send + 'static>(
    f: impl Fn(usize, Box<dyn Communicator>) -> R + Send + Sync + Copy + 'static,
) -> Vec<R> {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || f(rank, connect(rank, port, Duration::from_secs(30))))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn shards() -> Shards {
    Shards::new(ParamLayout::new(&cfg()).total(), 2, NORM_CHUNK)
}

fn device_path(rank: usize, comm: Box<dyn Communicator>) -> Bits {
    let mut dm = model();
    dm.set_collective(Some(Box::new(
        HostRingCollective::new(comm, shards()).unwrap(),
    )));
    let mut norms = Vec::new();
    for step in 0..STEPS {
        dm.zero_grads().unwrap();
        let (i, t) = batch(step, rank);
        dm.forward_backward_reduced(&i, &t, 1.0).unwrap();
        norms.push(dm.optimizer_step(1e-3, 0.05).unwrap().to_bits());
    }
    finish(&dm, norms)
}

fn host_path(rank: usize, comm: Box<dyn Communicator>) -> Bits {
    let mut dm = model();
    let p = ParamLayout::new(&cfg()).total();
    let mut ddp = Ddp::with_shards(comm, shards(), 64 << 10, Reduce::AllReduce).unwrap();
    let (mut norms, mut grads) = (Vec::new(), vec![0.0f32; p]);
    for step in 0..STEPS {
        dm.zero_grads().unwrap();
        let (i, t) = batch(step, rank);
        let mut ready = |r: Range<usize>, g: &[f32]| ddp.on_ready_values(r, g).unwrap();
        dm.forward_backward(&i, &t, 1.0, Some(&mut ready)).unwrap();
        ddp.finish(&mut grads).unwrap();
        dm.write_grads(&grads).unwrap();
        norms.push(dm.optimizer_step(1e-3, 0.05).unwrap().to_bits());
    }
    finish(&dm, norms)
}

#[test]
fn two_ranks_reducing_on_the_device_train_the_bits_of_the_host_path_and_of_one_process() {
    let device = two_ranks(device_path);
    assert!(device[0] == device[1], "the ranks' weights differ");
    let host = two_ranks(host_path);
    assert_eq!(device[0].0, host[0].0, "norms: device vs host-staged path");
    assert!(
        device[0].1 == host[0].1,
        "weights: device vs host-staged path"
    );
    let single = one_process();
    assert_eq!(device[0].0, single.0, "norms: 2 ranks vs one process");
    assert!(device[0].1 == single.1, "weights: 2 ranks vs one process");
}

#[test]
fn a_peer_dying_mid_step_fails_the_other_rank_naming_it_within_the_timeout() {
    let port = free_port();
    let start = Instant::now();
    let survivor = std::thread::spawn(move || {
        let comm = connect(0, port, Duration::from_secs(5));
        let mut dm = model();
        dm.set_collective(Some(Box::new(
            HostRingCollective::new(comm, shards()).unwrap(),
        )));
        dm.zero_grads().unwrap();
        let (i, t) = batch(0, 0);
        let r = dm.forward_backward_reduced(&i, &t, 1.0);
        let r = r.and_then(|_| dm.optimizer_step(1e-3, 0.05));
        r.map(|_| ()).map_err(|e| e.to_string())
    });
    // Rank 1 joins, then dies (its sockets close) before its first collective.
    let peer = connect(1, port, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    drop(peer);
    let e = survivor.join().unwrap().unwrap_err();
    assert!(e.contains("rank 0") && e.contains("rank 1"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// The smallest model the device kernels run (head size 64).
const SMALL: &[&str] = &[
    "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "256", "--seq", "32", "--batch",
    "2",
];

fn launch(force: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["launch", "--nproc", "2", "--", "train", "--device", "emu"])
        .args(SMALL)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("FRUGAL_JOB_TOKEN")
        .env("FRUGAL_COMM_TIMEOUT", "120")
        .env("FRUGAL_EMU_MEMORY_GIB", "16")
        .env("FRUGAL_DEVICE_COLLECTIVE", force)
        .output()
        .expect("run frugal launch")
}

#[test]
fn launched_emu_ranks_forced_onto_the_device_path_train_the_host_paths_bits() {
    let dir = scratch_in("device-collective", "launch");
    let (mut runs, mut runs_sent) = (Vec::new(), Vec::new());
    for force in ["0", "1"] {
        let out = dir.join(format!("force-{force}"));
        let metrics = dir.join(format!("force-{force}.jsonl"));
        let o = launch(
            force,
            &[
                "--steps",
                "2",
                "--val-every",
                "0",
                "--ckpt-every",
                "2",
                "--bucket-mb",
                "0.1",
                "--out",
                out.to_str().unwrap(),
                "--metrics",
                metrics.to_str().unwrap(),
            ],
        );
        assert_ok(&o);
        let steps: Vec<_> = metrics_lines(&metrics)
            .into_iter()
            .filter(|l| l.contains_key("loss"))
            .collect();
        // Both paths count the gradient bytes they send as the ring sends them.
        let sent: Vec<u64> = steps
            .iter()
            .map(|l| l["comm_sent_bytes"].parse().unwrap())
            .collect();
        runs_sent.push(sent);
        let norms: Vec<String> = steps.iter().map(|l| l["grad_norm"].clone()).collect();
        runs.push((
            (losses(&metrics), norms),
            params_bits(&out.join(Checkpoint::file_name(2))),
        ));
    }
    assert_eq!(runs[0].0 .0.len(), 2, "{:?}", runs[0].0);
    assert_eq!(runs[0].0, runs[1].0, "losses or norms differ");
    assert!(runs[0].1 == runs[1].1, "weights differ");
    assert!(runs_sent[0].iter().all(|&b| b > 0), "{runs_sent:?}");
    assert_eq!(runs_sent[0], runs_sent[1], "bytes sent");
}

#[test]
fn a_bad_force_value_is_a_usage_error() {
    // The ranks exit 2 (usage); `launch` reports that and fails.
    let o = launch("yes", &["--steps", "1"]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("exit status 2") && err.contains("FRUGAL_DEVICE_COLLECTIVE=\"yes\""),
        "{err}"
    );
}
