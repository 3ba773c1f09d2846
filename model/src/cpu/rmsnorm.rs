//! RMSNorm: `y = x · rstd · g`, `rstd = 1/√(mean(x²) + eps)` per row.
//! Shapes: x, y (N, C) with N = B·T; rstd (N); g (C).
//! Forward overwrites y and rstd. Backward adds into dx (the residual stream's
//! gradient it joins), or writes dx as a given residual gradient plus its own, and
//! adds into dg (a parameter gradient).
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

/// The gradients [`rmsnorm_backward`] writes.
#[derive(Debug)]
pub struct RmsNormGrads<'a> {
    /// (N, C) the input's gradient: the residual stream's, which the norm's joins.
    pub dx: &'a mut [f32],
    /// (C) the gain's gradient, a parameter gradient: added into.
    pub dg: &'a mut [f32],
    /// (N, C) where given, dx is overwritten with `residual + ∂L/∂x` (the stream's
    /// gradient from above, read where it is rather than first copied into dx: the
    /// same additions); else ∂L/∂x is added into dx.
    pub residual: Option<&'a [f32]>,
}

/// dx (=residual|+=) ∂L/∂x and dg += ∂L/∂g for dy = ∂L/∂y: with x̂ = x·rstd,
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
    let chunks = rstd.len().div_ceil(ROW_CHUNK);
    if let Some(res) = grads.residual {
        assert_eq!(res.len(), grads.dx.len(), "the residual is dx's shape");
    }
    PARTIAL.with(|cell| {
        let mut partial = cell.borrow_mut();
        partial.clear();
        partial.resize(chunks * c, 0.0);
        backward_rows(grads, dy, x, rstd, g, c, threads, &mut partial);
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
    grads: RmsNormGrads,
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    g: &[f32],
    c: usize,
    threads: usize,
    partial: &mut [f32],
) {
    let RmsNormGrads { dx, dg, residual } = grads;
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
            let mine = first_row * c..first_row * c + dx.len();
            let task = Chunk {
                dx,
                residual: residual.map(|r| &r[mine]),
                partial,
                dy: &dy[first_row * c..],
                x: &x[first_row * c..],
                rstd: &rstd[first_row..rows.min(first_row + range.len() * ROW_CHUNK)],
                g,
                c,
            };
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: avx512() saw the feature on this CPU.
                return unsafe { chunk_rows_avx512(task) };
            }
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: avx2() saw the feature on this CPU.
                return unsafe { chunk_rows_avx2(task) };
            }
            chunk_rows(task)
        },
    );
    for pg in partial.chunks_exact(c) {
        for (d, p) in dg.iter_mut().zip(pg) {
            *d += p;
        }
    }
}

/// One task's whole chunks of rows: its rows of dx (and of the residual), a partial
/// of dg per chunk, and the inputs from the task's first row.
struct Chunk<'a> {
    dx: &'a mut [f32],
    residual: Option<&'a [f32]>,
    partial: &'a mut [f32],
    dy: &'a [f32],
    x: &'a [f32],
    rstd: &'a [f32],
    g: &'a [f32],
    c: usize,
}

/// Rows whose dot products advance together: each is one running sum over the row in
/// order (its bits), and eight independent chains hide the adds' latency where one
/// chain per row waited on each add.
const DOT_ROWS: usize = 8;

#[inline(always)]
fn chunk_rows(task: Chunk) {
    let Chunk {
        dx,
        residual,
        partial,
        dy,
        x,
        rstd,
        g,
        c,
    } = task;
    let g = &g[..c];
    let mut dots = [0.0f32; DOT_ROWS];
    for (row, &r) in rstd.iter().enumerate() {
        let in_group = row % DOT_ROWS;
        if in_group == 0 {
            let n = DOT_ROWS.min(rstd.len() - row);
            dots = if n == DOT_ROWS {
                row_dots::<DOT_ROWS>(g, &dy[row * c..], &x[row * c..])
            } else {
                let mut d = [0.0f32; DOT_ROWS];
                for (i, di) in d.iter_mut().enumerate().take(n) {
                    *di = row_dots::<1>(g, &dy[(row + i) * c..], &x[(row + i) * c..])[0];
                }
                d
            };
        }
        let (xr, dyr) = (&x[row * c..(row + 1) * c], &dy[row * c..(row + 1) * c]);
        // mean(g⊙dy⊙x̂) = rstd·dot/C.
        let coef = r * r * dots[in_group] / c as f32;
        let dxr = &mut dx[row * c..(row + 1) * c];
        let pg = &mut partial[(row / ROW_CHUNK) * c..][..c];
        let terms = g.iter().zip(dyr).zip(xr);
        match residual {
            Some(res) => {
                let res = &res[row * c..(row + 1) * c];
                for (((d, p), &base), ((&g, &dy), &x)) in
                    dxr.iter_mut().zip(pg.iter_mut()).zip(res).zip(terms)
                {
                    *d = base + r * (g * dy - x * coef);
                    *p += dy * x * r;
                }
            }
            None => {
                for ((d, p), ((&g, &dy), &x)) in dxr.iter_mut().zip(pg.iter_mut()).zip(terms) {
                    *d += r * (g * dy - x * coef);
                    *p += dy * x * r;
                }
            }
        }
    }
}

/// Σ_k g[k]·dy[k]·x[k] of R consecutive rows (width g.len()), each in k order.
#[inline(always)]
fn row_dots<const R: usize>(g: &[f32], dy: &[f32], x: &[f32]) -> [f32; R] {
    let c = g.len();
    let (dy, x) = (&dy[..R * c], &x[..R * c]);
    let mut dots = [0.0f32; R];
    for (k, &gk) in g.iter().enumerate() {
        for (r, d) in dots.iter_mut().enumerate() {
            *d += gk * dy[r * c + k] * x[r * c + k];
        }
    }
    dots
}

/// [`chunk_rows`] compiled for one instruction set: Rust never fuses a multiply and an
/// add, so every copy gives the same bits.
macro_rules! simd_copy {
    ($name:ident, $feature:literal) => {
        /// # Safety
        /// The CPU must have the copy's instruction set.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(task: Chunk) {
            chunk_rows(task)
        }
    };
}

simd_copy!(chunk_rows_avx2, "avx2");
simd_copy!(chunk_rows_avx512, "avx512f");

/// Whether this CPU runs the AVX2 copy.
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// Whether this CPU runs the AVX-512 copy.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward one row at a time in plain scalar code, dg's partials by chunk:
    /// the arithmetic every copy and thread count must reproduce bit for bit.
    fn backward_plain(
        dx: &mut [f32],
        dg: &mut [f32],
        dy: &[f32],
        x: &[f32],
        rstd: &[f32],
        g: &[f32],
    ) {
        let c = g.len();
        for chunk in rstd
            .chunks(ROW_CHUNK)
            .enumerate()
            .map(|(i, r)| i * ROW_CHUNK..i * ROW_CHUNK + r.len())
        {
            let mut pg = vec![0.0f32; c];
            for row in chunk {
                let (xr, dyr, r) = (&x[row * c..][..c], &dy[row * c..][..c], rstd[row]);
                let mut dot = 0.0f32;
                for k in 0..c {
                    dot += g[k] * dyr[k] * xr[k];
                }
                let coef = r * r * dot / c as f32;
                for k in 0..c {
                    dx[row * c + k] += r * (g[k] * dyr[k] - xr[k] * coef);
                    pg[k] += dyr[k] * xr[k] * r;
                }
            }
            dg.iter_mut().zip(&pg).for_each(|(d, p)| *d += p);
        }
    }

    #[test]
    fn the_backward_has_the_plain_rows_bits_on_any_threads_with_or_without_a_residual() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Rows past whole chunks and past whole groups of dot rows; widths off the lanes.
        for (rows, c) in [(1, 8), (7, 13), (45, 40), (70, 64), (33, 100)] {
            let wave = |n: usize, f: f32| {
                (0..n)
                    .map(|i| (i as f32 * f).sin() * 2.0)
                    .collect::<Vec<f32>>()
            };
            let (x, dy, g, base) = (
                wave(rows * c, 0.31),
                wave(rows * c, 0.17),
                wave(c, 0.7),
                wave(rows * c, 0.05),
            );
            let rstd = wave(rows, 1.3)
                .iter()
                .map(|v| 1.0 + v.abs())
                .collect::<Vec<f32>>();
            let (mut want_dx, mut want_dg) = (base.clone(), wave(c, 0.9));
            backward_plain(&mut want_dx, &mut want_dg, &dy, &x, &rstd, &g);
            for threads in 1..=3 {
                for in_place in [true, false] {
                    let mut dg = wave(c, 0.9);
                    let mut dx = if in_place {
                        base.clone()
                    } else {
                        vec![f32::NAN; rows * c]
                    };
                    let grads = RmsNormGrads {
                        dx: &mut dx,
                        dg: &mut dg,
                        residual: if in_place { None } else { Some(&base) },
                    };
                    rmsnorm_backward(grads, &dy, &x, &rstd, &g, c, threads);
                    let what = format!("{rows}x{c}, {threads} threads, in place {in_place}");
                    assert_eq!(bits(&dx), bits(&want_dx), "dx {what}");
                    assert_eq!(bits(&dg), bits(&want_dg), "dg {what}");
                }
            }
        }
    }
}
