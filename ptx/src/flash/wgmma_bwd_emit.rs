//! The PTX text of the sm_90a wgmma FlashAttention backward ([`super::wgmma_bwd`] documents
//! the algorithm, the CTA roles and the shared-memory layout this writes).

use super::wgmma_bwd::{
    entry_name, shared_bytes, stage_bytes, tile_bytes, Variant, BLOCK_KV, BLOCK_Q, BOX_BYTES,
    HEAD_SIZES, STAGES, THREADS,
};
use super::wgmma_bwd_dq::DqPass;
use crate::ptx_text::{Ptx, F32_LN2, F32_ZERO};

pub(super) const PRODUCER_REGS: u32 = 24;
pub(super) const CONSUMER_REGS: u32 = 240;
const _: () = assert!(128 * PRODUCER_REGS + 128 * CONSUMER_REGS <= 65536);
const DESC_SWIZZLE_128B: u64 = 1 << 62;
/// Stride between 8-row core-matrix groups of a 128B-swizzled tile (8 rows x 128 bytes).
const SBO: u64 = 1024;
/// One k16 step along the rows of a 128B-swizzled tile read MN-major: 16 rows x 128 bytes.
pub(super) const ROW_K16: u32 = 16 * 128;
/// log2(e), for LSE (natural log) -> the base-2 exponent the kernel uses.
pub(super) const F32_LOG2E: &str = "0f3FB8AA3B";

pub(super) fn desc_const(lbo: u64) -> u64 {
    ((lbo >> 4) << 16) | ((SBO >> 4) << 32) | DESC_SWIZZLE_128B
}

/// TMA boxes of one 64-row tile (all HS/64 channel blocks) at row `row` of head `head`,
/// completing on the mbarrier in `%bar`.
pub(super) fn load_tile(p: &mut Ptx, hs: u32, map: &str, dst: &str, head: &str, row: &str) {
    for c in 0..hs / 64 {
        p.lines([
            format!("add.u32 %r5, {dst}, {};", c * BOX_BYTES),
            format!(
                "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes \
                 [%r5], [{map}, {{{}, {head}, {row}, %b}}], [%bar];",
                c * 64
            ),
        ]);
    }
}

/// `%bar` = the full (or empty) mbarrier of ring stage `%stage`: full[s] at `%bars` +
/// 8(1+s), empty[s] at +8(1+STAGES+s).
pub(super) fn stage_bar(p: &mut Ptx, full: bool) {
    let base = if full { 8 } else { 8 * (1 + STAGES) };
    p.lines([
        "shl.b32 %r0, %stage, 3;".to_string(),
        "add.u32 %bar, %bars, %r0;".into(),
        format!("add.u32 %bar, %bar, {base};"),
    ]);
}

/// Spins on `%bar` until the phase of parity `parity` has completed.
pub(super) fn wait(p: &mut Ptx, label: &str, parity: &str) {
    p.label(label);
    p.lines([
        format!("mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], {parity};"),
        format!("@!%pwait bra {label};"),
    ]);
}

/// Once every wgmma group so far has retired (after a `wait_group 0`): lane 0 of each
/// consumer warp releases ring stage `%prev` if `%pprev` (a block is pending release).
pub(super) fn release_prev(p: &mut Ptx) {
    p.lines([
        "shl.b32 %r0, %prev, 3;".to_string(),
        "add.u32 %r1, %bars, %r0;".into(),
        format!("add.u32 %r1, %r1, {};", 8 * (1 + STAGES)),
        "and.pred %prel, %pprev, %p2;".into(),
        "@%prel mbarrier.arrive.shared::cta.b64 _, [%r1];".into(),
    ]);
}
/// Two products of one block on wgmma, both operands 128B-swizzled K-major (step s reads
/// channel box s/4 at +32*(s%4) bytes), HS/16 k16 steps each: `%s*` from the first
/// descriptor pair and `%dp*` from the second (n/2 f32 accumulators each, m64nNk16), the
/// first step overwriting (scale-d from `%pz`, set from `counter` so ptxas cannot fold
/// it), then committed and waited for. The dK/dV kernel's S^T, dP^T and the dQ pass's
/// S, dP.
pub(super) fn score_products(
    p: &mut Ptx,
    hs: u32,
    n: u32,
    operands: [(&str, &str); 2],
    counter: &str,
    what: &str,
) {
    let s: Vec<String> = (0..n / 2).map(|i| format!("%s{i}")).collect();
    let dp: Vec<String> = (0..n / 2).map(|i| format!("%dp{i}")).collect();
    p.comment(what);
    p.line("wgmma.fence.sync.aligned;");
    for (accs, (a, b)) in [(&s, operands[0]), (&dp, operands[1])] {
        let accs = accs.join(", ");
        p.line(format!("setp.ne.u32 %pz, {counter}, {counter};"));
        for st in 0..hs / 16 {
            let off = ((st / 4) * BOX_BYTES + (st % 4) * 32) >> 4;
            p.lines([
                format!("add.u64 %da, {a}, {off};"),
                format!("add.u64 %db, {b}, {off};"),
                format!(
                    "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{accs}}}, %da, %db, %pz, 1, 1, 0, 0;"
                ),
            ]);
            if st == 0 {
                p.line(format!("setp.eq.u32 %pz, {counter}, {counter};"));
            }
        }
    }
    p.lines([
        "wgmma.commit_group.sync.aligned;",
        "wgmma.wait_group.sync.aligned 0;",
    ]);
}

/// Next ring stage; the phase bit flips on wrapping.
pub(super) fn advance_stage(p: &mut Ptx) {
    p.lines([
        "add.u32 %stage, %stage, 1;".to_string(),
        format!("setp.eq.u32 %p1, %stage, {STAGES};"),
        "@%p1 mov.u32 %stage, 0;".into(),
        "@%p1 xor.b32 %phase, %phase, 1;".into(),
    ]);
}

/// The whole module of `variant` for head size `hs` (64 or 128).
pub fn emit_module(variant: Variant, hs: u32) -> String {
    assert!(HEAD_SIZES.contains(&hs), "head size {hs} is not shipped");
    let name = entry_name(variant, hs);
    let mut p = Ptx::new();
    let (what, grid) = match variant {
        Variant::DkDv => ("dK, dV", "NKV"),
        Variant::DqAtomic => (
            "dK, dV, and dQ added to an f32 accumulator with red.global.add.f32",
            "NKV",
        ),
        Variant::Dq => ("dQ (query-parallel, deterministic)", "NH"),
    };
    p.text(&format!(
        "// {name}.ptx: causal FlashAttention backward, {what}; sm_90a (a producer warp's\n\
         // TMA + mbarrier ring, one consumer warpgroup on wgmma), bf16 in/out, fp32 accumulation.\n\
         // GENERATED by frugal_ptx::flash::wgmma_bwd::emit_module(); do not edit.\n\
         // Launch: grid (ceil(T/{BLOCK_KV}), {grid}, B), block {THREADS}, {} bytes of dynamic shared memory.\n",
        shared_bytes(variant, hs)
    ));
    p.raw(".version 8.0");
    p.raw(".target sm_90a");
    p.raw(".address_size 64");
    p.raw("");
    p.raw(".extern .shared .align 1024 .b8 flash_bwd_wgmma_smem[];");
    p.raw("");
    if variant == Variant::Dq {
        let mut k = DqPass { hs, p };
        k.emit(&name);
        return k.p.finish();
    }
    let mut k = Bwd {
        hs,
        atomic: variant == Variant::DqAtomic,
        name,
        p,
    };
    k.emit();
    k.p.finish()
}

/// The `.entry` line, parameters and attributes of `variant`, through the opening brace.
pub(super) fn declare(p: &mut Ptx, name: &str, variant: Variant) {
    p.raw(format!(".visible .entry {name}("));
    let params = super::wgmma_bwd::params(variant);
    for (i, param) in params.iter().enumerate() {
        let decl = match *param {
            x if x.starts_with("tma_") => format!(".align 64 .b8 {name}_param_{x}[128]"),
            "dk" | "dv" | "dq" | "dq_accum" => format!(".u64 {name}_param_{param}"),
            "scale_log2" => format!(".f32 {name}_param_{param}"),
            _ => format!(".u32 {name}_param_{param}"),
        };
        let sep = if i + 1 < params.len() { "," } else { "" };
        p.raw(format!("    .param {decl}{sep}"));
    }
    p.raw(")");
    p.raw(format!(".maxntid {THREADS}, 1, 1"));
    p.raw(".minnctapersm 1");
    p.raw("{");
}

/// What every variant starts with: the tensor maps' generic addresses, the output pointers,
/// the sizes and scales, the thread's warpgroup/warp/lane/g/tq, `%b` = the batch, the shared
/// base aligned to 1024, and the barriers (at `bars` past it) initialised by thread 0: the
/// once-loaded tiles' (1 arrival), full[s] (1, the producer's expect_tx), empty[s] (4, lane 0
/// of each consumer warp); then a CTA barrier.
pub(super) fn setup(p: &mut Ptx, name: &str, variant: Variant, bars: u32) {
    let param = |x: &str| format!("{name}_param_{x}");
    let mut lines = vec![];
    for m in ["q", "k", "v", "do", "lse", "d"] {
        lines.push(format!("mov.b64 %rd0, {};", param(&format!("tma_{m}"))));
        lines.push(format!("cvta.param.u64 %tma_{m}, %rd0;"));
    }
    let outs: &[(&str, &str)] = match variant {
        Variant::DkDv => &[("dk", "%pdk"), ("dv", "%pdv")],
        Variant::DqAtomic => &[("dk", "%pdk"), ("dv", "%pdv"), ("dq_accum", "%pdq")],
        Variant::Dq => &[("dq", "%pdq")],
    };
    for (m, reg) in outs {
        lines.push(format!("ld.param.u64 %rd0, [{}];", param(m)));
        lines.push(format!("cvta.to.global.u64 {reg}, %rd0;"));
    }
    lines.extend([
        format!("ld.param.u32 %t, [{}];", param("t")),
        format!("ld.param.u32 %nh, [{}];", param("nh")),
        format!("ld.param.u32 %nkv, [{}];", param("nkv")),
        format!("ld.param.f32 %sl2, [{}];", param("scale_log2")),
        "// scale = scale_log2 * ln 2 (dS is the gradient of the scaled scores)".into(),
        format!("mul.f32 %scale, %sl2, {F32_LN2};"),
        "mov.u32 %tidx, %tid.x;".into(),
        "shr.u32 %wg, %tidx, 7;".into(),
        "shr.u32 %warp, %tidx, 5;".into(),
        "and.b32 %warp, %warp, 3;".into(),
        "and.b32 %lane, %tidx, 31;".into(),
        "shr.u32 %g, %lane, 2;".into(),
        "and.b32 %tq, %lane, 3;".into(),
        "mov.u32 %b, %ctaid.z;".into(),
        "mov.u32 %smem, flash_bwd_wgmma_smem;".into(),
        "add.u32 %smem, %smem, 1023;".into(),
        "and.b32 %smem, %smem, -1024;".into(),
        format!(
            "add.u32 %bars, %smem, {bars};    // once, full[s] at +8(1+s), empty[s] at +8(1+S+s)"
        ),
        "setp.eq.u32 %p0, %tidx, 0;".into(),
        "@!%p0 bra INIT_DONE;".into(),
        "mbarrier.init.shared::cta.b64 [%bars], 1;".into(),
    ]);
    for s in 0..STAGES {
        lines.push(format!("add.u32 %r0, %bars, {};", 8 * (1 + s)));
        lines.push("mbarrier.init.shared::cta.b64 [%r0], 1;".into());
        lines.push(format!("add.u32 %r0, %bars, {};", 8 * (1 + STAGES + s)));
        lines.push("mbarrier.init.shared::cta.b64 [%r0], 4;".into());
    }
    lines.push("fence.proxy.async.shared::cta;".to_string());
    p.lines(lines);
    p.label("INIT_DONE");
    p.line("bar.sync 0;");
}

struct Bwd {
    hs: u32,
    atomic: bool,
    name: String,
    p: Ptx,
}

/// Byte offsets inside the aligned shared base.
struct Smem;
impl Smem {
    fn k() -> u32 {
        0
    }
    fn v(hs: u32) -> u32 {
        tile_bytes(hs)
    }
    fn ds(hs: u32) -> u32 {
        2 * tile_bytes(hs)
    }
    fn stages(hs: u32) -> u32 {
        2 * tile_bytes(hs) + 2 * BOX_BYTES
    }
    fn bars(hs: u32) -> u32 {
        Self::stages(hs) + STAGES * stage_bytes(hs)
    }
}

impl Bwd {
    /// Whether the block's dV/dK products stay in flight while the next block's S^T and dP^T
    /// are issued (its stage released one block later). Not with the atomic dQ, which waits
    /// for its own product anyway, and not at HS 128: with the 128 dV/dK accumulators still
    /// live, ptxas serialises the wgmmas for lack of registers.
    fn overlap(&self) -> bool {
        !self.atomic && self.hs == 64
    }

    fn emit(&mut self) {
        let name = self.name.clone();
        let variant = if self.atomic {
            Variant::DqAtomic
        } else {
            Variant::DkDv
        };
        declare(&mut self.p, &name, variant);
        let (na, nd) = (BLOCK_Q / 2, self.hs / 2);
        self.p.lines([
            ".reg .pred %p<8>;".to_string(),
            ".reg .pred %pwait, %pz, %pm, %pm2, %pprev, %prel;".into(),
            ".reg .b32 %r<8>;".into(),
            ".reg .b64 %rd<6>;".into(),
            format!(".reg .f32 %s<{na}>;"),
            format!(".reg .f32 %dp<{na}>;"),
            format!(".reg .f32 %dva<{nd}>;"),
            format!(".reg .f32 %dka<{nd}>;"),
            format!(".reg .f32 %dqa<{na}>;"),
            format!(".reg .b32 %pp<{}>;", na / 2),
            format!(".reg .b32 %pd<{}>;", na / 2),
            ".reg .b32 %tidx, %wg, %warp, %lane, %g, %tq, %smem, %bars, %kb, %k0, %kvh, %b, %t, %nh, %nkv;".into(),
            ".reg .b32 %grp, %hq, %hend, %qb, %nqb, %q0, %stage, %phase, %bar, %sb, %col, %key, %qrow, %prev;".into(),
            ".reg .b64 %tma_q, %tma_k, %tma_v, %tma_do, %tma_lse, %tma_d, %pdk, %pdv, %pdq, %addr;".into(),
            ".reg .b64 %desc_k, %desc_v, %desc_kb, %desc_ds, %dsb, %dq, %dqm, %ddo, %ddom, %da, %db;".into(),
            ".reg .f32 %sl2, %scale, %lse2, %dd, %x, %tmp;".into(),
        ]);
        setup(&mut self.p, &name, variant, Smem::bars(self.hs));
        self.p.lines([
            "// key block kb (block 0 has the most query blocks: launched first)",
            "mov.u32 %kb, %ctaid.x;",
            "mov.u32 %kvh, %ctaid.y;",
        ]);
        self.p.lines([
            format!("shl.b32 %k0, %kb, {};", BLOCK_KV.trailing_zeros()),
            "// query heads hq of the group, query blocks kb..nqb (causal; BLOCK_Q = BLOCK_KV)"
                .into(),
            "div.u32 %grp, %nh, %nkv;".into(),
            format!("add.u32 %nqb, %t, {};", BLOCK_Q - 1),
            format!("shr.u32 %nqb, %nqb, {};", BLOCK_Q.trailing_zeros()),
        ]);
        self.p.line("setp.ne.u32 %p0, %wg, 0;");
        self.p.line("@%p0 bra CONSUMER;");
        self.producer();
        self.p.label("CONSUMER");
        self.consumer();
        self.p.raw("}");
    }

    /// Opens the loop over (query head, query block) both roles walk in the same order.
    fn loop_head(&mut self, label: &str) {
        self.p.lines([
            "mul.lo.u32 %hq, %kvh, %grp;",
            "add.u32 %hend, %hq, %grp;",
            "mov.u32 %qb, %kb;",
            "mov.u32 %stage, 0;",
            "mov.u32 %phase, 0;",
        ]);
        self.p.label(label);
        self.p
            .line(format!("shl.b32 %q0, %qb, {};", BLOCK_Q.trailing_zeros()));
    }

    /// Closes [`Self::loop_head`]: next query block, then next head of the group.
    fn loop_tail(&mut self, label: &str) {
        advance_stage(&mut self.p);
        self.p.lines([
            "add.u32 %qb, %qb, 1;".to_string(),
            "setp.lt.u32 %p0, %qb, %nqb;".into(),
            format!("@%p0 bra {label};"),
            "mov.u32 %qb, %kb;".into(),
            "add.u32 %hq, %hq, 1;".into(),
            "setp.lt.u32 %p0, %hq, %hend;".into(),
            format!("@%p0 bra {label};"),
        ]);
    }

    fn producer(&mut self) {
        let tb = tile_bytes(self.hs);
        let sbytes = stage_bytes(self.hs);
        self.p
            .line(format!("setmaxnreg.dec.sync.aligned.u32 {PRODUCER_REGS};"));
        self.p.lines([
            "setp.ne.u32 %p0, %warp, 0;",
            "@%p0 bra PRODUCER_DONE;",
            "elect.sync %r0|%p1, -1;",
            "@!%p1 bra PRODUCER_DONE;",
            "mov.u32 %bar, %bars;",
        ]);
        self.p.comment("K and V of this key block, once");
        self.p.line(format!(
            "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {};",
            2 * tb
        ));
        self.p.line(format!("add.u32 %r6, %smem, {};", Smem::k()));
        load_tile(&mut self.p, self.hs, "%tma_k", "%r6", "%kvh", "%k0");
        self.p
            .line(format!("add.u32 %r6, %smem, {};", Smem::v(self.hs)));
        load_tile(&mut self.p, self.hs, "%tma_v", "%r6", "%kvh", "%k0");
        self.loop_head("P_LOOP");
        stage_bar(&mut self.p, false);
        self.p.line("xor.b32 %r1, %phase, 1;");
        wait(&mut self.p, "P_WAIT_EMPTY", "%r1");
        stage_bar(&mut self.p, true);
        self.p.lines([
            format!(
                "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {};",
                2 * tb + 2 * 4 * BLOCK_Q
            ),
            format!("mad.lo.u32 %sb, %stage, {sbytes}, %smem;"),
            format!("add.u32 %sb, %sb, {};", Smem::stages(self.hs)),
        ]);
        load_tile(&mut self.p, self.hs, "%tma_q", "%sb", "%hq", "%q0");
        self.p.line(format!("add.u32 %r6, %sb, {tb};"));
        load_tile(&mut self.p, self.hs, "%tma_do", "%r6", "%hq", "%q0");
        self.p
            .comment("LSE and D rows (b*NH + hq)*T + q0.. of the flat (B, NH, T) arrays");
        self.p.lines([
            "mad.lo.u32 %r1, %b, %nh, %hq;".to_string(),
            "mad.lo.u32 %r1, %r1, %t, %q0;".into(),
            format!("add.u32 %r6, %sb, {};", 2 * tb),
            "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes \
             [%r6], [%tma_lse, {%r1}], [%bar];"
                .into(),
            format!("add.u32 %r6, %r6, {};", 4 * BLOCK_Q),
            "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes \
             [%r6], [%tma_d, {%r1}], [%bar];"
                .into(),
        ]);
        self.loop_tail("P_LOOP");
        self.p.label("PRODUCER_DONE");
        self.p.line("ret;");
    }

    fn consumer(&mut self) {
        let hs = self.hs;
        let tb = tile_bytes(hs);
        self.p
            .line(format!("setmaxnreg.inc.sync.aligned.u32 {CONSUMER_REGS};"));
        let desc = |reg: &str, off: String, lbo: u64| {
            [
                format!("add.u32 %r0, %smem, {off};"),
                "shr.u32 %r0, %r0, 4;".to_string(),
                format!("cvt.u64.u32 {reg}, %r0;"),
                format!("or.b64 {reg}, {reg}, {};", desc_const(lbo)),
            ]
        };
        self.p
            .comment("K, V: K-major A operands of S^T and dP^T; K MN-major B of dQ; dS MN-major A");
        self.p.lines(desc("%desc_k", Smem::k().to_string(), 16));
        self.p.lines(desc("%desc_v", Smem::v(hs).to_string(), 16));
        self.p
            .lines(desc("%desc_kb", Smem::k().to_string(), BOX_BYTES as u64));
        self.p
            .lines(desc("%desc_ds", Smem::ds(hs).to_string(), BOX_BYTES as u64));
        for i in 0..hs / 2 {
            self.p.line(format!("mov.f32 %dva{i}, {F32_ZERO};"));
            self.p.line(format!("mov.f32 %dka{i}, {F32_ZERO};"));
        }
        self.p.lines([
            "setp.eq.u32 %p2, %lane, 0;",
            "mov.u32 %bar, %bars;",
            "// key rows of this thread: k0 + 16 warp + g (+ 8)",
            "shl.b32 %key, %warp, 4;",
            "add.u32 %key, %key, %g;",
            "add.u32 %key, %key, %k0;",
        ]);
        wait(&mut self.p, "C_WAIT_KV", "0");
        self.p
            .lines(["setp.ne.u32 %pprev, %tidx, %tidx;", "mov.u32 %prev, 0;"]);
        self.loop_head("C_LOOP");
        stage_bar(&mut self.p, true);
        wait(&mut self.p, "C_WAIT_FULL", "%phase");
        self.p.lines([
            format!("mad.lo.u32 %sb, %stage, {}, %smem;", stage_bytes(hs)),
            format!("add.u32 %sb, %sb, {};", Smem::stages(hs)),
            "shr.u32 %r0, %sb, 4;".into(),
            "cvt.u64.u32 %rd1, %r0;".into(),
            format!("or.b64 %dq, %rd1, {};", desc_const(16)),
            format!("or.b64 %dqm, %rd1, {};", desc_const(BOX_BYTES as u64)),
            format!("add.u64 %ddo, %dq, {};", tb >> 4),
            format!("add.u64 %ddom, %dqm, {};", tb >> 4),
        ]);
        self.scores();
        if self.overlap() {
            release_prev(&mut self.p);
        }
        self.probabilities();
        self.pack();
        if self.atomic {
            self.stage_ds();
        }
        self.issue_dv_dk();
        if !self.overlap() {
            if self.atomic {
                self.dq_atomic();
            } else {
                self.p.line("wgmma.wait_group.sync.aligned 0;");
            }
            self.p
                .comment("Q, dO, LSE, D of this stage are no longer read: release it");
            stage_bar(&mut self.p, false);
            self.p
                .line("@%p2 mbarrier.arrive.shared::cta.b64 _, [%bar];");
        } else {
            self.p.comment(
                "dV/dK stay in flight into the next block's S^T/dP^T; that block releases this stage",
            );
            self.p.lines([
                "mov.u32 %prev, %stage;",
                "setp.eq.u32 %pprev, %tidx, %tidx;",
            ]);
        }
        self.loop_tail("C_LOOP");
        if self.overlap() {
            self.p.line("wgmma.wait_group.sync.aligned 0;");
            release_prev(&mut self.p);
        }
        self.store_dk_dv();
        self.p.line("ret;");
    }

    /// S^T = K Q^T and dP^T = V dO^T (M = 64 keys, N = 64 queries): HS/16 k16 steps each,
    /// both operands 128B-swizzled K-major; step s reads channel box s/4 at +32*(s%4) bytes.
    fn scores(&mut self) {
        score_products(
            &mut self.p,
            self.hs,
            BLOCK_Q,
            [("%desc_k", "%dq"), ("%desc_v", "%ddo")],
            "%qb",
            "S^T = K Q^T, dP^T = V dO^T (the first step overwrites)",
        );
    }

    /// In place: S -> P = 2^(S scale log2e - LSE log2e), dP -> dS = P (dP - D); register
    /// 4i + 2h + e holds key row 16 warp + g + 8h, query column 8i + 2tq + e. Masked (P = dS
    /// = 0): key > query (causal) and query >= T (the flat LSE/D tiles run into the next head
    /// there).
    fn probabilities(&mut self) {
        let lse_off = 2 * tile_bytes(self.hs);
        let d_off = lse_off + 4 * BLOCK_Q;
        self.p
            .comment("P and dS, masked past the diagonal and past T");
        for i in 0..BLOCK_Q / 8 {
            for e in 0..2u32 {
                let col = 8 * i + e;
                self.p.lines([
                    "shl.b32 %r1, %tq, 1;".to_string(),
                    format!("add.u32 %col, %r1, {col};"),
                    "shl.b32 %r2, %col, 2;".into(),
                    "add.u32 %r2, %r2, %sb;".into(),
                    format!("ld.shared.f32 %lse2, [%r2+{lse_off}];"),
                    format!("ld.shared.f32 %dd, [%r2+{d_off}];"),
                    format!("mul.f32 %lse2, %lse2, {F32_LOG2E};"),
                    "neg.f32 %lse2, %lse2;".into(),
                    "add.u32 %qrow, %col, %q0;".into(),
                    "setp.ge.u32 %pm2, %qrow, %t;".into(),
                ]);
                for h in 0..2u32 {
                    let r = 4 * i + 2 * h + e;
                    self.p.lines([
                        format!("add.u32 %r3, %key, {};", 8 * h),
                        "setp.gt.u32 %pm, %r3, %qrow;".to_string(),
                        "or.pred %pm, %pm, %pm2;".into(),
                        format!("fma.rn.f32 %x, %s{r}, %sl2, %lse2;"),
                        "ex2.approx.ftz.f32 %x, %x;".to_string(),
                        format!("selp.f32 %s{r}, {F32_ZERO}, %x, %pm;"),
                        format!("sub.f32 %tmp, %dp{r}, %dd;"),
                        format!("mul.f32 %tmp, %tmp, %s{r};"),
                        format!("selp.f32 %dp{r}, {F32_ZERO}, %tmp, %pm;"),
                    ]);
                }
            }
        }
    }

    /// P^T and dS^T to bf16 A fragments: register 2i + h packs columns 8i + 2tq, +1 of row
    /// g + 8h (the m64nNk16 accumulator and A-fragment layouts agree).
    fn pack(&mut self) {
        for i in 0..BLOCK_Q / 8 {
            for h in 0..2u32 {
                let r = 4 * i + 2 * h;
                let f = 2 * i + h;
                self.p.lines([
                    format!("cvt.rn.bf16x2.f32 %pp{f}, %s{}, %s{r};", r + 1),
                    format!("cvt.rn.bf16x2.f32 %pd{f}, %dp{}, %dp{r};", r + 1),
                ]);
            }
        }
    }

    /// dS^T (64 keys x 64 queries, bf16) into shared as the 128B-swizzled rows a wgmma
    /// descriptor reads: key row r at r*128, the 16-byte chunk of columns 8i.. at chunk
    /// i ^ (r % 8) = i ^ g. Two buffers, by ring stage: a warp may store the next block's
    /// dS^T only after every warp passed this block's barrier below, hence its dQ wait. Then `fence.proxy.async` (generic-proxy stores, async-proxy
    /// reader) and the warpgroup's named barrier before dQ's wgmma reads it.
    fn stage_ds(&mut self) {
        self.p
            .comment("dS^T to shared (swizzled), visible to the async proxy before wgmma");
        self.p.lines([
            "sub.u32 %r1, %key, %k0;".to_string(),
            "shl.b32 %r1, %r1, 7;".into(),
            format!("add.u32 %r1, %r1, {};", Smem::ds(self.hs)),
            "add.u32 %r1, %r1, %smem;".into(),
            format!("mad.lo.u32 %r1, %stage, {BOX_BYTES}, %r1;"),
            "shl.b32 %r2, %tq, 2;".into(),
            "add.u32 %r1, %r1, %r2;".into(),
        ]);
        for i in 0..BLOCK_Q / 8 {
            self.p.lines([
                format!("xor.b32 %r2, %g, {i};"),
                "shl.b32 %r2, %r2, 4;".to_string(),
                "add.u32 %r3, %r1, %r2;".into(),
                format!("st.shared.b32 [%r3], %pd{};", 2 * i),
                format!("st.shared.b32 [%r3+1024], %pd{};", 2 * i + 1),
            ]);
        }
        self.p
            .lines(["fence.proxy.async.shared::cta;", "bar.sync 1, 128;"]);
    }

    /// dV += P^T dO and dK += dS^T Q (M = 64 keys, N = HS, K = 64 queries): A from the packed
    /// registers, B = dO / Q MN-major (channel boxes BOX_BYTES apart, k16 step 16 rows).
    fn issue_dv_dk(&mut self) {
        let hs = self.hs;
        self.p.comment("dV += P^T dO, dK += dS^T Q");
        self.p.line("setp.eq.u32 %pz, %qb, %qb;");
        self.p.line("wgmma.fence.sync.aligned;");
        for (acc, frag, b) in [("%dva", "%pp", "%ddom"), ("%dka", "%pd", "%dqm")] {
            let accs: Vec<String> = (0..hs / 2).map(|i| format!("{acc}{i}")).collect();
            let accs = accs.join(", ");
            for kk in 0..BLOCK_Q / 16 {
                self.p.lines([
                    format!("add.u64 %db, {b}, {};", (kk * ROW_K16) >> 4),
                    format!(
                        "wgmma.mma_async.sync.aligned.m64n{hs}k16.f32.bf16.bf16 {{{accs}}}, {{{frag}{}, {frag}{}, {frag}{}, {frag}{}}}, %db, %pz, 1, 1, 1;",
                        4 * kk,
                        4 * kk + 1,
                        4 * kk + 2,
                        4 * kk + 3
                    ),
                ]);
            }
        }
        self.p.line("wgmma.commit_group.sync.aligned;");
    }

    /// dQ(64 queries x HS) = dS K over this block's 64 keys, 64 channels at a time (A = dS
    /// MN-major from shared, B = K MN-major), scaled and added into the f32 accumulator with
    /// `red.global.add.f32`; register 4n + 2h + e: query q0 + 16 warp + g + 8h, channel
    /// 64c + 8n + 2tq + e; rows >= T skipped.
    fn dq_atomic(&mut self) {
        let hs = self.hs;
        let accs: Vec<String> = (0..BLOCK_Q / 2).map(|i| format!("%dqa{i}")).collect();
        let accs = accs.join(", ");
        self.p.lines([
            format!("mul.lo.u32 %r0, %stage, {};", BOX_BYTES >> 4),
            "cvt.u64.u32 %rd1, %r0;".to_string(),
            "add.u64 %dsb, %desc_ds, %rd1;".into(),
        ]);
        for c in 0..hs / 64 {
            self.p
                .comment(format!("dQ channels {}..{}", 64 * c, 64 * c + 64));
            self.p.line("wgmma.fence.sync.aligned;");
            self.p.line("setp.ne.u32 %pz, %qb, %qb;");
            for kk in 0..BLOCK_KV / 16 {
                self.p.lines([
                    format!("add.u64 %da, %dsb, {};", (kk * ROW_K16) >> 4),
                    format!(
                        "add.u64 %db, %desc_kb, {};",
                        (c * BOX_BYTES + kk * ROW_K16) >> 4
                    ),
                    format!(
                        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{accs}}}, %da, %db, %pz, 1, 1, 1, 1;"
                    ),
                ]);
                if kk == 0 {
                    self.p.line("setp.eq.u32 %pz, %qb, %qb;");
                }
            }
            self.p.lines([
                "wgmma.commit_group.sync.aligned;",
                "wgmma.wait_group.sync.aligned 0;",
            ]);
            for h in 0..2u32 {
                self.p.lines([
                    "shl.b32 %r1, %warp, 4;".to_string(),
                    "add.u32 %r1, %r1, %g;".into(),
                    format!("add.u32 %r1, %r1, {};", 8 * h),
                    "add.u32 %r1, %r1, %q0;".into(),
                    "setp.lt.u32 %p4, %r1, %t;".into(),
                    "mad.lo.u32 %r2, %b, %t, %r1;".into(),
                    "mad.lo.u32 %r2, %r2, %nh, %hq;".into(),
                    format!("mul.wide.u32 %addr, %r2, {};", hs * 4),
                    "add.u64 %addr, %addr, %pdq;".into(),
                    "shl.b32 %r3, %tq, 3;".into(),
                    format!("add.u32 %r3, %r3, {};", 256 * c),
                    "cvt.u64.u32 %rd3, %r3;".into(),
                    "add.u64 %addr, %addr, %rd3;".into(),
                ]);
                for n in 0..8u32 {
                    for e in 0..2u32 {
                        let r = 4 * n + 2 * h + e;
                        self.p.lines([
                            format!("mul.f32 %tmp, %dqa{r}, %scale;"),
                            format!("@%p4 red.global.add.f32 [%addr+{}], %tmp;", 32 * n + 4 * e),
                        ]);
                    }
                }
            }
        }
        self.p.line("wgmma.wait_group.sync.aligned 0;");
    }

    /// dK (times the softmax scale) and dV to bf16, rows k0 + 16 warp + g + 8h < T.
    fn store_dk_dv(&mut self) {
        let hs = self.hs;
        self.p
            .comment("epilogue: dK * scale and dV in bf16, key rows < T");
        for h in 0..2u32 {
            self.p.lines([
                format!("add.u32 %r1, %key, {};", 8 * h),
                "setp.lt.u32 %p4, %r1, %t;".to_string(),
                "mad.lo.u32 %r2, %b, %t, %r1;".into(),
                "mad.lo.u32 %r2, %r2, %nkv, %kvh;".into(),
                format!("mul.wide.u32 %rd4, %r2, {};", hs * 2),
                "shl.b32 %r3, %tq, 2;".into(),
                "cvt.u64.u32 %rd3, %r3;".into(),
                "add.u64 %rd4, %rd4, %rd3;".into(),
            ]);
            for (acc, base, scaled) in [("%dka", "%pdk", true), ("%dva", "%pdv", false)] {
                self.p.line(format!("add.u64 %addr, %rd4, {base};"));
                for n in 0..hs / 8 {
                    let r = 4 * n + 2 * h;
                    if scaled {
                        self.p.lines([
                            format!("mul.f32 {acc}{r}, {acc}{r}, %scale;"),
                            format!("mul.f32 {acc}{}, {acc}{}, %scale;", r + 1, r + 1),
                        ]);
                    }
                    self.p.lines([
                        format!("cvt.rn.bf16x2.f32 %r4, {acc}{}, {acc}{r};", r + 1),
                        format!("@%p4 st.global.b32 [%addr+{}], %r4;", 16 * n),
                    ]);
                }
            }
        }
    }
}
