//! The static cut of the flat gradient vector into buckets, the set of ranges
//! handed over in one step, and what a ring collective sends.

use std::ops::Range;

/// Fixed buckets of `size` elements cut from the top of `0..n`: bucket 0
/// ends at `n` (backward finishes the end of the vector first, so it fills
/// first), the last bucket starts at 0 and may be shorter. Decided once, the
/// same on every rank, whatever ranges the backward pass hands over.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    n: usize,
    size: usize,
    count: usize,
}

impl Layout {
    pub fn new(n: usize, size: usize) -> Layout {
        let size = size.max(1);
        Layout {
            n,
            size,
            count: n.div_ceil(size),
        }
    }

    /// Number of buckets.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The flat range of bucket `b` (`b < count()`).
    pub fn range(&self, b: usize) -> Range<usize> {
        let end = self.n - b * self.size;
        end.saturating_sub(self.size)..end
    }

    /// The buckets a non-empty `range` within `0..n` touches, top first.
    pub fn touching(&self, range: &Range<usize>) -> Range<usize> {
        self.of(range.end - 1)..self.of(range.start) + 1
    }

    fn of(&self, i: usize) -> usize {
        (self.n - 1 - i) / self.size
    }
}

/// The ranges handed over this step: sorted, disjoint, adjacent ones merged
/// (backward hands them over top down, so this stays a handful of ranges and
/// keeps its allocation from step to step).
#[derive(Debug, Default)]
pub(super) struct Marked {
    ranges: Vec<Range<usize>>,
}

impl Marked {
    /// Adds the non-empty range `r`, or returns the marked range it overlaps.
    pub fn insert(&mut self, r: Range<usize>) -> Result<(), Range<usize>> {
        let i = self.ranges.partition_point(|m| m.end <= r.start);
        if let Some(m) = self.ranges.get(i) {
            if m.start < r.end {
                return Err(m.clone());
            }
        }
        let joins_prev = i > 0 && self.ranges[i - 1].end == r.start;
        let joins_next = i < self.ranges.len() && self.ranges[i].start == r.end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].end = self.ranges[i].end;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].end = r.end,
            (false, true) => self.ranges[i].start = r.start,
            (false, false) => self.ranges.insert(i, r),
        }
        Ok(())
    }

    /// The parts of `0..n` not marked, top first, into `out` (cleared first).
    pub fn gaps(&self, n: usize, out: &mut Vec<Range<usize>>) {
        out.clear();
        let mut end = n;
        for m in self.ranges.iter().rev() {
            if m.end < end {
                out.push(m.end..end);
            }
            end = m.start;
        }
        if end > 0 {
            out.push(0..end);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

/// Bytes this rank sends in a ring collective over chunks `bounds` (in
/// elements of `elem_bytes`): the reduce-scatter sends every chunk but the
/// rank's own (step s sends chunk r−s−1), the all-gather every chunk but
/// chunk r+1's (step t sends chunk r−t); an all-reduce does both. NCCL's own
/// algorithms may send otherwise; this is what frugal's ring sends.
pub(super) fn ring_sent_bytes(
    bounds: &[usize],
    rank: usize,
    reduce_scatter: bool,
    all_gather: bool,
    elem_bytes: usize,
) -> usize {
    let world = bounds.len().saturating_sub(1);
    if world < 2 {
        return 0;
    }
    let total = bounds[world];
    let chunk = |c: usize| bounds[c + 1] - bounds[c];
    let mut sent = 0;
    if reduce_scatter {
        sent += total - chunk(rank);
    }
    if all_gather {
        sent += total - chunk((rank + 1) % world);
    }
    sent * elem_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cut_from_the_top_and_cover_everything() {
        let l = Layout::new(10, 4);
        assert_eq!(l.count(), 3);
        assert_eq!(
            (0..3).map(|b| l.range(b)).collect::<Vec<_>>(),
            vec![6..10, 2..6, 0..2]
        );
        assert_eq!(l.touching(&(5..7)), 0..2);
        assert_eq!(l.touching(&(0..10)), 0..3);
        assert_eq!(l.touching(&(9..10)), 0..1);
        assert_eq!(l.touching(&(0..1)), 2..3);
        assert_eq!(Layout::new(0, 4).count(), 0);
        assert_eq!(Layout::new(8, 4).range(1), 0..4);
    }

    #[test]
    fn marked_ranges_merge_refuse_overlaps_and_leave_gaps() {
        let mut m = Marked::default();
        assert_eq!(m.insert(8..10), Ok(()));
        assert_eq!(m.insert(5..8), Ok(()));
        assert_eq!(m.insert(1..2), Ok(()));
        assert_eq!(m.insert(2..3), Ok(()));
        assert_eq!(m.ranges, vec![1..3, 5..10]);
        assert_eq!(m.insert(4..6), Err(5..10));
        assert_eq!(m.insert(0..2), Err(1..3));
        assert_eq!(m.insert(9..11), Err(5..10));
        let mut gaps = Vec::new();
        m.gaps(12, &mut gaps);
        assert_eq!(gaps, vec![10..12, 3..5, 0..1]);
        assert_eq!(m.insert(3..5), Ok(()));
        assert_eq!(m.ranges, vec![1..10]);
        m.clear();
        m.gaps(4, &mut gaps);
        assert_eq!(gaps, vec![0..4]);
    }

    #[test]
    fn a_ring_sends_all_but_one_chunk_per_phase() {
        // Chunks of 3, 0, 5 elements.
        let b = [0, 3, 3, 8];
        assert_eq!(ring_sent_bytes(&b, 0, true, false, 4), 5 * 4);
        assert_eq!(ring_sent_bytes(&b, 0, false, true, 4), 8 * 4);
        assert_eq!(ring_sent_bytes(&b, 2, true, true, 1), 3 + 5);
        assert_eq!(ring_sent_bytes(&[0, 8], 0, true, true, 4), 0);
    }
}
