//! The ring algorithm on buffers: which slices of the buffer each rank sends
//! and receives, in which order, for each collective ([`Plan`]), and how a
//! buffer is divided between lanes ([`LaneData`]).
//!
//! Each of the `world` chunks ([`chunk_range`]) is cut into slices of at most
//! `slice_bytes`; a slice is one frame on the wire, so while one slice is
//! reduced the next is already in the socket buffer. Reduce-scatter step s
//! sends chunk (r−s−1) mod n and receives chunk (r−s−2) mod n; all-gather step
//! t sends chunk (r−t) mod n and receives chunk (r−t−1) mod n (see `ops.rs` for
//! why this order makes every rank's sum bitwise the same).

use crate::ops::chunk_range;
use std::ops::Range;

/// The buffer a ring schedule covers and how it is cut.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout<'a> {
    pub phases: Phases,
    pub rank: usize,
    /// `world + 1` element offsets: chunk `c` (reduced on rank `c`) is
    /// `bounds[c]..bounds[c + 1]`; the last is the buffer's length.
    pub bounds: &'a [usize],
    pub elem_bytes: usize,
    /// The most bytes of one frame.
    pub slice_bytes: usize,
}

impl Layout<'_> {
    fn world(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }
}

/// The elements of chunk `index` (of `bounds`) that lane `lane` of `lanes`
/// carries: the chunk split as [`chunk_range`] splits a buffer (lanes are
/// parallel rings over disjoint parts of every chunk).
pub(super) fn lane_range(
    bounds: &[usize],
    index: usize,
    lane: usize,
    lanes: usize,
) -> Range<usize> {
    let chunk = bounds[index]..bounds[index + 1];
    let part = chunk_range(chunk.len(), lanes, lane);
    chunk.start + part.start..chunk.start + part.end
}

/// How a received slice combines with the local buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Combine {
    /// Overwrite (all-gather, broadcast).
    Copy,
    /// Add f32 values (reduce-scatter).
    SumF32,
}

/// Which part of the ring a schedule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phases {
    ReduceScatter,
    AllGather,
    Both,
}

/// What one rank sends and receives, in order, for one collective. Ranges are in bytes.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub sends: Vec<Range<usize>>,
    pub recvs: Vec<(Range<usize>, Combine)>,
    /// Send `i` may go once `i < free_sends` or receive `i - free_sends` is done:
    /// what a rank forwards at step s is what it received at step s−1.
    pub free_sends: usize,
}

impl Plan {
    pub fn send_ready(&self, send: usize, recvs_done: usize) -> bool {
        send < self.free_sends || send - self.free_sends < recvs_done
    }

    fn clear(&mut self) {
        self.sends.clear();
        self.recvs.clear();
        self.free_sends = 0;
    }

    /// Cuts `elems` (element range) into slices of at most `slice_elems`, as byte ranges.
    fn push_slices(
        out: &mut Vec<Range<usize>>,
        elems: Range<usize>,
        elem_bytes: usize,
        slice_elems: usize,
    ) -> usize {
        let mut n = 0;
        let mut at = elems.start;
        while at < elems.end {
            let end = (at + slice_elems).min(elems.end);
            out.push(at * elem_bytes..end * elem_bytes);
            at = end;
            n += 1;
        }
        n
    }

    /// The ring schedule of `layout`.
    pub fn ring(&mut self, layout: &Layout) {
        self.ring_lane(layout, 0, 1);
    }

    /// Lane `lane` of `lanes` parallel rings: the same schedule restricted to
    /// part `lane` of every chunk ([`lane_range`]). Each element still travels
    /// the same ring in the same order, so the sums are the ones of [`Plan::ring`].
    pub fn ring_lane(&mut self, layout: &Layout, lane: usize, lanes: usize) {
        let Layout {
            phases,
            rank,
            bounds,
            elem_bytes,
            slice_bytes,
        } = *layout;
        self.clear();
        let n = layout.world();
        let slice_elems = (slice_bytes / elem_bytes).max(1);
        let chunk = |c: isize| lane_range(bounds, c.rem_euclid(n as isize) as usize, lane, lanes);
        let r = rank as isize;
        let mut first_step = true;
        let mut recv_slices = Vec::new();
        if matches!(phases, Phases::ReduceScatter | Phases::Both) {
            for s in 0..(n as isize - 1) {
                let k =
                    Self::push_slices(&mut self.sends, chunk(r - s - 1), elem_bytes, slice_elems);
                if first_step {
                    self.free_sends = k;
                    first_step = false;
                }
                Self::push_slices(&mut recv_slices, chunk(r - s - 2), elem_bytes, slice_elems);
                self.recvs
                    .extend(recv_slices.drain(..).map(|b| (b, Combine::SumF32)));
            }
        }
        if matches!(phases, Phases::AllGather | Phases::Both) {
            for t in 0..(n as isize - 1) {
                let k = Self::push_slices(&mut self.sends, chunk(r - t), elem_bytes, slice_elems);
                if first_step {
                    self.free_sends = k;
                    first_step = false;
                }
                Self::push_slices(&mut recv_slices, chunk(r - t - 1), elem_bytes, slice_elems);
                self.recvs
                    .extend(recv_slices.drain(..).map(|b| (b, Combine::Copy)));
            }
        }
    }

    /// The pipelined chain root → root+1 → … → root−1 over `bytes` bytes.
    pub fn broadcast(
        &mut self,
        rank: usize,
        world: usize,
        root: usize,
        bytes: usize,
        slice_bytes: usize,
    ) {
        self.clear();
        let mut slices = Vec::new();
        Self::push_slices(&mut slices, 0..bytes, 1, slice_bytes.max(1));
        let last = (root + world - 1) % world;
        if rank != root {
            self.recvs
                .extend(slices.iter().cloned().map(|b| (b, Combine::Copy)));
        }
        if rank != last {
            self.sends = slices;
        }
        self.free_sends = if rank == root { self.sends.len() } else { 0 };
    }
}

/// The parts of a collective's buffer that one lane reads and writes: disjoint
/// sub-slices, each with its byte offset in the whole buffer, in order. The
/// plan's byte ranges address the whole buffer; each lies within one part.
pub(super) struct LaneData<'a> {
    parts: Vec<(usize, &'a mut [u8])>,
}

impl<'a> LaneData<'a> {
    pub fn whole(data: &'a mut [u8]) -> LaneData<'a> {
        LaneData {
            parts: vec![(0, data)],
        }
    }

    fn part_of(&self, r: &Range<usize>) -> usize {
        self.parts
            .partition_point(|(start, p)| start + p.len() <= r.start)
            .min(self.parts.len().saturating_sub(1))
    }

    pub fn bytes(&self, r: Range<usize>) -> &[u8] {
        let (start, p) = &self.parts[self.part_of(&r)];
        &p[r.start - start..r.end - start]
    }

    pub fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        let i = self.part_of(&r);
        let (start, p) = &mut self.parts[i];
        &mut p[r.start - *start..r.end - *start]
    }
}

/// Splits a ring collective's buffer (chunks `bounds`, elements of
/// `elem_bytes`) between `lanes` lanes as [`lane_range`] assigns it.
pub(super) fn split_lanes<'a>(
    data: &'a mut [u8],
    bounds: &[usize],
    elem_bytes: usize,
    lanes: usize,
) -> Vec<LaneData<'a>> {
    let world = bounds.len().saturating_sub(1);
    let mut out: Vec<LaneData<'_>> = (0..lanes)
        .map(|_| LaneData {
            parts: Vec::with_capacity(world),
        })
        .collect();
    let mut rest = data;
    let mut offset = 0;
    for c in 0..world {
        for (lane, lane_data) in out.iter_mut().enumerate() {
            let r = lane_range(bounds, c, lane, lanes);
            let bytes = r.len() * elem_bytes;
            let whole = std::mem::take(&mut rest);
            let (head, tail) = whole.split_at_mut(bytes.min(whole.len()));
            lane_data.parts.push((offset, head));
            offset += bytes;
            rest = tail;
        }
    }
    out
}
