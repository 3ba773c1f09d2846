//! The windows of a split in file order, for evaluation: the same cut as the
//! [`super::loader`] (in every source, window k covers tokens
//! `k·T .. k·T + T + 1` of the split's range, never straddling two sources),
//! but read by index, sources in order, with no shuffle, so an evaluation visits
//! every window exactly once in a fixed, documented order.

use super::{Dataset, Split};
use crate::error::ModelError;

/// Which tokens [`Dataset::windows_in_order`] cuts: one split, or every token
/// of every source (each source's whole range, train and validation together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Split(Split),
    All,
}

impl Scope {
    /// "train", "val" or "all".
    pub fn name(self) -> &'static str {
        match self {
            Scope::Split(s) => s.name(),
            Scope::All => "all",
        }
    }
}

/// The windows of T + 1 tokens of a [`Scope`], numbered 0..len in file order.
#[derive(Debug)]
pub struct OrderedWindows {
    data: Dataset,
    seq: usize,
    /// Per source with at least one window: (index of its first window, source
    /// index, first token of the scope's range in that source).
    segments: Vec<(u64, usize, usize)>,
    len: u64,
    scratch: Vec<u8>,
}

impl Dataset {
    /// The windows of `seq` inputs (T + 1 tokens at stride T) of `scope`, in
    /// file order: sources in the order they were opened, windows in token order.
    ///
    /// # Errors
    /// [`ModelError::LoaderArgs`] for `seq` 0; [`ModelError::NotEnoughTokens`]
    /// when no source holds one whole window of the scope.
    pub fn windows_in_order(&self, scope: Scope, seq: usize) -> Result<OrderedWindows, ModelError> {
        if seq == 0 {
            return Err(ModelError::LoaderArgs {
                what: "seq must be at least 1".into(),
            });
        }
        let mut segments = Vec::new();
        let mut len = 0u64;
        let mut tokens = 0u64;
        let mut largest = 0usize;
        for (i, src) in self.inner.sources.iter().enumerate() {
            let range = match scope {
                Scope::Split(s) => src.range(s),
                // The two ranges of a source are adjacent (train then val, or
                // one of them empty): together they are the whole source.
                Scope::All => src.train.start.min(src.val.start)..src.train.end.max(src.val.end),
            };
            tokens += range.len() as u64;
            largest = largest.max(range.len());
            if range.len() > seq {
                segments.push((len, i, range.start));
                len += ((range.len() - 1) / seq) as u64;
            }
        }
        if len == 0 {
            return Err(ModelError::NotEnoughTokens {
                what: format!("the {} split (largest file {largest} tokens)", scope.name()),
                tokens,
                needed: seq as u64 + 1,
            });
        }
        Ok(OrderedWindows {
            data: self.clone(),
            seq,
            segments,
            len,
            scratch: Vec::new(),
        })
    }
}

impl OrderedWindows {
    /// N: the windows there are.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a scope without a window is refused when it is cut.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes window `index`'s T + 1 tokens into `out`.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] when `out` is not T + 1 long or `index` is
    /// not below [`OrderedWindows::len`]; a data file that shrank or cannot be
    /// read (naming it).
    pub fn read(&mut self, index: u64, out: &mut [u32]) -> Result<(), ModelError> {
        if out.len() != self.seq + 1 {
            return Err(ModelError::ShapeMismatch {
                what: "window buffer",
                expected: self.seq + 1,
                found: out.len(),
            });
        }
        if index >= self.len {
            return Err(ModelError::ShapeMismatch {
                what: "window index (the number of windows)",
                expected: self.len as usize,
                found: index as usize,
            });
        }
        let i = self.segments.partition_point(|s| s.0 <= index) - 1;
        let (first, src, start) = self.segments[i];
        let at = start + (index - first) as usize * self.seq;
        self.data.inner.sources[src]
            .tokens
            .read_to(at, out, &mut self.scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataSpec;

    #[test]
    fn ordered_windows_are_the_loaders_windows_in_file_order() {
        let ds = Dataset::open(&DataSpec::Default, 512).unwrap();
        let t = 16;
        let mut w = ds.windows_in_order(Scope::Split(Split::Val), t).unwrap();
        assert_eq!(w.len(), ds.windows(Split::Val, t));
        // The shuffled loader visits the same set of windows in one epoch.
        let n = w.len() as usize;
        let mut ordered = Vec::new();
        let mut buf = vec![0u32; t + 1];
        for k in 0..n {
            w.read(k as u64, &mut buf).unwrap();
            ordered.push(buf.clone());
        }
        let mut loader = ds.loader(Split::Val, 1, t, 0, 1, 7).unwrap();
        let (mut x, mut y) = (vec![0u32; t], vec![0u32; t]);
        let mut shuffled = Vec::new();
        for _ in 0..n {
            loader.next_batch(&mut x, &mut y).unwrap();
            let mut win = x.clone();
            win.push(y[t - 1]);
            shuffled.push(win);
        }
        assert_ne!(ordered, shuffled, "the loader shuffles");
        ordered.sort();
        shuffled.sort();
        assert_eq!(ordered, shuffled);
        let all = ds.windows_in_order(Scope::All, t).unwrap();
        assert!(all.len() > ds.windows(Split::Train, t));
        assert!(w.read(n as u64, &mut buf).is_err());
    }
}
