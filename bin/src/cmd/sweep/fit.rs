//! Whether a configuration fits, decided before anything runs: the same
//! memory plan `frugal train --dry-run --world D` prints, for one rank.
//! On a GPU each rank has its own device; on the CPU the ranks of one host
//! share its memory, so their plans add up.

use frugal_model::cpu::CpuModel;
use frugal_runtime::device::Device;
use frugal_runtime::RuntimeError;

use crate::error::MemoryError;
use crate::train::options::TrainOptions;
use crate::train::prepare::CpuState;
use crate::train::target;
use crate::units::gib;

/// One configuration's plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// One rank's planned bytes, where a plan was made.
    pub planned: Option<u64>,
    /// What one rank may use.
    pub capacity: Option<u64>,
    /// Why it cannot run: "oom (planned X GiB of Y)", or the planner's error.
    pub refused: Option<Refusal>,
}

/// Why a configuration is not run.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The plan does not fit (recorded as `oom`).
    Oom(String),
    /// The model cannot run there at all (recorded as `failed`).
    Cannot(String),
}

/// The plan of a CPU configuration: `local_ranks` ranks on this host, each
/// holding [`CpuState`] and its activations, against the host's limit.
pub fn cpu(opts: &TrainOptions, world: usize, local_ranks: usize) -> Fit {
    let cfg = &opts.config;
    let per_rank = CpuState::new(opts, world)
        .fixed()
        .saturating_add(CpuModel::activation_bytes_for(cfg, opts.batch, cfg.seq_len) as u64);
    let Some(limit) = frugal_runtime::host::memory_limit() else {
        return Fit {
            planned: Some(per_rank),
            capacity: None,
            refused: None,
        };
    };
    let ranks = local_ranks.max(1) as u64;
    let total = per_rank.saturating_mul(ranks);
    let refused = (total > limit.bytes).then(|| {
        let of = if ranks > 1 {
            format!(" ({ranks} ranks of {} on this host)", gib(per_rank))
        } else {
            String::new()
        };
        Refusal::Oom(format!(
            "oom (planned {}{of} of {})",
            gib(total),
            gib(limit.bytes)
        ))
    });
    Fit {
        planned: Some(per_rank),
        capacity: Some(limit.bytes / ranks),
        refused,
    }
}

/// The plan of a GPU (or emulated) configuration on `device`, one rank of `world`.
pub fn gpu(device: &Device, opts: &TrainOptions, world: usize) -> Fit {
    let oom = |needed: u64, available: u64| Fit {
        planned: Some(needed),
        capacity: Some(available),
        refused: Some(Refusal::Oom(format!(
            "oom (planned {} of {})",
            gib(needed),
            gib(available)
        ))),
    };
    match target::plan_memory(device, opts, world) {
        Ok(p) => Fit {
            planned: Some(p.plan.peak_bytes),
            capacity: Some(p.available),
            refused: None,
        },
        Err(MemoryError::FloorDoesNotFit(r)) => match r.error {
            RuntimeError::OutOfMemory { available, .. } => oom(r.floor.bytes, available),
            other => cannot(other.to_string()),
        },
        Err(MemoryError::DoesNotFit(RuntimeError::OutOfMemory {
            needed, available, ..
        })) => oom(needed, available),
        Err(e) => cannot(e.message(opts.batch, opts.grad_accum)),
    }
}

fn cannot(why: String) -> Fit {
    Fit {
        planned: None,
        capacity: None,
        refused: Some(Refusal::Cannot(why)),
    }
}
