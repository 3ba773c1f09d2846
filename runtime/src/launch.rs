//! The one launch path: launch shape checks and parameter checks, shared by the
//! `cuda` and `emu` backends so that emulator tests cover the real launch code.
//!
//! Parameters are packed once, by `frugal_ptx::launch::pack`, into one byte buffer,
//! each where ptxas places it (`frugal_ptx::launch::layout`; on `cuda` laid out for the
//! device's compute capability, as its JIT compiles the module): a typed launcher's bytes are checked here
//! against the kernel's PTX declaration (as the emulator's parser reports it), a
//! kernel named by hand is packed against that declaration. CUDA receives that buffer through
//! `cuLaunchKernel`'s `extra` argument (`CU_LAUNCH_PARAM_BUFFER_POINTER` and
//! `CU_LAUNCH_PARAM_BUFFER_SIZE`); the emulator receives the same bytes.

pub use frugal_ptx::emu::{LaunchDims, ParamInfo};
pub use frugal_ptx::launch::Arg;

use frugal_ptx::error::PtxError;
use frugal_ptx::launch::{self, Param};

use crate::error::RuntimeError;

/// Packs `args` for `kernel` against its parsed declaration `params` (the launch of a
/// kernel named by hand), with frugal-ptx's one packer.
///
/// # Errors
/// `BadArguments` when the count differs, an argument's size differs from its
/// parameter's, or the declared offsets disagree with the packing rule.
pub fn pack(kernel: &str, params: &[ParamInfo], args: &[Arg]) -> Result<Vec<u8>, RuntimeError> {
    launch::pack(kernel, params.iter().map(Param::declared), args).map_err(bad_arguments)
}

/// Checks that `packed` (a typed launcher's bytes) is as long as `kernel`'s parsed
/// declaration `params`.
///
/// # Errors
/// `BadArguments` naming both sizes.
pub fn check_packed(kernel: &str, params: &[ParamInfo], packed: &[u8]) -> Result<(), RuntimeError> {
    let declared = launch::declared_size(params);
    if packed.len() != declared {
        return Err(RuntimeError::BadArguments {
            kernel: kernel.to_string(),
            reason: format!(
                "{} bytes of packed parameters given, the kernel declares {declared}",
                packed.len()
            ),
        });
    }
    Ok(())
}

/// The packer's refusal as this crate's error (its reason names the parameter and sizes).
fn bad_arguments(e: PtxError) -> RuntimeError {
    match e {
        PtxError::BadLaunch { kernel, reason } => RuntimeError::BadArguments { kernel, reason },
        other => RuntimeError::BadArguments {
            kernel: String::new(),
            reason: other.to_string(),
        },
    }
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
    fn mismatches_are_bad_arguments() {
        let params = [info("ptr", 8, 8, 0), info("n", 8, 8, 8)];
        let e = pack("k", &params, &[Arg::Ptr(1)]).unwrap_err().to_string();
        assert!(
            e.contains("arguments for kernel 'k' do not match its parameters")
                && e.contains("1 argument(s) given, the kernel takes 2 (ptr, n)"),
            "{e}"
        );
        assert_eq!(
            pack("k", &params, &[Arg::Ptr(1), Arg::U64(2)])
                .unwrap()
                .len(),
            16
        );
        check_packed("k", &params, &[0; 16]).unwrap();
        let e = check_packed("k", &params, &[0; 12])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("12 bytes of packed parameters given, the kernel declares 16"),
            "{e}"
        );
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
