//! `stmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`: the store counterpart of
//! `ldmatrix` (sm_90), decoding and execution. The fragment layout is `ldmatrix`'s
//! ([`ldmatrix_element`]): lane i's register j holds row `i / 4`, elements `2*(i % 4)` and
//! `2*(i % 4) + 1` of matrix j (column `i / 4` with `.trans`), and lanes `8*j .. 8*j + 8`
//! give the shared addresses of matrix j's eight 16-byte rows.

use super::tensor::ldmatrix_element;
use crate::emu::access::{Access, Site};
use crate::emu::exec::Cta;
use crate::emu::inst::{MemSpace, Op, Src, Stmatrix};
use crate::emu::operands::{Dec, Mods};
use crate::emu::types::Ty;
use crate::emu::warp::Warp;
use crate::error::{PtxError, Space};

pub(in crate::emu) fn decode_stmatrix(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !m.has("m8n8") {
        return Err(m.err("only stmatrix .m8n8 is supported"));
    }
    let num = match m.one_of(&["x1", "x2", "x4"]) {
        Some("x1") => 1u8,
        Some("x2") => 2,
        Some(_) => 4,
        None => return Err(m.err("stmatrix needs .x1, .x2 or .x4")),
    };
    let trans = m.has("trans");
    if m.space() != MemSpace::Shared {
        return Err(m.err("stmatrix writes .shared"));
    }
    if m.one_type()? != Ty::B16 {
        return Err(m.err("stmatrix takes .b16"));
    }
    d.count(2)?;
    let addr = d.addr(0, MemSpace::Shared)?;
    let srcs = if num == 1 && !matches!(d.operand(1)?, crate::emu::parse::Operand::Vector(..)) {
        [d.src(1, Ty::B32)?, Src::Imm(0), Src::Imm(0), Src::Imm(0)]
    } else {
        d.vec_srcs(1, num as usize, Ty::B32)?
    };
    Ok(Op::Stmatrix(Stmatrix {
        num,
        trans,
        srcs,
        addr,
    }))
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_stmatrix(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Stmatrix,
    ) -> Result<(), PtxError> {
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "stmatrix", exec, u32::MAX));
        }
        let num = i.num as usize;
        let mut mats = [[[0u16; 8]; 8]; 4];
        for lane in 0..32 {
            for (j, mat) in mats.iter_mut().enumerate().take(num) {
                let reg = self.val(w, i.srcs[j], lane) as u32;
                for half in 0..2 {
                    let (r, c) = ldmatrix_element(i.trans, lane, half);
                    mat[r][c] = (reg >> (16 * half)) as u16;
                }
            }
        }
        for (j, mat) in mats.iter().enumerate().take(num) {
            for (r, row) in mat.iter().enumerate() {
                let lane = 8 * j + r;
                let a = self.addr_of(w, &i.addr, lane);
                let at = Site::lane(w, lane, line);
                self.check_align(
                    at,
                    Access {
                        space: Space::Shared,
                        addr: a,
                        size: 16,
                    },
                )?;
                let range = self.shared_range(at, a, 16)?;
                self.check_not_mbarrier(at, a, 16, "stmatrix")?;
                if self.hop.async_in_flight() {
                    self.check_bulk_overwrite(at, range.clone())?;
                }
                self.check_wgmma_overwrite(at, range.clone(), "stmatrix")?;
                for (e, v) in row.iter().enumerate() {
                    self.shared[range.start + 2 * e..range.start + 2 * e + 2]
                        .copy_from_slice(&v.to_le_bytes());
                }
                self.mark_shared_write(at.tid, range);
            }
        }
        Ok(())
    }
}
