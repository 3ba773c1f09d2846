//! `frugal train`'s flags ([`TrainFlags`], parsed by clap), checked into one
//! [`TrainOptions`] before anything is allocated. Every value from the command
//! line is validated here, so a bad flag is a usage error (exit 2) and never a
//! panic later.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use frugal_comm::{ShardMode, Transport};
use frugal_model::config::{Config, Preset};
use frugal_model::data::DataSpec;
use frugal_model::device::GraphMode;
use frugal_runtime::device::DeviceSpec;

use crate::flags::UsageError;
use crate::flags::{path, text};
use crate::shard_tokens::DataTokens;
use crate::train::cost::{PriceUnits, DEFAULT_PRICE_PER_CORE_HOUR};
pub use crate::train::every::Every;
use crate::train::model_flags::{
    data_vocab, init_from_config, init_from_tokens, overridden, positive, tokens_note, usage,
    DimFlags, Overrides,
};

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
pub use crate::train::model_flags::MAX_DIM;
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

/// Parses `--cuda-graphs` (None: auto).
///
/// # Errors
/// A usage error listing the choices.
pub fn parse_cuda_graphs(value: Option<&str>) -> Result<GraphMode, UsageError> {
    value.map_or(Ok(GraphMode::Auto), |v| v.parse().map_err(usage))
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
    pub overrides: Overrides,
    pub data: DataSpec,
    /// The tokenizer the data's shards record, when they do (`DIR/NAME.tokens.json`).
    pub data_tokens: Option<DataTokens>,
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
    pub device: DeviceSpec,
    pub attention: Attention,
    /// Flash attention's dQ summation; atomic is faster on GPUs and not bitwise
    /// reproducible run to run.
    pub attention_dq: AttentionDq,
    /// `--cuda-graphs`: the step's fixed launches captured once and replayed.
    pub cuda_graphs: GraphMode,
    pub mem_target: Option<f64>,
    pub out: PathBuf,
    pub resume: Option<Resume>,
    /// `--init-from`: the Hugging Face folder a fresh run takes its weights (and
    /// dimensions) from.
    pub init_from: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
    pub dry_run: bool,
    pub price_per_gpu_hour: Option<f64>,
    pub price_per_core_hour: Option<f64>,
    pub price_units: PriceUnits,
    /// Inclusive step window for profiler capture.
    pub profile_steps: Option<(usize, usize)>,
    pub comm: Transport,
    /// How model state is sharded over the ranks (`none` = DDP).
    pub shard: ShardMode,
    /// `--world N`: the number of ranks a `--dry-run` plans for (without a launch).
    pub plan_world: Option<usize>,
    pub job_token: Option<String>,
    /// `--comm-timeout`: the rendezvous and collective timeout, when given
    /// (else FRUGAL_COMM_TIMEOUT, else 60 s).
    pub comm_timeout: Option<std::time::Duration>,
    /// DDP bucket size in bytes: finished gradients are all-reduced in
    /// buckets of about this size while backward continues.
    pub bucket_bytes: usize,
    /// `--bucket-dtype bf16`: the device path's gradient collectives carry bf16.
    pub bf16_buckets: bool,
    /// CPU worker threads.
    pub threads: usize,
    /// Checkpoints kept in `out`.
    pub keep: usize,
    /// When to validate (`--val-every N|0|never`).
    pub val_every: Every,
    pub val_batches: usize,
    /// When to checkpoint (`--ckpt-every N|0|never`).
    pub ckpt_every: Every,
}

/// `frugal train`'s flags, as given; [`TrainOptions::from_flags`] checks them
/// and fills in the defaults that depend on other flags.
#[derive(Debug, Clone, Default, clap::Args)]
// A negative number such as `--lr -1` is a value, refused by the checks below
// with the flag named, not an unknown flag.
#[command(allow_negative_numbers = true)]
pub struct TrainFlags {
    #[arg(long, value_name = "NAME", value_parser = text::<String>(), help_heading = "model",
          help = format!("preset: {} (default {DEFAULT_MODEL})", preset_names()))]
    pub model: Option<String>,
    /// override the preset's layer count
    #[arg(long, value_name = "L", value_parser = text::<usize>(), help_heading = "model")]
    pub layers: Option<usize>,
    /// override the hidden size
    #[arg(long, value_name = "C", value_parser = text::<usize>(), help_heading = "model")]
    pub hidden: Option<usize>,
    /// override the query head count (C must divide by NH)
    #[arg(long, value_name = "NH", value_parser = text::<usize>(), help_heading = "model")]
    pub heads: Option<usize>,
    /// override the key/value head count (must divide NH; default NH)
    #[arg(long, value_name = "NKV", value_parser = text::<usize>(), help_heading = "model")]
    pub kv_heads: Option<usize>,
    /// override the SwiGLU width
    #[arg(long, value_name = "F", value_parser = text::<usize>(), help_heading = "model")]
    pub ffn: Option<usize>,
    /// override the vocabulary size (default: the preset's, or the data's tokenizer's)
    #[arg(long, value_name = "V", value_parser = text::<usize>(), help_heading = "model")]
    pub vocab: Option<usize>,
    /// override the sequence length
    #[arg(long, value_name = "T", value_parser = text::<usize>(), help_heading = "model")]
    pub seq: Option<usize>,
    /// start from a Hugging Face LlamaForCausalLM folder (config.json and safetensors,
    /// e.g. from frugal export): its dimensions replace the preset's, its weights the
    /// random init; the optimizer starts afresh. --seq may shorten the context
    #[arg(long, value_name = "DIR", value_parser = path(), help_heading = "model")]
    pub init_from: Option<PathBuf>,

    /// training data: the embedded corpus, llm.c shards or text (default: default)
    // Paths are taken as the OS gives them: a file name need not be UTF-8.
    #[arg(long, value_name = "default|FILE|GLOB", value_parser = path(), help_heading = "data")]
    pub data: Option<PathBuf>,

    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "optimisation",
          help = format!("optimizer steps of the whole run (default {DEFAULT_STEPS})"))]
    pub steps: Option<usize>,
    /// stop this invocation after N more steps; the schedule still spans --steps
    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "optimisation")]
    pub stop_after: Option<usize>,
    /// micro-batch per device (default: the preset's)
    #[arg(long, value_name = "B", value_parser = text::<usize>(), help_heading = "optimisation")]
    pub batch: Option<usize>,
    /// micro-batches per optimizer step (default 1)
    #[arg(long, value_name = "K", value_parser = text::<usize>(), help_heading = "optimisation")]
    pub grad_accum: Option<usize>,
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "optimisation",
          help = format!("peak learning rate (default {DEFAULT_LR})"))]
    pub lr: Option<f64>,
    /// final learning rate of the cosine decay (default lr/10)
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "optimisation")]
    pub min_lr: Option<f64>,
    /// linear warm-up steps (default steps/10, at most 100)
    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "optimisation")]
    pub warmup: Option<usize>,
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "optimisation",
          help = format!("AdamW decoupled weight decay on matrices (default {DEFAULT_WEIGHT_DECAY})"))]
    pub weight_decay: Option<f64>,
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "optimisation",
          help = format!("clip the global gradient norm to X; 0 = off (default {DEFAULT_CLIP})"))]
    pub clip: Option<f64>,
    #[arg(long, value_name = "S", value_parser = text::<u64>(), help_heading = "optimisation",
          help = format!("seed for weights and data order (default {DEFAULT_SEED})"))]
    pub seed: Option<u64>,

    /// where to train (default auto: a CUDA GPU when one opens, else the CPU;
    /// plain 'cuda' in a multi-rank job is the rank's LOCAL_RANK; emu = the GPU
    /// step run by the PTX emulator, slow and with emulated timings, for tests)
    #[arg(long, value_name = "auto|cpu|cuda[:N]|emu", value_parser = text::<String>(), help_heading = "device")]
    pub device: Option<String>,
    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "device",
          help = format!("CPU worker threads (default {}, the cores available)", default_threads()))]
    pub threads: Option<usize>,
    /// attention kernel on GPUs and emu (default flash; the CPU has one path and ignores it)
    #[arg(long, value_name = "flash|vanilla", value_parser = text::<String>(), help_heading = "device")]
    pub attention: Option<String>,
    /// flash attention backward's dQ (default deterministic); atomic sums dQ
    /// with float atomics: faster on GPUs and NOT bitwise reproducible run to
    /// run (flash only)
    #[arg(long, value_name = "deterministic|atomic", value_parser = text::<String>(), help_heading = "device")]
    pub attention_dq: Option<String>,
    /// GPU step: capture the step's fixed launches once and replay them as CUDA graphs
    /// (on), or launch each kernel (off); auto (default): on for cuda when capture works
    /// (a failure is logged and the run goes on with launches), off on emu
    #[arg(long, value_name = "off|on|auto", value_parser = text::<String>(), help_heading = "device")]
    pub cuda_graphs: Option<String>,
    #[arg(long, value_name = "F", value_parser = text::<f64>(), help_heading = "device",
          help = format!("GPU/emu: use the largest micro-batch (up to {MEM_TARGET_MAX_BATCH}) whose \
                          memory plan fits in F of free device memory, 0 < F <= 1 \
                          (replaces --batch; the CPU ignores it)"))]
    pub mem_target: Option<f64>,
    /// CUDA: wrap steps A..=B in cuProfilerStart/Stop for Nsight
    /// (nsys --capture-range=cudaProfilerApi); nothing to capture on cpu/emu
    #[arg(long, value_name = "A:B", value_parser = text::<String>(), help_heading = "device")]
    pub profile_steps: Option<String>,
    /// all-reduce backend for multi-rank runs (default socket); on cuda, nccl
    /// averages gradients in place on the GPU's comm stream while backward
    /// runs (grad-op|full: reduce-scatters them and gathers the weights
    /// there too); socket stages them through host memory
    /// (FRUGAL_DEVICE_COLLECTIVE=1 forces the in-place path on --device emu,
    /// for testing)
    #[arg(long, value_name = "socket|nccl", value_parser = CommParser, help_heading = "device")]
    pub comm: Option<Transport>,
    /// how ranks share model state (default none = DDP): grad-op shards
    /// gradients, master weights and AdamW moments (ZeRO-2); full shards the
    /// weights too, gathered layer by layer (ZeRO-3)
    #[arg(long, value_name = "none|grad-op|full", value_parser = text::<String>(), help_heading = "device")]
    pub shard: Option<String>,
    /// with --dry-run: plan the memory of one rank of an N-rank job (without
    /// launching one; a launched job takes WORLD_SIZE)
    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "device")]
    pub world: Option<usize>,
    /// shared secret of a multi-rank job
    #[arg(long, value_name = "T", value_parser = text::<String>(), help_heading = "device")]
    pub job_token: Option<String>,
    /// seconds a rank waits for the others (joining the job, and for no
    /// progress in any collective) before it fails naming the silent rank;
    /// wins over FRUGAL_COMM_TIMEOUT (default 60)
    #[arg(long, value_name = "SECONDS", value_parser = text::<String>(), help_heading = "device")]
    pub comm_timeout: Option<String>,
    /// DDP gradient bucket size in MiB (default: 25, or 1/8 of the gradients
    /// when that is smaller, at least 1)
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "device")]
    pub bucket_mb: Option<f64>,
    /// what gradients travel in between ranks averaged on the device (default
    /// f32): bf16 rounds each rank's values to bf16 and the average once more,
    /// the same bits on every rank (with --comm nccl: NCCL's bf16 sums, half
    /// the bytes); needs the device path (--comm nccl on cuda, or
    /// FRUGAL_DEVICE_COLLECTIVE=1 on emu)
    #[arg(long, value_name = "f32|bf16", value_parser = text::<String>(), help_heading = "device")]
    pub bucket_dtype: Option<String>,

    /// run folder: checkpoints, run.json, a lock held while training
    /// (default runs/<model>-seed<S>, with a config hash if overridden)
    #[arg(long, value_name = "DIR", value_parser = path(), help_heading = "checkpoints and output")]
    pub out: Option<PathBuf>,
    /// checkpoint every N steps; 0 = only at the end (default steps/4); written
    /// in the background; SIGINT/SIGTERM also save and stop. never = no
    /// checkpoint at all (a signal then stops without saving)
    #[arg(long, value_name = "N|never", value_parser = text::<Every>(), help_heading = "checkpoints and output")]
    pub ckpt_every: Option<Every>,
    #[arg(long, value_name = "K", value_parser = text::<usize>(), help_heading = "checkpoints and output",
          help = format!("this run's checkpoints kept in --out (default {DEFAULT_KEEP}); other \
                          runs' are moved to --out/replaced/, never deleted"))]
    pub keep: Option<usize>,
    /// continue this run from its newest verifying checkpoint in --out (the run
    /// named by --out/run.json), or from PATH
    #[arg(long, value_name = "auto|PATH", value_parser = path(), help_heading = "checkpoints and output")]
    pub resume: Option<PathBuf>,
    /// write one JSON object per line: steps, val losses, a summary
    #[arg(long, value_name = "FILE", value_parser = path(), help_heading = "checkpoints and output")]
    pub metrics: Option<PathBuf>,
    /// validation loss every N steps; 0 = only at the end (default steps/5);
    /// never = no validation at all
    #[arg(long, value_name = "N|never", value_parser = text::<Every>(), help_heading = "checkpoints and output")]
    pub val_every: Option<Every>,
    #[arg(long, value_name = "N", value_parser = text::<usize>(), help_heading = "checkpoints and output",
          help = format!("batches per validation (default {DEFAULT_VAL_BATCHES})"))]
    pub val_batches: Option<usize>,
    /// print config, parameter count, FLOPs per token and memory (on a GPU or
    /// emu: the arena plan by category); do not train
    #[arg(long, help_heading = "checkpoints and output")]
    pub dry_run: bool,

    /// price of one device-hour (also env FRUGAL_PRICE_PER_GPU_HOUR)
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "cost")]
    pub price_per_gpu_hour: Option<f64>,
    /// usd (default) or the paper's relative units (A100-40GB = 1.00)
    #[arg(long, value_name = "usd|paper", value_parser = text::<String>(), help_heading = "cost")]
    pub price_units: Option<String>,
    #[arg(long, value_name = "X", value_parser = text::<f64>(), help_heading = "cost",
          help = format!("price of one CPU core-hour when training on the CPU (default {DEFAULT_PRICE_PER_CORE_HOUR})"))]
    pub price_per_core_hour: Option<f64>,
}

/// What `frugal train --help` says first.
pub fn about() -> String {
    format!(
        "Trains a LLaMA-style model and reports throughput and cost per step.\n\
         With no flags: the '{DEFAULT_MODEL}' preset on the embedded corpus, on the CPU."
    )
}

/// The preset names, as `--model` lists them.
fn preset_names() -> String {
    frugal_model::config::PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join("|")
}

/// The number of cores this process may use, 1 when unknown.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn finite_nonneg(name: &str, v: f64) -> Result<f64, UsageError> {
    if !v.is_finite() || v < 0.0 {
        return Err(usage(format!(
            "--{name} must be a finite number >= 0 (got {v})"
        )));
    }
    Ok(v)
}

/// The DDP bucket size when `--bucket-mb` is not given: 25 MiB (PyTorch DDP's default),
/// but at most an eighth of the f32 gradients (at least 1 MiB), so that a small model's
/// gradients still fill several buckets and their all-reduce overlaps backward instead of
/// waiting for the whole vector at the end of it.
pub fn default_bucket_bytes(params: usize) -> usize {
    const MIB: usize = 1024 * 1024;
    (params * 4 / 8).clamp(MIB, 25 * MIB)
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
            // One rank's view of --shard needs the job's size: train::target::step_options.
            sharding: Default::default(),
        }
    }

    /// Checks every `train` flag and fills in the defaults.
    ///
    /// # Errors
    /// A [`UsageError`] naming the flag and what would be accepted.
    pub fn from_flags(flags: TrainFlags) -> Result<TrainOptions, UsageError> {
        let mut args = flags;
        let model_named = args.model.is_some();
        let model: String = args
            .model
            .take()
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let preset = Preset::by_name(&model).map_err(|e| usage(e.to_string()))?;
        let dims = DimFlags {
            layers: args.layers,
            hidden: args.hidden,
            heads: args.heads,
            kv_heads: args.kv_heads,
            ffn: args.ffn,
            vocab: args.vocab,
            seq: args.seq,
        };
        let (mut config, mut overrides) = match &args.init_from {
            Some(dir) => init_from_config(dir, &dims)?,
            None => overridden(preset.config(), &dims)?,
        };

        let data = match args.data.take() {
            None => DataSpec::Default,
            Some(p) => DataSpec::from_os(p.as_os_str()).map_err(|e| usage(e.to_string()))?,
        };
        let data_tokens = match &args.init_from {
            Some(dir) => init_from_tokens(&data, dir, &config)?,
            None => data_vocab(
                &data,
                &dims,
                model_named.then_some(model.as_str()),
                &mut config,
                &mut overrides,
            )?,
        };

        let steps = positive("steps", args.steps.unwrap_or(DEFAULT_STEPS))?;
        let stop_after = match args.stop_after {
            None => None,
            Some(n) => Some(positive("stop-after", n)?),
        };
        let (batch, grad_accum) = batch_flags(&args, preset.default_batch, &config)?;
        let Schedule {
            lr,
            min_lr,
            warmup,
            weight_decay,
            clip,
        } = schedule_flags(&args, steps)?;
        let seed: u64 = args.seed.unwrap_or(DEFAULT_SEED);
        let device = device_flag(&args)?;
        let (attention, attention_dq) = attention_flags(&args)?;
        let cuda_graphs = parse_cuda_graphs(args.cuda_graphs.as_deref())?;
        let mem_target = mem_target_flag(&args)?;
        let profile_steps = profile_steps_flag(&args, steps)?;
        let (comm, bucket_bytes) = comm_flags(&args, config.param_count())?;
        let bf16_buckets = match args.bucket_dtype.as_deref() {
            None | Some("f32") => false,
            Some("bf16") => true,
            Some(other) => {
                return Err(usage(format!(
                    "--bucket-dtype '{other}' is not one of f32, bf16"
                )))
            }
        };
        let (shard, plan_world) = shard_flags(&args)?;
        let job_token = args.job_token.clone();
        let comm_timeout = match args.comm_timeout.as_deref() {
            None => None,
            Some(t) => Some(
                frugal_comm::rendezvous::parse_timeout(t)
                    .map_err(|e| usage(format!("--comm-timeout: {e}")))?,
            ),
        };

        let (resume, metrics) = resume_and_metrics(&mut args)?;
        let init_from = args.init_from.take();
        if init_from.is_some() && resume.is_some() {
            return Err(usage(
                "--init-from starts a new run from a Hugging Face folder and --resume continues \
                 a run: give one of them"
                    .into(),
            ));
        }
        let dry_run = args.dry_run;
        let (price_per_gpu_hour, price_per_core_hour, price_units) = price_flags(&args)?;

        let threads = positive("threads", args.threads.unwrap_or_else(default_threads))?;
        if threads > MAX_THREADS {
            return Err(usage(format!(
                "--threads {threads} is more than {MAX_THREADS}"
            )));
        }
        let keep = positive("keep", args.keep.unwrap_or(DEFAULT_KEEP))?;
        let val_every = args.val_every.unwrap_or(Every::Steps((steps / 5).max(1)));
        let val_batches = positive(
            "val-batches",
            args.val_batches.unwrap_or(DEFAULT_VAL_BATCHES),
        )?;
        let ckpt_every = args.ckpt_every.unwrap_or(Every::Steps((steps / 4).max(1)));

        let out = out_flag(&mut args, &model, seed, &overrides, &config)?;

        Ok(TrainOptions {
            model,
            config,
            overrides,
            data,
            data_tokens,
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
            cuda_graphs,
            mem_target,
            out,
            resume,
            init_from,
            metrics,
            dry_run,
            price_per_gpu_hour,
            price_per_core_hour,
            price_units,
            profile_steps,
            comm,
            shard,
            plan_world,
            job_token,
            comm_timeout,
            bucket_bytes,
            bf16_buckets,
            threads,
            keep,
            val_every,
            val_batches,
            ckpt_every,
        })
    }

    /// `frugal train` with the words of `s`, parsed as the command line
    /// parses them (tests); the message of a usage error.
    #[cfg(test)]
    pub fn from_words(s: &str) -> Result<TrainOptions, String> {
        use clap::Parser;
        /// `train`'s flags alone, as a command of their own.
        #[derive(clap::Parser)]
        #[command(name = "train")]
        struct TrainWords {
            #[command(flatten)]
            flags: TrainFlags,
        }
        let words = ["train"].into_iter().chain(s.split_whitespace());
        let parsed = TrainWords::try_parse_from(words).map_err(|e| e.to_string())?;
        TrainOptions::from_flags(parsed.flags).map_err(|e| e.0)
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
        if let Some(dir) = &self.init_from {
            s += &format!("  weights from {} (--init-from)\n", dir.display());
        }
        s += &format!(
            "data: {}{}\n",
            self.data,
            tokens_note(self.data_tokens.as_ref())
        );
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
            "shard: {}{}\n",
            self.shard,
            self.plan_world
                .map_or_else(String::new, |w| format!("  world (planned): {w}"))
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

/// `--batch` (default: the preset's `default_batch`) and `--grad-accum`,
/// checked against what the model `config` would need.
fn batch_flags(
    flags: &TrainFlags,
    default_batch: usize,
    config: &Config,
) -> Result<(usize, usize), UsageError> {
    let batch = positive("batch", flags.batch.unwrap_or(default_batch))?;
    let grad_accum = positive("grad-accum", flags.grad_accum.unwrap_or(1))?;
    for (name, v) in [("batch", batch), ("grad-accum", grad_accum)] {
        if v > MAX_DIM {
            return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
        }
    }
    let rough = rough_bytes(config, batch);
    if rough > MAX_ROUGH_BYTES {
        return Err(usage(format!(
            "this model at --batch {batch} would need about {:.0} TiB; lower --batch, --seq or the model size",
            rough as f64 / (1u128 << 40) as f64
        )));
    }
    Ok((batch, grad_accum))
}

/// The optimisation flags after `--steps`, checked against it.
struct Schedule {
    lr: f64,
    min_lr: f64,
    warmup: usize,
    weight_decay: f64,
    clip: f64,
}

/// `--lr`, `--min-lr`, `--warmup`, `--weight-decay` and `--clip`.
fn schedule_flags(flags: &TrainFlags, steps: usize) -> Result<Schedule, UsageError> {
    let lr = finite_nonneg("lr", flags.lr.unwrap_or(DEFAULT_LR))?;
    if lr == 0.0 {
        return Err(usage("--lr must be above 0".into()));
    }
    let min_lr = finite_nonneg("min-lr", flags.min_lr.unwrap_or(lr / 10.0))?;
    if min_lr > lr {
        return Err(usage(format!(
            "--min-lr {min_lr} is above --lr {lr}; the schedule only decays"
        )));
    }
    let warmup = flags.warmup.unwrap_or((steps / 10).min(100));
    if warmup > steps {
        return Err(usage(format!(
            "--warmup {warmup} is longer than --steps {steps}"
        )));
    }
    let weight_decay = finite_nonneg(
        "weight-decay",
        flags.weight_decay.unwrap_or(DEFAULT_WEIGHT_DECAY),
    )?;
    let clip = finite_nonneg("clip", flags.clip.unwrap_or(DEFAULT_CLIP))?;
    Ok(Schedule {
        lr,
        min_lr,
        warmup,
        weight_decay,
        clip,
    })
}

/// `--device`, `auto` when not given.
fn device_flag(flags: &TrainFlags) -> Result<DeviceSpec, UsageError> {
    match &flags.device {
        None => Ok(DeviceSpec::Auto),
        Some(s) => s.parse::<DeviceSpec>().map_err(|_| {
            usage(format!(
                "--device '{s}' is not one of auto, cpu, cuda, cuda:N, emu"
            ))
        }),
    }
}

/// `--mem-target`, a fraction of free device memory.
fn mem_target_flag(flags: &TrainFlags) -> Result<Option<f64>, UsageError> {
    match flags.mem_target {
        None => Ok(None),
        Some(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(Some(f)),
        Some(f) => Err(usage(format!(
            "--mem-target {f} must be a fraction in (0, 1], e.g. 0.8"
        ))),
    }
}

/// `--profile-steps A:B`, a window that ends by the last of `steps`.
fn profile_steps_flag(
    flags: &TrainFlags,
    steps: usize,
) -> Result<Option<(usize, usize)>, UsageError> {
    let Some(s) = &flags.profile_steps else {
        return Ok(None);
    };
    let (a, b) = parse_profile_steps(s)?;
    if b > steps {
        return Err(usage(format!(
            "--profile-steps window ends at step {b}, after the last step {steps}"
        )));
    }
    Ok(Some((a, b)))
}

/// `--out`, taken from `flags`; by default a folder named after the model
/// (and the config's hash when flags override the preset) and the seed.
fn out_flag(
    flags: &mut TrainFlags,
    model: &str,
    seed: u64,
    overrides: &[(&'static str, usize)],
    config: &Config,
) -> Result<PathBuf, UsageError> {
    Ok(match flags.out.take() {
        Some(p) if p.as_os_str().is_empty() => return Err(usage("--out needs a folder".into())),
        Some(p) => p,
        None if overrides.is_empty() => PathBuf::from(format!("runs/{model}-seed{seed}")),
        None => PathBuf::from(format!(
            "runs/{model}-{:08x}-seed{seed}",
            config_hash(config)
        )),
    })
}

/// `--comm`'s value parser: a [`Transport`] by its name, refused with the
/// names it may be.
#[derive(Clone)]
struct CommParser;

impl TypedValueParser for CommParser {
    type Value = Transport;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Transport, clap::Error> {
        let name = text::<String>().parse_ref(cmd, arg, value)?;
        name.parse().map_err(|_| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "{}: --comm '{name}' is not one of socket, nccl\n",
                    cmd.get_name()
                ),
            )
        })
    }
}

/// `--comm` and `--bucket-mb` (in bytes; the default depends on the model's
/// `params`).
fn comm_flags(flags: &TrainFlags, params: usize) -> Result<(Transport, usize), UsageError> {
    let comm = flags.comm.unwrap_or(Transport::Socket);
    let bucket_bytes = match flags.bucket_mb {
        Some(mb) if !(mb.is_finite() && mb > 0.0 && mb <= 4096.0) => {
            return Err(usage(format!(
                "--bucket-mb {mb} must be a size in MiB between 0 and 4096 (e.g. 25)"
            )))
        }
        // At least one f32 per bucket.
        Some(mb) => ((mb * 1024.0 * 1024.0) as usize).max(4),
        None => default_bucket_bytes(params),
    };
    Ok((comm, bucket_bytes))
}

/// The most ranks `--world` plans for.
pub const MAX_PLAN_WORLD: usize = 65_536;

/// `--shard` and `--world` (planning only: it needs `--dry-run`).
fn shard_flags(flags: &TrainFlags) -> Result<(ShardMode, Option<usize>), UsageError> {
    let shard = match flags.shard.as_deref() {
        None => ShardMode::None,
        Some(name) => name.parse().map_err(|_| {
            usage(format!(
                "--shard '{name}' is not one of none, grad-op, full"
            ))
        })?,
    };
    let world = match flags.world {
        None => None,
        Some(_) if !flags.dry_run => return Err(usage(
            "--world plans a job without launching it and needs --dry-run; to train on N ranks \
                 run frugal launch --nproc N -- train ..."
                .to_string(),
        )),
        Some(n) if n == 0 || n > MAX_PLAN_WORLD => {
            return Err(usage(format!(
                "--world {n} must be between 1 and {MAX_PLAN_WORLD}"
            )))
        }
        Some(n) => Some(n),
    };
    Ok((shard, world))
}

/// `--resume` and `--metrics`, taken from `flags`.
fn resume_and_metrics(
    flags: &mut TrainFlags,
) -> Result<(Option<Resume>, Option<PathBuf>), UsageError> {
    let resume = match flags.resume.take() {
        None => None,
        Some(p) if p.as_os_str() == "auto" => Some(Resume::Auto),
        Some(p) if p.as_os_str().is_empty() => {
            return Err(usage("--resume needs 'auto' or a checkpoint path".into()))
        }
        Some(p) => Some(Resume::Path(p)),
    };
    let metrics = match flags.metrics.take() {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(usage("--metrics needs a file name".into()))
        }
        other => other,
    };
    Ok((resume, metrics))
}

/// `--attention` and `--attention-dq`, checked together.
fn attention_flags(flags: &TrainFlags) -> Result<(Attention, AttentionDq), UsageError> {
    let attention = match flags.attention.as_deref() {
        None | Some("flash") => Attention::Flash,
        Some("vanilla") => Attention::Vanilla,
        Some(other) => {
            return Err(usage(format!(
                "--attention '{other}' is not one of flash, vanilla"
            )))
        }
    };
    let attention_dq = parse_attention_dq(flags.attention_dq.as_deref())?;
    if attention == Attention::Vanilla && attention_dq == AttentionDq::Atomic {
        return Err(usage(
            "--attention-dq atomic needs --attention flash (vanilla attention's dQ is a \
             plain matmul, with no atomic variant)"
                .to_string(),
        ));
    }
    Ok((attention, attention_dq))
}

/// `--price-per-gpu-hour`, `--price-per-core-hour` and `--price-units`.
fn price_flags(flags: &TrainFlags) -> Result<(Option<f64>, Option<f64>, PriceUnits), UsageError> {
    let per_gpu_hour = match flags.price_per_gpu_hour {
        None => None,
        Some(p) => Some(finite_nonneg("price-per-gpu-hour", p)?),
    };
    let per_core_hour = match flags.price_per_core_hour {
        None => None,
        Some(p) => Some(finite_nonneg("price-per-core-hour", p)?),
    };
    let units = match flags.price_units.as_deref() {
        None | Some("usd") => PriceUnits::Usd,
        Some("paper") => PriceUnits::Paper,
        Some(other) => {
            return Err(usage(format!(
                "--price-units '{other}' is not one of usd, paper"
            )))
        }
    };
    Ok((per_gpu_hour, per_core_hour, units))
}

/// A flag value for display: at f32 precision, so that `3e-3 / 10` reads
/// `0.0003` and not `0.00030000000000000003`.
fn short(x: f64) -> String {
    (x as f32).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TrainOptions, String> {
        TrainOptions::from_words(s)
    }

    #[test]
    fn defaults_are_the_tiny_preset_on_the_cpu() {
        let o = parse("").unwrap();
        assert_eq!(o.model, DEFAULT_MODEL);
        assert_eq!(o.config, Preset::by_name(DEFAULT_MODEL).unwrap().config());
        assert_eq!(o.device, DeviceSpec::Auto);
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
            "--seed -1",
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
            "--ckpt-every nevr",
            "--val-every -1",
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
        let msg = parse("--attention-dq fast").err().unwrap_or_default();
        assert!(
            msg.contains("deterministic") && msg.contains("atomic"),
            "{msg}"
        );
    }

    #[test]
    fn ckpt_and_val_every_take_steps_zero_and_never() {
        let d = parse("--steps 20").unwrap();
        assert_eq!(
            (d.ckpt_every, d.val_every),
            (Every::Steps(5), Every::Steps(4))
        );
        let z = parse("--ckpt-every 0 --val-every 0").unwrap();
        assert_eq!((z.ckpt_every, z.val_every), (Every::AtEnd, Every::AtEnd));
        let n = parse("--ckpt-every never --val-every never").unwrap();
        assert_eq!((n.ckpt_every, n.val_every), (Every::Never, Every::Never));
        assert!(
            n.describe().contains("ckpt-every: never") && n.describe().contains("val-every: never"),
            "{}",
            n.describe()
        );
        // A typo names the flag and what it takes.
        let e = parse("--ckpt-every nevr").unwrap_err();
        assert!(
            e.contains("--ckpt-every 'nevr'") && e.contains("never"),
            "{e}"
        );
        let e = parse("--val-every sometimes").unwrap_err();
        assert!(e.contains("--val-every 'sometimes'"), "{e}");
    }

    #[test]
    fn devices_and_windows_parse() {
        assert_eq!(
            parse("--device cuda:3").unwrap().device,
            DeviceSpec::Cuda(3)
        );
        assert_eq!(
            parse("--device cuda").unwrap().device,
            DeviceSpec::LocalCuda
        );
        let e = parse("--device gpu").unwrap_err();
        assert_eq!(
            e,
            "train: --device 'gpu' is not one of auto, cpu, cuda, cuda:N, emu"
        );
        assert_eq!(parse_profile_steps("10:20").unwrap(), (10, 20));
        assert_eq!(parse_profile_steps("4:4").unwrap(), (4, 4));
    }
}
