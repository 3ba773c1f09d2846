//! The PTX emulator: runs the PTX text the project ships on the CPU, with sanitizer checks.
//!
//! Pipeline: [`Module::parse`] lexes and parses the text (`lex`, `parse`), then decodes each
//! `.entry` once into a compact instruction list with operands resolved to register
//! indices (`decode`, into the representation of `inst`); [`launch`] interprets that list
//! (`exec`) over host memory ([`DeviceMemory`]); [`launch_profiled`] also counts what
//! Nsight Compute would (requests, sectors, wavefronts, instructions by class).
//!
//! # Where the code for an instruction is
//!
//! Each instruction family's decoding and execution sit together in one file of `ops/`:
//!
//! | Instructions | File |
//! |---|---|
//! | `add` `sub` `mul` `mad` `min` `max` `div` `rem` `and` `or` `xor` `shl` `shr` `abs` `neg` `not` `cnot` `popc` `clz` `brev` `prmt` (every mode) `lop3` `bfe` `bfi` on integers | `ops/integer.rs` |
//! | `mul24` `mad24` `shf` `bfind` `bmsk` `dp4a` `dp2a`, and the carry chains `add.cc` `addc` `sub.cc` `subc` `mad.cc` `madc` | `ops/integer_ext.rs` |
//! | `add` `sub` `mul` `div` `min` `max` `copysign` `fma`/`mad` `abs` `neg` `sqrt` `rsqrt` `rcp` `ex2` `lg2` `sin` `cos` `tanh` on floats | `ops/float.rs` |
//! | `mov`, `cvt` | `ops/convert.rs` |
//! | `ld` `ldu` `st` `cvta` `atom` `red` `cp.async` (and its commit/wait) `prefetch` | `ops/memory.rs` |
//! | `bar`/`barrier` (`.sync`, `.arrive`, thread counts) `bar.warp.sync` `membar`/`fence` `shfl` `vote` `activemask` `redux` `elect` `setmaxnreg` | `ops/sync.rs` |
//! | `mbarrier` (all operations) and the CTA's asynchronous state | `ops/mbarrier.rs` |
//! | `cp.async.bulk` (and `.prefetch`, its commit/wait), `fence.proxy.async` | `ops/bulk.rs` |
//! | `cp.async.bulk.tensor` (tensor operand, map lookup, box walk) | `ops/bulk_tensor.rs` |
//! | `mma` `ldmatrix` | `ops/tensor.rs` |
//! | `stmatrix` | `ops/stmatrix.rs` |
//! | `wgmma.mma_async` `wgmma.fence` `wgmma.commit_group` `wgmma.wait_group` | `ops/wgmma.rs` (decoding, arithmetic), `ops/wgmma_exec.rs` (the warpgroup), `ops/wgmma_desc.rs` (matrix descriptors), `ops/wgmma_reads.rs` (the operands' asynchronous reads) |
//! | `setp` `set` `selp` `bra` `ret`/`exit` `trap` | `ops/control.rs` |
//!
//! An arithmetic opcode (`add`, `mad`, `abs`, ...) names an integer or a float operation by
//! its type; the opcode table in `decode` sends it to the family accordingly. `bra`,
//! `exit`, `bar.sync`/`bar.arrive` and the mbarrier waits are decoded in their family but
//! run by the scheduler in `exec`, as is `wgmma.mma_async`, which a warp waits at until its
//! warpgroup's four warps arrive.
//!
//! Around the families:
//!
//! | What | File |
//! |---|---|
//! | tokens, source positions, the `Parse` error | `lex.rs` |
//! | syntax tree of the text | `ast.rs` |
//! | parsing: modules, blocks and their scopes, instructions and operands | `parse.rs` |
//! | declarations: kernel and function headers, variables, initialised `.global`/`.const` data | `parse_decl.rs` |
//! | `.func` and `call`: each call replaced by a renamed copy of the function (inlining) | `calls.rs` |
//! | opcode table, parameters (laid out by [`crate::launch::layout`]), variables, module data, labels | `decode.rs` |
//! | reading modifiers and operands (`Dec`, `Mods`; families use them, not `decode`) | `operands.rs` |
//! | the decoded instruction (`Op`, one struct per operation) | `inst.rs` |
//! | scalar types, float formats, rounding modes | `types.rs` |
//! | correctly rounded float results, `.ftz`/`.sat`, NaN rules | `rounding.rs` |
//! | CTAs, the scheduler, the operation table | `exec.rs` |
//! | a warp's registers, per-lane PCs, min-PC regrouping | `warp.rs` |
//! | sanitized loads and stores (bounds, alignment, races) | `access.rs` |
//! | global memory ([`DeviceMemory`]) | `memory.rs` |
//! | shared-memory swizzle patterns of TMA and wgmma ([`swizzle::Swizzle`]) | `swizzle.rs` |
//! | hardware counters of a launch ([`Profiling`], [`Counters`], [`launch_profiled`]) | `counters/` |
//!
//! Execution model: CTAs run one after another; inside a CTA, warps of 32 threads run in
//! lockstep with an active mask. Divergence uses per-thread program counters and always
//! runs the group of threads with the lowest PC ("min-PC" scheduling): for the structured
//! code the project emits (forward branches for if/else, backward branches for loops)
//! a group that is ahead waits at its higher PC until the others catch up, which is
//! exactly reconvergence at the immediate post-dominator, without needing a CFG. Each warp
//! runs until it reaches a barrier, fails an mbarrier wait, reaches a `wgmma.mma_async` or
//! exits. When no warp can run, the scheduler, in this order: issues the `wgmma.mma_async`
//! of each warpgroup whose four warps all wait at it; wakes the warps whose mbarrier has
//! moved to another phase;
//! opens the named barriers whose threads have all arrived (`bar.sync`, and `bar.arrive`
//! counts); lands the bulk copies in flight (whose transaction bytes may complete
//! phases); wakes the parked warps once, in case one polled without spinning. A warp
//! reaching `bar.sync` with only part of its live lanes is an error, as is a state from
//! which nothing can progress (deadlock: the report names each warp's barrier, and for an
//! mbarrier its address, the phase waited for and its counts).
//!
//! Hopper's asynchronous machinery (sm_90): `mbarrier` phases and transaction counts as
//! the ISA defines them (`ops/mbarrier.rs`); bulk and tensor copies (TMA) that read their
//! source when issued and land only when the scheduler completes them, with tensor maps
//! in frugal's encoding ([`crate::tensor_map`]) and the swizzle of [`swizzle`]; warp
//! specialisation (a producer warp parked on an mbarrier while consumer warps run;
//! `setmaxnreg` checked but without a register budget). Clusters have one CTA:
//! `.shared::cluster` addresses are the CTA's own shared memory and `.reqnctapercluster`
//! above 1 is refused. The race check follows happens-before at warp granularity: each
//! warp keeps, per writer warp, the time up to which it has acquired that warp's writes
//! (a vector clock). A named barrier (`bar.sync id, n`) gives the warps it releases the
//! writes its participants made before arriving (`bar.arrive` included); an mbarrier
//! phase carries each warp's last arrive (and the landing of the copies it issued) to the
//! warps whose wait sees the phase complete, each release carrying what the releasing
//! warp had itself acquired (orderings chain through third warps); a CTA-wide barrier
//! orders everything. A thread that only arrives acquires nothing.
//!
//! Memory: global addresses are the ones [`DeviceMemory::alloc`] hands out; generic
//! addresses map a window to the CTA's shared memory (`cvta.shared`) and another to the
//! thread's local memory. A module's `.global` and `.const` variables are one block of
//! device memory below the allocations, placed with its initial values by the module's
//! first launch on a [`DeviceMemory`] and kept across launches (as a loaded module's
//! variables are on a GPU); `.const` data is read as global memory there, so a store to
//! it through a generic pointer is not caught. A call's `.param` arguments and return
//! values are per-thread local memory. `cp.async` reads its source when issued and writes shared memory
//! when the thread's `cp.async.wait_group`/`wait_all` completes the group, so a kernel that
//! reads too early sees the old contents (and the race check reports it).
//!
//! Numerics: f32/f16/bf16 results are correctly rounded in every rounding mode PTX names
//! (see `rounding`); NaN results are the canonical NaN. `.approx` functions (ex2, lg2, rsqrt,
//! sin, cos, tanh, rcp/sqrt.approx) are computed to the correctly rounded value, which is
//! within the hardware's documented error. f64 `fma` with a directed rounding mode rounds
//! to nearest. Integer division by zero (undefined in PTX) returns all ones. `atom`/`red`
//! `.add.f32` flush subnormals on global memory and keep them on shared memory, as the ISA
//! says the hardware does. `mma.sync` accumulates as [`Checks::mma`] says ([`MmaNumerics`]):
//! exactly rounded k-order additions, or the tensor cores' truncating fused sum.
//!
//! `wgmma.mma_async` (m64nNk16, N = 8..256 step 8, `.f32.bf16.bf16`, `.f32.f16.f16` and
//! `.f16.f16.f16`) is issued by the four warps of a warpgroup together: the product is
//! computed then and held pending until a `wgmma.wait_group` retires its group; touching its
//! accumulator or A registers before that, a missing `wgmma.fence`, a warp exiting with
//! wgmmas pending, or a warpgroup that does not issue it together is an error
//! (`PtxError::Wgmma`). Its shared operands count as read asynchronously until the wait: a
//! write into them before it, or not ordered after it, is a reported race
//! (`ops/wgmma_reads.rs`). It accumulates as `mma.sync` does under [`Checks::mma`], k = 16
//! per instruction.
//!
//! Accepted as compilers write it (nvcc, Triton; see `tests/emu_compiler_ptx.rs`):
//! `.section` debug blocks and `.file`/`.loc` (ignored), `.func` with `call` (inlined),
//! initialised `.global`/`.const` data with `ld.const`/`ld.global` of it, registers,
//! labels and `.param` variables re-declared in nested `{ }` blocks, vector operands
//! (`{%r1, %r2}`, `{ %r1 }` for a scalar, `.v2`/`.v4`, up to 128 elements), tensor
//! addresses `[map, {x, y}]`, `ldmatrix` with a generic address of shared memory, and
//! `.ptr .global .align N` parameters (N is the pointee's alignment).
//!
//! Not supported (a parse error that names the line; [`Module::unsupported_instructions`]
//! lists every such instruction of a text at once): `bar.red`, `barrier.cluster`
//! and the cluster instructions (`mapa`, `getctarank`); of the sm_90 asynchronous
//! instructions: clusters of more than one CTA (`.multicast::cluster`, distributed shared
//! memory, shared::cta→shared::cluster bulk copies), `cp.async.bulk.tensor` in im2col mode,
//! `cp.reduce.async.bulk`, tensor maps passed by parameter name (ptxas refuses that too:
//! take the address with `mov` + `cvta.param`), the Blackwell swizzle atoms, `stmatrix`
//! shapes other than m8n8.b16; `mma` shapes other than m16n8k16 row.col with f32
//! accumulators, `mma.sp`, `wmma`, `movmatrix`; textures and surfaces
//! (`tex`, `tld4`, `txq`, `suld`, `sust`, `sured`, `suq`, `istypep` and their
//! declarations); `.b128` values; packed (x2) comparisons; `sad`, `fns`, `szext`,
//! `slct`, `testp`, `isspacep`, `cvt.pack`, `match`, `nanosleep`, `brkpt`, `pmevent`,
//! `griddepcontrol`, `multimem`, `st.async`/`red.async`, `applypriority`, `discard`,
//! `createpolicy`, `tensormap`, `tcgen05`, `brx.idx`, `alloca`/`stacksave`/`stackrestore`
//! and the video instructions (`vadd`, `vabsdiff`, ...); recursion, calls of functions
//! declared without a body (`.extern .func`, e.g. `vprintf`), indirect calls
//! (`.callprototype`); `.extern .global`/`.const` variables and initialisers holding
//! addresses of variables (`generic(x)`); module-scope `.local` variables; sparse wgmma
//! (`.sp`) and wgmma on tf32, fp8 (e4m3/e5m2), integer and b1 inputs. Refused at run time:
//! wgmma descriptors with a base offset, or with unused bits set, or a swizzled tile not
//! aligned to its pattern's repeat (1024/512/256 bytes).
//!
//! # Examples
//! ```
//! use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
//! let ptx = r#"
//! .version 8.0
//! .target sm_80
//! .address_size 64
//! .visible .entry twice(.param .u64 out)
//! {
//!     .reg .b32 %r<3>;
//!     .reg .b64 %rd<4>;
//!     ld.param.u64 %rd1, [out];
//!     cvta.to.global.u64 %rd2, %rd1;
//!     mov.u32 %r1, %tid.x;
//!     shl.b32 %r2, %r1, 1;
//!     mul.wide.u32 %rd3, %r1, 4;
//!     add.s64 %rd3, %rd2, %rd3;
//!     st.global.u32 [%rd3], %r2;
//!     ret;
//! }
//! "#;
//! let module = Module::parse(ptx).unwrap();
//! let mut mem = DeviceMemory::new();
//! let out = mem.alloc(4 * 64, "out");
//! let dims = LaunchDims { grid: [1, 1, 1], block: [64, 1, 1], dynamic_shared_bytes: 0 };
//! launch(&module, "twice", &dims, &out.to_le_bytes(), &mut mem, &Checks::default()).unwrap();
//! let mut bytes = [0u8; 4];
//! mem.read(out + 4 * 10, &mut bytes).unwrap();
//! assert_eq!(u32::from_le_bytes(bytes), 20);
//! ```

// `warp` defines `lanes!`, which `exec` and the families use: it must come first.
#[macro_use]
mod warp;
mod access;
mod ast;
mod calls;
mod counters;
mod decode;
mod exec;
mod inst;
mod lex;
mod memory;
mod operands;
mod ops;
mod parse;
mod parse_decl;
mod rounding;
pub mod swizzle;
mod types;

pub use counters::{sample_grid, Counters, InstClass, Profiling};
pub use memory::DeviceMemory;

use crate::error::PtxError;

/// A parsed and decoded PTX module: its kernels (`.entry` functions), ready to launch.
pub struct Module {
    kernels: Vec<inst::Kernel>,
    /// The `.global`/`.const` variables, placed in device memory at the first launch.
    data: Option<decode::ModuleData>,
    /// The compute capability of the `.target` (sm_80 when there is none): the
    /// parameter layout of [`Module::params`] is this target's.
    sm: u32,
}

/// One kernel parameter's place in the packed parameter buffer.
///
/// Each parameter sits where ptxas puts it ([`crate::launch::layout`]: the previous end
/// rounded up so that its address in constant bank 0 is a multiple of its alignment);
/// this is the buffer the CUDA launch passes via `CU_LAUNCH_PARAM_BUFFER_POINTER`, and the
/// one [`launch`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// Parameter name as declared.
    pub name: String,
    /// Size in bytes.
    pub size: usize,
    /// Alignment in bytes: the parameter's own (`.param .align 64 .b8 t[128]`) or its
    /// type's, whichever is larger; never a pointer's pointee alignment
    /// (`.param .u64 .ptr .global .align 16 p` is aligned to 8).
    pub align: usize,
    /// Offset in the packed buffer.
    pub offset: usize,
}

/// Grid and block shape of a launch, and the bytes of dynamic (`extern`) shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// CTAs per dimension (`%nctaid`).
    pub grid: [u32; 3],
    /// Threads per CTA per dimension (`%ntid`).
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory after the static shared variables.
    pub dynamic_shared_bytes: u32,
}

/// Which sanitizer checks run during a launch. `Default`: all on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Bounds of global (against live allocations), shared, local and param accesses.
    pub bounds: bool,
    /// Shared-memory reads of data another thread wrote since the last barrier, and of
    /// bytes a not-yet-waited `cp.async` will write.
    pub races: bool,
    /// Addresses that are not a multiple of the access size.
    pub alignment: bool,
    /// Reads of registers the thread never wrote.
    pub uninit_regs: bool,
    /// How `mma.sync` adds its products (not a check, but a property of the run that tests
    /// choose the same way): [`MmaNumerics::Exact`] unless set.
    pub mma: MmaNumerics,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            bounds: true,
            races: true,
            alignment: true,
            uninit_regs: true,
            mma: MmaNumerics::Exact,
        }
    }
}

impl Checks {
    /// Every check off (fastest; out-of-bounds accesses are still refused, as errors
    /// without the sanitizer's detail being guaranteed). `mma` stays [`MmaNumerics::Exact`].
    pub fn none() -> Self {
        Checks {
            bounds: false,
            races: false,
            alignment: false,
            uninit_regs: false,
            mma: MmaNumerics::Exact,
        }
    }
}

/// How the emulator's `mma.sync` (f32 accumulation) adds its products and the C value.
///
/// The PTX ISA leaves the order and the intermediate precision of the accumulation
/// unspecified, and the tensor cores do not round like a chain of IEEE additions. Both
/// modes give a canonical NaN (0x7FFF_FFFF) for a NaN result, as the hardware does (the
/// MMA-Sim model, below).
///
/// Select it for a whole run with the environment variable [`MmaNumerics::ENV`]
/// (`FRUGAL_EMU_MMA=hardware`): the runtime's emulated device and the kernel test harness
/// (`frugal_ptx::testing`) read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MmaNumerics {
    /// Each output adds its 16 exact products onto C in k order, one IEEE round-to-nearest
    /// f32 addition each: deterministic and as accurate as a sequential f32 sum.
    #[default]
    Exact,
    /// The tensor-core datapath of sm_80 (A100), bit for bit as modelled by MMA-Sim
    /// (Microsoft, "MMA-Sim: Bit-Accurate Modeling of GPU Matrix Multiply-Accumulate Units",
    /// arXiv 2511.10909, and its public simulator) and consistent with the experiments of
    /// Fasi, Higham, Mikaitis and Pranesh, "Numerical behavior of NVIDIA tensor cores",
    /// PeerJ Computer Science 7:e330 (2021):
    ///
    /// - k is split in two halves of 8; each half is one fused dot-add `d = c + Σ aᵢ·bᵢ`,
    ///   and the first half's result is the second half's c;
    /// - the products are exact; every addend (the 8 products and c) is written as
    ///   significand × 2^e with e its exponent as encoded (a product's e is the sum of its
    ///   factors' exponents, its significand in [1, 4); subnormals keep the format's minimum
    ///   exponent; a zero counts as 2^-126);
    /// - each significand is shifted to the largest e and truncated (toward zero) to 24 bits
    ///   after the binary point (one more than f32 keeps), then the addends are summed
    ///   exactly (no rounding inside the group, no normalisation between addends);
    /// - the sum is normalised and truncated toward zero to f32 (subnormal results kept;
    ///   beyond the f32 range, infinity); a NaN or infinite operand gives what the IEEE sum
    ///   of the exact products would (NaN canonical).
    ///
    /// Selected by `hardware` or `hardware-sm80`.
    Hardware,
    /// The tensor-core datapath of sm_90 (H100) running `mma.sync`, as MMA-Sim models
    /// Hopper (its `arch_accum_fractional_bits` and split-k rule): as [`MmaNumerics::Hardware`]
    /// but all 16 products and c in one fused dot-add (no split of k), aligned with 25
    /// fraction bits. Selected by `hardware-sm90`.
    HardwareSm90,
}

impl MmaNumerics {
    /// The environment variable that selects the numerics for a whole run: `exact`,
    /// `hardware` (`hardware-sm80`) or `hardware-sm90` (any case); unset or empty means
    /// [`MmaNumerics::Exact`].
    pub const ENV: &'static str = "FRUGAL_EMU_MMA";

    /// Every mode, the default first.
    pub const ALL: [MmaNumerics; 3] = [
        MmaNumerics::Exact,
        MmaNumerics::Hardware,
        MmaNumerics::HardwareSm90,
    ];

    /// The numerics called `name` (`exact`, `hardware`, `hardware-sm80` or `hardware-sm90`,
    /// any case, spaces around ignored).
    pub fn from_name(name: &str) -> Option<MmaNumerics> {
        match name.trim().to_ascii_lowercase().as_str() {
            "exact" => Some(MmaNumerics::Exact),
            "hardware" | "hardware-sm80" => Some(MmaNumerics::Hardware),
            "hardware-sm90" => Some(MmaNumerics::HardwareSm90),
            _ => None,
        }
    }

    /// The name [`MmaNumerics::from_name`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            MmaNumerics::Exact => "exact",
            MmaNumerics::Hardware => "hardware",
            MmaNumerics::HardwareSm90 => "hardware-sm90",
        }
    }

    /// The numerics [`MmaNumerics::ENV`] selects.
    ///
    /// # Errors
    /// A message naming the variable and its value when it is set to neither name.
    pub fn from_env() -> Result<MmaNumerics, String> {
        match std::env::var(Self::ENV) {
            Err(_) => Ok(MmaNumerics::Exact),
            Ok(v) if v.trim().is_empty() => Ok(MmaNumerics::Exact),
            Ok(v) => Self::from_name(&v).ok_or_else(|| {
                format!(
                    "{}='{v}' names no mma numerics: use 'exact', 'hardware' (sm_80) or 'hardware-sm90'",
                    Self::ENV
                )
            }),
        }
    }
}

/// What a launch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchStats {
    /// Warp-level instructions issued (one per warp per instruction, whatever the mask).
    pub instructions: u64,
    /// Warps run (over all CTAs).
    pub warps: u64,
    /// Thread-level instructions executed (sum of active lanes over issued instructions).
    pub thread_instructions: u64,
    /// CTAs run.
    pub ctas: u64,
}

impl Module {
    /// Parses and decodes PTX text.
    ///
    /// # Errors
    /// `PtxError::Parse` with line, column and the offending text for anything malformed
    /// or unsupported. Never panics, whatever the input.
    pub fn parse(text: &str) -> Result<Module, PtxError> {
        let ast = parse::parse(text)?;
        let (kernels, data) = decode::decode_module(&ast)?;
        Ok(Module {
            kernels,
            data,
            sm: ast.sm.unwrap_or(crate::launch::DEFAULT_SM),
        })
    }

    /// The instructions of `text` that the emulator cannot run, one error each (with line,
    /// column, instruction and reason), in order; empty when [`Module::parse`] would
    /// succeed. Unlike [`Module::parse`] it goes on past the first such instruction, so it
    /// tells at once everything a compiler's output needs that the emulator lacks.
    ///
    /// # Errors
    /// `PtxError::Parse` for what is not an instruction: malformed text, unsupported
    /// directives or declarations.
    pub fn unsupported_instructions(text: &str) -> Result<Vec<PtxError>, PtxError> {
        decode::decode_failures(&parse::parse(text)?)
    }

    /// The compute capability the module's `.target` names (`sm_90a` gives 90; sm_80
    /// when it has none).
    pub fn sm(&self) -> u32 {
        self.sm
    }

    /// The names of the module's kernels, in the order they are defined.
    pub fn kernel_names(&self) -> Vec<&str> {
        self.kernels.iter().map(|k| k.name.as_str()).collect()
    }

    /// The parameters of `kernel`, with their offsets in the packed parameter buffer.
    ///
    /// # Errors
    /// `UnknownKernel` if the module does not define `kernel`.
    /// They are laid out for the module's own target ([`Module::sm`]), which is how the
    /// emulator runs it.
    pub fn params(&self, kernel: &str) -> Result<Vec<ParamInfo>, PtxError> {
        Ok(self.kernel(kernel)?.params.clone())
    }

    /// The parameters of `kernel` laid out as the driver's JIT lays them out for a device
    /// of compute capability `sm` (the same as [`Module::params`] unless a parameter is
    /// aligned to more than 16 bytes: see [`crate::launch::param_bank_base`]).
    ///
    /// # Errors
    /// `UnknownKernel` if the module does not define `kernel`.
    pub fn params_for(&self, kernel: &str, sm: u32) -> Result<Vec<ParamInfo>, PtxError> {
        let params = &self.kernel(kernel)?.params;
        Ok(crate::launch::layout(
            params.iter().map(|p| (p.name.as_str(), p.size, p.align)),
            sm,
        ))
    }

    pub(crate) fn kernel(&self, name: &str) -> Result<&inst::Kernel, PtxError> {
        self.kernels
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| PtxError::UnknownKernel {
                name: name.to_string(),
                available: self.kernels.iter().map(|k| k.name.clone()).collect(),
            })
    }
}

/// Runs `kernel` of `module` over `mem` with the given launch shape and packed parameter
/// buffer (see [`ParamInfo`]), sanitizer checks as `checks` says.
///
/// # Errors
/// `UnknownKernel`, `BadLaunch` for an invalid shape or parameter buffer, and the first
/// sanitizer finding or runtime fault (`OutOfBounds`, `Misaligned`, `SharedRace`,
/// `UninitRegister`, `Divergence`, `Deadlock`, `Trap`). Memory written before the fault
/// stays written.
pub fn launch(
    module: &Module,
    kernel: &str,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
) -> Result<LaunchStats, PtxError> {
    launch_profiled(
        module,
        kernel,
        dims,
        params,
        mem,
        checks,
        &Profiling::default(),
    )
    .map(|(stats, _)| stats)
}

/// [`launch`], profiled as `profiling` says: with [`Profiling::count`], the launch's
/// [`Counters`] (what Nsight Compute would count; see each field); with
/// [`Profiling::sample_ctas`], only that many CTAs run (the first, the last and evenly
/// between) and the counters are extrapolated to the grid ([`Counters::extrapolated`]).
/// With `Profiling::default()` this is exactly [`launch`], at the same speed.
///
/// # Errors
/// As [`launch`]; `BadLaunch` also for `sample_ctas: Some(0)`.
///
/// # Examples
/// ```
/// use frugal_ptx::emu::{launch_profiled, Checks, DeviceMemory, LaunchDims, Module, Profiling};
/// let ptx = r#"
/// .version 8.0
/// .target sm_80
/// .address_size 64
/// .visible .entry copy(.param .u64 src, .param .u64 dst)
/// {
///     .reg .b32 %r<2>;
///     .reg .b64 %rd<6>;
///     ld.param.u64 %rd1, [src];
///     ld.param.u64 %rd2, [dst];
///     mov.u32 %r1, %tid.x;
///     mul.wide.u32 %rd3, %r1, 4;
///     add.s64 %rd4, %rd1, %rd3;
///     add.s64 %rd5, %rd2, %rd3;
///     ld.global.u32 %r1, [%rd4];
///     st.global.u32 [%rd5], %r1;
///     ret;
/// }
/// "#;
/// let module = Module::parse(ptx).unwrap();
/// let mut mem = DeviceMemory::new();
/// let (src, dst) = (mem.alloc(128, "src"), mem.alloc(128, "dst"));
/// let params = [src.to_le_bytes(), dst.to_le_bytes()].concat();
/// let dims = LaunchDims { grid: [1, 1, 1], block: [32, 1, 1], dynamic_shared_bytes: 0 };
/// let profiling = Profiling { count: true, sample_ctas: None };
/// let (_, counters) =
///     launch_profiled(&module, "copy", &dims, &params, &mut mem, &Checks::default(), &profiling)
///         .unwrap();
/// let c = counters.unwrap();
/// // 32 lanes × 4 consecutive bytes: one request, four 32-byte sectors.
/// assert_eq!((c.global_load_requests, c.global_load_sectors), (1, 4));
/// assert_eq!(c.global_load_sectors_ideal, 4);
/// ```
pub fn launch_profiled(
    module: &Module,
    kernel: &str,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
    profiling: &Profiling,
) -> Result<(LaunchStats, Option<Counters>), PtxError> {
    let k = module.kernel(kernel)?;
    if let Some(d) = &module.data {
        // Placed once per `DeviceMemory`: later launches see what earlier ones wrote.
        mem.ensure_module_data(d.base, &d.image, &d.label);
    }
    exec::launch(k, dims, params, mem, checks, profiling)
}
