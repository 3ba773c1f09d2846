//! The 64-bit shared-memory matrix descriptor of `wgmma.mma_async`, and where it puts
//! each element of a 16-bit A (64×16) or B (N×16, stored as its transpose) operand.
//!
//! Bit layout (PTX ISA, "Matrix Descriptor Format"): bits 0-13 the start address, 16-29 the
//! leading-dimension byte offset (LBO), 32-45 the stride-dimension byte offset (SBO), each
//! in 16-byte units; 49-51 the base offset; 62-63 the layout (0 no swizzle, 1 128-byte,
//! 2 64-byte, 3 32-byte swizzle). The other bits are unused; the emulator requires them zero,
//! so a field shifted to the wrong place is reported instead of read as something else.
//!
//! The "canonical layouts" (PTX ISA, "Shared Memory Matrix Layout"; the same tables as
//! CUTLASS's `make_gmma_desc`) place the matrix in core matrices of 8 rows × 16 bytes. For
//! 16-bit elements, with `mn` the row of A (M) or column of B (N) and `k` in 0..16, and W the
//! swizzle width in bytes (32, 64 or 128):
//!
//! | Major-ness | Layout | byte offset of (mn, k) from the start |
//! |---|---|---|
//! | K-major | none | `(mn%8)·16 + (mn/8)·SBO + (k%8)·2 + (k/8)·LBO` |
//! | K-major | W-byte swizzle | `(mn%8)·W + (mn/8)·SBO + k·2` (LBO unused) |
//! | MN-major | none | `(mn%8)·2 + (mn/8)·SBO + (k%8)·16 + (k/8)·LBO` |
//! | MN-major | W-byte swizzle | `(mn%(W/2))·2 + (mn/(W/2))·LBO + (k%8)·W + (k/8)·SBO` |
//!
//! (In the ISA's CuTe notation: K-major `((8,m),(T,2k)):((1T,SBO),(1,LBO))` and
//! `((8,m),(T,2k)):((xT,SBO),(1,T))`; MN-major `((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))` and
//! `((T,x,m),(8,k)):((1,T,LBO),(xT,SBO))`, T = 8 elements, x = W/16.) The swizzle then moves
//! the address as a TMA copy with the same mode writes it ([`Swizzle::apply`], on the shared
//! address itself).
//!
//! The base offset is for tiles whose start is not aligned to the swizzle pattern's repeat
//! (1024, 512, 256 bytes); the ISA leaves its exact effect to the hardware, so the emulator
//! accepts only pattern-aligned tiles (start address bits 7 and up, within the repeat, zero
//! — advancing the start along K inside a 128-byte row, as kernels do, keeps that) with base
//! offset 0, and reports anything else.

use crate::emu::swizzle::Swizzle;

/// How the matrix is stored: K-major (`imm-trans` 0) or M-/N-major (`imm-trans` 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Major {
    K,
    Mn,
}

/// A decoded matrix descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// Start address in shared memory (bytes).
    pub start: u64,
    /// Leading-dimension byte offset.
    pub lbo: u64,
    /// Stride-dimension byte offset.
    pub sbo: u64,
    pub swizzle: Swizzle,
}

/// Bits the ISA leaves unused: 14-15, 30-31, 46-48, 52-61.
const RESERVED: u64 = (0b11 << 14) | (0b11 << 30) | (0b111 << 46) | (0x3FF << 52);

impl Descriptor {
    /// Encodes the fields (each address and offset a multiple of 16 below 2^18) with base
    /// offset 0: what a kernel's descriptor arithmetic computes.
    #[cfg(test)]
    pub(crate) fn encode(start: u64, lbo: u64, sbo: u64, swizzle: Swizzle) -> u64 {
        let layout = match swizzle {
            Swizzle::None => 0u64,
            Swizzle::B128 => 1,
            Swizzle::B64 => 2,
            Swizzle::B32 => 3,
        };
        ((start >> 4) & 0x3FFF)
            | (((lbo >> 4) & 0x3FFF) << 16)
            | (((sbo >> 4) & 0x3FFF) << 32)
            | (layout << 62)
    }

    /// Decodes `bits`.
    ///
    /// # Errors
    /// A sentence saying what is wrong: reserved bits set, a base offset, or a swizzled tile
    /// whose start is not aligned to the pattern's repeat.
    pub(crate) fn decode(bits: u64) -> Result<Descriptor, String> {
        if bits & RESERVED != 0 {
            return Err(format!(
                "matrix descriptor {bits:#018x} sets unused bits ({:#018x}); fields are start>>4 \
                 in bits 0-13, LBO>>4 in 16-29, SBO>>4 in 32-45, base offset in 49-51, layout in 62-63",
                bits & RESERVED
            ));
        }
        let field = |lo: u32, width: u32| (bits >> lo) & ((1u64 << width) - 1);
        let swizzle = match field(62, 2) {
            0 => Swizzle::None,
            1 => Swizzle::B128,
            2 => Swizzle::B64,
            _ => Swizzle::B32,
        };
        let d = Descriptor {
            start: field(0, 14) << 4,
            lbo: field(16, 14) << 4,
            sbo: field(32, 14) << 4,
            swizzle,
        };
        let base_offset = field(49, 3);
        if base_offset != 0 {
            return Err(format!(
                "matrix descriptor {bits:#018x} has base offset {base_offset}; the emulator \
                 supports only tiles aligned to the swizzle pattern (base offset 0)"
            ));
        }
        let repeat = u64::from(d.swizzle.repeat_bytes());
        if repeat > 1 && (d.start % repeat) >> 7 != 0 {
            return Err(format!(
                "matrix descriptor {bits:#018x}: a {:?}-swizzled tile starting at shared address \
                 {:#x} is not aligned to the pattern's {repeat}-byte repeat, and the base offset \
                 is 0; align the tile to {repeat} bytes",
                d.swizzle, d.start
            ));
        }
        Ok(d)
    }

    /// The shared address holding 16-bit element (`mn`, `k`) of a matrix stored `major`,
    /// after the swizzle (see the module note).
    pub(crate) fn element_addr(&self, major: Major, mn: u64, k: u64) -> u64 {
        let width = u64::from(self.swizzle.span_bytes());
        let offset = match (major, width) {
            (Major::K, 0) => (mn % 8) * 16 + (mn / 8) * self.sbo + (k % 8) * 2 + (k / 8) * self.lbo,
            (Major::K, w) => (mn % 8) * w + (mn / 8) * self.sbo + k * 2,
            (Major::Mn, 0) => {
                (mn % 8) * 2 + (mn / 8) * self.sbo + (k % 8) * 16 + (k / 8) * self.lbo
            }
            (Major::Mn, w) => {
                let per_row = w / 2;
                (mn % per_row) * 2 + (mn / per_row) * self.lbo + (k % 8) * w + (k / 8) * self.sbo
            }
        };
        self.swizzle.apply(self.start + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        for s in Swizzle::ALL {
            let bits = Descriptor::encode(0x2400, 0x80, 0x400, s);
            let d = Descriptor::decode(bits).unwrap();
            assert_eq!((d.start, d.lbo, d.sbo, d.swizzle), (0x2400, 0x80, 0x400, s));
        }
        // The ISA's numbers: layout 1 is 128B, 2 64B, 3 32B, in bits 62-63.
        assert_eq!(Descriptor::decode(1 << 62).unwrap().swizzle, Swizzle::B128);
        assert_eq!(Descriptor::decode(2 << 62).unwrap().swizzle, Swizzle::B64);
        assert_eq!(Descriptor::decode(3 << 62).unwrap().swizzle, Swizzle::B32);
    }

    #[test]
    fn refuses_reserved_bits_base_offset_and_misaligned_swizzled_tiles() {
        assert!(Descriptor::decode(1 << 15)
            .unwrap_err()
            .contains("unused bits"));
        assert!(Descriptor::decode(1 << 61)
            .unwrap_err()
            .contains("unused bits"));
        assert!(Descriptor::decode(1 << 49)
            .unwrap_err()
            .contains("base offset"));
        // 128B swizzle repeats every 1024 bytes: a start at 1024 + 128 is misaligned, one at
        // 1024 + 96 (K advanced inside the row) is not.
        let at = |start| Descriptor::decode(Descriptor::encode(start, 16, 1024, Swizzle::B128));
        assert!(at(1024 + 128).unwrap_err().contains("not aligned"));
        assert!(at(1024 + 96).is_ok());
        // Without a swizzle any 16-byte start is fine.
        assert!(Descriptor::decode(Descriptor::encode(144, 16, 16, Swizzle::None)).is_ok());
    }

    #[test]
    fn k_major_no_swizzle_walks_core_matrices() {
        let d = Descriptor::decode(Descriptor::encode(0, 128, 256, Swizzle::None)).unwrap();
        // Row 3, k 5: inside the first core matrix (8 rows × 16 bytes).
        assert_eq!(d.element_addr(Major::K, 3, 5), 3 * 16 + 5 * 2);
        // k 8..16: the next core matrix along K, LBO away.
        assert_eq!(d.element_addr(Major::K, 3, 13), 128 + 3 * 16 + 5 * 2);
        // Rows 8..16: SBO away.
        assert_eq!(d.element_addr(Major::K, 11, 13), 256 + 128 + 3 * 16 + 5 * 2);
    }

    #[test]
    fn mn_major_swizzled_uses_lbo_across_mn_and_sbo_across_k() {
        // The ISA's example "MN-major, 64B swizzling, bf16": LBO 512 bytes, SBO 1024 bytes;
        // 32 elements of N per 64-byte row, 8 rows of K per SBO.
        let d = Descriptor::decode(Descriptor::encode(0, 512, 1024, Swizzle::B64)).unwrap();
        let plain =
            |mn: u64, k: u64| (mn % 32) * 2 + (mn / 32) * 512 + (k % 8) * 64 + (k / 8) * 1024;
        for (mn, k) in [(0, 0), (5, 1), (31, 7), (32, 0), (40, 9), (63, 15)] {
            assert_eq!(
                d.element_addr(Major::Mn, mn, k),
                Swizzle::B64.apply(plain(mn, k)),
                "({mn}, {k})"
            );
        }
        // Row k = 2 (bytes 128..192) lies in 128-byte line 1: chunk 0 moves to chunk 1.
        assert_eq!(d.element_addr(Major::Mn, 0, 2), 128 + 16);
    }

    #[test]
    fn k_major_128b_matches_the_tma_pattern() {
        // 8 rows of 128 bytes: element (r, k) of row r lands in chunk (k·2/16) ^ r.
        let d = Descriptor::decode(Descriptor::encode(2048, 16, 1024, Swizzle::B128)).unwrap();
        for r in 0..8u64 {
            for k in 0..16u64 {
                let chunk = (k * 2 / 16) ^ r;
                assert_eq!(
                    d.element_addr(Major::K, r, k),
                    2048 + r * 128 + chunk * 16 + (k * 2) % 16
                );
            }
        }
    }
}
