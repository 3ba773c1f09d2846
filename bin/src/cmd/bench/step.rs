//! `frugal bench step`: the training step, timed, on the CPU or a GPU device.
//!
//! One step is what `frugal train` does per step with one micro-batch: zero the
//! gradients, forward and backward over (B, T) tokens, the global gradient norm,
//! clipping to 1.0, and the AdamW update of the f32 master weights. On the CPU
//! (default) that is `CpuModel` and host AdamW; with `--device cuda|emu` it is
//! `DeviceModel` (the PTX kernels; on `emu` run by the emulator, so the times are
//! emulated and say nothing about a GPU's speed). A device step ends by reading
//! the gradient norm back, so the host clock around it covers the device's work.
//! The batches are random tokens drawn before the clock starts (data loading is not
//! part of the figure). After `--warmup` untimed steps (page faults, cold caches),
//! each of `--steps` steps is timed on the host clock; the report gives mean, standard
//! deviation (n−1), min and max step time, tokens/s = B·T / mean step time, and the
//! achieved GFLOP/s = tokens/s × `Config::train_flops_per_token(T)` / 10^9 (the
//! matmul and attention FLOPs, ×3 for training; norms and element-wise ops are not
//! counted, as in MFU). On a GPU in the facts table the report adds MFU.

use std::time::Instant;

use crate::error::CliError;
use crate::flags::text;
use crate::train::options::{default_threads, dq_name, parse_attention_dq, Attention, AttentionDq};
use frugal_model::config::{Config, ParamKind, ParamLayout, Preset};
use frugal_model::cpu::CpuModel;
use frugal_model::device::{DeviceModel, GraphMode, OptimHyper, StepOptions};
use frugal_model::init::try_init_params;
use frugal_model::optim::{clip_scale, grad_norm_threads, zero_grads, AdamW};
use frugal_model::rng::Rng;
use frugal_ptx::emu::{Counters, Profiling};
use frugal_runtime::device::{Backend, Device, DeviceSpec, TimingSource};

use super::counters::{check_device, with_counters, Summary};

#[path = "step/compare.rs"]
mod compare;
use frugal_runtime::host::{memory_limit, try_zeroed_vec, try_zeroed_vec_written};

/// What `frugal bench step --help` says first.
pub const ABOUT: &str =
    "Times the training step (forward, backward, grad norm and clip, AdamW) on random tokens.\n\n\
     With --device cpu --compare, the same step in PyTorch eager (fp32, same dimensions and \
     threads; scripts/torch/cpu_step.py, run by $FRUGAL_TORCH_PYTHON or python3) alternates \
     with frugal's for --rounds rounds, and the ratio of tokens/s is printed.\n\n\
     Examples:\n  frugal bench step --model tiny --steps 5\n  \
     frugal bench step --device cpu --compare --layers 4 --hidden 256 --heads 4 --ffn 688 \
     --vocab 256 --seq 256 --batch 8 --threads 2";

/// `frugal bench step`'s flags.
#[derive(Debug, clap::Args)]
pub struct StepFlags {
    /// cpu, cuda[:N], or emu (the PTX emulator: slow, times emulated)
    #[arg(long, value_name = "D", default_value = "cpu", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// preset
    #[arg(long, value_name = "NAME", default_value = "tiny", value_parser = text::<String>())]
    model: String,
    /// sequences per step (default: the preset's)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// tokens per sequence (default: the preset's)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// flash (default) or vanilla, on cuda and emu
    #[arg(long, value_name = "A", value_parser = text::<String>())]
    attention: Option<String>,
    /// flash backward's dQ: deterministic (default) or atomic (faster on GPUs, not
    /// bitwise reproducible run to run), on cuda and emu
    #[arg(long, value_name = "M", value_parser = text::<String>())]
    attention_dq: Option<String>,
    /// GPU step: replay the step's fixed launches as CUDA graphs (on), launch each
    /// kernel (off), or auto (default: on for cuda when capture works, off on emu);
    /// compare off and on for the launch overhead
    #[arg(long, value_name = "off|on|auto", value_parser = text::<String>())]
    cuda_graphs: Option<String>,
    /// layers (overrides the preset's)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    layers: Option<usize>,
    /// model width C (overrides the preset's)
    #[arg(long, value_name = "C", value_parser = text::<usize>())]
    hidden: Option<usize>,
    /// attention heads (overrides the preset's; key/value heads follow unless --kv-heads)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    heads: Option<usize>,
    /// key/value heads, a divisor of --heads (grouped-query attention)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    kv_heads: Option<usize>,
    /// MLP width F (overrides the preset's)
    #[arg(long, value_name = "F", value_parser = text::<usize>())]
    ffn: Option<usize>,
    /// vocabulary size V (overrides the preset's)
    #[arg(long, value_name = "V", value_parser = text::<usize>())]
    vocab: Option<usize>,
    /// cpu only: also time PyTorch eager's step at the same dimensions and threads
    /// (needs a python with torch: $FRUGAL_TORCH_PYTHON, else python3) and print the ratio
    #[arg(long)]
    compare: bool,
    /// with --compare: rounds of (frugal, PyTorch), alternated
    #[arg(long, value_name = "N", default_value = "1", value_parser = text::<usize>())]
    rounds: usize,
    /// CPU worker threads, cpu only (default: the cores available)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    threads: Option<usize>,
    /// timed steps
    #[arg(long, value_name = "N", default_value = "10", value_parser = text::<usize>())]
    steps: usize,
    /// untimed steps first
    #[arg(long, value_name = "N", default_value = "2", value_parser = text::<usize>())]
    warmup: usize,
    /// one JSON object with the figures instead of the text report
    #[arg(long)]
    json: bool,
    /// emu only: after the timed steps, one more step with the emulator's hardware
    /// counters on, summed over its launches (per kernel: `frugal profile`)
    #[arg(long)]
    counters: bool,
    /// with --counters: emulate at most N CTAs of each launch and extrapolate
    /// (0 = every CTA)
    #[arg(long, value_name = "N", default_value = "4", value_parser = text::<u32>())]
    sample_ctas: u32,
}

/// Learning rate of the timed updates: small, so that the random-token steps stay
/// finite for any number of steps (the figure does not depend on it).
const BENCH_LR: f32 = 1e-4;
/// AdamW constants as the trainer's.
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.95;
const ADAM_EPS: f32 = 1e-8;
const WEIGHT_DECAY: f32 = 0.1;
/// Gradient clipping norm, the trainer's default.
const CLIP: f64 = 1.0;

/// What one benchmark run is.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBench {
    /// Where it runs.
    pub device: DeviceSpec,
    /// Flash or vanilla attention (device steps only).
    pub attention: Attention,
    /// Flash attention's dQ mode (device steps only).
    pub attention_dq: AttentionDq,
    /// `--cuda-graphs` (device steps only).
    pub cuda_graphs: GraphMode,
    /// Preset name.
    pub model: String,
    /// The model (T = `seq`).
    pub config: Config,
    /// B.
    pub batch: usize,
    /// T.
    pub seq: usize,
    /// Worker threads.
    pub threads: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// `--counters`: count one more step with at most this many CTAs per launch (`None`
    /// = every CTA); emu only.
    pub counters: Option<Option<u32>>,
}

/// The counters of one more step (`--counters`).
#[derive(Clone, Debug, PartialEq)]
pub struct StepCounters {
    /// Summed over the step's launches.
    pub summary: Summary,
    /// Launches in the step.
    pub launches: usize,
    /// Launches whose counters were extrapolated from a sample of their CTAs.
    pub extrapolated: usize,
    /// The sample size asked for (`None`: every CTA).
    pub sample_ctas: Option<u32>,
}

/// The measured figures.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Each timed step, milliseconds.
    pub step_ms: Vec<f64>,
    /// Mean step time.
    pub mean_ms: f64,
    /// Sample standard deviation (0 for one step).
    pub stddev_ms: f64,
    /// Fastest step.
    pub min_ms: f64,
    /// Slowest step.
    pub max_ms: f64,
    /// B·T / mean step time.
    pub tokens_per_s: f64,
    /// Training FLOPs per token at T.
    pub flops_per_token: f64,
    /// tokens/s × FLOPs per token / 1e9.
    pub gflops: f64,
    /// Loss of the first and the last step (a finite loss shows the step computed).
    pub first_loss: f32,
    /// Loss of the last step.
    pub last_loss: f32,
    /// How the times were measured (emulated times are not GPU speed).
    pub timing: TimingSource,
    /// The device's name, e.g. "CPU (2 threads)" or the driver's GPU name.
    pub device_name: String,
    /// The GPU's total memory as the driver reports it (`cuda` only): with the name, what
    /// `frugal plan --calibrate` maps a line onto its device table by.
    pub device_memory_bytes: Option<u64>,
    /// Achieved FLOP/s ÷ the device's dense bf16 peak, when the device is in the facts table.
    pub mfu: Option<f64>,
    /// `--counters`: the counted step's.
    pub counters: Option<StepCounters>,
}

/// Mean, sample standard deviation, min and max of `xs` (non-empty).
pub fn summary(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

/// Random tokens in `0..vocab` for one step's inputs and targets.
fn draw_tokens(rng: &mut Rng, vocab: usize, inputs: &mut [u32], targets: &mut [u32]) {
    for x in inputs.iter_mut().chain(targets.iter_mut()) {
        *x = rng.below(vocab as u64) as u32;
    }
}

/// The figures from the timed steps.
fn stats(
    b: &StepBench,
    step_ms: Vec<f64>,
    losses: &[f32],
    timing: TimingSource,
    device_name: String,
    peak_flops: Option<f64>,
) -> StepStats {
    let (mean_ms, stddev_ms, min_ms, max_ms) = summary(&step_ms);
    let tokens_per_s = (b.batch * b.seq) as f64 / (mean_ms * 1e-3);
    let flops_per_token = b.config.train_flops_per_token(b.seq);
    StepStats {
        mean_ms,
        stddev_ms,
        min_ms,
        max_ms,
        tokens_per_s,
        flops_per_token,
        gflops: tokens_per_s * flops_per_token / 1e9,
        first_loss: losses.first().copied().unwrap_or(f32::NAN),
        last_loss: losses.last().copied().unwrap_or(f32::NAN),
        step_ms,
        timing,
        device_name,
        device_memory_bytes: None,
        mfu: peak_flops.map(|p| tokens_per_s * flops_per_token / p),
        counters: None,
    }
}

/// A failure of the step being timed: "bench step: {e}".
fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CliError {
    CliError::Bench {
        bench: "bench step",
        what: None,
        source: e.into(),
    }
}

/// `len` zeroed host elements for `what`, or an error naming the bytes (not an abort).
fn host<T: bytemuck::Zeroable>(len: usize, what: &str) -> Result<Vec<T>, CliError> {
    try_zeroed_vec(len, what).map_err(failed)
}

/// B·T, or an error when the product overflows.
fn tokens_per_step(b: &StepBench) -> Result<usize, CliError> {
    b.batch
        .checked_mul(b.seq)
        .ok_or(CliError::StepTokensOverflow {
            batch: b.batch,
            seq: b.seq,
        })
}

/// Refuses, by arithmetic and before anything is allocated, a CPU step whose f32
/// params, gradients, AdamW moments and activations exceed what this process may
/// allocate (RAM, `ulimit -v`, the container's limit), naming the bytes and the
/// largest batch that fits.
fn check_fits_cpu(b: &StepBench) -> Result<(), String> {
    let Some(limit) = memory_limit() else {
        return Ok(());
    };
    let fixed = (b.config.param_count() as u64).saturating_mul(16);
    let activations = CpuModel::activation_bytes_for(&b.config, b.batch, b.seq) as u64;
    let need = fixed.saturating_add(activations);
    if need <= limit.bytes {
        return Ok(());
    }
    let per_sequence = (activations / b.batch as u64).max(1);
    let largest = limit.bytes.saturating_sub(fixed) / per_sequence;
    let advice = match largest {
        0 => "the parameters and optimizer state alone do not fit: choose a smaller --model"
            .to_string(),
        n => format!("the largest batch that fits is {n} (--batch {n})"),
    };
    Err(format!(
        "model {} at B={} T={} needs {need} bytes ({:.2} GiB: {fixed} for params, grads and \
         AdamW moments, {activations} for activations); {limit}; {advice}",
        b.model,
        b.batch,
        b.seq,
        need as f64 / (1u64 << 30) as f64,
    ))
}

/// Runs the benchmark on the device `b` names.
///
/// # Errors
/// A device that does not open, a model error (shapes), a plan that does not fit,
/// or a non-finite loss or gradient norm.
pub fn measure(b: &StepBench) -> Result<StepStats, CliError> {
    match b.device {
        DeviceSpec::Cpu => measure_cpu(b),
        spec => measure_device(b, spec),
    }
}

/// The step on a GPU device (or the emulator) through `DeviceModel`.
fn measure_device(b: &StepBench, spec: DeviceSpec) -> Result<StepStats, CliError> {
    let cfg = &b.config;
    let device = Device::open(spec).map_err(|e| CliError::Bench {
        bench: "bench step",
        what: Some(format!("--device {spec}")),
        source: Box::new(e),
    })?;
    let timing = match device.timing_source() {
        TimingSource::Emulated => TimingSource::Emulated,
        // Each step ends by reading the norm back: the host clock covers the device's work.
        _ => TimingSource::HostClock,
    };
    let device_name = device.name();
    let device_memory_bytes = match device.backend() {
        Backend::Cuda => device.memory_info().ok().map(|m| m.total),
        _ => None,
    };
    let peak = device.facts().and_then(|f| f.bf16_dense_flops);
    let hyper = OptimHyper {
        beta1: BETA1,
        beta2: BETA2,
        eps: ADAM_EPS,
        weight_decay: WEIGHT_DECAY,
    };
    let options = StepOptions {
        attention: b.attention,
        dq: b.attention_dq,
        ..Default::default()
    };
    let n = tokens_per_step(b)?;
    // The arena is planned, and refused if it does not fit, before it is allocated.
    let mut model =
        DeviceModel::new_with(device, cfg, b.batch, b.seq, options, hyper).map_err(failed)?;
    model.set_graphs(b.cuda_graphs);
    let params = try_init_params(cfg, 1).map_err(failed)?;
    let zeros: Vec<f32> = host(params.len(), "the AdamW moments' zeros")?;
    model
        .set_state(&params, &zeros, &zeros, 0)
        .map_err(failed)?;
    let mut rng = Rng::new(0x5354_4550);
    let mut inputs: Vec<u32> = host(n, "the input tokens")?;
    let mut targets: Vec<u32> = host(n, "the target tokens")?;
    let mut step_ms = Vec::with_capacity(b.steps);
    let mut losses = Vec::with_capacity(b.steps);
    for i in 0..b.warmup + b.steps {
        draw_tokens(&mut rng, cfg.vocab_size, &mut inputs, &mut targets);
        let started = Instant::now();
        model.zero_grads().map_err(failed)?;
        let loss = model
            .forward_backward(&inputs, &targets, 1.0, None)
            .map_err(failed)?;
        let norm = model.optimizer_step(BENCH_LR, CLIP).map_err(failed)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if !loss.is_finite() || !norm.is_finite() {
            return Err(CliError::StepDiverged {
                step: i + 1,
                loss,
                norm,
            });
        }
        if i >= b.warmup {
            step_ms.push(ms);
            losses.push(loss);
        }
    }
    let mut figures = stats(b, step_ms, &losses, timing, device_name, peak);
    figures.device_memory_bytes = device_memory_bytes;
    if let Some(sample_ctas) = b.counters {
        draw_tokens(&mut rng, cfg.vocab_size, &mut inputs, &mut targets);
        figures.counters = Some(count_step(&mut model, sample_ctas, &inputs, &targets)?);
    }
    Ok(figures)
}

/// The emulated device of `model`, which `--counters` needs.
fn emu_of(model: &DeviceModel) -> Result<&frugal_runtime::device::emu::EmuDevice, CliError> {
    match model.device() {
        Device::Emu(emu) => Ok(emu),
        _ => Err(super::shared::usage(
            "bench step",
            "--counters: hardware counters come from the PTX emulator (--device emu)".to_string(),
        )),
    }
}

/// One more step, untimed, with the emulator's counters on (sampling at most
/// `sample_ctas` CTAs per launch), summed over its launches.
fn count_step(
    model: &mut DeviceModel,
    sample_ctas: Option<u32>,
    inputs: &[u32],
    targets: &[u32],
) -> Result<StepCounters, CliError> {
    // Records of the timed steps are not the counted step's.
    emu_of(model)?.take_launch_records();
    // A sampled launch's outputs are partial: the norm may not be finite, and the update
    // is counted all the same. (Nothing is timed after this step.)
    model.set_update_always(true);
    emu_of(model)?.set_profiling(Profiling {
        count: true,
        sample_ctas,
    });
    let ran = model
        .zero_grads()
        .and_then(|()| model.forward_backward(inputs, targets, 1.0, None))
        .and_then(|_| model.optimizer_step(BENCH_LR, CLIP));
    let emu = emu_of(model)?;
    emu.set_profiling(Profiling::default());
    let records = emu.take_launch_records();
    ran.map_err(failed)?;
    let mut total = Counters::default();
    for r in &records {
        total.add(&r.counters);
    }
    Ok(StepCounters {
        summary: Summary::of(&total),
        launches: records.len(),
        extrapolated: records.iter().filter(|r| r.counters.extrapolated()).count(),
        sample_ctas,
    })
}

/// The CPU step: `CpuModel` and host AdamW.
fn measure_cpu(b: &StepBench) -> Result<StepStats, CliError> {
    let cfg = &b.config;
    let n = tokens_per_step(b)?;
    check_fits_cpu(b).map_err(failed)?;
    // Every buffer sized from the flags is allocated fallibly: a size the host still
    // refuses is an error naming its bytes, never an abort.
    let mut model = CpuModel::new(cfg, b.batch, b.seq, b.threads).map_err(failed)?;
    let mut params = try_init_params(cfg, 1).map_err(failed)?;
    let p = params.len();
    let mut grads: Vec<f32> = host(p, "the gradients")?;
    let mut decay_mask: Vec<bool> = host(p, "the weight-decay mask")?;
    for t in &ParamLayout::new(cfg).tensors {
        if t.kind == ParamKind::Matrix {
            decay_mask[t.range()].fill(true);
        }
    }
    // Written now, as a training run's fresh moments are (see `try_zeroed_vec_written`).
    let written = |what| try_zeroed_vec_written::<f32>(p, what).map_err(failed);
    let (m, v) = (written("AdamW's m")?, written("AdamW's v")?);
    let mut opt = AdamW::from_state(BETA1, BETA2, ADAM_EPS, WEIGHT_DECAY, m, v, 0)
        .ok_or_else(|| failed("AdamW's two moments differ in length"))?;
    let mut rng = Rng::new(0x5354_4550);
    let mut inputs: Vec<u32> = host(n, "the input tokens")?;
    let mut targets: Vec<u32> = host(n, "the target tokens")?;
    let mut step_ms = Vec::with_capacity(b.steps);
    let mut losses = Vec::with_capacity(b.steps);
    for i in 0..b.warmup + b.steps {
        draw_tokens(&mut rng, cfg.vocab_size, &mut inputs, &mut targets);
        let started = Instant::now();
        zero_grads(&mut grads, b.threads);
        let loss = model
            .forward_backward(&params, &inputs, &targets, &mut grads, 1.0, &mut |_| {})
            .map_err(failed)?;
        let norm = grad_norm_threads(&grads, b.threads);
        if !loss.is_finite() || !norm.is_finite() {
            return Err(CliError::StepDiverged {
                step: i + 1,
                loss,
                norm,
            });
        }
        // As the trainer: the clip factor applied inside the update, on the threads.
        let scale = clip_scale(norm, CLIP);
        opt.update_with(&mut params, &grads, scale, BENCH_LR, &decay_mask, b.threads);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if i >= b.warmup {
            step_ms.push(ms);
            losses.push(loss);
        }
    }
    let name = format!("CPU ({} threads)", b.threads);
    Ok(stats(
        b,
        step_ms,
        &losses,
        TimingSource::HostClock,
        name,
        None,
    ))
}

/// The JSON name of how times were measured.
fn timing_name(t: TimingSource) -> &'static str {
    match t {
        TimingSource::HostClock => "host clock",
        TimingSource::DeviceEvents => "device events",
        TimingSource::Emulated => "emulated",
    }
}

/// The figures as one JSON object.
pub fn json_line(b: &StepBench, s: &StepStats) -> String {
    let steps: Vec<String> = s.step_ms.iter().map(|x| format!("{x:.3}")).collect();
    format!(
        "{{\"model\": \"{}\", \"device\": \"{}\", \"device_name\": {}, \"device_memory_bytes\": {}, \"timing\": \"{}\", \"attention\": \"{}\", \"attention_dq\": \"{}\", \
         \"cuda_graphs\": \"{}\", \"batch\": {}, \
         \"seq\": {}, \"threads\": {}, \"params\": {}, \"warmup\": {}, \"steps\": {}, \
         \"step_ms_mean\": {:.4}, \"step_ms_stddev\": {:.4}, \"step_ms_min\": {:.4}, \
         \"step_ms_max\": {:.4}, \"tokens_per_s\": {:.2}, \"train_flops_per_token\": {:.0}, \
         \"gflops\": {:.4}, \"mfu\": {}, \"first_loss\": {:.6}, \"last_loss\": {:.6}, \"step_ms\": [{}]}}",
        b.model,
        b.device,
        serde_json::Value::from(s.device_name.as_str()),
        s.device_memory_bytes
            .map_or("null".to_string(), |m| m.to_string()),
        timing_name(s.timing),
        b.attention,
        dq_name(b.attention_dq),
        b.cuda_graphs.as_str(),
        b.batch,
        b.seq,
        b.threads,
        b.config.param_count(),
        b.warmup,
        b.steps,
        s.mean_ms,
        s.stddev_ms,
        s.min_ms,
        s.max_ms,
        s.tokens_per_s,
        s.flops_per_token,
        s.gflops,
        s.mfu.map_or("null".to_string(), |m| format!("{m:.6}")),
        s.first_loss,
        s.last_loss,
        steps.join(", ")
    )
}

/// Runs `frugal bench step` with its flags.
pub fn run(flags: StepFlags) -> Result<(), CliError> {
    let StepFlags {
        device,
        model,
        batch,
        seq,
        attention,
        attention_dq,
        cuda_graphs,
        threads,
        steps,
        warmup,
        json,
        counters,
        sample_ctas,
        layers,
        hidden,
        heads,
        kv_heads,
        ffn,
        vocab,
        compare,
        rounds,
    } = flags;
    check_device("bench step", counters, device)?;
    let threads = threads.unwrap_or_else(default_threads);
    let usage = |m: String| super::shared::usage("bench step", m);
    // The step runs where it is told: `auto` would hide which step was timed.
    if device == DeviceSpec::Auto {
        return Err(usage(format!(
            "--device '{device}' is not one of cpu, cuda, cuda:N, emu"
        )));
    }
    let attention = match attention.as_deref() {
        None | Some("flash") => Attention::Flash,
        Some("vanilla") => Attention::Vanilla,
        Some(other) => {
            return Err(usage(format!(
                "--attention '{other}' is not one of flash, vanilla"
            )))
        }
    };
    let attention_dq = parse_attention_dq(attention_dq.as_deref()).map_err(|e| usage(e.0))?;
    let cuda_graphs = cuda_graphs
        .as_deref()
        .map_or(Ok(GraphMode::Auto), str::parse)
        .map_err(usage)?;
    if attention == Attention::Vanilla && attention_dq == AttentionDq::Atomic {
        return Err(usage(
            "--attention-dq atomic needs --attention flash (vanilla has no atomic dQ)".into(),
        ));
    }
    for (name, v) in [
        ("batch", batch.unwrap_or(1)),
        ("seq", seq.unwrap_or(1)),
        ("threads", threads),
        ("steps", steps),
        ("rounds", rounds),
        ("layers", layers.unwrap_or(1)),
        ("hidden", hidden.unwrap_or(1)),
        ("heads", heads.unwrap_or(1)),
        ("kv-heads", kv_heads.unwrap_or(1)),
        ("ffn", ffn.unwrap_or(1)),
        ("vocab", vocab.unwrap_or(1)),
    ] {
        if v == 0 {
            return Err(usage(format!("--{name} must be at least 1")));
        }
    }
    let preset = Preset::by_name(&model).map_err(|e| usage(e.to_string()))?;
    let mut config = preset.config();
    let seq = seq.unwrap_or(preset.seq_len);
    config.seq_len = seq;
    if let Some(v) = layers {
        config.n_layers = v;
    }
    if let Some(v) = hidden {
        config.dim = v;
    }
    if let Some(v) = heads {
        config.n_heads = v;
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
    config.validate().map_err(|e| usage(e.to_string()))?;
    if compare && device != DeviceSpec::Cpu {
        return Err(usage(format!(
            "--compare times PyTorch's CPU step: it needs --device cpu, not '{device}'"
        )));
    }
    if compare && counters {
        return Err(usage("--compare and --counters do not go together".into()));
    }
    let bench = StepBench {
        device,
        attention,
        attention_dq,
        cuda_graphs,
        // A preset with its dimensions overridden is no longer that preset.
        model: if [layers, hidden, heads, kv_heads, ffn, vocab]
            .iter()
            .any(Option::is_some)
        {
            format!("custom (from {})", preset.name)
        } else {
            preset.name.to_string()
        },
        batch: batch.unwrap_or(preset.default_batch),
        seq,
        threads,
        steps,
        warmup,
        config,
        counters: counters.then_some((sample_ctas > 0).then_some(sample_ctas)),
    };
    let where_ = match bench.device {
        DeviceSpec::Cpu => format!("CPU training step, {} threads", bench.threads),
        DeviceSpec::Emu => format!(
            "GPU training step on the emulator (emu), attention {} (dQ {})",
            bench.attention,
            dq_name(bench.attention_dq)
        ),
        spec => format!(
            "GPU training step on {spec}, attention {} (dQ {}), CUDA graphs {}",
            bench.attention,
            dq_name(bench.attention_dq),
            bench.cuda_graphs.as_str()
        ),
    };
    if !json {
        println!(
            "bench step: {where_}; model {} ({} parameters), B={} T={}; {} timed steps after {} warm-up",
            bench.model,
            bench.config.param_count(),
            bench.batch,
            bench.seq,
            bench.steps,
            bench.warmup
        );
    }
    if compare {
        return compare::run(&bench, rounds, json);
    }
    let s = measure(&bench)?;
    if json {
        let line = json_line(&bench, &s);
        println!(
            "{}",
            with_counters(line, s.counters.as_ref().map(|c| &c.summary))
        );
    } else {
        println!(
            "{:>12} {:>12} {:>12} {:>12} {:>14} {:>10}",
            "step_ms", "stddev_ms", "min_ms", "max_ms", "tokens/s", "GFLOP/s"
        );
        println!(
            "{:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>14.1} {:>10.3}",
            s.mean_ms, s.stddev_ms, s.min_ms, s.max_ms, s.tokens_per_s, s.gflops
        );
        println!(
            "training FLOPs per token at T={}: {:.0}; loss {:.4} (first timed step) -> {:.4} (last)",
            bench.seq, s.flops_per_token, s.first_loss, s.last_loss
        );
        let mfu = s.mfu.map_or_else(
            || "MFU unknown (no dense bf16 peak for this device)".to_string(),
            |m| format!("MFU {:.1}%", m * 100.0),
        );
        let timing = match s.timing {
            TimingSource::Emulated => "emulated (host clock around the emulator; not GPU speed)",
            _ => "host clock",
        };
        println!("device: {}; timing: {timing}; {mfu}", s.device_name);
        if let Some(c) = &s.counters {
            let sampled = match c.sample_ctas {
                Some(n) if c.extrapolated > 0 => format!(
                    "{} of {} launches extrapolated from at most {n} CTAs each",
                    c.extrapolated, c.launches
                ),
                _ => format!("{} launches, every CTA emulated", c.launches),
            };
            println!("one more step, {sampled}:");
            println!("  {}", c.summary.text());
            println!("  per kernel, with predicted times on a GPU model: frugal profile");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        // 1, 2, 3, 4: mean 2.5, sample variance 5/3.
        let (mean, sd, min, max) = summary(&[3.0, 1.0, 4.0, 2.0]);
        assert_eq!((mean, min, max), (2.5, 1.0, 4.0));
        // Tolerance: one rounding of a square root of a value exact to an ulp.
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{sd}");
        assert_eq!(summary(&[7.0]), (7.0, 0.0, 7.0, 7.0));
    }

    #[test]
    fn a_tiny_step_gives_positive_finite_figures() {
        let cfg = Config {
            vocab_size: 64,
            dim: 32,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            ffn_dim: 48,
            seq_len: 8,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        };
        let b = StepBench {
            device: DeviceSpec::Cpu,
            attention: Attention::Flash,
            attention_dq: AttentionDq::Deterministic,
            cuda_graphs: GraphMode::Auto,
            model: "custom".into(),
            config: cfg.clone(),
            batch: 2,
            seq: 8,
            threads: 1,
            steps: 3,
            warmup: 1,
            counters: None,
        };
        let s = measure(&b).unwrap();
        assert_eq!(s.step_ms.len(), 3);
        for x in [s.mean_ms, s.min_ms, s.max_ms, s.tokens_per_s, s.gflops] {
            assert!(x.is_finite() && x > 0.0, "{s:?}");
        }
        assert!(s.min_ms <= s.mean_ms && s.mean_ms <= s.max_ms, "{s:?}");
        assert!(s.stddev_ms.is_finite() && s.stddev_ms >= 0.0);
        assert_eq!(s.flops_per_token, cfg.train_flops_per_token(8));
        // Random tokens over V=64 start near ln(64) ≈ 4.16 (init std 0.02 keeps logits
        // small); a broken forward would be far off or non-finite.
        assert!((s.first_loss - 64f32.ln()).abs() < 0.5, "{s:?}");
        let line = json_line(&b, &s);
        assert!(
            line.contains("\"step_ms\": [") && line.ends_with("]}"),
            "{line}"
        );
    }
}
