//! frugal-runtime: devices (CPU, CUDA through cudarc, the emulated GPU), buffers,
//! streams and events ([`stream`]), graph capture ([`graph`]), the contract of
//! collectives on device memory ([`collective`]),
//! kernel launch, the statically planned memory arena, NVTX, and device facts.
//!
//! A walkthrough on the emulated GPU (the same code runs on `cuda`): plan the
//! arena, open the device, allocate, copy, launch a shipped kernel, read back.
//!
//! ```
//! use frugal_runtime::arena::{plan, BufferRequest, Category};
//! use frugal_runtime::device::{Device, DeviceSpec};
//! use frugal_runtime::launch::{dims_1d, Arg};
//!
//! # fn main() -> Result<(), frugal_runtime::RuntimeError> {
//! let p = plan(&[BufferRequest::new("x", Category::Activations, 4 * 1000, 0, 1)])?;
//! let dev = Device::open(DeviceSpec::Emu)?;
//! let arena = dev.alloc_arena(p)?; // refuses (before allocating) a plan that does not fit
//! let x = arena.view::<f32>("x")?;
//! let dims = dims_1d(x.len as u64, 256, 4, 64);
//! dev.launch("fill_f32", &dims, &[x.into(), Arg::U64(x.len as u64), Arg::F32(0.5)])?;
//! let mut host = vec![0f32; x.len];
//! arena.read("x", &mut host)?;
//! assert!(host.iter().all(|&v| v == 0.5));
//! dev.synchronize()?;
//! # Ok(())
//! # }
//! ```

pub mod arena;
pub mod buffer;
pub mod collective;
pub mod device;
pub mod dylib;
pub mod error;
pub mod facts;
pub mod graph;
pub mod host;
pub mod launch;
pub mod modules;
pub mod nvtx;
pub mod profile;
pub mod roofline;
pub mod stream;
pub mod tensor_map;

pub use error::RuntimeError;
