//! Embedding launchers (`ptx/kernels/embedding.ptx`): token lookup and its gradient.
//!
//! Forward: `out[i] = table[tokens[i]]`; tokens (N) u32, table (V, C) bf16, out (N, C)
//! bf16; overwrites out; one block of [`ROW_BLOCK`] threads per position; 16-byte copies
//! when C % 8 == 0 and table/out are 16-byte aligned, 2-byte copies otherwise. A token >= V
//! traps (tokens are checked when loaded; see [`GradIndex::build`] for the host check).
//!
//! Backward: `dtable[tok] += dout[i]` for every position i with token tok, ACCUMULATING
//! into the f32 table gradient (V, C). Deterministic without atomics through per-row
//! ownership: [`GradIndex::build`] groups positions by token on the host (the batch's tokens
//! are there before the step); one block per distinct token adds its positions in
//! increasing order, the CPU backend's order. Work O(N*C); no shared memory.

use super::{check_aligned, check_positive, dims_1d, to_u32, KernelSpec, Launch, ROW_BLOCK};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// `embedding_fwd(tokens, table, out, c, v)`.
pub static EMBEDDING_FWD: KernelSpec = KernelSpec {
    module: "embedding",
    kernel: "embedding_fwd",
    params: &[
        ("tokens", Ptr),
        ("table", Ptr),
        ("out", Ptr),
        ("c", U32),
        ("v", U32),
    ],
};

/// `embedding_bwd(rows, offsets, positions, dout, dtable, c)`.
pub static EMBEDDING_BWD: KernelSpec = KernelSpec {
    module: "embedding",
    kernel: "embedding_bwd",
    params: &[
        ("rows", Ptr),
        ("offsets", Ptr),
        ("positions", Ptr),
        ("dout", Ptr),
        ("dtable", Ptr),
        ("c", U32),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&EMBEDDING_FWD, &EMBEDDING_BWD];

/// The batch's positions grouped by token, the backward's ownership index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradIndex {
    /// The distinct tokens, increasing (U).
    pub rows: Vec<u32>,
    /// `positions[offsets[j]..offsets[j + 1]]` are the positions of `rows[j]` (U + 1).
    pub offsets: Vec<u32>,
    /// Positions 0..N grouped by token, increasing within a group (N).
    pub positions: Vec<u32>,
}

impl GradIndex {
    /// Groups the positions of `tokens` by token (a stable counting sort, O(N + U log U)).
    ///
    /// # Errors
    /// `BadLaunch` if a token is >= `v` or there are 2^32 positions or more.
    pub fn build(tokens: &[u32], v: usize) -> Result<GradIndex, PtxError> {
        let spec = &EMBEDDING_BWD;
        to_u32(spec, "N", tokens.len())?;
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= v) {
            return Err(spec.bad(format!(
                "token {t} at position {i} is outside the vocabulary of {v}"
            )));
        }
        let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
        // Stable: positions of one token stay increasing.
        order.sort_by_key(|&p| tokens[p as usize]);
        let mut rows = Vec::new();
        let mut offsets = Vec::new();
        for (k, &p) in order.iter().enumerate() {
            let t = tokens[p as usize];
            if rows.last() != Some(&t) {
                rows.push(t);
                offsets.push(k as u32);
            }
        }
        offsets.push(order.len() as u32);
        Ok(GradIndex {
            rows,
            offsets,
            positions: order,
        })
    }
}

/// out (n, c) = table (v, c) rows at `tokens` (n).
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn forward(
    tokens: u64,
    table: u64,
    out: u64,
    n: usize,
    c: usize,
    v: usize,
) -> Result<Launch, PtxError> {
    let spec = &EMBEDDING_FWD;
    for (what, x) in [("N", n), ("C", c), ("V", v)] {
        check_positive(spec, what, x)?;
    }
    let (n, c32, v32) = (
        to_u32(spec, "N", n)?,
        to_u32(spec, "C", c)?,
        to_u32(spec, "V", v)?,
    );
    check_aligned(spec, "tokens", tokens, 4)?;
    check_aligned(spec, "table", table, 2)?;
    check_aligned(spec, "out", out, 2)?;
    spec.launch(
        dims_1d(n, ROW_BLOCK),
        &[
            Arg::Ptr(tokens),
            Arg::Ptr(table),
            Arg::Ptr(out),
            Arg::U32(c32),
            Arg::U32(v32),
        ],
    )
}

/// dtable (v, c) f32 += dout (n, c) grouped by `index`, whose three arrays were uploaded
/// to `rows`, `offsets` and `positions`; `distinct` is `index.rows.len()`.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn backward(
    rows: u64,
    offsets: u64,
    positions: u64,
    dout: u64,
    dtable: u64,
    distinct: usize,
    c: usize,
) -> Result<Launch, PtxError> {
    let spec = &EMBEDDING_BWD;
    check_positive(spec, "distinct tokens", distinct)?;
    check_positive(spec, "C", c)?;
    let (u, c32) = (
        to_u32(spec, "distinct tokens", distinct)?,
        to_u32(spec, "C", c)?,
    );
    for (what, p) in [
        ("rows", rows),
        ("offsets", offsets),
        ("positions", positions),
        ("dtable", dtable),
    ] {
        check_aligned(spec, what, p, 4)?;
    }
    check_aligned(spec, "dout", dout, 2)?;
    spec.launch(
        dims_1d(u, ROW_BLOCK),
        &[
            Arg::Ptr(rows),
            Arg::Ptr(offsets),
            Arg::Ptr(positions),
            Arg::Ptr(dout),
            Arg::Ptr(dtable),
            Arg::U32(c32),
        ],
    )
}
