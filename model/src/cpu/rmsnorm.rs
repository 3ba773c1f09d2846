//! RMSNorm: `y = x · rstd · g`, `rstd = 1/√(mean(x²) + eps)` per row.
//! Shapes: x, y (N, C) with N = B·T; rstd (N); g (C).
//! Forward overwrites y and rstd. Backward adds into dx (the residual stream's
//! gradient it joins) and into dg (a parameter gradient).
//!
//! dg is a sum over rows: rows are cut into fixed chunks of [`ROW_CHUNK`], each
//! chunk's partial sum is computed by one thread, and the partials are added in
//! chunk order — the same bits for any thread count.

use super::par;

/// Rows per partial sum of dg.
const ROW_CHUNK: usize = 32;

/// y, rstd = rmsnorm(x, g) over rows of width `c`.
pub fn rmsnorm_forward(
    y: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    g: &[f32],
    c: usize,
    eps: f32,
    threads: usize,
) {
    let rows = rstd.len();
    par::split2(threads, rows, y, c, rstd, 1, |range, y, rstd| {
        for (i, row) in range.enumerate() {
            let xr = &x[row * c..(row + 1) * c];
            let ms = sum_sq(xr) / c as f32;
            let r = 1.0 / (ms + eps).sqrt();
            rstd[i] = r;
            for ((y, &x), &g) in y[i * c..(i + 1) * c].iter_mut().zip(xr).zip(g) {
                *y = x * r * g;
            }
        }
    });
}

/// The gradients [`rmsnorm_backward`] adds into.
#[derive(Debug)]
pub struct RmsNormGrads<'a> {
    /// (N, C) the input's gradient: the residual stream's, which the norm's joins.
    pub dx: &'a mut [f32],
    /// (C) the gain's gradient, a parameter gradient.
    pub dg: &'a mut [f32],
}

/// dx += ∂L/∂x and dg += ∂L/∂g for dy = ∂L/∂y: with x̂ = x·rstd,
/// dx = rstd·(g⊙dy − x̂·mean(g⊙dy⊙x̂)), dg = Σ_rows dy⊙x̂.
pub fn rmsnorm_backward(
    grads: RmsNormGrads,
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    g: &[f32],
    c: usize,
    threads: usize,
) {
    let RmsNormGrads { dx, dg } = grads;
    let chunks = rstd.len().div_ceil(ROW_CHUNK);
    PARTIAL.with(|cell| {
        let mut partial = cell.borrow_mut();
        partial.clear();
        partial.resize(chunks * c, 0.0);
        backward_rows(dx, dg, dy, x, rstd, g, c, threads, &mut partial);
    });
}

thread_local! {
    /// The per-chunk gain-gradient partials, reused across calls: at a step's shapes they
    /// are above the allocator's mmap threshold, so a fresh vector per call was a fresh
    /// mapping and its page faults, 17 times per step.
    static PARTIAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn backward_rows(
    dx: &mut [f32],
    dg: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    g: &[f32],
    c: usize,
    threads: usize,
    partial: &mut [f32],
) {
    let rows = rstd.len();
    par::split2(
        threads,
        rows.div_ceil(ROW_CHUNK),
        dx,
        ROW_CHUNK * c,
        partial,
        c,
        |range, dx, partial| {
            let first_row = range.start * ROW_CHUNK;
            for (ci, chunk) in range.enumerate() {
                let pg = &mut partial[ci * c..(ci + 1) * c];
                for row in chunk * ROW_CHUNK..((chunk + 1) * ROW_CHUNK).min(rows) {
                    let local = row - first_row;
                    let (xr, dyr) = (&x[row * c..(row + 1) * c], &dy[row * c..(row + 1) * c]);
                    let r = rstd[row];
                    let mut dot = 0.0f32;
                    for k in 0..c {
                        dot += g[k] * dyr[k] * xr[k];
                    }
                    // mean(g⊙dy⊙x̂) = rstd·dot/C.
                    let coef = r * r * dot / c as f32;
                    let dxr = &mut dx[local * c..(local + 1) * c];
                    for k in 0..c {
                        dxr[k] += r * (g[k] * dyr[k] - xr[k] * coef);
                        pg[k] += dyr[k] * xr[k] * r;
                    }
                }
            }
        },
    );
    for pg in partial.chunks_exact(c) {
        for (d, p) in dg.iter_mut().zip(pg) {
            *d += p;
        }
    }
}

/// Σ x² with eight independent lanes (vectorisable; fixed order).
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for j in 0..8 {
            lanes[j] += ch[j] * ch[j];
        }
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        lanes[j] += v * v;
    }
    lanes.iter().sum()
}
