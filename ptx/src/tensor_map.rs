//! Tensor maps (`CUtensorMap`): the 128-byte descriptors `cp.async.bulk.tensor` reads to
//! copy a box of a tensor between global and shared memory.
//!
//! On a GPU the driver's `cuTensorMapEncodeTiled` writes the 128 bytes (their layout is
//! NVIDIA's and undocumented). For the emulator, [`TensorMap::encode`] writes frugal's own
//! layout (below) and the emulator decodes it with [`TensorMap::decode`]; both validate
//! with the rules the driver documents for `cuTensorMapEncodeTiled`, so a map the
//! emulator accepts is one the driver would accept:
//!
//! - rank 1 to 5 (3 to 5 with interleave); each global dimension 1 to 2^32;
//! - the global address aligned to 16 bytes (32 with 32-byte interleave);
//! - rank-1 global strides (bytes, of dimensions 1..rank), each a multiple of 16 (32 with
//!   32-byte interleave) and below 2^40;
//! - each box dimension 1 to 256; each element stride 1 to 8;
//! - without interleave, the inner box dimension times the element size a multiple of 16
//!   bytes and, with a swizzle, at most the swizzle span (32, 64 or 128 bytes);
//! - 32-byte interleave only with the 32-byte swizzle;
//! - `NAN_REQUEST_ZERO_FMA` fill only for floating-point element types.
//!
//! frugal's layout (little-endian): bytes 0..4 `FTM1`; 4 data type, 5 rank, 6 interleave,
//! 7 swizzle, 8 L2 promotion, 9 OOB fill (each the driver's enum value); 16..24 the global
//! address; 24..64 five global dimensions (u64); 64..96 four global strides (u64); 96..101
//! five box dimensions minus one (u8); 101..106 five element strides (u8); the rest zero.

use crate::emu::swizzle::Swizzle;

/// Bytes of a tensor map.
pub const TENSOR_MAP_BYTES: usize = 128;
const MAGIC: &[u8; 4] = b"FTM1";

/// Element types (`CUtensorMapDataType`, values as the driver numbers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorDataType {
    U8 = 0,
    U16 = 1,
    U32 = 2,
    I32 = 3,
    U64 = 4,
    I64 = 5,
    F16 = 6,
    F32 = 7,
    F64 = 8,
    Bf16 = 9,
    F32Ftz = 10,
    Tf32 = 11,
    Tf32Ftz = 12,
}

impl TensorDataType {
    const ALL: [TensorDataType; 13] = [
        TensorDataType::U8,
        TensorDataType::U16,
        TensorDataType::U32,
        TensorDataType::I32,
        TensorDataType::U64,
        TensorDataType::I64,
        TensorDataType::F16,
        TensorDataType::F32,
        TensorDataType::F64,
        TensorDataType::Bf16,
        TensorDataType::F32Ftz,
        TensorDataType::Tf32,
        TensorDataType::Tf32Ftz,
    ];

    /// The type for driver value `v`.
    pub fn from_value(v: u32) -> Option<TensorDataType> {
        Self::ALL.get(v as usize).copied()
    }

    /// Bytes per element.
    pub fn bytes(self) -> u32 {
        use TensorDataType::*;
        match self {
            U8 => 1,
            U16 | F16 | Bf16 => 2,
            U32 | I32 | F32 | F32Ftz | Tf32 | Tf32Ftz => 4,
            U64 | I64 | F64 => 8,
        }
    }

    /// Floating point (may be filled with NaN out of bounds).
    pub fn is_float(self) -> bool {
        use TensorDataType::*;
        matches!(self, F16 | F32 | F64 | Bf16 | F32Ftz | Tf32 | Tf32Ftz)
    }

    /// The bytes of the canonical NaN of the type (little-endian, `bytes()` long).
    pub fn nan_bytes(self) -> Vec<u8> {
        match self.bytes() {
            2 => 0x7FFFu16.to_le_bytes().to_vec(),
            4 => 0x7FFF_FFFFu32.to_le_bytes().to_vec(),
            _ => 0x7FFF_FFFF_FFFF_FFFFu64.to_le_bytes().to_vec(),
        }
    }
}

/// `CUtensorMapInterleave`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interleave {
    None = 0,
    B16 = 1,
    B32 = 2,
}

/// `CUtensorMapL2promotion` (a cache hint; no effect on results).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L2Promotion {
    None = 0,
    B64 = 1,
    B128 = 2,
    B256 = 3,
}

/// `CUtensorMapFloatOOBfill`: what a load writes for elements outside the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OobFill {
    /// Zeros.
    None = 0,
    /// NaN (the request to make FMA consumers produce zero).
    NanRequestZeroFma = 1,
}

/// A tiled tensor map's parameters, as `cuTensorMapEncodeTiled` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMap {
    pub data_type: TensorDataType,
    /// Device address of element (0, .., 0).
    pub global_address: u64,
    /// Elements per dimension, innermost first (`rank` entries).
    pub dims: Vec<u64>,
    /// Bytes between consecutive indices of dimensions 1..rank (`rank - 1` entries).
    pub strides: Vec<u64>,
    /// Box (tile) elements per dimension (`rank` entries).
    pub box_dims: Vec<u32>,
    /// Traversal stride per dimension (`rank` entries, usually all 1).
    pub element_strides: Vec<u32>,
    pub interleave: Interleave,
    pub swizzle: Swizzle,
    pub l2_promotion: L2Promotion,
    pub oob_fill: OobFill,
}

impl TensorMap {
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Elements the box covers in dimension `i` (`ceil(box / element stride)`).
    pub fn box_count(&self, i: usize) -> u32 {
        self.box_dims[i].div_ceil(self.element_strides[i].max(1))
    }

    /// Bytes one box occupies in shared memory.
    pub fn box_bytes(&self) -> u64 {
        (0..self.rank())
            .map(|i| u64::from(self.box_count(i)))
            .product::<u64>()
            * u64::from(self.data_type.bytes())
    }

    /// Checks the parameters against the driver's documented rules.
    ///
    /// # Errors
    /// A message naming the parameter, its value and the rule.
    pub fn validate(&self) -> Result<(), String> {
        let r = self.rank();
        let inter = self.interleave != Interleave::None;
        if !(1..=5).contains(&r) || (inter && r < 3) {
            return Err(format!(
                "tensor rank {r} is outside 1..=5 (3..=5 with interleave)"
            ));
        }
        if self.strides.len() + 1 != r
            || self.box_dims.len() != r
            || self.element_strides.len() != r
        {
            return Err(format!(
                "a rank-{r} map needs {r} dims, {} strides, {r} box dims and {r} element strides; got {}, {}, {} and {}",
                r - 1,
                self.dims.len(),
                self.strides.len(),
                self.box_dims.len(),
                self.element_strides.len()
            ));
        }
        let align = if self.interleave == Interleave::B32 {
            32
        } else {
            16
        };
        if !self.global_address.is_multiple_of(align) {
            return Err(format!(
                "global address {:#x} is not {align}-byte aligned",
                self.global_address
            ));
        }
        for (i, &d) in self.dims.iter().enumerate() {
            if d == 0 || d > 1 << 32 {
                return Err(format!("global dimension {i} is {d}; it must be 1..=2^32"));
            }
        }
        for (i, &s) in self.strides.iter().enumerate() {
            if !s.is_multiple_of(align) || s >= 1 << 40 {
                return Err(format!(
                    "global stride {} is {s} bytes; it must be a multiple of {align} and below 2^40",
                    i + 1
                ));
            }
        }
        for (i, &b) in self.box_dims.iter().enumerate() {
            if b == 0 || b > 256 {
                return Err(format!("box dimension {i} is {b}; it must be 1..=256"));
            }
        }
        for (i, &e) in self.element_strides.iter().enumerate() {
            if e == 0 || e > 8 {
                return Err(format!("element stride {i} is {e}; it must be 1..=8"));
            }
        }
        let inner = u64::from(self.box_dims[0]) * u64::from(self.data_type.bytes());
        if !inter {
            if !inner.is_multiple_of(16) {
                return Err(format!(
                    "the inner box dimension is {inner} bytes; without interleave it must be a multiple of 16"
                ));
            }
            let span = u64::from(self.swizzle.span_bytes());
            if span != 0 && inner > span {
                return Err(format!(
                    "the inner box dimension is {inner} bytes, wider than the {span}-byte swizzle span"
                ));
            }
        }
        if self.interleave == Interleave::B32 && self.swizzle != Swizzle::B32 {
            return Err("32-byte interleave requires the 32-byte swizzle".into());
        }
        if self.oob_fill == OobFill::NanRequestZeroFma && !self.data_type.is_float() {
            return Err(format!(
                "NaN out-of-bounds fill needs a floating-point element type, not {:?}",
                self.data_type
            ));
        }
        Ok(())
    }

    /// The 128 bytes in frugal's layout (see the module doc), after [`TensorMap::validate`].
    ///
    /// # Errors
    /// As [`TensorMap::validate`].
    pub fn encode(&self) -> Result<[u8; TENSOR_MAP_BYTES], String> {
        self.validate()?;
        let mut b = [0u8; TENSOR_MAP_BYTES];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = self.data_type as u8;
        b[5] = self.rank() as u8;
        b[6] = self.interleave as u8;
        b[7] = self.swizzle.tensor_map_value() as u8;
        b[8] = self.l2_promotion as u8;
        b[9] = self.oob_fill as u8;
        b[16..24].copy_from_slice(&self.global_address.to_le_bytes());
        for (i, d) in self.dims.iter().enumerate() {
            b[24 + 8 * i..32 + 8 * i].copy_from_slice(&d.to_le_bytes());
        }
        for (i, s) in self.strides.iter().enumerate() {
            b[64 + 8 * i..72 + 8 * i].copy_from_slice(&s.to_le_bytes());
        }
        for i in 0..self.rank() {
            b[96 + i] = (self.box_dims[i] - 1) as u8;
            b[101 + i] = self.element_strides[i] as u8;
        }
        Ok(b)
    }

    /// Reads a map [`TensorMap::encode`] wrote, validating it again.
    ///
    /// # Errors
    /// A message saying what is wrong: not a frugal tensor map (for example one the CUDA
    /// driver encoded, or uninitialised bytes), an unknown enum value, or a rule broken.
    pub fn decode(b: &[u8]) -> Result<TensorMap, String> {
        if b.len() < TENSOR_MAP_BYTES || &b[0..4] != MAGIC {
            return Err("the 128 bytes are not a tensor map encoded for the emulator (encode it with frugal's TensorMap::encode / runtime encode_tensor_map on the emu device)".into());
        }
        let r = b[5] as usize;
        if !(1..=5).contains(&r) {
            return Err(format!("tensor rank {r} is outside 1..=5"));
        }
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let map = TensorMap {
            data_type: TensorDataType::from_value(u32::from(b[4]))
                .ok_or_else(|| format!("unknown tensor data type {}", b[4]))?,
            global_address: u64_at(16),
            dims: (0..r).map(|i| u64_at(24 + 8 * i)).collect(),
            strides: (1..r).map(|i| u64_at(64 + 8 * (i - 1))).collect(),
            box_dims: (0..r).map(|i| u32::from(b[96 + i]) + 1).collect(),
            element_strides: (0..r).map(|i| u32::from(b[101 + i])).collect(),
            interleave: match b[6] {
                0 => Interleave::None,
                1 => Interleave::B16,
                2 => Interleave::B32,
                v => return Err(format!("unknown interleave {v}")),
            },
            swizzle: Swizzle::from_tensor_map(u32::from(b[7]))
                .ok_or_else(|| format!("unknown or unsupported swizzle {}", b[7]))?,
            l2_promotion: match b[8] {
                0 => L2Promotion::None,
                1 => L2Promotion::B64,
                2 => L2Promotion::B128,
                3 => L2Promotion::B256,
                v => return Err(format!("unknown L2 promotion {v}")),
            },
            oob_fill: match b[9] {
                0 => OobFill::None,
                1 => OobFill::NanRequestZeroFma,
                v => return Err(format!("unknown out-of-bounds fill {v}")),
            },
        };
        map.validate()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map2d() -> TensorMap {
        TensorMap {
            data_type: TensorDataType::Bf16,
            global_address: 0x1_0000_0000,
            dims: vec![100, 37],
            strides: vec![208],
            box_dims: vec![64, 16],
            element_strides: vec![1, 1],
            interleave: Interleave::None,
            swizzle: Swizzle::B128,
            l2_promotion: L2Promotion::B128,
            oob_fill: OobFill::None,
        }
    }

    #[test]
    fn encode_decode_round_trips() {
        let m = map2d();
        let b = m.encode().unwrap();
        assert_eq!(TensorMap::decode(&b).unwrap(), m);
        assert_eq!(m.box_bytes(), 64 * 16 * 2);
    }

    /// A change that breaks one rule.
    type Breaker = Box<dyn Fn(&mut TensorMap)>;

    #[test]
    fn driver_rules_are_enforced() {
        let bad: Vec<(&str, Breaker)> = vec![
            ("stride", Box::new(|m| m.strides[0] = 200)),
            ("stride", Box::new(|m| m.strides[0] = 1 << 40)),
            ("box dimension", Box::new(|m| m.box_dims[1] = 257)),
            ("swizzle span", Box::new(|m| m.box_dims[0] = 128)),
            (
                "multiple of 16",
                Box::new(|m| {
                    m.box_dims[0] = 4;
                    m.swizzle = Swizzle::None;
                }),
            ),
            ("aligned", Box::new(|m| m.global_address += 8)),
            ("element stride", Box::new(|m| m.element_strides[0] = 9)),
            (
                "NaN",
                Box::new(|m| {
                    m.data_type = TensorDataType::U16;
                    m.oob_fill = OobFill::NanRequestZeroFma;
                }),
            ),
            ("rank", Box::new(|m| m.interleave = Interleave::B16)),
            ("global dimension", Box::new(|m| m.dims[1] = 0)),
        ];
        for (want, f) in bad {
            let mut m = map2d();
            f(&mut m);
            let e = m.encode().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut m = map2d();
        m.oob_fill = OobFill::NanRequestZeroFma;
        m.encode().unwrap();
    }

    #[test]
    fn foreign_bytes_are_refused() {
        let e = TensorMap::decode(&[0u8; 128]).unwrap_err();
        assert!(
            e.contains("not a tensor map encoded for the emulator"),
            "{e}"
        );
        let mut b = map2d().encode().unwrap();
        b[7] = 5;
        assert!(TensorMap::decode(&b).unwrap_err().contains("swizzle"));
    }
}
