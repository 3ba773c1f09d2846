//! Warpgroup family: `wgmma.mma_async.sync.aligned.m64nNk16` with `.bf16`/`.f16` inputs and
//! `.f32` (or, for `.f16` inputs, `.f16`) accumulators, A from registers or a shared-memory
//! descriptor and B from a descriptor, and `wgmma.fence`, `wgmma.commit_group`,
//! `wgmma.wait_group`: decoding, and the arithmetic. The warpgroup execution (gathering
//! the four warps, pending groups, the fence and wait rules) is in `wgmma_exec`; the
//! descriptor in `wgmma_desc`.
//!
//! Layouts (PTX ISA, "Register Fragments" for `wgmma .m64nNk16`): warp `w` of the warpgroup
//! holds rows `16w .. 16w+16` of A (when in registers) and of D. Within a warp, A's four
//! `.b32` registers follow `mma.m16n8k16`'s A fragment ([`a_index`]); D repeats
//! `mma.m16n8k16`'s accumulator fragment for each 8-column slice of N: element `i` of a
//! thread (register `i` for `.f32`, half `i % 2` of register `i / 2` for `.f16`) is row
//! `groupID + 8·((i/2) % 2)`, column `8·(i/4) + 2·threadID_in_group + i % 2` ([`d_index`]).
//!
//! Numerics: each element of D is A's row times B's column (16 products) added to D's value
//! (or to +0 when scale-d is false) exactly as one `mma.sync` element is under
//! [`Checks::mma`](crate::emu::Checks::mma): in k order with one f32 rounding per addition
//! ([`MmaNumerics::Exact`]), or the tensor core's truncating fused dot-add of `tensor_core`
//! (the sm_80 or sm_90 model). NaN results are the canonical NaN. `.f16` accumulators are
//! widened to f32, accumulated the same way and rounded to nearest f16 once.

// Matrix code indexes by (row, col) as the ISA's formulas do.
#![allow(clippy::needless_range_loop)]

use super::tensor::a_index;
use super::tensor_core;
use crate::emu::inst::{Op, Src, Wgmma, WgmmaA};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::{Lit, Operand};
use crate::emu::rounding;
use crate::emu::types::{Fmt, MmaType, Rnd, Ty};
use crate::emu::MmaNumerics;
use crate::error::PtxError;

/// Lane and element index (see the module note) holding D(`row`, `col`) of one warp's
/// 16-row slice.
pub(crate) fn d_index(row: usize, col: usize) -> (usize, usize) {
    let lane = (row % 8) * 4 + (col % 8) / 2;
    let element = (col / 8) * 4 + (row / 8) * 2 + col % 2;
    (lane, element)
}

/// Rows of 16-bit inputs in k order (A's rows or B's columns) with the forms the
/// accumulation reads, prepared once per instruction: widened to f32 (exactly), and split
/// for the fused model (`None` for a row holding an infinity or a NaN).
pub(crate) struct Rows {
    bits: Vec<[u16; 16]>,
    wide: Vec<[f32; 16]>,
    split: Vec<Option<[tensor_core::Operand; 16]>>,
}

impl Rows {
    pub(crate) fn new(numerics: MmaNumerics, ty: MmaType, bits: Vec<[u16; 16]>) -> Rows {
        let wide = bits.iter().map(|r| r.map(|x| ty.to_f32(x))).collect();
        let split = match numerics {
            MmaNumerics::Exact => Vec::new(),
            MmaNumerics::Hardware | MmaNumerics::HardwareSm90 => bits
                .iter()
                .map(|row| {
                    let mut out = [tensor_core::Operand::ZERO; 16];
                    for (o, &x) in out.iter_mut().zip(row) {
                        *o = tensor_core::input(ty, x)?;
                    }
                    Some(out)
                })
                .collect(),
        };
        Rows { bits, wide, split }
    }

    pub(crate) fn len(&self) -> usize {
        self.bits.len()
    }
}

/// One warp's slice of `wgmma.mma_async`: `d[lane][i]` = Σ_k a[row][k]·b[col][k] + c[lane][i]
/// for every (row, col) of the 16×N slice, (lane, i) = [`d_index`]`(row, col)`.
///
/// The slice's rows of A are `a`'s rows `a_first .. a_first + 16`; `b` holds the N columns of
/// B; `c` each lane's N/2 accumulator values (zeros for `D = A·B`).
pub(crate) fn warp_slice(
    numerics: MmaNumerics,
    ty: MmaType,
    a: &Rows,
    a_first: usize,
    b: &Rows,
    c: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    let n = b.len();
    let mut d = vec![vec![0f32; n / 2]; 32];
    let model = match numerics {
        MmaNumerics::Exact => None,
        MmaNumerics::Hardware => Some(&tensor_core::SM80),
        MmaNumerics::HardwareSm90 => Some(&tensor_core::SM90),
    };
    for row in 0..16 {
        let ar = a_first + row;
        for col in 0..n {
            let (lane, i) = d_index(row, col);
            let acc = c[lane][i];
            let v = match model {
                None => {
                    // Products of two 16-bit values are exact in f32; one rounding per add.
                    let (x, y) = (&a.wide[ar], &b.wide[col]);
                    let mut acc = acc;
                    for k in 0..16 {
                        acc += x[k] * y[k];
                    }
                    acc
                }
                Some(m) => match (&a.split[ar], &b.split[col]) {
                    (Some(x), Some(y)) => tensor_core::dot_add_finite(m, x, y, acc),
                    _ => tensor_core::dot_add(m, ty, &a.bits[ar], &b.bits[col], acc),
                },
            };
            d[lane][i] = if v.is_nan() {
                f32::from_bits(Fmt::F32.nan() as u32)
            } else {
                v
            };
        }
    }
    d
}

/// The 16-bit element in `slot` of a lane's four A registers (slot 0 = low half of the first).
pub(crate) fn a_element(regs: &[u32; 4], slot: usize) -> u16 {
    // Truncation keeps the chosen half.
    (regs[slot / 2] >> (16 * (slot % 2))) as u16
}

/// A's 16 rows for warp `warp_rank` from the lanes' A registers (see [`a_index`]).
pub(crate) fn a_rows_from_registers(frag: &[[u32; 4]; 32]) -> [[u16; 16]; 16] {
    let mut rows = [[0u16; 16]; 16];
    for row in 0..16 {
        for k in 0..16 {
            let (lane, slot) = a_index(row, k);
            rows[row][k] = a_element(&frag[lane], slot);
        }
    }
    rows
}

/// Widens an accumulator register's element `half` (`.f16x2`: 0 low, 1 high) to f32.
pub(crate) fn f16_element(reg: u64, half: usize) -> f32 {
    half::f16::from_bits((reg >> (16 * half)) as u16).to_f32()
}

/// Rounds an f32 accumulator value to f16 bits (to nearest; NaN canonical).
pub(crate) fn to_f16_bits(v: f32) -> u64 {
    if v.is_nan() {
        return Fmt::F16.nan();
    }
    rounding::round_f64(f64::from(v), 0, Rnd::Rn, Fmt::F16)
}

/// `wgmma.fence`, `wgmma.commit_group`, `wgmma.wait_group N` and `wgmma.mma_async`.
pub(in crate::emu) fn decode_wgmma(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if m.has("fence") {
        d.count(0)?;
        return Ok(Op::WgmmaFence);
    }
    if m.has("commit_group") {
        d.count(0)?;
        return Ok(Op::WgmmaCommit);
    }
    if m.has("wait_group") {
        d.count(1)?;
        let n = d.imm_u64(0)?;
        let n = u32::try_from(n).map_err(|_| m.err("wgmma.wait_group count is too large"))?;
        return Ok(Op::WgmmaWait { n });
    }
    if !m.has("mma_async") {
        return Err(m.err(
            "the emulator runs wgmma.fence, wgmma.commit_group, wgmma.wait_group and wgmma.mma_async",
        ));
    }
    if m.has("sp") {
        return Err(m.err("sparse wgmma (.sp) is not supported"));
    }
    let shape = m
        .parts
        .iter()
        .position(|p| p.starts_with("m64n") && p.ends_with("k16"))
        .map(|i| m.parts.remove(i));
    let n = shape
        .and_then(|s| s["m64n".len()..s.len() - "k16".len()].parse::<u16>().ok())
        .filter(|n| (8..=256).contains(n) && n % 8 == 0)
        .ok_or_else(|| {
            m.err("only wgmma shapes m64nNk16 with N a multiple of 8 from 8 to 256 are supported")
        })?;
    let (ty, f16_out) =
        match m.types().as_slice() {
            [Ty::F32, Ty::Bf16, Ty::Bf16] => (MmaType::Bf16, false),
            [Ty::F32, Ty::F16, Ty::F16] => (MmaType::F16, false),
            [Ty::F16, Ty::F16, Ty::F16] => (MmaType::F16, true),
            _ => return Err(m.err(
                "wgmma types must be .f32.bf16.bf16, .f32.f16.f16 or .f16.f16.f16 (tf32, fp8 and \
                 integer wgmma are not supported)",
            )),
        };
    let a_in_regs = matches!(d.operand(1)?, Operand::Vector(..));
    d.count(if a_in_regs { 7 } else { 8 })?;
    // D: read (scale-d) and written (at wait_group) by the warpgroup executor, so neither in
    // `uses` nor in `defs`: its checks are the executor's.
    let wanted = usize::from(if f16_out { n / 4 } else { n / 2 });
    let elems = d.vec_elems(0)?;
    if elems.len() != wanted {
        return Err(m.err(format!(
            "m64n{n}k16 with {} accumulators takes a vector of {wanted} registers, found {}",
            if f16_out { ".f16" } else { ".f32" },
            elems.len()
        )));
    }
    let mut dregs = Vec::with_capacity(wanted);
    for e in elems {
        match e {
            Operand::Name(name, pos) => {
                let (r, rty) = d.reg_named(name, *pos)?;
                if rty.bits() != 32 || rty == Ty::Pred {
                    return Err(d.err_at(*pos, name.clone(), "accumulators are 32-bit registers"));
                }
                if dregs.contains(&r) {
                    return Err(d.err_at(*pos, name.clone(), "accumulator register named twice"));
                }
                dregs.push(r);
            }
            o => {
                return Err(d.err_at(
                    o.pos(),
                    d.inst.opcode.clone(),
                    "accumulators must be registers",
                ))
            }
        }
    }
    let a = if a_in_regs {
        let elems = d.vec_elems(1)?;
        if elems.len() != 4 {
            return Err(m.err("A in registers is a vector of four .b32 registers"));
        }
        let mut regs = [0; 4];
        for (k, e) in elems.iter().enumerate() {
            match d.src_of(e, Ty::B32)? {
                Src::Reg(r) => regs[k] = r,
                _ => return Err(m.err("A's fragment must be four registers")),
            }
        }
        WgmmaA::Regs(regs)
    } else {
        WgmmaA::Desc(d.src(1, Ty::B64)?)
    };
    let b = d.src(2, Ty::B64)?;
    let (scale_d, scale_d_negated) = d.pred_src(3)?;
    let imm = |d: &Dec, i: usize, what: &str, allowed: &[i64]| -> Result<i64, PtxError> {
        match d.operand(i)? {
            Operand::Imm(Lit::Int(v), _) if allowed.contains(&(*v as i64)) => Ok(*v as i64),
            o => Err(d.err_at(
                o.pos(),
                d.inst.opcode.clone(),
                format!("{what} must be the constant {}", join(allowed)),
            )),
        }
    };
    let negate_a = imm(d, 4, "imm-scale-a", &[1, -1])? == -1;
    let negate_b = imm(d, 5, "imm-scale-b", &[1, -1])? == -1;
    let (trans_a, trans_b) = if a_in_regs {
        (false, imm(d, 6, "imm-trans-b", &[0, 1])? == 1)
    } else {
        (
            imm(d, 6, "imm-trans-a", &[0, 1])? == 1,
            imm(d, 7, "imm-trans-b", &[0, 1])? == 1,
        )
    };
    Ok(Op::Wgmma(Box::new(Wgmma {
        n,
        ty,
        f16_out,
        d: dregs.into(),
        a,
        b,
        scale_d,
        scale_d_negated,
        negate_a,
        negate_b,
        trans_a,
        trans_b,
    })))
}

fn join(v: &[i64]) -> String {
    v.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d_index_is_the_mma_accumulator_layout_per_8_columns() {
        // Every (row, col) of a 16×256 slice has its own (lane, element), and element i of a
        // lane is the ISA's: row groupID + 8·((i/2)%2), column 8·(i/4) + 2·tig + i%2.
        let mut seen = vec![[false; 128]; 32];
        for row in 0..16 {
            for col in 0..256 {
                let (lane, i) = d_index(row, col);
                assert!(!seen[lane][i], "({row}, {col}) collides");
                seen[lane][i] = true;
                let (group, tig) = (lane / 4, lane % 4);
                assert_eq!(row, group + 8 * ((i / 2) % 2));
                assert_eq!(col, 8 * (i / 4) + 2 * tig + i % 2);
            }
        }
    }

    #[test]
    fn slice_matches_f64_product_in_every_numerics() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for ty in [MmaType::Bf16, MmaType::F16] {
            let bits = |x: f32| match ty {
                MmaType::Bf16 => half::bf16::from_f32(x).to_bits(),
                MmaType::F16 => half::f16::from_f32(x).to_bits(),
            };
            let n = 24;
            let a: [[u16; 16]; 16] = std::array::from_fn(|_| std::array::from_fn(|_| bits(next())));
            let b: Vec<[u16; 16]> = (0..n)
                .map(|_| std::array::from_fn(|_| bits(next())))
                .collect();
            let c: Vec<Vec<f32>> = (0..32)
                .map(|_| (0..n / 2).map(|_| next()).collect())
                .collect();
            for numerics in MmaNumerics::ALL {
                let (ra, rb) = (
                    Rows::new(numerics, ty, a.to_vec()),
                    Rows::new(numerics, ty, b.clone()),
                );
                let d = warp_slice(numerics, ty, &ra, 0, &rb, &c);
                for row in 0..16 {
                    for col in 0..n {
                        let (lane, i) = d_index(row, col);
                        let mut exact = f64::from(c[lane][i]);
                        let mut mag = exact.abs();
                        for k in 0..16 {
                            let p =
                                f64::from(ty.to_f32(a[row][k])) * f64::from(ty.to_f32(b[col][k]));
                            exact += p;
                            mag += p.abs();
                        }
                        // The bounds of tensor.rs's test (at most 22 units of 2^-24 of Σ|terms|).
                        let tol = 22.0 * f64::powi(2.0, -24) * mag;
                        let got = f64::from(d[lane][i]);
                        assert!(
                            (got - exact).abs() <= tol,
                            "{numerics:?} {ty:?} ({row},{col})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f16_accumulators_round_to_nearest() {
        assert_eq!(to_f16_bits(1.0), 0x3C00);
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even, 1.
        assert_eq!(to_f16_bits(1.0 + f32::powi(2.0, -11)), 0x3C00);
        assert_eq!(to_f16_bits(f32::NAN), 0x7FFF);
        assert_eq!(f16_element(0x4000_3C00, 1), 2.0);
        assert_eq!(f16_element(0x4000_3C00, 0), 1.0);
    }
}
