//! The PTX text of the deterministic dQ pass of the sm_90a wgmma backward
//! ([`super::wgmma_bwd::Variant::Dq`]): query-parallel, so each dQ element is summed by one
//! thread over the key blocks in order, without atomics.
//!
//! Per CTA (grid (ceil(T/64), NH, B), block 256; query block `gridDim.x - 1 - blockIdx.x`,
//! heaviest first): the producer warp TMA-loads the block's Q and dO tiles and its 64 LSE and
//! D values once, then streams the K/V tiles of key blocks 0..=query block through the
//! mbarrier ring. The consumer warpgroup computes S = Q K^T and dP = dO V^T (m64n64k16, M =
//! the 64 queries, both operands K-major descriptors), P and dS = P (dP - D) per row, and
//! dQ += dS K with dS as register A fragments straight from the accumulators and K as an
//! MN-major descriptor. Epilogue: dQ * scale in bf16, rows < T.

use super::wgmma_bwd::{tile_bytes, Variant, BLOCK_KV, BLOCK_Q, BOX_BYTES, STAGES};
use super::wgmma_bwd_emit::{
    advance_stage, declare, desc_const, load_tile, release_prev, score_products, setup, stage_bar,
    wait, CONSUMER_REGS, F32_LOG2E, PRODUCER_REGS, ROW_K16,
};
use crate::ptx_text::{Ptx, F32_ZERO};

/// Byte offsets inside the aligned shared base: Q, dO, LSE, D (padded to the swizzle
/// period), then the K/V ring, then the barriers.
pub(super) fn stages_offset(hs: u32) -> u32 {
    2 * tile_bytes(hs) + 1024
}

/// One ring stage: a K and a V tile.
pub(super) fn stage_bytes(hs: u32) -> u32 {
    2 * tile_bytes(hs)
}

/// Offset of the barriers (the query tiles' mbarrier, full[s], empty[s]).
pub(super) fn bars_offset(hs: u32) -> u32 {
    stages_offset(hs) + STAGES * stage_bytes(hs)
}

pub(super) struct DqPass {
    pub hs: u32,
    pub p: Ptx,
}

impl DqPass {
    pub(super) fn emit(&mut self, name: &str) {
        let hs = self.hs;
        declare(&mut self.p, name, Variant::Dq);
        let (na, nd) = (BLOCK_KV / 2, hs / 2);
        self.p.lines([
            ".reg .pred %p<8>;".to_string(),
            ".reg .pred %pwait, %pz, %pm, %pt0, %pt1, %pprev, %prel;".into(),
            ".reg .b32 %r<8>;".into(),
            ".reg .b64 %rd<6>;".into(),
            format!(".reg .f32 %s<{na}>;"),
            format!(".reg .f32 %dp<{na}>;"),
            format!(".reg .f32 %dqa<{nd}>;"),
            format!(".reg .b32 %pd<{}>;", na / 2),
            ".reg .b32 %tidx, %wg, %warp, %lane, %g, %tq, %smem, %bars, %qb, %q0, %h, %kvh, %b, %t, %nh, %nkv;".into(),
            ".reg .b32 %kb, %k0, %stage, %phase, %bar, %sb, %row, %d00, %d01, %prev;".into(),
            ".reg .b64 %tma_q, %tma_k, %tma_v, %tma_do, %tma_lse, %tma_d, %pdq, %addr;".into(),
            ".reg .b64 %desc_q, %desc_do, %dk, %dkm, %dv, %da, %db;".into(),
            ".reg .f32 %sl2, %scale, %lse0, %lse1, %dd0, %dd1, %x, %tmp;".into(),
        ]);
        setup(&mut self.p, name, Variant::Dq, bars_offset(hs));
        self.p.lines([
            "// query block qb, heaviest (most key blocks) first; head h, kv head h / (NH/NKV)",
            "mov.u32 %r0, %nctaid.x;",
            "mov.u32 %r1, %ctaid.x;",
            "sub.u32 %qb, %r0, %r1;",
            "sub.u32 %qb, %qb, 1;",
            "mov.u32 %h, %ctaid.y;",
            "div.u32 %r0, %nh, %nkv;",
            "div.u32 %kvh, %h, %r0;",
        ]);
        self.p
            .line(format!("shl.b32 %q0, %qb, {};", BLOCK_Q.trailing_zeros()));
        self.p.line("setp.ne.u32 %p0, %wg, 0;");
        self.p.line("@%p0 bra CONSUMER;");
        self.producer();
        self.p.label("CONSUMER");
        self.consumer();
        self.p.raw("}");
    }

    fn producer(&mut self) {
        let (hs, tb) = (self.hs, tile_bytes(self.hs));
        self.p
            .line(format!("setmaxnreg.dec.sync.aligned.u32 {PRODUCER_REGS};"));
        self.p.lines([
            "setp.ne.u32 %p0, %warp, 0;",
            "@%p0 bra PRODUCER_DONE;",
            "elect.sync %r0|%p1, -1;",
            "@!%p1 bra PRODUCER_DONE;",
            "mov.u32 %bar, %bars;",
        ]);
        self.p.comment("Q, dO, LSE, D of this query block, once");
        self.p.line(format!(
            "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {};",
            2 * tb + 2 * 4 * BLOCK_Q
        ));
        load_tile(&mut self.p, hs, "%tma_q", "%smem", "%h", "%q0");
        self.p.line(format!("add.u32 %r6, %smem, {tb};"));
        load_tile(&mut self.p, hs, "%tma_do", "%r6", "%h", "%q0");
        self.p.lines([
            "mad.lo.u32 %r1, %b, %nh, %h;".to_string(),
            "mad.lo.u32 %r1, %r1, %t, %q0;".into(),
            format!("add.u32 %r6, %smem, {};", 2 * tb),
            "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes \
             [%r6], [%tma_lse, {%r1}], [%bar];"
                .into(),
            format!("add.u32 %r6, %r6, {};", 4 * BLOCK_Q),
            "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes \
             [%r6], [%tma_d, {%r1}], [%bar];"
                .into(),
            "mov.u32 %stage, 0;".into(),
            "mov.u32 %phase, 0;".into(),
            "mov.u32 %kb, 0;".into(),
        ]);
        self.p.label("P_LOOP");
        stage_bar(&mut self.p, false);
        self.p.line("xor.b32 %r1, %phase, 1;");
        wait(&mut self.p, "P_WAIT_EMPTY", "%r1");
        stage_bar(&mut self.p, true);
        self.p.lines([
            format!(
                "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {};",
                2 * tb
            ),
            format!("mad.lo.u32 %sb, %stage, {}, %smem;", stage_bytes(hs)),
            format!("add.u32 %sb, %sb, {};", stages_offset(hs)),
            format!("shl.b32 %k0, %kb, {};", BLOCK_KV.trailing_zeros()),
        ]);
        load_tile(&mut self.p, hs, "%tma_k", "%sb", "%kvh", "%k0");
        self.p.line(format!("add.u32 %r6, %sb, {tb};"));
        load_tile(&mut self.p, hs, "%tma_v", "%r6", "%kvh", "%k0");
        advance_stage(&mut self.p);
        self.p.lines([
            "add.u32 %kb, %kb, 1;",
            "setp.le.u32 %p0, %kb, %qb;",
            "@%p0 bra P_LOOP;",
        ]);
        self.p.label("PRODUCER_DONE");
        self.p.line("ret;");
    }

    fn consumer(&mut self) {
        let (hs, tb) = (self.hs, tile_bytes(self.hs));
        self.p
            .line(format!("setmaxnreg.inc.sync.aligned.u32 {CONSUMER_REGS};"));
        self.p.lines([
            "shr.u32 %r0, %smem, 4;".to_string(),
            "cvt.u64.u32 %desc_q, %r0;".into(),
            format!("or.b64 %desc_q, %desc_q, {};", desc_const(16)),
            format!("add.u64 %desc_do, %desc_q, {};", tb >> 4),
            "setp.eq.u32 %p2, %lane, 0;".into(),
        ]);
        for i in 0..hs / 2 {
            self.p.line(format!("mov.f32 %dqa{i}, {F32_ZERO};"));
        }
        self.p.lines([
            "// rows of this thread: q0 + 16 warp + g (+ 8); LSE (base 2) and D of each"
                .to_string(),
            "shl.b32 %row, %warp, 4;".into(),
            "add.u32 %row, %row, %g;".into(),
            "mov.u32 %bar, %bars;".into(),
        ]);
        wait(&mut self.p, "C_WAIT_Q", "0");
        let lse_off = 2 * tb;
        let d_off = lse_off + 4 * BLOCK_Q;
        self.p.lines([
            "shl.b32 %r1, %row, 2;".to_string(),
            "add.u32 %r1, %r1, %smem;".into(),
            format!("ld.shared.f32 %lse0, [%r1+{lse_off}];"),
            format!("ld.shared.f32 %lse1, [%r1+{}];", lse_off + 32),
            format!("ld.shared.f32 %dd0, [%r1+{d_off}];"),
            format!("ld.shared.f32 %dd1, [%r1+{}];", d_off + 32),
            format!("mul.f32 %lse0, %lse0, {F32_LOG2E};"),
            format!("mul.f32 %lse1, %lse1, {F32_LOG2E};"),
            "neg.f32 %lse0, %lse0;".into(),
            "neg.f32 %lse1, %lse1;".into(),
            "add.u32 %row, %row, %q0;".into(),
            "// rows past T: their LSE and D belong to the next head; P = dS = 0 there".into(),
            "setp.ge.u32 %pt0, %row, %t;".into(),
            "add.u32 %r1, %row, 8;".into(),
            "setp.ge.u32 %pt1, %r1, %t;".into(),
            "mov.u32 %stage, 0;".into(),
            "mov.u32 %phase, 0;".into(),
            "mov.u32 %kb, 0;".into(),
            "setp.ne.u32 %pprev, %tidx, %tidx;".into(),
            "mov.u32 %prev, 0;".into(),
        ]);
        self.p.label("C_LOOP");
        stage_bar(&mut self.p, true);
        wait(&mut self.p, "C_WAIT_FULL", "%phase");
        self.p.lines([
            format!("mad.lo.u32 %sb, %stage, {}, %smem;", stage_bytes(hs)),
            format!("add.u32 %sb, %sb, {};", stages_offset(hs)),
            "shr.u32 %r0, %sb, 4;".into(),
            "cvt.u64.u32 %rd1, %r0;".into(),
            format!("or.b64 %dk, %rd1, {};", desc_const(16)),
            format!("or.b64 %dkm, %rd1, {};", desc_const(BOX_BYTES as u64)),
            format!("add.u64 %dv, %dk, {};", tb >> 4),
        ]);
        self.scores();
        release_prev(&mut self.p);
        self.probabilities();
        self.issue_dq();
        self.p.comment(
            "dQ stays in flight into the next block's S/dP; that block releases this stage",
        );
        self.p.lines([
            "mov.u32 %prev, %stage;",
            "setp.eq.u32 %pprev, %tidx, %tidx;",
        ]);
        advance_stage(&mut self.p);
        self.p.lines([
            "add.u32 %kb, %kb, 1;",
            "setp.le.u32 %p0, %kb, %qb;",
            "@%p0 bra C_LOOP;",
        ]);
        self.p.line("wgmma.wait_group.sync.aligned 0;");
        release_prev(&mut self.p);
        self.store_dq();
        self.p.line("ret;");
    }

    /// S = Q K^T and dP = dO V^T (M = 64 queries, N = 64 keys): HS/16 k16 steps each.
    fn scores(&mut self) {
        score_products(
            &mut self.p,
            self.hs,
            BLOCK_KV,
            [("%desc_q", "%dk"), ("%desc_do", "%dv")],
            "%kb",
            "S = Q K^T, dP = dO V^T (the first step overwrites)",
        );
    }

    /// dS = P (dP - D) with P = 2^(S scale log2e - LSE log2e), packed to bf16 A fragments
    /// (register 2i + h: keys 8i + 2tq, +1 of row g + 8h); zero where key > query or the row
    /// is past T. Register 4i + 2h + e: row 16 warp + g + 8h, key 8i + 2tq + e.
    fn probabilities(&mut self) {
        self.p.comment("dS, masked past the diagonal and past T");
        self.p.lines([
            format!("shl.b32 %k0, %kb, {};", BLOCK_KV.trailing_zeros()),
            "// d0h = key 2tq of the lane - row g + 8h".to_string(),
            "shl.b32 %r1, %tq, 1;".into(),
            "add.u32 %r1, %r1, %k0;".into(),
            "sub.s32 %d00, %r1, %row;".into(),
            "sub.s32 %d01, %d00, 8;".into(),
        ]);
        for i in 0..BLOCK_KV / 8 {
            for h in 0..2u32 {
                for e in 0..2u32 {
                    let r = 4 * i + 2 * h + e;
                    let threshold = -((8 * i + e) as i64);
                    self.p.lines([
                        format!("setp.gt.s32 %pm, %d0{h}, {threshold};"),
                        format!("or.pred %pm, %pm, %pt{h};"),
                        format!("fma.rn.f32 %x, %s{r}, %sl2, %lse{h};"),
                        "ex2.approx.ftz.f32 %x, %x;".to_string(),
                        format!("sub.f32 %tmp, %dp{r}, %dd{h};"),
                        "mul.f32 %tmp, %tmp, %x;".into(),
                        format!("selp.f32 %dp{r}, {F32_ZERO}, %tmp, %pm;"),
                    ]);
                }
                let r = 4 * i + 2 * h;
                self.p.line(format!(
                    "cvt.rn.bf16x2.f32 %pd{}, %dp{}, %dp{r};",
                    2 * i + h,
                    r + 1
                ));
            }
        }
    }

    /// dQ += dS K (M = 64 queries, N = HS, K = 64 keys): A = dS from registers, B = K
    /// MN-major (channel boxes BOX_BYTES apart, k16 step 16 rows).
    fn issue_dq(&mut self) {
        let hs = self.hs;
        let accs: Vec<String> = (0..hs / 2).map(|i| format!("%dqa{i}")).collect();
        let accs = accs.join(", ");
        self.p.comment("dQ += dS K");
        self.p.line("setp.eq.u32 %pz, %kb, %kb;");
        self.p.line("wgmma.fence.sync.aligned;");
        for kk in 0..BLOCK_KV / 16 {
            self.p.lines([
                format!("add.u64 %db, %dkm, {};", (kk * ROW_K16) >> 4),
                format!(
                    "wgmma.mma_async.sync.aligned.m64n{hs}k16.f32.bf16.bf16 {{{accs}}}, {{%pd{}, %pd{}, %pd{}, %pd{}}}, %db, %pz, 1, 1, 1;",
                    4 * kk,
                    4 * kk + 1,
                    4 * kk + 2,
                    4 * kk + 3
                ),
            ]);
        }
        self.p.line("wgmma.commit_group.sync.aligned;");
    }

    /// dQ * scale to bf16, rows < T; register 4n + 2h + e: row g + 8h, channel 8n + 2tq + e.
    fn store_dq(&mut self) {
        let hs = self.hs;
        self.p.comment("epilogue: dQ * scale in bf16, rows < T");
        for h in 0..2u32 {
            self.p.lines([
                format!("add.u32 %r1, %row, {};", 8 * h),
                "setp.lt.u32 %p4, %r1, %t;".to_string(),
                "mad.lo.u32 %r2, %b, %t, %r1;".into(),
                "mad.lo.u32 %r2, %r2, %nh, %h;".into(),
                format!("mul.wide.u32 %addr, %r2, {};", hs * 2),
                "shl.b32 %r3, %tq, 2;".into(),
                "cvt.u64.u32 %rd3, %r3;".into(),
                "add.u64 %addr, %addr, %rd3;".into(),
                "add.u64 %addr, %addr, %pdq;".into(),
            ]);
            for n in 0..hs / 8 {
                let r = 4 * n + 2 * h;
                self.p.lines([
                    format!("mul.f32 %dqa{r}, %dqa{r}, %scale;"),
                    format!("mul.f32 %dqa{}, %dqa{}, %scale;", r + 1, r + 1),
                    format!("cvt.rn.bf16x2.f32 %r4, %dqa{}, %dqa{r};", r + 1),
                    format!("@%p4 st.global.b32 [%addr+{}], %r4;", 16 * n),
                ]);
            }
        }
    }
}
