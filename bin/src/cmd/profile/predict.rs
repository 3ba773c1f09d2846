//! From counted launches to a prediction: each launch's counters become the
//! roofline's work, the roofline of a GPU model gives its time and limiting
//! bound, and launches of one kernel are summed into a row. Every figure here
//! is a prediction from emulated counters, and is printed as one.

use frugal_ptx::emu::Counters;
use frugal_ptx::occupancy::{self, Occupancy};
use frugal_ptx::resources;
use frugal_runtime::device::emu::LaunchRecord;
use frugal_runtime::facts::{DeviceFacts, Roofline};
use frugal_runtime::roofline::{self, Bound, KernelWork, Prediction};

/// Bytes in a DRAM/L2 sector.
const SECTOR: f64 = 32.0;

/// Per-family time factors (`--calibration`): measured ÷ predicted.
pub type Calibration = Vec<(String, f64)>;

/// How the DRAM traffic of a launch whose CTAs were sampled is estimated.
///
/// The emulator runs a sub-grid of CTAs and weighs each distinct sector by the
/// sharing it showed: a sector CTAs at two sampled coordinates of a grid
/// dimension both touched is shared along that dimension (a matmul's panel of A
/// along a grid row) and is not scaled along it ([`Counters::dram_read_sectors`]).
/// That is exact for data private to a CTA or shared along whole grid rows,
/// columns or planes. The upper end scales every sector the sample touched to
/// the whole grid as if no CTA shared it. A profile predicts with the estimate
/// and says the upper end where it differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DramEstimate {
    /// The emulator's sharing-aware estimate.
    Estimated,
    /// Every sampled sector scaled by total/sampled CTAs (no sharing): an upper estimate.
    AllPrivate,
}

/// The kernel family a calibration factor applies to: the name's first word
/// (`matmul_tc_64x64x32_nt_f32` -> `matmul`).
pub fn family(kernel: &str) -> &str {
    kernel.split('_').next().unwrap_or(kernel)
}

/// Bytes of shared memory one wavefront moves (32 banks x 4 bytes).
const SHARED_LINE: u64 = 128;

/// The resource table's answer for `sm` (sm_86/89 take sm_80's figures; the
/// table is assembled for sm_80 and sm_90a; later GPUs run the sm_80 kernels).
fn usage_sm(sm: u32) -> u32 {
    if frugal_ptx::catalogue::Target::Sm90a.runs_on(sm) {
        90
    } else {
        80
    }
}

/// One launch's work for the roofline, and its occupancy on `gpu`.
pub fn work(
    r: &LaunchRecord,
    gpu: &DeviceFacts,
    dram: DramEstimate,
) -> (KernelWork, Option<Occupancy>) {
    let c = &r.counters;
    let dram_sectors = match dram {
        DramEstimate::AllPrivate if c.extrapolated() && c.ctas_run > 0 => {
            (c.dram_read_sectors_seen + c.dram_write_sectors_seen) as f64 * c.ctas_total as f64
                / c.ctas_run as f64
        }
        _ => (c.dram_read_sectors + c.dram_write_sectors) as f64,
    };
    let threads = r.dims.block.iter().product::<u32>();
    let occ = resources::usage(usage_sm(gpu.sm), &r.kernel).and_then(|u| {
        let smem = u32::try_from(u.shared_bytes)
            .unwrap_or(u32::MAX)
            .saturating_add(r.dims.dynamic_shared_bytes);
        occupancy::occupancy(gpu.sm, threads, u.registers, smem)
    });
    let float_warp_insts = c.class(frugal_ptx::emu::InstClass::Float) as f64;
    let work = KernelWork {
        ctas: c.ctas_total,
        threads_per_cta: threads,
        warp_instructions: c.instructions,
        tensor_flops: c.tensor_flops as f64,
        // A float warp instruction is at least 32 lane operations: a lower
        // bound of the FP32 work (an FMA counts once, not twice).
        fp32_flops: float_warp_insts * 32.0,
        dram_bytes: dram_sectors * SECTOR,
        // TMA and bulk copies go through L2 like the threads' loads: their sectors count.
        l2_bytes: (c.global_load_sectors
            + c.global_store_sectors
            + c.global_atomic_sectors
            + c.cp_async_sectors
            + c.bulk_sectors) as f64
            * SECTOR,
        // A bulk copy moves whole 128-byte lines of shared memory: one wavefront each.
        // wgmma's descriptor reads count by core matrix (the emulator's model).
        shared_wavefronts: c.shared_load_wavefronts
            + c.shared_store_wavefronts
            + c.ldmatrix_wavefronts
            + c.wgmma_shared_wavefronts
            + (c.bulk_shared_write_bytes + c.bulk_shared_read_bytes).div_ceil(SHARED_LINE),
        occupancy: occ.map(|o| o.fraction),
        blocks_per_sm: occ.map(|o| o.blocks_per_sm),
    };
    (work, occ)
}

/// One kernel's launches, summed.
#[derive(Clone, Debug)]
pub struct Row {
    pub kernel: String,
    pub launches: usize,
    /// Predicted seconds, all launches, calibrated when a factor applies.
    pub time_s: f64,
    /// The bound with the most predicted time over the launches.
    pub bound: Bound,
    /// Global-memory 32-byte sectors per request (loads, stores, atomics).
    pub sectors_per_request: Option<f64>,
    /// Ideal ÷ actual global sectors: 1 is perfectly coalesced.
    pub coalescing: Option<f64>,
    /// Shared-memory bank conflicts per request (ld, st, ldmatrix, wgmma operand reads).
    pub conflicts_per_request: Option<f64>,
    /// Theoretical occupancy (fraction of the SM's warps), from the resource table.
    pub occupancy: Option<Occupancy>,
    /// Tensor-pipe time ÷ predicted time, time-weighted over the launches.
    pub tensor_utilisation: f64,
    /// The calibration factor applied, if any.
    pub factor: Option<f64>,
    pub counters: Counters,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// What a launch's (or a sum of launches') counters say about its memory accesses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratios {
    /// Global-memory 32-byte sectors per request (loads, stores, atomics).
    pub sectors_per_request: Option<f64>,
    /// Ideal ÷ actual global sectors: 1 is perfectly coalesced.
    pub coalescing: Option<f64>,
    /// Shared-memory bank conflicts per request (ld, st, ldmatrix, wgmma's operand reads).
    pub conflicts_per_request: Option<f64>,
}

/// The ratios of `c`; `None` where there is no request to divide by.
pub fn ratios(c: &Counters) -> Ratios {
    let requests = c.global_load_requests + c.global_store_requests + c.global_atomic_requests;
    let sectors = c.global_load_sectors + c.global_store_sectors + c.global_atomic_sectors;
    let ideal =
        c.global_load_sectors_ideal + c.global_store_sectors_ideal + c.global_atomic_sectors_ideal;
    let shared_requests =
        c.shared_load_requests + c.shared_store_requests + c.ldmatrix_requests + c.wgmma_requests;
    let conflicts = c.shared_load_bank_conflicts()
        + c.shared_store_bank_conflicts()
        + c.ldmatrix_bank_conflicts()
        + c.wgmma_shared_bank_conflicts();
    Ratios {
        sectors_per_request: ratio(sectors, requests),
        coalescing: ratio(ideal, sectors),
        conflicts_per_request: ratio(conflicts, shared_requests),
    }
}

/// The prediction of every launch of `records` on `gpu`, summed per kernel in
/// order of first launch.
pub fn rows(
    records: &[LaunchRecord],
    gpu: &DeviceFacts,
    line: &Roofline,
    calibration: &Calibration,
    dram: DramEstimate,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut bound_time: Vec<Vec<(Bound, f64)>> = Vec::new();
    for r in records {
        let (w, occ) = work(r, gpu, dram);
        let p: Prediction = roofline::predict(line, &w);
        let factor = calibration
            .iter()
            .find(|(f, _)| f == family(&r.kernel))
            .map(|(_, x)| *x);
        let t = p.time_s * factor.unwrap_or(1.0);
        let i = match rows.iter().position(|row| row.kernel == r.kernel) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    kernel: r.kernel.clone(),
                    launches: 0,
                    time_s: 0.0,
                    bound: p.bound,
                    sectors_per_request: None,
                    coalescing: None,
                    conflicts_per_request: None,
                    occupancy: occ,
                    tensor_utilisation: 0.0,
                    factor,
                    counters: Counters::default(),
                });
                bound_time.push(Vec::new());
                rows.len() - 1
            }
        };
        let row = &mut rows[i];
        row.launches += 1;
        row.time_s += t;
        row.tensor_utilisation += p.tensor_utilisation * t;
        row.counters.add(&r.counters);
        match bound_time[i].iter_mut().find(|(b, _)| *b == p.bound) {
            Some((_, bt)) => *bt += t,
            None => bound_time[i].push((p.bound, t)),
        }
    }
    for (row, bounds) in rows.iter_mut().zip(&bound_time) {
        if let Some((b, _)) = bounds.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            row.bound = *b;
        }
        if row.time_s > 0.0 {
            row.tensor_utilisation /= row.time_s;
        }
        let r = ratios(&row.counters);
        row.sectors_per_request = r.sectors_per_request;
        row.coalescing = r.coalescing;
        row.conflicts_per_request = r.conflicts_per_request;
    }
    rows
}

/// Predicted seconds of `records` on `gpu` (the sum over launches: one stream,
/// one launch after another).
pub fn total(rows: &[Row]) -> f64 {
    rows.iter().map(|r| r.time_s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_the_first_word() {
        assert_eq!(family("matmul_tc_64x64x32_nt_f32"), "matmul");
        assert_eq!(family("rmsnorm"), "rmsnorm");
    }
}
