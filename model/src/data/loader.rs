//! The order in which windows of T + 1 tokens reach each rank, and the state a
//! checkpoint needs to continue that order exactly.
//!
//! A split is cut into windows: in every source, window k covers tokens
//! `k·T .. k·T + T + 1` of the split's range (consecutive windows share one
//! token, the last target of one being the first input of the next), so no
//! window straddles two files. Epoch e orders the N windows by a Fisher–Yates
//! shuffle drawn from `Rng::fork(seed ^ DATA_STREAM, e)`. Positions
//! `0, 1, 2, …` run through epoch 0's order, then epoch 1's, without end; a
//! global step takes `world·B` consecutive positions and rank r the `B` from
//! offset `r·B`. The position count is the whole state: restoring it (on any
//! rank) continues the same sequence bit for bit.

use std::sync::Arc;

use super::{windows_per_source, Inner, Split};
use crate::error::ModelError;
use crate::rng::Rng;

/// Mixed into the seed so the data order is independent of other users of the
/// same seed (weight init, dropout-like noise).
const DATA_STREAM: u64 = 0xDA7A_0DE5_5EED_0001;

/// The validation order's fixed seed: every run measures validation loss on the
/// same windows, whatever its training seed.
const VAL_SEED: u64 = 0x0000_7A11_DA7E_5EED;

/// Where a loader is in its endless sequence of windows; everything needed to
/// continue it, plus the geometry it belongs to (checked on restore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderState {
    pub split: Split,
    /// The seed the order is drawn from (the fixed validation seed for `Val`).
    pub seed: u64,
    /// Windows taken so far by all ranks together.
    pub consumed: u64,
    /// N: windows in one epoch.
    pub windows_per_epoch: u64,
    /// B: windows per rank per step.
    pub batch: u64,
    /// T: inputs per window.
    pub seq: u64,
    pub world: u64,
}

/// Yields (B, T) input and target batches for one rank.
#[derive(Debug)]
pub struct Loader {
    data: Arc<Inner>,
    split: Split,
    batch: usize,
    seq: usize,
    rank: usize,
    world: usize,
    seed: u64,
    /// Per source that has at least one window: (index of its first window,
    /// source index, first token of the split's range).
    segments: Vec<(u64, usize, usize)>,
    n_windows: u64,
    consumed: u64,
    /// The epoch whose order `order` holds.
    order_epoch: Option<u64>,
    order: Vec<u32>,
    /// One window's T + 1 tokens, and the file bytes they are read from.
    window_tokens: Vec<u32>,
    window_bytes: Vec<u8>,
}

impl Loader {
    pub(crate) fn new(
        data: Arc<Inner>,
        split: Split,
        batch: usize,
        seq: usize,
        rank: usize,
        world: usize,
        seed: u64,
    ) -> Result<Loader, ModelError> {
        if batch == 0 || seq == 0 {
            return Err(ModelError::LoaderArgs {
                what: format!("batch ({batch}) and seq ({seq}) must be at least 1"),
            });
        }
        if world == 0 || rank >= world {
            return Err(ModelError::LoaderArgs {
                what: format!("rank {rank} is not below the world size {world}"),
            });
        }
        let mut segments = Vec::new();
        let mut n_windows = 0u64;
        for (i, w) in windows_per_source(&data, split, seq)
            .into_iter()
            .enumerate()
        {
            if w > 0 {
                segments.push((n_windows, i, data.sources[i].range(split).start));
                n_windows += w;
            }
        }
        if n_windows == 0 {
            let tokens: u64 = data
                .sources
                .iter()
                .map(|s| s.range(split).len() as u64)
                .sum();
            return Err(ModelError::NotEnoughTokens {
                what: format!(
                    "the {} split (largest file {} tokens)",
                    split.name(),
                    largest(&data, split)
                ),
                tokens,
                needed: seq as u64 + 1,
            });
        }
        if n_windows > u32::MAX as u64 {
            return Err(ModelError::LoaderArgs {
                what: format!(
                    "{n_windows} windows of {seq} tokens is more than 2^32; use a longer --seq"
                ),
            });
        }
        let seed = match split {
            Split::Train => seed,
            Split::Val => VAL_SEED,
        };
        Ok(Loader {
            data,
            split,
            batch,
            seq,
            rank,
            world,
            seed,
            segments,
            n_windows,
            consumed: 0,
            order_epoch: None,
            order: Vec::new(),
            window_tokens: vec![0; seq + 1],
            window_bytes: Vec::new(),
        })
    }

    /// Fills `inputs` and `targets` (B·T each, row-major (B, T)) with this
    /// rank's next B windows; `targets[b·T + t]` is the token after
    /// `inputs[b·T + t]`. Advances the global position by world·B.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] when a buffer is not B·T long;
    /// [`ModelError::DataFileShrunk`] when a data file was truncated since it
    /// was opened, [`ModelError::Io`] when it cannot be read (both name the
    /// file). The position does not advance on an error.
    pub fn next_batch(
        &mut self,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), ModelError> {
        let (b, t) = (self.batch, self.seq);
        for (what, buf) in [("input batch", &*inputs), ("target batch", &*targets)] {
            if buf.len() != b * t {
                return Err(ModelError::ShapeMismatch {
                    what,
                    expected: b * t,
                    found: buf.len(),
                });
            }
        }
        let first = self.consumed + (self.rank * b) as u64;
        for row in 0..b {
            let (src, start) = self.window(first + row as u64);
            // One read per window: its T + 1 tokens are the row's inputs and,
            // shifted by one, its targets.
            self.data.sources[src].tokens.read_to(
                start,
                &mut self.window_tokens,
                &mut self.window_bytes,
            )?;
            inputs[row * t..(row + 1) * t].copy_from_slice(&self.window_tokens[..t]);
            targets[row * t..(row + 1) * t].copy_from_slice(&self.window_tokens[1..]);
        }
        self.consumed += (self.world * b) as u64;
        Ok(())
    }

    /// The source and first token of the window at global position `pos`.
    fn window(&mut self, pos: u64) -> (usize, usize) {
        let epoch = pos / self.n_windows;
        if self.order_epoch != Some(epoch) {
            self.order.clear();
            self.order.extend(0..self.n_windows as u32);
            Rng::fork(self.seed ^ DATA_STREAM, epoch).shuffle(&mut self.order);
            self.order_epoch = Some(epoch);
        }
        let w = self.order[(pos % self.n_windows) as usize] as u64;
        // The last segment whose first window is <= w.
        let i = self.segments.partition_point(|s| s.0 <= w) - 1;
        let (first_window, src, start) = self.segments[i];
        (src, start + (w - first_window) as usize * self.seq)
    }

    /// The position, for a checkpoint.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            split: self.split,
            seed: self.seed,
            consumed: self.consumed,
            windows_per_epoch: self.n_windows,
            batch: self.batch as u64,
            seq: self.seq as u64,
            world: self.world as u64,
        }
    }

    /// Continues from a saved position. The state must come from a loader over
    /// the same data, split, seed and T (any rank). B and the world size may
    /// differ from the saver's: the position counts windows of all ranks, so
    /// a run whose ranks × B × micro-batches equals the saver's takes the same
    /// windows at each step, split differently over ranks. The position must
    /// fall on a whole batch of this loader (world·B windows).
    ///
    /// # Errors
    /// [`ModelError::LoaderStateMismatch`] naming the first field that differs.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), ModelError> {
        let split_id = |s: Split| match s {
            Split::Train => 0,
            Split::Val => 1,
        };
        let checks = [
            (
                "split (0 train, 1 val)",
                split_id(state.split),
                split_id(self.split),
            ),
            ("seed", state.seed, self.seed),
            (
                "windows per epoch (the data changed)",
                state.windows_per_epoch,
                self.n_windows,
            ),
            ("seq", state.seq, self.seq as u64),
        ];
        for (field, saved, current) in checks {
            if saved != current {
                return Err(ModelError::LoaderStateMismatch {
                    field,
                    saved,
                    current,
                });
            }
        }
        // The saver's windows per step were a multiple of its world·B; a
        // position that is not one of this loader's would start its ranks
        // mid-batch: another global batch (the caller checks it, knowing the
        // micro-batch counts).
        let per_batch = (self.world * self.batch) as u64;
        if !state.consumed.is_multiple_of(per_batch) {
            return Err(ModelError::LoaderStateMismatch {
                field: "windows per batch (ranks x --batch; the position must be a multiple)",
                saved: state.world.saturating_mul(state.batch),
                current: per_batch,
            });
        }
        self.consumed = state.consumed;
        Ok(())
    }

    /// Training tokens (targets) in one epoch: N windows × T.
    pub fn tokens_per_epoch(&self) -> u64 {
        self.n_windows * self.seq as u64
    }

    /// N: windows in one epoch.
    pub fn windows_per_epoch(&self) -> u64 {
        self.n_windows
    }

    /// The epoch the next batch starts in (0-based).
    pub fn epoch(&self) -> u64 {
        self.consumed / self.n_windows
    }
}

fn largest(data: &Inner, split: Split) -> usize {
    data.sources
        .iter()
        .map(|s| s.range(split).len())
        .max()
        .unwrap_or(0)
}
