//! FlashAttention forward on sm_90a with `wgmma` and TMA (FlashAttention-3's structure:
//! warp-specialised producer, intra-warpgroup overlap of softmax and matmuls): modules `flash_attn_fwd_wgmma_hs<HS>` written by
//! [`emit_module`], the same inputs, outputs and causal semantics as the FA-2 forward
//! ([`super::forward`]): Q (B, T, NH, HS), K and V (B, T, NKV, HS) bf16, O (B, T, NH, HS)
//! bf16, LSE (B, NH, T) f32 (natural log), GQA query head h reading kv head h / (NH/NKV).
//!
//! Per CTA (grid (ceil(T/128), NH, B), block 384): 128 query rows, walked heaviest first
//! (query tile `gridDim.x - 1 - blockIdx.x`, as causal tiles do unequal work).
//! - Warpgroup 0, the producer (`setmaxnreg.dec` 24): one elected thread loads the Q tile
//!   (once, on its own mbarrier) and streams K/V tiles of [`BLOCK_KV`] keys 0..=diagonal through
//!   a [`STAGES`]-stage ring of full/empty mbarriers with `cp.async.bulk.tensor.4d`.
//! - Warpgroups 1 and 2, the consumers (`setmaxnreg.inc` 240), 64 query rows each. Per K/V
//!   tile j they issue S = Q Kj^T (`wgmma` m64n128k16, Q and K from 128B-swizzled K-major
//!   descriptors, HS/16 steps) and, in the same breath, O += P(j-1) V(j-1) of the previous
//!   tile (`wgmma` `m64n<HS>k16`, A = P from registers, V from an MN-major descriptor,
//!   imm-trans-b 1); `wgmma.wait_group 1` retires S alone, so the diagonal mask (key > query
//!   = -inf) and the online softmax of tile j (fp32, exactly the FA-2 kernel's: ex2 of
//!   scale*log2e-scaled scores, running max m, per-lane partial sums l) run while the PV
//!   product is still on the tensor cores; then `wait_group 0`, the stage of tile j-1 is
//!   released, O is rescaled by 2^(m_old - m_new) and P(j) rounded to bf16 straight from the
//!   S accumulators into A-fragment registers (the m64nNk16 accumulator and A fragment
//!   layouts put the same (row, key) pairs in the same thread). The last tile's PV follows
//!   the loop. Epilogue: O / l to bf16, LSE = (m + log2 l) ln 2, rows < T only.
//! - Tile 0's K/V stage is held until its PV is done (one tile later), so the ring has 3
//!   stages: the producer still loads one tile ahead.
//!
//! Tensor maps (4-D, innermost first): (HS, heads, T, B) with byte strides (HS*2, heads*HS*2,
//! T*heads*HS*2), box (64, 1, 128, 1), swizzle 128B, OOB zero fill: one box is 128 rows of one
//! head's 64 channels, 128 bytes a row; HS 128 takes two boxes (channel 0 and 64). Rows past T
//! arrive as zeros: their keys only occur in the diagonal tile, where the causal mask already
//! removes them for every stored query row (the FA-2 kernel's argument).

use super::{AttnShape, FlashFwd};
use crate::emu::swizzle::Swizzle;
use crate::emu::{LaunchDims, ParamInfo};
use crate::error::PtxError;
use crate::kernels::Launch;
use crate::launch::Arg;
use crate::matmul::wgmma::{pack_at, EncodeTensorMap, LaunchArgs};
use crate::ptx_text::{Ptx, F32_LN2, F32_NEG_INF, F32_ZERO};
use crate::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

/// Query rows per CTA (2 consumer warpgroups x 64).
pub const BLOCK_Q: u32 = 128;
/// Keys per K/V tile.
pub const BLOCK_KV: u32 = 128;
/// K/V ring stages.
pub const STAGES: u32 = 3;
/// Threads per CTA.
pub const THREADS: u32 = 384;
/// Head sizes shipped.
pub const HEAD_SIZES: [u32; 2] = [64, 128];
/// Parameter names, in order: the three tensor maps, then as the FA-2 forward.
pub const PARAMS: [&str; 9] = [
    "tma_q",
    "tma_k",
    "tma_v",
    "o",
    "lse",
    "t",
    "nh",
    "nkv",
    "scale_log2",
];

const PRODUCER_REGS: u32 = 24;
const CONSUMER_REGS: u32 = 240;
const _: () = assert!(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536);
/// One box: 128 rows x 128 bytes.
const BOX_BYTES: u32 = 128 * 128;
const DESC_SWIZZLE_128B: u64 = 1 << 62;
const SBO: u64 = 1024;

/// `.entry` and module name for head size `hs`.
pub fn entry_name(hs: u32) -> String {
    format!("flash_attn_fwd_wgmma_hs{hs}")
}

/// [`entry_name`] as a `'static` str, for the shipped head sizes.
pub fn static_name(hs: usize) -> Option<&'static str> {
    match hs {
        64 => Some("flash_attn_fwd_wgmma_hs64"),
        128 => Some("flash_attn_fwd_wgmma_hs128"),
        _ => None,
    }
}

/// The tensor maps of Q, K and V (module docs): 4-D (HS, heads, T, B), boxes of 64 channels
/// x 1 head x 128 rows, bf16, swizzle 128B, zeros out of bounds.
pub fn tensor_maps(shape: AttnShape, bufs: &FlashFwd) -> [TensorMap; 3] {
    let map = |addr: u64, heads: usize| {
        let row = (heads * shape.hs * 2) as u64;
        TensorMap {
            data_type: TensorDataType::Bf16,
            global_address: addr,
            dims: vec![
                shape.hs as u64,
                heads as u64,
                shape.t as u64,
                shape.b as u64,
            ],
            strides: vec![(shape.hs * 2) as u64, row, row * shape.t as u64],
            box_dims: vec![64, 1, BLOCK_Q, 1],
            element_strides: vec![1; 4],
            interleave: Interleave::None,
            swizzle: Swizzle::B128,
            l2_promotion: L2Promotion::B128,
            oob_fill: OobFill::None,
        }
    };
    [
        map(bufs.q, shape.nh),
        map(bufs.k, shape.nkv),
        map(bufs.v, shape.nkv),
    ]
}

/// The arguments of the forward for `shape` (the runtime packs them against the kernel's
/// declaration): tensor maps through `encode`, grid (ceil(T/128), NH, B), block
/// [`THREADS`], [`shared_bytes`].
///
/// # Errors
/// `BadLaunch` naming the kernel for a head size other than 64 or 128, a zero size, NKV not
/// dividing NH, sizes past the kernel's 32-bit indices or CUDA's grid limits, Q, K or V not
/// 16-byte aligned (TMA), O or LSE not 4-byte aligned, or a failed `encode`.
pub fn launch_args(
    shape: AttnShape,
    bufs: &FlashFwd,
    encode: &mut EncodeTensorMap,
) -> Result<LaunchArgs, PtxError> {
    let name = static_name(shape.hs).ok_or_else(|| PtxError::BadLaunch {
        kernel: "flash_attn_fwd_wgmma".into(),
        reason: format!("head size {} has no wgmma forward (64 or 128)", shape.hs),
    })?;
    let bad = |reason: String| PtxError::BadLaunch {
        kernel: name.to_string(),
        reason,
    };
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("NKV", shape.nkv),
    ] {
        if n == 0 {
            return Err(bad(format!("{what} must be positive")));
        }
    }
    if !shape.nh.is_multiple_of(shape.nkv) {
        return Err(bad(format!(
            "NKV = {} does not divide NH = {}; GQA needs whole groups of query heads",
            shape.nkv, shape.nh
        )));
    }
    let rows = shape.b.saturating_mul(shape.t).saturating_mul(shape.nh);
    let tiles = shape.t.div_ceil(BLOCK_Q as usize);
    if rows > u32::MAX as usize
        || shape.t > i32::MAX as usize
        || shape.nh > 65535
        || shape.b > 65535
    {
        return Err(bad(format!(
            "B*T*NH = {rows} must fit 32 bits and NH, B the grid's 65535; split the batch"
        )));
    }
    for (what, addr, align) in [
        ("Q", bufs.q, 16),
        ("K", bufs.k, 16),
        ("V", bufs.v, 16),
        ("O", bufs.o, 4),
        ("LSE", bufs.lse, 4),
    ] {
        if !addr.is_multiple_of(align) {
            return Err(bad(format!(
                "{what} at {addr:#x} is not {align}-byte aligned"
            )));
        }
    }
    let [mq, mk, mv] = tensor_maps(shape, bufs);
    let (eq, ek, ev) = (encode(&mq)?, encode(&mk)?, encode(&mv)?);
    Ok(LaunchArgs {
        kernel: name,
        dims: LaunchDims {
            grid: [tiles as u32, shape.nh as u32, shape.b as u32],
            block: [THREADS, 1, 1],
            dynamic_shared_bytes: shared_bytes(shape.hs as u32),
        },
        args: vec![
            Arg::TensorMap(eq),
            Arg::TensorMap(ek),
            Arg::TensorMap(ev),
            Arg::Ptr(bufs.o),
            Arg::Ptr(bufs.lse),
            Arg::U32(shape.t as u32),
            Arg::U32(shape.nh as u32),
            Arg::U32(shape.nkv as u32),
            Arg::F32(shape.scale_log2()),
        ],
    })
}

/// [`launch_args`] packed at the offsets of `layout` (the kernel's parameters as the device
/// lays them out: `Module::params` of the parsed module under the emulator).
///
/// # Errors
/// As [`launch_args`]; `BadLaunch` when `layout` does not declare this kernel's parameters.
pub fn launch(
    shape: AttnShape,
    bufs: &FlashFwd,
    layout: &[ParamInfo],
    encode: &mut EncodeTensorMap,
) -> Result<Launch, PtxError> {
    pack_at(launch_args(shape, bufs, encode)?, layout)
}

/// Bytes of one 128-row tile (Q, K or V) of head size `hs`.
pub fn tile_bytes(hs: u32) -> u32 {
    (hs / 64) * BOX_BYTES
}

/// Dynamic shared memory: the Q tile, STAGES x (K, V), 2*STAGES + 1 barriers, and 1024 bytes
/// of slack to align the base to the swizzle period.
pub fn shared_bytes(hs: u32) -> u32 {
    tile_bytes(hs) * (1 + 2 * STAGES) + 8 * (2 * STAGES + 1) + 1024
}

fn desc_const(lbo: u64) -> u64 {
    ((lbo >> 4) << 16) | ((SBO >> 4) << 32) | DESC_SWIZZLE_128B
}

/// The whole module for head size `hs` (64 or 128).
pub fn emit_module(hs: u32) -> String {
    assert!(HEAD_SIZES.contains(&hs), "head size {hs} is not shipped");
    let name = entry_name(hs);
    let mut p = Ptx::new();
    p.text(&format!(
        "// {name}.ptx: causal FlashAttention forward, sm_90a (TMA + mbarrier ring, producer warp,\n\
         // 2 consumer warpgroups on wgmma), bf16 in/out, fp32 softmax and accumulation.\n\
         // GENERATED by frugal_ptx::flash::wgmma_fwd::emit_module(); do not edit.\n\
         // Launch: grid (ceil(T/{BLOCK_Q}), NH, B), block {THREADS}, {} bytes of dynamic shared memory.\n",
        shared_bytes(hs)
    ));
    p.raw(".version 8.0");
    p.raw(".target sm_90a");
    p.raw(".address_size 64");
    p.raw("");
    p.raw(".extern .shared .align 1024 .b8 flash_wgmma_smem[];");
    p.raw("");
    let mut k = Fwd { hs, name, p };
    k.emit();
    k.p.finish()
}

struct Fwd {
    hs: u32,
    name: String,
    p: Ptx,
}

impl Fwd {
    fn param(&self, p: &str) -> String {
        format!("{}_param_{p}", self.name)
    }

    fn emit(&mut self) {
        let name = self.name.clone();
        self.p.raw(format!(".visible .entry {name}("));
        for (i, param) in PARAMS.iter().enumerate() {
            let decl = match *param {
                "tma_q" | "tma_k" | "tma_v" => format!(".align 64 .b8 {name}_param_{param}[128]"),
                "o" | "lse" => format!(".u64 {name}_param_{param}"),
                "scale_log2" => format!(".f32 {name}_param_{param}"),
                _ => format!(".u32 {name}_param_{param}"),
            };
            let sep = if i + 1 < PARAMS.len() { "," } else { "" };
            self.p.raw(format!("    .param {decl}{sep}"));
        }
        self.p.raw(")");
        self.p.raw(format!(".maxntid {THREADS}, 1, 1"));
        self.p.raw(".minnctapersm 1");
        self.p.raw("{");
        let (ns, no) = (BLOCK_KV / 2, self.hs / 2);
        self.p.lines([
            ".reg .pred %p<8>;".to_string(),
            ".reg .pred %pwait, %pz, %pm;".into(),
            ".reg .b32 %r<8>;".into(),
            ".reg .b64 %rd<6>;".into(),
            format!(".reg .f32 %s<{ns}>;"),
            format!(".reg .f32 %o<{no}>;"),
            format!(".reg .b32 %pf<{}>;", ns / 2),
            ".reg .b32 %tidx, %wg, %warp, %lane, %g, %tq, %smem, %bars, %qt, %h, %b, %t, %nh, %nkv;".into(),
            ".reg .b32 %kvh, %q0, %ntiles, %j, %stage, %phase, %bar, %sk, %sv, %row, %d0, %prev;".into(),
            ".reg .b64 %tma_q, %tma_k, %tma_v, %po, %plse, %desc_q, %desc_k, %desc_v, %dq, %dk, %dv, %dvp, %addr;".into(),
            ".reg .f32 %sl2, %m0, %m1, %l0, %l1, %mx, %tmp, %alpha0, %alpha1, %nm, %sum, %inv;".into(),
        ]);
        self.setup();
        self.p.line("setp.ne.u32 %p0, %wg, 0;");
        self.p.line("@%p0 bra CONSUMER;");
        self.producer();
        self.p.label("CONSUMER");
        self.consumer();
        self.p.raw("}");
    }

    fn setup(&mut self) {
        let tb = tile_bytes(self.hs);
        let bars = tb * (1 + 2 * STAGES);
        let mut lines = vec![];
        for m in ["q", "k", "v"] {
            lines.push(format!(
                "mov.b64 %rd0, {};",
                self.param(&format!("tma_{m}"))
            ));
            lines.push(format!("cvta.param.u64 %tma_{m}, %rd0;"));
        }
        for m in ["o", "lse"] {
            lines.push(format!("ld.param.u64 %rd0, [{}];", self.param(m)));
            lines.push(format!("cvta.to.global.u64 %p{m}, %rd0;"));
        }
        lines.extend([
            format!("ld.param.u32 %t, [{}];", self.param("t")),
            format!("ld.param.u32 %nh, [{}];", self.param("nh")),
            format!("ld.param.u32 %nkv, [{}];", self.param("nkv")),
            format!("ld.param.f32 %sl2, [{}];", self.param("scale_log2")),
            "mov.u32 %tidx, %tid.x;".into(),
            "shr.u32 %wg, %tidx, 7;".into(),
            "shr.u32 %warp, %tidx, 5;".into(),
            "and.b32 %warp, %warp, 3;".into(),
            "and.b32 %lane, %tidx, 31;".into(),
            "shr.u32 %g, %lane, 2;".into(),
            "and.b32 %tq, %lane, 3;".into(),
            "// heaviest causal tiles first".into(),
            "mov.u32 %r0, %nctaid.x;".into(),
            "mov.u32 %r1, %ctaid.x;".into(),
            "sub.u32 %qt, %r0, %r1;".into(),
            "sub.u32 %qt, %qt, 1;".into(),
            "mov.u32 %h, %ctaid.y;".into(),
            "mov.u32 %b, %ctaid.z;".into(),
            format!("shl.b32 %q0, %qt, {};", BLOCK_Q.trailing_zeros()),
            "// causal: K/V tiles 0..=qt (BLOCK_Q = BLOCK_KV)".into(),
            "add.u32 %ntiles, %qt, 1;".into(),
            "div.u32 %r0, %nh, %nkv;".into(),
            "div.u32 %kvh, %h, %r0;".into(),
            "mov.u32 %smem, flash_wgmma_smem;".into(),
            "add.u32 %smem, %smem, 1023;".into(),
            "and.b32 %smem, %smem, -1024;".into(),
            format!("add.u32 %bars, %smem, {bars};    // qbar, full[s] at +8(1+s), empty[s] at +8(1+S+s)"),
            "setp.eq.u32 %p0, %tidx, 0;".into(),
            "@!%p0 bra INIT_DONE;".into(),
            "mbarrier.init.shared::cta.b64 [%bars], 1;".into(),
        ]);
        for s in 0..STAGES {
            lines.push(format!("add.u32 %r0, %bars, {};", 8 * (1 + s)));
            lines.push("mbarrier.init.shared::cta.b64 [%r0], 1;".into());
            lines.push(format!("add.u32 %r0, %bars, {};", 8 * (1 + STAGES + s)));
            lines.push("mbarrier.init.shared::cta.b64 [%r0], 8;".into());
        }
        lines.extend(["fence.proxy.async.shared::cta;".to_string()]);
        self.p.lines(lines);
        self.p.label("INIT_DONE");
        self.p.line("bar.sync 0;");
    }

    /// TMA boxes of one 128-row tile (all HS/64 channel blocks) at row `row` of head `head`.
    fn load_tile(&mut self, map: &str, dst: &str, head: &str, row: &str) {
        for c in 0..self.hs / 64 {
            self.p.lines([
                format!("add.u32 %r5, {dst}, {};", c * BOX_BYTES),
                format!(
                    "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes \
                     [%r5], [{map}, {{{}, {head}, {row}, %b}}], [%bar];",
                    c * 64
                ),
            ]);
        }
    }

    fn stage_bar(&mut self, full: bool, reg: &str) {
        let base = if full { 8 } else { 8 * (1 + STAGES) };
        self.p.lines([
            "shl.b32 %r0, %stage, 3;".to_string(),
            format!("add.u32 {reg}, %bars, %r0;"),
            format!("add.u32 {reg}, {reg}, {base};"),
        ]);
    }

    fn wait(&mut self, label: &str, parity: &str) {
        self.p.label(label);
        self.p.lines([
            format!("mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], {parity};"),
            format!("@!%pwait bra {label};"),
        ]);
    }

    fn advance_stage(&mut self) {
        self.p.lines([
            "add.u32 %stage, %stage, 1;".to_string(),
            format!("setp.eq.u32 %p1, %stage, {STAGES};"),
            "@%p1 mov.u32 %stage, 0;".into(),
            "@%p1 xor.b32 %phase, %phase, 1;".into(),
        ]);
    }

    fn producer(&mut self) {
        let tb = tile_bytes(self.hs);
        self.p
            .line(format!("setmaxnreg.dec.sync.aligned.u32 {PRODUCER_REGS};"));
        self.p.lines([
            "setp.ne.u32 %p0, %warp, 0;",
            "@%p0 bra PRODUCER_DONE;",
            "elect.sync %r0|%p1, -1;",
            "@!%p1 bra PRODUCER_DONE;",
            "mov.u32 %bar, %bars;",
        ]);
        self.p.line(format!(
            "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {tb};"
        ));
        self.p.line("mov.u32 %r6, %smem;");
        self.load_tile("%tma_q", "%r6", "%h", "%q0");
        self.p
            .lines(["mov.u32 %stage, 0;", "mov.u32 %phase, 0;", "mov.u32 %j, 0;"]);
        self.p.label("P_KV");
        self.stage_bar(false, "%bar");
        self.p.line("xor.b32 %r1, %phase, 1;");
        self.wait("P_WAIT_EMPTY", "%r1");
        self.stage_bar(true, "%bar");
        self.p.lines([
            format!(
                "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {};",
                2 * tb
            ),
            format!("mad.lo.u32 %sk, %stage, {}, %smem;", 2 * tb),
            format!("add.u32 %sk, %sk, {tb};"),
            format!("add.u32 %sv, %sk, {tb};"),
            format!("shl.b32 %row, %j, {};", BLOCK_KV.trailing_zeros()),
        ]);
        self.load_tile("%tma_k", "%sk", "%kvh", "%row");
        self.load_tile("%tma_v", "%sv", "%kvh", "%row");
        self.advance_stage();
        self.p.lines([
            "add.u32 %j, %j, 1;",
            "setp.lt.u32 %p0, %j, %ntiles;",
            "@%p0 bra P_KV;",
        ]);
        self.p.label("PRODUCER_DONE");
        self.p.line("ret;");
    }

    fn consumer(&mut self) {
        let hs = self.hs;
        let tb = tile_bytes(hs);
        self.p
            .line(format!("setmaxnreg.inc.sync.aligned.u32 {CONSUMER_REGS};"));
        // Q rows of this warpgroup: 64 rows x 128 bytes into each channel box.
        self.p.lines([
            "sub.u32 %r0, %wg, 1;".to_string(),
            "mad.lo.u32 %r0, %r0, 8192, %smem;".into(),
            "shr.u32 %r0, %r0, 4;".into(),
            "cvt.u64.u32 %desc_q, %r0;".into(),
            format!("or.b64 %desc_q, %desc_q, {};", desc_const(16)),
            format!("add.u32 %r0, %smem, {tb};"),
            "shr.u32 %r0, %r0, 4;".into(),
            "cvt.u64.u32 %desc_k, %r0;".into(),
            format!("or.b64 %desc_k, %desc_k, {};", desc_const(16)),
            format!("add.u32 %r0, %smem, {};", 2 * tb),
            "shr.u32 %r0, %r0, 4;".into(),
            "cvt.u64.u32 %desc_v, %r0;".into(),
            format!("or.b64 %desc_v, %desc_v, {};", desc_const(BOX_BYTES as u64)),
            format!("mov.f32 %m0, {F32_NEG_INF};"),
            format!("mov.f32 %m1, {F32_NEG_INF};"),
            format!("mov.f32 %l0, {F32_ZERO};"),
            format!("mov.f32 %l1, {F32_ZERO};"),
            "setp.eq.u32 %p2, %lane, 0;".into(),
            "mov.u32 %bar, %bars;".into(),
        ]);
        for i in 0..self.hs / 2 {
            self.p.line(format!("mov.f32 %o{i}, {F32_ZERO};"));
        }
        self.wait("C_WAIT_Q", "0");
        self.p
            .lines(["mov.u32 %stage, 0;", "mov.u32 %phase, 0;", "mov.u32 %j, 0;"]);
        self.p
            .comment("tile 0: S = Q K0^T, its softmax, P0 (nothing to overlap yet)");
        self.wait_tile(tb);
        self.issue_qk();
        self.p.line("wgmma.wait_group.sync.aligned 0;");
        self.mask_diagonal();
        self.softmax_scores();
        self.rescale_and_pack();
        self.next_tile();
        self.p.label("C_KV");
        self.p
            .lines(["setp.ge.u32 %p0, %j, %ntiles;", "@%p0 bra C_TAIL;"]);
        self.p
            .comment("tile j: S = Q Kj^T and O += P(j-1) V(j-1) in flight together; the");
        self.p
            .comment("softmax of S overlaps the PV product, then O is rescaled once PV is done");
        self.wait_tile(tb);
        self.issue_qk();
        self.issue_pv();
        self.p.line("wgmma.wait_group.sync.aligned 1;");
        self.mask_diagonal();
        self.softmax_scores();
        self.p.line("wgmma.wait_group.sync.aligned 0;");
        self.release_prev();
        self.rescale_and_pack();
        self.next_tile();
        self.p.line("bra C_KV;");
        self.p.label("C_TAIL");
        self.p.comment("the last tile's O += P V");
        self.issue_pv();
        self.p.line("wgmma.wait_group.sync.aligned 0;");
        self.release_prev();
        self.store_output();
        self.p.line("ret;");
    }

    /// Waits for tile `%j`'s K and V (stage `%stage`); `%dk`, `%dv` their descriptors.
    fn wait_tile(&mut self, tb: u32) {
        self.stage_bar(true, "%bar");
        let n = self.p.label_id();
        self.wait(&format!("C_WAIT_FULL_{n}"), "%phase");
        self.p.lines([
            format!("mul.lo.u32 %r0, %stage, {};", (2 * tb) >> 4),
            "cvt.u64.u32 %rd1, %r0;".into(),
            "add.u64 %dk, %desc_k, %rd1;".into(),
            "add.u64 %dv, %desc_v, %rd1;".into(),
        ]);
    }

    /// Tile `%j` done with its scores: its stage and V descriptor are the next PV's.
    fn next_tile(&mut self) {
        self.p
            .lines(["mov.u32 %prev, %stage;", "mov.b64 %dvp, %dv;"]);
        self.advance_stage();
        self.p.line("add.u32 %j, %j, 1;");
    }

    /// The PV product that read stage `%prev` is complete: lane 0 of each warp releases it.
    fn release_prev(&mut self) {
        self.p.lines([
            "shl.b32 %r0, %prev, 3;".to_string(),
            "add.u32 %r1, %bars, %r0;".into(),
            format!("add.u32 %r1, %r1, {};", 8 * (1 + STAGES)),
            "@%p2 mbarrier.arrive.shared::cta.b64 _, [%r1];".into(),
        ]);
    }

    /// S = Q K^T: HS/16 k16 steps; step s reads channel box s/4 at +32*(s%4) bytes.
    fn issue_qk(&mut self) {
        let accs: Vec<String> = (0..BLOCK_KV / 2).map(|i| format!("%s{i}")).collect();
        let accs = accs.join(", ");
        self.p.comment("S = Q K^T (the first step overwrites S)");
        self.p.line("setp.ne.u32 %pz, %j, %j;");
        self.p.line("wgmma.fence.sync.aligned;");
        for s in 0..self.hs / 16 {
            let off = ((s / 4) * BOX_BYTES + (s % 4) * 32) >> 4;
            self.p.lines([
                format!("add.u64 %dq, %desc_q, {off};"),
                format!("add.u64 %rd2, %dk, {off};"),
                format!(
                    "wgmma.mma_async.sync.aligned.m64n{BLOCK_KV}k16.f32.bf16.bf16 {{{accs}}}, %dq, %rd2, %pz, 1, 1, 0, 0;"
                ),
            ]);
            if s == 0 {
                self.p.line("setp.eq.u32 %pz, %j, %j;");
            }
        }
        self.p.line("wgmma.commit_group.sync.aligned;");
    }

    /// The last tile (the diagonal): key > query -> -inf. Register 4i + 2h + e holds row
    /// 64(wg-1) + 16 warp + g + 8h, key 8i + 2 tq + e of the tile.
    fn mask_diagonal(&mut self) {
        let done = format!("MASK_DONE_{}", self.p.label_id());
        self.p.lines([
            "add.u32 %r0, %j, 1;".to_string(),
            "setp.lt.u32 %p0, %r0, %ntiles;".into(),
            format!("@%p0 bra {done};"),
        ]);
        self.p.lines([
            "// d0 = first key of the lane - row of h = 0",
            "shl.b32 %r0, %tq, 1;",
            "shl.b32 %r1, %j, 7;",
            "add.u32 %d0, %r0, %r1;",
            "sub.u32 %r0, %wg, 1;",
            "shl.b32 %r0, %r0, 6;",
            "shl.b32 %r1, %warp, 4;",
            "add.u32 %r0, %r0, %r1;",
            "add.u32 %r0, %r0, %g;",
            "add.u32 %r0, %r0, %q0;",
            "sub.s32 %d0, %d0, %r0;",
        ]);
        for i in 0..BLOCK_KV / 8 {
            for reg in 0..4 {
                let e = (reg % 2) as i64;
                let row_off = if reg >= 2 { 8 } else { 0 };
                let threshold = row_off - 8 * i as i64 - e;
                let s = 4 * i + reg;
                self.p.lines([
                    format!("setp.gt.s32 %pm, %d0, {threshold};"),
                    format!("selp.f32 %s{s}, {F32_NEG_INF}, %s{s}, %pm;"),
                ]);
            }
        }
        self.p.label(&done);
    }

    /// Online softmax of the tile's scores, rows g and g+8 of the lane (the FA-2 kernel's
    /// update without touching O, which a PV wgmma may still be writing): running max m,
    /// exponentials in place in S, l = alpha*l + sum, alpha per row in %alpha0/%alpha1.
    fn softmax_scores(&mut self) {
        for row in 0..2u32 {
            let (m, l) = (format!("%m{row}"), format!("%l{row}"));
            let regs: Vec<u32> = (0..BLOCK_KV / 8)
                .flat_map(|i| [4 * i + 2 * row, 4 * i + 2 * row + 1])
                .collect();
            self.p
                .line(format!("max.f32 %mx, %s{}, %s{};", regs[0], regs[1]));
            for &r in &regs[2..] {
                self.p.line(format!("max.f32 %mx, %mx, %s{r};"));
            }
            for lanes in [1, 2] {
                self.p.lines([
                    format!("shfl.sync.bfly.b32 %tmp, %mx, {lanes}, 31, 0xffffffff;"),
                    "max.f32 %mx, %mx, %tmp;".to_string(),
                ]);
            }
            self.p.lines([
                "mul.f32 %mx, %mx, %sl2;".to_string(),
                format!("max.f32 %mx, %mx, {m};"),
                format!("sub.f32 %tmp, {m}, %mx;"),
                format!("ex2.approx.ftz.f32 %alpha{row}, %tmp;"),
                format!("mov.f32 {m}, %mx;"),
                "neg.f32 %nm, %mx;".into(),
                format!("mov.f32 %sum, {F32_ZERO};"),
            ]);
            for &r in &regs {
                self.p.lines([
                    format!("fma.rn.f32 %s{r}, %s{r}, %sl2, %nm;"),
                    format!("ex2.approx.ftz.f32 %s{r}, %s{r};"),
                    format!("add.f32 %sum, %sum, %s{r};"),
                ]);
            }
            self.p
                .line(format!("fma.rn.f32 {l}, {l}, %alpha{row}, %sum;"));
        }
    }

    /// Once no wgmma reads them: O *= 2^(m_old - m_new) per row, and P (the exponentials in
    /// S) rounded to bf16 A fragments: k16 step kk takes S registers 8kk..8kk+7, as
    /// {row g keys 2tq.., row g+8, row g keys 2tq+8.., row g+8}.
    fn rescale_and_pack(&mut self) {
        for nt in 0..self.hs / 8 {
            for r in 0..4u32 {
                let o = 4 * nt + r;
                self.p
                    .line(format!("mul.f32 %o{o}, %o{o}, %alpha{};", r / 2));
            }
        }
        for kk in 0..BLOCK_KV / 16 {
            let s0 = 8 * kk;
            for (r, (hi, lo)) in [
                (s0 + 1, s0),
                (s0 + 3, s0 + 2),
                (s0 + 5, s0 + 4),
                (s0 + 7, s0 + 6),
            ]
            .into_iter()
            .enumerate()
            {
                self.p.line(format!(
                    "cvt.rn.bf16x2.f32 %pf{}, %s{hi}, %s{lo};",
                    4 * kk + r as u32
                ));
            }
        }
    }

    /// Issues O += P V for the previous tile (V descriptor `%dvp`): BLOCK_KV/16 k16 steps, A
    /// = P from registers, B = V MN-major (channel blocks BOX_BYTES apart, k16 step 2048
    /// bytes); one commit group.
    fn issue_pv(&mut self) {
        let accs: Vec<String> = (0..self.hs / 2).map(|i| format!("%o{i}")).collect();
        let accs = accs.join(", ");
        self.p.comment("O += P V");
        self.p.line("setp.eq.u32 %pz, %j, %j;");
        self.p.line("wgmma.fence.sync.aligned;");
        for kk in 0..BLOCK_KV / 16 {
            self.p.lines([
                format!("add.u64 %rd2, %dvp, {};", (kk * 2048) >> 4),
                format!(
                    "wgmma.mma_async.sync.aligned.m64n{}k16.f32.bf16.bf16 {{{accs}}}, {{%pf{}, %pf{}, %pf{}, %pf{}}}, %rd2, %pz, 1, 1, 1;",
                    self.hs,
                    4 * kk,
                    4 * kk + 1,
                    4 * kk + 2,
                    4 * kk + 3
                ),
            ]);
        }
        self.p.line("wgmma.commit_group.sync.aligned;");
    }

    fn store_output(&mut self) {
        let hs = self.hs;
        self.p
            .comment("epilogue: full row sums, O / l in bf16, LSE = (m + log2 l) ln 2");
        self.p.line("setp.eq.u32 %p3, %tq, 0;");
        for row in 0..2u32 {
            let l = format!("%l{row}");
            for lanes in [1, 2] {
                self.p.lines([
                    format!("shfl.sync.bfly.b32 %tmp, {l}, {lanes}, 31, 0xffffffff;"),
                    format!("add.f32 {l}, {l}, %tmp;"),
                ]);
            }
            self.p.lines([
                format!("rcp.rn.f32 %inv, {l};"),
                "sub.u32 %row, %wg, 1;".to_string(),
                "shl.b32 %row, %row, 6;".into(),
                "shl.b32 %r0, %warp, 4;".into(),
                "add.u32 %row, %row, %r0;".into(),
                "add.u32 %row, %row, %g;".into(),
                "add.u32 %row, %row, %q0;".into(),
            ]);
            if row == 1 {
                self.p.line("add.u32 %row, %row, 8;");
            }
            self.p.lines([
                "setp.lt.u32 %p4, %row, %t;".to_string(),
                "mad.lo.u32 %r0, %b, %t, %row;".into(),
                "mad.lo.u32 %r0, %r0, %nh, %h;".into(),
                format!("mul.wide.u32 %addr, %r0, {};", hs * 2),
                "add.u64 %addr, %addr, %po;".into(),
                "shl.b32 %r1, %tq, 2;".into(),
                "cvt.u64.u32 %rd3, %r1;".into(),
                "add.u64 %addr, %addr, %rd3;".into(),
            ]);
            for nt in 0..hs / 8 {
                let o = 4 * nt + 2 * row;
                self.p.lines([
                    format!("mul.f32 %o{o}, %o{o}, %inv;"),
                    format!("mul.f32 %o{}, %o{}, %inv;", o + 1, o + 1),
                    format!("cvt.rn.bf16x2.f32 %r2, %o{}, %o{o};", o + 1),
                    format!("@%p4 st.global.b32 [%addr+{}], %r2;", nt * 16),
                ]);
            }
            self.p.lines([
                format!("lg2.approx.f32 %tmp, {l};"),
                format!("add.f32 %tmp, %tmp, %m{row};"),
                format!("mul.f32 %tmp, %tmp, {F32_LN2};"),
                "and.pred %p5, %p4, %p3;".into(),
                "mad.lo.u32 %r0, %b, %nh, %h;".into(),
                "mad.lo.u32 %r0, %r0, %t, %row;".into(),
                "mul.wide.u32 %addr, %r0, 4;".into(),
                "add.u64 %addr, %addr, %plse;".into(),
                "@%p5 st.global.f32 [%addr], %tmp;".into(),
            ]);
        }
    }
}
