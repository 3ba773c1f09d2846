//! `cp.async.bulk.tensor` in tile mode: the `[tensorMap, {coordinates}]` operand, the
//! tensor map a lane names (decoded from the parameters or global memory), and the box
//! walk of loads and stores (see `bulk` for the asynchrony and the checks they share).

use crate::emu::access::Site;
use crate::emu::exec::Cta;
use crate::emu::inst::{Addr, BulkTensor, MemSpace, Src};
use crate::emu::operands::Dec;
use crate::emu::parse::Operand;
use crate::emu::types::Ty;
use crate::emu::warp::Warp;
use crate::emu::DeviceMemory;
use crate::error::{PtxError, Space};
use crate::tensor_map::{OobFill, TensorMap, TENSOR_MAP_BYTES};

/// `[tensorMap, {c0, ..}]`: the register holding the map's generic address, and `rank`
/// coordinates.
pub(super) fn tensor_operand(
    d: &mut Dec,
    i: usize,
    rank: u8,
) -> Result<(Addr, [Src; 5]), PtxError> {
    let op = d.operand(i)?;
    let (base, offset, pos, coords) = match op {
        Operand::Vector(v, _) => match (v.first(), v.get(1), v.len()) {
            (
                Some(Operand::Addr {
                    base: Some(b),
                    offset,
                    pos,
                }),
                Some(Operand::Vector(cs, _)),
                2,
            ) => (b, *offset, *pos, cs),
            _ => {
                return Err(d.err_at(
                    op.pos(),
                    d.inst.opcode.clone(),
                    "expected [tensorMap, {coordinates}]",
                ))
            }
        },
        _ => {
            return Err(d.err_at(
                op.pos(),
                d.inst.opcode.clone(),
                "expected [tensorMap, {coordinates}]",
            ))
        }
    };
    if coords.len() != rank as usize {
        return Err(d.err_at(
            pos,
            d.inst.opcode.clone(),
            format!(
                "a .{rank}d tensor copy takes {rank} coordinates, not {}",
                coords.len()
            ),
        ));
    }
    let mut cs = [Src::Imm(0); 5];
    for (k, c) in coords.iter().enumerate() {
        cs[k] = d.src_of(c, Ty::S32)?;
    }
    if let Some(&(r, ty)) = d.ctx.regs.get(base.as_str()) {
        if !(ty.is_int() && ty.bits() == 64) {
            return Err(d.err_at(pos, base.clone(), "a tensor-map address is 64 bits"));
        }
        d.uses.push(r);
        return Ok((
            Addr {
                base: Some(r),
                offset,
            },
            cs,
        ));
    }
    // ptxas rejects a parameter named here ("state space mismatch"): the map's generic
    // address (`mov.u64` of the parameter, then `cvta.param.u64`) goes in a register.
    Err(d.err_at(
        pos,
        base.clone(),
        "the tensor map must be a register holding its generic address (mov.u64 %rd, param; cvta.param.u64 %rd, %rd)",
    ))
}

impl Cta<'_> {
    /// The tensor map lane `l` names, decoded.
    fn tensor_map(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        i: &BulkTensor,
        mem: &DeviceMemory,
    ) -> Result<TensorMap, PtxError> {
        let tid = w.base + l as u32;
        let a = self.addr_of(w, &i.tmap, l);
        let n = TENSOR_MAP_BYTES as u64;
        let bytes: Option<&[u8]> = match self.resolve(MemSpace::Generic, a) {
            (Space::Global, g) => mem.slice(g, n),
            (Space::Param, p) => self.params.get(p as usize..(p.saturating_add(n)) as usize),
            _ => None,
        };
        let bytes = bytes.ok_or_else(|| {
            self.async_misuse(
                tid,
                line,
                format!("the tensor map at {a:#x} is not 128 readable bytes of the parameters or of global memory (a parameter's address needs cvta.param.u64 to be generic)"),
            )
        })?;
        if !a.is_multiple_of(64) {
            return Err(self.async_misuse(
                tid,
                line,
                format!("the tensor map at {a:#x} is not 64-byte aligned"),
            ));
        }
        let map = TensorMap::decode(bytes)
            .map_err(|e| self.async_misuse(tid, line, format!("bad tensor map: {e}")))?;
        if map.rank() != usize::from(i.rank) {
            return Err(self.async_misuse(
                tid,
                line,
                format!(
                    "a .{}d tensor copy with a rank-{} tensor map",
                    i.rank,
                    map.rank()
                ),
            ));
        }
        Ok(map)
    }

    pub(in crate::emu) fn exec_bulk_tensor(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &BulkTensor,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            let map = self.tensor_map(w, l, line, i, mem)?;
            let coords: Vec<i64> = (0..map.rank())
                .map(|k| i64::from(self.val(w, i.coords[k], l) as u32 as i32))
                .collect();
            let box_bytes = map.box_bytes();
            let so = self.bulk_shared(w, l, line, &i.smem, box_bytes, 128)?;
            let esize = map.data_type.bytes() as usize;
            let swz = map.swizzle;
            let place = |o: u32| swz.apply(u64::from(so + o)) as u32;
            // The swizzle keeps a chunk in its 128-byte line, which may reach past a box
            // that ends mid-line: every placed chunk must be in shared memory.
            for k in 0..box_bytes as u32 / 16 {
                let at = u64::from(place(16 * k));
                self.shared_range(Site::lane(w, l, line), at, 16)?;
                if !i.store {
                    self.check_not_mbarrier(
                        Site::lane(w, l, line),
                        at,
                        16,
                        "a tensor copy's write",
                    )?;
                }
            }
            // The box's elements in shared order: (global address if in bounds, offset).
            let counts: Vec<u64> = (0..map.rank())
                .map(|k| u64::from(map.box_count(k)))
                .collect();
            let total: u64 = counts.iter().product();
            let mut elems = Vec::with_capacity(total as usize);
            for lin in 0..total {
                let mut rest = lin;
                let mut addr = Some(map.global_address);
                for k in 0..map.rank() {
                    let idx = rest % counts[k];
                    rest /= counts[k];
                    let g = coords[k] + (idx * u64::from(map.element_strides[k])) as i64;
                    if g < 0 || g as u64 >= map.dims[k] {
                        addr = None;
                    } else if let Some(a) = addr {
                        let stride = if k == 0 {
                            esize as u64
                        } else {
                            map.strides[k - 1]
                        };
                        // A huge map wraps to an address no allocation holds (reported).
                        addr = Some(a.wrapping_add((g as u64).wrapping_mul(stride)));
                    }
                }
                elems.push(addr);
            }
            let runs = elems.iter().flatten().map(|&g| (g, esize as u64));
            self.count_bulk(i.store, runs, box_bytes);
            if i.store {
                // Read the box through the swizzle, one 16-byte chunk at a time.
                let mut data = vec![0u8; box_bytes as usize];
                for (k, c) in data.chunks_exact_mut(16).enumerate() {
                    let at = place(16 * k as u32) as usize;
                    self.check_proxy_fence(tid, line, at..at + 16)?;
                    self.check_shared_read(Site::lane(w, l, line), at..at + 16)?;
                    c.copy_from_slice(&self.shared[at..at + 16]);
                }
                for k in 0..box_bytes as u32 / 16 {
                    self.queue_read(tid, place(16 * k), 16);
                }
                for (e, g) in elems.iter().enumerate() {
                    if let Some(g) = *g {
                        if mem.slice(g, esize as u64).is_none() {
                            return Err(self.oob_global(tid, line, g, esize as u64, mem));
                        }
                        self.queue_store(tid, g, data[e * esize..(e + 1) * esize].to_vec());
                    }
                }
            } else {
                let mb = i.mbar.as_ref().expect("loads have an mbarrier");
                let mbar = self.mbar_addr(w, l, line, MemSpace::Shared, mb)?;
                self.live_bulk_mbar(tid, line, mbar)?;
                let fill = match map.oob_fill {
                    OobFill::None => vec![0u8; esize],
                    OobFill::NanRequestZeroFma => map.data_type.nan_bytes(),
                };
                let mut data = Vec::with_capacity(box_bytes as usize);
                for g in &elems {
                    match *g {
                        Some(g) => match mem.slice(g, esize as u64) {
                            Some(s) => data.extend_from_slice(s),
                            None => return Err(self.oob_global(tid, line, g, esize as u64, mem)),
                        },
                        None => data.extend_from_slice(&fill),
                    }
                }
                self.queue_load(tid, line, mbar, &data, place)?;
            }
        });
        Ok(())
    }
}
