//! The sharded modes on device buffers (`--shard grad-op|full` with a device
//! collective), on the emulated GPU: two ranks as two threads over the socket ring on
//! loopback, each rank's gradient ranges reduce-scattered in place on the emulated comm
//! stream (`HostRingCollective`, the code path NCCL takes on `cuda`), the norm's
//! partials and the bf16 weights all-gathered there. Training gives the bits of the
//! device path's `--shard none` (itself the host path's and one process's:
//! `device_collective.rs`), with grad-accum 2 (a micro-batch that hands nothing over
//! still gathers), validation after every step and the sharded runs replayed from CUDA
//! graphs (as on `cuda` by default). A planted missing wait (the
//! forward not waiting for a unit's weight gather) changes the bits. End to end, `frugal
//! launch` of 2 emu ranks with `FRUGAL_DEVICE_COLLECTIVE=1` trains the host-staged
//! sharded run's bits.

use std::ops::Range;
use std::process::{Command, Output};
use std::time::Duration;

use frugal_comm::{
    Communicator, HostRingCollective, Rendezvous, Shards, SocketComm, SocketOptions,
};
use frugal_model::checkpoint::Checkpoint;
use frugal_model::config::{Config, ParamLayout};
use frugal_model::device::{
    Attention, DeviceModel, GraphMode, OptimHyper, ShardState, Sharding, StepOptions,
};
use frugal_model::rng::Rng;
use frugal_ptx::kernels::adamw::NORM_CHUNK;
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::collective::{CollectiveCounts, DeviceCollective};
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::stream::{Event, StreamKind};
use frugal_runtime::RuntimeError;

mod common;
use common::*;

const HYPER: OptimHyper = OptimHyper {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};
const STEPS: u64 = 2;
const T: usize = 16;

/// 420 480 parameters: 7 norm chunks, 2 ranks split at 262 144 (inside layer 1).
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

fn p() -> usize {
    ParamLayout::new(&cfg()).total()
}

fn model(mode: ShardState, rank: usize) -> DeviceModel {
    let cfg = cfg();
    let p = p();
    let dev = Device::open(DeviceSpec::Emu).unwrap();
    let opts = StepOptions {
        sharding: Sharding::new(mode, 2),
        ..StepOptions::deterministic(Attention::Flash)
    };
    let mut dm = DeviceModel::new_with(dev, &cfg, 1, T, opts, HYPER).unwrap();
    dm.set_rank(rank).unwrap();
    let mut rng = Rng::new(3);
    let params: Vec<f32> = (0..p).map(|_| (rng.normal() * 0.05) as f32).collect();
    dm.set_state(&params, &vec![0.0; p], &vec![0.0; p], 0)
        .unwrap();
    dm
}

/// Micro-batch `micro` of `rank` at `step`.
fn batch(step: u64, rank: usize, micro: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(1000 * step + 10 * rank as u64 + micro as u64);
    let v = cfg().vocab_size as u64;
    let i = (0..T).map(|_| rng.below(v) as u32).collect();
    let t = (0..T).map(|_| rng.below(v) as u32).collect();
    (i, t)
}

/// Per step the loss, norm and validation loss bits; then this rank's shard of the
/// master weights and moments (bits) and its range.
type Bits = (Vec<u64>, Vec<u32>, Range<usize>);

/// Runs `f(rank, comm)` on two threads joined over loopback.
fn two_ranks<R: Send + 'static>(
    f: impl Fn(usize, Box<dyn Communicator>) -> R + Send + Sync + Copy + 'static,
) -> Vec<R> {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, 2, port, "shard-test", Duration::from_secs(30));
                let comm = SocketComm::connect(&rv, SocketOptions::default()).unwrap();
                f(rank, Box::new(comm) as Box<dyn Communicator>)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn host_ring(comm: Box<dyn Communicator>) -> HostRingCollective {
    HostRingCollective::new(comm, Shards::new(p(), 2, NORM_CHUNK)).unwrap()
}

/// Two micro-batches a step (the first hands nothing over), the optimizer, validation.
fn train(
    mut dm: DeviceModel,
    rank: usize,
    collective: Box<dyn DeviceCollective>,
    graphs: GraphMode,
) -> Bits {
    dm.set_graphs(graphs);
    dm.set_collective(Some(collective));
    let mut numbers = Vec::new();
    for step in 0..STEPS {
        dm.zero_grads().unwrap();
        let (i, t) = batch(step, rank, 0);
        let first = dm.forward_backward(&i, &t, 0.5, None).unwrap();
        let (i, t) = batch(step, rank, 1);
        let second = dm.forward_backward_reduced(&i, &t, 0.5).unwrap();
        let norm = dm.optimizer_step(1e-3, 0.05).unwrap();
        let (vi, vt) = batch(99, 0, step as usize);
        let val = dm.loss(&vi, &vt).unwrap();
        numbers.extend([
            u64::from(first.to_bits()),
            u64::from(second.to_bits()),
            norm.to_bits(),
            u64::from(val.to_bits()),
        ]);
    }
    let (master, m, v) = dm.state().unwrap();
    let state = master
        .iter()
        .chain(&m)
        .chain(&v)
        .map(|x| x.to_bits())
        .collect();
    (numbers, state, dm.shard())
}

fn run(mode: ShardState, graphs: GraphMode) -> Vec<Bits> {
    two_ranks(move |rank, comm| train(model(mode, rank), rank, Box::new(host_ring(comm)), graphs))
}

/// The whole run's shard `range` of the state bits of an unsharded rank.
fn shard_of(whole: &[u32], range: &Range<usize>) -> Vec<u32> {
    let p = p();
    (0..3)
        .flat_map(|k| whole[k * p + range.start..k * p + range.end].to_vec())
        .collect()
}

#[test]
fn sharded_modes_on_device_buffers_train_the_bits_of_shard_none() {
    let none = run(ShardState::None, GraphMode::Off);
    // The norms and validation losses (the micro-batches' losses are the rank's own).
    let shared = |b: &Bits| -> Vec<u64> { b.0.chunks(4).flat_map(|c| [c[2], c[3]]).collect() };
    assert_eq!(
        shared(&none[0]),
        shared(&none[1]),
        "shard none: the ranks differ"
    );
    assert!(
        none[0].1 == none[1].1,
        "shard none: the ranks' weights differ"
    );
    for mode in [ShardState::GradOp, ShardState::Full] {
        // Replayed from graphs (as on `cuda` by default): the waits for the gathers and
        // the hand-overs fall between the replayed runs of launches.
        let sharded = run(mode, GraphMode::On);
        for (rank, got) in sharded.iter().enumerate() {
            assert_eq!(got.0, none[rank].0, "{mode:?} rank {rank}: losses, norms");
            assert!(got.2.len() < p(), "{mode:?}: rank {rank} holds a shard");
            assert!(
                got.1 == shard_of(&none[0].1, &got.2),
                "{mode:?} rank {rank}: the shard's weights and moments differ from none's"
            );
        }
    }
}

/// A collective whose weight all-gathers hand back an event recorded BEFORE the gather:
/// the forward's kernels do not wait for the unit's weights (a planted missing wait).
struct EarlyGather(HostRingCollective);

impl DeviceCollective for EarlyGather {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        self.0.all_reduce_mean_f32(device, buf, byte, elems, after)
    }
    fn wait(&mut self, device: &Device, event: &Event) -> Result<(), RuntimeError> {
        self.0.wait(device, event)
    }
    fn take_counts(&mut self) -> CollectiveCounts {
        self.0.take_counts()
    }
    fn reduce_scatter_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        bounds: &[usize],
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        self.0
            .reduce_scatter_mean_f32(device, buf, byte, elems, bounds, after)
    }
    fn all_gather_bytes(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        bounds: &[usize],
        own: Option<usize>,
        after: &Event,
        what: &str,
    ) -> Result<Event, RuntimeError> {
        if !what.starts_with("bf16 weights") {
            return self
                .0
                .all_gather_bytes(device, buf, byte, bounds, own, after, what);
        }
        device.wait(StreamKind::Comm, after)?;
        let early = device.record(StreamKind::Comm, "before the gather")?;
        self.0
            .all_gather_bytes(device, buf, byte, bounds, own, after, what)?;
        Ok(early)
    }
}

#[test]
fn a_forward_not_waiting_for_a_unit_s_weight_gather_is_caught() {
    let good = run(ShardState::GradOp, GraphMode::Off);
    for mode in [ShardState::GradOp, ShardState::Full] {
        let planted = two_ranks(move |rank, comm| {
            let c = EarlyGather(host_ring(comm));
            let dm = model(mode, rank);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train(dm, rank, Box::new(c), GraphMode::Off)
            }))
            .ok()
        });
        // Stale weights (the previous update's, or another unit's) change the numbers;
        // a run that fails outright (a race reported) is caught too.
        for (rank, got) in planted.iter().enumerate() {
            if let Some(got) = got {
                assert_ne!(
                    got.0, good[rank].0,
                    "{mode:?} rank {rank}: the planted missing wait went unnoticed"
                );
            }
        }
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn launch(force: &str, shard: &str, out: &std::path::Path, metrics: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(["launch", "--nproc", "2", "--", "train", "--device", "emu"])
        .args([
            "--layers",
            "2",
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
            "--grad-accum",
            "2",
            "--steps",
            "2",
            "--val-every",
            "1",
            "--val-batches",
            "1",
            "--bucket-mb",
            "0.05",
            "--ckpt-every",
            "2",
        ])
        .args(["--shard", shard, "--out", out.to_str().unwrap()])
        .args(["--metrics", metrics.to_str().unwrap()])
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("FRUGAL_JOB_TOKEN")
        .env("FRUGAL_COMM_TIMEOUT", "120")
        .env("FRUGAL_EMU_MEMORY_GIB", "16")
        .env("FRUGAL_DEVICE_COLLECTIVE", force)
        .output()
        .expect("run frugal launch")
}

/// Per step its loss and norm, and validation losses, as written (the shortest text
/// that round-trips, so equal text is equal bits).
fn numbers(metrics: &std::path::Path) -> Vec<String> {
    metrics_lines(metrics)
        .iter()
        .filter_map(|l| match (l.get("loss"), l.get("val_loss")) {
            (Some(loss), _) => Some(format!("{} {loss} {}", l["step"], l["grad_norm"])),
            (None, Some(val)) => Some(format!("{} val {val}", l["step"])),
            _ => None,
        })
        .collect()
}

/// The parameters of a run's last checkpoint (step 2): a sharded set when there is one.
fn final_params(out: &std::path::Path) -> Vec<u32> {
    let whole = out.join(Checkpoint::file_name(2));
    let path = if whole.exists() {
        whole
    } else {
        out.join("step-00000002.shards")
    };
    let ck =
        frugal_model::checkpoint::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ck.params.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn launched_sharded_emu_ranks_on_the_device_path_train_the_host_staged_bits() {
    let dir = scratch_in("device-collective-shard", "launch");
    for shard in ["grad-op", "full"] {
        let mut runs = Vec::new();
        for force in ["0", "1"] {
            let out = dir.join(format!("{shard}-{force}"));
            let metrics = dir.join(format!("{shard}-{force}.jsonl"));
            let o = launch(force, shard, &out, &metrics);
            assert_ok(&o);
            // Both paths count the bytes they send as the ring sends them, each
            // collective in the step the host path counts it in.
            let sent: Vec<String> = metrics_lines(&metrics)
                .iter()
                .filter(|l| l.contains_key("loss"))
                .map(|l| l["comm_sent_bytes"].clone())
                .collect();
            runs.push((numbers(&metrics), final_params(&out), sent));
        }
        assert_eq!(runs[0].2, runs[1].2, "{shard}: bytes sent");
        assert_eq!(runs[0].0.len(), 4, "{shard}: {:?}", runs[0].0);
        assert_eq!(runs[0].0, runs[1].0, "{shard}: losses or norms differ");
        assert!(runs[0].1 == runs[1].1, "{shard}: weights differ");
    }
}

fn wait_for(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rank killed in the middle of a 3-rank grad-op run on the device path (steps back
/// to back, so it dies inside one: a reduce-scatter, the norm's gather or a weight
/// gather on the emulated comm stream is almost always in flight): each other rank
/// fails on its own, exit 1, naming rank 1, within the communicator's timeout (10 s)
/// and its verdict's linger. Ranks are started by hand, not by `frugal launch`, which
/// would stop the others itself.
#[test]
fn a_rank_killed_mid_collective_on_the_device_path_is_named_by_every_other_rank() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = scratch_in("device-collective-shard", "killed");
    let port = free_port().to_string();
    let world = 3;
    let mut children: Vec<Option<std::process::Child>> = (0..world)
        .map(|rank| {
            let out = dir.join(format!("rank{rank}"));
            let mut cmd = Command::new(BIN);
            cmd.args(["train", "--device", "emu"])
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
                    "1",
                    "--steps",
                    "100000",
                    "--val-every",
                    "0",
                    "--ckpt-every",
                    "0",
                    "--shard",
                    "grad-op",
                ])
                .args(["--out", out.to_str().unwrap()])
                .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("FRUGAL_JOB_TOKEN", "device-shard-kill-test")
                .env("FRUGAL_COMM_TIMEOUT", "10")
                .env("FRUGAL_EMU_MEMORY_GIB", "16")
                .env("FRUGAL_DEVICE_COLLECTIVE", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Some(cmd.spawn().unwrap())
        })
        .collect();
    // Rank 0 logs each step: once step 2 is logged, the ranks are training.
    let stdout = children[0].as_mut().unwrap().stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("step") && line.contains(" 2/100000 ") {
                let _ = seen_tx.send(());
            }
        }
    });
    let training = seen_rx.recv_timeout(Duration::from_secs(180));
    let mut victim = children[1].take().unwrap();
    victim.kill().unwrap();
    let killed = std::time::Instant::now();
    let _ = victim.wait();
    assert!(training.is_ok(), "rank 0 never logged step 2");
    for (rank, child) in children.into_iter().enumerate() {
        let Some(child) = child else { continue };
        let o = wait_for(child, Duration::from_secs(90), &format!("rank {rank}"));
        let err = assert_fails_cleanly(&o);
        assert!(
            err.contains("rank 1"),
            "rank {rank} does not name rank 1:\n{err}"
        );
        // The timeout (10 s), the verdict's linger, a step's compute on a loaded machine.
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "rank {rank} failed {:?} after the kill",
            killed.elapsed()
        );
    }
    let _ = reader.join();
}
