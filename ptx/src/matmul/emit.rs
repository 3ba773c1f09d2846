//! Emitter of the tensor-core matmul modules
//! `ptx/kernels/generated/matmul_tc_<BM>x<BN>x<BK>[_v8|_rs]_<layout>_<out>.ptx` (one entry
//! per module).
//!
//! Algorithm (per CTA, one BM x BN tile of C, grid (ceil(N/BN), ceil(M/BM), batch)):
//! a [`TileConfig::stages`]-deep `cp.async` pipeline brings BK = 32 wide slices of A and B
//! into shared memory, each operand in its global layout (chunks of
//! [`TileConfig::load_bytes`] along its contiguous dimension), rows padded by 16 bytes so the
//! 8 row addresses of every `ldmatrix` phase hit 8 distinct 4-bank groups: the pitch is 80
//! bytes (20 words) for K-contiguous tiles and 2*BM+16 or 2*BN+16 bytes (4 words mod 32) for
//! M/N-contiguous ones, so rows r = 0..7 start at banks {20r mod 32} or {4r}, all distinct
//! multiples of 4: conflict free. Each warp owns a (BM/warps_m) x (BN/warps_n) block of C as m16n8 fragments of fp32
//! accumulators; per k16 step it `ldmatrix`es its A fragments (`.x4`, `.trans` when A is
//! M-contiguous) and B fragments (`.x4` for two n8 tiles, `.trans` when B is N-contiguous)
//! and issues `mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32`.
//!
//! Ragged edges: a chunk past M/N or K is loaded with `cp.async` src-size 0 (partial chunks
//! with the remaining bytes), which zero-fills shared memory, so out-of-range products add
//! exact zeros; the epilogue stores only rows < M and columns < N (vector stores of whole
//! sectors where C's rows are 8-byte aligned and the CTA's columns lie inside N, else scalar
//! predicated stores, so C needs no alignment beyond its element size; see [`epilogue`]). Requirements (checked by the launcher):
//! A and B `load_bytes`-aligned, their leading dimensions and batch strides multiples of
//! `load_bytes / 2` elements. Chunks of 16 bytes use `cp.async.cg` (L2 only); 8 and 4-byte
//! chunks (the `_v8` entries) must use `.ca`.
//!
//! Pipeline per k tile kt (one barrier per tile): wait until tile kt has landed
//! (`cp.async.wait_group stages-2`), `bar.sync` (also: every warp is done reading the stage
//! of tile kt-1), issue tile kt+stages-1 into that stage, commit, compute tile kt.
//!
//! Register-staged variants (`_rs`, [`TileConfig::staged`]): for operands no `cp.async` chunk
//! can read (odd leading dimensions such as paper-2b's F = 6739, or 2-byte aligned pointers),
//! each thread fetches its 4-byte units (2 elements; lanes on consecutive units, see
//! [`staged`]) with scalar `ld.global.b16` into registers (predicated, 0 past M/N or K, in
//! edge tiles only), computes the current tile from shared memory while those loads are in
//! flight, then packs and stores them (`st.shared.b32`, conflict free) into the other of 2
//! shared buffers; one barrier per k tile. Shared layout, `ldmatrix`, `mma.sync` and the
//! epilogue are the cp.async variant's.
//!
//! Epilogue ([`epilogue`]): C = alpha*acc (overwrite) or alpha*acc + C (accumulate, runtime
//! flag), in fp32, rounded once to bf16 for bf16 C. Shared memory is dynamic (`matmul_smem`), sized by
//! [`Geometry::shared_bytes`]; above 48 KiB the runtime opts in per function.

use super::{simt, Layout, OutType, TileConfig};
use crate::ptx_text::{Ptx, F32_ZERO};

mod epilogue;
mod staged;

/// Shared-memory geometry of one (config, layout) variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The tile config.
    pub cfg: TileConfig,
    /// The operand layout.
    pub layout: Layout,
}

/// One operand's tile in shared memory.
#[derive(Clone, Copy, Debug)]
struct OperandTile {
    /// Contiguous along K (rows are M or N, 4 chunks each) or along M/N (rows are K).
    k_contiguous: bool,
    /// The tile's extent along M (A) or N (B).
    mn: u32,
    /// Bytes per shared row, padded.
    pitch: u32,
    /// Shared rows.
    rows: u32,
}

impl OperandTile {
    fn new(k_contiguous: bool, mn: u32, bk: u32) -> OperandTile {
        if k_contiguous {
            OperandTile {
                k_contiguous,
                mn,
                pitch: bk * 2 + 16,
                rows: mn,
            }
        } else {
            OperandTile {
                k_contiguous,
                mn,
                pitch: mn * 2 + 16,
                rows: bk,
            }
        }
    }

    fn bytes(&self) -> u32 {
        self.pitch * self.rows
    }

    /// Load chunks (of `elems` elements) per shared row.
    fn chunks_per_row(&self, bk: u32, elems: u32) -> u32 {
        if self.k_contiguous {
            bk / elems
        } else {
            self.mn / elems
        }
    }
}

impl Geometry {
    /// The geometry of `cfg` for `layout`.
    pub fn new(cfg: TileConfig, layout: Layout) -> Geometry {
        Geometry { cfg, layout }
    }

    fn a(&self) -> OperandTile {
        OperandTile::new(self.layout.a_k_contiguous(), self.cfg.bm, self.cfg.bk)
    }

    fn b(&self) -> OperandTile {
        OperandTile::new(self.layout.b_k_contiguous(), self.cfg.bn, self.cfg.bk)
    }

    /// Bytes of one pipeline stage (A tile then B tile).
    pub fn stage_bytes(&self) -> u32 {
        self.a().bytes() + self.b().bytes()
    }

    /// Dynamic shared memory of the kernel.
    pub fn shared_bytes(&self) -> u32 {
        self.stage_bytes() * self.cfg.stages
    }
}

/// The full text of the module holding the one entry of `cfg` for `layout` and `out`.
///
/// One entry per module keeps each text small (tens of KB): tools that scan or re-parse
/// whole modules (the JIT, the emulator's parser tests) scale with module size.
pub fn emit_module(cfg: TileConfig, layout: Layout, out: OutType) -> String {
    let (pipeline, loads) = if cfg.staged() {
        (
            "register-staged loads into 2 shared buffers".to_string(),
            format!(
                "Ragged M, N, K: predicated\n\
                 // loads (zero past the edges) and predicated stores. Loads: {} scalar\n\
                 // ld.global.b16 per 4-byte unit into registers (lanes on consecutive units),\n\
                 // stored to shared after the compute of the previous tile: any alignment and\n\
                 // any lda, ldb (odd ones included).",
                cfg.chunk_elems()
            ),
        )
    } else {
        (
            format!("{}-stage cp.async pipeline", cfg.stages),
            format!(
                "Ragged M, N, K: cp.async src-size\n\
                 // zero-fill and predicated stores. Loads of {lb}-byte chunks: A, B {lb}-byte aligned,\n\
                 // lda, ldb and batch strides multiples of {le} elements.",
                lb = cfg.load_bytes,
                le = cfg.load_bytes / 2
            ),
        )
    };
    let header = format!(
        "// {name}.ptx: C = alpha * A * B (+ C), bf16 in, fp32 accumulate, {out} out, layout {lay},\n\
         // on tensor cores (mma.sync m16n8k16, ldmatrix, {pipeline}).\n\
         // GENERATED by frugal_ptx::matmul::emit::emit_module(); do not edit (a test re-emits\n\
         // and compares).\n\
         //\n\
         // CTA tile {bm}x{bn}x{bk}, {w} warps as {wm}x{wn} (warp tile {wtm}x{wtn}), block {t}.\n\
         // Layouts: nt (A (M,K), B as (N,K)), nn (A (M,K), B (K,N)), tn (A as (K,M), B (K,N)).\n\
         // Parameters as matmul_simt: strides in elements, accumulate = 0 overwrites\n\
         // C = alpha*AB, 1 accumulates C = alpha*AB + C. {loads}\n\
         // Launch: grid (ceil(N/{bn}), ceil(M/{bm}), batch), {smem} bytes of dynamic shared memory.\n",
        name = cfg.entry_name(layout, out),
        out = out.suffix(),
        lay = layout.name(),
        bm = cfg.bm,
        bn = cfg.bn,
        bk = cfg.bk,
        w = cfg.warps_m * cfg.warps_n,
        wm = cfg.warps_m,
        wn = cfg.warps_n,
        wtm = cfg.bm / cfg.warps_m,
        wtn = cfg.bn / cfg.warps_n,
        t = cfg.threads(),
        smem = cfg.shared_bytes(layout),
    );
    let mut p = Ptx::new();
    p.text(&header);
    p.preamble();
    p.raw("");
    p.raw(".extern .shared .align 16 .b8 matmul_smem[];");
    p.raw("");
    Kernel::new(cfg, layout, out, p).emit()
}

/// Register map (fixed names, so the text reads like the plan above):
/// %rd1..3 a, b, c (global, batch-offset); %rd4 lda, %rd5 ldb, %rd6 ldc (elements);
/// %rd7 A base of the next tile to load, %rd8 B's; %rd9 A step per tile, %rd10 B's (bytes);
/// %r1..3 m, n, k; %r4 accumulate; %r5 tid; %r6 lane; %r7 warp row, %r8 warp column;
/// %r9 bm0, %r10 bn0; %r11 k0 of the next tile to load; %r12 tiles left; %r13 write stage,
/// %r14 read stage, %r15 end of shared; %r16 A lane offset, %r17 B lane offset;
/// %r20.. scratch. Per load chunk i: %ga/%gb offsets, %sa/%sb shared offsets,
/// %ka/%kb K limits, %ma/%mb M/N byte counts.
struct Kernel {
    cfg: TileConfig,
    geo: Geometry,
    layout: Layout,
    out: OutType,
    name: String,
    p: Ptx,
}

impl Kernel {
    fn new(cfg: TileConfig, layout: Layout, out: OutType, p: Ptx) -> Kernel {
        Kernel {
            cfg,
            geo: Geometry::new(cfg, layout),
            layout,
            out,
            name: cfg.entry_name(layout, out),
            p,
        }
    }

    /// Warp tile extents and mma fragment counts.
    fn mi(&self) -> u32 {
        self.cfg.bm / self.cfg.warps_m / 16
    }

    fn nj(&self) -> u32 {
        self.cfg.bn / self.cfg.warps_n / 8
    }

    /// Elements per load chunk ([`TileConfig::chunk_elems`]).
    fn elems(&self) -> u32 {
        self.cfg.chunk_elems()
    }

    fn chunks(&self, tile: &OperandTile) -> u32 {
        tile.rows * tile.chunks_per_row(self.cfg.bk, self.elems()) / self.cfg.threads()
    }

    fn emit(mut self) -> String {
        let name = self.name.clone();
        self.p.entry(&name, &simt::typed_params());
        self.p.raw("{");
        // Per-thread load chunks; the staged path addresses all its units from one set.
        let (ca, cb) = if self.cfg.staged() {
            (1, 1)
        } else {
            (self.chunks(&self.geo.a()), self.chunks(&self.geo.b()))
        };
        let (mi, nj) = (self.mi(), self.nj());
        let p = &mut self.p;
        p.regs(".pred", "p", 10);
        p.regs(".pred", "pc", 2 * nj);
        p.regs(".b16", "rs", 4);
        p.regs(".b32", "r", 40);
        p.regs(".b32", "fa", 4 * mi);
        p.regs(".b32", "fb", 2 * nj);
        p.regs(".f32", "acc", 4 * mi * nj);
        p.regs(".f32", "f", 16);
        p.regs(".b64", "rd", 24);
        p.regs(".b64", "ga", ca);
        p.regs(".b64", "gb", cb);
        p.regs(".b32", "sa", ca);
        p.regs(".b32", "sb", cb);
        p.regs(".b32", "ka", ca);
        p.regs(".b32", "kb", cb);
        p.regs(".b32", "ma", ca);
        p.regs(".b32", "mb", cb);
        if self.cfg.staged() {
            // The register stage: one b16 per element of the thread's units.
            let ua = self.units(&self.geo.a()).per_thread;
            let ub = self.units(&self.geo.b()).per_thread;
            self.p.regs(".b16", "ha", 2 * ua);
            self.p.regs(".b16", "hb", 2 * ub);
        }
        self.prologue();
        if self.cfg.staged() {
            self.staged_setup('a');
            self.staged_setup('b');
        } else {
            self.chunk_setup('a');
            self.chunk_setup('b');
        }
        self.lane_offsets();
        self.zero_accumulators();
        self.main_loop();
        self.epilogue();
        self.p.line("ret;");
        self.p.raw("}");
        self.p.finish()
    }

    fn param(&self, p: &str) -> String {
        format!("[{}_param_{p}]", self.name)
    }

    /// Parameters, batch offsets, thread coordinates.
    fn prologue(&mut self) {
        let (lda, ldb) = (
            if self.layout.a_k_contiguous() {
                "a_sm"
            } else {
                "a_sk"
            },
            if self.layout.b_k_contiguous() {
                "b_sn"
            } else {
                "b_sk"
            },
        );
        let esize_shift = match self.out {
            OutType::F32 => 2,
            OutType::Bf16 => 1,
        };
        let lines = [
            format!("ld.param.u64 %rd1, {};", self.param("a")),
            format!("ld.param.u64 %rd2, {};", self.param("b")),
            format!("ld.param.u64 %rd3, {};", self.param("c")),
            "cvta.to.global.u64 %rd1, %rd1;".into(),
            "cvta.to.global.u64 %rd2, %rd2;".into(),
            "cvta.to.global.u64 %rd3, %rd3;".into(),
            format!("ld.param.u32 %r1, {};", self.param("m")),
            format!("ld.param.u32 %r2, {};", self.param("n")),
            format!("ld.param.u32 %r3, {};", self.param("k")),
            format!("ld.param.u32 %r4, {};", self.param("accumulate")),
            format!("ld.param.u64 %rd4, {};             // lda", self.param(lda)),
            format!("ld.param.u64 %rd5, {};             // ldb", self.param(ldb)),
            format!("ld.param.u64 %rd6, {};", self.param("ldc")),
            format!("ld.param.f32 %f1, {};", self.param("alpha")),
            "// batch z: a += 2*z*a_sb, b += 2*z*b_sb, c += esize*z*c_sb".into(),
            "mov.u32 %r20, %ctaid.z;".into(),
            "cvt.u64.u32 %rd11, %r20;".into(),
            format!("ld.param.u64 %rd12, {};", self.param("a_sb")),
            "mul.lo.u64 %rd12, %rd12, %rd11;".into(),
            "shl.b64 %rd12, %rd12, 1;".into(),
            "add.u64 %rd1, %rd1, %rd12;".into(),
            format!("ld.param.u64 %rd12, {};", self.param("b_sb")),
            "mul.lo.u64 %rd12, %rd12, %rd11;".into(),
            "shl.b64 %rd12, %rd12, 1;".into(),
            "add.u64 %rd2, %rd2, %rd12;".into(),
            format!("ld.param.u64 %rd12, {};", self.param("c_sb")),
            "mul.lo.u64 %rd12, %rd12, %rd11;".into(),
            format!("shl.b64 %rd12, %rd12, {esize_shift};"),
            "add.u64 %rd3, %rd3, %rd12;".into(),
            "mov.u32 %r5, %tid.x;".into(),
            "and.b32 %r6, %r5, 31;                   // lane".into(),
            "shr.u32 %r20, %r5, 5;                   // warp".into(),
            format!(
                "div.u32 %r7, %r20, {};                  // warp row",
                self.cfg.warps_n
            ),
            format!(
                "rem.u32 %r8, %r20, {};                  // warp column",
                self.cfg.warps_n
            ),
            "mov.u32 %r20, %ctaid.y;".into(),
            format!(
                "mul.lo.u32 %r9, %r20, {};               // bm0",
                self.cfg.bm
            ),
            "mov.u32 %r20, %ctaid.x;".into(),
            format!(
                "mul.lo.u32 %r10, %r20, {};              // bn0",
                self.cfg.bn
            ),
        ];
        self.p.lines(&lines);
    }

    /// Per-thread load chunks of operand `op` ('a' or 'b'): global and shared offsets and the
    /// limits that decide how many bytes of each chunk are real (the rest zero-fills).
    fn chunk_setup(&mut self, op: char) {
        let (tile, count, mn0, mn_len, ld, step, next, base, mn_name) = if op == 'a' {
            (
                self.geo.a(),
                self.chunks(&self.geo.a()),
                "%r9",
                "%r1",
                "%rd4",
                "%rd9",
                "%rd7",
                "%rd1",
                "M",
            )
        } else {
            (
                self.geo.b(),
                self.chunks(&self.geo.b()),
                "%r10",
                "%r2",
                "%rd5",
                "%rd10",
                "%rd8",
                "%rd2",
                "N",
            )
        };
        let cpr = tile.chunks_per_row(self.cfg.bk, self.elems());
        // `vec`: bytes of one chunk in shared memory (= load_bytes for cp.async).
        let (elems, vec) = (self.elems(), 2 * self.elems());
        let threads = self.cfg.threads();
        let layout = if tile.k_contiguous { "K" } else { mn_name };
        self.p.line(format!(
            "// load_tile chunks of {op}: {count} per thread, {cpr} per shared row ({layout}-contiguous, pitch {} bytes)",
            tile.pitch
        ));
        for c in 0..count {
            let lines = [
                format!("add.u32 %r20, %r5, {};", threads * c),
                format!("div.u32 %r21, %r20, {cpr};                 // shared row"),
                format!("rem.u32 %r22, %r20, {cpr};                 // chunk in row"),
                format!("mul.lo.u32 %r23, %r21, {};", tile.pitch),
                format!("mad.lo.u32 %s{op}{c}, %r22, {vec}, %r23;"),
            ];
            self.p.lines(&lines);
            if tile.k_contiguous {
                // row = mn offset, chunk = `elems` k elements; klim = K - k, or 0 if mn >= MN.
                let lines = [
                    format!("add.u32 %r24, {mn0}, %r21;                // mn"),
                    format!("mul.lo.u32 %r25, %r22, {elems};                  // k element"),
                    "cvt.u64.u32 %rd11, %r24;".into(),
                    format!("mul.lo.u64 %rd11, %rd11, {ld};"),
                    "cvt.u64.u32 %rd12, %r25;".into(),
                    "add.u64 %rd11, %rd11, %rd12;".into(),
                    format!("shl.b64 %g{op}{c}, %rd11, 1;"),
                    format!("sub.u32 %k{op}{c}, %r3, %r25;"),
                    format!("setp.ge.u32 %p1, %r24, {mn_len};"),
                    format!("@%p1 mov.u32 %k{op}{c}, 0;"),
                    format!("mov.u32 %m{op}{c}, {vec};"),
                ];
                self.p.lines(&lines);
            } else {
                // row = k offset, chunk = `elems` mn elements; bytes = clamp(MN - mn, 0,
                // elems)*2 while k0 + row < K, i.e. klim = K - row.
                let lines = [
                    format!("mul.lo.u32 %r24, %r22, {elems};"),
                    format!("add.u32 %r24, {mn0}, %r24;                // mn"),
                    "cvt.u64.u32 %rd11, %r21;".into(),
                    format!("mul.lo.u64 %rd11, %rd11, {ld};"),
                    "cvt.u64.u32 %rd12, %r24;".into(),
                    "add.u64 %rd11, %rd11, %rd12;".into(),
                    format!("shl.b64 %g{op}{c}, %rd11, 1;"),
                    format!("sub.u32 %k{op}{c}, %r3, %r21;"),
                    format!("sub.s32 %r25, {mn_len}, %r24;"),
                    "max.s32 %r25, %r25, 0;".into(),
                    format!("min.s32 %r25, %r25, {elems};"),
                    format!("shl.b32 %m{op}{c}, %r25, 1;"),
                ];
                self.p.lines(&lines);
            }
        }
        let step_line = if tile.k_contiguous {
            format!("mov.u64 {step}, {};", self.cfg.bk * 2)
        } else {
            format!("mul.lo.u64 {step}, {ld}, {};", self.cfg.bk * 2)
        };
        self.p
            .line(format!("{step_line}                  // bytes per k tile"));
        self.p.line(format!("mov.u64 {next}, {base};"));
    }

    /// Per-lane `ldmatrix` row addresses (relative to a stage) for k16 step 0, first fragment.
    ///
    /// Matrix j = lane/8 of an A `.x4` is (mn 8*(j%2), k 8*(j/2)), of a B `.x4` (mn 8*(j/2),
    /// k 8*(j%2)), matching the mma fragment order; lane%8 walks the stored row dimension
    /// (mn for K-contiguous tiles, k otherwise).
    fn lane_offsets(&mut self) {
        self.p
            .line("// ldmatrix lane offsets: j = lane/8, r = lane%8");
        self.p.line("shr.u32 %r20, %r6, 3;");
        self.p.line("and.b32 %r21, %r6, 7;");
        self.p
            .line("and.b32 %r22, %r20, 1;                  // j%2");
        self.p
            .line("shr.u32 %r23, %r20, 1;                  // j/2");
        let wm = self.cfg.bm / self.cfg.warps_m;
        let wn = self.cfg.bn / self.cfg.warps_n;
        let (a, b) = (self.geo.a(), self.geo.b());
        self.operand_lane_offset("%r16", &a, ("%r22", "%r23"), ("%r7", wm), 0);
        self.operand_lane_offset("%r17", &b, ("%r23", "%r22"), ("%r8", wn), a.bytes());
    }

    /// `dst` = the lane's offset in `tile` (plus `base`): `sel` = the registers holding the
    /// matrix's (mn, k) 8-blocks, `warp` = (warp index register, warp extent along mn).
    fn operand_lane_offset(
        &mut self,
        dst: &str,
        tile: &OperandTile,
        (mn_sel, k_sel): (&str, &str),
        (warp, warp_extent): (&str, u32),
        base: u32,
    ) {
        let lines = [
            format!("shl.b32 %r24, {mn_sel}, 3;"),
            format!("mad.lo.u32 %r24, {warp}, {warp_extent}, %r24;   // mn"),
            format!("shl.b32 %r25, {k_sel}, 3;                 // k"),
        ];
        self.p.lines(&lines);
        let (row, col) = if tile.k_contiguous {
            ("%r24", "%r25")
        } else {
            ("%r25", "%r24")
        };
        let lines = [
            format!("add.u32 {row}, {row}, %r21;"),
            format!("mul.lo.u32 {dst}, {row}, {};", tile.pitch),
            format!("mad.lo.u32 {dst}, {col}, 2, {dst};"),
            format!("add.u32 {dst}, {dst}, {base};"),
        ];
        self.p.lines(&lines);
    }

    fn zero_accumulators(&mut self) {
        for a in 0..4 * self.mi() * self.nj() {
            self.p.line(format!("mov.f32 %acc{a}, {F32_ZERO};"));
        }
    }

    /// %r20 = the real bytes of chunk `c` of operand `op` in the k tile at k0 = %r11: along
    /// K (`k_contiguous`) the elements before K, at most a chunk's; across it the chunk's
    /// byte count %m{op}{c} while its k index is below K, else 0.
    fn chunk_real_bytes(&mut self, op: char, c: u32, k_contiguous: bool) {
        let lines = if k_contiguous {
            vec![
                format!("sub.s32 %r20, %k{op}{c}, %r11;"),
                "max.s32 %r20, %r20, 0;".into(),
                format!("min.s32 %r20, %r20, {};", self.elems()),
                "shl.b32 %r20, %r20, 1;".into(),
            ]
        } else {
            vec![
                format!("setp.lt.s32 %p2, %r11, %k{op}{c};"),
                format!("selp.b32 %r20, %m{op}{c}, 0, %p2;"),
            ]
        };
        self.p.lines(&lines);
    }

    /// Issues the cp.async chunks of the next k tile (k0 = %r11) into the stage at %r13,
    /// commits them as one group, and advances k0, the tile bases and the write stage.
    fn load_tile(&mut self) {
        for (op, tile) in [('a', self.geo.a()), ('b', self.geo.b())] {
            let count = self.chunks(&tile);
            let (next, base) = if op == 'a' {
                ("%rd7", "%rd1")
            } else {
                ("%rd8", "%rd2")
            };
            let shared_base = if op == 'a' { 0 } else { self.geo.a().bytes() };
            for c in 0..count {
                self.chunk_real_bytes(op, c, tile.k_contiguous);
                let lines = [
                    // A chunk with no real byte reads from the operand base, always mapped.
                    "setp.ne.u32 %p3, %r20, 0;".into(),
                    format!("add.u64 %rd11, {next}, %g{op}{c};"),
                    format!("selp.b64 %rd11, %rd11, {base}, %p3;"),
                    format!("add.u32 %r21, %r13, %s{op}{c};"),
                    // .cg (L2 only) takes 16 bytes only; narrower chunks go through L1 (.ca).
                    if self.cfg.load_bytes == 16 {
                        format!(
                            "cp.async.cg.shared.global [%r21+{shared_base}], [%rd11], 16, %r20;"
                        )
                    } else {
                        format!(
                            "cp.async.ca.shared.global [%r21+{shared_base}], [%rd11], {}, %r20;",
                            self.cfg.load_bytes
                        )
                    },
                ];
                self.p.lines(&lines);
            }
        }
        let lines = [
            "cp.async.commit_group;".to_string(),
            format!("add.u32 %r11, %r11, {};", self.cfg.bk),
            "add.u64 %rd7, %rd7, %rd9;".into(),
            "add.u64 %rd8, %rd8, %rd10;".into(),
        ];
        self.p.lines(&lines);
        self.advance_stage("%r13");
    }

    fn advance_stage(&mut self, reg: &str) {
        let lines = [
            format!("add.u32 {reg}, {reg}, {};", self.geo.stage_bytes()),
            format!("setp.ge.u32 %p4, {reg}, %r15;"),
            format!("@%p4 sub.u32 {reg}, {reg}, {};", self.geo.shared_bytes()),
        ];
        self.p.lines(&lines);
    }

    fn main_loop(&mut self) {
        let lines = [
            "mov.u32 %r13, matmul_smem;               // write stage".to_string(),
            "mov.u32 %r14, %r13;                      // read stage".into(),
            format!(
                "add.u32 %r15, %r13, {};              // end of shared",
                self.geo.shared_bytes()
            ),
            "mov.u32 %r11, 0;                         // k0 of the next load".into(),
            format!("add.u32 %r12, %r3, {};", self.cfg.bk - 1),
            "shr.u32 %r12, %r12, 5;                   // k tiles".into(),
        ];
        self.p.lines(&lines);
        if self.cfg.staged() {
            self.staged_loop();
            return;
        }
        for s in 0..self.cfg.stages - 1 {
            self.p.line(format!("// prologue: tile {s}"));
            self.load_tile();
        }
        self.p.label("K_LOOP");
        self.p.line(format!(
            "cp.async.wait_group {};                 // tile kt has landed",
            self.cfg.stages - 2
        ));
        self.p.line(
            "bar.sync 0;                              // and every warp is done with tile kt-1",
        );
        self.load_tile();
        for step in 0..self.cfg.bk / 16 {
            self.mma_k_step(step);
        }
        self.advance_stage("%r14");
        self.p.line("sub.u32 %r12, %r12, 1;");
        self.p.line("setp.ne.u32 %p5, %r12, 0;");
        self.p.line("@%p5 bra K_LOOP;");
        // Tiles past K are in flight (zero-filled); nothing may be outstanding at exit.
        self.p.line("cp.async.wait_group 0;");
    }

    /// The register-staged pipeline (2 shared buffers, one barrier per k tile): fetch tile
    /// kt+1 from global memory into registers, compute tile kt from shared memory while the
    /// loads are in flight, then stash the registers into the other buffer. Tile kt+1's
    /// buffer was last read in iteration kt-1, which every warp finished before the barrier
    /// of iteration kt; its stash is visible to all after the barrier of iteration kt+1.
    fn staged_loop(&mut self) {
        self.p.line("// prologue: tile 0");
        self.fetch_tile();
        self.stash_tile();
        self.p.label("K_LOOP");
        self.p.line(
            "bar.sync 0;                              // tile kt stashed, tile kt-1 read by all",
        );
        self.fetch_tile();
        for step in 0..self.cfg.bk / 16 {
            self.mma_k_step(step);
        }
        self.advance_stage("%r14");
        self.stash_tile();
        self.p.line("sub.u32 %r12, %r12, 1;");
        self.p.line("setp.ne.u32 %p5, %r12, 0;");
        self.p.line("@%p5 bra K_LOOP;");
    }

    /// One k16 step on the read stage: ldmatrix the warp's A and B fragments, then mi x nj mma.
    fn mma_k_step(&mut self, step: u32) {
        let (a, b) = (self.geo.a(), self.geo.b());
        let a_trans = if a.k_contiguous { "" } else { ".trans" };
        let b_trans = if b.k_contiguous { "" } else { ".trans" };
        self.p.line(format!("// mma_k_step {step}"));
        self.p.line("add.u32 %r26, %r14, %r16;");
        self.p.line("add.u32 %r27, %r14, %r17;");
        for mi in 0..self.mi() {
            let off = if a.k_contiguous {
                mi * 16 * a.pitch + step * 32
            } else {
                step * 16 * a.pitch + mi * 32
            };
            let f = 4 * mi;
            self.p.line(format!(
                "ldmatrix.sync.aligned.m8n8.x4{a_trans}.shared.b16 {{%fa{}, %fa{}, %fa{}, %fa{}}}, [%r26+{off}];",
                f,
                f + 1,
                f + 2,
                f + 3
            ));
        }
        for p in 0..self.nj() / 2 {
            let off = if b.k_contiguous {
                p * 16 * b.pitch + step * 32
            } else {
                step * 16 * b.pitch + p * 32
            };
            let f = 4 * p;
            self.p.line(format!(
                "ldmatrix.sync.aligned.m8n8.x4{b_trans}.shared.b16 {{%fb{}, %fb{}, %fb{}, %fb{}}}, [%r27+{off}];",
                f,
                f + 1,
                f + 2,
                f + 3
            ));
        }
        for mi in 0..self.mi() {
            for nj in 0..self.nj() {
                let c = 4 * (mi * self.nj() + nj);
                let acc = format!("{{%acc{}, %acc{}, %acc{}, %acc{}}}", c, c + 1, c + 2, c + 3);
                let fa = format!(
                    "{{%fa{}, %fa{}, %fa{}, %fa{}}}",
                    4 * mi,
                    4 * mi + 1,
                    4 * mi + 2,
                    4 * mi + 3
                );
                self.p.line(format!(
                    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {acc}, {fa}, {{%fb{}, %fb{}}}, {acc};",
                    2 * nj,
                    2 * nj + 1
                ));
            }
        }
    }
}
