//! frugal-ptx

pub mod catalogue;
pub mod emu;
pub mod error;
pub mod flash;
pub mod kernels;
pub mod matmul;
pub mod ptxas;
