//! bf16 matmul for every product of a training step: typed launchers and per-shape dispatch.
//!
//! The products of a linear layer with weight W (C_out, C_in) row-major and input X (M, C_in),
//! M = B*T, each a [`Layout`]:
//! - forward `Y = X * W^T` ([`Layout::Nt`]): A = X (M, K=C_in), B^T = W (N=C_out, K): both
//!   operands K-contiguous, the natural `mma.sync ... .row.col` case;
//! - `dX = dY * W` ([`Layout::Nn`]): A = dY (M, K=C_out), B = W (K, N=C_in) N-contiguous;
//! - `dW += dY^T * X` ([`Layout::Tn`]): A^T = dY (K=M_tokens, M=C_out) M-contiguous, B = X
//!   (K, N=C_in) N-contiguous; with [`Epilogue::Accumulate`] and fp32 C for gradient
//!   accumulation across micro-batches.
//!
//! The LM head is the same three with C_out = V; the vanilla attention's `Q K^T` is a batched
//! [`Layout::Nt`] and `P V` a batched [`Layout::Nn`] (grid z over B*NH with batch strides).
//!
//! Layouts by transposed loads, not by separate algorithms: every kernel reads each operand
//! tile into shared memory in its global layout (`cp.async` chunks along the contiguous
//! dimension) and `ldmatrix` fetches the mma fragments with `.trans` exactly for
//! the operands that are M- or N-contiguous (A of `Tn`, B of `Nn` and `Tn`). So one emitter
//! ([`emit`]) writes all three layouts from one tile config; the layouts differ only in chunk
//! geometry and in the `.trans` flag, not in the pipeline or the epilogue.
//!
//! Kernels (all take the same 16 parameters, see [`simt::PARAM_NAMES`]):
//! - [`KernelKind::Simt`] (`matmul_simt.ptx`): any shape, stride and 2-byte alignment;
//! - [`KernelKind::MmaSync`] (`matmul_tc_<BM>x<BN>x<BK>[_v8]_<layout>_<out>.ptx`, sm_80+): `mma.sync.m16n8k16`
//!   bf16, `ldmatrix`, a [`TileConfig::stages`]-stage `cp.async` pipeline in padded shared
//!   memory; ragged M, N, K by `cp.async` src-size zero-fill and predicated stores. It needs
//!   both operand pointers aligned to [`TileConfig::load_bytes`] (16, or 8 for the `_v8`
//!   64x64 variant) and both leading dimensions (and batch strides) multiples of
//!   `load_bytes / 2` elements (each chunk must be an aligned source), which
//!   [`Gemm::alignment`] measures; C has no alignment requirement beyond its element size.
//!   With `lda = K` (the dense `Nt`/`Nn` A) that is "K a multiple of 8" (or 4 for `_v8`).
//! - [`KernelKind::MmaSync`] with a register-staged tile (`matmul_tc_<BM>x<BN>x<BK>_rs_...`,
//!   [`TileConfig::staged`]): the same `ldmatrix` + `mma.sync` from shared memory, but operands
//!   fetched by predicated scalar loads into registers: any alignment and leading dimension
//!   (odd widths such as paper-2b's F = 6739). Dispatch picks it only where no `cp.async`
//!   variant can read the operands, so on sm_80+ no product of a preset needs SIMT.
//! - [`KernelKind::Wgmma`] (`matmul_wgmma_<BM>x<BN>x64_<layout>_<out>`, sm_90a, [`wgmma`]):
//!   TMA loads into 128B-swizzled shared memory, an mbarrier ring, a producer warp and
//!   consumer warpgroups on `wgmma`, persistent over tiles. Its parameters are tensor maps, so
//!   it is launched by [`wgmma::launch`] / [`wgmma::dispatch::launch_tma`] with an encoder, and
//!   picked only by [`wgmma::dispatch::select_tma`]: [`select`], [`choose`] and [`launch`]
//!   (whose callers pass addresses alone) never use it.
//!
//! Dispatch: [`select`] consults the embedded measured table ([`table`],
//! `dispatch_table.txt`, written by `frugal bench matmul --autotune`) and then the built-in
//! rules [`DISPATCH`]; [`plan`] = select + launch.
//!
//! Split-K (deterministic): [`choose`] may also pick a split of K for unbatched products
//! whose tiles do not fill the GPU (the weight gradients of small layers at large B*T);
//! [`launch_split`] / [`plan_split`] then launch the kernel per K slice into an f32 workspace
//! ([`workspace_bytes`]) and a reduce ([`splitk`]) that adds the slices in fixed order and
//! applies the epilogue. [`plan`] and [`select`] never split.

pub mod emit;
pub mod simt;
pub mod splitk;
pub mod table;
pub mod wgmma;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::emu::LaunchDims;
use crate::error::PtxError;
use crate::kernels::{KernelSpec, Launch};
use crate::launch::{Arg, ParamKind};

/// Which product of a linear layer (see the module docs); names say which operand is stored
/// transposed relative to the logical A (M, K), B (K, N): `N` = as is, `T` = transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A (M, K) row-major, B stored as B^T (N, K) row-major: forward `X * W^T`, `Q K^T`.
    Nt,
    /// A (M, K) row-major, B (K, N) row-major: `dY * W`, `P V`.
    Nn,
    /// A stored as A^T (K, M) row-major, B (K, N) row-major: `dY^T * X`.
    Tn,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 3] = [Layout::Nt, Layout::Nn, Layout::Tn];

    /// Lower-case name used in kernel names.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nt => "nt",
            Layout::Nn => "nn",
            Layout::Tn => "tn",
        }
    }

    /// True when A's contiguous dimension is K (else M).
    pub fn a_k_contiguous(self) -> bool {
        matches!(self, Layout::Nt | Layout::Nn)
    }

    /// True when B's contiguous dimension is K (else N).
    pub fn b_k_contiguous(self) -> bool {
        matches!(self, Layout::Nt)
    }
}

/// Element type of C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    /// fp32 (gradient accumulation, logits for the loss).
    F32,
    /// bf16, rounded to nearest even once, after the epilogue.
    Bf16,
}

impl OutType {
    /// Suffix of kernel names.
    pub fn suffix(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            OutType::F32 => 4,
            OutType::Bf16 => 2,
        }
    }
}

/// What the kernel does with C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// C = alpha * A * B (C is only written).
    Overwrite,
    /// C = alpha * A * B + C (parameter gradients accumulate).
    Accumulate,
}

/// One (possibly batched) product C = alpha * A * B (+ C); sizes and strides in elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Operand layout.
    pub layout: Layout,
    /// Element type of C.
    pub out: OutType,
    /// Overwrite or accumulate.
    pub epilogue: Epilogue,
    /// Scale of the product.
    pub alpha: f32,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// Row stride of A as stored ((M, K) for `Nt`/`Nn`: >= K; (K, M) for `Tn`: >= M).
    pub lda: usize,
    /// Row stride of B as stored ((N, K) for `Nt`: >= K; (K, N) otherwise: >= N).
    pub ldb: usize,
    /// Row stride of C (M, N): >= N.
    pub ldc: usize,
    /// Number of products (grid z); 1 for a plain matmul.
    pub batch: usize,
    /// Element distance between consecutive A matrices of the batch.
    pub batch_stride_a: usize,
    /// Element distance between consecutive B matrices of the batch.
    pub batch_stride_b: usize,
    /// Element distance between consecutive C matrices of the batch.
    pub batch_stride_c: usize,
}

impl Gemm {
    /// A dense, unbatched product: leading dimensions as tight as the layout allows,
    /// alpha 1, overwrite.
    pub fn dense(layout: Layout, out: OutType, m: usize, n: usize, k: usize) -> Gemm {
        let lda = if layout.a_k_contiguous() { k } else { m };
        let ldb = if layout.b_k_contiguous() { k } else { n };
        Gemm {
            layout,
            out,
            epilogue: Epilogue::Overwrite,
            alpha: 1.0,
            m,
            n,
            k,
            lda,
            ldb,
            ldc: n,
            batch: 1,
            batch_stride_a: 0,
            batch_stride_b: 0,
            batch_stride_c: 0,
        }
    }

    /// The same product with `epilogue` and `alpha`.
    pub fn with_epilogue(mut self, epilogue: Epilogue, alpha: f32) -> Gemm {
        self.epilogue = epilogue;
        self.alpha = alpha;
        self
    }

    /// The same product repeated `batch` times, each matrix dense after the previous one.
    pub fn batched(mut self, batch: usize) -> Gemm {
        self.batch = batch;
        self.batch_stride_a = self.a_elements();
        self.batch_stride_b = self.b_elements();
        self.batch_stride_c = self.m.saturating_sub(1) * self.ldc + self.n;
        self
    }

    /// Elements spanned by one A matrix as stored.
    pub fn a_elements(&self) -> usize {
        let (rows, cols) = if self.layout.a_k_contiguous() {
            (self.m, self.k)
        } else {
            (self.k, self.m)
        };
        rows.saturating_sub(1) * self.lda + cols
    }

    /// Elements spanned by one B matrix as stored.
    pub fn b_elements(&self) -> usize {
        let (rows, cols) = if self.layout.b_k_contiguous() {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        rows.saturating_sub(1) * self.ldb + cols
    }

    /// Elements spanned by all of C (the buffer size a caller needs).
    pub fn c_elements(&self) -> usize {
        self.batch.saturating_sub(1) * self.batch_stride_c
            + self.m.saturating_sub(1) * self.ldc
            + self.n
    }

    /// The operand alignment in bytes (a power of two, at most 16) that the tensor-core
    /// kernel's 16-byte `cp.async` chunks see: the largest power of two dividing the A and
    /// B addresses and the byte sizes of their leading dimensions and batch strides.
    pub fn alignment(&self, a: u64, b: u64) -> u32 {
        let mut bits = a | b | 16;
        for elems in [self.lda, self.ldb] {
            bits |= 2 * elems as u64;
        }
        if self.batch > 1 {
            bits |= (2 * self.batch_stride_a as u64) | (2 * self.batch_stride_b as u64);
        }
        1u32 << bits.trailing_zeros().min(4)
    }

    /// The element strides the kernels take: (a_sm, a_sk, b_sk, b_sn).
    fn strides(&self) -> (u64, u64, u64, u64) {
        let (a_sm, a_sk) = if self.layout.a_k_contiguous() {
            (self.lda as u64, 1)
        } else {
            (1, self.lda as u64)
        };
        let (b_sk, b_sn) = if self.layout.b_k_contiguous() {
            (1, self.ldb as u64)
        } else {
            (self.ldb as u64, 1)
        };
        (a_sm, a_sk, b_sk, b_sn)
    }

    /// FLOPs of the whole (batched) product: 2*M*N*K*batch.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}

/// A tensor-core tile configuration: the CTA tile, its warp grid and the pipeline depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// CTA tile rows (M).
    pub bm: u32,
    /// CTA tile columns (N).
    pub bn: u32,
    /// K per pipeline stage; 32 (two mma k16 steps).
    pub bk: u32,
    /// Warps along M.
    pub warps_m: u32,
    /// Warps along N.
    pub warps_n: u32,
    /// `cp.async` stages in flight (tiles resident in shared memory).
    pub stages: u32,
    /// Bytes per `cp.async` chunk: 16 (`.cg`), or 8 / 4 (`.ca`) for operands whose leading
    /// dimension is only a multiple of 4 / 2 elements (paper-100m's F = 2332 is 4 mod 8);
    /// 2 = no `cp.async`: register-staged scalar element loads (in units of [`STAGED_RUN`]
    /// elements, predicated per element in edge tiles) that take any alignment and any leading dimension (the
    /// paper's odd F = 4147, 6739), with [`TileConfig::stages`] = 2 shared buffers.
    pub load_bytes: u32,
}

/// Elements per unit of the register-staged (`load_bytes` = 2) variants: 2 scalar
/// `ld.global.b16` into registers, one 4-byte `st.shared.b32`; lanes take consecutive units
/// so a warp's loads and stores are contiguous (see `emit`'s staged path).
pub const STAGED_RUN: u32 = 2;

/// 128x128x32, 8 warps as 2x4 (64x32 per warp), 3 stages: the large-shape workhorse.
pub const TILE_128X128: TileConfig = TileConfig {
    bm: 128,
    bn: 128,
    bk: 32,
    warps_m: 2,
    warps_n: 4,
    stages: 3,
    load_bytes: 16,
};
/// 128x64x32, 4 warps as 2x2 (64x32 per warp), 3 stages.
pub const TILE_128X64: TileConfig = TileConfig {
    bm: 128,
    bn: 64,
    bk: 32,
    warps_m: 2,
    warps_n: 2,
    stages: 3,
    load_bytes: 16,
};
/// 64x64x32, 4 warps as 2x2 (32x32 per warp), 3 stages: small shapes, more CTAs.
pub const TILE_64X64: TileConfig = TileConfig {
    bm: 64,
    bn: 64,
    bk: 32,
    warps_m: 2,
    warps_n: 2,
    stages: 3,
    load_bytes: 16,
};
/// [`TILE_64X64`] loading 8-byte chunks: leading dimensions multiples of 4 elements.
pub const TILE_64X64_V8: TileConfig = TileConfig {
    load_bytes: 8,
    ..TILE_64X64
};

/// [`TILE_128X128`] with register-staged loads (any alignment), 2 shared buffers.
pub const TILE_128X128_RS: TileConfig = TileConfig {
    load_bytes: 2,
    stages: 2,
    ..TILE_128X128
};
/// [`TILE_128X64`] with register-staged loads (any alignment), 2 shared buffers.
pub const TILE_128X64_RS: TileConfig = TileConfig {
    load_bytes: 2,
    stages: 2,
    ..TILE_128X64
};
/// [`TILE_64X64`] with register-staged loads (any alignment), 2 shared buffers.
pub const TILE_64X64_RS: TileConfig = TileConfig {
    load_bytes: 2,
    stages: 2,
    ..TILE_64X64
};

/// Every shipped tile config; each (config, layout, output type) is one catalogue module
/// named like its entry ([`TileConfig::entry_name`]). Narrow `cp.async` loads exist only for
/// the 64x64 tile: more chunks per thread in the larger tiles would cost registers the
/// accumulators need. (The emitter also writes 4-byte loads, for leading dimensions that are
/// 2 mod 4; they passed the emulator tests during development but are not shipped: the
/// register-staged `_rs` variants cover every alignment below 8.)
pub const TILE_CONFIGS: [TileConfig; 7] = [
    TILE_128X128,
    TILE_128X64,
    TILE_64X64,
    TILE_64X64_V8,
    TILE_128X128_RS,
    TILE_128X64_RS,
    TILE_64X64_RS,
];

impl TileConfig {
    /// Threads per CTA.
    pub fn threads(&self) -> u32 {
        self.warps_m * self.warps_n * 32
    }

    /// The tile's name: `matmul_tc_<bm>x<bn>x<bk>`.
    pub fn module_name(&self) -> String {
        format!("matmul_tc_{}x{}x{}", self.bm, self.bn, self.bk)
    }

    /// True for the register-staged variants (`load_bytes` = 2: no `cp.async`).
    pub fn staged(&self) -> bool {
        self.load_bytes == 2
    }

    /// Elements of one load chunk: `load_bytes / 2` for `cp.async`, [`STAGED_RUN`] staged.
    pub fn chunk_elems(&self) -> u32 {
        if self.staged() {
            STAGED_RUN
        } else {
            self.load_bytes / 2
        }
    }

    /// The tile's name without the `matmul_tc_` prefix: `<bm>x<bn>x<bk>[_v8|_v4|_rs]`, the
    /// spelling of the dispatch table file.
    pub fn short_name(&self) -> String {
        let width = match self.load_bytes {
            16 => String::new(),
            2 => "_rs".to_string(),
            b => format!("_v{b}"),
        };
        format!("{}x{}x{}{width}", self.bm, self.bn, self.bk)
    }

    /// `.entry` (and catalogue module) name of the variant for `layout` writing `out`
    /// (`_v8`/`_v4` after the tile name for narrow loads, `_rs` for register-staged ones).
    pub fn entry_name(&self, layout: Layout, out: OutType) -> String {
        let width = match self.load_bytes {
            16 => String::new(),
            2 => "_rs".to_string(),
            b => format!("_v{b}"),
        };
        format!(
            "{}{width}_{}_{}",
            self.module_name(),
            layout.name(),
            out.suffix()
        )
    }

    /// Dynamic shared memory of `layout`'s variant, bytes.
    pub fn shared_bytes(&self, layout: Layout) -> u32 {
        emit::Geometry::new(*self, layout).shared_bytes()
    }

    /// Checks the invariants the emitter relies on (a debug aid for new configs).
    pub fn check(&self) -> Result<(), String> {
        let wm = self.bm / self.warps_m.max(1);
        let wn = self.bn / self.warps_n.max(1);
        let ok = self.bk == 32
            && self.stages >= 2
            && self.bm.is_multiple_of(self.warps_m * 16)
            && self.bn.is_multiple_of(self.warps_n * 16)
            && wm >= 16
            && wn >= 16
            && matches!(self.load_bytes, 2 | 4 | 8 | 16)
            && (!self.staged() || self.stages == 2)
            && (self.bm * 32 / self.chunk_elems()).is_multiple_of(self.threads())
            && (self.bn * 32 / self.chunk_elems()).is_multiple_of(self.threads())
            // The staged split: K-contiguous rows (16 units) pair warps' half-warps in
            // groups of 4 warps; M/N-contiguous rows must hold at least a warp's 32 units.
            && (!self.staged()
                || ((self.threads() / 32).is_multiple_of(4)
                    && self.bm >= 64
                    && self.bn >= 64
                    && self.threads().is_multiple_of(self.bm / 2)
                    && self.threads().is_multiple_of(self.bn / 2)));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "tile config {self:?} breaks the emitter's invariants"
            ))
        }
    }
}

/// Which kernel family runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// `matmul_simt`: any shape and alignment.
    Simt,
    /// `mma.sync` tensor-core kernel with this tile config (sm_80+).
    MmaSync(TileConfig),
    /// The sm_90a `wgmma` + TMA kernel with this tile config ([`wgmma::WGMMA_CONFIGS`]);
    /// launched by [`wgmma::launch`] (its tensor maps need an encoder), which [`launch`] is
    /// not.
    Wgmma(TileConfig),
}

/// What [`select`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Choice {
    /// Kernel and tile config.
    pub kernel: KernelKind,
    /// Split of K into this many slices (2..=8) computed into an f32 workspace and added in
    /// fixed order by a reduce kernel ([`launch_split`], [`plan_split`]); `None` = one
    /// launch. [`select`] never splits and [`launch`] refuses a split (one launch cannot).
    pub split_k: Option<u32>,
}

/// One row of the dispatch table: the first row whose conditions hold wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchRule {
    /// Oldest architecture (`80` = sm_80, `90` = sm_90a) the row applies to.
    pub min_arch: u32,
    /// Layout the row applies to; `None` = any.
    pub layout: Option<Layout>,
    /// Operand alignment in bytes ([`Gemm::alignment`]) the row needs.
    pub min_alignment: u32,
    /// Smallest M the row applies to.
    pub min_m: usize,
    /// Smallest N the row applies to.
    pub min_n: usize,
    /// Smallest K the row applies to.
    pub min_k: usize,
    /// The pick.
    pub choice: Choice,
}

const fn rule(
    min_arch: u32,
    min_m: usize,
    min_n: usize,
    min_k: usize,
    kernel: KernelKind,
) -> DispatchRule {
    DispatchRule {
        min_arch,
        layout: None,
        min_alignment: match kernel {
            KernelKind::Simt => 2,
            KernelKind::MmaSync(cfg) | KernelKind::Wgmma(cfg) => cfg.load_bytes,
        },
        min_m,
        min_n,
        min_k,
        choice: Choice {
            kernel,
            split_k: None,
        },
    }
}

/// The built-in dispatch rules, scanned in order after the measured table ([`table`]); the
/// last row (SIMT, anything) always matches.
///
/// Hand-written from occupancy reasoning, not measured (no GPU was available): 128x128 when
/// both M and N give a full wave of 128-tiles on a 132-SM part for typical M = B*T = 8192,
/// 128x64 when N is narrower, 64x64 for small products; cp.async tiles before the
/// register-staged ones. `frugal bench matmul --autotune` writes measured rules into
/// `dispatch_table.txt`, which [`select`] consults first.
pub const DISPATCH: &[DispatchRule] = &[
    rule(80, 1024, 1024, 32, KernelKind::MmaSync(TILE_128X128)),
    rule(80, 512, 128, 32, KernelKind::MmaSync(TILE_128X64)),
    rule(80, 1, 1, 1, KernelKind::MmaSync(TILE_64X64)),
    rule(80, 1, 1, 1, KernelKind::MmaSync(TILE_64X64_V8)),
    // Register-staged loads: only where no cp.async variant can read the operands (odd
    // leading dimensions, 2- or 4-byte alignment); same size classes as above.
    rule(80, 1024, 1024, 32, KernelKind::MmaSync(TILE_128X128_RS)),
    rule(80, 512, 128, 32, KernelKind::MmaSync(TILE_128X64_RS)),
    rule(80, 1, 1, 1, KernelKind::MmaSync(TILE_64X64_RS)),
    rule(0, 1, 1, 1, KernelKind::Simt),
];

/// The kernel for a product on architecture `arch` (80 for sm_80, 90 for sm_90a; anything
/// older gets SIMT), with operands of `alignment` bytes ([`Gemm::alignment`]): the embedded
/// measured table ([`table`]) first, then the built-in rules ([`DISPATCH`]). Never splits K
/// (`split_k` is `None`): a split needs a workspace, see [`choose`] and [`plan_split`].
pub fn select(arch: u32, layout: Layout, m: usize, n: usize, k: usize, alignment: u32) -> Choice {
    let mut choice = select_in(table::embedded(), arch, layout, m, n, k, alignment);
    choice.split_k = None;
    choice
}

/// [`select`] with split-K: the choice for `g` with operands of `alignment` bytes, including
/// the split a table rule asks for or, without one, the built-in heuristic
/// ([`builtin_split`]). Batched products never split.
pub fn choose(arch: u32, g: &Gemm, alignment: u32) -> Choice {
    choose_in(table::embedded(), arch, g, alignment)
}

/// [`choose`] over the table `rules` instead of the embedded one (tests, autotuning).
pub fn choose_in(rules: &[table::TableRule], arch: u32, g: &Gemm, alignment: u32) -> Choice {
    let measured = table::lookup(rules, arch, g.layout, g.m, g.n, g.k, alignment)
        .filter(|c| feasible(c.kernel, arch, alignment));
    let mut choice = match measured {
        Some(c) => c,
        None => {
            let mut c = builtin(arch, g.layout, g.m, g.n, g.k, alignment);
            c.split_k = builtin_split(c.kernel, g);
            c
        }
    };
    if g.batch != 1 {
        choice.split_k = None;
    }
    choice
}

/// [`select`] over the table `rules` then the built-in rules.
pub fn select_in(
    rules: &[table::TableRule],
    arch: u32,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    alignment: u32,
) -> Choice {
    table::lookup(rules, arch, layout, m, n, k, alignment)
        .filter(|c| feasible(c.kernel, arch, alignment))
        .unwrap_or_else(|| builtin(arch, layout, m, n, k, alignment))
}

/// True when `kernel` can run on `arch` with operands of `alignment` bytes.
pub fn feasible(kernel: KernelKind, arch: u32, alignment: u32) -> bool {
    match kernel {
        KernelKind::Simt => true,
        KernelKind::MmaSync(cfg) => arch >= 80 && alignment >= cfg.load_bytes,
        // Callers of the table and the built-in rules launch from addresses alone; the
        // wgmma kernel needs encoded tensor maps (wgmma::dispatch::select_tma picks it).
        KernelKind::Wgmma(_) => false,
    }
}

/// The parts the split heuristic plans for, (SMs, architecture): the A100 (108 SMs,
/// sm_80) and the H100 SXM (132, sm_90). A split must pay on both.
const SPLIT_PARTS: [(u32, u32); 2] = [(108, 80), (132, 90)];
/// The shortest K slice worth a partial pass (the reduce reads split*M*N*4 bytes).
const SPLIT_MIN_SLICE: usize = 512;
/// `mma.sync` FLOPs per DRAM byte where a part turns from memory- to compute-bound: about
/// 150 on the A100 (312 TFLOP/s over 2.0 TB/s) and 200 on the H100 SXM (`mma.sync`'s two
/// thirds of 989 TFLOP/s over 3.35 TB/s); the reduce's bytes are priced with it.
const SPLIT_RIDGE_FLOPS_PER_BYTE: f64 = 200.0;
/// A split is taken only when it predicts at most this share of the unsplit time on every
/// part in [`SPLIT_PARTS`].
const SPLIT_MIN_GAIN: f64 = 0.85;
/// Resident CTAs per SM the heuristic counts at most: one CTA of 4 warps leaves each SM
/// sub-partition a single warp to hide `mma` and load latency, two are taken to keep the
/// tensor cores busy. (Counting every resident CTA, as the roofline's wave model does, would
/// split products that already give each SM two tiles.)
const SPLIT_MAX_BLOCKS_PER_SM: u32 = 2;

/// CTAs of `cfg`'s kernel for `g` resident at once on one SM of architecture `sm`, from
/// the registers and shared memory ptxas reports (1 when the kernel is not in the table).
fn blocks_per_sm(cfg: TileConfig, g: &Gemm, sm: u32) -> u32 {
    let name = cfg.entry_name(g.layout, g.out);
    crate::resources::usage(sm, &name)
        .and_then(|u| {
            let smem = u32::try_from(u.shared_bytes)
                .unwrap_or(u32::MAX)
                .saturating_add(cfg.shared_bytes(g.layout));
            crate::occupancy::occupancy(sm, cfg.threads(), u.registers, smem)
        })
        .map_or(1, |o| o.blocks_per_sm.max(1))
}

/// The time of `g` cut into `split` K slices on a part with `slots` CTA slots (SMs ×
/// resident CTAs), in units of one CTA's unsplit work: whole waves of CTAs each doing
/// 1/split of K, plus the reduce's DRAM traffic ((split + 2) × M × N × 4 bytes: the slices
/// read, C read and written) at [`SPLIT_RIDGE_FLOPS_PER_BYTE`].
fn split_cost(ctas: usize, split: usize, slots: usize, g: &Gemm, tile_elems: usize) -> f64 {
    let waves = (ctas * split).div_ceil(slots) as f64 / split as f64;
    if split == 1 {
        return waves;
    }
    let reduce_bytes = (split + 2) as f64 * (g.m * g.n) as f64 * 4.0;
    // The unit, one CTA's unsplit work (2·tile·K FLOPs) at 1/slots of the part's rate R,
    // takes 2·tile·K·slots/R; the reduce takes bytes/bandwidth = bytes·ridge/R.
    let unit_flops = 2.0 * tile_elems as f64 * g.k as f64 * slots as f64;
    waves + reduce_bytes * SPLIT_RIDGE_FLOPS_PER_BYTE / unit_flops
}

/// The built-in split-K heuristic (a roofline model, not measured on a GPU): cut an
/// unbatched tensor-core product's K into `split` slices (at most [`table::MAX_SPLIT`],
/// each at least 512 long) when whole waves of the more, shorter CTAs plus the reduce are
/// predicted at most [`SPLIT_MIN_GAIN`] of the unsplit time on both an A100 and an H100,
/// counting the CTAs each SM holds at once. Products whose tiles leave the GPU part-idle
/// (the weight gradients of small models: few output tiles, K = every token of the batch)
/// are the ones that split. `None` = no split.
pub fn builtin_split(kernel: KernelKind, g: &Gemm) -> Option<u32> {
    let KernelKind::MmaSync(cfg) = kernel else {
        return None;
    };
    if g.batch != 1 || g.m == 0 || g.n == 0 {
        return None;
    }
    let ctas = g.m.div_ceil(cfg.bm as usize) * g.n.div_ceil(cfg.bn as usize);
    let tile = (cfg.bm * cfg.bn) as usize;
    let most = (g.k / SPLIT_MIN_SLICE).min(table::MAX_SPLIT as usize);
    let slots: Vec<usize> = SPLIT_PARTS
        .iter()
        .map(|&(sms, sm)| (sms * blocks_per_sm(cfg, g, sm).min(SPLIT_MAX_BLOCKS_PER_SM)) as usize)
        .collect();
    // The worst part's time relative to unsplit, for each split; the smallest wins (the
    // fewest slices on a tie).
    let (best, ratio) = (2..=most)
        .map(|split| {
            let worst = slots
                .iter()
                .map(|&n| split_cost(ctas, split, n, g, tile) / split_cost(ctas, 1, n, g, tile))
                .fold(0.0, f64::max);
            (split, worst)
        })
        .fold((1, 1.0), |b, c| if c.1 < b.1 { c } else { b });
    (best >= 2 && ratio <= SPLIT_MIN_GAIN).then_some(best as u32)
}

/// The built-in rules alone ([`DISPATCH`]).
pub fn builtin(arch: u32, layout: Layout, m: usize, n: usize, k: usize, alignment: u32) -> Choice {
    DISPATCH
        .iter()
        .find(|r| {
            arch >= r.min_arch
                && r.layout.is_none_or(|l| l == layout)
                && alignment >= r.min_alignment
                && m >= r.min_m
                && n >= r.min_n
                && k >= r.min_k
        })
        .map_or(
            Choice {
                kernel: KernelKind::Simt,
                split_k: None,
            },
            |r| r.choice,
        )
}

/// Parameter types of every matmul entry, in order (names in [`simt::PARAM_NAMES`]).
pub const PARAMS: [(&str, ParamKind); 16] = [
    ("a", ParamKind::Ptr),
    ("b", ParamKind::Ptr),
    ("c", ParamKind::Ptr),
    ("m", ParamKind::U32),
    ("n", ParamKind::U32),
    ("k", ParamKind::U32),
    ("a_sm", ParamKind::U64),
    ("a_sk", ParamKind::U64),
    ("b_sk", ParamKind::U64),
    ("b_sn", ParamKind::U64),
    ("ldc", ParamKind::U64),
    ("a_sb", ParamKind::U64),
    ("b_sb", ParamKind::U64),
    ("c_sb", ParamKind::U64),
    ("alpha", ParamKind::F32),
    ("accumulate", ParamKind::U32),
];

/// The catalogue module and `.entry` (both `'static`, from the shipped text) of a choice.
///
/// # Errors
/// `BadLaunch` for the reserved kinds, or if the catalogue lacks the entry (a build bug).
pub fn kernel_spec(kind: KernelKind, layout: Layout, out: OutType) -> Result<KernelSpec, PtxError> {
    let (module, entry) = match kind {
        KernelKind::Simt => ("matmul_simt".to_string(), simt::entry_name(out)),
        KernelKind::MmaSync(cfg) => (cfg.entry_name(layout, out), cfg.entry_name(layout, out)),
        KernelKind::Wgmma(_) => {
            return Err(PtxError::BadLaunch {
                kernel: "matmul_wgmma".into(),
                reason: "the sm_90a wgmma matmul takes tensor maps, not the 16 matmul \
                         parameters: launch it with matmul::wgmma::launch (or \
                         wgmma::dispatch::launch_tma) and an encoder"
                    .into(),
            })
        }
    };
    let (module, kernel) = catalogue_entry(&module, &entry)?;
    Ok(KernelSpec {
        module,
        kernel,
        params: &PARAMS,
    })
}

/// The shipped module `module` and its `.entry` `entry`, as the catalogue's `'static` names.
///
/// # Errors
/// `BadLaunch` if the catalogue lacks the module or the entry (a build bug).
fn catalogue_entry(module: &str, entry: &str) -> Result<(&'static str, &'static str), PtxError> {
    // Every matmul launch of a step build asks; scanning the module text each time made
    // deep-model step builds slow, so the entries are listed once per process.
    static ENTRIES: OnceLock<HashMap<&'static str, (&'static str, HashSet<&'static str>)>> =
        OnceLock::new();
    let entries = ENTRIES.get_or_init(|| {
        crate::catalogue::modules()
            .iter()
            .map(|m| (m.name, (m.name, m.entries().into_iter().collect())))
            .collect()
    });
    let (name, kernels) = entries.get(module).ok_or_else(|| PtxError::BadLaunch {
        kernel: entry.to_string(),
        reason: format!("no catalogue module {module}"),
    })?;
    let kernel = kernels.get(entry).ok_or_else(|| PtxError::BadLaunch {
        kernel: entry.to_string(),
        reason: format!("module {module} has no entry {entry}"),
    })?;
    Ok((name, kernel))
}

/// The launch of `g` with the kernel of `choice`; `a`, `b`, `c` are device addresses.
///
/// # Errors
/// `BadLaunch` when a size is 0 or does not fit 32 bits, a leading dimension is smaller than
/// its row, a pointer is not element-aligned, `choice` is a tensor-core kernel and the
/// operands are not 16-byte aligned ([`Gemm::alignment`]), or `choice` asks for a reserved
/// kind or split-K.
pub fn launch(choice: &Choice, g: &Gemm, a: u64, b: u64, c: u64) -> Result<Launch, PtxError> {
    let spec = kernel_spec(choice.kernel, g.layout, g.out)?;
    if choice.split_k.is_some() {
        return Err(spec.bad("split-K is not implemented; use split_k: None"));
    }
    for (what, v) in [("M", g.m), ("N", g.n), ("K", g.k), ("batch", g.batch)] {
        if v == 0 || u32::try_from(v).is_err() {
            return Err(spec.bad(format!("{what} = {v} must be in 1..2^32")));
        }
    }
    let a_cols = if g.layout.a_k_contiguous() { g.k } else { g.m };
    let (b_cols, b_what) = if g.layout.b_k_contiguous() {
        (g.k, "K")
    } else {
        (g.n, "N")
    };
    if g.lda < a_cols || g.ldb < b_cols || g.ldc < g.n {
        return Err(spec.bad(format!(
            "leading dimensions lda {} ldb {} ldc {} are shorter than their rows ({a_cols}, \
             {b_cols} ({b_what}), {})",
            g.lda, g.ldb, g.ldc, g.n
        )));
    }
    for (what, p, align) in [("A", a, 2), ("B", b, 2), ("C", c, g.out.size() as u64)] {
        if !p.is_multiple_of(align) {
            return Err(spec.bad(format!("{what} at {p:#x} is not {align}-byte aligned")));
        }
    }
    let dims = match choice.kernel {
        KernelKind::Simt => LaunchDims {
            grid: [
                grid_dim(&spec, g.n, simt::SIMT_TILE)?,
                grid_dim(&spec, g.m, simt::SIMT_TILE)?,
                g.batch as u32,
            ],
            block: [simt::SIMT_TILE, simt::SIMT_TILE, 1],
            dynamic_shared_bytes: 0,
        },
        KernelKind::MmaSync(cfg) => {
            let align = g.alignment(a, b);
            if align < cfg.load_bytes {
                return Err(spec.bad(format!(
                    "this tensor-core kernel needs {}-byte operands (pointers, lda/ldb and batch \
                     strides multiples of {} elements); these are {align}-byte: use a narrower \
                     load or KernelKind::Simt (select() does)",
                    cfg.load_bytes,
                    cfg.load_bytes / 2
                )));
            }
            LaunchDims {
                grid: [
                    grid_dim(&spec, g.n, cfg.bn)?,
                    grid_dim(&spec, g.m, cfg.bm)?,
                    g.batch as u32,
                ],
                block: [cfg.threads(), 1, 1],
                dynamic_shared_bytes: cfg.shared_bytes(g.layout),
            }
        }
        KernelKind::Wgmma(_) => unreachable_kind(&spec)?,
    };
    let (a_sm, a_sk, b_sk, b_sn) = g.strides();
    let accumulate = match g.epilogue {
        Epilogue::Overwrite => 0,
        Epilogue::Accumulate => 1,
    };
    spec.launch(
        dims,
        &[
            Arg::Ptr(a),
            Arg::Ptr(b),
            Arg::Ptr(c),
            Arg::U32(g.m as u32),
            Arg::U32(g.n as u32),
            Arg::U32(g.k as u32),
            Arg::U64(a_sm),
            Arg::U64(a_sk),
            Arg::U64(b_sk),
            Arg::U64(b_sn),
            Arg::U64(g.ldc as u64),
            Arg::U64(g.batch_stride_a as u64),
            Arg::U64(g.batch_stride_b as u64),
            Arg::U64(g.batch_stride_c as u64),
            Arg::F32(g.alpha),
            Arg::U32(accumulate),
        ],
    )
}

fn unreachable_kind(spec: &KernelSpec) -> Result<LaunchDims, PtxError> {
    Err(spec.bad("reserved kernel kind"))
}

fn grid_dim(spec: &KernelSpec, len: usize, tile: u32) -> Result<u32, PtxError> {
    u32::try_from(len.div_ceil(tile as usize))
        .map_err(|_| spec.bad(format!("{len} needs too many CTAs")))
}

/// [`select`] then [`launch`]: the launch of `g` on architecture `arch`.
///
/// # Errors
/// As [`launch`].
pub fn plan(arch: u32, g: &Gemm, a: u64, b: u64, c: u64) -> Result<(Choice, Launch), PtxError> {
    let choice = select(arch, g.layout, g.m, g.n, g.k, g.alignment(a, b));
    Ok((choice, launch(&choice, g, a, b, c)?))
}

/// How `choice` cuts K: `(kslice, slices)`, `kslice` a multiple of 32 (BK, so every slice
/// but the last starts on a tile boundary and keeps the operands' alignment), `slices` =
/// ceil(K / kslice) <= the requested split. `(K, 1)` without a split.
pub fn split_slices(choice: &Choice, k: usize) -> (usize, usize) {
    match choice.split_k {
        Some(s) if s > 1 && k > 0 => {
            let kslice = k.div_ceil(s as usize).div_ceil(32) * 32;
            (kslice, k.div_ceil(kslice))
        }
        _ => (k, 1),
    }
}

/// Bytes of f32 workspace [`launch_split`] needs for `choice` on `g`: slices * M * N * 4,
/// or 0 when `choice` does not split (or `g` is batched, which never splits).
pub fn workspace_bytes(choice: &Choice, g: &Gemm) -> usize {
    let (_, slices) = split_slices(choice, g.k);
    if slices < 2 || g.batch != 1 {
        return 0;
    }
    slices * g.m * g.n * 4
}

/// The launches of `g` with `choice`, split-K included: for a split, the partial products
/// of each K slice into `workspace` (f32, [`workspace_bytes`], 4-byte aligned; one launch for
/// the whole slices through grid z, one for a ragged last slice), then the reduce
/// ([`splitk`]) that adds the slices in fixed order and applies `g`'s epilogue into C. Run
/// them in order on one stream. Without a split, the one launch of [`launch`].
///
/// # Errors
/// As [`launch`]; `BadLaunch` when the split product is batched or `workspace` is 0 or not
/// 4-byte aligned.
pub fn launch_split(
    choice: &Choice,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    workspace: u64,
) -> Result<Vec<Launch>, PtxError> {
    let plain = Choice {
        kernel: choice.kernel,
        split_k: None,
    };
    let (kslice, slices) = split_slices(choice, g.k);
    if slices < 2 {
        return Ok(vec![launch(&plain, g, a, b, c)?]);
    }
    let spec = kernel_spec(choice.kernel, g.layout, OutType::F32)?;
    if g.batch != 1 {
        return Err(spec.bad(format!(
            "split-K of a batched product (batch {}) is not supported; use split_k: None",
            g.batch
        )));
    }
    if workspace == 0 || !workspace.is_multiple_of(4) {
        return Err(spec.bad(format!(
            "split-K workspace at {workspace:#x} must be a non-null 4-byte aligned buffer of \
             {} bytes (workspace_bytes)",
            workspace_bytes(choice, g)
        )));
    }
    let (_, a_sk, b_sk, _) = g.strides();
    let mn = g.m * g.n;
    let whole = g.k / kslice;
    let rest = g.k - whole * kslice;
    // Each slice: the same operands advanced by s*kslice along K, C = W[s] dense (M, N).
    let partial = |k: usize, batch: usize| Gemm {
        out: OutType::F32,
        epilogue: Epilogue::Overwrite,
        alpha: 1.0,
        k,
        ldc: g.n,
        batch,
        batch_stride_a: kslice * a_sk as usize,
        batch_stride_b: kslice * b_sk as usize,
        batch_stride_c: mn,
        ..*g
    };
    let mut launches = Vec::with_capacity(3);
    if whole > 0 {
        launches.push(launch(&plain, &partial(kslice, whole), a, b, workspace)?);
    }
    if rest > 0 {
        let skip = (whole * kslice) as u64;
        launches.push(launch(
            &plain,
            &partial(rest, 1),
            a + 2 * skip * a_sk,
            b + 2 * skip * b_sk,
            workspace + 4 * (whole * mn) as u64,
        )?);
    }
    launches.push(reduce_launch(g, c, workspace, slices)?);
    Ok(launches)
}

/// The split-K reduce of `slices` partial products at `workspace` into `g`'s C.
fn reduce_launch(g: &Gemm, c: u64, workspace: u64, slices: usize) -> Result<Launch, PtxError> {
    let (module, kernel) = catalogue_entry(splitk::MODULE, &splitk::entry_name(g.out))?;
    let spec = KernelSpec {
        module,
        kernel,
        params: &splitk::PARAMS,
    };
    if !c.is_multiple_of(g.out.size() as u64) {
        return Err(spec.bad(format!("C at {c:#x} is not {}-byte aligned", g.out.size())));
    }
    let mn = g.m * g.n;
    let grid = u32::try_from(mn.div_ceil(splitk::REDUCE_THREADS as usize))
        .map_err(|_| spec.bad(format!("M*N = {mn} needs too many CTAs")))?;
    let accumulate = match g.epilogue {
        Epilogue::Overwrite => 0,
        Epilogue::Accumulate => 1,
    };
    spec.launch(
        LaunchDims {
            grid: [grid, 1, 1],
            block: [splitk::REDUCE_THREADS, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &[
            Arg::Ptr(workspace),
            Arg::Ptr(c),
            Arg::U32(g.m as u32),
            Arg::U32(g.n as u32),
            Arg::U64(g.ldc as u64),
            Arg::U32(slices as u32),
            Arg::U64(mn as u64),
            Arg::F32(g.alpha),
            Arg::U32(accumulate),
        ],
    )
}

/// [`choose`] then [`launch_split`]: the launches of `g` on `arch`, split-K when the choice
/// asks for it and a `workspace` of at least [`workspace_bytes`] is given; `None` = no split
/// (the choice comes back with `split_k: None`, as [`plan`]'s).
///
/// # Errors
/// As [`launch_split`].
pub fn plan_split(
    arch: u32,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    workspace: Option<u64>,
) -> Result<(Choice, Vec<Launch>), PtxError> {
    let mut choice = choose(arch, g, g.alignment(a, b));
    let Some(ws) = workspace else {
        choice.split_k = None;
        return Ok((choice, vec![launch(&choice, g, a, b, c)?]));
    };
    if split_slices(&choice, g.k).1 < 2 {
        choice.split_k = None;
    }
    let launches = launch_split(&choice, g, a, b, c, ws)?;
    Ok((choice, launches))
}
