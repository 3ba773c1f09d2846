//! Typed launchers for the element-wise and reduction kernels of a LLaMA training step
//! (everything but matmul and FlashAttention).
//!
//! Each op file (`rmsnorm`, `swiglu`, ...) describes its kernels: the parameter list
//! ([`KernelSpec`]), a function per kernel that takes the buffers (device addresses) and
//! shapes, checks the kernel's shape and alignment assumptions (returning
//! [`PtxError::BadLaunch`] naming what to change), computes the [`LaunchDims`] and packs
//! the parameter buffer. The result, a [`Launch`], is backend-neutral: the CUDA path passes
//! `params` as `CU_LAUNCH_PARAM_BUFFER_POINTER`, the emulator path passes it to
//! [`crate::emu::launch`] (see [`Launch::run_emu`]).
//!
//! Parameters are packed by [`crate::launch::pack`] from each spec with ptxas's layout rule
//! ([`crate::launch::layout`]); a test checks every spec against the
//! offsets the emulator's parser derives from the shipped text, so the two cannot drift.

pub mod adamw;
pub mod cross_entropy;
pub mod embedding;
pub mod rmsnorm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

use crate::emu::{Checks, DeviceMemory, LaunchDims, LaunchStats, Module};
use crate::error::PtxError;
use crate::launch::{self, Arg, Param, ParamKind};

/// Threads per block of the row-wise kernels (one block per row).
pub const ROW_BLOCK: u32 = 256;
/// Threads per block of the flat element-wise kernels.
pub const FLAT_BLOCK: u32 = 256;
/// Upper bound on blocks of a grid-stride kernel: enough to fill any current GPU
/// (132 SMs x 16 blocks); more only adds scheduling overhead.
pub const MAX_FLAT_GRID: u64 = 2048;

/// A kernel's identity and parameter list, in declaration order.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// The catalogue module holding the kernel.
    pub module: &'static str,
    /// The `.entry` name.
    pub kernel: &'static str,
    /// Parameter names (without the `<kernel>_param_` prefix) and types.
    pub params: &'static [(&'static str, ParamKind)],
}

impl KernelSpec {
    /// Byte offset of each parameter in the packed buffer, and the buffer's size.
    pub fn offsets(&self) -> (Vec<usize>, usize) {
        let laid = launch::layout(
            self.params
                .iter()
                .map(|&(name, kind)| (name, kind.size(), kind.size())),
            launch::DEFAULT_SM,
        );
        let end = launch::declared_size(&laid);
        (laid.into_iter().map(|p| p.offset).collect(), end)
    }

    /// Packs `args` (one per parameter, in order) into the parameter buffer.
    ///
    /// # Errors
    /// `BadLaunch` if the count or a type differs from the spec (a launcher bug).
    pub fn pack(&self, args: &[Arg]) -> Result<Vec<u8>, PtxError> {
        let params = self
            .params
            .iter()
            .map(|&(name, kind)| Param::typed(name, kind));
        launch::pack(self.kernel, params, args)
    }

    /// A `BadLaunch` error for this kernel.
    pub fn bad(&self, reason: impl Into<String>) -> PtxError {
        PtxError::BadLaunch {
            kernel: self.kernel.to_string(),
            reason: reason.into(),
        }
    }

    /// A [`Launch`] of this kernel with `dims` and `args`.
    ///
    /// # Errors
    /// As [`KernelSpec::pack`].
    pub fn launch(&self, dims: LaunchDims, args: &[Arg]) -> Result<Launch, PtxError> {
        Ok(Launch {
            module: self.module,
            kernel: self.kernel,
            dims,
            params: self.pack(args)?,
        })
    }
}

/// One ready-to-run kernel launch: module and kernel names, shape, packed parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// Catalogue module name.
    pub module: &'static str,
    /// `.entry` name.
    pub kernel: &'static str,
    /// Grid, block and dynamic shared memory.
    pub dims: LaunchDims,
    /// The packed parameter buffer (packed once, by [`crate::launch::pack`]; every backend
    /// launches these bytes).
    pub params: Vec<u8>,
}

impl Launch {
    /// Runs the launch under the emulator; `module` must be the parse of the catalogue
    /// module named by [`Launch::module`].
    ///
    /// # Errors
    /// Whatever [`crate::emu::launch`] reports.
    pub fn run_emu(
        &self,
        module: &Module,
        mem: &mut DeviceMemory,
        checks: &Checks,
    ) -> Result<LaunchStats, PtxError> {
        crate::emu::launch(module, self.kernel, &self.dims, &self.params, mem, checks)
    }
}

/// Every kernel spec of this family, for the consistency test and reports.
pub fn specs() -> Vec<&'static KernelSpec> {
    let mut all: Vec<&'static KernelSpec> = Vec::new();
    all.extend(rmsnorm::SPECS);
    all.extend(swiglu::SPECS);
    all.extend(rope::SPECS);
    all.extend(embedding::SPECS);
    all.extend(cross_entropy::SPECS);
    all.extend(adamw::SPECS);
    all.extend(softmax::SPECS);
    all
}

/// A 1-D launch of `blocks` blocks of `threads`.
pub(crate) fn dims_1d(blocks: u32, threads: u32) -> LaunchDims {
    LaunchDims {
        grid: [blocks, 1, 1],
        block: [threads, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

/// Grid size for a grid-stride loop over `items` work items of `FLAT_BLOCK` threads.
pub(crate) fn flat_grid(items: u64) -> u32 {
    // Bounded by MAX_FLAT_GRID, so the cast cannot truncate.
    items
        .div_ceil(u64::from(FLAT_BLOCK))
        .clamp(1, MAX_FLAT_GRID) as u32
}

/// `BadLaunch` unless `addr` is a multiple of `align` (`what` names the buffer).
pub(crate) fn check_aligned(
    spec: &KernelSpec,
    what: &str,
    addr: u64,
    align: u64,
) -> Result<(), PtxError> {
    if !addr.is_multiple_of(align) {
        return Err(spec.bad(format!(
            "{what} at {addr:#x} is not {align}-byte aligned; allocate it from the arena \
             (256-byte aligned)"
        )));
    }
    Ok(())
}

/// `BadLaunch` unless `value` fits in a u32 kernel parameter (`what` names it).
pub(crate) fn to_u32(spec: &KernelSpec, what: &str, value: usize) -> Result<u32, PtxError> {
    u32::try_from(value).map_err(|_| {
        spec.bad(format!(
            "{what} = {value} does not fit the kernel's 32-bit index"
        ))
    })
}

/// `BadLaunch` unless `n` is positive.
pub(crate) fn check_positive(spec: &KernelSpec, what: &str, n: usize) -> Result<(), PtxError> {
    if n == 0 {
        return Err(spec.bad(format!("{what} must be positive")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_match_the_shipped_text() {
        crate::testing::assert_specs_match_shipped(&specs());
    }

    #[test]
    fn pack_refuses_wrong_arguments() {
        let spec = &swiglu::SWIGLU_FWD;
        assert!(spec.pack(&[Arg::U32(1)]).is_err());
        let mut args = vec![Arg::Ptr(0); spec.params.len()];
        assert!(
            spec.pack(&args).is_err(),
            "the last parameter is a count, not a pointer"
        );
        if let Some(last) = args.last_mut() {
            *last = Arg::U64(7);
        }
        assert!(spec.pack(&args).is_ok());
    }
}
