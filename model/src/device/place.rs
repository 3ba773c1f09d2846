//! Places in the step's buffers and how operations turn them into addresses: the types
//! the step program ([`super::program`]) and the vanilla attention ([`super::vanilla`])
//! both build launches with, kept here so that neither module depends on the other's.

use frugal_ptx::error::PtxError;
use frugal_ptx::kernels::Launch;
use frugal_ptx::matmul::wgmma::EncodeTensorMap;

/// A place in a named buffer: the buffer's index in the program's declarations and a
/// byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub buf: usize,
    pub byte: u64,
}

impl At {
    /// The start of buffer `buf`.
    pub fn start(buf: usize) -> At {
        At { buf, byte: 0 }
    }
}

/// Turns symbolic places into device addresses.
pub(crate) type Resolve<'a> = &'a dyn Fn(At) -> u64;

/// Builds the launches of one operation from the addresses of its buffers, encoding the
/// tensor maps of its TMA kernels (sm_90a) for the device that will run them through the
/// encoder (the runtime's `encode_tensor_map`): the arena's addresses are fixed once it is
/// placed, so each map is encoded once, when the launches are built.
pub(crate) type Emit = Box<dyn Fn(Resolve, &mut EncodeTensorMap) -> Result<Vec<Launch>, PtxError>>;
