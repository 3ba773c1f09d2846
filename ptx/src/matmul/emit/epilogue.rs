//! The epilogue of [`super::Kernel`]: C = alpha*acc (overwrite) or alpha*acc + C
//! (accumulate), in fp32, rounded once to bf16 for bf16 C.
//!
//! A lane holds rows g, g+8 (g = lane/4) and columns 2t, 2t+1 (t = lane%4) of each m16n8
//! accumulator fragment (PTX ISA, "Matrix Fragments for mma.m16n8k16"), so per fragment row a
//! quad of lanes owns 8 consecutive columns. Scalar stores of one element per lane leave half
//! (f32) or three quarters (bf16) of each 32-byte sector they touch to other requests: 2x and
//! 4x the ideal sectors (Nsight Compute's `l1tex__t_sectors_pipe_lsu_mem_global_op_st`
//! against the bytes written). Where the CTA's columns lie inside N and C's rows are 8-byte
//! aligned (one uniform branch), the vector path stores whole sectors instead:
//! - f32: each lane stores its 2 adjacent accumulators with one `st.global.v2.f32`; a quad
//!   writes 32 contiguous bytes per row, a whole sector;
//! - bf16: lanes t and t^1 swap halves of two neighbouring fragments (`shfl.sync.bfly`, in
//!   fp32, before the one rounding), so even lanes hold 4 consecutive columns of fragment 2q
//!   and odd lanes 4 of fragment 2q+1; one `st.global.v2.b32` each, a quad again writing 32
//!   contiguous bytes per row.
//!
//! The accumulate mode reads old C with the same vector loads. Elsewhere (ragged N, C
//! misaligned) the scalar path predicates each element on row < M and column < N.

use super::Kernel;
use crate::matmul::OutType;

impl Kernel {
    /// Emits the epilogue (the module docs): a uniform choice of the vector or scalar path.
    pub(super) fn epilogue(&mut self) {
        let wm = self.cfg.bm / self.cfg.warps_m;
        let wn = self.cfg.bn / self.cfg.warps_n;
        // The vector path's C alignment: 8-byte rows, i.e. ldc a multiple of 2 (f32) or 4
        // (bf16) elements and C 8-byte aligned.
        let ldc_mask = match self.out {
            OutType::F32 => 1,
            OutType::Bf16 => 3,
        };
        let n = self.p.label_id();
        let lines = [
            "// epilogue: g = lane/4, t = lane%4".to_string(),
            "shr.u32 %r20, %r6, 2;".into(),
            "and.b32 %r21, %r6, 3;".into(),
            format!("mad.lo.u32 %r22, %r7, {wm}, %r9;"),
            "add.u32 %r22, %r22, %r20;               // row of (mi 0, half 0)".into(),
            format!("mad.lo.u32 %r23, %r8, {wn}, %r10;"),
            "shl.b32 %r24, %r21, 1;".into(),
            "add.u32 %r23, %r23, %r24;               // column of (nj 0, e 0)".into(),
            "cvt.u64.u32 %rd13, %r23;".into(),
            "setp.ne.u32 %p6, %r4, 0;                // accumulate?".into(),
            "// vector path if the CTA's columns are inside N and C's rows 8-byte aligned".into(),
            "and.b64 %rd17, %rd3, 7;".into(),
            "setp.eq.u64 %p8, %rd17, 0;".into(),
            format!("and.b64 %rd17, %rd6, {ldc_mask};"),
            "setp.eq.and.u64 %p8, %rd17, 0, %p8;".into(),
            format!("add.u32 %r24, %r10, {};", self.cfg.bn),
            "setp.le.and.u32 %p8, %r24, %r2, %p8;".into(),
            format!("@!%p8 bra EPI_SCALAR_{n};"),
        ];
        self.p.lines(&lines);
        match self.out {
            OutType::F32 => self.epilogue_vector_f32(),
            OutType::Bf16 => self.epilogue_vector_bf16(),
        }
        self.p.line(format!("bra EPI_DONE_{n};"));
        self.p.label(&format!("EPI_SCALAR_{n}"));
        self.epilogue_scalar();
        self.p.label(&format!("EPI_DONE_{n}"));
    }

    /// %p1 = row (mi, h) < M, %p3 = %p1 and accumulate, %rd14 = the row's address at the
    /// column in `col` (a u64 register of elements).
    fn epilogue_row(&mut self, mi: u32, h: u32, col: &str) {
        let shift = match self.out {
            OutType::F32 => 2,
            OutType::Bf16 => 1,
        };
        let lines = [
            format!("add.u32 %r24, %r22, {};", mi * 16 + h * 8),
            "setp.lt.u32 %p1, %r24, %r1;".into(),
            "and.pred %p3, %p1, %p6;".into(),
            "cvt.u64.u32 %rd14, %r24;".into(),
            format!("mad.lo.u64 %rd14, %rd14, %rd6, {col};"),
            format!("shl.b64 %rd14, %rd14, {shift};"),
            "add.u64 %rd14, %rd3, %rd14;".into(),
        ];
        self.p.lines(&lines);
    }

    /// f32 C, vector path: one `v2` store (and load) per fragment row.
    fn epilogue_vector_f32(&mut self) {
        for mi in 0..self.mi() {
            for h in 0..2 {
                self.epilogue_row(mi, h, "%rd13");
                for nj in 0..self.nj() {
                    let acc = 4 * (mi * self.nj() + nj) + 2 * h;
                    let off = nj * 8 * 4;
                    let lines = [
                        format!("mul.f32 %f2, %acc{acc}, %f1;"),
                        format!("mul.f32 %f3, %acc{}, %f1;", acc + 1),
                        format!("@%p3 ld.global.v2.f32 {{%f4, %f5}}, [%rd14+{off}];"),
                        "@%p3 add.f32 %f2, %f2, %f4;".into(),
                        "@%p3 add.f32 %f3, %f3, %f5;".into(),
                        format!("@%p1 st.global.v2.f32 [%rd14+{off}], {{%f2, %f3}};"),
                    ];
                    self.p.lines(&lines);
                }
            }
        }
    }

    /// bf16 C, vector path: per pair of fragments (2q, 2q+1) lanes t, t^1 swap halves so each
    /// holds 4 consecutive columns: even lanes columns 2t..2t+3 of fragment 2q, odd lanes
    /// 2(t-1)..2(t-1)+3 of fragment 2q+1, i.e. lane column 2t + 6*(t&1) (%rd17).
    fn epilogue_vector_bf16(&mut self) {
        let lines = [
            "and.b32 %r24, %r6, 1;".to_string(),
            "setp.ne.u32 %p7, %r24, 0;               // odd lane".into(),
            "mad.lo.u32 %r24, %r24, 6, %r23;".into(),
            "cvt.u64.u32 %rd17, %r24;                // lane column, vector path".into(),
        ];
        self.p.lines(&lines);
        for mi in 0..self.mi() {
            for h in 0..2 {
                self.epilogue_row(mi, h, "%rd17");
                for q in 0..self.nj() / 2 {
                    let a0 = 4 * (mi * self.nj() + 2 * q) + 2 * h;
                    let a1 = a0 + 4;
                    let off = q * 16 * 2;
                    let lines = [
                        // %f2, %f3: fragment 2q; %f4, %f5: fragment 2q+1 (this lane's columns).
                        format!("mul.f32 %f2, %acc{a0}, %f1;"),
                        format!("mul.f32 %f3, %acc{}, %f1;", a0 + 1),
                        format!("mul.f32 %f4, %acc{a1}, %f1;"),
                        format!("mul.f32 %f5, %acc{}, %f1;", a1 + 1),
                        // Odd lanes give away fragment 2q, even lanes fragment 2q+1.
                        "selp.f32 %f6, %f2, %f4, %p7;".into(),
                        "selp.f32 %f7, %f3, %f5, %p7;".into(),
                        "shfl.sync.bfly.b32 %f6, %f6, 1, 31, -1;".into(),
                        "shfl.sync.bfly.b32 %f7, %f7, 1, 31, -1;".into(),
                        "selp.f32 %f8, %f6, %f2, %p7;".into(),
                        "selp.f32 %f9, %f7, %f3, %p7;".into(),
                        "selp.f32 %f10, %f4, %f6, %p7;".into(),
                        "selp.f32 %f11, %f5, %f7, %p7;".into(),
                        format!("@%p3 ld.global.v2.b32 {{%r25, %r26}}, [%rd14+{off}];"),
                    ];
                    self.p.lines(&lines);
                    // Old C: bf16 k of the 4 is the low (even k) or high half of word k/2.
                    for (k, word) in [(8, "%r25"), (9, "%r25"), (10, "%r26"), (11, "%r26")] {
                        let widen = if k % 2 == 0 {
                            format!("@%p3 shl.b32 %r27, {word}, 16;")
                        } else {
                            format!("@%p3 and.b32 %r27, {word}, 0xFFFF0000;")
                        };
                        self.p.lines(&[
                            widen,
                            "@%p3 mov.b32 %f12, %r27;".into(),
                            format!("@%p3 add.f32 %f{k}, %f{k}, %f12;"),
                        ]);
                    }
                    let lines = [
                        "cvt.rn.bf16.f32 %rs0, %f8;".to_string(),
                        "cvt.rn.bf16.f32 %rs1, %f9;".into(),
                        "cvt.rn.bf16.f32 %rs2, %f10;".into(),
                        "cvt.rn.bf16.f32 %rs3, %f11;".into(),
                        "mov.b32 %r25, {%rs0, %rs1};".into(),
                        "mov.b32 %r26, {%rs2, %rs3};".into(),
                        format!("@%p1 st.global.v2.b32 [%rd14+{off}], {{%r25, %r26}};"),
                    ];
                    self.p.lines(&lines);
                }
            }
        }
    }

    /// Scalar path: one predicated store (and load) per element, row < M and column < N.
    fn epilogue_scalar(&mut self) {
        let esize = match self.out {
            OutType::F32 => 4,
            OutType::Bf16 => 2,
        };
        for nj in 0..self.nj() {
            for e in 0..2 {
                self.p.line(format!("add.u32 %r24, %r23, {};", nj * 8 + e));
                self.p
                    .line(format!("setp.lt.u32 %pc{}, %r24, %r2;", 2 * nj + e));
            }
        }
        for mi in 0..self.mi() {
            for h in 0..2 {
                self.epilogue_row(mi, h, "%rd13");
                for nj in 0..self.nj() {
                    for e in 0..2 {
                        let acc = 4 * (mi * self.nj() + nj) + 2 * h + e;
                        let off = (nj * 8 + e) * esize;
                        let pc = 2 * nj + e;
                        self.p.line(format!("and.pred %p2, %p1, %pc{pc};"));
                        self.p.line("and.pred %p3, %p2, %p6;");
                        self.p.line(format!("mul.f32 %f2, %acc{acc}, %f1;"));
                        match self.out {
                            OutType::F32 => {
                                self.p
                                    .line(format!("@%p3 ld.global.f32 %f3, [%rd14+{off}];"));
                                self.p.line("@%p3 add.f32 %f2, %f2, %f3;");
                                self.p
                                    .line(format!("@%p2 st.global.f32 [%rd14+{off}], %f2;"));
                            }
                            OutType::Bf16 => {
                                self.p
                                    .line(format!("@%p3 ld.global.b16 %rs1, [%rd14+{off}];"));
                                self.p.line("@%p3 cvt.u32.u16 %r25, %rs1;");
                                self.p.line("@%p3 shl.b32 %r25, %r25, 16;");
                                self.p.line("@%p3 mov.b32 %f3, %r25;");
                                self.p.line("@%p3 add.f32 %f2, %f2, %f3;");
                                self.p.line("cvt.rn.bf16.f32 %rs2, %f2;");
                                self.p
                                    .line(format!("@%p2 st.global.b16 [%rd14+{off}], %rs2;"));
                            }
                        }
                    }
                }
            }
        }
    }
}
