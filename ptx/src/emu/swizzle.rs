//! Shared-memory swizzle patterns: where a TMA tile copy (`cp.async.bulk.tensor` with a
//! tensor map's swizzle mode) puts each byte, and where a `wgmma` matrix descriptor's
//! layout mode expects to find it. Both units apply the same function to the shared
//! memory address, so one definition serves both.
//!
//! The PTX ISA ("Tensor swizzling modes") and the driver's `CUtensorMapSwizzle` describe
//! the modes as permuting the 16-byte chunks of a span of 32, 64 or 128 bytes. As an
//! address function, mode `B` (1, 2, 3 for 32B, 64B, 128B) XORs address bits `[4, 4+B)`
//! (the 16-byte chunk within the span) with bits `[7, 7+B)` (the index of the 128-byte
//! row, modulo 2^B). That is CUTLASS/CuTe's `Swizzle<B, 4, 3>` on byte offsets, which CuTe
//! maps to the tensor-map modes (`Swizzle<1,4,3>` = 32B, `Swizzle<2,4,3>` = 64B,
//! `Swizzle<3,4,3>` = 128B). The pattern repeats every 256, 512 and 1024 bytes: with 64-byte
//! rows (64B mode), two consecutive rows share a 128-byte line and so the same XOR value;
//! with 128-byte rows (128B mode), row `r`'s chunk `c` lands at chunk `c ^ (r % 8)`.
//!
//! The hardware applies the function to the shared-memory address itself (the bits of the
//! `.shared` window address), which is why TMA destinations and wgmma tiles that use a
//! swizzle are aligned to the pattern's repeat (`Swizzle::repeat_bytes`): callers pass
//! the shared address, not an offset within the tile.

/// A shared-memory swizzle mode, as a tensor map (`CU_TENSOR_MAP_SWIZZLE_*`, values 0-3)
/// or a wgmma descriptor's layout names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Swizzle {
    /// Bytes land where the address says.
    None,
    /// 16-byte chunks permuted within 32-byte spans (`Swizzle<1,4,3>`).
    B32,
    /// 16-byte chunks permuted within 64-byte spans (`Swizzle<2,4,3>`).
    B64,
    /// 16-byte chunks permuted within 128-byte spans (`Swizzle<3,4,3>`).
    B128,
}

impl Swizzle {
    /// Every mode, in the tensor map's encoding order.
    pub const ALL: [Swizzle; 4] = [Swizzle::None, Swizzle::B32, Swizzle::B64, Swizzle::B128];

    /// The mode for `CUtensorMapSwizzle` value `v` (0 none, 1 32B, 2 64B, 3 128B); the
    /// Blackwell-only atom variants (4-6) are `None` here.
    pub fn from_tensor_map(v: u32) -> Option<Swizzle> {
        Swizzle::ALL.get(v as usize).copied()
    }

    /// The `CUtensorMapSwizzle` value of the mode.
    pub fn tensor_map_value(self) -> u32 {
        self.bits()
    }

    /// CuTe's `B` in `Swizzle<B, 4, 3>`: how many chunk-index bits are XORed.
    pub fn bits(self) -> u32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 1,
            Swizzle::B64 => 2,
            Swizzle::B128 => 3,
        }
    }

    /// The span whose 16-byte chunks are permuted (0 for `None`): a tile's inner box
    /// dimension may not be wider than this (the driver's rule).
    pub fn span_bytes(self) -> u32 {
        match self {
            Swizzle::None => 0,
            s => 16 << s.bits(),
        }
    }

    /// Bytes after which the pattern repeats (128 · 2^B; 1 for `None`): the alignment a
    /// swizzled tile's base needs for the tile to start at the pattern's row 0.
    pub fn repeat_bytes(self) -> u32 {
        match self {
            Swizzle::None => 1,
            s => 128 << s.bits(),
        }
    }

    /// Where the byte at shared address `addr` goes: bits `[4, 4+B)` XOR bits `[7, 7+B)`.
    /// An involution (applying it twice gives `addr` back) that keeps every 16-byte chunk
    /// whole and moves bytes only within their 128·2^B-byte block.
    pub fn apply(self, addr: u64) -> u64 {
        let b = self.bits();
        let mask = ((1u64 << b) - 1) << 4;
        addr ^ ((addr >> 3) & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_identity() {
        for a in [0u64, 1, 17, 128, 1000, 1 << 20] {
            assert_eq!(Swizzle::None.apply(a), a);
        }
    }

    #[test]
    fn b128_moves_row_r_chunk_c_to_c_xor_r() {
        // 128-byte rows: chunk c of row r lands at chunk c ^ (r % 8) of the same row.
        for r in 0..16u64 {
            for c in 0..8u64 {
                for byte in [0u64, 5, 15] {
                    let addr = r * 128 + c * 16 + byte;
                    let want = r * 128 + ((c ^ (r % 8)) * 16) + byte;
                    assert_eq!(Swizzle::B128.apply(addr), want, "row {r} chunk {c}");
                }
            }
        }
    }

    #[test]
    fn b64_xors_with_the_128_byte_line_not_the_64_byte_row() {
        // 64-byte rows: rows 2k and 2k+1 share line k, whose index mod 4 is the XOR value
        // for the chunk bits [4,6) — chunk bit 2 (row parity here) is left alone.
        for row in 0..16u64 {
            for c in 0..4u64 {
                let addr = row * 64 + c * 16;
                let line = (row * 64) / 128;
                let want = row * 64 + ((c ^ (line % 4)) * 16);
                assert_eq!(Swizzle::B64.apply(addr), want, "row {row} chunk {c}");
            }
        }
        assert_eq!(Swizzle::B64.apply(128), 128 + 16);
        assert_eq!(Swizzle::B64.apply(3 * 128 + 16), 3 * 128 + 32);
    }

    #[test]
    fn b32_flips_chunk_bit_with_line_parity() {
        assert_eq!(Swizzle::B32.apply(0), 0);
        assert_eq!(Swizzle::B32.apply(16), 16);
        assert_eq!(Swizzle::B32.apply(128), 144);
        assert_eq!(Swizzle::B32.apply(144), 128);
        assert_eq!(Swizzle::B32.apply(256 + 7), 256 + 7);
        // Bit 5 (the 32-byte half of a 64-byte unit) is never touched in 32B mode.
        assert_eq!(Swizzle::B32.apply(128 + 32), 128 + 48);
    }

    #[test]
    fn every_mode_is_a_chunk_preserving_involution_within_its_repeat() {
        for s in Swizzle::ALL {
            let rep = s.repeat_bytes().max(128) as u64;
            let mut seen = vec![false; (2 * rep) as usize];
            for a in 0..2 * rep {
                let b = s.apply(a);
                assert_eq!(s.apply(b), a, "{s:?} not an involution at {a}");
                assert_eq!(a / rep, b / rep, "{s:?} left its block at {a}");
                assert_eq!(a % 16, b % 16, "{s:?} split a 16-byte chunk at {a}");
                assert!(!seen[b as usize], "{s:?} maps two addresses to {b}");
                seen[b as usize] = true;
            }
        }
    }

    #[test]
    fn tensor_map_values_round_trip() {
        for s in Swizzle::ALL {
            assert_eq!(Swizzle::from_tensor_map(s.tensor_map_value()), Some(s));
        }
        assert_eq!(Swizzle::from_tensor_map(4), None);
        assert_eq!(
            Swizzle::ALL.map(|s| s.span_bytes()),
            [0, 32, 64, 128],
            "spans"
        );
        assert_eq!(
            Swizzle::ALL.map(|s| s.repeat_bytes()),
            [1, 256, 512, 1024],
            "repeats"
        );
    }
}
