//! `--profile FILE...`: the compute time of a configuration from `frugal profile --json`
//! (every kernel of the step emulated with counters, on the roofline of each of its
//! `--gpu`s), where a profile covers it: the same model, GPU type, per-rank batch and
//! attention, unsharded (the step `frugal profile` runs is one rank's DDP step).
//!
//! The profile gives kernel times by kernel, not by phase; the plan needs forward and
//! backward apart (the communication hides behind backward), so the profile's total is
//! split in the proportions of the plan's own per-operation model. The total is the sum
//! of the profile's kernel times, exactly; compute- and memory-bound shares are the
//! profile's kernels' bounds.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use frugal_comm::ShardMode;

use super::compute::{floor_by_family, Family, StepCompute};
use super::{memory, Grid};
use crate::error::CliError;

/// What `frugal profile --json` writes that the plan reads.
#[derive(Deserialize)]
struct ProfileFile {
    predicted: bool,
    model: String,
    parameters: usize,
    batch: usize,
    seq: usize,
    grad_accum: usize,
    attention: String,
    gpus: Vec<ProfileGpu>,
}

#[derive(Deserialize)]
struct ProfileGpu {
    gpu: String,
    kernels: Vec<ProfileKernel>,
}

#[derive(Deserialize)]
struct ProfileKernel {
    kernel: String,
    predicted_s: f64,
    bound: String,
}

/// One GPU's step of one profile.
#[derive(Clone, Debug)]
pub struct ProfiledStep {
    /// `FILE` (the GPU's label follows in tables).
    pub source: String,
    pub model: String,
    pub batch: usize,
    pub attention: String,
    /// The GPU's label (`H100-SXM-80GB`).
    pub gpu: String,
    /// Sum of the kernels' predicted times.
    pub total_s: f64,
    /// Of it, kernels bound by DRAM or L2.
    pub memory_bound_s: f64,
    /// Of it, by [`Family`] (in [`Family::ALL`]'s order).
    pub family_s: [f64; 4],
    /// The plan's roofline floor of the same step, by family.
    pub floor_s: [f64; 4],
}

impl ProfiledStep {
    /// The efficiency factors this profile implies: its time over the floor, by family
    /// (1 for a family the step does not have).
    pub fn implied_factors(&self) -> [f64; 4] {
        let mut out = [1.0; 4];
        for (i, x) in out.iter_mut().enumerate() {
            if self.floor_s[i] > 0.0 && self.family_s[i] > 0.0 {
                *x = self.family_s[i] / self.floor_s[i];
            }
        }
        out
    }
}

/// The family of one of `frugal profile`'s kernel names.
pub fn kernel_family(kernel: &str) -> Family {
    if kernel.starts_with("matmul") {
        Family::Matmul
    } else if kernel.starts_with("flash_attn_fwd") {
        Family::FlashForward
    } else if kernel.starts_with("flash_attn_bwd") {
        Family::FlashBackward
    } else {
        Family::Elementwise
    }
}

/// Reads every profile of `files`, refusing one that covers no configuration of `grid`.
///
/// # Errors
/// A file that cannot be read or is not `frugal profile --json` output: exit 1 naming it
/// (and the line and column of a JSON error). A profile of another model (a model not in
/// `--model`, or with other dimensions than its preset's, or of another sequence length or
/// with gradient accumulation), of GPUs none of which is in `--gpus`, or of an attention
/// or batch not in the grid: exit 2 naming the file and what differs.
pub fn read_all(files: &[PathBuf], grid: &Grid) -> Result<Vec<ProfiledStep>, CliError> {
    let mut out = Vec::new();
    for path in files {
        out.extend(read(path, grid)?);
    }
    Ok(out)
}

fn read(path: &Path, grid: &Grid) -> Result<Vec<ProfiledStep>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        action: "read the profile",
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |e: serde_json::Error| CliError::ProfileFile {
        path: path.to_path_buf(),
        line: e.line(),
        why: e.to_string(),
    };
    let p: ProfileFile = serde_json::from_str(&text).map_err(bad)?;
    let refuse =
        |why: String| CliError::usage(format!("plan: --profile {}: {why}", path.display()));
    if !p.predicted {
        return Err(refuse(
            "the file does not say its times are predicted".into(),
        ));
    }
    let model = grid
        .models
        .iter()
        .find(|m| m.preset.name == p.model)
        .ok_or_else(|| {
            refuse(format!(
                "a profile of model {}, not one of --model ({})",
                p.model,
                grid.models
                    .iter()
                    .map(|m| m.preset.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let cfg = model.preset.config();
    if p.parameters != cfg.param_count() || p.seq != cfg.seq_len || p.grad_accum != 1 {
        return Err(refuse(format!(
            "a profile of {} with {} parameters, seq {} and grad-accum {}; the plan predicts \
             the preset ({} parameters, seq {}) without accumulation: profile it without \
             shape flags",
            p.model,
            p.parameters,
            p.seq,
            p.grad_accum,
            cfg.param_count(),
            cfg.seq_len
        )));
    }
    let attention_in_grid = grid.attentions.iter().any(|a| a.name() == p.attention);
    if !attention_in_grid || !grid.batches.contains(&p.batch) {
        return Err(refuse(format!(
            "a profile of batch {} with {} attention, which --batch and --attention do not \
             include",
            p.batch, p.attention
        )));
    }
    let Some(attention) = grid
        .attentions
        .iter()
        .copied()
        .find(|a| a.name() == p.attention)
    else {
        return Err(refuse(format!(
            "attention {} is not in --attention",
            p.attention
        )));
    };
    let program = memory::program(&p.model, &cfg, p.batch, attention, ShardMode::None, 1)?;
    let steps: Vec<ProfiledStep> = p
        .gpus
        .iter()
        .filter_map(|g| {
            let facts = grid
                .gpus
                .iter()
                .find_map(|mine| mine.facts().filter(|f| f.label == g.gpu))?;
            Some((g, facts.roofline?))
        })
        .map(|(g, roofline)| {
            let mut step = ProfiledStep {
                source: path.display().to_string(),
                model: p.model.clone(),
                batch: p.batch,
                attention: p.attention.clone(),
                gpu: g.gpu.clone(),
                total_s: 0.0,
                memory_bound_s: 0.0,
                family_s: [0.0; 4],
                floor_s: floor_by_family(&program, &roofline),
            };
            for k in &g.kernels {
                step.total_s += k.predicted_s;
                if k.bound == "dram" || k.bound == "l2" {
                    step.memory_bound_s += k.predicted_s;
                }
                step.family_s[kernel_family(&k.kernel) as usize] += k.predicted_s;
            }
            step
        })
        .collect();
    if steps.is_empty() {
        return Err(refuse(format!(
            "a profile of {}, none of which is in --gpus",
            p.gpus
                .iter()
                .map(|g| g.gpu.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(bad) = steps
        .iter()
        .find(|s| !(s.total_s.is_finite() && s.total_s > 0.0))
    {
        return Err(refuse(format!("no kernel time for {}", bad.gpu)));
    }
    Ok(steps)
}

/// The profiled step of (model, GPU label, batch, attention), if one was given.
pub fn find<'a>(
    steps: &'a [ProfiledStep],
    model: &str,
    gpu: &str,
    batch: usize,
    attention: &str,
) -> Option<&'a ProfiledStep> {
    steps
        .iter()
        .find(|s| s.model == model && s.gpu == gpu && s.batch == batch && s.attention == attention)
}

/// The plan's step with the profile's time: the profile's total split over forward,
/// backward and optimizer as `model` splits its own, the bounds the profile's.
pub fn apply(model: &StepCompute, profiled: &ProfiledStep) -> StepCompute {
    let scale = profiled.total_s / model.total_s();
    StepCompute {
        forward_s: model.forward_s * scale,
        backward_s: model.backward_s * scale,
        // The remainder, so that the phases sum to the profile's total.
        optimizer_s: profiled.total_s - model.forward_s * scale - model.backward_s * scale,
        compute_bound_s: profiled.total_s - profiled.memory_bound_s,
        memory_bound_s: profiled.memory_bound_s,
        tensor_flops: model.tensor_flops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_fall_into_their_families() {
        assert_eq!(kernel_family("matmul_tc_128x64x32_nt_bf16"), Family::Matmul);
        assert_eq!(kernel_family("matmul_splitk_reduce_f32"), Family::Matmul);
        assert_eq!(kernel_family("flash_attn_fwd_hs64"), Family::FlashForward);
        assert_eq!(
            kernel_family("flash_attn_bwd_dq_hs64"),
            Family::FlashBackward
        );
        assert_eq!(
            kernel_family("flash_attn_bwd_preprocess"),
            Family::FlashBackward
        );
        assert_eq!(kernel_family("adamw"), Family::Elementwise);
        assert_eq!(kernel_family("rmsnorm_fwd_residual"), Family::Elementwise);
    }
}
