//! Whether a checkpoint can resume a run: the model must be the same; the
//! world size and batch may change as long as the global batch does.

use super::Checkpoint;
use crate::config::Config;
use crate::error::{Mismatch, ModelError};

impl Checkpoint {
    /// Checks that this checkpoint can resume a run of model `cfg` on
    /// `world_size` ranks of `batch` windows and `grad_accum` micro-batches
    /// per step. The same ranks and batch resume whatever `grad_accum` (a
    /// changed setting the caller reports). Another world size or batch is
    /// accepted if the global batch (ranks × batch × micro-batches) stays the
    /// same: the data position is global (see [`crate::data`]), so the same
    /// windows make up each step. A file that does not record its micro-batch
    /// count (version 1) must keep both.
    ///
    /// # Errors
    /// [`ModelError::CheckpointMismatch`] listing every field that differs,
    /// with the checkpoint's value and the run's; a different global batch
    /// says which `--batch`/`--grad-accum` would match.
    pub fn check_compatible(
        &self,
        cfg: &Config,
        world_size: usize,
        batch: usize,
        grad_accum: usize,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let mut diffs = Vec::new();
        let mut cmp = |field: &'static str, ck: String, run: String| {
            if ck != run {
                diffs.push(Mismatch {
                    field,
                    checkpoint: ck,
                    run,
                });
            }
        };
        cmp(
            "vocabulary (--vocab)",
            c.vocab_size.to_string(),
            cfg.vocab_size.to_string(),
        );
        cmp(
            "hidden size (--hidden)",
            c.dim.to_string(),
            cfg.dim.to_string(),
        );
        cmp(
            "layers (--layers)",
            c.n_layers.to_string(),
            cfg.n_layers.to_string(),
        );
        cmp(
            "heads (--heads)",
            c.n_heads.to_string(),
            cfg.n_heads.to_string(),
        );
        cmp(
            "kv heads (--kv-heads)",
            c.n_kv_heads.to_string(),
            cfg.n_kv_heads.to_string(),
        );
        cmp(
            "FFN width (--ffn)",
            c.ffn_dim.to_string(),
            cfg.ffn_dim.to_string(),
        );
        cmp(
            "sequence length (--seq)",
            c.seq_len.to_string(),
            cfg.seq_len.to_string(),
        );
        // Bit patterns, so that a NaN or -0.0 cannot compare equal by accident.
        if c.rope_theta.to_bits() != cfg.rope_theta.to_bits() {
            cmp(
                "RoPE theta",
                c.rope_theta.to_string(),
                cfg.rope_theta.to_string(),
            );
        }
        if c.norm_eps.to_bits() != cfg.norm_eps.to_bits() {
            cmp(
                "norm epsilon",
                c.norm_eps.to_string(),
                cfg.norm_eps.to_string(),
            );
        }
        // The same ranks and batch resume as always (a new --grad-accum is a
        // noted change, like a new --lr); another split of the windows must
        // keep the global batch, so that each step takes the same windows.
        let ck_accum = self.provenance.grad_accum;
        let same_split = self.world_size == world_size && self.loader.batch == batch as u64;
        if same_split {
        } else if ck_accum == 0 {
            cmp(
                "ranks x --batch (a version-1 checkpoint does not record --grad-accum, so both must stay)",
                format!("{} x {}", self.world_size, self.loader.batch),
                format!("{world_size} x {batch}"),
            );
        } else {
            let ck_global = (self.world_size as u64)
                .saturating_mul(self.loader.batch)
                .saturating_mul(ck_accum);
            let run_global = (world_size as u64)
                .saturating_mul(batch as u64)
                .saturating_mul(grad_accum as u64);
            if ck_global != run_global {
                diffs.push(Mismatch {
                    field: "global batch (ranks x --batch x --grad-accum)",
                    checkpoint: format!(
                        "{} x {} x {ck_accum} = {ck_global}",
                        self.world_size, self.loader.batch
                    ),
                    run: format!(
                        "{world_size} x {batch} x {grad_accum} = {run_global} ({})",
                        matching_flags(ck_global, world_size)
                    ),
                });
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(ModelError::CheckpointMismatch { diffs })
        }
    }
}

/// The `--batch`/`--grad-accum` pairs that make `global` windows per step on
/// `world` ranks, as advice (the largest batches first, at most three).
fn matching_flags(global: u64, world: usize) -> String {
    let world = world.max(1) as u64;
    if global == 0 || !global.is_multiple_of(world) {
        return format!("no --batch and --grad-accum make {global} on {world} ranks; use a world size that divides it");
    }
    let per_rank = global / world;
    let pairs: Vec<String> = (1..=per_rank)
        .filter(|k| per_rank.is_multiple_of(*k))
        .take(3)
        .map(|k| format!("--batch {} --grad-accum {k}", per_rank / k))
        .collect();
    format!("on {world} ranks {} would match", pairs.join(" or "))
}
