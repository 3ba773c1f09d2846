//! Hardware counters of one launch, counted by the emulator: what Nsight Compute would report
//! for the same kernel, from the addresses every lane touches.
//!
//! Counting is opt-in ([`Profiling::count`]); with it off the scheduler runs its uncounted
//! instantiation (`run_warp::<false>` in `exec`), so the emulator runs as fast as before.
//!
//! Here: what is counted ([`Counters`], the launch's `Recorder`); `hooks`: what the scheduler
//! hands over per instruction; `geometry`: sectors, banks and wavefronts of one request.
//!
//! The memory model follows NVIDIA's description of the L1TEX unit (Nsight Compute Kernel
//! Profiling Guide, "Memory Tables", and the NVIDIA developer forum answer "What's the
//! difference between wavefronts and sectors/req"): a warp-level memory instruction is one
//! *request*; a global request touches some 32-byte *sectors*; a shared request is served in
//! *wavefronts*, each of which reads or writes at most one 4-byte word per bank of the 32
//! banks (CUDA C++ Programming Guide, "Compute Capability 5.x and later: Shared Memory":
//! successive 4-byte words map to successive banks; lanes reading the same word share it).
//!
//! 8- and 16-byte shared accesses: the warp is served in phases, each at least one wavefront —
//! half-warps (lanes 0-15, 16-31) for 8 bytes and quarter-warps (lanes 8q..8q+7) for 16
//! bytes, since one wavefront moves at most 128 bytes (32 banks × 4 bytes). This is the model
//! Nsight Compute's own ideal counts use: a conflict-free `LDS.128` takes 4 wavefronts and
//! reports 0 bank conflicts, i.e. `l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld`
//! counts wavefronts beyond the ideal ones (NVIDIA developer forum, "Clarification: bank
//! conflicts metric vs wavefronts for shared memory LDS.128"). Inside a phase the wavefronts
//! are the largest number of distinct words any one bank must serve. `ldmatrix` is served
//! the same way with one phase per 8×8 matrix: its 8 row addresses of 16 bytes each.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

mod geometry;
mod hooks;

use geometry::{
    core_matrix_wavefronts, distinct_bytes, distinct_sectors, ldmatrix_wavefronts,
    shared_wavefronts,
};

/// The kinds of warp-level instruction the counters tell apart.
///
/// A grouping by what the instruction does, close to Nsight Compute's pipelines
/// (`sm__inst_executed_pipe_*`) but independent of how ptxas lowers PTX to SASS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstClass {
    /// Integer arithmetic, logic, shifts, bit fields, integer compares and `cvta`.
    Integer = 0,
    /// Floating-point arithmetic and float compares.
    Float = 1,
    /// `mov` (and packing), `cvt`, `selp`.
    ConvertMove = 2,
    /// `ld`, `st`, `atom`, `red`, `cp.async`, `ldmatrix`.
    Memory = 3,
    /// `bar.sync`, `bar.warp.sync`, `shfl`, `vote`, `activemask`, `redux`, `cp.async`'s
    /// commit and wait, `wgmma.fence`/`commit_group`/`wait_group`.
    Sync = 4,
    /// `mma`, `wgmma.mma_async` (one per warp of the warpgroup).
    Tensor = 5,
    /// `bra`, `exit`/`ret`, `trap`, and instructions without effect here (`prefetch`,
    /// `membar`/`fence`, which the decoder folds into one no-op).
    Control = 6,
}

impl InstClass {
    /// How many classes there are (the length of [`Counters::instructions_by_class`]).
    pub const COUNT: usize = 7;
    /// Every class, in index order.
    pub const ALL: [InstClass; InstClass::COUNT] = [
        InstClass::Integer,
        InstClass::Float,
        InstClass::ConvertMove,
        InstClass::Memory,
        InstClass::Sync,
        InstClass::Tensor,
        InstClass::Control,
    ];

    /// A short lower-case name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            InstClass::Integer => "integer",
            InstClass::Float => "float",
            InstClass::ConvertMove => "convert/move",
            InstClass::Memory => "memory",
            InstClass::Sync => "sync",
            InstClass::Tensor => "tensor",
            InstClass::Control => "control",
        }
    }
}

/// How a launch is profiled; `Default` = off (the emulator runs exactly as without profiling,
/// at the same speed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profiling {
    /// Count [`Counters`] for the launch.
    pub count: bool,
    /// Run at most this many CTAs and extrapolate the counters to the whole grid. The sample
    /// is a sub-grid ([`sample_grid`]): along each grid dimension a few coordinates, the first,
    /// the last and evenly between, and every CTA at their crossings; at least two along each
    /// dimension the budget allows, so that data shared along a dimension is seen shared. Each
    /// count is scaled by total/sampled CTAs and rounded, except the distinct DRAM sectors:
    /// a sector that CTAs at two sampled coordinates of a dimension both touched stands for
    /// data shared along that dimension (a matmul's panel of A along a grid row) and is not
    /// scaled along it; along every other dimension it is scaled by grid size / sampled
    /// coordinates. Exact for data private to a CTA or shared along whole grid rows, columns
    /// or planes; data shared by part of a dimension (heads of one GQA group) is counted as
    /// if private along it, an overestimate. `None` = every CTA. Sampling applies with
    /// counting off too. The CTAs not run write nothing, so a sampled launch's outputs are
    /// partial, and its `LaunchStats` count the CTAs run.
    pub sample_ctas: Option<u32>,
}

/// What one launch did, as Nsight Compute counts it. Every count is warp-level (one per warp
/// per instruction) unless its documentation says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Warp-level instructions executed, whatever their predicate (`smsp__inst_executed.sum`).
    pub instructions: u64,
    /// [`Counters::instructions`] by [`InstClass`], indexed by `class as usize`.
    pub instructions_by_class: [u64; InstClass::COUNT],

    /// Global load requests: `ld`/`ldu` with at least one active lane addressing global memory
    /// (`l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum`).
    pub global_load_requests: u64,
    /// Distinct 32-byte sectors each global load touches over its active lanes' byte ranges,
    /// summed over requests (`l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum`).
    pub global_load_sectors: u64,
    /// The fewest sectors those loads could have touched: ceil(distinct bytes the active
    /// lanes read / 32) per request, i.e. ceil(active lanes × bytes per lane / 32) when no
    /// two lanes read the same byte (lanes sharing an address, a broadcast, need it once).
    /// Coalescing efficiency = ideal / actual, at most 1.
    pub global_load_sectors_ideal: u64,
    /// Global store requests (`l1tex__t_requests_pipe_lsu_mem_global_op_st.sum`).
    pub global_store_requests: u64,
    /// Sectors of global stores (`l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum`).
    pub global_store_sectors: u64,
    /// Ideal sectors of global stores, as for loads.
    pub global_store_sectors_ideal: u64,
    /// Global `atom` and `red` requests (`l1tex__t_requests_pipe_lsu_mem_global_op_atom.sum`
    /// plus `..._op_red.sum`).
    pub global_atomic_requests: u64,
    /// Sectors of global atomics (`l1tex__t_sectors_pipe_lsu_mem_global_op_atom.sum` plus
    /// `..._op_red.sum`).
    pub global_atomic_sectors: u64,
    /// Ideal sectors of global atomics, as for loads.
    pub global_atomic_sectors_ideal: u64,

    /// Shared-memory load requests: `ld.shared`, and generic loads into the shared window
    /// (`smsp__inst_executed_op_shared_ld.sum`).
    pub shared_load_requests: u64,
    /// Wavefronts of shared loads, per the bank model in the module note
    /// (`l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum`).
    pub shared_load_wavefronts: u64,
    /// Wavefronts shared loads would take without bank conflicts: one per phase with an
    /// active lane.
    pub shared_load_wavefronts_ideal: u64,
    /// Shared-memory store requests (`smsp__inst_executed_op_shared_st.sum`).
    pub shared_store_requests: u64,
    /// Wavefronts of shared stores (`l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum`).
    pub shared_store_wavefronts: u64,
    /// Conflict-free wavefronts of shared stores.
    pub shared_store_wavefronts_ideal: u64,
    /// `ldmatrix` requests (`smsp__inst_executed_op_ldsm.sum`).
    pub ldmatrix_requests: u64,
    /// Wavefronts of `ldmatrix`: per 8×8 matrix, the largest number of distinct words one
    /// bank serves (`l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum`).
    pub ldmatrix_wavefronts: u64,
    /// Conflict-free wavefronts of `ldmatrix`: one per matrix.
    pub ldmatrix_wavefronts_ideal: u64,

    /// `cp.async` requests: global → shared copies, SASS `LDGSTS`
    /// (`smsp__inst_executed_op_ldgsts.sum`).
    pub cp_async_requests: u64,
    /// Bytes `cp.async` read from global memory (thread-level: the source size of each
    /// active lane's copy; an ignored source reads nothing).
    pub cp_async_bytes: u64,
    /// Distinct sectors each `cp.async` reads, summed over requests: the `LDGSTS`
    /// counterpart of `l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum`.
    pub cp_async_sectors: u64,
    /// ceil(distinct bytes read / 32) per `cp.async` request.
    pub cp_async_sectors_ideal: u64,

    /// Bulk copies issued, `cp.async.bulk` and `cp.async.bulk.tensor` (TMA), thread-level:
    /// one per issuing lane (SASS `UBLKCP`/`UTMALDG`/`UTMASTG`).
    pub bulk_requests: u64,
    /// Bytes bulk copies read from global memory: a tensor box's in-bounds elements only
    /// (the copy engine fetches nothing for elements it fills).
    pub bulk_global_read_bytes: u64,
    /// Bytes bulk copies wrote to global memory (a tensor store's in-bounds elements).
    pub bulk_global_write_bytes: u64,
    /// Distinct 32-byte global sectors each bulk copy touches, summed over copies: its
    /// L2 traffic (`lts__t_sectors_srcunit_tex` of the TMA unit).
    pub bulk_sectors: u64,
    /// Bytes bulk loads wrote into shared memory (a tensor box whole, fill included).
    pub bulk_shared_write_bytes: u64,
    /// Bytes bulk stores read from shared memory.
    pub bulk_shared_read_bytes: u64,

    /// `wgmma.mma_async` issued, once per warpgroup (SASS `HGMMA`).
    pub wgmma_requests: u64,
    /// Bytes `wgmma.mma_async` read from shared memory through its matrix descriptors, per
    /// warpgroup issue: A's 64×16 and B's N×16 16-bit elements (2048 + 32·N bytes; B's alone
    /// when A is in registers). Counted per instruction: a tile that several wgmmas read is
    /// read again by each, as the tensor cores do.
    pub wgmma_shared_read_bytes: u64,
    /// Wavefronts of those reads. Model: the operand is read by core matrix (8 rows of 16
    /// contiguous bytes, the unit of the ISA's canonical layouts), and one core matrix takes
    /// as many wavefronts as the most distinct 4-byte words one bank must serve among its 8
    /// rows — the rule `ldmatrix` follows for its 8×8 matrices, and a wavefront moves at most
    /// 128 bytes (32 banks × 4). A 128-byte-swizzled tile's 8 rows of one core matrix lie 128
    /// bytes apart with their 16-byte chunks XOR-permuted into distinct banks, so each core
    /// matrix is one wavefront (bytes / 128 in all); the canonical layouts all come out
    /// conflict-free this way, and the count shows a descriptor that is not. Nsight Compute
    /// has no documented per-wavefront metric for GMMA's operand reads; this is the bank
    /// arithmetic the swizzle modes are designed around.
    pub wgmma_shared_wavefronts: u64,
    /// Conflict-free wavefronts of those reads: one per core matrix (bytes / 128).
    pub wgmma_shared_wavefronts_ideal: u64,

    /// `mma` instructions (`smsp__inst_executed_pipe_tensor_op_hmma.sum`).
    pub mma_instructions: u64,
    /// Floating-point operations of those `mma`s and of `wgmma.mma_async` (counted once per
    /// warpgroup): 2·M·N·K each (2·16·8·16 = 4096 for m16n8k16, 2·64·N·16 for m64nNk16), one
    /// multiply and one add per product term.
    pub tensor_flops: u64,

    /// `bar.sync`/`barrier.sync` executed, per warp: the `BAR` instructions among
    /// `smsp__inst_executed.sum` (Nsight Compute's related stall reason is
    /// `smsp__warp_issue_stalled_barrier`).
    pub barriers: u64,

    /// Distinct 32-byte global sectors read over the whole launch (loads, atomics,
    /// `cp.async`, bulk and tensor loads): a lower bound on `dram__sectors_read.sum` (every byte fetched at least
    /// once, none evicted and refetched); estimated from a sample by the sharing each sector
    /// showed (see [`Profiling::sample_ctas`]).
    pub dram_read_sectors: u64,
    /// Distinct 32-byte global sectors written over the whole launch (stores, atomics, bulk
    /// and tensor stores): a
    /// lower bound on `dram__sectors_write.sum`; estimated as reads are when sampled.
    pub dram_write_sectors: u64,
    /// Distinct sectors read by the CTAs that ran, not extrapolated: equal to
    /// [`Counters::dram_read_sectors`] when every CTA ran, a lower bound on it when sampled.
    pub dram_read_sectors_seen: u64,
    /// Distinct sectors written by the CTAs that ran, not extrapolated.
    pub dram_write_sectors_seen: u64,

    /// CTAs in the grid.
    pub ctas_total: u64,
    /// CTAs the emulator ran; fewer than `ctas_total` when sampled, and then every count above
    /// is extrapolated.
    pub ctas_run: u64,
}

impl Counters {
    /// Whether the counts were extrapolated from a sample of the CTAs.
    pub fn extrapolated(&self) -> bool {
        self.ctas_run < self.ctas_total
    }

    /// Adds `other`'s counts to these (the counters of several launches, e.g. one step).
    /// The distinct-sector counts add up: sectors shared by two launches count twice.
    pub fn add(&mut self, other: &Counters) {
        let mut theirs = other.clone();
        for (mine, theirs) in self.counts_mut().into_iter().zip(theirs.counts_mut()) {
            *mine += *theirs;
        }
        self.ctas_total += other.ctas_total;
        self.ctas_run += other.ctas_run;
    }

    /// Instructions of one class.
    pub fn class(&self, class: InstClass) -> u64 {
        self.instructions_by_class[class as usize]
    }

    /// Shared-load wavefronts beyond the conflict-free ones
    /// (`l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum`).
    pub fn shared_load_bank_conflicts(&self) -> u64 {
        self.shared_load_wavefronts
            .saturating_sub(self.shared_load_wavefronts_ideal)
    }

    /// Shared-store wavefronts beyond the conflict-free ones
    /// (`l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum`).
    pub fn shared_store_bank_conflicts(&self) -> u64 {
        self.shared_store_wavefronts
            .saturating_sub(self.shared_store_wavefronts_ideal)
    }

    /// `ldmatrix` wavefronts beyond the conflict-free ones (one per matrix).
    pub fn ldmatrix_bank_conflicts(&self) -> u64 {
        self.ldmatrix_wavefronts
            .saturating_sub(self.ldmatrix_wavefronts_ideal)
    }

    /// wgmma operand-read wavefronts beyond the conflict-free ones (one per core matrix).
    pub fn wgmma_shared_bank_conflicts(&self) -> u64 {
        self.wgmma_shared_wavefronts
            .saturating_sub(self.wgmma_shared_wavefronts_ideal)
    }

    /// Every count except the CTA numbers, in declaration order: what [`Counters::add`] sums
    /// and extrapolation scales.
    fn counts_mut(&mut self) -> Vec<&mut u64> {
        let mut v: Vec<&mut u64> = vec![&mut self.instructions];
        v.extend(self.instructions_by_class.iter_mut());
        v.extend([
            &mut self.global_load_requests,
            &mut self.global_load_sectors,
            &mut self.global_load_sectors_ideal,
            &mut self.global_store_requests,
            &mut self.global_store_sectors,
            &mut self.global_store_sectors_ideal,
            &mut self.global_atomic_requests,
            &mut self.global_atomic_sectors,
            &mut self.global_atomic_sectors_ideal,
            &mut self.shared_load_requests,
            &mut self.shared_load_wavefronts,
            &mut self.shared_load_wavefronts_ideal,
            &mut self.shared_store_requests,
            &mut self.shared_store_wavefronts,
            &mut self.shared_store_wavefronts_ideal,
            &mut self.ldmatrix_requests,
            &mut self.ldmatrix_wavefronts,
            &mut self.ldmatrix_wavefronts_ideal,
            &mut self.cp_async_requests,
            &mut self.cp_async_bytes,
            &mut self.cp_async_sectors,
            &mut self.cp_async_sectors_ideal,
            &mut self.bulk_requests,
            &mut self.bulk_global_read_bytes,
            &mut self.bulk_global_write_bytes,
            &mut self.bulk_sectors,
            &mut self.bulk_shared_write_bytes,
            &mut self.bulk_shared_read_bytes,
            &mut self.wgmma_requests,
            &mut self.wgmma_shared_read_bytes,
            &mut self.wgmma_shared_wavefronts,
            &mut self.wgmma_shared_wavefronts_ideal,
            &mut self.mma_instructions,
            &mut self.tensor_flops,
            &mut self.barriers,
            &mut self.dram_read_sectors,
            &mut self.dram_write_sectors,
            &mut self.dram_read_sectors_seen,
            &mut self.dram_write_sectors_seen,
        ]);
        v
    }
}

/// Which global counters a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GlobalKind {
    Load,
    Store,
    Atomic,
}

/// Which shared counters a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SharedKind {
    Load,
    Store,
}

/// Size of a global sector, in bytes.
const SECTOR_BYTES: u64 = 32;

/// The counters of a launch while it runs, with the sets of global sectors it has read and
/// written (kept only while counting; the counts are taken at the end).
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) counters: Counters,
    read_sectors: SectorMap,
    written_sectors: SectorMap,
    /// The CTA running now (`%ctaid`): the sector maps note which CTAs touched a sector.
    pub(super) cta: [u32; 3],
}

/// Which CTAs touched a sector: the first one's coordinates, and a bit per grid dimension
/// set once a CTA at another coordinate of that dimension touched it too.
#[derive(Clone, Copy)]
struct Touch {
    first: [u32; 3],
    shared_along: u8,
}

/// Sector numbers are plain integers, mostly consecutive: a multiplicative hash
/// spreads them as well as SipHash at a fraction of the cost (the sets see every
/// global access of a counted launch).
#[derive(Default)]
struct SectorHasher(u64);

/// An odd 64-bit multiplier with well-mixed bits (the one FxHash uses).
const SECTOR_HASH_MUL: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for SectorHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(SECTOR_HASH_MUL);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SECTOR_HASH_MUL);
    }
}

type SectorMap = HashMap<u64, Touch, BuildHasherDefault<SectorHasher>>;

/// Notes that the CTA at `cta` touched each of `sectors`.
fn touch(map: &mut SectorMap, sectors: &[u64], cta: [u32; 3]) {
    for &s in sectors {
        let t = map.entry(s).or_insert(Touch {
            first: cta,
            shared_along: 0,
        });
        for (d, (&first, &now)) in t.first.iter().zip(&cta).enumerate() {
            if first != now {
                t.shared_along |= 1 << d;
            }
        }
    }
}

/// The distinct sectors of the whole grid that `map`'s sampled sectors stand for: each is
/// scaled by `per_dim[d]` (grid size / sampled coordinates) along every dimension it was
/// not seen shared along.
fn estimate_distinct(map: &SectorMap, per_dim: [f64; 3]) -> u64 {
    // Sectors fall into at most 8 sharing classes: count them, then weigh each class once.
    let mut by_class = [0u64; 8];
    for t in map.values() {
        by_class[usize::from(t.shared_along)] += 1;
    }
    let total: f64 = by_class
        .iter()
        .enumerate()
        .map(|(class, &n)| {
            let weight: f64 = (0..3)
                .filter(|d| class & (1 << d) == 0)
                .map(|d| per_dim[d])
                .product();
            n as f64 * weight
        })
        .sum();
    total.round() as u64
}

impl Recorder {
    /// One global request: `lanes` holds each active lane's (address, bytes).
    pub(super) fn global(&mut self, kind: GlobalKind, lanes: &[(u64, u32)]) {
        if lanes.is_empty() {
            return;
        }
        let mut sectors = [0u64; 2 * 32];
        let n = distinct_sectors(lanes, &mut sectors);
        let ideal = distinct_bytes(lanes).div_ceil(SECTOR_BYTES);
        let c = &mut self.counters;
        let (requests, actual, ideal_count) = match kind {
            GlobalKind::Load => (
                &mut c.global_load_requests,
                &mut c.global_load_sectors,
                &mut c.global_load_sectors_ideal,
            ),
            GlobalKind::Store => (
                &mut c.global_store_requests,
                &mut c.global_store_sectors,
                &mut c.global_store_sectors_ideal,
            ),
            GlobalKind::Atomic => (
                &mut c.global_atomic_requests,
                &mut c.global_atomic_sectors,
                &mut c.global_atomic_sectors_ideal,
            ),
        };
        *requests += 1;
        *actual += n as u64;
        *ideal_count += ideal;
        let touched = &sectors[..n];
        if kind != GlobalKind::Store {
            touch(&mut self.read_sectors, touched, self.cta);
        }
        if kind != GlobalKind::Load {
            touch(&mut self.written_sectors, touched, self.cta);
        }
    }

    /// One `cp.async` request: each active lane's (source address, bytes read).
    pub(super) fn cp_async(&mut self, lanes: &[(u64, u32)]) {
        // Lanes reading nothing (ignored source, src-size 0) touch no sector.
        let mut sectors = [0u64; 2 * 32];
        let n = distinct_sectors(lanes, &mut sectors);
        let bytes: u64 = lanes.iter().map(|&(_, b)| u64::from(b)).sum();
        let c = &mut self.counters;
        c.cp_async_requests += 1;
        c.cp_async_bytes += bytes;
        c.cp_async_sectors += n as u64;
        c.cp_async_sectors_ideal += distinct_bytes(lanes).div_ceil(SECTOR_BYTES);
        touch(&mut self.read_sectors, &sectors[..n], self.cta);
    }

    /// One bulk copy (`cp.async.bulk`, or a `cp.async.bulk.tensor` box) of one lane:
    /// `global` holds the (address, bytes) runs it reads (a load) or writes (`store`) in
    /// global memory, in-bounds elements only; `shared_bytes` what it writes into (a load)
    /// or reads from shared memory.
    pub(super) fn bulk(
        &mut self,
        store: bool,
        global: impl Iterator<Item = (u64, u64)>,
        shared_bytes: u64,
    ) {
        let mut sectors = Vec::new();
        let mut bytes = 0u64;
        for (addr, len) in global.filter(|&(_, len)| len > 0) {
            bytes += len;
            let last = addr.saturating_add(len - 1) / SECTOR_BYTES;
            sectors.extend(addr / SECTOR_BYTES..=last);
        }
        sectors.sort_unstable();
        sectors.dedup();
        let c = &mut self.counters;
        c.bulk_requests += 1;
        c.bulk_sectors += sectors.len() as u64;
        if store {
            c.bulk_global_write_bytes += bytes;
            c.bulk_shared_read_bytes += shared_bytes;
            touch(&mut self.written_sectors, &sectors, self.cta);
        } else {
            c.bulk_global_read_bytes += bytes;
            c.bulk_shared_write_bytes += shared_bytes;
            touch(&mut self.read_sectors, &sectors, self.cta);
        }
    }

    /// One shared request: each active lane's (lane, address in shared memory), all of
    /// `bytes` bytes.
    pub(super) fn shared(&mut self, kind: SharedKind, lanes: &[(usize, u64)], bytes: u32) {
        if lanes.is_empty() {
            return;
        }
        let (wavefronts, ideal) = shared_wavefronts(lanes, bytes);
        let c = &mut self.counters;
        match kind {
            SharedKind::Load => {
                c.shared_load_requests += 1;
                c.shared_load_wavefronts += wavefronts;
                c.shared_load_wavefronts_ideal += ideal;
            }
            SharedKind::Store => {
                c.shared_store_requests += 1;
                c.shared_store_wavefronts += wavefronts;
                c.shared_store_wavefronts_ideal += ideal;
            }
        }
    }

    /// One `wgmma.mma_async` (per warpgroup) whose descriptor operands are the core
    /// matrices with the 16-byte row addresses `core_rows`.
    pub(super) fn wgmma(&mut self, core_rows: &[[u64; 8]]) {
        let c = &mut self.counters;
        c.wgmma_requests += 1;
        c.wgmma_shared_read_bytes += 128 * core_rows.len() as u64;
        c.wgmma_shared_wavefronts += core_rows.iter().map(core_matrix_wavefronts).sum::<u64>();
        c.wgmma_shared_wavefronts_ideal += core_rows.len() as u64;
    }

    /// One `ldmatrix` of `num` matrices whose row addresses are `rows[..8 * num]`.
    pub(super) fn ldmatrix(&mut self, num: usize, rows: &[u64; 32]) {
        let c = &mut self.counters;
        c.ldmatrix_requests += 1;
        c.ldmatrix_wavefronts += ldmatrix_wavefronts(num, rows);
        c.ldmatrix_wavefronts_ideal += num as u64;
    }

    /// The counters of the launch, with the distinct sectors taken and, when only
    /// `ctas_run` of `ctas_total` CTAs ran, every count extrapolated to the whole grid;
    /// `per_dim[d]` is grid size / sampled coordinates along dimension `d` (all 1 when every
    /// CTA ran).
    pub(super) fn finish(mut self, ctas_total: u64, ctas_run: u64, per_dim: [f64; 3]) -> Counters {
        let mut c = std::mem::take(&mut self.counters);
        if ctas_run > 0 && ctas_run < ctas_total {
            for x in c.counts_mut() {
                *x = scale_rounded(*x, ctas_total, ctas_run);
            }
        }
        c.dram_read_sectors_seen = self.read_sectors.len() as u64;
        c.dram_write_sectors_seen = self.written_sectors.len() as u64;
        c.dram_read_sectors = estimate_distinct(&self.read_sectors, per_dim);
        c.dram_write_sectors = estimate_distinct(&self.written_sectors, per_dim);
        c.ctas_total = ctas_total;
        c.ctas_run = ctas_run;
        c
    }
}

/// The sub-grid a launch of `grid` samples with a budget of `budget` CTAs: for each
/// dimension, the coordinates that run (increasing; the CTAs run are their crossings).
///
/// Dimensions get two coordinates each, x then y, while the budget allows; then x gets four
/// if the budget allows it, then z two; then more go to the dimension with the most CTAs
/// per coordinate. (x is where the shipped kernels tile the sequence or a matrix's columns,
/// z where they put the batch, whose data is private: one coordinate of z costs nothing.)
/// Two coordinates are the first and the last; three add the middle; four or more are
/// adjacent pairs at both ends (0, 1, .., G-2, G-1) with the rest evenly between. The
/// pairs are what let a causal kernel's data be seen shared: attention's query blocks G-1
/// and G-2 read the same keys and values (all but one block of them), as do blocks 0 and 1
/// in a backward pass that walks the other way; a pair at one end only would see that data
/// as private to the last block and scale it by the grid. A budget of at least the grid's
/// size runs every CTA.
pub fn sample_grid(grid: [u32; 3], budget: u64) -> [Vec<u32>; 3] {
    let mut take = [1u64; 3];
    for (d, want) in [(0, 2), (1, 2), (0, 4), (2, 2)] {
        let others: u64 = (0..3).filter(|&o| o != d).map(|o| take[o]).product();
        if u64::from(grid[d]) >= want && take[d] < want && others * want <= budget {
            take[d] = want;
        }
    }
    loop {
        let used: u64 = take.iter().product();
        let next = (0..3)
            .filter(|&d| take[d] < u64::from(grid[d]))
            .filter(|&d| used / take[d] * (take[d] + 1) <= budget)
            .max_by(|&a, &b| {
                let per = |d: usize| f64::from(grid[d]) / take[d] as f64;
                per(a).total_cmp(&per(b)).then(b.cmp(&a))
            });
        match next {
            Some(d) => take[d] += 1,
            None => break,
        }
    }
    std::array::from_fn(|d| coordinates(take[d], u64::from(grid[d])))
}

/// `n` of the coordinates `0..g` (`n <= g`), as [`sample_grid`] places them.
fn coordinates(n: u64, g: u64) -> Vec<u32> {
    let pick: Vec<u64> = match n {
        0 | 1 => vec![0],
        2 | 3 => (0..n).map(|i| i * (g - 1) / (n - 1)).collect(),
        _ => {
            // 0 and 1, then n - 4 strictly between 1 and g - 2, then g - 2 and g - 1.
            let inner = n - 4;
            let mut v = vec![0, 1];
            v.extend((1..=inner).map(|i| 1 + i * (g - 3) / (inner + 1)));
            v.extend([g - 2, g - 1]);
            v
        }
    };
    // Each coordinate is below `g`, a u32.
    pick.into_iter().map(|c| c as u32).collect()
}

/// `x · total / run`, rounded to nearest (halves up), without overflow.
fn scale_rounded(x: u64, total: u64, run: u64) -> u64 {
    let v = (u128::from(x) * u128::from(total) + u128::from(run / 2)) / u128::from(run);
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_load_is_one_sector_and_ideal() {
        let broadcast: Vec<_> = (0..32).map(|_| (64u64, 4u32)).collect();
        let mut r = Recorder::default();
        r.global(GlobalKind::Load, &broadcast);
        assert_eq!(r.counters.global_load_sectors, 1);
        assert_eq!(r.counters.global_load_sectors_ideal, 1);
    }

    #[test]
    fn extrapolation_scales_and_rounds() {
        assert_eq!(scale_rounded(3, 64, 8), 24);
        assert_eq!(scale_rounded(1, 3, 2), 2); // 1.5 rounds up
        assert_eq!(scale_rounded(1, 5, 4), 1); // 1.25 rounds down
        let mut r = Recorder::default();
        r.counters.instructions = 10;
        r.global(GlobalKind::Load, &[(0, 4), (32, 4)]);
        let c = r.finish(10, 5, [2.0, 1.0, 1.0]);
        assert_eq!(c.instructions, 20);
        assert_eq!(c.global_load_sectors, 4);
        assert_eq!(c.dram_read_sectors, 4);
        assert!(c.extrapolated());
    }

    #[test]
    fn sample_grids_take_two_per_dimension_then_pairs_along_x() {
        assert_eq!(
            sample_grid([32, 32, 1], 4),
            [vec![0, 31], vec![0, 31], vec![0]]
        );
        assert_eq!(
            sample_grid([1000, 1, 1], 4),
            [vec![0, 1, 998, 999], vec![0], vec![0]]
        );
        assert_eq!(
            sample_grid([1000, 1, 1], 6),
            [vec![0, 1, 333, 665, 998, 999], vec![0], vec![0]]
        );
        assert_eq!(sample_grid([9, 1, 1], 3), [vec![0, 4, 8], vec![0], vec![0]]);
        // Two each for the two largest dimensions; a third would need 8.
        assert_eq!(
            sample_grid([8, 12, 4], 4),
            [vec![0, 7], vec![0, 11], vec![0]]
        );
        // Then pairs at both ends of x before a second z.
        assert_eq!(
            sample_grid([8, 12, 4], 8),
            [vec![0, 1, 6, 7], vec![0, 11], vec![0]]
        );
        assert_eq!(
            sample_grid([8, 12, 4], 16),
            [vec![0, 1, 6, 7], vec![0, 11], vec![0, 3]]
        );
        assert_eq!(
            sample_grid([16, 12, 1], 8),
            [vec![0, 1, 14, 15], vec![0, 11], vec![0]]
        );
        // A budget of the whole grid runs all of it.
        assert_eq!(
            sample_grid([3, 2, 1], 6),
            [vec![0, 1, 2], vec![0, 1], vec![0]]
        );
        assert_eq!(
            sample_grid([6, 1, 1], 6),
            [vec![0, 1, 2, 3, 4, 5], vec![0], vec![0]]
        );
        assert_eq!(sample_grid([5, 1, 1], 1), [vec![0], vec![0], vec![0]]);
    }

    #[test]
    fn distinct_sectors_are_scaled_only_along_dimensions_they_were_not_seen_shared() {
        // A 2 x 2 sample of a 16 x 8 grid: sector 1 read by (0,0) and (15,0): shared along
        // x, so one per sampled y coordinate, x 4 = 8 rows of them; sector 2 read by one
        // CTA: private, x 32; sector 3 read by (0,0) and (15,7): shared along both, x 1.
        let mut r = Recorder::default();
        for (cta, sectors) in [
            ([0, 0, 0], vec![1u64, 2, 3]),
            ([15, 0, 0], vec![1]),
            ([15, 7, 0], vec![3]),
        ] {
            r.cta = cta;
            let lanes: Vec<(u64, u32)> = sectors.iter().map(|&s| (s * 32, 4)).collect();
            r.global(GlobalKind::Load, &lanes);
        }
        let c = r.finish(128, 4, [8.0, 4.0, 1.0]);
        assert_eq!(c.dram_read_sectors_seen, 3);
        assert_eq!(c.dram_read_sectors, 4 + 32 + 1);
    }

    #[test]
    fn add_sums_every_count() {
        let mut r = Recorder::default();
        r.counters.instructions_by_class[InstClass::Tensor as usize] = 2;
        r.global(GlobalKind::Atomic, &[(0, 4)]);
        let one = r.finish(3, 3, [1.0; 3]);
        let mut sum = one.clone();
        sum.add(&one);
        assert_eq!(sum.class(InstClass::Tensor), 4);
        assert_eq!(sum.global_atomic_requests, 2);
        assert_eq!(sum.dram_read_sectors, 2);
        assert_eq!(sum.dram_write_sectors, 2);
        assert_eq!((sum.ctas_total, sum.ctas_run), (6, 6));
        assert!(!sum.extrapolated());
    }
}
