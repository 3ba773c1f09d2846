//! Which device trains (`--device`), what the log says about it, and on a GPU
//! (or the emulator) the step's memory plan, checked before anything is
//! allocated (`--dry-run`, `--mem-target`).
//!
//! `auto` opens CUDA device 0 (or the rank's LOCAL_RANK) when the driver
//! loads and sees one that runs the kernels, and falls back to the CPU
//! otherwise, saying why in the first log line.

use frugal_comm::ShardMode;
use frugal_model::config::Config;
use frugal_model::device::program::Program;
use frugal_model::device::{
    DeviceModel, MemoryFloor, ShardState, Sharding, StepOptions, StepTarget,
};
use frugal_model::error::ModelError;
use frugal_runtime::arena::{self, BufferRequest, Plan};
use frugal_runtime::device::{self, cuda, Device, DeviceSpec, MemoryInfo, TimingSource};
use frugal_runtime::RuntimeError;

use super::options::{TrainOptions, MEM_TARGET_MAX_BATCH};
use crate::error::{CliError, Context, FloorRefusal, MemoryError};
use crate::units::gib;

/// Where the step runs.
pub enum Target {
    /// The CPU backend; `fallback` says why `--device auto` did not pick a GPU.
    Cpu { fallback: Option<String> },
    /// A CUDA GPU or the emulated one; `auto` when `--device auto` picked it.
    Gpu { device: Device, auto: bool },
}

/// The local rank of a multi-rank job (the runtime's [`device::local_rank`]), 0 alone.
///
/// # Errors
/// [`CliError::BadLocalRank`], a usage matter (exit 2), for a variable that is set
/// but not a rank: every rank would otherwise open GPU 0.
pub fn local_rank() -> Result<usize, CliError> {
    device::local_rank().map_err(|e| match e {
        RuntimeError::BadLocalRank { var, value } => CliError::BadLocalRank { var, value },
        other => CliError::Runtime(other),
    })
}

/// A one-line reason the CUDA path is not usable, for `auto`'s log line.
fn short_reason(e: &RuntimeError) -> String {
    match e {
        RuntimeError::CudaUnavailable { .. } => {
            "the CUDA driver library (libcuda.so.1) is not installed".to_string()
        }
        other => other.to_string(),
    }
}

/// Opens the device `--device` names.
///
/// # Errors
/// A message for `cuda` without a usable driver or device (the runtime's,
/// which says what is missing and what to do), or a device that fails to open.
pub fn open(choice: DeviceSpec) -> Result<Target, CliError> {
    let opened =
        |spec: DeviceSpec| Device::open(spec).with_context(|| format!("--device {choice}"));
    match choice {
        DeviceSpec::Cpu => Ok(Target::Cpu { fallback: None }),
        DeviceSpec::Emu | DeviceSpec::Cuda(_) => Ok(Target::Gpu {
            device: opened(choice)?,
            auto: false,
        }),
        // Resolved here, not by the runtime, for the launcher-facing message.
        DeviceSpec::LocalCuda => Ok(Target::Gpu {
            device: opened(DeviceSpec::Cuda(local_rank()?))?,
            auto: false,
        }),
        DeviceSpec::Auto => {
            let fallback = |why: String| {
                Ok(Target::Cpu {
                    fallback: Some(why),
                })
            };
            match cuda::device_count() {
                Err(e) => fallback(short_reason(&e)),
                Ok(0) => fallback("the CUDA driver sees no device".into()),
                Ok(_) => match Device::open(DeviceSpec::Cuda(local_rank()?)) {
                    Ok(device) => Ok(Target::Gpu { device, auto: true }),
                    // A GPU too old for the kernels: the CPU trains instead.
                    Err(e @ RuntimeError::UnsupportedArch { .. }) => fallback(e.to_string()),
                    Err(e) => Err(CliError::AutoDevice(e)),
                },
            }
        }
    }
}

/// The first log line: which device trains, and for `auto` why.
pub fn describe(target: &Target, threads: usize) -> String {
    match target {
        Target::Cpu { fallback: None } => format!("device: cpu, {}", threads_label(threads)),
        Target::Cpu {
            fallback: Some(why),
        } => format!(
            "device: cpu, {} (--device auto: no usable GPU: {why})",
            threads_label(threads)
        ),
        Target::Gpu { device, auto } => {
            let picked = if *auto {
                " (--device auto picked the GPU)"
            } else {
                ""
            };
            let memory = match device.memory_info() {
                Ok(MemoryInfo { free, total }) => format!("{} free of {}", gib(free), gib(total)),
                Err(e) => format!("memory unknown: {e}"),
            };
            match device.timing_source() {
                TimingSource::Emulated => format!(
                    "device: emu, {} ({memory}); the GPU step run by the emulator: slow, timings emulated \
                     (host clock; not GPU speed), MFU unknown",
                    device.name()
                ),
                _ => {
                    let peak = match device.facts() {
                        Some(f) => match f.bf16_dense_flops {
                            Some(p) => format!("dense bf16 peak {:.0} TFLOP/s", p / 1e12),
                            None => "no published bf16 peak: MFU unknown".to_string(),
                        },
                        None => "not in the facts table: MFU unknown".to_string(),
                    };
                    format!("device: cuda, {} ({memory}; {peak}){picked}", device.name())
                }
            }
        }
    }
}

/// "1 thread" / "N threads".
pub fn threads_label(threads: usize) -> String {
    match threads {
        1 => "1 thread".to_string(),
        n => format!("{n} threads"),
    }
}

/// The number of ranks the plan is for: `--world` (a dry run planning a job), else the
/// launcher's WORLD_SIZE (or SLURM_NTASKS under srun), else 1.
///
/// # Errors
/// A usage error (exit 2) for a variable that is set but not a positive count.
pub fn planned_world(opts: &TrainOptions) -> Result<usize, CliError> {
    if let Some(w) = opts.plan_world {
        return Ok(w);
    }
    let var = if std::env::var_os("WORLD_SIZE").is_some() {
        "WORLD_SIZE"
    } else if std::env::var_os("SLURM_PROCID").is_some() {
        "SLURM_NTASKS"
    } else {
        return Ok(1);
    };
    let value = std::env::var(var).unwrap_or_default();
    match value.trim().parse::<usize>() {
        Ok(w) if w >= 1 => Ok(w),
        _ => Err(CliError::usage(format!(
            "train: {var}='{value}' is not a number of ranks (a positive integer)"
        ))),
    }
}

/// The step's view of `--shard` at `world` ranks.
pub fn sharding(mode: ShardMode, world: usize) -> Sharding {
    let mode = match mode {
        ShardMode::None => ShardState::None,
        ShardMode::GradOp => ShardState::GradOp,
        ShardMode::Full => ShardState::Full,
    };
    Sharding::new(mode, world)
}

/// The device step's options for this run at `world` ranks (attention, dQ, sharding).
pub fn step_options(opts: &TrainOptions, world: usize) -> StepOptions {
    StepOptions {
        sharding: sharding(opts.shard, world),
        ..opts.step_options()
    }
}

/// The device step's memory for this run, as planned.
pub struct MemoryPlan {
    /// The micro-batch the plan is for (`--mem-target`'s choice, or `--batch`).
    pub batch: usize,
    /// The arena plan at that batch.
    pub plan: Plan,
    /// Bytes the plan may use: free memory, times `--mem-target` when given.
    pub available: u64,
}

/// The step's buffers at `batch`; a model error is kept in `first_error` (the
/// arena's batch search only passes runtime errors along).
fn requests_at(
    cfg: &Config,
    options: StepOptions,
    target: StepTarget,
    batch: usize,
    first_error: &mut Option<ModelError>,
) -> Result<Vec<BufferRequest>, RuntimeError> {
    let planned = Program::plan_only_for(cfg, batch, cfg.seq_len, options, target);
    planned.map(|p| p.requests()).map_err(|e| {
        let text = e.to_string();
        first_error.get_or_insert(e);
        RuntimeError::BadRequest {
            name: "device step".into(),
            reason: text,
        }
    })
}

/// What is live at the loss at `batch`, by arithmetic over the layers.
fn floor_at(
    opts: &TrainOptions,
    options: StepOptions,
    batch: usize,
) -> Result<MemoryFloor, MemoryError> {
    let cfg = &opts.config;
    DeviceModel::memory_floor(cfg, batch, cfg.seq_len, options)
        .map_err(|e| MemoryError::Model(Box::new(e)))
}

/// The largest batch in `1..=max_batch` whose floor fits in `available` (the floor grows
/// with the batch), 0 when not even batch 1's does: no batch above it can fit.
fn largest_floor_that_fits(
    opts: &TrainOptions,
    options: StepOptions,
    max_batch: usize,
    available: u64,
) -> Result<usize, MemoryError> {
    let (mut lo, mut hi) = (0usize, max_batch + 1); // lo fits (0: nothing), hi does not
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if floor_at(opts, options, mid)?.bytes <= available {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Plans one rank's device step memory at `world` ranks (the sharded categories are
/// its share): at `--batch`, or with `--mem-target F` at the largest micro-batch (up to [`MEM_TARGET_MAX_BATCH`]) whose plan fits in F
/// of free memory. Nothing is allocated. A batch whose live set at the loss alone
/// exceeds the memory is refused by arithmetic before any plan is built, so a model
/// of any depth is answered at once.
///
/// # Errors
/// [`MemoryError::DoesNotFit`] (or [`MemoryError::FloorDoesNotFit`]) naming bytes
/// needed and available and the largest batch that fits; [`MemoryError::Model`] for a
/// config the device step cannot run.
pub fn plan_memory(
    device: &Device,
    opts: &TrainOptions,
    world: usize,
) -> Result<MemoryPlan, MemoryError> {
    let cfg = &opts.config;
    let options = step_options(opts, world);
    // The step this device will run (from sm_90 the wgmma kernels' buffers), as
    // `DeviceModel::new_for` builds it with no explicit target.
    let target = StepTarget::of(device);
    let mut model_error = None;
    let available = match opts.mem_target {
        Some(f) => device.mem_budget(f),
        None => device.memory_info().map(|m| m.free),
    }
    .map_err(MemoryError::Runtime)?;
    // The arithmetic floor first: what cannot fit is refused without planning it.
    let asked = match opts.mem_target {
        Some(_) => 1,
        None => opts.batch,
    };
    let floor = floor_at(opts, options, asked)?;
    if floor.bytes > available {
        // For --batch, the largest smaller batch that fits, searched as the planner
        // would (`plan_for_batch`), from below the largest batch whose floor fits.
        let below = asked.saturating_sub(1);
        let largest_batch = match largest_floor_that_fits(opts, options, below, available)? {
            0 => None,
            _ => arena::largest_batch_that_fits(below, available, |b| {
                requests_at(cfg, options, target, b, &mut model_error)
            })
            .ok()
            .map(|(b, _)| b),
        };
        if let Some(e) = model_error {
            return Err(MemoryError::Model(Box::new(e)));
        }
        let error = RuntimeError::OutOfMemory {
            needed: floor.bytes,
            available,
            largest_batch,
            batch: Some(asked),
        };
        return Err(MemoryError::FloorDoesNotFit(Box::new(FloorRefusal {
            floor,
            batch: asked,
            error,
        })));
    }
    let result = match opts.mem_target {
        Some(_) => arena::largest_batch_that_fits(MEM_TARGET_MAX_BATCH, available, |b| {
            requests_at(cfg, options, target, b, &mut model_error)
        }),
        None => arena::plan_for_batch(opts.batch, available, |b| {
            requests_at(cfg, options, target, b, &mut model_error)
        })
        .map(|plan| (opts.batch, plan)),
    };
    if let Some(e) = model_error {
        return Err(MemoryError::Model(Box::new(e)));
    }
    match result {
        Ok((batch, plan)) => Ok(MemoryPlan {
            batch,
            plan: plan.labelled(options.sharding.labels()),
            available,
        }),
        Err(e @ RuntimeError::OutOfMemory { .. }) => Err(MemoryError::DoesNotFit(e)),
        Err(e) => Err(MemoryError::Runtime(e)),
    }
}

/// `--dry-run` on a GPU: the arena plan by category, and what `--mem-target`
/// chose or why the run would not fit.
pub fn dry_run_memory(
    device: &Device,
    opts: &TrainOptions,
    world: usize,
    planned: &Result<MemoryPlan, MemoryError>,
) -> String {
    let options = step_options(opts, world);
    let what = match device.timing_source() {
        TimingSource::Emulated => "emulated GPU",
        _ => "GPU",
    };
    let mut s = format!(
        "memory ({what} step: bf16 weights and activations; fp32 master weights, gradients and AdamW moments; \
         attention {}, dQ {}):\n",
        opts.attention,
        super::options::dq_name(opts.attention_dq)
    );
    s += &format!("{}\n", options.sharding.describe());
    match planned {
        Ok(p) => {
            if let Some(f) = opts.mem_target {
                let free = device.memory_info().map_or_else(
                    |e| format!("free memory unknown: {e}"),
                    |m| format!("{} free", gib(m.free)),
                );
                s += &format!(
                    "--mem-target {f}: batch {} is the largest (up to {MEM_TARGET_MAX_BATCH}) whose plan fits in {} \
                     ({f} x {free})\n",
                    p.batch,
                    gib(p.available),
                );
            }
            s += &indent(&p.plan.breakdown_table());
            s += &format!(
                "fits: the plan needs {} of the {} available\n",
                gib(p.plan.peak_bytes),
                gib(p.available)
            );
        }
        Err(e @ MemoryError::FloorDoesNotFit(refusal)) => {
            let FloorRefusal { floor, batch, .. } = refusal.as_ref();
            // The plan was not built: show what is live at the loss, by category.
            s += &format!(
                "at --batch {batch}, live at the loss alone (by arithmetic over the {} layers; \
                 the whole plan was not built):\n",
                opts.config.n_layers
            );
            for (category, bytes) in &floor.by_category {
                s += &format!(
                    "  {:<13}  {bytes:>20}  {:>11}\n",
                    options
                        .sharding
                        .labels()
                        .iter()
                        .find(|(c, _)| c == category)
                        .map_or(category.as_str(), |(_, l)| l.as_str()),
                    gib(*bytes)
                );
            }
            s += &format!(
                "  {:<13}  {:>20}  {:>11}\n",
                "at least",
                floor.bytes,
                gib(floor.bytes)
            );
            s += &format!("{}\n", e.message(opts.batch, opts.grad_accum));
        }
        Err(e) => {
            // Show the plan at the asked batch even when it does not fit.
            if let Ok(reqs) =
                DeviceModel::requests_with(&opts.config, opts.batch, opts.config.seq_len, options)
            {
                if let Ok(plan) = arena::plan(&reqs) {
                    let plan = plan.labelled(options.sharding.labels());
                    s += &format!("at --batch {}:\n", opts.batch);
                    s += &indent(&plan.breakdown_table());
                }
            }
            s += &format!("{}\n", e.message(opts.batch, opts.grad_accum));
        }
    }
    s
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(flags: &str) -> TrainOptions {
        TrainOptions::from_words(flags).unwrap()
    }

    fn does_not_fit(batch: usize, largest: Option<usize>) -> MemoryError {
        MemoryError::DoesNotFit(RuntimeError::OutOfMemory {
            needed: 3 << 30,
            available: 2 << 30,
            largest_batch: largest,
            batch: Some(batch),
        })
    }

    #[test]
    fn does_not_fit_says_which_batch_to_run_and_keeps_the_sequences_per_step() {
        let o = opts("--batch 200");
        let m = does_not_fit(200, Some(52)).message(o.batch, o.grad_accum);
        // 200 sequences per step at batch 52: 4 micro-batches (208) is closest.
        assert!(m.contains("--batch 52 --grad-accum 4"), "{m}");
        assert!(m.contains("Nothing was allocated"), "{m}");
        // 64 at batch 52: one micro-batch is closer than two.
        let o = opts("--batch 64");
        let m = does_not_fit(64, Some(52)).message(o.batch, o.grad_accum);
        assert!(
            m.contains("--batch 52,") && !m.contains("--grad-accum"),
            "{m}"
        );
        let m = does_not_fit(1, None).message(o.batch, o.grad_accum);
        assert!(m.contains("smaller --model"), "{m}");
    }

    #[test]
    fn emu_plans_the_asked_batch_and_mem_target_a_larger_one() {
        let device = Device::open(DeviceSpec::Emu).unwrap();
        let small = "--layers 1 --hidden 128 --heads 2 --ffn 256 --seq 32 --batch 2";
        let o = opts(small);
        let p = plan_memory(&device, &o, 1)
            .unwrap_or_else(|e| panic!("{}", e.message(o.batch, o.grad_accum)));
        assert_eq!(p.batch, 2);
        assert!(p.plan.peak_bytes > 0 && p.plan.peak_bytes <= p.available);
        // A model of ~0.3M parameters fits the emulator's gigabytes at any batch
        // up to the cap.
        let t = opts(&format!("{small} --mem-target 0.5"));
        let q = plan_memory(&device, &t, 1)
            .unwrap_or_else(|e| panic!("{}", e.message(t.batch, t.grad_accum)));
        assert_eq!(q.batch, MEM_TARGET_MAX_BATCH);
        assert!(q.plan.peak_bytes > p.plan.peak_bytes);
        let text = describe(
            &Target::Gpu {
                device,
                auto: false,
            },
            1,
        );
        assert!(
            text.starts_with("device: emu") && text.contains("emulated"),
            "{text}"
        );
    }

    #[test]
    fn the_steps_shards_are_comms_partition() {
        use frugal_ptx::kernels::adamw::NORM_CHUNK;
        for (n, world) in [
            (300_000, 2),
            (300_000, 3),
            (1_969_027_008, 8),
            (5, 4),
            (65_536, 3),
        ] {
            let s = sharding(ShardMode::GradOp, world);
            let comm = frugal_comm::Shards::new(n, world, NORM_CHUNK);
            for r in 0..world {
                assert_eq!(s.range(n, r), comm.range(r), "{n} {world} {r}");
            }
            assert_eq!(s.max_len(n), comm.range(0).len());
        }
    }

    #[test]
    fn a_head_size_without_kernels_is_a_model_error() {
        // C / NH = 48: no flash kernel for head size 48.
        let device = Device::open(DeviceSpec::Emu).unwrap();
        let o = opts("--layers 1 --hidden 96 --heads 2 --ffn 128 --seq 32 --batch 2");
        match plan_memory(&device, &o, 1) {
            Err(e @ MemoryError::Model(_)) => {
                assert!(
                    e.message(o.batch, o.grad_accum).contains("--device cpu"),
                    "{}",
                    e.message(o.batch, o.grad_accum)
                )
            }
            Err(e) => panic!(
                "expected a model error, got: {}",
                e.message(o.batch, o.grad_accum)
            ),
            Ok(p) => panic!("head size 48 planned at batch {}", p.batch),
        }
    }
}
