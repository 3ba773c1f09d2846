//! The instruction families. Each file holds one family's decoders (`decode_*`, called
//! from the opcode table in `decode`) and its executors (`Cta::exec_*`, called from the
//! operation table in `exec`), next to the arithmetic they share. Families depend on the
//! instruction representation (`inst`), the shared types (`types`, `rounding`) and the
//! interpreter's warp state (`exec`, `access`), not on each other, except that `redux`
//! (sync) steps with the integer family's `int_bin`.

pub(super) mod bulk;
pub(super) mod bulk_tensor;
pub(super) mod control;
pub(super) mod convert;
pub(super) mod float;
pub(super) mod integer;
pub(super) mod integer_ext;
pub(super) mod mbarrier;
pub(super) mod memory;
pub(super) mod stmatrix;
pub(super) mod sync;
pub(super) mod tensor;
pub(super) mod tensor_core;
pub(super) mod wgmma;
pub(super) mod wgmma_desc;
pub(super) mod wgmma_exec;
pub(super) mod wgmma_reads;
