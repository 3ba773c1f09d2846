//! The harness every `kernels_<op>` test shares: deterministic inputs, bf16
//! bit helpers, NaN poison patterns, and upload / launch / download through
//! the emulator. (Each test binary uses a different subset.)
#![allow(dead_code)]

use frugal_ptx::catalogue;
use frugal_ptx::emu::{Checks, DeviceMemory, Module};
use frugal_ptx::kernels::Launch;

/// splitmix64: small, deterministic test inputs.
pub struct Gen(pub u64);
impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` bf16 values uniform in [-amp, amp], as bits.
    pub fn bf16s(&mut self, n: usize, amp: f32) -> Vec<u16> {
        (0..n).map(|_| bf16_bits(self.unit() * amp)).collect()
    }
}

pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

pub fn bf(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// The bf16 NaN pattern written into outputs before a launch: an element the kernel
/// does not write stays NaN and fails every comparison.
pub const POISON_BF16: u16 = 0xFFFF;
/// The f32 NaN pattern, as above.
pub const POISON_F32: u32 = 0xFFFF_FFFF;

pub fn module(name: &str) -> Module {
    let m = catalogue::module(name).unwrap_or_else(|| panic!("no module {name}"));
    Module::parse(m.text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn upload<T: bytemuck::Pod>(mem: &mut DeviceMemory, data: &[T], label: &str) -> u64 {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let addr = mem.alloc(bytes.len().max(1), label);
    mem.write(addr, bytes).unwrap_or_else(|e| panic!("{e}"));
    addr
}

pub fn download<T: bytemuck::Pod + Default + Clone>(
    mem: &DeviceMemory,
    addr: u64,
    n: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); n];
    mem.read(addr, bytemuck::cast_slice_mut(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

pub fn run(launch: &Launch, m: &Module, mem: &mut DeviceMemory) {
    launch
        .run_emu(m, mem, &Checks::default())
        .unwrap_or_else(|e| panic!("{}: {e}", launch.kernel));
}
