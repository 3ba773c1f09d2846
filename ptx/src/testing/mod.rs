//! Test support shared by the kernel tests of every backend (not part of the API).
//!
//! Each kernel family has a `case` function here that draws inputs from a seed, poisons the
//! outputs with NaN, launches the family's kernels through a [`Runner`] and checks every
//! output element against an f64 (or, where the kernel promises it, bit-exact f32)
//! reference with the tolerance reasoned next to it. A [`Runner`] is where the launches go:
//! [`EmuRunner`] runs them in this crate's emulator (`ptx/tests/kernels_*.rs`), the
//! runtime's device runner through `Device::run` on `emu` or a real GPU
//! (`runtime/tests/device_kernels.rs`), so the same checks cover both.
//!
//! Tolerances hold on real hardware too: the emulator rounds `.approx` operations
//! (`ex2`, `lg2`, `rcp`) correctly, a GPU within a few ulp (PTX ISA: `ex2.approx.f32` about
//! 2^-22 relative, `lg2.approx.f32` about 2^-22 absolute, `rcp.approx.f32` 1 ulp), and
//! ptxas may contract a `mul.f32` and `add.f32` without rounding modifiers into one `fma`
//! (one rounding less). Every tolerance below that involves such an operation already
//! allows 2^-22 relative per operation or more; the bit-exact checks are only made where
//! the kernel uses IEEE-rounded `.rn` operations alone (AdamW, the embedding gradient, the
//! fused residual add, the casts, fill and scale), which every device computes identically.
//!
//! `mma.sync` numerics: emulator launches take their `Checks` from `emu_checks`, whose
//! `MmaNumerics` is `FRUGAL_EMU_MMA`'s (`MmaNumerics::ENV`; exact when unset), or, inside
//! `for_each_mma`, the pass's. The tests of the kernels that use tensor cores (matmul, flash
//! forward and backward, vanilla attention) run their cases through `for_each_mma`, so a
//! normal test run checks every such case with the emulator's exact accumulation and with
//! the A100's and the H100's truncating ones, against the same tolerances: no tolerance had
//! to change. Matmul's f32 allowance covers the truncation's worst case (see
//! `matmul::expected`); in attention, the bf16 roundings (2^-8 of the mass) dwarf any f32
//! accumulation error, and the measured errors agree to three digits in both passes.
//!
//! Test code: a failed check panics with the element, the values and the tolerance.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod flash;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod util;

use std::cell::Cell;
use std::collections::HashMap;

use crate::catalogue;
use crate::emu::{Checks, DeviceMemory, MmaNumerics, Module};
use crate::kernels::Launch;

thread_local! {
    /// The numerics of the [`for_each_mma`] pass running on this thread (each test has its
    /// own thread), if any.
    static MMA_PASS: Cell<Option<MmaNumerics>> = const { Cell::new(None) };
}

/// The numerics `FRUGAL_EMU_MMA` selects (panics, naming the variable, on an unknown value:
/// a typo must not quietly test the default).
pub fn env_mma() -> MmaNumerics {
    MmaNumerics::from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// The checks kernel tests launch the emulator with: every sanitizer check on, and the
/// `mma.sync` numerics of the current [`for_each_mma`] pass, or else [`env_mma`]'s.
pub fn emu_checks() -> Checks {
    Checks {
        mma: MMA_PASS.with(Cell::get).unwrap_or_else(env_mma),
        ..Checks::default()
    }
}

/// Runs `f` once per [`MmaNumerics`], `FRUGAL_EMU_MMA`'s first, with [`emu_checks`] (and so
/// [`EmuRunner`]) giving that pass's numerics; a panic inside says which pass failed.
pub fn for_each_mma(mut f: impl FnMut(MmaNumerics)) {
    let first = env_mma();
    let rest = MmaNumerics::ALL.into_iter().filter(|&m| m != first);
    for mma in std::iter::once(first).chain(rest) {
        /// Restores the previous pass, and names the failing one while unwinding.
        struct Pass(Option<MmaNumerics>, MmaNumerics);
        impl Drop for Pass {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("(in the {} mma numerics pass)", self.1.name());
                }
                MMA_PASS.with(|p| p.set(self.0));
            }
        }
        let _pass = Pass(MMA_PASS.with(|p| p.replace(Some(mma))), mma);
        println!("({} mma numerics)", mma.name());
        f(mma);
    }
}

/// splitmix64: small, deterministic test inputs (no rand crate).
#[derive(Clone, Debug)]
pub struct Gen(pub u64);

impl Gen {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), 24 random bits.
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform in [-1, 1), 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    /// `n` bf16 values uniform in [-amp, amp], as bits.
    pub fn bf16s(&mut self, n: usize, amp: f32) -> Vec<u16> {
        (0..n).map(|_| bf16_bits(self.unit() * amp)).collect()
    }

    /// `n` bf16 values uniform in [-amp, amp] from 53-bit draws ([`Gen::unit_f64`]) rounded
    /// once to bf16, as bits (the attention tests' inputs).
    pub fn bf16s_f64(&mut self, n: usize, amp: f64) -> Vec<u16> {
        (0..n)
            .map(|_| half::bf16::from_f64(self.unit_f64() * amp).to_bits())
            .collect()
    }
}

/// `x` rounded to bf16 (nearest even), as bits.
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The value of bf16 bits, exactly.
pub fn bf(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// The bf16 NaN pattern written into outputs before a launch: an element the kernel
/// does not write stays NaN and fails every comparison.
pub const POISON_BF16: u16 = 0xFFFF;
/// The f32 NaN pattern, as above.
pub const POISON_F32: u32 = 0xFFFF_FFFF;

/// Where test launches run: device memory plus a way to launch a [`Launch`].
///
/// Buffers live as long as the runner. Addresses may point inside a buffer (tests offset
/// pointers to take a kernel's unaligned path); reads and writes at such addresses must work.
pub trait Runner {
    /// A new buffer holding `bytes` (at least one byte is allocated), labelled `label` (the
    /// label appears in sanitizer reports); returns its device address, 256-byte aligned.
    fn upload_bytes(&mut self, bytes: &[u8], label: &str) -> u64;
    /// Copies `out.len()` bytes from device address `addr` (after every launch so far).
    fn download_bytes(&mut self, addr: u64, out: &mut [u8]);
    /// Runs `launch` (panics with the kernel's name and the error on failure).
    fn run(&mut self, launch: &Launch);
    /// The SM version matmul dispatch plans for (80 on the emulator, whose `mma.sync`
    /// matches sm_80; the device's own on a GPU).
    fn arch(&self) -> u32;
    /// What runs the launches, for messages ("emu", the GPU's name).
    fn name(&self) -> String;
}

/// Uploads `data` into a new buffer; returns its address.
pub fn upload<T: bytemuck::Pod>(r: &mut dyn Runner, data: &[T], label: &str) -> u64 {
    r.upload_bytes(bytemuck::cast_slice(data), label)
}

/// Reads `n` elements of `T` from `addr`.
pub fn download<T: bytemuck::Pod>(r: &mut dyn Runner, addr: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::zeroed(); n];
    r.download_bytes(addr, bytemuck::cast_slice_mut(&mut out));
    out
}

/// Copies `data` into a new buffer of the emulated `mem` (at least one byte); returns its
/// address. For tests that drive [`DeviceMemory`] directly rather than through a [`Runner`].
pub fn upload_mem<T: bytemuck::Pod>(mem: &mut DeviceMemory, data: &[T], label: &str) -> u64 {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let addr = mem.alloc(bytes.len().max(1), label);
    mem.write(addr, bytes)
        .unwrap_or_else(|e| panic!("upload '{label}': {e}"));
    addr
}

/// Reads `n` elements of `T` from `addr` of the emulated `mem`.
pub fn download_mem<T: bytemuck::Pod>(mem: &DeviceMemory, addr: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::zeroed(); n];
    mem.read(addr, bytemuck::cast_slice_mut(&mut out))
        .unwrap_or_else(|e| panic!("download at {addr:#x}: {e}"));
    out
}

/// Runs `launch` (a launcher's result; a launcher error panics with its message).
pub fn run(r: &mut dyn Runner, launch: Result<Launch, crate::error::PtxError>) {
    match launch {
        Ok(l) => r.run(&l),
        Err(e) => panic!("launcher refused ({}): {e}", r.name()),
    }
}

/// The emulator as a [`Runner`]: launches with [`emu_checks`] (every sanitizer check on),
/// modules parsed once each.
pub struct EmuRunner {
    /// The emulated device memory.
    pub mem: DeviceMemory,
    modules: HashMap<&'static str, Module>,
}

impl Default for EmuRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuRunner {
    /// An empty emulated device.
    pub fn new() -> EmuRunner {
        EmuRunner {
            mem: DeviceMemory::new(),
            modules: HashMap::new(),
        }
    }
}

impl Runner for EmuRunner {
    fn upload_bytes(&mut self, bytes: &[u8], label: &str) -> u64 {
        upload_mem(&mut self.mem, bytes, label)
    }

    fn download_bytes(&mut self, addr: u64, out: &mut [u8]) {
        self.mem
            .read(addr, out)
            .unwrap_or_else(|e| panic!("download at {addr:#x}: {e}"));
    }

    fn run(&mut self, launch: &Launch) {
        let module = self.modules.entry(launch.module).or_insert_with(|| {
            let m = catalogue::module(launch.module)
                .unwrap_or_else(|| panic!("no catalogue module {}", launch.module));
            Module::parse(m.text).unwrap_or_else(|e| panic!("{}: {e}", launch.module))
        });
        launch
            .run_emu(module, &mut self.mem, &emu_checks())
            .unwrap_or_else(|e| panic!("{}: {e}", launch.kernel));
    }

    fn arch(&self) -> u32 {
        80
    }

    fn name(&self) -> String {
        format!("emu ({} mma)", emu_checks().mma.name())
    }
}

/// Asserts that each spec's parameters (names, sizes, offsets) are the ones the shipped PTX
/// text of its catalogue module declares, so launch packing and kernel cannot drift.
#[track_caller]
pub fn assert_specs_match_shipped(specs: &[&crate::kernels::KernelSpec]) {
    for spec in specs {
        let m = catalogue::module(spec.module)
            .unwrap_or_else(|| panic!("no catalogue module {}", spec.module));
        let parsed = Module::parse(m.text).unwrap_or_else(|e| panic!("{}: {e}", spec.module));
        let params = parsed.params(spec.kernel).unwrap_or_else(|e| panic!("{e}"));
        let (offsets, _) = spec.offsets();
        assert_eq!(params.len(), spec.params.len(), "{}", spec.kernel);
        for ((p, &(name, kind)), &at) in params.iter().zip(spec.params).zip(&offsets) {
            assert_eq!(
                p.name,
                format!("{}_param_{name}", spec.kernel),
                "{}",
                spec.kernel
            );
            assert_eq!(p.size, kind.size(), "{}::{name}", spec.kernel);
            assert_eq!(p.offset, at, "{}::{name}", spec.kernel);
        }
    }
}

/// Asserts `|got - want| <= tol` (a NaN, such as poison left in place, fails).
#[track_caller]
pub fn assert_close(what: impl std::fmt::Display, got: f64, want: f64, tol: f64) {
    let err = (got - want).abs();
    assert!(
        err <= tol,
        "{what}: got {got}, want {want} (err {err:.3e}, tol {tol:.3e})"
    );
}
