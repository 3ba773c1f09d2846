//! Tensor maps (`CUtensorMap`) for `cp.async.bulk.tensor` kernels, encoded for the device
//! that will run them: on `cuda` by the driver's `cuTensorMapEncodeTiled` (NVIDIA's own
//! 128-byte layout), on `emu` by [`frugal_ptx::tensor_map::TensorMap::encode`] (the
//! layout the emulator reads). Both check the parameters first with the rules the driver
//! documents ([`TensorMap::validate`]), so a map is refused the same way, with the same
//! message, on either device. The 128 bytes go into the kernel's
//! `.param .align 64 .b8 tmap[128]` parameter (or into device memory).

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::driver::sys;
pub use frugal_ptx::tensor_map::{
    Interleave, L2Promotion, OobFill, TensorDataType, TensorMap, TENSOR_MAP_BYTES,
};

use crate::device::Device;
use crate::error::RuntimeError;

/// Encodes `map` for `device`.
///
/// # Errors
/// [`RuntimeError::BadTensorMap`] for a map that breaks a rule (naming it) or that the
/// driver refuses; [`RuntimeError::Unsupported`] on `cpu`, which runs no PTX.
pub fn encode_tensor_map(
    device: &Device,
    map: &TensorMap,
) -> Result<[u8; TENSOR_MAP_BYTES], RuntimeError> {
    map.validate()
        .map_err(|reason| RuntimeError::BadTensorMap { reason })?;
    match device {
        Device::Cpu(_) => Err(RuntimeError::Unsupported {
            backend: "cpu",
            what: "tensor maps (the CPU backend runs no PTX)".into(),
        }),
        Device::Emu(_) => map
            .encode()
            .map_err(|reason| RuntimeError::BadTensorMap { reason }),
        Device::Cuda(d) => {
            d.inner().make_current()?;
            encode_with_driver(map)
        }
    }
}

fn data_type(t: TensorDataType) -> sys::CUtensorMapDataType {
    use sys::CUtensorMapDataType as D;
    match t {
        TensorDataType::U8 => D::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        TensorDataType::U16 => D::CU_TENSOR_MAP_DATA_TYPE_UINT16,
        TensorDataType::U32 => D::CU_TENSOR_MAP_DATA_TYPE_UINT32,
        TensorDataType::I32 => D::CU_TENSOR_MAP_DATA_TYPE_INT32,
        TensorDataType::U64 => D::CU_TENSOR_MAP_DATA_TYPE_UINT64,
        TensorDataType::I64 => D::CU_TENSOR_MAP_DATA_TYPE_INT64,
        TensorDataType::F16 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        TensorDataType::F32 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        TensorDataType::F64 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
        TensorDataType::Bf16 => D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        TensorDataType::F32Ftz => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ,
        TensorDataType::Tf32 => D::CU_TENSOR_MAP_DATA_TYPE_TFLOAT32,
        TensorDataType::Tf32Ftz => D::CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ,
    }
}

fn encode_with_driver(map: &TensorMap) -> Result<[u8; TENSOR_MAP_BYTES], RuntimeError> {
    use frugal_ptx::emu::swizzle::Swizzle;
    let swizzle = match map.swizzle {
        Swizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        Swizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
        Swizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        Swizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    let interleave = match map.interleave {
        Interleave::None => sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
        Interleave::B16 => sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_16B,
        Interleave::B32 => sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_32B,
    };
    let l2 = match map.l2_promotion {
        L2Promotion::None => sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_NONE,
        L2Promotion::B64 => sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
        L2Promotion::B128 => sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        L2Promotion::B256 => sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
    };
    let fill = match map.oob_fill {
        OobFill::None => sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        OobFill::NanRequestZeroFma => {
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
        }
    };
    let mut out = sys::CUtensorMap { opaque: [0; 16] };
    let (dims, strides) = (map.dims.clone(), map.strides.clone());
    let (boxes, estrides) = (map.box_dims.clone(), map.element_strides.clone());
    // SAFETY: the arrays hold `rank` (dims, box, element strides) and `rank - 1` (strides)
    // entries, as validate() checked; `out` is the 128-byte, 64-aligned CUtensorMap the
    // driver writes; the global address is only recorded, not dereferenced.
    // A panic (the symbol missing from an old driver) leaves `out` unused: unwind-safe.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut out,
            data_type(map.data_type),
            map.rank() as u32,
            map.global_address as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            estrides.as_ptr(),
            interleave,
            swizzle,
            l2,
            fill,
        )
    }))
    .map_err(|_| RuntimeError::BadTensorMap {
        reason: "the driver has no cuTensorMapEncodeTiled (CUDA 12.0 or newer is needed)".into(),
    })?;
    r.result().map_err(|e| RuntimeError::BadTensorMap {
        reason: format!("cuTensorMapEncodeTiled: {e:?}"),
    })?;
    let mut bytes = [0u8; TENSOR_MAP_BYTES];
    for (i, w) in out.opaque.iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_ptx::emu::swizzle::Swizzle;

    fn map() -> TensorMap {
        TensorMap {
            data_type: TensorDataType::F16,
            global_address: 0x1_0000_0000,
            dims: vec![64, 64],
            strides: vec![128],
            box_dims: vec![64, 8],
            element_strides: vec![1, 1],
            interleave: Interleave::None,
            swizzle: Swizzle::B128,
            l2_promotion: L2Promotion::B256,
            oob_fill: OobFill::NanRequestZeroFma,
        }
    }

    #[test]
    fn emu_encodes_what_the_emulator_decodes_and_refuses_bad_maps() {
        let dev = Device::open(crate::device::DeviceSpec::Emu).unwrap();
        let b = encode_tensor_map(&dev, &map()).unwrap();
        assert_eq!(TensorMap::decode(&b).unwrap(), map());
        let mut bad = map();
        bad.strides[0] = 120;
        let e = encode_tensor_map(&dev, &bad).unwrap_err().to_string();
        assert!(e.contains("global stride 1 is 120 bytes"), "{e}");
    }

    #[test]
    fn cpu_has_no_tensor_maps() {
        let e = encode_tensor_map(&Device::cpu(), &map()).unwrap_err();
        assert!(matches!(e, RuntimeError::Unsupported { .. }), "{e}");
    }
}
