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
//! Threads: each KC×NC block of B is packed once (the threads share out runs of its
//! panels, during the previous block's product) and shared; its product is cut into
//! near-equal row tasks (whole register tiles, at most one A block each, a multiple
//! of the threads in number) that the threads claim in turn, each packing only its
//! own rows of A, so no thread repeats another's packing. Each element of C is
//! computed by exactly one thread with the same sequence of operations (k in order
//! within KC blocks, the blocks in order), so results are bitwise independent of the
//! thread count and of which thread took which task, and the same as [`gemm`] on one
//! thread.
//! The micro-kernels write whole tiles into C from their registers.
//!
//! Layouts, with rows = tokens (B·T), inp/out the linear's widths, W (out, inp):
//! - forward:          Y (rows, out)  = X (rows, inp) · Wᵀ          (overwrite or add)
//! - backward input:   dX (rows, inp) = dY (rows, out) · W           (overwrite or add)
//! - backward weight:  dW (out, inp) += dYᵀ (out, rows) · X          (accumulates)

use std::cell::RefCell;
use std::ops::Range;

use super::par;

mod kernels;
#[cfg(test)]
mod parallel_tests;
use kernels::{micro_kernel, pack_a, pack_b, TileOut};

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
    /// The view of no elements (an unused slot).
    const EMPTY: View<'static> = View {
        data: &[],
        rs: 0,
        cs: 0,
    };

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
/// Columns of a packed B block (1.5 MB at KC = 256, in L2 or L3; two of them are kept,
/// the one multiplied and the next being packed): at 1536 rather than
/// 1024 the FFN's 1376-wide products are one block, so A is packed once, not twice
/// (1–7% faster on them in paired runs, the rest unchanged). Each KC-deep block is
/// its own parallel region: multiplied by every row task while the next block is
/// packed, so a thread's tasks find it in cache. (Packing eight blocks ahead and
/// running each task through all of them, as before, streamed up to 8 MB of B from
/// memory per task on the deep weight gradients: 3–23% slower there, within ±5%
/// elsewhere.)
const NC: usize = 1536;

thread_local! {
    /// Per-thread buffer for packed A blocks, reused across calls.
    static APACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread buffer for packed B blocks (the calling thread's), reused across calls.
    static BPACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` floats of `buffer` from a 64-byte boundary, growing it as needed.
/// Every B panel line is 16 or 32 floats (64 or 128 bytes), so from an aligned start no
/// vector load of a panel straddles two cache lines (the allocator only promises 16
/// bytes, at which one 32-byte load in four would, depending on where the buffer lands).
fn cache_aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE_FLOATS: usize = 64 / std::mem::size_of::<f32>();
    if buffer.len() < len + LINE_FLOATS {
        buffer.resize(len + LINE_FLOATS, 0.0);
    }
    let skip = buffer.as_ptr().align_offset(64).min(LINE_FLOATS);
    &mut buffer[skip..skip + len]
}

/// Panics unless the views and C hold an (m, k)·(k, n) → (m, n) product and the kernel
/// runs here.
fn check_shapes(shape: Gemm, a: &View, b: &View, c: &ViewMut, kernel: Kernel) {
    let Gemm { m, n, k } = shape;
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.rs >= n && (m - 1) * c.rs + n <= c.data.len(),
        "C: ({m}, {n}) with ldc {} needs {} elements, has {}",
        c.rs,
        (m - 1) * c.rs + n,
        c.data.len()
    );
    a.check(m, k, "A");
    b.check(k, n, "B");
    assert!(
        kernel.is_available(),
        "{kernel:?} is not available on this CPU"
    );
}

/// C (M, N) (=|+=) A (M, K) · B (K, N) on the calling thread.
///
/// # Panics
/// If a view or C is too short for its shape, or `kernel` is not available on
/// this CPU (both are programming errors).
pub fn gemm(shape: Gemm, a: View, b: View, c: ViewMut, acc: Accumulate, kernel: Kernel) {
    check_shapes(shape, &a, &b, &c, kernel);
    let Gemm { m, n, k } = shape;
    blocked(
        &mut [Part {
            a,
            c,
            m,
            base: None,
        }],
        b,
        n,
        k,
        acc,
        kernel,
        1,
    );
}

/// One packed block of B, a parallel region's: columns jc..jc+nc, depths pc..pc+kc,
/// as nr-column panels of `kc·nr` floats.
#[derive(Clone, Copy)]
struct Region<'p> {
    bpack: &'p [f32],
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
    /// How the product writes C: the product's own mode on its first depth block, then add.
    acc: Accumulate,
}

/// One of the products of a [`blocked`] call: C (m, N) (=|+=) A (m, K) · B, with B
/// (K, N) shared by all the call's parts; where `base` is given (a matrix laid out as
/// C), C = base + A·B instead.
#[derive(Debug)]
struct Part<'a> {
    a: View<'a>,
    c: ViewMut<'a>,
    m: usize,
    base: Option<&'a [f32]>,
}

/// The most products one [`blocked`] call takes (a layer's q, k and v).
const MAX_PARTS: usize = 3;

/// The BLIS loops over checked operands, for one or several products that share B
/// (the weight gradients of q, k and v read the same input: one packing of B serves
/// all three). B is packed a KC×NC block at a time (each panel packed once, by one of
/// the threads, then shared by all; see [`pack_group`]); a block's rows (every
/// part's) are cut into tasks (whole register tiles of one part, at most one A block)
/// that up to `threads` threads claim, each packing only its own rows of A, and after
/// them in the same region the next block's packing, which the threads that finish
/// first take: one parallel region per block of B (two for the first), no packing
/// repeated, and no thread idle at a region's end while another packs alone (paired
/// in one process, 2 threads, N = 2048: weight gradients 1–9% faster, the others
/// within ±3%). Every element of C gets the
/// same operations in the same order (depth blocks in order) whatever the thread count
/// and whichever products share the call.
fn blocked(
    parts: &mut [Part],
    b: View,
    n: usize,
    k: usize,
    acc: Accumulate,
    kernel: Kernel,
    threads: usize,
) {
    assert!(
        parts.len() <= MAX_PARTS,
        "{} products share one B",
        parts.len()
    );
    if n == 0 || parts.iter().all(|p| p.m == 0) {
        return;
    }
    if k == 0 {
        for part in parts.iter_mut() {
            let ldc = part.c.rs;
            for i in 0..part.m {
                let row = &mut part.c.data[i * ldc..i * ldc + n];
                match (part.base, acc) {
                    (Some(base), _) => row.copy_from_slice(&base[i * ldc..i * ldc + n]),
                    (None, Accumulate::Overwrite) => row.iter_mut().for_each(|x| *x = 0.0),
                    (None, Accumulate::Add) => {}
                }
            }
        }
        return;
    }
    let nr = kernel.nr();
    // Each part's A, C and register-tile rows, and its share of the row tasks: the
    // tasks of all rows as for one product, shared out by rows, at most MC rows each.
    let a: [View; MAX_PARTS] = std::array::from_fn(|p| parts.get(p).map_or(View::EMPTY, |q| q.a));
    let ldc: [usize; MAX_PARTS] = std::array::from_fn(|p| parts.get(p).map_or(0, |q| q.c.rs));
    let m: [usize; MAX_PARTS] = std::array::from_fn(|p| parts.get(p).map_or(0, |q| q.m));
    let base: [Option<&[f32]>; MAX_PARTS] =
        std::array::from_fn(|p| parts.get(p).and_then(|q| q.base));
    // A part with a base starts its C as the base, row task by row task, just before its
    // first depth block adds into those rows (in cache then, where a separate copy first
    // went through memory).
    let acc = if base.iter().any(Option::is_some) {
        assert!(
            base.iter().zip(&m).all(|(b, &m)| b.is_some() || m == 0),
            "every part of a call has a base, or none"
        );
        Accumulate::Add
    } else {
        acc
    };
    let start_from_base = |p: usize, rows: Range<usize>, region: &Region, c: &mut [f32]| {
        if let (Some(base), 0) = (base[p], region.pc) {
            let (ldc, cols) = (ldc[p], region.jc..region.jc + region.nc);
            for (local, i) in rows.enumerate() {
                let at = |i: usize| i * ldc + cols.start..i * ldc + cols.end;
                c[at(local)].copy_from_slice(&base[at(i)]);
            }
        }
    };
    let tiles = m.map(|m| m.div_ceil(MR));
    let all_tiles: usize = tiles.iter().sum();
    let all_tasks = row_tasks(all_tiles, threads);
    let tasks = tiles.map(|t| (all_tasks * t / all_tiles).max(t.div_ceil(MC / MR)));
    let out: [Disjoint; MAX_PARTS] = std::array::from_fn(|p| {
        parts
            .get_mut(p)
            .map_or(Disjoint::EMPTY, |q| Disjoint::new(q.c.data))
    });
    // The blocks of B in order: (jc, nc, pc, kc).
    let blocks = (0..n).step_by(NC).flat_map(|jc| {
        (0..k)
            .step_by(KC)
            .map(move |pc| (jc, NC.min(n - jc), pc, KC.min(k - pc)))
    });
    BPACK.with(|cell| {
        let mut buffer = cell.borrow_mut();
        let need = NC.min(n).div_ceil(nr) * nr * KC.min(k);
        // Two blocks' room (where there are two): while one block's product runs, the
        // threads that finish their row tasks first pack the next block into the other.
        let room = if n > NC || k > KC { 2 * need } else { need };
        let both = cache_aligned(&mut buffer, room);
        let (mut cur, mut next) = both.split_at_mut(need);
        let mut blocks = blocks.peekable();
        let Some(&(jc0, nc0, pc0, kc0)) = blocks.peek() else {
            return;
        };
        let groups_of = |nc: usize| {
            if threads <= 1 {
                1
            } else {
                (threads * TASKS_PER_THREAD).min(nc.div_ceil(nr))
            }
        };
        {
            let first = Disjoint::new(&mut cur[..kc0 * nc0.div_ceil(nr) * nr]);
            let groups = groups_of(nc0);
            par::run_indexed(threads, groups, |g| {
                pack_group(b.at(pc0, jc0), kc0, nc0, nr, &first, groups, g)
            });
        }
        while let Some((jc, nc, pc, kc)) = blocks.next() {
            let region = Region {
                bpack: &cur[..kc * nc.div_ceil(nr) * nr],
                jc,
                nc,
                pc,
                kc,
                acc: if pc == 0 { acc } else { Accumulate::Add },
            };
            let upcoming = blocks.peek().copied();
            let (to_pack, groups) = match upcoming {
                Some((_, nc1, _, kc1)) => (
                    Disjoint::new(&mut next[..kc1 * nc1.div_ceil(nr) * nr]),
                    groups_of(nc1),
                ),
                None => (Disjoint::EMPTY, 0),
            };
            let pack_next = |g: usize| {
                if let Some((jc1, nc1, pc1, kc1)) = upcoming {
                    pack_group(b.at(pc1, jc1), kc1, nc1, nr, &to_pack, groups, g);
                }
            };
            if threads <= 1 {
                for p in 0..parts.len() {
                    for ic in (0..m[p]).step_by(MC) {
                        let mc = MC.min(m[p] - ic);
                        // SAFETY: one task at a time, each its own rows of C.
                        let mine = unsafe { out[p].range(ic * ldc[p]..out[p].len) };
                        start_from_base(p, ic..ic + mc, &region, mine);
                        row_task(a[p], ic, mc, region, mine, ldc[p], kernel);
                    }
                }
                (0..groups).for_each(pack_next);
            } else {
                // Task i of a part: register-tile rows tiles·i/tasks.. of its C, so its
                // tasks differ by at most one tile and the last round of claims ends
                // together; then the next block's packing, claimed by whichever thread
                // is free first.
                let row_tasks: usize = tasks.iter().sum();
                par::run_indexed(threads, row_tasks + groups, |task| {
                    if task >= row_tasks {
                        return pack_next(task - row_tasks);
                    }
                    let (mut p, mut i) = (0, task);
                    while i >= tasks[p] {
                        i -= tasks[p];
                        p += 1;
                    }
                    let ic = tiles[p] * i / tasks[p] * MR;
                    let end = (tiles[p] * (i + 1) / tasks[p] * MR).min(m[p]);
                    let rows = ic * ldc[p]..(end * ldc[p]).min(out[p].len);
                    // SAFETY: tasks own disjoint row ranges of their part's C; the
                    // region outlives them.
                    let mine = unsafe { out[p].range(rows) };
                    start_from_base(p, ic..end, &region, mine);
                    row_task(a[p], ic, end - ic, region, mine, ldc[p], kernel)
                });
            }
            std::mem::swap(&mut cur, &mut next);
        }
    });
}

/// Packs run `g` of `groups` runs of panels of a block of B (the view starts at the
/// block's first depth and column; `kc` depths × `nc` columns as nr-column panels, see
/// [`pack_b`]) into its place in `bblock`. The threads share a block out by runs of
/// panels, about [`TASKS_PER_THREAD`] runs per thread, so that no thread packs it alone.
fn pack_group(
    b: View,
    kc: usize,
    nc: usize,
    nr: usize,
    bblock: &Disjoint,
    groups: usize,
    g: usize,
) {
    let panels = nc.div_ceil(nr);
    let (p0, p1) = (panels * g / groups, panels * (g + 1) / groups);
    // SAFETY: each run of panels owns its own part of the block.
    let part = unsafe { bblock.range(p0 * kc * nr..p1 * kc * nr) };
    let cols = (p1 * nr).min(nc) - p0 * nr;
    pack_b(b.at(0, p0 * nr), kc, cols, nr, part);
}

/// A buffer whose disjoint ranges the tasks of one parallel region write.
struct Disjoint {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks only touch disjoint ranges (see `range`), within a region that the
// buffer's borrow outlives.
unsafe impl Sync for Disjoint {}

impl Disjoint {
    /// A buffer of no elements (an unused slot).
    const EMPTY: Disjoint = Disjoint {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    fn new(data: &mut [f32]) -> Disjoint {
        Disjoint {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        }
    }

    /// The elements `r` of the buffer.
    ///
    /// # Safety
    /// No two live results may overlap, and the buffer must outlive them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [f32] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "range {r:?} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// How many row tasks `threads` share `tiles` register-tile rows in: about
/// [`TASKS_PER_THREAD`] per thread (so that a descheduled thread's share is taken
/// over), at most [`MC`] rows (one A block) and, where there are enough rows, at least
/// [`MIN_TASK_ROWS`] each (each B panel is loaded once per task); then rounded up to a
/// multiple of the threads, so that with near-equal tasks no thread waits at the end.
/// Tasks never repeat work: each packs only its own rows of A.
fn row_tasks(tiles: usize, threads: usize) -> usize {
    let fewest = tiles.div_ceil(MC / MR);
    let most = (tiles / (MIN_TASK_ROWS / MR)).max(fewest).max(1);
    let tasks = (threads * TASKS_PER_THREAD).clamp(fewest.max(1), most);
    let rounded = tasks.div_ceil(threads) * threads;
    if rounded <= tiles {
        rounded
    } else {
        tasks
    }
}

/// Tasks per thread a product's rows are cut into, where it has enough rows.
const TASKS_PER_THREAD: usize = 4;

/// The fewest rows of a task (four register tiles).
const MIN_TASK_ROWS: usize = 4 * MR;

/// Rows ic..ic+mc (mc ≤ MC) of one block's product: packs A's (mc × kc) block and runs
/// the micro-kernel over every tile. `c` starts at row ic, column 0.
fn row_task(
    a: View,
    ic: usize,
    mc: usize,
    region: Region,
    c: &mut [f32],
    ldc: usize,
    kernel: Kernel,
) {
    let Region {
        bpack,
        jc,
        nc,
        pc,
        kc,
        acc,
    } = region;
    let nr = kernel.nr();
    APACK.with(|cell| {
        let mut buffer = cell.borrow_mut();
        let apack = cache_aligned(&mut buffer, mc.div_ceil(MR) * MR * kc);
        pack_a(a.at(ic, pc), mc, kc, apack);
        for jr in (0..nc).step_by(nr) {
            let bpanel = &bpack[jr / nr * kc * nr..][..kc * nr];
            let cols = nr.min(nc - jr);
            for ir in (0..mc).step_by(MR) {
                let apanel = &apack[ir / MR * kc * MR..][..kc * MR];
                let out = TileOut {
                    c: &mut c[ir * ldc + jc + jr..],
                    ldc,
                    rows: MR.min(mc - ir),
                    cols,
                    acc,
                };
                micro_kernel(kernel, kc, apanel, bpanel, out);
            }
        }
    });
}

/// Below this many multiply-adds a product runs on one thread: spawning costs
/// tens of microseconds. (Thread count never changes results, only speed.)
const MIN_MACS_PER_THREAD: usize = 1 << 18;

/// How many of `threads` a product of `m` rows and `m·n·k` multiply-adds is worth.
fn used_threads(m: usize, n: usize, k: usize, threads: usize) -> usize {
    let by_work = (m * n * k / MIN_MACS_PER_THREAD).max(1);
    threads.max(1).min(m.div_ceil(MIN_TASK_ROWS)).min(by_work)
}

/// [`gemm`] over `threads` scoped threads: each packed B block's row blocks are shared
/// out (see [`blocked`]). Results are bitwise the same for any `threads` and any
/// claiming order.
pub fn gemm_parallel(shape: Gemm, a: View, b: View, c: ViewMut, acc: Accumulate, threads: usize) {
    let kernel = Kernel::detect();
    let Gemm { m, n, k } = shape;
    check_shapes(shape, &a, &b, &c, kernel);
    blocked(
        &mut [Part {
            a,
            c,
            m,
            base: None,
        }],
        b,
        n,
        k,
        acc,
        kernel,
        used_threads(m, n, k, threads),
    );
}

/// Forward of a linear layer added to a residual stream: y (rows, out) = base (rows,
/// out) + x (rows, inp) · wᵀ, with the bits of copying base into y and then adding the
/// product, without the copy's pass through memory.
pub fn linear_forward_residual(
    y: &mut [f32],
    base: &[f32],
    x: &[f32],
    w: &[f32],
    dims: LinearDims,
    threads: usize,
) {
    let LinearDims { rows, inp, out } = dims;
    let shape = Gemm {
        m: rows,
        n: out,
        k: inp,
    };
    let (a, b, c) = (
        View::row_major(x, inp),
        View::transposed(w, inp),
        ViewMut::row_major(y, out),
    );
    let kernel = Kernel::detect();
    check_shapes(shape, &a, &b, &c, kernel);
    assert!(
        base.len() >= rows * out,
        "the base: ({rows}, {out}) needs {} elements, has {}",
        rows * out,
        base.len()
    );
    blocked(
        &mut [Part {
            a,
            c,
            m: rows,
            base: Some(base),
        }],
        b,
        out,
        inp,
        Accumulate::Add,
        kernel,
        used_threads(rows, out, inp, threads),
    );
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

/// One weight gradient of [`linear_backward_weights`]: dw (out, inp) += dyᵀ · x,
/// dy (rows, out).
#[derive(Debug)]
pub struct WeightGrad<'a> {
    pub dw: &'a mut [f32],
    pub dy: &'a [f32],
    pub out: usize,
}

/// The weight gradients of up to three linear layers that read the same input x
/// (rows, inp) — a layer's q, k and v, or its gate and up — in one call: x's blocks are
/// packed once for all of them and their row tasks shared out together (each alone
/// has too few rows to amortise that packing). Each dw gets exactly the bits
/// [`linear_backward_weight`] would give it.
///
/// # Panics
/// With more than three gradients, or a buffer too short for its shape (programming
/// errors).
pub fn linear_backward_weights(
    grads: &mut [WeightGrad],
    x: &[f32],
    rows: usize,
    inp: usize,
    threads: usize,
) {
    let kernel = Kernel::detect();
    let b = View::row_major(x, inp);
    let mut all_rows = 0;
    for g in grads.iter_mut() {
        let shape = Gemm {
            m: g.out,
            n: inp,
            k: rows,
        };
        let c = ViewMut::row_major(g.dw, inp);
        check_shapes(shape, &View::transposed(g.dy, g.out), &b, &c, kernel);
        all_rows += g.out;
    }
    fn part<'g>(g: &'g mut WeightGrad<'_>, inp: usize) -> Part<'g> {
        Part {
            base: None,
            a: View::transposed(g.dy, g.out),
            c: ViewMut::row_major(g.dw, inp),
            m: g.out,
        }
    }
    let threads = used_threads(all_rows, inp, rows, threads);
    let add = Accumulate::Add;
    match grads {
        [] => {}
        [g] => blocked(&mut [part(g, inp)], b, inp, rows, add, kernel, threads),
        [g0, g1] => {
            let mut parts = [part(g0, inp), part(g1, inp)];
            blocked(&mut parts, b, inp, rows, add, kernel, threads)
        }
        [g0, g1, g2] => {
            let mut parts = [part(g0, inp), part(g1, inp), part(g2, inp)];
            blocked(&mut parts, b, inp, rows, add, kernel, threads)
        }
        _ => panic!(
            "{} weight gradients share one input; at most {MAX_PARTS}",
            grads.len()
        ),
    }
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
