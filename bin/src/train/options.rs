//! `frugal train`'s flags, parsed and checked into one [`TrainOptions`] before
//! anything is allocated. Every value from the command line is validated here,
//! so a bad flag is a usage error (exit 2) and never a panic later.

use std::fmt;
use std::path::PathBuf;

use frugal_model::config::{Config, Preset};
use frugal_model::data::DataSpec;

use crate::args::{Args, UsageError};

/// The preset `frugal train` uses when `--model` is not given.
pub const DEFAULT_MODEL: &str = "tiny";
/// Default peak learning rate. With the default schedule, `tiny` on the
/// embedded corpus (B = 8, T = 256) goes from loss 6.30 to 1.85 in 100 steps
/// (validation 1.83, floor 1.53); warm-up and clipping absorb the one early
/// spike (step 8).
pub const DEFAULT_LR: f64 = 3e-3;
/// Default number of optimizer steps: 100 steps of `tiny` took 110 s of CPU
/// time (two threads) in a release build, so a few minutes of wall time even
/// on a busy two-core machine, and the loss falls most of the way from
/// ln V ≈ 6.2 to the corpus's floor of 1.53 nats/token.
pub const DEFAULT_STEPS: usize = 100;
pub const DEFAULT_SEED: u64 = 1337;
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.1;
pub const DEFAULT_CLIP: f64 = 1.0;
pub const DEFAULT_KEEP: usize = 3;
pub const DEFAULT_VAL_BATCHES: usize = 4;
/// The largest value accepted for any one dimension, batch or accumulation
/// count: far above any real model, low enough that products of a few of them
/// cannot overflow the size arithmetic.
pub const MAX_DIM: usize = 1 << 20;
/// Configurations whose rough memory need exceeds this (256 TiB) are refused
/// before anything is sized or allocated.
const MAX_ROUGH_BYTES: u128 = 1 << 48;

/// An upper-bound-style estimate of a CPU run's bytes (params, grads, two
/// moments, and activations of every layer), in u128 so it cannot overflow.
/// It only screens out absurd flags; the real figure is the model's.
fn rough_bytes(cfg: &Config, batch: usize) -> u128 {
    let (v, c, l, f, t) = (
        cfg.vocab_size as u128,
        cfg.dim as u128,
        cfg.n_layers as u128,
        cfg.ffn_dim as u128,
        cfg.seq_len as u128,
    );
    let params = 2 * v * c + l * (4 * c * c + 3 * c * f + 2 * c);
    let activations = batch as u128 * t * (2 * v + l * (16 * c + 4 * f));
    4 * (4 * params + activations)
}

/// The largest micro-batch `--mem-target` considers: beyond it a bigger batch
/// only adds memory, not throughput, for any model this tool trains.
pub const MEM_TARGET_MAX_BATCH: usize = 1024;

/// More CPU worker threads than any machine has cores is a typo.
pub const MAX_THREADS: usize = 4096;

/// Which device trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A CUDA device when one opens and runs the kernels, else the CPU.
    Auto,
    Cpu,
    /// CUDA device with this ordinal; `None` (plain `cuda`): the rank's
    /// LOCAL_RANK in a multi-rank job, else device 0.
    Cuda(Option<usize>),
    /// The PTX emulator: the GPU step on the CPU, slowly (for tests).
    Emu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(None) => f.write_str("cuda"),
            DeviceChoice::Cuda(Some(n)) => write!(f, "cuda:{n}"),
            DeviceChoice::Emu => f.write_str("emu"),
        }
    }
}

/// Attention implementation on GPUs (the paper's axis): the project's one type.
pub use frugal_model::config::Attention;

/// How flash attention's backward sums dQ (`--attention-dq`), as the device step's
/// [`frugal_model::device::DqMode`].
pub type AttentionDq = frugal_model::device::DqMode;

/// The flag's name for a dQ mode.
pub fn dq_name(dq: AttentionDq) -> &'static str {
    match dq {
        AttentionDq::Deterministic => "deterministic",
        AttentionDq::Atomic => "atomic",
    }
}

/// Parses `--attention-dq` (None: the deterministic default).
///
/// # Errors
/// A usage error listing the choices.
pub fn parse_attention_dq(value: Option<&str>) -> Result<AttentionDq, UsageError> {
    match value {
        None | Some("deterministic") => Ok(AttentionDq::Deterministic),
        Some("atomic") => Ok(AttentionDq::Atomic),
        Some(other) => Err(usage(format!(
            "--attention-dq '{other}' is not one of deterministic, atomic"
        ))),
    }
}

/// Units of the price table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceUnits {
    /// US dollars.
    Usd,
    /// The paper's relative prices (A100-40GB = 1.00).
    Paper,
}

impl fmt::Display for PriceUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PriceUnits::Usd => "usd",
            PriceUnits::Paper => "paper",
        })
    }
}

/// Gradient all-reduce backend for multi-rank runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommBackend {
    Socket,
    Nccl,
}

impl fmt::Display for CommBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommBackend::Socket => "socket",
            CommBackend::Nccl => "nccl",
        })
    }
}

/// Which checkpoint to resume from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The newest checkpoint in `--out` that verifies.
    Auto,
    Path(PathBuf),
}

/// Everything `frugal train` was asked to do, checked.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Preset name the config started from.
    pub model: String,
    /// The model after preset overrides, validated.
    pub config: Config,
    /// Which preset dimensions were overridden (flag name, value), for printing.
    pub overrides: Vec<(&'static str, usize)>,
    pub data: DataSpec,
    /// Optimizer steps of the whole run (the schedule's length).
    pub steps: usize,
    /// Stop this invocation after this many steps (the schedule still spans `steps`).
    pub stop_after: Option<usize>,
    /// Per-device micro-batch B.
    pub batch: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Global grad-norm clip; 0 turns clipping off.
    pub clip: f64,
    pub seed: u64,
    pub device: DeviceChoice,
    pub attention: Attention,
    /// Flash attention's dQ summation; atomic is faster on GPUs and not bitwise
    /// reproducible run to run.
    pub attention_dq: AttentionDq,
    pub mem_target: Option<f64>,
    pub out: PathBuf,
    pub resume: Option<Resume>,
    pub metrics: Option<PathBuf>,
    pub dry_run: bool,
    pub price_per_gpu_hour: Option<f64>,
    pub price_per_core_hour: Option<f64>,
    pub price_units: PriceUnits,
    /// Inclusive step window for profiler capture.
    pub profile_steps: Option<(usize, usize)>,
    pub comm: CommBackend,
    pub job_token: Option<String>,
    /// DDP bucket size in bytes: finished gradients are all-reduced in
    /// buckets of about this size while backward continues.
    pub bucket_bytes: usize,
    /// CPU worker threads.
    pub threads: usize,
    /// Checkpoints kept in `out`.
    pub keep: usize,
    /// Validate every N steps (0 = only at the end).
    pub val_every: usize,
    pub val_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub ckpt_every: usize,
}

/// `frugal train --help`.
pub fn help_text() -> String {
    let threads = default_threads();
    format!(
        "\
usage: frugal train [flags]

Trains a LLaMA-style model and reports throughput and cost per step.
With no flags: the '{DEFAULT_MODEL}' preset on the embedded corpus, on the CPU.

model:
  --model NAME            preset: {presets} (default {DEFAULT_MODEL})
  --layers L              override the preset's layer count
  --hidden C              override the hidden size
  --heads NH              override the query head count (C must divide by NH)
  --kv-heads NKV          override the key/value head count (must divide NH; default NH)
  --ffn F                 override the SwiGLU width
  --vocab V               override the vocabulary size (at most 65536)
  --seq T                 override the sequence length
data:
  --data default|FILE|GLOB  training data: the embedded corpus, llm.c shards or text (default: default)
optimisation:
  --steps N               optimizer steps of the whole run (default {DEFAULT_STEPS})
  --stop-after N          stop this invocation after N more steps; the schedule still spans --steps
  --batch B               micro-batch per device (default: the preset's)
  --grad-accum K          micro-batches per optimizer step (default 1)
  --lr X                  peak learning rate (default {DEFAULT_LR})
  --min-lr X              final learning rate of the cosine decay (default lr/10)
  --warmup N              linear warm-up steps (default steps/10, at most 100)
  --weight-decay X        AdamW decoupled weight decay on matrices (default {DEFAULT_WEIGHT_DECAY})
  --clip X                clip the global gradient norm to X; 0 = off (default {DEFAULT_CLIP})
  --seed S                seed for weights and data order (default {DEFAULT_SEED})
device:
  --device auto|cpu|cuda[:N]|emu  where to train (default auto: a CUDA GPU when one
                          opens, else the CPU; plain 'cuda' in a multi-rank job is the
                          rank's LOCAL_RANK; emu = the GPU step run by the PTX emulator,
                          slow and with emulated timings, for tests)
  --threads N             CPU worker threads (default {threads}, the cores available)
  --attention flash|vanilla  attention kernel on GPUs and emu (default flash; the CPU
                          has one path and ignores it)
  --attention-dq deterministic|atomic  flash attention backward's dQ (default
                          deterministic); atomic sums dQ with float atomics: faster on
                          GPUs and NOT bitwise reproducible run to run (flash only)
  --mem-target F          GPU/emu: use the largest micro-batch (up to {max_target_batch}) whose
                          memory plan fits in F of free device memory, 0 < F <= 1
                          (replaces --batch; the CPU ignores it)
  --profile-steps A:B     CUDA: wrap steps A..=B in cuProfilerStart/Stop for Nsight
                          (nsys --capture-range=cudaProfilerApi); nothing to capture on cpu/emu
  --comm socket|nccl      all-reduce backend for multi-rank runs (default socket); on
                          GPUs both stage gradients through host memory for now
                          (device -> host, all-reduce, host -> device)
  --job-token T           shared secret of a multi-rank job
  --bucket-mb X           DDP gradient bucket size in MiB (default: 25, or 1/8 of the
                          gradients when that is smaller, at least 1)
checkpoints and output:
  --out DIR               run folder: checkpoints, run.json, a lock held while training
                          (default runs/<model>-seed<S>, with a config hash if overridden)
  --ckpt-every N          checkpoint every N steps; 0 = only at the end (default steps/4);
                          written in the background; SIGINT/SIGTERM also save and stop
  --keep K                this run's checkpoints kept in --out (default {DEFAULT_KEEP}); other
                          runs' are moved to --out/replaced/, never deleted
  --resume auto|PATH      continue this run from its newest verifying checkpoint in --out
                          (the run named by --out/run.json), or from PATH
  --metrics FILE          write one JSON object per line: steps, val losses, a summary
  --val-every N           validation loss every N steps; 0 = only at the end (default steps/5)
  --val-batches N         batches per validation (default {DEFAULT_VAL_BATCHES})
  --dry-run               print config, parameter count, FLOPs per token and memory
                          (on a GPU or emu: the arena plan by category); do not train
cost:
  --price-per-gpu-hour X  price of one device-hour (also env FRUGAL_PRICE_PER_GPU_HOUR)
  --price-units usd|paper usd (default) or the paper's relative units (A100-40GB = 1.00)
  --price-per-core-hour X price of one CPU core-hour when training on the CPU (default {cpu_price})
",
        presets = frugal_model::config::PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join("|"),
        cpu_price = crate::train::cost::DEFAULT_PRICE_PER_CORE_HOUR,
        max_target_batch = MEM_TARGET_MAX_BATCH,
    )
}

/// The number of cores this process may use, 1 when unknown.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn usage(msg: String) -> UsageError {
    UsageError(format!("train: {msg}"))
}

fn positive(name: &str, v: usize) -> Result<usize, UsageError> {
    if v == 0 {
        return Err(usage(format!("--{name} must be at least 1")));
    }
    Ok(v)
}

fn finite_nonneg(name: &str, v: f64) -> Result<f64, UsageError> {
    if !v.is_finite() || v < 0.0 {
        return Err(usage(format!(
            "--{name} must be a finite number >= 0 (got {v})"
        )));
    }
    Ok(v)
}

/// Parses `cuda`, `cuda:N`, `cpu`, `emu`, `auto`.
/// The DDP bucket size when `--bucket-mb` is not given: 25 MiB (PyTorch DDP's default),
/// but at most an eighth of the f32 gradients (at least 1 MiB), so that a small model's
/// gradients still fill several buckets and their all-reduce overlaps backward instead of
/// waiting for the whole vector at the end of it.
pub fn default_bucket_bytes(params: usize) -> usize {
    const MIB: usize = 1024 * 1024;
    (params * 4 / 8).clamp(MIB, 25 * MIB)
}

pub fn parse_device(s: &str) -> Result<DeviceChoice, UsageError> {
    match s {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "emu" => Ok(DeviceChoice::Emu),
        "cuda" => Ok(DeviceChoice::Cuda(None)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceChoice::Cuda(Some(n))),
            _ => Err(usage(format!(
                "--device '{other}' is not one of auto, cpu, cuda, cuda:N, emu"
            ))),
        },
    }
}

/// Parses `A:B` with A <= B.
pub fn parse_profile_steps(s: &str) -> Result<(usize, usize), UsageError> {
    let bad = || {
        usage(format!(
            "--profile-steps '{s}' must be A:B with step numbers A <= B, e.g. 10:20"
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// FNV-1a over the config's dimensions: a short stable name for an overridden model.
fn config_hash(cfg: &Config) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for v in [
        cfg.vocab_size,
        cfg.dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.ffn_dim,
        cfg.seq_len,
    ] {
        for b in (v as u64).to_le_bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

impl TrainOptions {
    /// The device step's attention options (`--attention`, `--attention-dq`).
    pub fn step_options(&self) -> frugal_model::device::StepOptions {
        frugal_model::device::StepOptions {
            attention: self.attention,
            dq: self.attention_dq,
        }
    }

    /// Takes every `train` flag from `args` and checks it. Unknown flags are left
    /// in `args` for [`Args::finish`] to report.
    ///
    /// # Errors
    /// A [`UsageError`] naming the flag and what would be accepted.
    pub fn parse(args: &mut Args) -> Result<TrainOptions, UsageError> {
        let model: String = args
            .string("model")?
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let preset = Preset::by_name(&model).map_err(|e| usage(e.to_string()))?;
        let mut config = preset.config();
        let mut overrides = Vec::new();
        let mut take_dim =
            |args: &mut Args, name: &'static str| -> Result<Option<usize>, UsageError> {
                let v: Option<usize> = args.value(name)?;
                if let Some(v) = v {
                    overrides.push((name, positive(name, v)?));
                }
                Ok(v)
            };
        let layers = take_dim(args, "layers")?;
        let hidden = take_dim(args, "hidden")?;
        let heads = take_dim(args, "heads")?;
        let kv_heads = take_dim(args, "kv-heads")?;
        let ffn = take_dim(args, "ffn")?;
        let vocab = take_dim(args, "vocab")?;
        let seq = take_dim(args, "seq")?;
        if let Some(v) = layers {
            config.n_layers = v;
        }
        if let Some(v) = hidden {
            config.dim = v;
        }
        if let Some(v) = heads {
            config.n_heads = v;
            // A preset is multi-head; overriding the head count keeps it so
            // unless --kv-heads asks for grouped-query attention.
            config.n_kv_heads = v;
        }
        if let Some(v) = kv_heads {
            config.n_kv_heads = v;
        }
        if let Some(v) = ffn {
            config.ffn_dim = v;
        }
        if let Some(v) = vocab {
            config.vocab_size = v;
        }
        if let Some(v) = seq {
            config.seq_len = v;
        }
        config.validate().map_err(|e| usage(e.to_string()))?;
        for (name, v) in [
            ("layers", config.n_layers),
            ("hidden", config.dim),
            ("heads", config.n_heads),
            ("ffn", config.ffn_dim),
            ("seq", config.seq_len),
        ] {
            if v > MAX_DIM {
                return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
            }
        }

        // Paths are taken as the OS gives them: a file name need not be UTF-8.
        let data = match args.path("data")? {
            None => DataSpec::Default,
            Some(p) => DataSpec::from_os(p.as_os_str()).map_err(|e| usage(e.to_string()))?,
        };

        let steps = positive("steps", args.value_or("steps", DEFAULT_STEPS)?)?;
        let stop_after = match args.value::<usize>("stop-after")? {
            None => None,
            Some(n) => Some(positive("stop-after", n)?),
        };
        let batch = positive("batch", args.value_or("batch", preset.default_batch)?)?;
        let grad_accum = positive("grad-accum", args.value_or("grad-accum", 1)?)?;
        for (name, v) in [("batch", batch), ("grad-accum", grad_accum)] {
            if v > MAX_DIM {
                return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
            }
        }
        let rough = rough_bytes(&config, batch);
        if rough > MAX_ROUGH_BYTES {
            return Err(usage(format!(
                "this model at --batch {batch} would need about {:.0} TiB; lower --batch, --seq or the model size",
                rough as f64 / (1u128 << 40) as f64
            )));
        }
        let lr = finite_nonneg("lr", args.value_or("lr", DEFAULT_LR)?)?;
        if lr == 0.0 {
            return Err(usage("--lr must be above 0".into()));
        }
        let min_lr = finite_nonneg("min-lr", args.value_or("min-lr", lr / 10.0)?)?;
        if min_lr > lr {
            return Err(usage(format!(
                "--min-lr {min_lr} is above --lr {lr}; the schedule only decays"
            )));
        }
        let warmup = args.value_or("warmup", (steps / 10).min(100))?;
        if warmup > steps {
            return Err(usage(format!(
                "--warmup {warmup} is longer than --steps {steps}"
            )));
        }
        let weight_decay = finite_nonneg(
            "weight-decay",
            args.value_or("weight-decay", DEFAULT_WEIGHT_DECAY)?,
        )?;
        let clip = finite_nonneg("clip", args.value_or("clip", DEFAULT_CLIP)?)?;
        let seed: u64 = args.value_or("seed", DEFAULT_SEED)?;

        let device = match args.string("device")? {
            None => DeviceChoice::Auto,
            Some(s) => parse_device(&s)?,
        };
        let attention = match args.string("attention")?.as_deref() {
            None | Some("flash") => Attention::Flash,
            Some("vanilla") => Attention::Vanilla,
            Some(other) => {
                return Err(usage(format!(
                    "--attention '{other}' is not one of flash, vanilla"
                )))
            }
        };
        let attention_dq = parse_attention_dq(args.string("attention-dq")?.as_deref())?;
        if attention == Attention::Vanilla && attention_dq == AttentionDq::Atomic {
            return Err(usage(
                "--attention-dq atomic needs --attention flash (vanilla attention's dQ is a \
                 plain matmul, with no atomic variant)"
                    .to_string(),
            ));
        }
        let mem_target = match args.value::<f64>("mem-target")? {
            None => None,
            Some(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Some(f),
            Some(f) => {
                return Err(usage(format!(
                    "--mem-target {f} must be a fraction in (0, 1], e.g. 0.8"
                )))
            }
        };
        let profile_steps = match args.string("profile-steps")? {
            None => None,
            Some(s) => Some(parse_profile_steps(&s)?),
        };
        if let Some((_, b)) = profile_steps {
            if b > steps {
                return Err(usage(format!(
                    "--profile-steps window ends at step {b}, after the last step {steps}"
                )));
            }
        }
        let comm = match args.string("comm")?.as_deref() {
            None | Some("socket") => CommBackend::Socket,
            Some("nccl") => CommBackend::Nccl,
            Some(other) => {
                return Err(usage(format!(
                    "--comm '{other}' is not one of socket, nccl"
                )))
            }
        };
        let job_token = args.string("job-token")?;
        let bucket_bytes = match args.value::<f64>("bucket-mb")? {
            Some(mb) if !(mb.is_finite() && mb > 0.0 && mb <= 4096.0) => {
                return Err(usage(format!(
                    "--bucket-mb {mb} must be a size in MiB between 0 and 4096 (e.g. 25)"
                )))
            }
            // At least one f32 per bucket.
            Some(mb) => ((mb * 1024.0 * 1024.0) as usize).max(4),
            None => default_bucket_bytes(config.param_count()),
        };

        let resume = match args.path("resume")? {
            None => None,
            Some(p) if p.as_os_str() == "auto" => Some(Resume::Auto),
            Some(p) if p.as_os_str().is_empty() => {
                return Err(usage("--resume needs 'auto' or a checkpoint path".into()))
            }
            Some(p) => Some(Resume::Path(p)),
        };
        let metrics = match args.path("metrics")? {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(usage("--metrics needs a file name".into()))
            }
            other => other,
        };
        let dry_run = args.switch("dry-run")?;

        let price_per_gpu_hour = match args.value::<f64>("price-per-gpu-hour")? {
            None => None,
            Some(p) => Some(finite_nonneg("price-per-gpu-hour", p)?),
        };
        let price_per_core_hour = match args.value::<f64>("price-per-core-hour")? {
            None => None,
            Some(p) => Some(finite_nonneg("price-per-core-hour", p)?),
        };
        let price_units = match args.string("price-units")?.as_deref() {
            None | Some("usd") => PriceUnits::Usd,
            Some("paper") => PriceUnits::Paper,
            Some(other) => {
                return Err(usage(format!(
                    "--price-units '{other}' is not one of usd, paper"
                )))
            }
        };

        let threads = positive("threads", args.value_or("threads", default_threads())?)?;
        if threads > MAX_THREADS {
            return Err(usage(format!(
                "--threads {threads} is more than {MAX_THREADS}"
            )));
        }
        let keep = positive("keep", args.value_or("keep", DEFAULT_KEEP)?)?;
        let val_every = args.value_or("val-every", (steps / 5).max(1))?;
        let val_batches = positive(
            "val-batches",
            args.value_or("val-batches", DEFAULT_VAL_BATCHES)?,
        )?;
        let ckpt_every = args.value_or("ckpt-every", (steps / 4).max(1))?;

        let out = match args.path("out")? {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(usage("--out needs a folder".into()))
            }
            Some(p) => p,
            None if overrides.is_empty() => PathBuf::from(format!("runs/{model}-seed{seed}")),
            None => PathBuf::from(format!(
                "runs/{model}-{:08x}-seed{seed}",
                config_hash(&config)
            )),
        };

        Ok(TrainOptions {
            model,
            config,
            overrides,
            data,
            steps,
            stop_after,
            batch,
            grad_accum,
            lr,
            min_lr,
            warmup,
            weight_decay,
            clip,
            seed,
            device,
            attention,
            attention_dq,
            mem_target,
            out,
            resume,
            metrics,
            dry_run,
            price_per_gpu_hour,
            price_per_core_hour,
            price_units,
            profile_steps,
            comm,
            job_token,
            bucket_bytes,
            threads,
            keep,
            val_every,
            val_batches,
            ckpt_every,
        })
    }

    /// Tokens one device processes per optimizer step: B · T · K.
    pub fn tokens_per_step_per_device(&self) -> usize {
        self.batch * self.config.seq_len * self.grad_accum
    }

    /// The resolved configuration, one `key: value` per line.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let over = if self.overrides.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .overrides
                .iter()
                .map(|(n, v)| format!("--{n} {v}"))
                .collect();
            format!(" (overridden: {})", list.join(" "))
        };
        let mut s = String::new();
        s += &format!("model: {}{over}\n", self.model);
        s += &format!(
            "  layers {} hidden {} heads {} kv-heads {} head-size {} ffn {} vocab {} seq {}\n",
            c.n_layers,
            c.dim,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim(),
            c.ffn_dim,
            c.vocab_size,
            c.seq_len
        );
        s += &format!("data: {}\n", self.data);
        s += &format!(
            "steps: {}  batch: {}  grad-accum: {}  tokens/step/device: {}\n",
            self.steps,
            self.batch,
            self.grad_accum,
            self.tokens_per_step_per_device()
        );
        s += &format!(
            "lr: {} -> {} (cosine, warm-up {} steps)  weight-decay: {}  clip: {}  seed: {}\n",
            short(self.lr),
            short(self.min_lr),
            self.warmup,
            short(self.weight_decay),
            if self.clip > 0.0 {
                short(self.clip)
            } else {
                "off".into()
            },
            self.seed
        );
        s += &format!(
            "device: {}  threads: {}  attention: {}  attention-dq: {}\n",
            self.device,
            self.threads,
            self.attention,
            dq_name(self.attention_dq)
        );
        s += &format!(
            "out: {}  ckpt-every: {}  keep: {}  val-every: {}  val-batches: {}\n",
            self.out.display(),
            self.ckpt_every,
            self.keep,
            self.val_every,
            self.val_batches
        );
        s
    }
}

/// A flag value for display: at f32 precision, so that `3e-3 / 10` reads
/// `0.0003` and not `0.00030000000000000003`.
fn short(x: f64) -> String {
    (x as f32).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TrainOptions, UsageError> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        let mut a = Args::parse("train", &words);
        let o = TrainOptions::parse(&mut a)?;
        a.finish()?;
        Ok(o)
    }

    #[test]
    fn defaults_are_the_tiny_preset_on_the_cpu() {
        let o = parse("").unwrap();
        assert_eq!(o.model, DEFAULT_MODEL);
        assert_eq!(o.config, Preset::by_name(DEFAULT_MODEL).unwrap().config());
        assert_eq!(o.device, DeviceChoice::Auto);
        assert_eq!(o.data, DataSpec::Default);
        assert_eq!(
            o.out,
            PathBuf::from(format!("runs/{DEFAULT_MODEL}-seed{DEFAULT_SEED}"))
        );
        assert!(o.min_lr < o.lr);
    }

    #[test]
    fn overrides_change_the_config_and_the_out_folder() {
        let o = parse("--layers 1 --hidden 64 --heads 2 --ffn 96 --seq 32 --vocab 300").unwrap();
        assert_eq!(
            (o.config.n_layers, o.config.dim, o.config.n_heads),
            (1, 64, 2)
        );
        assert_eq!(
            o.config.n_kv_heads, 2,
            "--heads alone keeps multi-head attention"
        );
        assert_eq!(
            (o.config.ffn_dim, o.config.seq_len, o.config.vocab_size),
            (96, 32, 300)
        );
        assert_ne!(o.out, parse("").unwrap().out);
        let g = parse("--hidden 64 --heads 4 --kv-heads 2").unwrap();
        assert_eq!(g.config.n_kv_heads, 2);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            "--model huge",
            "--heads 3",
            "--kv-heads 3",
            "--steps 0",
            "--lr -1",
            "--lr nan",
            "--lr 1e-3 --min-lr 1e-2",
            "--device gpu",
            "--device cuda:x",
            "--attention fast",
            "--attention-dq fast",
            "--attention vanilla --attention-dq atomic",
            "--profile-steps 5",
            "--profile-steps 9:3",
            "--mem-target 1.5",
            "--price-units eur",
            "--price-per-gpu-hour -2",
            "--threads 0",
            "--threads 100000",
            "--batch 100000000",
            "--hidden 4194304 --heads 1",
            "--batch 1000000 --seq 65536",
            "--warmup 1000 --steps 10",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn attention_dq_defaults_to_deterministic_and_takes_atomic() {
        let d = parse("").unwrap();
        assert_eq!(d.attention_dq, AttentionDq::Deterministic);
        assert!(d.describe().contains("attention-dq: deterministic"));
        let a = parse("--attention-dq atomic").unwrap();
        assert_eq!(a.step_options().dq, AttentionDq::Atomic);
        assert!(a.describe().contains("attention-dq: atomic"));
        let msg = parse("--attention-dq fast").err().map(|e| e.to_string());
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("deterministic") && msg.contains("atomic"),
            "{msg}"
        );
    }

    #[test]
    fn devices_and_windows_parse() {
        assert_eq!(parse_device("cuda:3").unwrap(), DeviceChoice::Cuda(Some(3)));
        assert_eq!(parse_device("cuda").unwrap(), DeviceChoice::Cuda(None));
        assert_eq!(DeviceChoice::Cuda(None).to_string(), "cuda");
        assert_eq!(parse_profile_steps("10:20").unwrap(), (10, 20));
        assert_eq!(parse_profile_steps("4:4").unwrap(), (4, 4));
    }
}
