//! Which rank owns which parameters: the one partition of the flat parameter
//! vector that every gradient collective and every sharded optimizer uses.
//!
//! [`Shards`] splits `n` elements over `world` ranks in contiguous pieces whose
//! boundaries are multiples of `align` elements (the last piece ends at `n`).
//! The alignment is the block of the backend's gradient norm (4096 on the CPU,
//! the norm kernel's 65536 on a GPU): each block then lies within one rank's
//! shard, so a rank can sum the squares of its own blocks and the ranks'
//! block sums, gathered, add up in the same order as on one rank — the global
//! norm is the same bits whether the gradients are sharded or not.
//!
//! Every gradient collective (DDP's all-reduce as much as a reduce-scatter)
//! reduces element `i` on its owner: the ring's chunk `c` of a bucket is the
//! bucket's intersection with shard `c` ([`Shards::bounds_in`]). So element
//! `i` is summed in the same order, starting at rank `owner(i) + 1`, in every
//! sharding mode: `--shard none`, `grad-op` and `full` give the same bits.

use std::ops::Range;

use crate::error::CommError;
use crate::ops::chunk_range;
#[cfg(test)]
use crate::ops::{check_bounds, even_bounds};

/// How a data-parallel job shards its model state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardMode {
    /// DDP: every rank holds everything; gradients are all-reduced.
    #[default]
    None,
    /// ZeRO-2 (PyTorch FSDP's SHARD_GRAD_OP): gradients reduce-scattered,
    /// master weights and AdamW moments sharded, weights gathered whole.
    GradOp,
    /// ZeRO-3 (FULL_SHARD): the weights are sharded too, gathered unit by
    /// unit before its forward and again before its backward.
    Full,
}

impl ShardMode {
    /// Every mode, in the order `--shard` lists them.
    pub const ALL: [ShardMode; 3] = [ShardMode::None, ShardMode::GradOp, ShardMode::Full];

    /// The name `--shard` takes.
    pub fn name(self) -> &'static str {
        match self {
            ShardMode::None => "none",
            ShardMode::GradOp => "grad-op",
            ShardMode::Full => "full",
        }
    }

    /// Whether master weights and optimizer state are sharded.
    pub fn shards_optimizer(self) -> bool {
        self != ShardMode::None
    }
}

impl std::fmt::Display for ShardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ShardMode {
    type Err = CommError;
    fn from_str(s: &str) -> Result<ShardMode, CommError> {
        ShardMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| CommError::InvalidArgument {
                what: format!("--shard '{s}' is not one of none, grad-op, full"),
            })
    }
}

/// The ownership partition of a flat vector of `n` elements over `world`
/// ranks, boundaries on multiples of `align`. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    n: usize,
    align: usize,
    /// `world + 1` boundaries: shard `r` is `bounds[r]..bounds[r + 1]`.
    bounds: Vec<usize>,
}

impl Shards {
    /// Splits `n` elements over `world` ranks (at least 1) in blocks of
    /// `align` (at least 1): the blocks are dealt out as [`crate::chunk_range`]
    /// deals elements, the first ranks one block more. Ranks past the last
    /// block get empty shards.
    pub fn new(n: usize, world: usize, align: usize) -> Shards {
        let world = world.max(1);
        let align = align.max(1);
        let blocks = n.div_ceil(align);
        let bounds = (0..=world)
            .map(|r| {
                let start_block = if r == world {
                    blocks
                } else {
                    chunk_range(blocks, world, r).start
                };
                (start_block * align).min(n)
            })
            .collect();
        Shards { n, align, bounds }
    }

    /// Elements in the whole vector.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty vector.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The alignment of the boundaries, in elements.
    pub fn align(&self) -> usize {
        self.align
    }

    /// The flat range rank `rank` owns.
    pub fn range(&self, rank: usize) -> Range<usize> {
        self.bounds[rank]..self.bounds[rank + 1]
    }

    /// The `world + 1` boundaries (shard `r` = `bounds()[r]..bounds()[r + 1]`).
    pub fn bounds(&self) -> &[usize] {
        &self.bounds
    }

    /// The rank that owns element `i` (`i < len()`).
    pub fn owner(&self, i: usize) -> usize {
        self.bounds[1..].partition_point(|&end| end <= i)
    }

    /// The `world + 1` boundaries, relative to `flat.start`, of `flat`'s
    /// intersection with each shard: the chunks a collective over a buffer
    /// holding `flat` must use so that each element is reduced on its owner.
    pub fn bounds_in(&self, flat: Range<usize>) -> Vec<usize> {
        self.bounds
            .iter()
            .map(|&b| b.clamp(flat.start, flat.end.max(flat.start)) - flat.start)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_aligned_cover_everything_and_name_their_owner() {
        for (n, world, align) in [
            (10_000, 3, 4096),
            (5, 4, 4096),
            (65_537, 2, 65_536),
            (12, 4, 1),
            (0, 2, 8),
        ] {
            let s = Shards::new(n, world, align);
            assert_eq!(s.bounds().len(), world + 1);
            assert_eq!(s.range(0).start, 0);
            assert_eq!(s.range(world - 1).end, n);
            for r in 0..world {
                let range = s.range(r);
                assert!(
                    range.start.is_multiple_of(align) || range.start == n,
                    "{n} {world} {align}: {range:?}"
                );
                for i in range.clone() {
                    assert_eq!(s.owner(i), r);
                }
            }
        }
        // 3 blocks over 2 ranks: the first rank gets two.
        assert_eq!(Shards::new(10_000, 2, 4096).bounds(), &[0, 8192, 10_000]);
    }

    #[test]
    fn bounds_in_clips_to_the_buffer() {
        let s = Shards::new(100, 4, 10); // 30, 30, 20, 20
        assert_eq!(s.bounds(), &[0, 30, 60, 80, 100]);
        assert_eq!(s.bounds_in(25..70), vec![0, 5, 35, 45, 45]);
        assert_eq!(s.bounds_in(0..100), vec![0, 30, 60, 80, 100]);
        assert_eq!(s.bounds_in(90..100), vec![0, 0, 0, 0, 10]);
    }

    #[test]
    fn modes_round_trip_by_name() {
        for m in ShardMode::ALL {
            assert_eq!(m.name().parse::<ShardMode>().ok(), Some(m));
        }
        let e = "zero3"
            .parse::<ShardMode>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("none, grad-op, full"), "{e}");
    }

    #[test]
    fn bounds_are_checked() {
        assert!(check_bounds(&[0, 3, 5], 5, 2, 0).is_ok());
        assert!(check_bounds(&[0, 6, 5], 5, 2, 0).is_err());
        assert!(check_bounds(&[0, 5], 5, 2, 0).is_err());
        assert!(check_bounds(&[1, 3, 5], 5, 2, 0).is_err());
        assert_eq!(even_bounds(5, 2), vec![0, 3, 5]);
    }
}
