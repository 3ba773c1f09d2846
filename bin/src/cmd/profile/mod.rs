//! `frugal profile`: one training step on the emulated GPU with hardware
//! counters on, and from them a roofline prediction, per kernel and for the
//! step, of what it takes on a real GPU model (`--gpu h100-sxm`). Nothing here
//! is measured on a GPU: every time, tokens/s and MFU it prints is PREDICTED
//! from emulated counters and the GPU's published rates, and says so.
//!
//! The step is the one `frugal train` runs (zero the gradients, forward and
//! backward over one micro-batch of random tokens, the norm, AdamW), with the
//! same step program and memory plan, planned for each --gpu's architecture
//! (`DeviceModel::new_for`: an sm_90 part's step runs the wgmma + TMA matmul and
//! flash forward where they apply); one step is emulated per distinct target. Each launch runs a sample of its CTAs
//! (`--sample-ctas`, spread over the grid) and its counters are extrapolated
//! to the whole grid; `--sample-ctas 0` runs every CTA.

pub mod kernel;
pub mod predict;

use std::path::PathBuf;
use std::time::Instant;

use frugal_model::device::{DeviceModel, OptimHyper, StepTarget};
use frugal_model::init::try_init_params;
use frugal_model::rng::Rng;
use frugal_ptx::emu::{Checks, MmaNumerics, Profiling};
use frugal_runtime::device::emu::{EmuDevice, LaunchRecord};
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::facts::{DeviceFacts, Roofline};
use frugal_runtime::roofline::{known_gpu_names, lookup_gpu};

use self::predict::{Calibration, DramEstimate, Row};
use crate::error::{CliError, Context};
use crate::flags::{path, text};
use crate::train::metrics::human;
use crate::train::options::{TrainFlags, TrainOptions};
use crate::train::target;

/// What `frugal profile --help` says first.
pub const ABOUT: &str = "\
Runs one training step on the emulated GPU with hardware counters on (instructions by class,
global sectors and coalescing, shared-memory bank conflicts, tensor-core FLOPs, distinct DRAM
sectors) and predicts, from a roofline of each --gpu, every kernel's time, its limiting bound
and occupancy, and the step's tokens/s and MFU. Every time and rate it prints is PREDICTED,
not measured. Train flags (--model, --batch, --seq, --attention, ...) choose the step.";

/// `frugal profile`'s flags: its own, then `frugal train`'s for the step.
#[derive(Debug, clap::Args)]
pub struct ProfileFlags {
    /// GPU models to predict for, a comma list (h100-sxm, a100-40gb, a100-80gb,
    /// h100-pcie, h200, l4, a10g, rtx-4090, ...)
    #[arg(long, value_name = "LIST", default_value = "h100-sxm", value_parser = text::<String>(), help_heading = "profile")]
    pub gpu: String,
    /// CTAs emulated per launch, spread over the grid; counters are extrapolated
    /// to the whole grid (0 = every CTA)
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = text::<u32>(), help_heading = "profile")]
    pub sample_ctas: u32,
    /// JSON with per-family factors (measured ÷ predicted time), e.g.
    /// {"matmul": 1.3, "flash": 0.9}, from scripts/gpu-check.sh on a real GPU
    #[arg(long, value_name = "FILE", value_parser = path(), help_heading = "profile")]
    pub calibration: Option<PathBuf>,
    /// one JSON object instead of the tables
    #[arg(long, help_heading = "profile")]
    pub json: bool,
    /// profile one kernel (or one op's launches) at --shape instead of a training step:
    /// matmul, flash-fwd, flash-bwd, rmsnorm-fwd, cross-entropy, adamw, ... (a wrong
    /// name lists them all with their shapes); each --gpu runs its architecture's kernels
    /// (on sm_90: the wgmma matmul and the wgmma flash forward where they apply)
    #[arg(long, value_name = "NAME", value_parser = text::<String>(), requires = "shape", help_heading = "profile --kernel")]
    pub kernel: Option<String>,
    /// the kernel's sizes, a comma list: matmul M,N,K; flash-fwd/-bwd B,NH,T,HS[,NKV];
    /// rmsnorm-fwd ROWS,C; ...
    #[arg(long, value_name = "DIMS", value_parser = text::<String>(), requires = "kernel", help_heading = "profile --kernel")]
    pub shape: Option<String>,
    /// --kernel matmul's operand layout: nt (default), nn or tn
    #[arg(long, value_name = "L", value_parser = text::<String>(), requires = "kernel", help_heading = "profile --kernel")]
    pub layout: Option<String>,
    /// --kernel matmul's C type: bf16 (default) or f32
    #[arg(long, value_name = "T", value_parser = text::<String>(), requires = "kernel", help_heading = "profile --kernel")]
    pub out_type: Option<String>,
    /// --kernel matmul adds into C (C += A·B) instead of overwriting it
    #[arg(long, requires = "kernel", help_heading = "profile --kernel")]
    pub accumulate: bool,
    #[command(flatten)]
    pub train: TrainFlags,
}

fn usage(message: String) -> CliError {
    CliError::usage_with_help("profile", message)
}

/// The counted launches of one step, by phase.
struct Profiled {
    /// Zeroing the gradients: once per optimizer step.
    zero: Vec<LaunchRecord>,
    /// Forward and backward of one micro-batch: `grad_accum` times per step.
    micro: Vec<LaunchRecord>,
    /// Norm, clip and AdamW: once per step.
    update: Vec<LaunchRecord>,
    emulation_s: f64,
}

pub fn run(flags: ProfileFlags) -> Result<(), CliError> {
    let gpus = gpus(&flags.gpu)?;
    let calibration = match &flags.calibration {
        Some(p) => load_calibration(p)?,
        None => Vec::new(),
    };
    let opts = TrainOptions::from_flags(flags.train.clone())?;
    match opts.device {
        DeviceSpec::Emu | DeviceSpec::Auto => {}
        other => {
            return Err(usage(format!(
                "profile: --device {other}: profiling predicts from the emulator's counters; use \
                 --device emu (on a real GPU, profile `frugal train --profile-steps A:B` with Nsight)"
            )))
        }
    }
    let sample = (flags.sample_ctas > 0).then_some(flags.sample_ctas);
    if let (Some(name), Some(shape)) = (&flags.kernel, &flags.shape) {
        let words = kernel::MatmulWords {
            layout: flags.layout.clone(),
            out_type: flags.out_type.clone(),
            accumulate: flags.accumulate,
        };
        let target = kernel::parse(name, shape, &words)?;
        // One run per architecture among the GPUs: an sm_90 part runs the wgmma kernels.
        let mut profiled: Vec<(u32, kernel::Profiled)> = Vec::new();
        for (facts, _) in &gpus {
            if !profiled.iter().any(|(sm, _)| *sm == facts.sm) {
                let p = kernel::profile(&target, sample, opts.attention_dq, facts.sm)?;
                profiled.push((facts.sm, p));
            }
        }
        return kernel::report(&target, sample, &profiled, &gpus, &calibration, flags.json);
    }
    // The step each GPU runs is the one planned for its architecture (the wgmma kernels on
    // sm_90): one emulated step per distinct target among the --gpu list.
    let mut profiled: Vec<(StepTarget, Profiled)> = Vec::new();
    for (facts, line) in &gpus {
        let t = step_target(facts, line);
        if !profiled.iter().any(|(p, _)| *p == t) {
            profiled.push((t, profile_step(&opts, sample, &gpus, t)?));
        }
    }
    let per_gpu: Vec<(&DeviceFacts, &Roofline, Step)> = gpus
        .iter()
        .map(|(facts, line)| {
            let t = step_target(facts, line);
            let p = profiled
                .iter()
                .find(|(p, _)| *p == t)
                .map(|(_, p)| p)
                .ok_or_else(|| usage(format!("profile: internal: no step for {t:?}")))?;
            Ok((
                *facts,
                *line,
                predict_step(&opts, p, facts, line, &calibration),
            ))
        })
        .collect::<Result<_, CliError>>()?;
    let all = Profiled::merged(&profiled);
    if flags.json {
        println!("{}", json(&opts, sample, &all, &per_gpu));
    } else {
        print!("{}", text_report(&opts, sample, &all, &per_gpu));
    }
    Ok(())
}

/// The GPU the step is planned for when predicting `facts`: its compute capability (so
/// an sm_90 part runs the wgmma kernels) and, from sm_90, its SMs (the persistent wgmma
/// grids' size; older parts' kernels do not depend on it).
fn step_target(facts: &DeviceFacts, line: &Roofline) -> StepTarget {
    StepTarget {
        arch: facts.sm,
        sms: if facts.sm >= 90 {
            line.sms
        } else {
            StepTarget::DEFAULT_SMS
        },
    }
}

impl Profiled {
    /// Every step's launches and emulation time together (what the report's header and
    /// sampling note speak of).
    fn merged(all: &[(StepTarget, Profiled)]) -> Profiled {
        let mut m = Profiled {
            zero: Vec::new(),
            micro: Vec::new(),
            update: Vec::new(),
            emulation_s: 0.0,
        };
        for (_, p) in all {
            m.zero.extend(p.zero.iter().cloned());
            m.micro.extend(p.micro.iter().cloned());
            m.update.extend(p.update.iter().cloned());
            m.emulation_s += p.emulation_s;
        }
        m
    }
}

/// `--gpu`'s models, each with its roofline.
fn gpus(list: &str) -> Result<Vec<(&'static DeviceFacts, &'static Roofline)>, CliError> {
    let names = crate::cmd::sweep::grid::list::<String>("gpu", list)
        .map_err(|e| usage(e.0.replacen("sweep:", "profile:", 1)))?;
    names
        .iter()
        .map(|n| {
            let f = lookup_gpu(n).ok_or_else(|| {
                usage(format!(
                    "profile: --gpu '{n}' is not a GPU frugal has a roofline for; known: {}",
                    known_gpu_names().join(", ")
                ))
            })?;
            let line = f.roofline.as_ref().ok_or_else(|| {
                usage(format!(
                    "profile: --gpu '{n}' ({}) has no roofline figures",
                    f.label
                ))
            })?;
            Ok((f, line))
        })
        .collect()
}

fn load_calibration(path: &std::path::Path) -> Result<Calibration, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        action: "read the calibration file",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |why: String| {
        CliError::usage(format!(
            "profile: --calibration {}: {why}; the file is a JSON object of per-family factors \
             (measured ÷ predicted), e.g. {{\"matmul\": 1.3, \"flash\": 0.9}}",
            path.display()
        ))
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(map) = v else {
        return Err(bad("not a JSON object".into()));
    };
    map.into_iter()
        .map(|(k, v)| match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok((k, x)),
            _ => Err(bad(format!("'{k}': {v} is not a positive factor"))),
        })
        .collect()
}

/// Runs one step on an emulated device with counting on, phase by phase.
fn profile_step(
    opts: &TrainOptions,
    sample: Option<u32>,
    gpus: &[(&DeviceFacts, &Roofline)],
    target: StepTarget,
) -> Result<Profiled, CliError> {
    let cfg = &opts.config;
    // The sanitizer is off (a profile is of kernels the tests check), the
    // tensor cores' numerics as FRUGAL_EMU_MMA says.
    let checks = Checks {
        mma: MmaNumerics::from_env().map_err(|e| usage(format!("profile: {e}")))?,
        ..Checks::none()
    };
    // The step is planned against the memory of the GPU it is predicted for
    // (the largest of --gpu), unless FRUGAL_EMU_MEMORY_GIB says otherwise.
    let capacity = match std::env::var_os("FRUGAL_EMU_MEMORY_GIB") {
        Some(_) => None,
        None => gpus.iter().map(|(f, _)| f.memory_bytes_nominal).max(),
    };
    let emu = EmuDevice::with_capacity(checks, capacity).context("opening the emulated device")?;
    let device = Device::Emu(emu);
    let planned = target::plan_memory(&device, opts, 1).map_err(|e| CliError::DeviceMemory {
        error: Box::new(e),
        batch: opts.batch,
        grad_accum: opts.grad_accum,
    })?;
    let hyper = OptimHyper {
        beta1: crate::train::optim::BETA1,
        beta2: crate::train::optim::BETA2,
        eps: crate::train::optim::ADAM_EPS,
        weight_decay: opts.weight_decay as f32,
    };
    let mut model = DeviceModel::new_for(
        device,
        cfg,
        planned.batch,
        cfg.seq_len,
        target::step_options(opts, 1),
        hyper,
        Some(target),
    )
    .context("setting up the device step")?;
    let params = try_init_params(cfg, opts.seed).context("initial weights")?;
    let zeros = frugal_runtime::host::try_zeroed_vec::<f32>(params.len(), "the AdamW moments")
        .context("AdamW moments")?;
    model
        .set_state(&params, &zeros, &zeros, 0)
        .context("loading the weights")?;
    let n = planned.batch * cfg.seq_len;
    let mut rng = Rng::new(opts.seed);
    let inputs: Vec<u32> = (0..n)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..n)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();

    let Device::Emu(emu) = model.device() else {
        return Err(usage(
            "profile: the step is not on the emulated device".into(),
        ));
    };
    emu.set_profiling(Profiling {
        count: true,
        sample_ctas: sample,
    });
    // A sampled launch's outputs are partial, so the gradient norm may come out
    // non-finite; the update is counted all the same.
    model.set_update_always(true);
    let started = Instant::now();
    let take = |model: &DeviceModel| match model.device() {
        Device::Emu(e) => e.take_launch_records(),
        _ => Vec::new(),
    };
    model.zero_grads().context("zeroing the gradients")?;
    let zero = take(&model);
    // With sampled CTAs the values are partial; the loss is not looked at.
    let _ = model
        .forward_backward(&inputs, &targets, 1.0, None)
        .context("forward and backward")?;
    let micro = take(&model);
    let _ = model
        .optimizer_step(1e-4, opts.clip)
        .context("the optimizer step")?;
    let update = take(&model);
    Ok(Profiled {
        zero,
        micro,
        update,
        emulation_s: started.elapsed().as_secs_f64(),
    })
}

/// The step predicted on one GPU.
struct Step {
    rows: Vec<Row>,
    /// Seconds of one optimizer step: zero + grad_accum × micro-batch + update,
    /// sampled launches' DRAM traffic estimated by the sharing their sample showed.
    time_s: f64,
    /// The same with every sector a sampled launch touched scaled to its grid as if
    /// private to its CTA ([`DramEstimate::AllPrivate`]): the slow end of the range.
    time_upper_s: f64,
    tokens_per_s: f64,
    tokens_per_s_low: f64,
    mfu: Option<f64>,
    mfu_low: Option<f64>,
}

fn predict_step(
    opts: &TrainOptions,
    p: &Profiled,
    gpu: &DeviceFacts,
    line: &Roofline,
    calibration: &Calibration,
) -> Step {
    let k = opts.grad_accum as f64;
    let time = |dram: DramEstimate| {
        let t = |records: &[LaunchRecord]| {
            predict::total(&predict::rows(records, gpu, line, calibration, dram))
        };
        t(&p.zero) + k * t(&p.micro) + t(&p.update)
    };
    let time_s = time(DramEstimate::Estimated);
    let time_upper_s = time(DramEstimate::AllPrivate);
    // The rows weigh each micro-batch launch grad_accum times.
    let mut all: Vec<LaunchRecord> = p.zero.clone();
    for _ in 0..opts.grad_accum {
        all.extend(p.micro.iter().cloned());
    }
    all.extend(p.update.iter().cloned());
    let rows = predict::rows(&all, gpu, line, calibration, DramEstimate::Estimated);
    let tokens = opts.tokens_per_step_per_device() as f64;
    let per_s = |t: f64| if t > 0.0 { tokens / t } else { 0.0 };
    let flops = opts.config.train_flops_per_token(opts.config.seq_len);
    let mfu_of = |tps: f64| gpu.bf16_dense_flops.map(|peak| tps * flops / peak);
    Step {
        rows,
        time_s,
        time_upper_s,
        tokens_per_s: per_s(time_s),
        tokens_per_s_low: per_s(time_upper_s),
        mfu: mfu_of(per_s(time_s)),
        mfu_low: mfu_of(per_s(time_upper_s)),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.0}%", v * 100.0))
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn sampled_note(sample: Option<u32>, p: &Profiled) -> String {
    sampled(sample, p.zero.iter().chain(&p.micro).chain(&p.update))
}

/// What the output says of sampling: which launches' counters were extrapolated.
fn sampled<'a>(sample: Option<u32>, all: impl Iterator<Item = &'a LaunchRecord> + Clone) -> String {
    let extrapolated = all.clone().filter(|r| r.counters.extrapolated()).count();
    match sample {
        Some(n) if extrapolated > 0 => format!(
            "counters of {extrapolated} of {} launches extrapolated from at most {n} CTAs each",
            all.count()
        ),
        _ => "every CTA emulated".to_string(),
    }
}

/// The column heads of the per-kernel table.
fn table_head() -> String {
    format!(
        "  {:<44} {:>8} {:>7} {:>13} {:>7} {:>11} {:>9} {:>13} {:>10} {:>7}\n",
        "kernel",
        "launches",
        "share",
        "predicted us",
        "bound",
        "sectors/req",
        "coalesced",
        "conflicts/req",
        "occupancy",
        "tensor"
    )
}

/// One kernel's line of the table; `total_s` is what its share is of.
fn table_row(r: &Row, total_s: f64) -> String {
    let share = if total_s > 0.0 {
        r.time_s / total_s
    } else {
        0.0
    };
    let occ = r.occupancy.map_or("-".into(), |o| {
        format!("{:.0}% ({})", o.fraction * 100.0, o.limited_by)
    });
    let calibrated = if r.factor.is_some() { "*" } else { "" };
    format!(
        "  {:<44} {:>8} {:>6.1}% {:>12.1}{calibrated:1} {:>7} {:>11} {:>9} {:>13} {:>10} {:>7}\n",
        r.kernel,
        r.launches,
        share * 100.0,
        r.time_s * 1e6,
        r.bound.as_str(),
        num(r.sectors_per_request, 1),
        pct(r.coalescing),
        num(r.conflicts_per_request, 2),
        occ,
        pct(Some(r.tensor_utilisation)),
    )
}

fn text_report(
    opts: &TrainOptions,
    sample: Option<u32>,
    p: &Profiled,
    per_gpu: &[(&DeviceFacts, &Roofline, Step)],
) -> String {
    let cfg = &opts.config;
    let mut s = format!(
        "profile: {} ({} parameters), batch {} x seq {}{}, attention {}; emulated in {:.1} s ({})\n",
        opts.model,
        cfg.param_count(),
        opts.batch,
        cfg.seq_len,
        if opts.grad_accum > 1 {
            format!(" x grad-accum {}", opts.grad_accum)
        } else {
            String::new()
        },
        opts.attention,
        p.emulation_s,
        sampled_note(sample, p)
    );
    for (gpu, line, step) in per_gpu {
        s += &format!(
            "\nPREDICTED for {} ({}; {} SMs at {:.2} GHz; the sm_{} step; roofline, not a \
             measurement):\n",
            gpu.label, gpu.name, line.sms, line.boost_clock_ghz, gpu.sm
        );
        s += &table_head();
        for r in &step.rows {
            s += &table_row(r, step.time_s);
        }
        let mfu = |m: Option<f64>| {
            m.map_or("unknown (no published bf16 peak)".into(), |m| {
                format!("{:.1}%", m * 100.0)
            })
        };
        s += &format!(
            "  step: predicted {:.3} ms -> {} tokens/s, MFU {} (predicted)\n",
            step.time_s * 1e3,
            human(step.tokens_per_s),
            mfu(step.mfu)
        );
        if step.time_upper_s > step.time_s * 1.001 {
            s += &format!(
                "  step if no data were shared between CTAs beyond what the sampled CTAs showed \
                 (DRAM traffic at its upper estimate): {:.3} ms -> {} tokens/s, MFU {} (predicted)\n",
                step.time_upper_s * 1e3,
                human(step.tokens_per_s_low),
                mfu(step.mfu_low)
            );
        }
        if step.rows.iter().any(|r| r.factor.is_some()) {
            s += "  (* calibrated by --calibration's factor for the kernel's family)\n";
        }
    }
    s
}

/// One kernel's JSON object; `total_s` is what its share is of.
fn row_json(r: &Row, total_s: f64) -> serde_json::Value {
    let c = &r.counters;
    serde_json::json!({
        "kernel": r.kernel,
        "launches": r.launches,
        "predicted_s": r.time_s,
        "share": if total_s > 0.0 { r.time_s / total_s } else { 0.0 },
        "bound": r.bound.as_str(),
        "sectors_per_request": r.sectors_per_request,
        "coalescing": r.coalescing,
        "conflicts_per_request": r.conflicts_per_request,
        "occupancy": r.occupancy.map(|o| o.fraction),
        "occupancy_limited_by": r.occupancy.map(|o| o.limited_by.to_string()),
        "tensor_utilisation": r.tensor_utilisation,
        "calibration_factor": r.factor,
        "counters": {
            "instructions": c.instructions,
            "global_load_requests": c.global_load_requests,
            "global_load_sectors": c.global_load_sectors,
            "global_load_sectors_ideal": c.global_load_sectors_ideal,
            "global_store_requests": c.global_store_requests,
            "global_store_sectors": c.global_store_sectors,
            "global_store_sectors_ideal": c.global_store_sectors_ideal,
            "shared_load_bank_conflicts": c.shared_load_bank_conflicts(),
            "shared_store_bank_conflicts": c.shared_store_bank_conflicts(),
            "ldmatrix_bank_conflicts": c.ldmatrix_bank_conflicts(),
            "cp_async_bytes": c.cp_async_bytes,
            "bulk_requests": c.bulk_requests,
            "bulk_global_read_bytes": c.bulk_global_read_bytes,
            "bulk_global_write_bytes": c.bulk_global_write_bytes,
            "bulk_sectors": c.bulk_sectors,
            "bulk_shared_write_bytes": c.bulk_shared_write_bytes,
            "wgmma_requests": c.wgmma_requests,
            "wgmma_shared_read_bytes": c.wgmma_shared_read_bytes,
            "wgmma_shared_wavefronts": c.wgmma_shared_wavefronts,
            "wgmma_shared_bank_conflicts": c.wgmma_shared_bank_conflicts(),
            "tensor_flops": c.tensor_flops,
            "barriers": c.barriers,
            "dram_read_sectors": c.dram_read_sectors,
            "dram_write_sectors": c.dram_write_sectors,
        },
    })
}

fn json(
    opts: &TrainOptions,
    sample: Option<u32>,
    p: &Profiled,
    per_gpu: &[(&DeviceFacts, &Roofline, Step)],
) -> serde_json::Value {
    let gpus: Vec<serde_json::Value> = per_gpu
        .iter()
        .map(|(gpu, _, step)| {
            let kernels: Vec<serde_json::Value> =
                step.rows.iter().map(|r| row_json(r, step.time_s)).collect();
            serde_json::json!({
                "gpu": gpu.label,
                "name": gpu.name,
                "step_arch": gpu.sm,
                "kernels": kernels,
                "step": {
                    "predicted_s": step.time_s,
                    "tokens_per_s": step.tokens_per_s,
                    "mfu": step.mfu,
                    "predicted_s_dram_upper": step.time_upper_s,
                    "tokens_per_s_dram_upper": step.tokens_per_s_low,
                    "mfu_dram_upper": step.mfu_low,
                },
            })
        })
        .collect();
    serde_json::json!({
        "predicted": true,
        "note": "times, tokens/s and MFU are predicted from emulated counters and a roofline, not measured",
        "model": opts.model,
        "parameters": opts.config.param_count(),
        "batch": opts.batch,
        "seq": opts.config.seq_len,
        "grad_accum": opts.grad_accum,
        "attention": opts.attention.to_string(),
        "sample_ctas": sample,
        "sampling": sampled_note(sample, p),
        "emulation_s": p.emulation_s,
        "gpus": gpus,
    })
}
