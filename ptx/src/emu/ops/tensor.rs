//! Tensor family: `mma.sync.aligned.m16n8k16.row.col` with bf16/f16 inputs and f32
//! accumulators, and `ldmatrix.sync.aligned.m8n8.b16` (`.x1/.x2/.x4`, optional `.trans`):
//! decoding, and execution.
//!
//! The arithmetic is pure functions over the 32 lanes of one warp: the executor gathers
//! every lane's registers, calls these, and scatters the results back. The fragment layouts are
//! the ones the PTX ISA documents ("Matrix Fragments for mma.m16n8k16 with floating point
//! type" and "Warp-level matrix load instruction: ldmatrix"); the index formulas are
//! written out once in [`a_index`], [`b_index`], [`cd_index`] and [`ldmatrix_element`], and
//! the tests scatter whole matrices with those same formulas and compare against a naive
//! product.
//!
//! Numerics of `mma`, as [`Checks::mma`](crate::emu::Checks::mma) says:
//! [`MmaNumerics::Exact`]: each product of two bf16 (or two f16) values is exact in f32 (8×8
//! or 11×11 significand bits fit in 24), so the only rounding is in the accumulation. The
//! ISA leaves the accumulation order unspecified; the emulator adds, for each output
//! element, the 16 products in k order onto the C value, one f32 rounding per addition.
//! [`MmaNumerics::Hardware`]: the tensor core's fused, truncating dot-add of `tensor_core`.
//! Both orders are fixed, so results are deterministic run to run, and a NaN result is the
//! canonical NaN 0x7FFF_FFFF in both (what the hardware returns, per MMA-Sim's model).

// Matrix code indexes by (row, col) as the ISA's formulas do; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use super::tensor_core;
use crate::emu::access::{Access, Site};
use crate::emu::exec::Cta;
use crate::emu::inst::{Ldmatrix, MemSpace, Mma, Op};
use crate::emu::operands::{Dec, Mods};
use crate::emu::types::{MmaType, Ty};
use crate::emu::warp::Warp;
use crate::emu::MmaNumerics;
use crate::error::{PtxError, Space};

/// Lane and 16-bit slot holding element (row, col) of the 16×16 A matrix (row-major operand).
///
/// The slot numbers the elements a0..a7 of the lane's four .b32 registers, low half first:
/// register r holds a(2r) in bits 0..16 and a(2r+1) in bits 16..32. From the ISA:
/// `row = groupID` for a0,a1,a4,a5 and `groupID + 8` otherwise;
/// `col = threadID_in_group*2 + (i & 1)` for i < 4 and that `+ 8` for i ≥ 4,
/// with `groupID = laneid >> 2`, `threadID_in_group = laneid % 4`.
pub(crate) fn a_index(row: usize, col: usize) -> (usize, usize) {
    let group = row % 8;
    let thread_in_group = (col % 8) / 2;
    let lane = group * 4 + thread_in_group;
    let slot = (col & 1) + if row >= 8 { 2 } else { 0 } + if col >= 8 { 4 } else { 0 };
    (lane, slot)
}

/// Lane and 16-bit slot holding element (row = k, col = n) of the 16×8 B matrix (column operand).
///
/// Slots b0..b3 over the lane's two .b32 registers, low half first. From the ISA:
/// `row = threadID_in_group*2 + (i & 1)` for i < 2 and that `+ 8` for i ≥ 2; `col = groupID`.
pub(crate) fn b_index(row: usize, col: usize) -> (usize, usize) {
    let lane = col * 4 + (row % 8) / 2;
    let slot = (row & 1) + if row >= 8 { 2 } else { 0 };
    (lane, slot)
}

/// Lane and register holding element (row, col) of the 16×8 f32 C or D matrix.
///
/// From the ISA: `row = groupID` for c0,c1 and `groupID + 8` for c2,c3;
/// `col = threadID_in_group*2 + (i & 1)`.
pub(crate) fn cd_index(row: usize, col: usize) -> (usize, usize) {
    let lane = (row % 8) * 4 + col / 2;
    let reg = (col & 1) + if row >= 8 { 2 } else { 0 };
    (lane, reg)
}

/// The 16-bit element in `slot` (0 = low half of register 0) of a fragment of .b32 registers.
fn half_of(regs: &[u32], slot: usize) -> u16 {
    let word = regs[slot / 2];
    // Truncation keeps the chosen 16-bit half.
    (if slot.is_multiple_of(2) {
        word
    } else {
        word >> 16
    }) as u16
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32`: D = A·B + C for one warp,
/// accumulated as `numerics` says (see the module note).
///
/// `a[lane]`, `b[lane]`, `c[lane]` are each lane's operand registers in the order they appear
/// in the instruction's vector operands; the result is each lane's four D registers.
pub(crate) fn mma_m16n8k16(
    numerics: MmaNumerics,
    ty: MmaType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    let mut d = match numerics {
        MmaNumerics::Exact => mma_in_k_order(ty, a, b, c),
        MmaNumerics::Hardware => mma_fused(&tensor_core::SM80, ty, a, b, c),
        MmaNumerics::HardwareSm90 => mma_fused(&tensor_core::SM90, ty, a, b, c),
    };
    for v in d.iter_mut().flatten() {
        if v.is_nan() {
            *v = f32::from_bits(CANONICAL_NAN);
        }
    }
    d
}

/// The f32 NaN `mma.sync` returns whatever NaN or invalid operation produced it: MMA-Sim's
/// model of every NVIDIA architecture returns 0x7FFF_FFFF (and PTX's other f32 operations
/// produce the same canonical NaN, `Fmt::nan`).
const CANONICAL_NAN: u32 = 0x7FFF_FFFF;

/// [`MmaNumerics::Exact`]: the 16 exact products added onto C in k order, one f32 rounding each.
fn mma_in_k_order(
    ty: MmaType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    // Unpack once into plain matrices so the product below reads like the math.
    let mut a_mat = [[0f32; 16]; 16]; // (M=16, K=16)
    let mut b_mat = [[0f32; 8]; 16]; // (K=16, N=8)
    for row in 0..16 {
        for col in 0..16 {
            let (lane, slot) = a_index(row, col);
            a_mat[row][col] = ty.to_f32(half_of(&a[lane], slot));
        }
        for col in 0..8 {
            let (lane, slot) = b_index(row, col);
            b_mat[row][col] = ty.to_f32(half_of(&b[lane], slot));
        }
    }
    let mut d = [[0f32; 4]; 32];
    for row in 0..16 {
        for col in 0..8 {
            let (lane, reg) = cd_index(row, col);
            let mut acc = c[lane][reg];
            for (k, b_row) in b_mat.iter().enumerate() {
                // Exact product (see the module note); one rounding per addition, k order.
                acc += a_mat[row][k] * b_row[col];
            }
            d[lane][reg] = acc;
        }
    }
    d
}

/// [`MmaNumerics::Hardware`]: each output element as the tensor core's fused dot-add of
/// `model` over the inputs' bits.
fn mma_fused(
    model: &tensor_core::TensorCoreModel,
    ty: MmaType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    // A's rows and B's columns (k order) as bits, and split into addends once: the model
    // aligns on the encoded exponents. Any infinite or NaN input sends every element through
    // the bitwise path, which handles them.
    let mut a_rows = [[0u16; 16]; 16]; // (M=16, K=16)
    let mut b_cols = [[0u16; 16]; 8]; // (N=8, K=16)
    for k in 0..16 {
        for row in 0..16 {
            let (lane, slot) = a_index(row, k);
            a_rows[row][k] = half_of(&a[lane], slot);
        }
        for col in 0..8 {
            let (lane, slot) = b_index(k, col);
            b_cols[col][k] = half_of(&b[lane], slot);
        }
    }
    let mut finite = true;
    let mut split = |bits: &[u16; 16]| {
        let mut out = [tensor_core::Operand::ZERO; 16];
        for (o, &x) in out.iter_mut().zip(bits) {
            match tensor_core::input(ty, x) {
                Some(v) => *o = v,
                None => finite = false,
            }
        }
        out
    };
    let a_split = a_rows.map(|r| split(&r));
    let b_split = b_cols.map(|r| split(&r));
    let mut d = [[0f32; 4]; 32];
    for row in 0..16 {
        for col in 0..8 {
            let (lane, reg) = cd_index(row, col);
            let c = c[lane][reg];
            d[lane][reg] = if finite {
                tensor_core::dot_add_finite(model, &a_split[row], &b_split[col], c)
            } else {
                tensor_core::dot_add(model, ty, &a_rows[row], &b_cols[col], c)
            };
        }
    }
    d
}

/// Where lane `lane`'s register `matrix`, half `half` (0 = low 16 bits) comes from in
/// `ldmatrix.m8n8.b16`: the (row, column) of that 8×8 matrix, column in 16-bit elements.
///
/// From the ISA: lane i holds row `i / 4`, elements `2*(i % 4)` and `2*(i % 4) + 1` of each
/// matrix; with `.trans` the matrix is transposed on the way, so lane i holds column `i / 4`,
/// rows `2*(i % 4)` and `2*(i % 4) + 1` of the matrix as stored.
pub(crate) fn ldmatrix_element(trans: bool, lane: usize, half: usize) -> (usize, usize) {
    let (fixed, moving) = (lane / 4, 2 * (lane % 4) + half);
    if trans {
        (moving, fixed)
    } else {
        (fixed, moving)
    }
}

/// `ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16`: loads `num` (1, 2 or 4) 8×8 matrices
/// of 16-bit elements for one warp.
///
/// Lanes `8*j .. 8*j + 8` supply the shared addresses of the 8 rows (16 bytes each) of matrix
/// `j`; `rows[lane]` is that address as the lane computed it, and the other lanes' addresses
/// are ignored. `read16` is called once per row, lanes in order, with the address unchanged
/// (alignment and bounds are the caller's checks). The result holds each lane's registers
/// `0..num`; registers from `num` on are zero.
///
/// # Errors
/// The first error `read16` returns, unchanged.
///
/// # Panics
/// If `num` is not 1, 2 or 4 (the parser only accepts `.x1/.x2/.x4`).
pub(crate) fn ldmatrix<E>(
    num: usize,
    trans: bool,
    rows: &[u64; 32],
    read16: &mut dyn FnMut(u64) -> Result<[u8; 16], E>,
) -> Result<[[u32; 4]; 32], E> {
    assert!(
        matches!(num, 1 | 2 | 4),
        "ldmatrix .x{num} is not an ldmatrix shape"
    );
    // (matrix, row) -> the row's 8 elements, read once each.
    let mut matrices = [[[0u16; 8]; 8]; 4];
    for (j, matrix) in matrices.iter_mut().enumerate().take(num) {
        for (r, row) in matrix.iter_mut().enumerate() {
            let bytes = read16(rows[8 * j + r])?;
            for (e, element) in row.iter_mut().enumerate() {
                *element = u16::from_le_bytes([bytes[2 * e], bytes[2 * e + 1]]);
            }
        }
    }
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (j, reg) in regs.iter_mut().enumerate().take(num) {
            let (r0, c0) = ldmatrix_element(trans, lane, 0);
            let (r1, c1) = ldmatrix_element(trans, lane, 1);
            *reg = u32::from(matrices[j][r0][c0]) | (u32::from(matrices[j][r1][c1]) << 16);
        }
    }
    Ok(out)
}

/// `mma.sync.aligned.m16n8k16.row.col` with `.f32.bf16.bf16.f32` or `.f32.f16.f16.f32`.
pub(in crate::emu) fn decode_mma(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !m.has("m16n8k16") || !m.has("row") || !m.has("col") {
        return Err(m.err("only mma.sync.aligned.m16n8k16.row.col is supported"));
    }
    let tys = m.types();
    let ty = match tys.as_slice() {
        [Ty::F32, Ty::Bf16, Ty::Bf16, Ty::F32] => MmaType::Bf16,
        [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => MmaType::F16,
        _ => return Err(m.err("mma types must be .f32.bf16.bf16.f32 or .f32.f16.f16.f32")),
    };
    d.count(4)?;
    let dd = d.vec_dsts(0, 4)?;
    let a = d.vec_srcs(1, 4, Ty::B32)?;
    let b = d.vec_srcs(2, 2, Ty::B32)?;
    let c = d.vec_srcs(3, 4, Ty::F32)?;
    let mut dr = [0; 4];
    for (k, r) in dd.iter().enumerate() {
        dr[k] = r.ok_or_else(|| m.err("mma destinations must be registers"))?;
    }
    Ok(Op::Mma(Mma {
        ty,
        d: dr,
        a,
        b: [b[0], b[1]],
        c,
    }))
}

/// `ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.shared.b16`.
pub(in crate::emu) fn decode_ldmatrix(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !m.has("m8n8") {
        return Err(m.err("only ldmatrix .m8n8 is supported"));
    }
    let num = match m.one_of(&["x1", "x2", "x4"]) {
        Some("x1") => 1u8,
        Some("x2") => 2,
        Some(_) => 4,
        None => return Err(m.err("ldmatrix needs .x1, .x2 or .x4")),
    };
    let trans = m.has("trans");
    // A generic address must point into shared memory (checked when it runs).
    let space = m.space();
    if !matches!(space, MemSpace::Shared | MemSpace::Generic) {
        return Err(m.err("ldmatrix reads .shared (or a generic address of shared memory)"));
    }
    if m.one_type()? != Ty::B16 {
        return Err(m.err("ldmatrix takes .b16"));
    }
    d.count(2)?;
    let dd = d.vec_dsts(0, num as usize)?;
    let mut dr = [0; 4];
    for (k, r) in dd.iter().take(num as usize).enumerate() {
        dr[k] = r.ok_or_else(|| m.err("ldmatrix destinations must be registers"))?;
    }
    let addr = d.addr(1, space)?;
    Ok(Op::Ldmatrix(Ldmatrix {
        num,
        trans,
        d: dr,
        addr,
        generic: space == MemSpace::Generic,
    }))
}

impl Cta<'_> {
    /// `mma.sync.aligned.m16n8k16`: gathers the warp's fragments and calls the tensor unit.
    #[inline(never)]
    pub(in crate::emu) fn exec_mma(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Mma,
    ) -> Result<(), PtxError> {
        let Mma { ty, d, a, b, c } = i;
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "mma.sync", exec, u32::MAX));
        }
        let mut fa = [[0u32; 4]; 32];
        let mut fb = [[0u32; 2]; 32];
        let mut fc = [[0f32; 4]; 32];
        for i in 0..4 {
            let (va, vc) = (self.gather(w, a[i], exec), self.gather(w, c[i], exec));
            for l in 0..32 {
                fa[l][i] = va[l] as u32;
                fc[l][i] = f32::from_bits(vc[l] as u32);
            }
        }
        for i in 0..2 {
            let vb = self.gather(w, b[i], exec);
            for l in 0..32 {
                fb[l][i] = vb[l] as u32;
            }
        }
        let out = mma_m16n8k16(self.checks.mma, *ty, &fa, &fb, &fc);
        for (l, regs) in out.iter().enumerate() {
            for i in 0..4 {
                w.set(d[i], l, u64::from(regs[i].to_bits()));
            }
        }
        Ok(())
    }

    /// `ldmatrix.sync.aligned.m8n8`: each lane's row address, read through the sanitizer.
    #[inline(never)]
    pub(in crate::emu) fn exec_ldmatrix(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Ldmatrix,
    ) -> Result<(), PtxError> {
        let Ldmatrix {
            num,
            trans,
            d,
            addr,
            generic,
        } = i;
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "ldmatrix", exec, u32::MAX));
        }
        let mut rows = [0u64; 32];
        for (l, r) in rows.iter_mut().enumerate() {
            *r = self.addr_of(w, addr, l);
            if *generic {
                // Out of the shared window, the raw address fails the shared bounds check
                // below and is reported with the shared memory's extent.
                *r = match self.resolve(MemSpace::Generic, *r) {
                    (Space::Shared, offset) => offset,
                    _ => *r,
                };
            }
        }
        let mut call = 0usize;
        let this = &*self;
        let wref = &*w;
        let mut read16 = |a: u64| -> Result<[u8; 16], PtxError> {
            // ldmatrix reads the rows in lane order, once each.
            let at = Site::lane(wref, call.min(31), line);
            call += 1;
            let acc = Access {
                space: Space::Shared,
                addr: a,
                size: 16,
            };
            this.check_align(at, acc)?;
            let r = this.shared_range(at, a, 16)?;
            this.check_shared_read(at, r.clone())?;
            let mut out = [0u8; 16];
            out.copy_from_slice(&this.shared[r]);
            Ok(out)
        };
        let out = ldmatrix(*num as usize, *trans, &rows, &mut read16)?;
        for (l, regs) in out.iter().enumerate() {
            for i in 0..*num as usize {
                w.set(d[i], l, u64::from(regs[i]));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The fragment formulas are checked by scattering whole matrices with them, running the
    //! operation, and gathering the result; the product is checked against an f64 reference.
    use super::*;

    /// A tiny deterministic generator (splitmix64), so the tests need no rand crate.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Rounds to the 16-bit type (round to nearest even), returning the bits.
    fn to_bits(ty: MmaType, x: f32) -> u16 {
        match ty {
            MmaType::Bf16 => half::bf16::from_f32(x).to_bits(),
            MmaType::F16 => half::f16::from_f32(x).to_bits(),
        }
    }

    fn set_half(regs: &mut [u32], slot: usize, bits: u16) {
        let shift = 16 * (slot % 2);
        regs[slot / 2] = (regs[slot / 2] & !(0xFFFF << shift)) | (u32::from(bits) << shift);
    }

    /// Scatters A (16×16), B (16×8), C (16×8) into lane fragments with the ISA formulas.
    /// Each lane's A, B and C registers.
    type Fragments = ([[u32; 4]; 32], [[u32; 2]; 32], [[f32; 4]; 32]);

    fn scatter(a: &[[u16; 16]; 16], b: &[[u16; 8]; 16], c: &[[f32; 8]; 16]) -> Fragments {
        let (mut fa, mut fb, mut fc) = ([[0u32; 4]; 32], [[0u32; 2]; 32], [[0f32; 4]; 32]);
        // The formulas below are the ISA's, written as lane -> element (the inverse direction
        // of a_index/b_index/cd_index), so the test does not just reuse the code under test.
        for lane in 0..32 {
            let (group, tig) = (lane >> 2, lane % 4);
            for i in 0..8 {
                let row = if i < 2 || (4..6).contains(&i) {
                    group
                } else {
                    group + 8
                };
                let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
                set_half(&mut fa[lane], i, a[row][col]);
            }
            for i in 0..4 {
                let row = tig * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
                set_half(&mut fb[lane], i, b[row][group]);
            }
            for i in 0..4 {
                let row = if i < 2 { group } else { group + 8 };
                fc[lane][i] = c[row][tig * 2 + (i & 1)];
            }
        }
        (fa, fb, fc)
    }

    fn check_mma(numerics: MmaNumerics, ty: MmaType, seed: u64, scale: f32) {
        let mut g = Gen(seed);
        let mut a = [[0u16; 16]; 16];
        let mut b = [[0u16; 8]; 16];
        let mut c = [[0f32; 8]; 16];
        a.iter_mut()
            .flatten()
            .for_each(|x| *x = to_bits(ty, g.unit() * scale));
        b.iter_mut()
            .flatten()
            .for_each(|x| *x = to_bits(ty, g.unit() * scale));
        c.iter_mut().flatten().for_each(|x| *x = g.unit() * scale);
        let (fa, fb, fc) = scatter(&a, &b, &c);
        let d = mma_m16n8k16(numerics, ty, &fa, &fb, &fc);
        for row in 0..16 {
            for col in 0..8 {
                let lane = (row % 8) * 4 + col / 2;
                let got = d[lane][(col & 1) + if row >= 8 { 2 } else { 0 }];
                let mut exact = f64::from(c[row][col]);
                let mut magnitude = exact.abs();
                for k in 0..16 {
                    let p = f64::from(ty.to_f32(a[row][k])) * f64::from(ty.to_f32(b[k][col]));
                    exact += p;
                    magnitude += p.abs();
                }
                // Exact: products are exact in f32; 16 f32 additions each add at most half an
                // ulp of the running sum, bounded by 16 · 2^-24 · Σ|terms|. Hardware: in each
                // of the two groups, 9 addends each lose less than 2^-24 of the largest
                // (≤ Σ|terms|) and the result one f32 ulp (2^-23 relative): 11 · 2^-24 ·
                // Σ|terms| per group, 22 for both. Sm90: one group of 17 addends each losing
                // less than 2^-25, and the result's ulp: 8.5 + 2, so 11. A layout mistake
                // moves whole terms, an error of order |a·b| ≫ any of these bounds.
                let units = match numerics {
                    MmaNumerics::Exact => 16.0,
                    MmaNumerics::Hardware => 22.0,
                    MmaNumerics::HardwareSm90 => 11.0,
                };
                let tol = units * f64::powi(2.0, -24) * magnitude;
                assert!(
                    (f64::from(got) - exact).abs() <= tol,
                    "{numerics:?} {ty:?} D[{row}][{col}] = {got}, expected {exact} ± {tol}"
                );
            }
        }
    }

    const BOTH: [MmaNumerics; 3] = MmaNumerics::ALL;

    #[test]
    fn mma_bf16_matches_f64_product() {
        for numerics in BOTH {
            for seed in 0..8 {
                check_mma(numerics, MmaType::Bf16, seed, 1.0);
            }
            // bf16 has f32's exponent range: products near 1e30 and 1e-30 stay normal f32
            // values.
            check_mma(numerics, MmaType::Bf16, 99, 1.0e15);
            check_mma(numerics, MmaType::Bf16, 98, 1.0e-15);
        }
    }

    #[test]
    fn mma_f16_matches_f64_product() {
        for numerics in BOTH {
            for seed in 0..8 {
                check_mma(numerics, MmaType::F16, seed, 1.0);
            }
            check_mma(numerics, MmaType::F16, 77, 100.0);
        }
    }

    #[test]
    fn mma_single_element_lands_in_documented_place() {
        // One nonzero A element and one nonzero B element: D has exactly one nonzero, at
        // (row of A, col of B), iff the k indices agree. Exercises every (row, k, col) triple.
        for numerics in BOTH {
            single_element_cases(numerics);
        }
    }

    fn single_element_cases(numerics: MmaNumerics) {
        for row in 0..16 {
            for k in 0..16 {
                for col in 0..8 {
                    let mut a = [[0u16; 16]; 16];
                    let mut b = [[0u16; 8]; 16];
                    a[row][k] = to_bits(MmaType::Bf16, 2.0);
                    b[k][col] = to_bits(MmaType::Bf16, 3.0);
                    let (fa, fb, fc) = scatter(&a, &b, &[[0.0; 8]; 16]);
                    let d = mma_m16n8k16(numerics, MmaType::Bf16, &fa, &fb, &fc);
                    for r in 0..16 {
                        for n in 0..8 {
                            let (lane, reg) = cd_index(r, n);
                            let want = if (r, n) == (row, col) { 6.0 } else { 0.0 };
                            assert_eq!(
                                d[lane][reg], want,
                                "{numerics:?} A[{row}][{k}] B[{k}][{col}] D[{r}][{n}]"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mma_propagates_nan_and_infinity() {
        let mut a = [[0u16; 16]; 16];
        let mut b = [[0u16; 8]; 16];
        a[0][0] = to_bits(MmaType::Bf16, f32::INFINITY);
        b[0][0] = to_bits(MmaType::Bf16, 1.0);
        b[0][1] = to_bits(MmaType::Bf16, -1.0);
        // A NaN with a payload and the sign set: the result is still the canonical NaN.
        a[1][0] = 0xFFC1;
        let mut c = [[0.0; 8]; 16];
        c[3][0] = f32::from_bits(0xFF80_0001);
        let (fa, fb, fc) = scatter(&a, &b, &c);
        for numerics in BOTH {
            let d = mma_m16n8k16(numerics, MmaType::Bf16, &fa, &fb, &fc);
            let at = |r, n| {
                let (lane, reg) = cd_index(r, n);
                d[lane][reg]
            };
            assert_eq!(at(0, 0), f32::INFINITY, "{numerics:?}");
            assert_eq!(at(0, 1), f32::NEG_INFINITY, "{numerics:?}");
            // inf · 0 is NaN, as IEEE says; NaN inputs give NaN; all canonical.
            for (r, n) in [(0, 2), (1, 0), (1, 1), (3, 0)] {
                assert_eq!(
                    at(r, n).to_bits(),
                    CANONICAL_NAN,
                    "{numerics:?} D[{r}][{n}]"
                );
            }
            assert_eq!(at(2, 0), 0.0, "{numerics:?}");
        }
    }

    /// Shared memory for the ldmatrix tests: `num` 8×8 matrices, each element's value encodes
    /// (matrix, row, col), rows placed at scattered 16-byte-aligned addresses.
    fn ldmatrix_case(num: usize, trans: bool) {
        let mut shared = vec![0u8; 4096];
        let mut rows = [0u64; 32];
        for (lane, row_addr) in rows.iter_mut().enumerate() {
            // A permutation of 16-byte slots, so a lane/row mix-up reads the wrong row.
            *row_addr = ((lane * 7 + 3) % 32 * 16 + 512) as u64;
        }
        let value = |j: usize, r: usize, c: usize| (0x1000 * (j + 1) + 0x10 * r + c) as u16;
        for j in 0..num {
            for r in 0..8 {
                let base = rows[8 * j + r] as usize;
                for c in 0..8 {
                    shared[base + 2 * c..base + 2 * c + 2]
                        .copy_from_slice(&value(j, r, c).to_le_bytes());
                }
            }
        }
        let mut reads = Vec::new();
        let mut read16 = |addr: u64| -> Result<[u8; 16], String> {
            reads.push(addr);
            let at = usize::try_from(addr).map_err(|e| e.to_string())?;
            shared
                .get(at..at + 16)
                .and_then(|s| <[u8; 16]>::try_from(s).ok())
                .ok_or_else(|| format!("out of bounds {addr}"))
        };
        let out = ldmatrix(num, trans, &rows, &mut read16).unwrap();
        assert_eq!(
            reads,
            rows[..8 * num].to_vec(),
            "one read per row, lanes in order"
        );
        for lane in 0..32 {
            for j in 0..4 {
                let got = out[lane][j];
                if j >= num {
                    assert_eq!(got, 0);
                    continue;
                }
                // The documented distribution: thread i holds row i/4, elements 2(i%4) and
                // 2(i%4)+1; .trans hands out the transposed matrix the same way.
                let (r, c) = (lane / 4, 2 * (lane % 4));
                let (lo, hi) = if trans {
                    (value(j, c, r), value(j, c + 1, r))
                } else {
                    (value(j, r, c), value(j, r, c + 1))
                };
                assert_eq!(
                    got,
                    u32::from(lo) | u32::from(hi) << 16,
                    "x{num} trans={trans} lane {lane} reg {j}"
                );
            }
        }
    }

    #[test]
    fn ldmatrix_matches_documented_distribution() {
        for num in [1, 2, 4] {
            for trans in [false, true] {
                ldmatrix_case(num, trans);
            }
        }
    }

    #[test]
    fn ldmatrix_passes_read_errors_through() {
        let rows = [u64::MAX; 32];
        let mut calls = 0;
        let mut read16 = |addr: u64| -> Result<[u8; 16], u64> {
            calls += 1;
            Err(addr)
        };
        assert_eq!(ldmatrix(4, false, &rows, &mut read16), Err(u64::MAX));
        assert_eq!(calls, 1, "stops at the first failing row");
    }

    #[test]
    fn ldmatrix_x4_feeds_mma_a_operand() {
        // The pairing kernels use: A (16×16, row-major in shared) loaded with ldmatrix.x4, lane
        // l addressing row l%16, column block 8·(l/16). Matrices are then (rows 0-7, k 0-7),
        // (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15): exactly a0..a3's order.
        let mut g = Gen(5);
        let mut a = [[0u16; 16]; 16];
        a.iter_mut()
            .flatten()
            .for_each(|x| *x = (g.next() >> 48) as u16);
        let mut rows = [0u64; 32];
        for (lane, r) in rows.iter_mut().enumerate() {
            *r = ((lane % 16) * 32 + (lane / 16) * 16) as u64;
        }
        let mut read16 = |addr: u64| -> Result<[u8; 16], ()> {
            let (row, col0) = (addr as usize / 32, (addr as usize % 32) / 2);
            let mut out = [0u8; 16];
            for e in 0..8 {
                out[2 * e..2 * e + 2].copy_from_slice(&a[row][col0 + e].to_le_bytes());
            }
            Ok(out)
        };
        let frags = ldmatrix(4, false, &rows, &mut read16).unwrap();
        for row in 0..16 {
            for col in 0..16 {
                let (lane, slot) = a_index(row, col);
                assert_eq!(half_of(&frags[lane], slot), a[row][col], "A[{row}][{col}]");
            }
        }
    }
}
