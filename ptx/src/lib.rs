//! frugal-ptx: the PTX kernels frugal ships, as text, with the one table that
//! knows them ([`catalogue`]), their typed launchers ([`kernels`], [`matmul`],
//! [`flash`], [`vanilla`]), the `ptxas` harness ([`ptxas`]) and the PTX emulator ([`emu`])
//! that runs the exact shipped text on the CPU, with bounds, race, alignment
//! and uninitialised-register checks, so every kernel is tested without a GPU.
//!
//! # Where the PTX lives
//!
//! Hand-written modules are `ptx/kernels/<name>.ptx`. Modules written by the Rust emitters
//! (flash attention, every matmul) are `ptx/kernels/generated/<name>.ptx`, listed by
//! [`generated::all`] and written with the shared text builder `ptx_text`; never edit those
//! files by hand. After changing an emitter, regenerate every generated module with
//!
//! ```text
//! FRUGAL_BLESS_PTX=1 cargo test --profile opt-test -p frugal-ptx --test generated
//! ```
//!
//! and review the diff; without the variable that test fails on any file that differs from
//! its emitter, is missing, or is no longer emitted.
//!
//! Walkthrough: look a module up, parse it, allocate emulated device memory,
//! pack the parameters by the kernel's own declaration ([`launch::pack`], the one
//! packer every launch path uses), launch, read back.
//!
//! ```
//! use frugal_ptx::catalogue;
//! use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
//! use frugal_ptx::launch::{pack, Arg, Param};
//!
//! let util = catalogue::module("util").unwrap();
//! let module = Module::parse(util.text).unwrap();
//! let mut mem = DeviceMemory::new();
//! let n = 1000u64;
//! let buf = mem.alloc(4 * n as usize, "buf");
//!
//! // fill_f32(ptr, n, value): checked against, and placed at, the offsets the PTX declares.
//! let declared = module.params("fill_f32").unwrap();
//! let args = [Arg::Ptr(buf), Arg::U64(n), Arg::F32(1.5)];
//! let params = pack("fill_f32", declared.iter().map(Param::declared), &args).unwrap();
//!
//! let dims = LaunchDims { grid: [2, 1, 1], block: [128, 1, 1], dynamic_shared_bytes: 0 };
//! launch(&module, "fill_f32", &dims, &params, &mut mem, &Checks::default()).unwrap();
//! let mut last = [0u8; 4];
//! mem.read(buf + 4 * (n - 1), &mut last).unwrap();
//! assert_eq!(f32::from_le_bytes(last), 1.5);
//! ```

pub mod catalogue;
pub mod emu;
pub mod error;
pub mod flash;
pub mod generated;
pub mod kernels;
pub mod launch;
pub mod matmul;
pub mod occupancy;
mod ptx_text;
pub mod ptxas;
pub mod resources;
pub mod tensor_map;
/// Kernel-test support shared by this crate's tests and the runtime's device tests:
/// per-family cases over a [`testing::Runner`] (the emulator here, any device there).
#[doc(hidden)]
pub mod testing;
pub mod vanilla;
