//! RoPE, rotary position embedding, in place on q (N, NH·HS) or k (N, NKV·HS).
//!
//! Convention (shared with the f64 reference and the GPU kernels): within each
//! head, channels (2i, 2i+1), i in 0..HS/2, are a pair rotated by the angle
//! `pos · theta^(−2i/HS)`, pos = t in 0..T (every sequence starts at 0):
//! `y[2i] = x[2i]·cos − x[2i+1]·sin`, `y[2i+1] = x[2i]·sin + x[2i+1]·cos`.
//! The backward rotates the gradient by the opposite angle (a rotation's
//! transpose is its inverse). Both overwrite their input.

use super::par;

/// cos and sin of every (pos, pair) angle, computed in f64 and rounded once.
pub struct RopeTable {
    /// (T, HS/2)
    cos: Vec<f32>,
    /// (T, HS/2)
    sin: Vec<f32>,
    half: usize,
    seq: usize,
}

impl RopeTable {
    /// The table for positions 0..seq and head size `head_dim` (even): the GPU step's
    /// own ([`frugal_ptx::kernels::rope::table`]), so both backends rotate by the same bits.
    pub fn new(seq: usize, head_dim: usize, theta: f64) -> RopeTable {
        let (cos, sin) = frugal_ptx::kernels::rope::table(seq, head_dim, theta);
        RopeTable {
            cos,
            sin,
            half: head_dim / 2,
            seq,
        }
    }

    /// Rotates every head of every row of x (N, width) by ±angle(pos, pair), the
    /// row at index `row` being at position `(first_pos + row) % T`.
    fn apply(
        &self,
        x: &mut [f32],
        width: usize,
        first_pos: usize,
        direction: Direction,
        threads: usize,
    ) {
        let rows = x.len() / width;
        let hs = 2 * self.half;
        par::split1(threads, rows, x, width, |range, x| {
            for (i, row) in range.enumerate() {
                let pos = (first_pos + row) % self.seq;
                let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
                let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
                for head in x[i * width..(i + 1) * width].chunks_exact_mut(hs) {
                    for (p, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (c, s) = match direction {
                            Direction::Forward => (cos[p], sin[p]),
                            Direction::Backward => (cos[p], -sin[p]),
                        };
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
            }
        });
    }

    /// Rotates x (N, width) in place by +angle; width is a multiple of HS.
    pub fn forward(&self, x: &mut [f32], width: usize, threads: usize) {
        self.apply(x, width, 0, Direction::Forward, threads);
    }

    /// Rotates x (N, width) in place by +angle, its rows at positions
    /// `first_pos, first_pos + 1, ..` (below T): one sequence continued, as a
    /// decoder with a KV cache feeds it new tokens.
    pub fn forward_from(&self, x: &mut [f32], width: usize, first_pos: usize, threads: usize) {
        self.apply(x, width, first_pos, Direction::Forward, threads);
    }

    /// Rotates the gradient dx (N, width) in place by −angle.
    pub fn backward(&self, dx: &mut [f32], width: usize, threads: usize) {
        self.apply(dx, width, 0, Direction::Backward, threads);
    }
}

/// Which way to rotate: by +angle (forward) or −angle (the gradient).
#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}
