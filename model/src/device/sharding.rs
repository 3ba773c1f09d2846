//! How one rank's step holds the model state of a sharded data-parallel job:
//! the plan's side of `frugal_comm::ShardMode` and `frugal_comm::Shards`.
//!
//! The model crate does not depend on the communication crate (it plans and
//! runs one rank; the bin wires ranks together), so the step carries its own
//! small description of the sharding and the bin maps `--shard` onto it. The
//! shard arithmetic here is `Shards::new(n, world, NORM_CHUNK)`'s, repeated
//! (the bin's tests check that the two agree): the flat parameter vector is
//! dealt out in blocks of [`NORM_CHUNK`] elements, the first ranks one block
//! more, so every shard starts on a norm chunk and rank 0's is the largest.

use std::ops::Range;

use frugal_ptx::kernels::adamw::NORM_CHUNK;
use frugal_runtime::arena::Category;

use crate::config::ParamLayout;

/// Which model state a rank holds only its shard of (`--shard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardState {
    /// DDP: everything whole on every rank.
    #[default]
    None,
    /// ZeRO-2: f32 master weights and both AdamW moments sharded; bf16 weights
    /// and f32 gradients whole.
    GradOp,
    /// ZeRO-3: the bf16 weights sharded too, each unit's gathered into one of
    /// two buffers (alternating) before its first use in each pass.
    Full,
}

/// The sharding of the step: the mode and the number of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharding {
    pub mode: ShardState,
    /// Ranks of the job (at least 1).
    pub world: usize,
}

impl Default for Sharding {
    /// Not sharded, one rank.
    fn default() -> Sharding {
        Sharding {
            mode: ShardState::None,
            world: 1,
        }
    }
}

impl Sharding {
    /// `mode` over `world` ranks (0 is taken as 1).
    pub fn new(mode: ShardState, world: usize) -> Sharding {
        Sharding {
            mode,
            world: world.max(1),
        }
    }

    /// Whether master weights and moments are sharded (at more than one rank).
    pub fn shards_optimizer(&self) -> bool {
        self.mode != ShardState::None && self.world > 1
    }

    /// Whether the bf16 weights are sharded too.
    pub fn shards_weights(&self) -> bool {
        self.mode == ShardState::Full && self.world > 1
    }

    /// The flat range rank `rank` owns of `n` parameters: `Shards::new(n,
    /// world, NORM_CHUNK).range(rank)`. The whole vector when nothing is sharded.
    pub fn range(&self, n: usize, rank: usize) -> Range<usize> {
        if !self.shards_optimizer() {
            return 0..n;
        }
        shard_range(n, self.world, NORM_CHUNK, rank)
    }

    /// Elements of the largest shard (rank 0's), what every rank's arena holds
    /// for a sharded buffer so that all ranks plan the same arena.
    pub fn max_len(&self, n: usize) -> usize {
        self.range(n, 0).len()
    }

    /// How the breakdown names the sharded categories, e.g. "master (shard 1/8)".
    pub fn labels(&self) -> Vec<(Category, String)> {
        let w = self.world;
        let mut out = Vec::new();
        if self.shards_optimizer() {
            out.push((Category::MasterWeights, format!("master (shard 1/{w})")));
            out.push((Category::OptimizerMoments, format!("moments (shard 1/{w})")));
        }
        if self.shards_weights() {
            out.push((
                Category::Params,
                format!("params (shard 1/{w} + 2 gathered units)"),
            ));
        }
        out
    }

    /// One line on what the sharding keeps per rank, for `--dry-run` and `frugal arena`:
    /// the model state's bytes per parameter (bf16 weights, f32 master weights and both
    /// moments) and what the whole f32 gradients add.
    pub fn describe(&self) -> String {
        let w = self.world as f64;
        let (mode, weights, optim) = match (self.mode, self.world) {
            (ShardState::None, _) | (_, 1) => ("none", 2.0, 12.0),
            (ShardState::GradOp, _) => ("grad-op", 2.0, 12.0 / w),
            (ShardState::Full, _) => ("full", 2.0 / w, 12.0 / w),
        };
        let weights_text = if self.shards_weights() {
            format!("bf16 weights 2/{} (+ two gathered units)", self.world)
        } else {
            "bf16 weights 2".to_string()
        };
        let optim_text = if self.shards_optimizer() {
            format!("master weights and AdamW moments 12/{}", self.world)
        } else {
            "master weights and AdamW moments 12".to_string()
        };
        format!(
            "shard {mode} over {} rank(s), the plan of one rank: model state {:.3} bytes per \
             parameter ({weights_text} + {optim_text}); the f32 gradients add 4 (whole on \
             every rank: micro-batches accumulate locally, bitwise as DDP)",
            self.world,
            weights + optim
        )
    }
}

/// `Shards::new(n, world, align).range(rank)` (the comm crate's partition).
pub fn shard_range(n: usize, world: usize, align: usize, rank: usize) -> Range<usize> {
    let world = world.max(1);
    let align = align.max(1);
    let blocks = n.div_ceil(align);
    let start_block = |r: usize| {
        let (base, extra) = (blocks / world, blocks % world);
        r * base + r.min(extra)
    };
    let start = (start_block(rank) * align).min(n);
    let end = if rank + 1 >= world {
        n
    } else {
        (start_block(rank + 1) * align).min(n)
    };
    start..end.max(start)
}

/// The units `--shard full` gathers one at a time: the embedding, each layer, and
/// the final norm with the LM head (in the order the forward uses them).
pub fn units(layout: &ParamLayout, n_layers: usize) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(n_layers + 2);
    out.push(layout.tok_embedding().range());
    for l in 0..n_layers {
        out.push(layout.layer_range(l));
    }
    let (fnorm, lm) = (layout.final_norm(), layout.lm_head());
    out.push(fnorm.offset..lm.offset + lm.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_start_on_norm_chunks_cover_everything_and_rank_0_is_largest() {
        for (n, world) in [(10_000, 3), (300_000, 2), (300_000, 3), (65_537, 2), (5, 4)] {
            let s = Sharding::new(ShardState::GradOp, world);
            let mut next = 0;
            for r in 0..world {
                let range = s.range(n, r);
                assert_eq!(range.start, next, "{n} {world}");
                assert!(range.start.is_multiple_of(NORM_CHUNK) || range.start == n);
                assert!(range.len() <= s.max_len(n));
                next = range.end;
            }
            assert_eq!(next, n);
        }
        // 5 chunks over 2 ranks: 3 and 2.
        let s = Sharding::new(ShardState::GradOp, 2);
        assert_eq!(s.range(5 * NORM_CHUNK - 7, 1).start, 3 * NORM_CHUNK);
        assert_eq!(Sharding::default().range(100, 0), 0..100);
        assert_eq!(Sharding::new(ShardState::GradOp, 1).max_len(100), 100);
    }
}
