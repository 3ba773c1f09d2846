//! Matrix multiply for the CPU backend: one cache-blocked GEMM over strided
//! views, and the three layouts a linear layer needs.
//!
//! Algorithm (BLIS-style): C (M, N) = A (M, K) · B (K, N). Loop over column
//! blocks of NC, depth blocks of KC (B's KC×NC block is packed into NR-wide
//! panels), row blocks of MC (A's MC×KC block is packed into MR-tall panels);
//! a register-tile micro-kernel computes each MR×NR tile of the block's
//! product over KC, and the tile is then written (first depth block with
//! [`Accumulate::Overwrite`]) or added into C. Packing zero-pads partial tiles,
//! so every output element, full tile or edge, sees the same operations.
//!
//! Micro-kernels (MR×NR register tiles): AVX-512 (6×32, twelve zmm
//! accumulators) or AVX2+FMA (6×16, twelve ymm) when the CPU has them, chosen at
//! run time, and a portable 6×16 one that the compiler vectorises. Each output
//! element is one running sum over k in order; the FMA kernels round once per
//! multiply-add, the portable one twice, so their bits differ (each is
//! deterministic).
//!
//! Threads: M is cut into contiguous row chunks that the threads claim in
//! turn; each chunk is a whole GEMM on its rows. Each element of C is computed
//! by exactly one thread with the same sequence of operations (k in order
//! within KC blocks, the blocks in order), so results are bitwise independent
//! of the thread count and of which thread took which chunk.
//!
//! Layouts, with rows = tokens (B·T), inp/out the linear's widths, W (out, inp):
//! - forward:          Y (rows, out)  = X (rows, inp) · Wᵀ          (overwrite or add)
//! - backward input:   dX (rows, inp) = dY (rows, out) · W           (overwrite or add)
//! - backward weight:  dW (out, inp) += dYᵀ (out, rows) · X          (accumulates)

use std::cell::RefCell;

use super::par;

/// Whether a product overwrites its output or is added to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Overwrite,
    Add,
}

/// Which micro-kernel computes the register tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust over arrays; the compiler vectorises it for the baseline target.
    Portable,
    /// AVX2 + FMA intrinsics; only valid where the CPU has both.
    Avx2Fma,
    /// AVX-512F intrinsics; only valid where the CPU has it.
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let ks = Kernel::available();
            ks[ks.len() - 1]
        })
    }

    /// Every kernel usable on this CPU, slowest first (for tests comparing them).
    pub fn available() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                ks.push(Kernel::Avx2Fma);
            }
            if is_x86_feature_detected!("avx512f") {
                ks.push(Kernel::Avx512);
            }
        }
        ks
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => false,
        }
    }

    /// Register tile columns.
    fn nr(self) -> usize {
        match self {
            Kernel::Avx512 => 32,
            Kernel::Portable | Kernel::Avx2Fma => 16,
        }
    }
}

/// Shape of one product C (M, N) = A (M, K) · B (K, N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// Rows of A and of C.
    pub m: usize,
    /// Columns of B and of C.
    pub n: usize,
    /// Depth, the summed index: columns of A, rows of B.
    pub k: usize,
}

/// Shape of a linear layer y = x·wᵀ, the weight row-major (out, inp) as in
/// [`crate::config::ParamLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    /// Rows of x and y: the tokens, N = B·T.
    pub rows: usize,
    /// Width of x: C (F for w_down).
    pub inp: usize,
    /// Width of y: C, KV = NKV·HS, F or V.
    pub out: usize,
}

/// A read-only strided matrix: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> View<'a> {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major (rows, cols) matrix, as a (cols, rows) view.
    pub fn transposed(data: &'a [f32], cols: usize) -> View<'a> {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }

    /// The view whose element (0, 0) is this one's (i, j).
    fn at(self, i: usize, j: usize) -> View<'a> {
        View {
            data: &self.data[i * self.rs + j * self.cs..],
            ..self
        }
    }

    /// Panics unless every element of an (m, k) view lies inside `data`.
    fn check(&self, m: usize, k: usize, what: &str) {
        if m > 0 && k > 0 {
            let last = (m - 1) * self.rs + (k - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: ({m}, {k}) view needs index {last}, has {}",
                self.data.len()
            );
        }
    }
}

/// A writable row-major matrix with a row stride: element (i, j) is `data[i·rs + j]`.
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
}

impl<'a> ViewMut<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn row_major(data: &'a mut [f32], cols: usize) -> ViewMut<'a> {
        ViewMut { data, rs: cols }
    }
}

/// Register tile rows (all kernels).
const MR: usize = 6;
/// The widest register tile's columns (two zmm registers); tiles are at most MR×NR_MAX.
const NR_MAX: usize = 32;
/// Depth of a packed block: an MR×KC panel of A and a KC×NR panel of B (6 KB +
/// 16–32 KB) stay in L1 while the micro-kernel runs.
const KC: usize = 256;
/// Rows of a packed A block (96 KB at KC = 256, in L2).
const MC: usize = 96;
/// Columns of a packed B block (1 MB at KC = 256).
const NC: usize = 1024;

thread_local! {
    /// Per-thread packing buffers, reused across calls.
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// C (M, N) (=|+=) A (M, K) · B (K, N) on the calling thread.
///
/// # Panics
/// If a view or C is too short for its shape, or `kernel` is not available on
/// this CPU (both are programming errors).
pub fn gemm(shape: Gemm, a: View, b: View, c: ViewMut, acc: Accumulate, kernel: Kernel) {
    let Gemm { m, n, k } = shape;
    let ViewMut { data: c, rs: ldc } = c;
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && (m - 1) * ldc + n <= c.len(),
        "C: ({m}, {n}) with ldc {ldc} needs {} elements, has {}",
        (m - 1) * ldc + n,
        c.len()
    );
    a.check(m, k, "A");
    b.check(k, n, "B");
    assert!(
        kernel.is_available(),
        "{kernel:?} is not available on this CPU"
    );
    let nr = kernel.nr();
    if k == 0 {
        if acc == Accumulate::Overwrite {
            for i in 0..m {
                c[i * ldc..i * ldc + n].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        return;
    }
    PACK.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let (apack, bpack) = &mut *bufs;
        // Only as large as this product needs: threads are spawned per call, so
        // their buffers start empty and every byte requested is also touched.
        let apack_len = MC.min(m).div_ceil(MR) * MR * KC.min(k);
        let bpack_len = NC.min(n).div_ceil(nr) * nr * KC.min(k);
        if apack.len() < apack_len {
            apack.resize(apack_len, 0.0);
        }
        if bpack.len() < bpack_len {
            bpack.resize(bpack_len, 0.0);
        }
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_b(b.at(pc, jc), kc, nc, nr, bpack);
                let write = if pc == 0 { acc } else { Accumulate::Add };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    pack_a(a.at(ic, pc), mc, kc, apack);
                    for jr in (0..nc).step_by(nr) {
                        let bpanel = &bpack[jr / nr * kc * nr..][..kc * nr];
                        for ir in (0..mc).step_by(MR) {
                            let apanel = &apack[ir / MR * kc * MR..][..kc * MR];
                            let mut tile = [0.0f32; MR * NR_MAX];
                            micro_kernel(kernel, kc, apanel, bpanel, &mut tile);
                            let rows = MR.min(mc - ir);
                            let cols = nr.min(nc - jr);
                            for i in 0..rows {
                                let row0 = (ic + ir + i) * ldc + jc + jr;
                                let crow = &mut c[row0..row0 + cols];
                                let trow = &tile[i * nr..i * nr + cols];
                                match write {
                                    Accumulate::Overwrite => crow.copy_from_slice(trow),
                                    Accumulate::Add => {
                                        crow.iter_mut().zip(trow).for_each(|(c, t)| *c += t)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Packs the top-left mc × kc block of `a` (the caller offsets the view to the
/// block) into MR-row panels: `apack[p·kc·MR + kk·MR + i]`, rows past `mc` zero.
fn pack_a(a: View, mc: usize, kc: usize, apack: &mut [f32]) {
    for (p, ir) in (0..mc).step_by(MR).enumerate() {
        let panel = &mut apack[p * kc * MR..(p + 1) * kc * MR];
        let rows = MR.min(mc - ir);
        if rows < MR {
            panel.iter_mut().for_each(|x| *x = 0.0);
        }
        if a.cs == 1 {
            // Row-major A: read each row contiguously.
            for i in 0..rows {
                let src = &a.data[(ir + i) * a.rs..][..kc];
                for (kk, &x) in src.iter().enumerate() {
                    panel[kk * MR + i] = x;
                }
            }
        } else {
            // Column-major A (a transposed row-major matrix): read MR rows of one column.
            for kk in 0..kc {
                let base = ir * a.rs + kk * a.cs;
                for i in 0..rows {
                    panel[kk * MR + i] = a.data[base + i * a.rs];
                }
            }
        }
    }
}

/// Packs the top-left kc × nc block of `b` (the caller offsets the view to the
/// block) into nr-column panels: `bpack[p·kc·nr + kk·nr + j]`, columns past `nc` zero.
fn pack_b(b: View, kc: usize, nc: usize, nr: usize, bpack: &mut [f32]) {
    for (p, jr) in (0..nc).step_by(nr).enumerate() {
        let panel = &mut bpack[p * kc * nr..(p + 1) * kc * nr];
        let cols = nr.min(nc - jr);
        if cols < nr {
            panel.iter_mut().for_each(|x| *x = 0.0);
        }
        if b.cs == 1 {
            for kk in 0..kc {
                let src = &b.data[kk * b.rs + jr..][..cols];
                panel[kk * nr..kk * nr + cols].copy_from_slice(src);
            }
        } else {
            // B is a transposed row-major matrix (W for Y = X·Wᵀ): each column is contiguous.
            for j in 0..cols {
                let src = &b.data[(jr + j) * b.cs..][..(kc - 1) * b.rs + 1];
                for kk in 0..kc {
                    panel[kk * nr + j] = src[kk * b.rs];
                }
            }
        }
    }
}

/// tile (MR × nr, row-major, nr = kernel's width) = Σ_kk apanel[kk] ⊗ bpanel[kk].
fn micro_kernel(
    kernel: Kernel,
    kc: usize,
    apanel: &[f32],
    bpanel: &[f32],
    tile: &mut [f32; MR * NR_MAX],
) {
    assert!(apanel.len() >= kc * MR && bpanel.len() >= kc * kernel.nr());
    match kernel {
        Kernel::Portable => kernel_portable(kc, apanel, bpanel, tile),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` asserted the CPU has AVX2 and FMA for this kernel; the
        // panels hold kc·MR and kc·16 elements (asserted above).
        Kernel::Avx2Fma => unsafe { kernel_avx2_fma(kc, apanel.as_ptr(), bpanel.as_ptr(), tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` asserted the CPU has AVX-512F for this kernel; the
        // panels hold kc·MR and kc·32 elements (asserted above).
        Kernel::Avx512 => unsafe { kernel_avx512(kc, apanel.as_ptr(), bpanel.as_ptr(), tile) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => unreachable!("x86 kernels are never available here"),
    }
}

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
/// The CPU must support AVX2 and FMA; `a` must point at `kc·MR` and `b` at
/// `kc·16` readable f32s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_fma(kc: usize, a: *const f32, b: *const f32, tile: &mut [f32; MR * NR_MAX]) {
    const NR: usize = 16;
    use std::arch::x86_64::*;
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    for kk in 0..kc {
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
    }
    for (i, ci) in c.iter().enumerate() {
        // SAFETY: tile has MR·32 ≥ MR·NR floats; row i's 16 start at i·NR.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), ci[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), ci[1]);
        }
    }
}

/// # Safety
/// The CPU must support AVX-512F; `a` must point at `kc·MR` and `b` at `kc·32`
/// readable f32s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, a: *const f32, b: *const f32, tile: &mut [f32; MR * NR_MAX]) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..kc {
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
    }
    for (i, ci) in c.iter().enumerate() {
        // SAFETY: tile has MR·NR floats; row i's 32 start at i·NR.
        unsafe {
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), ci[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), ci[1]);
        }
    }
}

/// Below this many multiply-adds a product runs on one thread: spawning costs
/// tens of microseconds. (Thread count never changes results, only speed.)
const MIN_MACS_PER_THREAD: usize = 1 << 18;

/// Rows below which a product is not cut into more chunks than threads.
const MIN_CHUNK_ROWS: usize = 128;

/// [`gemm`] with M cut into row chunks (multiples of MR, up to 4 per thread,
/// at least [`MIN_CHUNK_ROWS`] rows unless that leaves a thread idle) that
/// `threads` scoped threads claim in turn. Results are bitwise the same for
/// any `threads` and any claiming order.
pub fn gemm_parallel(shape: Gemm, a: View, b: View, c: ViewMut, acc: Accumulate, threads: usize) {
    let kernel = Kernel::detect();
    let Gemm { m, n, k } = shape;
    let by_work = (m * n * k / MIN_MACS_PER_THREAD).max(1);
    let parts = threads.max(1).min(m.div_ceil(MR)).min(by_work);
    if parts <= 1 || m == 0 || n == 0 {
        gemm(shape, a, b, c, acc, kernel);
        return;
    }
    let ViewMut { data: c, rs: ldc } = c;
    // Every chunk packs all of B (k × n) for itself, a cost of about 1/rows of
    // its multiply-adds: chunks of at least MIN_CHUNK_ROWS keep that small. (The
    // weight gradient has m = out features, often only a few hundred.)
    let chunks = (parts * 4)
        .min(m / MIN_CHUNK_ROWS)
        .max(parts)
        .min(m.div_ceil(MR));
    let rows_per = m.div_ceil(chunks).div_ceil(MR) * MR;
    let mut tasks = Vec::with_capacity(chunks);
    let mut rest: &mut [f32] = c;
    let mut i0 = 0;
    while i0 < m {
        let rows = rows_per.min(m - i0);
        let take = if i0 + rows < m {
            rows * ldc
        } else {
            rest.len()
        };
        let (mine, tail) = rest.split_at_mut(take);
        rest = tail;
        tasks.push((i0, rows, mine));
        i0 += rows;
    }
    par::run_tasks(parts, tasks, |(i0, rows, mine)| {
        let c = ViewMut {
            data: mine,
            rs: ldc,
        };
        gemm(Gemm { m: rows, n, k }, a.at(i0, 0), b, c, acc, kernel)
    });
}

/// Forward of a linear layer: y (rows, out) (=|+=) x (rows, inp) · wᵀ, w (out, inp).
pub fn linear_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    dims: LinearDims,
    acc: Accumulate,
    threads: usize,
) {
    let LinearDims { rows, inp, out } = dims;
    gemm_parallel(
        Gemm {
            m: rows,
            n: out,
            k: inp,
        },
        View::row_major(x, inp),
        View::transposed(w, inp),
        ViewMut::row_major(y, out),
        acc,
        threads,
    );
}

/// Input gradient of a linear layer: dx (rows, inp) (=|+=) dy (rows, out) · w.
pub fn linear_backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    dims: LinearDims,
    acc: Accumulate,
    threads: usize,
) {
    let LinearDims { rows, inp, out } = dims;
    gemm_parallel(
        Gemm {
            m: rows,
            n: inp,
            k: out,
        },
        View::row_major(dy, out),
        View::row_major(w, inp),
        ViewMut::row_major(dx, inp),
        acc,
        threads,
    );
}

/// Weight gradient of a linear layer: dw (out, inp) += dyᵀ · x, summed over rows in order.
pub fn linear_backward_weight(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    dims: LinearDims,
    threads: usize,
) {
    let LinearDims { rows, inp, out } = dims;
    gemm_parallel(
        Gemm {
            m: out,
            n: inp,
            k: rows,
        },
        View::transposed(dy, out),
        View::row_major(x, inp),
        ViewMut::row_major(dw, inp),
        Accumulate::Add,
        threads,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// ‖got − want‖_max / (√K · max|a|·max|b| scale): f32 GEMM error is bounded by
    /// about K·u·Σ|a||b|; with N(0,1) inputs Σ|a||b| ~ K, and random rounding
    /// grows like √K, so |err| ≲ √K · K · u ~ 1e-4 at K = 300. We compare against
    /// 1e-5 · K (a wrong index or a dropped block gives errors ~1).
    fn check(got: &[f32], want: &[f64], k: usize) {
        let tol = 1e-5 * (k.max(1) as f64);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol,
                "element {i}: {g} vs {w} (K {k})"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_three_layouts_match_plain_loops(
            rows in 1usize..140, inp in 1usize..300, out in 1usize..70, threads in 1usize..4, seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let x = random(rows * inp, &mut rng);
            let w = random(out * inp, &mut rng);
            let dy = random(rows * out, &mut rng);
            let prior = random(out * inp, &mut rng);
            let (xd, wd, dyd) = (|i: usize, k: usize| x[i * inp + k] as f64, |o: usize, k: usize| w[o * inp + k] as f64, |i: usize, o: usize| dy[i * out + o] as f64);

            let dims = LinearDims { rows, inp, out };
            let mut y = vec![f32::NAN; rows * out];
            linear_forward(&mut y, &x, &w, dims, Accumulate::Overwrite, threads);
            let want: Vec<f64> = (0..rows * out).map(|e| (0..inp).map(|k| xd(e / out, k) * wd(e % out, k)).sum()).collect();
            check(&y, &want, inp);

            let mut dx = vec![1.0f32; rows * inp];
            linear_backward_input(&mut dx, &dy, &w, dims, Accumulate::Add, threads);
            let want: Vec<f64> = (0..rows * inp).map(|e| 1.0 + (0..out).map(|o| dyd(e / inp, o) * wd(o, e % inp)).sum::<f64>()).collect();
            check(&dx, &want, out);

            let mut dw = prior.clone();
            linear_backward_weight(&mut dw, &dy, &x, dims, threads);
            let want: Vec<f64> = (0..out * inp).map(|e| prior[e] as f64 + (0..rows).map(|i| dyd(i, e / inp) * xd(i, e % inp)).sum::<f64>()).collect();
            check(&dw, &want, rows);

            // Thread count never changes a bit.
            let mut dw1 = prior.clone();
            linear_backward_weight(&mut dw1, &dy, &x, dims, 1);
            prop_assert!(dw1.iter().zip(&dw).all(|(a, b)| a.to_bits() == b.to_bits()));
        }

        #[test]
        fn every_kernel_matches_on_strided_views(
            m in 1usize..30, n in 1usize..40, k in 1usize..600, seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            // A as a transposed (k, m) matrix; B row-major with a padded row stride;
            // C with ldc > n, whose padding must not be touched.
            let a = random(k * m, &mut rng);
            let b = random(k * (n + 3), &mut rng);
            let ldc = n + 5;
            let want: Vec<f64> = (0..m * n).map(|e| (0..k).map(|p| a[p * m + e / n] as f64 * b[p * (n + 3) + e % n] as f64).sum()).collect();
            // The FMA kernels (AVX2, AVX-512) round once per multiply-add in the same
            // order, so they must agree bit for bit.
            let mut fma_result: Option<Vec<f32>> = None;
            for kernel in Kernel::available() {
                let mut c = vec![7.0f32; m * ldc];
                let c_view = ViewMut { data: &mut c, rs: ldc };
                gemm(Gemm { m, n, k }, View::transposed(&a, m), View { data: &b, rs: n + 3, cs: 1 }, c_view, Accumulate::Overwrite, kernel);
                for i in 0..m {
                    check(&c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n], k);
                    prop_assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&x| x == 7.0));
                }
                if kernel != Kernel::Portable {
                    if let Some(first) = &fma_result {
                        prop_assert!(first.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel:?} differs");
                    }
                    fma_result = Some(c);
                }
            }
        }
    }

    #[test]
    fn zero_depth_overwrites_with_zeros_or_leaves_alone() {
        let mut c = vec![3.0f32; 6];
        let shape = Gemm { m: 2, n: 3, k: 0 };
        let (a, b) = (View::row_major(&[], 0), View::row_major(&[], 3));
        let add = Accumulate::Add;
        gemm(
            shape,
            a,
            b,
            ViewMut::row_major(&mut c, 3),
            add,
            Kernel::Portable,
        );
        assert!(c.iter().all(|&x| x == 3.0));
        let overwrite = Accumulate::Overwrite;
        gemm(
            shape,
            a,
            b,
            ViewMut::row_major(&mut c, 3),
            overwrite,
            Kernel::Portable,
        );
        assert!(c.iter().all(|&x| x == 0.0));
    }
}
