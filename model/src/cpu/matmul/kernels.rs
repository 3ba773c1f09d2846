//! The register-tile micro-kernels and the packing of A and B panels for them.
//!
//! A micro-kernel computes one MR×nr tile of a block's product over kc, starting from
//! zero, and then writes it into C (first depth block: [`Accumulate::Overwrite`]) or
//! adds it to C (`c + tile`, one rounding), straight from its registers when the tile is
//! whole and through a small buffer at the edges: the same operations either way, so an
//! edge element has the bits it would have inside. The AVX2 and AVX-512 kernels have the
//! same structure (two vectors of B per k, MR broadcasts of A, 2·MR accumulators, one
//! FMA per multiply-add, k in order), so they give the same bits; only their width
//! differs (16 and 32 columns).

use super::{Accumulate, Kernel, View, MR, NR_MAX};

/// Where a tile goes: C's top-left element of the tile at `c[0]`, row stride `ldc`;
/// only `rows`×`cols` of the MR×nr tile exist in C.
pub(super) struct TileOut<'c> {
    pub c: &'c mut [f32],
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub acc: Accumulate,
}

/// C tile (=|+=) Σ_kk apanel[kk] ⊗ bpanel[kk] over kc, with the kernel's width nr.
///
/// # Panics
/// If a panel is shorter than kc·MR or kc·nr, the tile's extent is out of range or
/// C too short for it (programming errors).
pub(super) fn micro_kernel(
    kernel: Kernel,
    kc: usize,
    apanel: &[f32],
    bpanel: &[f32],
    out: TileOut,
) {
    let nr = kernel.nr();
    assert!(apanel.len() >= kc * MR && bpanel.len() >= kc * nr);
    assert!(out.rows >= 1 && out.rows <= MR && out.cols >= 1 && out.cols <= nr);
    assert!(out.c.len() >= (out.rows - 1) * out.ldc + out.cols);
    assert!(out.ldc >= out.cols);
    match kernel {
        Kernel::Portable => {
            let mut tile = [0.0f32; MR * NR_MAX];
            kernel_portable(kc, apanel, bpanel, &mut tile);
            write_tile(&tile, NR_PORTABLE, out);
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` asserted the CPU has AVX2 and FMA for this kernel; the
        // panels hold kc·MR and kc·16 elements and C the tile's extent (asserted above).
        Kernel::Avx2Fma => unsafe { kernel_avx2_fma(kc, apanel.as_ptr(), bpanel.as_ptr(), out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` asserted the CPU has AVX-512F for this kernel; the panels
        // hold kc·MR and kc·32 elements and C the tile's extent (asserted above).
        Kernel::Avx512 => unsafe { kernel_avx512(kc, apanel.as_ptr(), bpanel.as_ptr(), out) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => unreachable!("x86 kernels are never available here"),
    }
}

/// Writes the valid part of a row-major tile of width `nr` into C.
fn write_tile(tile: &[f32; MR * NR_MAX], nr: usize, out: TileOut) {
    let TileOut {
        c,
        ldc,
        rows,
        cols,
        acc,
    } = out;
    for i in 0..rows {
        let crow = &mut c[i * ldc..i * ldc + cols];
        let trow = &tile[i * nr..i * nr + cols];
        match acc {
            Accumulate::Overwrite => crow.copy_from_slice(trow),
            Accumulate::Add => crow.iter_mut().zip(trow).for_each(|(c, t)| *c += t),
        }
    }
}

/// Depths per iteration of the FMA kernels' inner loop.
const UNROLL: usize = 4;

/// Asks for the tile's rows of C in L1 before the kernel's depth loop, so that the
/// write (or read-add-write) at its end does not wait on memory: C's rows are far
/// apart (a weight gradient's C is revisited once per depth block, long evicted).
/// Only hints: nothing is read here, and an address is never dereferenced.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_tile(out: &TileOut, nr: usize) {
    let p = out.c.as_ptr();
    let cols = out.cols.min(nr);
    for i in 0..out.rows {
        prefetch_row(p.wrapping_add(i * out.ldc), cols);
    }
}

/// Asks for one row of a tile, `cols` floats from `row`, in L1 (a hint, as above).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_row(row: *const f32, cols: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: prefetch is a hint that never faults; the addresses are C's own.
    unsafe {
        // A row of the tile spans at most two (AVX2) or three (AVX-512) 64-byte lines.
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(cols / 2) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(cols - 1) as *const i8);
    }
}

/// Depths between the AVX-512 kernel's prefetches of C's rows.
const PREFETCH_EVERY: usize = 16;

/// Portable 6×16 tile.
const NR_PORTABLE: usize = 16;

fn kernel_portable(kc: usize, apanel: &[f32], bpanel: &[f32], tile: &mut [f32; MR * NR_MAX]) {
    let mut acc = [[0.0f32; NR_PORTABLE]; MR];
    for (ap, bp) in apanel
        .chunks_exact(MR)
        .zip(bpanel.chunks_exact(NR_PORTABLE))
        .take(kc)
    {
        for i in 0..MR {
            for j in 0..NR_PORTABLE {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for i in 0..MR {
        tile[i * NR_PORTABLE..(i + 1) * NR_PORTABLE].copy_from_slice(&acc[i]);
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a` must point at `kc·MR` and `b` at `kc·16`
/// readable f32s; `out` must be checked as [`micro_kernel`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_fma(kc: usize, a: *const f32, b: *const f32, out: TileOut) {
    const NR: usize = 16;
    use std::arch::x86_64::*;
    prefetch_tile(&out, NR);
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    // One depth: two vectors of B, MR broadcasts of A, 2·MR FMAs.
    let step = |c: &mut [[__m256; 2]; MR], kk: usize| {
        // SAFETY: kk < kc, so the NR floats at b + kk·NR and the MR floats at
        // a + kk·MR are inside the panels (caller's contract).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (i, ci) in c.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(kk * MR + i));
                ci[0] = _mm256_fmadd_ps(ai, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(ai, b1, ci[1]);
            }
        }
    };
    // Four depths per iteration (a quarter of the loop's counter and branch work);
    // the same operations in the same order as one at a time.
    let whole = kc / UNROLL * UNROLL;
    for k4 in (0..whole).step_by(UNROLL) {
        step(&mut c, k4);
        step(&mut c, k4 + 1);
        step(&mut c, k4 + 2);
        step(&mut c, k4 + 3);
    }
    for kk in whole..kc {
        step(&mut c, kk);
    }
    if out.cols == NR {
        let p = out.c.as_mut_ptr();
        for (i, ci) in c.iter().enumerate().take(out.rows) {
            // SAFETY: C holds (rows−1)·ldc + NR elements from p (checked by the caller):
            // row i < rows has its NR at i·ldc.
            unsafe {
                let row = p.add(i * out.ldc);
                let (v0, v1) = match out.acc {
                    Accumulate::Overwrite => (ci[0], ci[1]),
                    Accumulate::Add => (
                        _mm256_add_ps(_mm256_loadu_ps(row), ci[0]),
                        _mm256_add_ps(_mm256_loadu_ps(row.add(8)), ci[1]),
                    ),
                };
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            }
        }
        return;
    }
    let mut tile = [0.0f32; MR * NR_MAX];
    for (i, ci) in c.iter().enumerate() {
        // SAFETY: tile has MR·32 ≥ MR·NR floats; row i's 16 start at i·NR.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), ci[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), ci[1]);
        }
    }
    write_tile(&tile, NR, out);
}

/// # Safety
/// The CPU must support AVX-512F; `a` must point at `kc·MR` and `b` at `kc·32`
/// readable f32s; `out` must be checked as [`micro_kernel`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, a: *const f32, b: *const f32, out: TileOut) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    // C's rows asked for one at a time through the depth loop where it is deep enough,
    // rather than all eighteen lines at its start (paired in one process, 2 threads,
    // the step's nine products at N = 2048: 1–3.5% faster, none slower; likely because
    // eighteen misses outstanding at once hold line-fill buffers that the stream of A
    // from L2 also needs). Not measured on an AVX2 machine, so its kernel is as it was.
    let spread = kc >= PREFETCH_EVERY * out.rows;
    if !spread {
        prefetch_tile(&out, NR);
    }
    let c_rows = (out.c.as_ptr(), out.ldc, out.rows, out.cols.min(NR));
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    // One depth: two vectors of B, MR broadcasts of A, 2·MR FMAs.
    let step = |c: &mut [[__m512; 2]; MR], kk: usize| {
        // SAFETY: kk < kc, so the NR floats at b + kk·NR and the MR floats at
        // a + kk·MR are inside the panels (caller's contract).
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for (i, ci) in c.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(kk * MR + i));
                ci[0] = _mm512_fmadd_ps(ai, b0, ci[0]);
                ci[1] = _mm512_fmadd_ps(ai, b1, ci[1]);
            }
        }
    };
    // Four depths per iteration, as in the AVX2 kernel.
    let whole = kc / UNROLL * UNROLL;
    for k4 in (0..whole).step_by(UNROLL) {
        if spread && k4 % PREFETCH_EVERY == 0 && k4 / PREFETCH_EVERY < c_rows.2 {
            prefetch_row(
                c_rows.0.wrapping_add(k4 / PREFETCH_EVERY * c_rows.1),
                c_rows.3,
            );
        }
        step(&mut c, k4);
        step(&mut c, k4 + 1);
        step(&mut c, k4 + 2);
        step(&mut c, k4 + 3);
    }
    for kk in whole..kc {
        step(&mut c, kk);
    }
    if out.cols == NR {
        let p = out.c.as_mut_ptr();
        for (i, ci) in c.iter().enumerate().take(out.rows) {
            // SAFETY: C holds (rows−1)·ldc + NR elements from p (checked by the caller):
            // row i < rows has its NR at i·ldc.
            unsafe {
                let row = p.add(i * out.ldc);
                let (v0, v1) = match out.acc {
                    Accumulate::Overwrite => (ci[0], ci[1]),
                    Accumulate::Add => (
                        _mm512_add_ps(_mm512_loadu_ps(row), ci[0]),
                        _mm512_add_ps(_mm512_loadu_ps(row.add(16)), ci[1]),
                    ),
                };
                _mm512_storeu_ps(row, v0);
                _mm512_storeu_ps(row.add(16), v1);
            }
        }
        return;
    }
    let mut tile = [0.0f32; MR * NR_MAX];
    for (i, ci) in c.iter().enumerate() {
        // SAFETY: tile has MR·NR floats; row i's 32 start at i·NR.
        unsafe {
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), ci[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), ci[1]);
        }
    }
    write_tile(&tile, NR, out);
}

/// Packs the top-left mc × kc block of `a` (the caller offsets the view to the
/// block) into MR-row panels: `apack[p·kc·MR + kk·MR + i]`, rows past `mc` zero.
pub(super) fn pack_a(a: View, mc: usize, kc: usize, apack: &mut [f32]) {
    for (p, ir) in (0..mc).step_by(MR).enumerate() {
        let panel = &mut apack[p * kc * MR..(p + 1) * kc * MR];
        let rows = MR.min(mc - ir);
        if rows < MR {
            panel.iter_mut().for_each(|x| *x = 0.0);
        }
        if a.cs == 1 && rows == MR {
            // Row-major A, a whole panel: MR contiguous rows read side by side, each
            // panel line written whole.
            let r: [&[f32]; MR] = std::array::from_fn(|i| &a.data[(ir + i) * a.rs..][..kc]);
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has AVX2 (checked); each row holds kc floats and the
                // panel kc·MR (sliced above).
                done = unsafe { transpose_rows_avx2(&r, kc, panel) };
            }
            for (kk, line) in panel.chunks_exact_mut(MR).enumerate().skip(done) {
                for i in 0..MR {
                    line[i] = r[i][kk];
                }
            }
        } else if a.cs == 1 {
            for i in 0..rows {
                let src = &a.data[(ir + i) * a.rs..][..kc];
                for (kk, &x) in src.iter().enumerate() {
                    panel[kk * MR + i] = x;
                }
            }
        } else if a.rs == 1 {
            // Column-major A (a transposed row-major matrix): MR contiguous values per column.
            // A whole panel copies MR floats per depth as a fixed-size array, which the
            // compiler inlines (a variable-length copy is a memcpy call per depth).
            if rows == MR {
                for (kk, line) in panel.chunks_exact_mut(MR).enumerate() {
                    let src: &[f32; MR] = a.data[ir + kk * a.cs..][..MR]
                        .try_into()
                        .expect("MR floats");
                    line.copy_from_slice(src);
                }
            } else {
                for kk in 0..kc {
                    let src = &a.data[ir + kk * a.cs..][..rows];
                    panel[kk * MR..kk * MR + rows].copy_from_slice(src);
                }
            }
        } else {
            for kk in 0..kc {
                let base = ir * a.rs + kk * a.cs;
                for i in 0..rows {
                    panel[kk * MR + i] = a.data[base + i * a.rs];
                }
            }
        }
    }
}

/// Whether the CPU has AVX2 (cached by the standard library after the first check).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Writes the panel lines of MR row-major rows for depths 0..8·⌊kc/8⌋ (line kk =
/// the rows' kk-th values): eight depths at a time, six rows loaded whole and
/// transposed in registers, instead of one scalar load and store per value. Returns
/// the depths written; the caller does the rest. Copies only: the same values.
///
/// # Safety
/// The CPU must support AVX2; every row must hold `kc` floats and `panel` kc·MR.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_rows_avx2(rows: &[&[f32]; MR], kc: usize, panel: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    const _: () = assert!(MR == 6, "the transpose is written for six rows");
    assert!(rows.iter().all(|r| r.len() >= kc) && panel.len() >= kc * MR);
    let whole = kc / 8 * 8;
    let out = panel.as_mut_ptr();
    for k0 in (0..whole).step_by(8) {
        // SAFETY: k0 + 8 ≤ kc floats of each row, and lines k0..k0+8 (48 floats from
        // k0·MR) of the panel (asserted above).
        unsafe {
            let r: [__m256; MR] =
                std::array::from_fn(|i| _mm256_loadu_ps(rows[i].as_ptr().add(k0)));
            // Pairs of rows interleaved: (r0 r1)[0], (r0 r1)[1] | [4], [5], and so on.
            let (t0, t1) = (
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
            );
            let (t4, t5) = (
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
            );
            // Rows 0–3 of depth j in lane j / 4 of s[j % 4].
            let s = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            // Rows 4–5 of depth j: the low (j even) or high (j odd) pair of lane j / 4
            // of t4 (j % 4 < 2) or t5.
            let pairs = [t4, t5];
            for j in 0..8 {
                let line = out.add((k0 + j) * MR);
                let (lo4, pair) = if j < 4 {
                    (
                        _mm256_castps256_ps128(s[j % 4]),
                        _mm256_castps256_ps128(pairs[j % 4 / 2]),
                    )
                } else {
                    (
                        _mm256_extractf128_ps::<1>(s[j % 4]),
                        _mm256_extractf128_ps::<1>(pairs[j % 4 / 2]),
                    )
                };
                _mm_storeu_ps(line, lo4);
                if j % 2 == 0 {
                    _mm_storel_pd(line.add(4) as *mut f64, _mm_castps_pd(pair));
                } else {
                    _mm_storeh_pd(line.add(4) as *mut f64, _mm_castps_pd(pair));
                }
            }
        }
    }
    whole
}

/// Writes the panel lines of `cols.len()` (a multiple of 8) contiguous columns for
/// depths 0..8·⌊kc/8⌋ (line kk = the columns' kk-th values), as 8×8 transposes in
/// registers (eight columns by eight depths), instead of one scalar load and store per
/// value. Returns the depths written; the caller does the rest. Copies only.
///
/// # Safety
/// The CPU must support AVX2; every column must hold `kc` floats and `panel`
/// kc·cols.len().
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_cols_avx2(cols: &[&[f32]], kc: usize, panel: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let nr = cols.len();
    assert!(nr.is_multiple_of(8) && cols.iter().all(|c| c.len() >= kc) && panel.len() >= kc * nr);
    let whole = kc / 8 * 8;
    let out = panel.as_mut_ptr();
    for g in (0..nr).step_by(8) {
        for k0 in (0..whole).step_by(8) {
            // SAFETY: columns g..g+8 hold depths k0..k0+8 ≤ kc, and lines k0..k0+8 of
            // the panel have columns g..g+8 (asserted above).
            unsafe {
                let r: [__m256; 8] =
                    std::array::from_fn(|c| _mm256_loadu_ps(cols[g + c].as_ptr().add(k0)));
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                    if i % 2 == 0 {
                        _mm256_unpacklo_ps(x, y)
                    } else {
                        _mm256_unpackhi_ps(x, y)
                    }
                });
                // u[h·4 + d]: columns 4h..4h+4 of depths d and d + 4 (lanes 0, 1).
                let u: [__m256; 8] = std::array::from_fn(|i| {
                    let (h, d) = (i / 4, i % 4);
                    let (x, y) = (t[h * 4 + d / 2], t[h * 4 + d / 2 + 2]);
                    if d % 2 == 0 {
                        _mm256_shuffle_ps::<0x44>(x, y)
                    } else {
                        _mm256_shuffle_ps::<0xEE>(x, y)
                    }
                });
                for d in 0..4 {
                    let lo = _mm256_permute2f128_ps::<0x20>(u[d], u[4 + d]);
                    let hi = _mm256_permute2f128_ps::<0x31>(u[d], u[4 + d]);
                    _mm256_storeu_ps(out.add((k0 + d) * nr + g), lo);
                    _mm256_storeu_ps(out.add((k0 + d + 4) * nr + g), hi);
                }
            }
        }
    }
    whole
}

/// Packs the top-left kc × nc block of `b` (the caller offsets the view to the
/// block) into nr-column panels: `bpack[p·kc·nr + kk·nr + j]`, columns past `nc` zero.
pub(super) fn pack_b(b: View, kc: usize, nc: usize, nr: usize, bpack: &mut [f32]) {
    for (p, jr) in (0..nc).step_by(nr).enumerate() {
        let panel = &mut bpack[p * kc * nr..(p + 1) * kc * nr];
        let cols = nr.min(nc - jr);
        if cols < nr {
            panel.iter_mut().for_each(|x| *x = 0.0);
        }
        if b.cs == 1 && cols == nr {
            // Whole panel lines as fixed-size copies (inlined; see pack_a).
            match nr {
                16 => copy_lines::<16>(b, jr, panel),
                32 => copy_lines::<32>(b, jr, panel),
                _ => unreachable!("register tiles are 16 or 32 columns"),
            }
        } else if b.cs == 1 {
            for kk in 0..kc {
                let src = &b.data[kk * b.rs + jr..][..cols];
                panel[kk * nr..kk * nr + cols].copy_from_slice(src);
            }
        } else if b.rs == 1 {
            // B is a transposed row-major matrix (W for Y = X·Wᵀ): each column is
            // contiguous. Runs of 8 depths of every column, so that the reads of a
            // column stay in one cache line and the writes fill whole panel lines.
            let col = |j: usize| &b.data[(jr + j) * b.cs..][..kc];
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if cols == nr && avx2() {
                let cols: [&[f32]; NR_MAX] = std::array::from_fn(|j| col(j.min(nr - 1)));
                // SAFETY: the CPU has AVX2 (checked); the first nr columns hold kc
                // floats each and the panel kc·nr (sliced above); nr is 16 or 32.
                done = unsafe { transpose_cols_avx2(&cols[..nr], kc, panel) };
            }
            for k0 in (done..kc).step_by(8) {
                let kn = 8.min(kc - k0);
                for j in 0..cols {
                    let src = &col(j)[k0..k0 + kn];
                    for (t, &x) in src.iter().enumerate() {
                        panel[(k0 + t) * nr + j] = x;
                    }
                }
            }
        } else {
            for j in 0..cols {
                let src = &b.data[(jr + j) * b.cs..][..(kc - 1) * b.rs + 1];
                for kk in 0..kc {
                    panel[kk * nr + j] = src[kk * b.rs];
                }
            }
        }
    }
}

/// Copies row-major B's NR columns from `jr` of every depth into a panel of NR-wide lines.
fn copy_lines<const NR: usize>(b: View, jr: usize, panel: &mut [f32]) {
    for (kk, line) in panel.chunks_exact_mut(NR).enumerate() {
        let src: &[f32; NR] = b.data[kk * b.rs + jr..][..NR]
            .try_into()
            .expect("NR floats");
        line.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packing path of B (row-major, transposed through the AVX2 transpose where
    /// the CPU has it, ragged panels, strided) gives the documented layout.
    #[test]
    fn pack_b_lays_out_panels_of_nr_columns() {
        for nr in [16, 32] {
            for (kc, nc) in [(8, 16), (37, 40), (64, 32), (3, 5), (1, 70), (250, 33)] {
                let ldb = nc + 3;
                let data: Vec<f32> = (0..kc * ldb).map(|x| x as f32).collect();
                let trans: Vec<f32> = (0..nc * (kc + 2)).map(|x| x as f32).collect();
                let wide: Vec<f32> = (0..2 * kc * nc).map(|x| x as f32).collect();
                let views = [
                    (View::row_major(&data, ldb), &data, ldb, 1),
                    (View::transposed(&trans, kc + 2), &trans, 1, kc + 2),
                    (
                        View {
                            data: &wide,
                            rs: 2 * nc,
                            cs: 2,
                        },
                        &wide,
                        2 * nc,
                        2,
                    ),
                ];
                for (view, src, rs, cs) in views {
                    let mut bpack = vec![f32::NAN; nc.div_ceil(nr) * nr * kc];
                    pack_b(view, kc, nc, nr, &mut bpack);
                    for p in 0..nc.div_ceil(nr) {
                        for kk in 0..kc {
                            for j in 0..nr {
                                let col = p * nr + j;
                                let want = if col < nc {
                                    src[kk * rs + col * cs]
                                } else {
                                    0.0
                                };
                                let got = bpack[p * kc * nr + kk * nr + j];
                                assert_eq!(got, want, "nr {nr} nc {nc} kc {kk}/{kc} col {col}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every packing path (row-major whole panels through the AVX2 transpose where the
    /// CPU has it, ragged panels, column-major, strided) gives the documented layout.
    #[test]
    fn pack_a_lays_out_panels_of_mr_rows() {
        for (mc, kc) in [(6, 8), (12, 37), (17, 64), (5, 3), (30, 1), (6, 250)] {
            let lda = kc + 3;
            let data: Vec<f32> = (0..mc * lda).map(|x| x as f32).collect();
            let trans: Vec<f32> = (0..kc * mc).map(|x| x as f32).collect();
            let wide: Vec<f32> = (0..2 * kc * mc).map(|x| x as f32).collect();
            let views = [
                (View::row_major(&data, lda), &data, lda, 1),
                (View::transposed(&trans, mc), &trans, 1, mc),
                (
                    View {
                        data: &wide,
                        rs: 2,
                        cs: 2 * mc,
                    },
                    &wide,
                    2,
                    2 * mc,
                ),
            ];
            for (view, src, rs, cs) in views {
                let mut apack = vec![f32::NAN; mc.div_ceil(MR) * MR * kc];
                pack_a(view, mc, kc, &mut apack);
                for p in 0..mc.div_ceil(MR) {
                    for kk in 0..kc {
                        for i in 0..MR {
                            let row = p * MR + i;
                            let want = if row < mc {
                                src[row * rs + kk * cs]
                            } else {
                                0.0
                            };
                            let got = apack[p * kc * MR + kk * MR + i];
                            assert_eq!(got, want, "mc {mc} kc {kk}/{kc} row {row}");
                        }
                    }
                }
            }
        }
    }
}
