//! The one launch path: launch shape checks and parameter packing, shared by the
//! `cuda` and `emu` backends so that emulator tests cover the real launch code.
//!
//! Parameters are packed into one byte buffer, each at `align_up(previous end,
//! align)` with its size and alignment taken from the kernel's PTX declaration
//! (as the emulator's parser reports them). CUDA receives that buffer through
//! `cuLaunchKernel`'s `extra` argument (`CU_LAUNCH_PARAM_BUFFER_POINTER` and
//! `CU_LAUNCH_PARAM_BUFFER_SIZE`); the emulator receives the same bytes.

pub use frugal_ptx::emu::{LaunchDims, ParamInfo};

use crate::error::RuntimeError;

/// One kernel argument, as the kernel's `.param` declaration expects it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    /// A device address (`.param .u64` holding a pointer).
    Ptr(u64),
    /// `.u64` / `.s64` / `.b64` value.
    U64(u64),
    /// `.s64` value.
    I64(i64),
    /// `.u32` / `.b32` value.
    U32(u32),
    /// `.s32` value.
    I32(i32),
    /// `.f32` value.
    F32(f32),
}

impl KernelArg {
    /// The argument's bytes, little-endian, as the kernel reads them.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            KernelArg::Ptr(v) | KernelArg::U64(v) => v.to_le_bytes().to_vec(),
            KernelArg::I64(v) => v.to_le_bytes().to_vec(),
            KernelArg::U32(v) => v.to_le_bytes().to_vec(),
            KernelArg::I32(v) => v.to_le_bytes().to_vec(),
            KernelArg::F32(v) => v.to_le_bytes().to_vec(),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            KernelArg::Ptr(_) => "pointer",
            KernelArg::U64(_) => "u64",
            KernelArg::I64(_) => "i64",
            KernelArg::U32(_) => "u32",
            KernelArg::I32(_) => "i32",
            KernelArg::F32(_) => "f32",
        }
    }
}

fn align_up(x: usize, align: usize) -> usize {
    x.div_ceil(align.max(1)) * align.max(1)
}

/// Packs `args` for `kernel` whose parameters are `params`.
///
/// # Errors
/// `BadArguments` when the count differs, an argument's size differs from its
/// parameter's, or the declared offsets disagree with the packing rule.
pub fn pack_params(
    kernel: &str,
    params: &[ParamInfo],
    args: &[KernelArg],
) -> Result<Vec<u8>, RuntimeError> {
    let bad = |reason: String| RuntimeError::BadArguments {
        kernel: kernel.to_string(),
        reason,
    };
    if params.len() != args.len() {
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        return Err(bad(format!(
            "{} argument(s) given, the kernel takes {} ({})",
            args.len(),
            params.len(),
            names.join(", ")
        )));
    }
    let mut buf = Vec::new();
    for (p, a) in params.iter().zip(args) {
        let bytes = a.to_bytes();
        if bytes.len() != p.size {
            return Err(bad(format!(
                "parameter '{}' is {} bytes, but a {} ({} bytes) was given",
                p.name,
                p.size,
                a.kind(),
                bytes.len()
            )));
        }
        let offset = align_up(buf.len(), p.align);
        if offset != p.offset {
            return Err(bad(format!(
                "parameter '{}' is declared at offset {} but packs at {} (align {})",
                p.name, p.offset, offset, p.align
            )));
        }
        buf.resize(offset, 0);
        buf.extend_from_slice(&bytes);
    }
    Ok(buf)
}

/// Hardware limits a launch shape is checked against (the same on every
/// architecture frugal supports, sm_80 and newer).
pub mod limits {
    /// Threads per block.
    pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
    /// Block dimensions (x, y, z).
    pub const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
    /// Grid dimensions (x, y, z).
    pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];
    /// Dynamic shared memory per block with the opt-in attribute (sm_90: 227 KiB;
    /// sm_80: 163 KiB; the device check at launch applies the device's own limit).
    pub const MAX_DYNAMIC_SHARED: u32 = 227 * 1024;
    /// Above this, CUDA needs `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` set.
    pub const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;
}

/// Checks a launch shape against the hardware limits.
///
/// # Errors
/// `BadLaunch` naming the dimension and the limit.
pub fn check_dims(kernel: &str, dims: &LaunchDims) -> Result<(), RuntimeError> {
    let bad = |reason: String| RuntimeError::BadLaunch {
        kernel: kernel.to_string(),
        reason,
    };
    for (i, axis) in ["x", "y", "z"].into_iter().enumerate() {
        if dims.grid[i] == 0 || dims.block[i] == 0 {
            return Err(bad(format!(
                "grid ({:?}) and block ({:?}) must be at least 1 in every dimension",
                dims.grid, dims.block
            )));
        }
        if dims.grid[i] > limits::MAX_GRID[i] {
            return Err(bad(format!(
                "grid.{} = {} exceeds {}",
                axis,
                dims.grid[i],
                limits::MAX_GRID[i]
            )));
        }
        if dims.block[i] > limits::MAX_BLOCK[i] {
            return Err(bad(format!(
                "block.{} = {} exceeds {}",
                axis,
                dims.block[i],
                limits::MAX_BLOCK[i]
            )));
        }
    }
    let threads: u64 = dims.block.iter().map(|&b| b as u64).product();
    if threads > limits::MAX_THREADS_PER_BLOCK {
        return Err(bad(format!(
            "{threads} threads per block exceeds {}",
            limits::MAX_THREADS_PER_BLOCK
        )));
    }
    if dims.dynamic_shared_bytes > limits::MAX_DYNAMIC_SHARED {
        return Err(bad(format!(
            "{} bytes of dynamic shared memory exceeds {}",
            dims.dynamic_shared_bytes,
            limits::MAX_DYNAMIC_SHARED
        )));
    }
    Ok(())
}

/// A 1-D launch of `block` threads per CTA covering `n` work items, each CTA
/// handling `per_thread` items per thread, capped at `max_ctas` CTAs (grid-stride
/// kernels loop over the rest).
pub fn dims_1d(n: u64, block: u32, per_thread: u32, max_ctas: u32) -> LaunchDims {
    let per_cta = block as u64 * per_thread.max(1) as u64;
    let ctas = n.div_ceil(per_cta.max(1)).clamp(1, max_ctas.max(1) as u64) as u32;
    LaunchDims {
        grid: [ctas, 1, 1],
        block: [block, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, size: usize, align: usize, offset: usize) -> ParamInfo {
        ParamInfo {
            name: name.into(),
            size,
            align,
            offset,
        }
    }

    #[test]
    fn packs_with_alignment_padding() {
        // (u32 n, u64 ptr, f32 s): ptr is padded to offset 8.
        let params = [
            info("n", 4, 4, 0),
            info("ptr", 8, 8, 8),
            info("s", 4, 4, 16),
        ];
        let buf = pack_params(
            "k",
            &params,
            &[
                KernelArg::U32(7),
                KernelArg::Ptr(0x1122),
                KernelArg::F32(2.0),
            ],
        )
        .unwrap();
        assert_eq!(buf.len(), 20);
        assert_eq!(&buf[0..4], &7u32.to_le_bytes());
        assert_eq!(&buf[4..8], &[0, 0, 0, 0]);
        assert_eq!(&buf[8..16], &0x1122u64.to_le_bytes());
        assert_eq!(&buf[16..20], &2.0f32.to_le_bytes());
    }

    #[test]
    fn mismatches_are_errors() {
        let params = [info("ptr", 8, 8, 0), info("n", 8, 8, 8)];
        let e = pack_params("k", &params, &[KernelArg::Ptr(1)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 argument(s) given, the kernel takes 2 (ptr, n)"),
            "{e}"
        );
        let e = pack_params("k", &params, &[KernelArg::Ptr(1), KernelArg::U32(3)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("parameter 'n' is 8 bytes, but a u32 (4 bytes)"),
            "{e}"
        );
        let skewed = [info("ptr", 8, 8, 0), info("n", 8, 8, 12)];
        assert!(pack_params("k", &skewed, &[KernelArg::Ptr(1), KernelArg::U64(3)]).is_err());
    }

    #[test]
    fn dims_are_checked() {
        let ok = LaunchDims {
            grid: [10, 1, 1],
            block: [256, 1, 1],
            dynamic_shared_bytes: 0,
        };
        check_dims("k", &ok).unwrap();
        let mut d = ok;
        d.block = [64, 32, 1];
        assert!(check_dims("k", &d)
            .unwrap_err()
            .to_string()
            .contains("2048 threads"));
        d = ok;
        d.grid[1] = 0;
        assert!(check_dims("k", &d).is_err());
        assert_eq!(dims_1d(1000, 256, 4, 1000).grid, [1, 1, 1]);
        assert_eq!(dims_1d(1025, 256, 4, 1000).grid, [2, 1, 1]);
        assert_eq!(dims_1d(1 << 30, 256, 4, 100).grid, [100, 1, 1]);
        assert_eq!(dims_1d(0, 256, 4, 100).grid, [1, 1, 1]);
    }
}
