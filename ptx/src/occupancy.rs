//! Theoretical occupancy: how many thread blocks (CTAs) of a kernel can be resident on one
//! streaming multiprocessor at once, and which resource stops one more from fitting.
//!
//! This is the computation NVIDIA's CUDA Occupancy Calculator performs (shipped as
//! `cuda_occupancy.h` with the toolkit, and what Nsight Compute reports as "Theoretical
//! Occupancy" with its "Block Limit" rows). Four limits, each a number of blocks per SM; the
//! smallest wins:
//!
//! - **Warps**: `max_warps / ceil(threads / 32)`; zero when the block has more threads than
//!   a block may have (1024).
//! - **Blocks**: the fixed cap on resident blocks per SM.
//! - **Registers**: registers are allocated per warp, `regs_per_thread × 32` rounded up to the
//!   allocation unit (256), and out of four equal register-file partitions, one per warp
//!   scheduler (the SM has four processing blocks since Volta: Volta, Ampere and Hopper
//!   architecture white papers). So a partition holds `floor(regs / 4 / per_warp)` warps, the SM
//!   four times that, and the blocks are those warps divided by the block's warps. The
//!   calculator also rejects a block outright (zero blocks) when its warps, rounded up to a
//!   multiple of the four partitions, would need more than the register file.
//! - **Shared memory**: each block takes its static plus dynamic shared memory plus the 1 KiB
//!   the CUDA driver reserves per block on sm_80 and later (Ampere tuning guide, "Shared
//!   Memory": this is why an A100 block may address 163 KB of a 164 KB carveout), rounded up to
//!   the 128-byte allocation unit; zero blocks when the request exceeds the per-block maximum.
//!   The SM's shared memory is taken at its largest carveout. frugal sets no carveout
//!   preference (only the per-block opt-in above 48 KiB), so the driver picks the carveout per
//!   kernel and may pick a smaller one; a smaller carveout can only lower the figure, so this
//!   is an upper bound on the blocks that shared memory allows.
//!
//! Figures per architecture are from the CUDA C++ Programming Guide, "Compute Capabilities",
//! table "Technical Specifications per Compute Capability" (max resident blocks and warps per
//! SM, 64 Ki registers per SM and per block, 255 registers per thread, shared memory per SM and
//! per block), and its sections "Compute Capability 8.x" and "9.0" (the shared-memory
//! capacities 164 KB on 8.0, 100 KB on 8.6 and 8.9, 228 KB on 9.0). The allocation units
//! (256 registers per warp, 128 bytes of shared memory) are the calculator's for these
//! architectures.
//!
//! # Examples
//! ```
//! use frugal_ptx::occupancy::{occupancy, Limiter};
//! // 256 threads with 128 registers each on an A100: 2 blocks, 16 of 64 warps.
//! let occ = occupancy(80, 256, 128, 0).unwrap();
//! assert_eq!((occ.blocks_per_sm, occ.warps_per_sm), (2, 16));
//! assert_eq!(occ.fraction, 0.25);
//! assert_eq!(occ.limited_by, Limiter::Registers);
//! ```

/// Threads per warp on every NVIDIA architecture.
const WARP_SIZE: u32 = 32;
/// Register-file partitions per SM, one per warp scheduler (Volta and later).
const REGISTER_PARTITIONS: u32 = 4;
const KIB: u32 = 1024;

/// One SM's resource limits for occupancy, for one compute capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmLimits {
    /// Resident warps per SM.
    pub max_warps: u32,
    /// Resident blocks per SM.
    pub max_blocks: u32,
    /// Threads per block (1024 on every architecture here).
    pub max_threads_per_block: u32,
    /// 32-bit registers per SM (also the most one block may use).
    pub regs: u32,
    /// Registers are allocated to a warp in multiples of this many.
    pub reg_alloc_unit: u32,
    /// Registers one thread may use.
    pub max_regs_per_thread: u32,
    /// Shared memory per SM usable by blocks at the largest carveout, in bytes, counting the
    /// per-block reservation.
    pub smem_bytes: u32,
    /// Shared memory one block may request (static + dynamic), in bytes, with opt-in.
    pub smem_per_block_max: u32,
    /// Shared memory is allocated to a block in multiples of this many bytes.
    pub smem_alloc_unit: u32,
    /// Shared memory the driver reserves for each resident block, in bytes.
    pub reserved_smem_per_block: u32,
}

/// The limits of compute capability `sm` (major × 10 + minor), for the architectures frugal
/// ships kernels for: 80 (A100), 86 (A10, RTX 30xx), 89 (L4, L40, RTX 40xx), 90 (H100, H200).
/// `None` for any other.
pub fn limits(sm: u32) -> Option<SmLimits> {
    // Shared with every sm_8x/sm_9x part: 64 Ki registers per SM and per block, 255 per
    // thread, 1024 threads per block, 256-register and 128-byte allocation units, 1 KiB
    // reserved per block.
    let base = SmLimits {
        max_warps: 64,
        max_blocks: 32,
        max_threads_per_block: 1024,
        regs: 64 * KIB,
        reg_alloc_unit: 256,
        max_regs_per_thread: 255,
        smem_bytes: 164 * KIB,
        smem_per_block_max: 163 * KIB,
        smem_alloc_unit: 128,
        reserved_smem_per_block: KIB,
    };
    match sm {
        80 => Some(base),
        // GA10x: 48 warps (1536 threads) and 16 blocks per SM, 100 KB of shared memory.
        86 => Some(SmLimits {
            max_warps: 48,
            max_blocks: 16,
            smem_bytes: 100 * KIB,
            smem_per_block_max: 99 * KIB,
            ..base
        }),
        // AD10x: as GA10x but 24 resident blocks.
        89 => Some(SmLimits {
            max_warps: 48,
            max_blocks: 24,
            smem_bytes: 100 * KIB,
            smem_per_block_max: 99 * KIB,
            ..base
        }),
        // GH100: 228 KB of shared memory per SM, 227 KB per block.
        90 => Some(SmLimits {
            smem_bytes: 228 * KIB,
            smem_per_block_max: 227 * KIB,
            ..base
        }),
        _ => None,
    }
}

/// The resource that limits how many blocks fit on an SM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limiter {
    /// Warp slots (or a block larger than a block may be).
    Warps,
    /// The cap on resident blocks.
    Blocks,
    /// The register file (or more registers per thread than allowed).
    Registers,
    /// Shared memory (or more per block than allowed).
    SharedMemory,
}

impl Limiter {
    /// A short lower-case name for tables: `warps`, `blocks`, `registers`, `shared memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limiter::Warps => "warps",
            Limiter::Blocks => "blocks",
            Limiter::Registers => "registers",
            Limiter::SharedMemory => "shared memory",
        }
    }
}

impl std::fmt::Display for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Theoretical occupancy of one kernel launch configuration on one SM.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Occupancy {
    /// Blocks resident at once on one SM (0: the block cannot be launched at all).
    pub blocks_per_sm: u32,
    /// Warps resident at once: blocks × warps per block.
    pub warps_per_sm: u32,
    /// `warps_per_sm` as a fraction of the SM's maximum warps (Nsight's theoretical occupancy).
    pub fraction: f64,
    /// The limit that set `blocks_per_sm`. On a tie, the first of warps, blocks, registers,
    /// shared memory: a kernel held by its warp slots loses nothing to registers or shared
    /// memory, so those are named only when they alone cost occupancy.
    pub limited_by: Limiter,
}

/// Theoretical occupancy of blocks of `threads_per_block` threads using `regs_per_thread`
/// registers (ptxas's "Used N registers") and `smem_per_block` bytes of shared memory (static
/// plus dynamic) on compute capability `sm`.
///
/// `None` for an architecture [`limits`] does not know or an empty block. A configuration that
/// cannot launch (too many threads, registers or bytes) gives 0 blocks, fraction 0, and the
/// resource at fault.
pub fn occupancy(
    sm: u32,
    threads_per_block: u32,
    regs_per_thread: u32,
    smem_per_block: u32,
) -> Option<Occupancy> {
    let lim = limits(sm)?;
    if threads_per_block == 0 {
        return None;
    }
    let warps_per_block = threads_per_block.div_ceil(WARP_SIZE);
    let by_warps = if threads_per_block > lim.max_threads_per_block {
        0
    } else {
        lim.max_warps / warps_per_block
    };
    let by_regs = blocks_by_registers(&lim, warps_per_block, regs_per_thread);
    let by_smem = blocks_by_shared_memory(&lim, smem_per_block);
    let candidates = [
        (by_warps, Limiter::Warps),
        (lim.max_blocks, Limiter::Blocks),
        (by_regs, Limiter::Registers),
        (by_smem, Limiter::SharedMemory),
    ];
    // min_by_key keeps the first of equal keys: the tie order documented on `limited_by`.
    let (blocks, limited_by) = candidates
        .into_iter()
        .min_by_key(|&(blocks, _)| blocks)
        .unwrap_or((0, Limiter::Warps));
    let warps = blocks * warps_per_block;
    Some(Occupancy {
        blocks_per_sm: blocks,
        warps_per_sm: warps,
        fraction: f64::from(warps) / f64::from(lim.max_warps),
        limited_by,
    })
}

/// Blocks per SM that the register file allows (see the module notes for the rule).
fn blocks_by_registers(lim: &SmLimits, warps_per_block: u32, regs_per_thread: u32) -> u32 {
    if regs_per_thread > lim.max_regs_per_thread {
        return 0;
    }
    let per_warp = (regs_per_thread * WARP_SIZE).next_multiple_of(lim.reg_alloc_unit);
    if per_warp == 0 {
        return u32::MAX;
    }
    // The launch check assumes the block's warps are spread over all four partitions at once.
    let assumed_per_block = per_warp * warps_per_block.next_multiple_of(REGISTER_PARTITIONS);
    if assumed_per_block > lim.regs {
        return 0;
    }
    let warps_per_partition = lim.regs / REGISTER_PARTITIONS / per_warp;
    warps_per_partition * REGISTER_PARTITIONS / warps_per_block
}

/// Blocks per SM that shared memory allows.
fn blocks_by_shared_memory(lim: &SmLimits, smem_per_block: u32) -> u32 {
    if smem_per_block > lim.smem_per_block_max {
        return 0;
    }
    let allocated =
        (smem_per_block + lim.reserved_smem_per_block).next_multiple_of(lim.smem_alloc_unit);
    lim.smem_bytes / allocated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(sm: u32, threads: u32, regs: u32, smem: u32) -> (u32, u32, Limiter) {
        let o = occupancy(sm, threads, regs, smem).expect("known sm");
        assert_eq!(
            o.fraction,
            f64::from(o.warps_per_sm) / f64::from(limits(sm).unwrap().max_warps)
        );
        (o.blocks_per_sm, o.warps_per_sm, o.limited_by)
    }

    #[test]
    fn register_limited_cases() {
        // 256 threads = 8 warps; 128 regs × 32 = 4096 per warp (already a multiple of 256).
        // A partition holds 16384 / 4096 = 4 warps, the SM 16: 2 blocks of 8 warps.
        assert_eq!(occ(80, 256, 128, 0), (2, 16, Limiter::Registers));
        // 255 regs → 8160, rounded to 8192 per warp: 2 warps per partition, 8 per SM:
        // one 8-warp block.
        assert_eq!(occ(90, 256, 255, 0), (1, 8, Limiter::Registers));
        // 174 regs (flash forward hs128 on sm_80) with 128 threads (4 warps): 5568 → 5632 per
        // warp; 16384 / 5632 = 2 warps per partition, 8 per SM: 2 blocks of 4 warps.
        assert_eq!(occ(80, 128, 174, 0), (2, 8, Limiter::Registers));
        // 40 regs → 1280 per warp: 12 warps per partition, 48 per SM; 128-thread blocks:
        // 12 blocks (warp limit would allow 16).
        assert_eq!(occ(80, 128, 40, 0), (12, 48, Limiter::Registers));
    }

    #[test]
    fn the_register_file_rounds_the_block_to_four_partitions() {
        // 255 regs → 8192 per warp: 2 warps per partition, 8 per SM. A 5-warp block (160
        // threads) passes the launch check (5 warps round up to 8: 8 × 8192 = 65536, exactly
        // the register file) and one block fits.
        assert_eq!(occ(80, 160, 255, 0), (1, 5, Limiter::Registers));
        // 9 warps (288 threads) need 9 × 8192 = 73728 > 65536 registers: no block launches.
        assert_eq!(occ(80, 288, 255, 0), (0, 0, Limiter::Registers));
        // 6 warps × 8192 = 49152 fits, and rounded to 8 warps the launch check needs 65536:
        // still fits, and 8 warps per SM hold one 6-warp block.
        assert_eq!(occ(80, 192, 255, 0), (1, 6, Limiter::Registers));
        // Where the rounding alone decides: 7 warps × 240 regs (7680 per warp) need 53760,
        // but 8 × 7680 = 61440 still fits; with 248 regs (7936 per warp) 8 × 7936 = 63488 fits
        // too. The partition rule, not the rounding, then limits: 16384 / 7936 = 2 warps per
        // partition, 8 per SM, one 7-warp block.
        assert_eq!(occ(80, 224, 248, 0), (1, 7, Limiter::Registers));
        // More registers than a thread may have: nothing launches.
        assert_eq!(occ(80, 32, 256, 0), (0, 0, Limiter::Registers));
    }

    #[test]
    fn warp_and_block_limited_cases() {
        // 32 regs → 1024 per warp: 16 per partition, 64 per SM, as many as the warp limit;
        // the tie names warps. 256 threads: 8 blocks, full occupancy.
        assert_eq!(occ(80, 256, 32, 0), (8, 64, Limiter::Warps));
        // On sm_86 the same kernel is held to 48 warps: 6 blocks.
        assert_eq!(occ(86, 256, 32, 0), (6, 48, Limiter::Warps));
        // 32-thread blocks with few registers: the 32-block cap (16 on sm_86, 24 on sm_89).
        assert_eq!(occ(80, 32, 16, 0), (32, 32, Limiter::Blocks));
        assert_eq!(occ(86, 32, 16, 0), (16, 16, Limiter::Blocks));
        assert_eq!(occ(89, 32, 16, 0), (24, 24, Limiter::Blocks));
        // 1025 threads is more than a block may have.
        assert_eq!(occ(90, 1025, 16, 0), (0, 0, Limiter::Warps));
        // A partial warp still takes a whole warp slot: 33 threads = 2 warps.
        assert_eq!(occ(80, 33, 16, 0).1, 64);
    }

    #[test]
    fn shared_memory_limited_cases() {
        // 48 KiB + 1 KiB reserved = 50176 bytes (a multiple of 128): 167936 / 50176 = 3.
        assert_eq!(occ(80, 128, 32, 48 * KIB), (3, 12, Limiter::SharedMemory));
        // On sm_90: 233472 / 50176 = 4; on sm_86: 102400 / 50176 = 2.
        assert_eq!(occ(90, 128, 32, 48 * KIB), (4, 16, Limiter::SharedMemory));
        assert_eq!(occ(86, 128, 32, 48 * KIB), (2, 8, Limiter::SharedMemory));
        // The per-block maximum exactly: 163 KiB + 1 KiB is the whole 164 KiB, one block.
        assert_eq!(occ(80, 128, 32, 163 * KIB), (1, 4, Limiter::SharedMemory));
        // One byte over the per-block maximum: cannot launch.
        assert_eq!(
            occ(80, 128, 32, 163 * KIB + 1),
            (0, 0, Limiter::SharedMemory)
        );
        // Rounding: 1 byte takes 1024 + 128 = 1152 bytes; 167936 / 1152 = 145, far above
        // the 32-block cap, so blocks limit.
        assert_eq!(occ(80, 32, 16, 1).2, Limiter::Blocks);
        // 20000 bytes + 1024 = 21024 → 21120 (165 × 128): 167936 / 21120 = 7.
        assert_eq!(occ(80, 128, 32, 20000), (7, 28, Limiter::SharedMemory));
    }

    #[test]
    fn zero_blocks_is_zero_occupancy_and_unknowns_are_none() {
        let o = occupancy(80, 128, 32, 200 * KIB).unwrap();
        assert_eq!((o.blocks_per_sm, o.warps_per_sm, o.fraction), (0, 0, 0.0));
        assert!(occupancy(75, 128, 32, 0).is_none());
        assert!(occupancy(80, 0, 32, 0).is_none());
        assert!(limits(70).is_none());
        // Zero registers (a kernel ptxas gave none) does not limit.
        assert_eq!(occ(80, 1024, 0, 0), (2, 64, Limiter::Warps));
    }
}
