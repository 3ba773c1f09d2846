//! Device facts: what frugal knows about a GPU model from its exact name.
//!
//! The table is keyed by the name the CUDA driver reports (`cuDeviceGetName`),
//! matched exactly. An unknown name gives `None`, and callers must then say
//! "unknown" (MFU, price) rather than guess from a similar-looking entry: a
//! wrong peak makes every MFU figure wrong without anyone noticing.
//!
//! Figures:
//! - `sm`: compute capability as major*10 + minor (sm_80 = 80).
//! - `memory_bytes_nominal`: the marketed capacity in GiB, as bytes. The
//!   runtime reads the real total and free bytes from the driver for the
//!   device it runs on; this figure is for `sweep`/`plan` on hardware that is
//!   not present, and is a little above what the driver reports (an
//!   "80GB" H100 reports about 79.2 GiB).
//! - `bf16_dense_flops`: NVIDIA's published peak dense (no 2:4 sparsity) BF16
//!   tensor-core FLOP/s with FP32 accumulation, at boost clock. For GeForce
//!   parts this is the FP32-accumulate figure, half of the FP16-accumulate one.
//!   `None` where no figure is published (AWS's A10G).
//! - `default_usd_per_gpu_hour`: a DEFAULT to override, with
//!   `--price-per-gpu-hour X` or `FRUGAL_PRICE_PER_GPU_HOUR`. Each entry names
//!   its `price_source` (provider and product) and `price_date` (YYYY-MM, when
//!   the listing was read): one provider's on-demand list price for one GPU-hour
//!   (Lambda where it lists the GPU, else RunPod's Secure Cloud, AWS for the
//!   A10G). Entries still marked [`TYPICAL_CLOUD_PRICE`] with the year only
//!   are rounded typical figures for which no listing was found. Cloud prices
//!   drift and vary by provider and region by a factor of two or more (the
//!   same H100 SXM is listed from about $2.7 to over $10 per GPU-hour); they
//!   make tokens/$ comparable between GPU types, they are not a quote.
//! - `paper_price_units`: the relative prices of Ashkboos et al. 2024
//!   (average of two clouds): A100-40GB 1.00, A100-80GB 1.46, H100-80GB 2.53,
//!   used with `--price-units paper`. Only the three SXM parts the paper
//!   measured carry them; every other device has `None`.
//! - `roofline`: the throughput figures `frugal profile` predicts kernel times
//!   from ([`Roofline`], used by [`crate::roofline::predict`]); each figure's
//!   source is on the field and next to the entry, and figures that are
//!   estimates rather than published are listed in [`Roofline::estimated`].

/// What frugal knows about one GPU model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceFacts {
    /// The name exactly as the CUDA driver reports it (`cuDeviceGetName`).
    pub name: &'static str,
    /// A short label for tables and plots, e.g. "H100-SXM-80GB".
    pub label: &'static str,
    /// Compute capability as major*10 + minor: 80 for sm_80, 90 for sm_90.
    pub sm: u32,
    /// Marketed memory capacity in bytes (GiB × 2^30); see the module notes.
    pub memory_bytes_nominal: u64,
    /// Peak dense BF16 tensor-core FLOP/s (FP32 accumulate, no sparsity);
    /// `None` where NVIDIA publishes no figure (MFU is then "unknown").
    pub bf16_dense_flops: Option<f64>,
    /// Default price of one GPU for one hour, in USD; override it.
    pub default_usd_per_gpu_hour: f64,
    /// Where `default_usd_per_gpu_hour` comes from, for tables that cite it.
    pub price_source: &'static str,
    /// When that source listed the price (YYYY or YYYY-MM).
    pub price_date: &'static str,
    /// The paper's relative price (A100-40GB = 1.00), where the paper has one.
    pub paper_price_units: Option<f64>,
    /// Throughput figures for the roofline prediction of kernel times.
    pub roofline: Option<Roofline>,
}

/// What bounds a kernel's speed on one GPU model: the figures the roofline
/// prediction ([`crate::roofline::predict`]) divides a kernel's work by.
///
/// Rates are whole-GPU peaks at [`Roofline::boost_clock_ghz`]. That clock is
/// the one NVIDIA's data-sheet peaks are computed at (peak ÷ (SMs × per-SM
/// FLOP per clock)), which for some parts is below the maximum boost clock the
/// driver reports; using it keeps the tensor, issue and shared-memory bounds
/// consistent with the published peaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofline {
    /// Streaming multiprocessors.
    pub sms: u32,
    /// SM clock in GHz at which the peaks below hold (see the type's notes).
    pub boost_clock_ghz: f64,
    /// Dense BF16 FLOP/s (FP32 accumulate) that `mma.sync.m16n8k16` can reach.
    /// On Ampere and Ada this is the data-sheet peak (`mma.sync` is the native
    /// tensor-core instruction there). On Hopper the data-sheet peak needs the
    /// asynchronous warpgroup `wgmma`; `mma.sync` reaches about 2/3 of it
    /// (Shah et al. 2024, "FlashAttention-3", arXiv 2407.08608, section 2: "the
    /// older mma.sync instruction can only reach about 2/3 the peak throughput
    /// of the Hopper Tensor Cores"), so Hopper entries use 2/3 of the peak: an
    /// estimate from that ratio, not a published figure.
    pub mma_sync_bf16_flops: f64,
    /// Peak FP32 FLOP/s on the CUDA cores (an FMA counts 2), from the data sheet.
    pub fp32_flops: f64,
    /// Warp instructions one SM can issue per clock: one per warp scheduler,
    /// four schedulers per SM since Volta (Ampere, Ada and Hopper white papers:
    /// four processing blocks per SM). Also the rate of INT32 and other simple
    /// instructions, which are issue-bound at one warp instruction per
    /// scheduler per clock.
    pub warp_issue_per_clock_per_sm: u32,
    /// DRAM (HBM or GDDR) bandwidth in bytes/s, from the data sheet.
    pub dram_bytes_per_s: f64,
    /// L2 cache bandwidth in bytes/s, where there is a basis for one; `None`
    /// where NVIDIA publishes none and no estimate is made (the prediction
    /// then leaves the L2 bound out and says so).
    pub l2_bytes_per_s: Option<f64>,
    /// Shared-memory bandwidth of one SM in bytes per clock: 32 banks of 4
    /// bytes each per clock (CUDA C++ Programming Guide, "Shared Memory" for
    /// compute capabilities 8.x and 9.0), i.e. one 128-byte wavefront per clock.
    pub smem_bytes_per_clock_per_sm: u32,
    /// Fixed cost of one kernel launch in seconds, added to every prediction.
    /// An estimate: NVIDIA's "Getting Started with CUDA Graphs" (developer
    /// blog, 2019) measures a few microseconds per short kernel launched from a
    /// stream, and CUDA Graphs remove part of it. frugal uses 3 µs everywhere.
    pub launch_overhead_s: f64,
    /// Which figures of this entry are estimates, in words (empty: none).
    pub estimated: &'static str,
}

impl Roofline {
    /// The SM clock in Hz.
    pub fn clock_hz(&self) -> f64 {
        self.boost_clock_ghz * 1e9
    }
}

/// Launch overhead used for every GPU (see [`Roofline::launch_overhead_s`]).
pub const LAUNCH_OVERHEAD_S: f64 = 3e-6;
/// Four warp schedulers per SM (see [`Roofline::warp_issue_per_clock_per_sm`]).
const SCHEDULERS_PER_SM: u32 = 4;
/// 32 banks × 4 bytes (see [`Roofline::smem_bytes_per_clock_per_sm`]).
const SMEM_BYTES_PER_CLOCK: u32 = 128;
/// GA100's L2 read bandwidth per clock: "5120 Bytes/clk" (NVIDIA A100 Tensor
/// Core GPU Architecture white paper, 2020, section on the L2 cache, against
/// V100's 2048).
const GA100_L2_BYTES_PER_CLOCK: f64 = 5120.0;
/// NVIDIA publishes no L2 bandwidth for GH100. Estimate: GA100's bytes per
/// clock at the Hopper clock (both are two-partition L2s serving 108-132 SMs;
/// microbenchmarks of Hopper, e.g. Luo et al. 2025, arXiv 2501.12084, find its
/// L2 throughput no lower than A100's).
const GH100_L2_BYTES_PER_CLOCK_ESTIMATE: f64 = 5120.0;
const HOPPER_ESTIMATES: &str = "mma_sync_bf16_flops (2/3 of the wgmma peak), l2_bytes_per_s (GA100's bytes per clock), launch_overhead_s";
const LAUNCH_ONLY_ESTIMATE: &str = "launch_overhead_s";
const GBPS: f64 = 1e9;

/// A roofline from its SM count, clock and rates (see [`Roofline`] for what each
/// means); the scheduler count, shared-memory width and launch overhead are the
/// same for every part here.
const fn roofline_of(
    sms: u32,
    boost_clock_ghz: f64,
    mma_sync_bf16_flops: f64,
    fp32_flops: f64,
    dram_bytes_per_s: f64,
    l2_bytes_per_s: Option<f64>,
    estimated: &'static str,
) -> Option<Roofline> {
    Some(Roofline {
        sms,
        boost_clock_ghz,
        mma_sync_bf16_flops,
        fp32_flops,
        warp_issue_per_clock_per_sm: SCHEDULERS_PER_SM,
        dram_bytes_per_s,
        l2_bytes_per_s,
        smem_bytes_per_clock_per_sm: SMEM_BYTES_PER_CLOCK,
        launch_overhead_s: LAUNCH_OVERHEAD_S,
        estimated,
    })
}

/// The source of a default price that is a rounded typical figure rather than
/// one provider's list price.
pub const TYPICAL_CLOUD_PRICE: &str =
    "typical on-demand price of one GPU at specialised GPU clouds (rounded)";

/// Lambda's on-demand price of a 1-GPU instance, per GPU-hour.
const LAMBDA_1X: &str = "Lambda on-demand, 1-GPU instance (lambda.ai pricing page as transcribed by public price trackers)";
/// Lambda lists these A100s only as 8-GPU instances; the price is per GPU-hour.
const LAMBDA_8X_A100_40: &str = "Lambda on-demand, 8x A100 SXM 40 GB instance, per GPU (lambda.ai pricing page as transcribed by public price trackers)";
const LAMBDA_8X_A100_80: &str = "Lambda on-demand, 8x A100 SXM 80 GB instance, per GPU (lambda.ai pricing page as transcribed by public price trackers)";
/// RunPod's Secure Cloud (its own data centres; Community Cloud is cheaper).
const RUNPOD_SECURE: &str =
    "RunPod Secure Cloud on-demand, per GPU (runpod.io/pricing as transcribed by a public price tracker)";
/// AWS sells the A10G only inside instances: g5.xlarge is one A10G with 4 vCPUs.
const AWS_G5_XLARGE: &str =
    "AWS EC2 on-demand g5.xlarge (1 A10G, 4 vCPU, Linux, us-east-1), whole instance, as quoted by a third-party EC2 pricing article";

const GIB: u64 = 1 << 30;
const TFLOPS: f64 = 1e12;

/// Every GPU model frugal has facts for. Peaks are from NVIDIA's data sheets
/// and architecture white papers (dense BF16 = half the "with sparsity" figure).
pub static DEVICES: &[DeviceFacts] = &[
    // Ampere data centre (GA100): 312 TFLOPS dense BF16 for SXM4 and PCIe alike.
    DeviceFacts {
        name: "NVIDIA A100-SXM4-40GB",
        label: "A100-SXM-40GB",
        sm: 80,
        memory_bytes_nominal: 40 * GIB,
        bf16_dense_flops: Some(312.0 * TFLOPS),
        default_usd_per_gpu_hour: 1.99,
        price_source: LAMBDA_8X_A100_40,
        price_date: "2026-09",
        paper_price_units: Some(1.00),
        // 108 SMs at 1410 MHz: 108 × 2048 dense BF16 FLOP/clk = 312 TFLOPS; FP32
        // 19.5 TFLOPS; HBM2 1555 GB/s (A100 data sheet; A100 white paper).
        roofline: roofline_of(108, 1.41, 312.0 * TFLOPS, 19.5 * TFLOPS, 1555.0 * GBPS,
            Some(GA100_L2_BYTES_PER_CLOCK * 1.41e9), LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA A100-SXM4-80GB",
        label: "A100-SXM-80GB",
        sm: 80,
        memory_bytes_nominal: 80 * GIB,
        bf16_dense_flops: Some(312.0 * TFLOPS),
        default_usd_per_gpu_hour: 2.79,
        price_source: LAMBDA_8X_A100_80,
        price_date: "2026-09",
        paper_price_units: Some(1.46),
        // As the 40 GB part, with HBM2e at 2039 GB/s (A100 data sheet).
        roofline: roofline_of(108, 1.41, 312.0 * TFLOPS, 19.5 * TFLOPS, 2039.0 * GBPS,
            Some(GA100_L2_BYTES_PER_CLOCK * 1.41e9), LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA A100-PCIE-40GB",
        label: "A100-PCIe-40GB",
        sm: 80,
        memory_bytes_nominal: 40 * GIB,
        bf16_dense_flops: Some(312.0 * TFLOPS),
        default_usd_per_gpu_hour: 1.19,
        price_source: TYPICAL_CLOUD_PRICE,
        price_date: "2025",
        paper_price_units: None,
        // Same GA100 configuration and peaks as the SXM4 part, 1555 GB/s (A100
        // data sheet); its lower power limit makes sustained clocks lower.
        roofline: roofline_of(108, 1.41, 312.0 * TFLOPS, 19.5 * TFLOPS, 1555.0 * GBPS,
            Some(GA100_L2_BYTES_PER_CLOCK * 1.41e9), LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA A100 80GB PCIe",
        label: "A100-PCIe-80GB",
        sm: 80,
        memory_bytes_nominal: 80 * GIB,
        bf16_dense_flops: Some(312.0 * TFLOPS),
        default_usd_per_gpu_hour: 1.59,
        price_source: RUNPOD_SECURE,
        price_date: "2026-09",
        paper_price_units: None,
        // 1935 GB/s HBM2e (A100 data sheet, PCIe 80GB column).
        roofline: roofline_of(108, 1.41, 312.0 * TFLOPS, 19.5 * TFLOPS, 1935.0 * GBPS,
            Some(GA100_L2_BYTES_PER_CLOCK * 1.41e9), LAUNCH_ONLY_ESTIMATE),
    },
    // Ampere GA102: A10 (data centre), RTX 3090 (FP32-accumulate rate).
    DeviceFacts {
        name: "NVIDIA A10",
        label: "A10",
        sm: 86,
        memory_bytes_nominal: 24 * GIB,
        bf16_dense_flops: Some(125.0 * TFLOPS),
        default_usd_per_gpu_hour: 1.29,
        price_source: LAMBDA_1X,
        price_date: "2026-09",
        paper_price_units: None,
        // GA102, 72 SMs at 1695 MHz: 72 × 1024 dense BF16 FLOP/clk = 125 TFLOPS;
        // FP32 31.2 TFLOPS; GDDR6 600 GB/s (A10 data sheet). No L2 figure.
        roofline: roofline_of(72, 1.695, 125.0 * TFLOPS, 31.2 * TFLOPS, 600.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
    // AWS's A10G (G5 instances): GA102 like the A10, sm_86, 24 GB GDDR6.
    // Neither NVIDIA nor AWS publishes a tensor-core figure for it (AWS's G5
    // page gives none; NVIDIA has no A10G data sheet), so its peak is unknown
    // rather than borrowed from the A10, whose clocks and tensor rate differ.
    DeviceFacts {
        name: "NVIDIA A10G",
        label: "A10G",
        sm: 86,
        memory_bytes_nominal: 24 * GIB,
        bf16_dense_flops: None,
        default_usd_per_gpu_hour: 1.006,
        price_source: AWS_G5_XLARGE,
        price_date: "2026-06",
        paper_price_units: None,
        // ESTIMATE throughout: 80 SMs and a 1710 MHz maximum clock as
        // deviceQuery reports them on AWS G5 instances (public deviceQuery logs),
        // the A10's per-SM tensor rate (1024 dense BF16 FLOP/clk, full-rate FP32
        // accumulate as on the data-centre GA102) and 256 FP32 FLOP/clk; the
        // A10's 600 GB/s GDDR6, the figure commonly given for the A10G (AWS's G5
        // page gives none). `bf16_dense_flops` stays None: MFU needs a
        // published peak, a prediction can live with a labelled estimate.
        roofline: roofline_of(80, 1.71, 80.0 * 1024.0 * 1.71e9, 80.0 * 256.0 * 1.71e9,
            600.0 * GBPS, None,
            "sms, boost_clock_ghz, mma_sync_bf16_flops, fp32_flops (deviceQuery and the A10's per-SM rates), dram_bytes_per_s (the A10's), launch_overhead_s"),
    },
    DeviceFacts {
        name: "NVIDIA GeForce RTX 3090",
        label: "RTX-3090",
        sm: 86,
        memory_bytes_nominal: 24 * GIB,
        bf16_dense_flops: Some(71.0 * TFLOPS),
        default_usd_per_gpu_hour: 0.25,
        price_source: TYPICAL_CLOUD_PRICE,
        price_date: "2025",
        paper_price_units: None,
        // GA102, 82 SMs at 1695 MHz; GeForce tensor rate with FP32 accumulate is
        // half the FP16-accumulate one: 82 × 512 × 1.695 GHz = 71 TFLOPS; FP32
        // 35.6 TFLOPS; GDDR6X 936 GB/s (GeForce RTX 3090 specifications; Ampere
        // GA102 white paper, appendix). No L2 figure.
        roofline: roofline_of(82, 1.695, 71.0 * TFLOPS, 35.6 * TFLOPS, 936.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
    // Hopper (GH100). "H100 80GB HBM3" is the SXM5 part.
    DeviceFacts {
        name: "NVIDIA H100 80GB HBM3",
        label: "H100-SXM-80GB",
        sm: 90,
        memory_bytes_nominal: 80 * GIB,
        bf16_dense_flops: Some(989.4 * TFLOPS),
        default_usd_per_gpu_hour: 4.29,
        price_source: LAMBDA_1X,
        price_date: "2026-09",
        paper_price_units: Some(2.53),
        // 132 SMs; 989.4 TFLOPS = 132 × 4096 dense BF16 FLOP/clk at 1830 MHz
        // (H100 data sheet; Hopper white paper); FP32 67 TFLOPS; HBM3 3.35 TB/s.
        roofline: roofline_of(132, 1.83, 989.4 * TFLOPS * 2.0 / 3.0, 67.0 * TFLOPS,
            3350.0 * GBPS, Some(GH100_L2_BYTES_PER_CLOCK_ESTIMATE * 1.83e9), HOPPER_ESTIMATES),
    },
    DeviceFacts {
        name: "NVIDIA H100 PCIe",
        label: "H100-PCIe-80GB",
        sm: 90,
        memory_bytes_nominal: 80 * GIB,
        bf16_dense_flops: Some(756.0 * TFLOPS),
        default_usd_per_gpu_hour: 3.29,
        price_source: LAMBDA_1X,
        price_date: "2026-09",
        paper_price_units: None,
        // 114 SMs; 756 TFLOPS = 114 × 4096 at about 1620 MHz; FP32 51.2 TFLOPS;
        // HBM2e 2.0 TB/s (H100 data sheet, PCIe column).
        roofline: roofline_of(114, 1.62, 756.0 * TFLOPS * 2.0 / 3.0, 51.2 * TFLOPS,
            2000.0 * GBPS, Some(GH100_L2_BYTES_PER_CLOCK_ESTIMATE * 1.62e9), HOPPER_ESTIMATES),
    },
    DeviceFacts {
        name: "NVIDIA H100 NVL",
        label: "H100-NVL-94GB",
        sm: 90,
        memory_bytes_nominal: 94 * GIB,
        bf16_dense_flops: Some(835.5 * TFLOPS),
        default_usd_per_gpu_hour: 3.19,
        price_source: RUNPOD_SECURE,
        price_date: "2026-09",
        paper_price_units: None,
        // 132 SMs; 835.5 TFLOPS = 132 × 4096 at about 1545 MHz; FP32 60 TFLOPS;
        // HBM3 3.9 TB/s (H100 NVL data sheet / product brief).
        roofline: roofline_of(132, 1.545, 835.5 * TFLOPS * 2.0 / 3.0, 60.0 * TFLOPS,
            3900.0 * GBPS, Some(GH100_L2_BYTES_PER_CLOCK_ESTIMATE * 1.545e9), HOPPER_ESTIMATES),
    },
    DeviceFacts {
        name: "NVIDIA H200",
        label: "H200-SXM-141GB",
        sm: 90,
        memory_bytes_nominal: 141 * GIB,
        bf16_dense_flops: Some(989.4 * TFLOPS),
        default_usd_per_gpu_hour: 4.59,
        price_source: RUNPOD_SECURE,
        price_date: "2026-09",
        paper_price_units: None,
        // GH100 as the H100 SXM (same peaks), HBM3e 4.8 TB/s (H200 data sheet).
        roofline: roofline_of(132, 1.83, 989.4 * TFLOPS * 2.0 / 3.0, 67.0 * TFLOPS,
            4800.0 * GBPS, Some(GH100_L2_BYTES_PER_CLOCK_ESTIMATE * 1.83e9), HOPPER_ESTIMATES),
    },
    DeviceFacts {
        name: "NVIDIA H200 NVL",
        label: "H200-NVL-141GB",
        sm: 90,
        memory_bytes_nominal: 141 * GIB,
        bf16_dense_flops: Some(835.5 * TFLOPS),
        default_usd_per_gpu_hour: 3.49,
        price_source: TYPICAL_CLOUD_PRICE,
        price_date: "2025",
        paper_price_units: None,
        // As the H100 NVL's peaks (835.5 TFLOPS, FP32 60), HBM3e 4.8 TB/s (H200
        // data sheet, NVL column).
        roofline: roofline_of(132, 1.545, 835.5 * TFLOPS * 2.0 / 3.0, 60.0 * TFLOPS,
            4800.0 * GBPS, Some(GH100_L2_BYTES_PER_CLOCK_ESTIMATE * 1.545e9), HOPPER_ESTIMATES),
    },
    // Ada Lovelace. L4/L40/L40S are data-centre parts (full-rate FP32
    // accumulate); the RTX 4090 figure is its FP32-accumulate rate.
    DeviceFacts {
        name: "NVIDIA L4",
        label: "L4",
        sm: 89,
        memory_bytes_nominal: 24 * GIB,
        bf16_dense_flops: Some(121.0 * TFLOPS),
        default_usd_per_gpu_hour: 0.75,
        price_source: TYPICAL_CLOUD_PRICE,
        price_date: "2025",
        paper_price_units: None,
        // AD104, 58 SMs at 2040 MHz: 58 × 1024 dense BF16 FLOP/clk = 121 TFLOPS;
        // FP32 30.3 TFLOPS; GDDR6 300 GB/s (L4 data sheet; Ada white paper).
        roofline: roofline_of(58, 2.04, 121.0 * TFLOPS, 30.3 * TFLOPS, 300.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA L40",
        label: "L40",
        sm: 89,
        memory_bytes_nominal: 48 * GIB,
        bf16_dense_flops: Some(181.0 * TFLOPS),
        default_usd_per_gpu_hour: 0.99,
        price_source: TYPICAL_CLOUD_PRICE,
        price_date: "2025",
        paper_price_units: None,
        // AD102, 142 SMs at 2490 MHz: 142 × 512 = 181 TFLOPS dense BF16; FP32
        // 90.5 TFLOPS; GDDR6 864 GB/s (L40 data sheet).
        roofline: roofline_of(142, 2.49, 181.0 * TFLOPS, 90.5 * TFLOPS, 864.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA L40S",
        label: "L40S",
        sm: 89,
        memory_bytes_nominal: 48 * GIB,
        bf16_dense_flops: Some(362.05 * TFLOPS),
        default_usd_per_gpu_hour: 1.09,
        price_source: RUNPOD_SECURE,
        price_date: "2026-09",
        paper_price_units: None,
        // AD102, 142 SMs: 362 TFLOPS = 142 × 1024 at about 2490 MHz; FP32 91.6
        // TFLOPS; GDDR6 864 GB/s (L40S data sheet).
        roofline: roofline_of(142, 2.49, 362.05 * TFLOPS, 91.6 * TFLOPS, 864.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
    DeviceFacts {
        name: "NVIDIA GeForce RTX 4090",
        label: "RTX-4090",
        sm: 89,
        memory_bytes_nominal: 24 * GIB,
        bf16_dense_flops: Some(165.2 * TFLOPS),
        default_usd_per_gpu_hour: 0.74,
        price_source: RUNPOD_SECURE,
        price_date: "2026-09",
        paper_price_units: None,
        // AD102, 128 SMs at 2520 MHz: 128 × 512 (FP32 accumulate) = 165.2 TFLOPS;
        // FP32 82.6 TFLOPS; GDDR6X 1008 GB/s (Ada white paper, appendix table).
        roofline: roofline_of(128, 2.52, 165.2 * TFLOPS, 82.6 * TFLOPS, 1008.0 * GBPS, None,
            LAUNCH_ONLY_ESTIMATE),
    },
];

/// Facts for the device the driver names `name`, matched exactly (only
/// trailing NULs or whitespace from a C string are ignored). `None` for a
/// device not in the table: report MFU and price as unknown.
///
/// # Examples
/// ```
/// use frugal_runtime::facts::lookup;
/// let h100 = lookup("NVIDIA H100 80GB HBM3").unwrap();
/// assert_eq!(h100.sm, 90);
/// assert!(lookup("NVIDIA H100").is_none()); // never a near match
/// ```
pub fn lookup(name: &str) -> Option<&'static DeviceFacts> {
    let name = name.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
    DEVICES.iter().find(|d| d.name == name)
}

/// Facts for a device by its short label ("H100-SXM-80GB"), for `sweep`/`plan`
/// on hardware that is not present. Case-insensitive, exact otherwise.
pub fn lookup_label(label: &str) -> Option<&'static DeviceFacts> {
    DEVICES.iter().find(|d| d.label.eq_ignore_ascii_case(label))
}

/// Default price of one CPU core (one hardware thread, what
/// `std::thread::available_parallelism` counts) for one hour, in USD.
///
/// Derived from a general-purpose cloud VM on demand in 2025: a 2-vCPU
/// compute-optimised instance at about $0.09/hour, i.e. $0.045 per vCPU-hour
/// (a vCPU is one hardware thread). It is a DEFAULT to override with
/// `--price-per-gpu-hour` (which on the CPU backend means the price of the
/// whole machine per hour) or `FRUGAL_PRICE_PER_GPU_HOUR`.
pub const CPU_USD_PER_CORE_HOUR: f64 = 0.045;

/// Default price per hour of running on `cores` CPU hardware threads, in USD.
pub fn cpu_usd_per_hour(cores: usize) -> f64 {
    CPU_USD_PER_CORE_HOUR * cores as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_unique() {
        for (i, a) in DEVICES.iter().enumerate() {
            for b in &DEVICES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(
                    !a.label.eq_ignore_ascii_case(b.label),
                    "{} and {}",
                    a.label,
                    b.label
                );
            }
        }
    }

    #[test]
    fn paper_units_only_on_the_papers_three_gpus() {
        let with_units: Vec<&str> = DEVICES
            .iter()
            .filter(|d| d.paper_price_units.is_some())
            .map(|d| d.name)
            .collect();
        assert_eq!(
            with_units,
            [
                "NVIDIA A100-SXM4-40GB",
                "NVIDIA A100-SXM4-80GB",
                "NVIDIA H100 80GB HBM3"
            ]
        );
    }

    #[test]
    fn every_listed_price_names_its_source_and_month() {
        for d in DEVICES {
            assert!(d.default_usd_per_gpu_hour > 0.0, "{}", d.name);
            assert!(!d.price_source.is_empty(), "{}", d.name);
            // A provider's listing is dated to the month; only the typical
            // placeholder carries a bare year.
            let month = d.price_date.len() == 7 && d.price_date.as_bytes()[4] == b'-';
            let year_only = d.price_date.len() == 4;
            if d.price_source == TYPICAL_CLOUD_PRICE {
                assert!(year_only, "{}: {}", d.name, d.price_date);
            } else {
                assert!(month, "{}: {}", d.name, d.price_date);
            }
        }
        let a10g = lookup("NVIDIA A10G").unwrap();
        assert_eq!((a10g.sm, a10g.bf16_dense_flops), (86, None));
    }

    #[test]
    fn every_device_has_a_roofline_consistent_with_its_peak() {
        for d in DEVICES {
            let r = d
                .roofline
                .unwrap_or_else(|| panic!("{} has no roofline", d.label));
            assert!(
                r.sms > 0 && r.boost_clock_ghz > 1.0 && r.boost_clock_ghz < 3.0,
                "{}",
                d.label
            );
            assert!(
                r.dram_bytes_per_s > 1e11 && r.fp32_flops > 1e12,
                "{}",
                d.label
            );
            assert_eq!(
                (r.warp_issue_per_clock_per_sm, r.smem_bytes_per_clock_per_sm),
                (4, 128)
            );
            assert_eq!(r.launch_overhead_s, LAUNCH_OVERHEAD_S);
            // The tensor rate per SM per clock must be one of the architectures' own:
            // 512 (GeForce, FP32 accumulate), 1024 (GA102/AD10x data centre), 2048
            // (GA100), or 2/3 of GH100's 4096 for mma.sync. A typo in SMs, clock or
            // peak shows up here.
            let per_sm_clock = r.mma_sync_bf16_flops / (f64::from(r.sms) * r.clock_hz());
            let expected: &[f64] = if d.sm == 90 {
                &[4096.0 * 2.0 / 3.0]
            } else {
                &[512.0, 1024.0, 2048.0]
            };
            assert!(
                expected
                    .iter()
                    .any(|e| (per_sm_clock / e - 1.0).abs() < 0.01),
                "{}: {per_sm_clock} FLOP/clk/SM",
                d.label
            );
            match (d.sm, d.bf16_dense_flops) {
                // Hopper: mma.sync reaches 2/3 of the published (wgmma) peak.
                (90, Some(peak)) => {
                    assert!(
                        (r.mma_sync_bf16_flops / peak - 2.0 / 3.0).abs() < 1e-9,
                        "{}",
                        d.label
                    );
                    assert!(r.estimated.contains("mma_sync_bf16_flops"), "{}", d.label);
                }
                // Elsewhere mma.sync is the native instruction: the published peak.
                (_, Some(peak)) => assert_eq!(r.mma_sync_bf16_flops, peak, "{}", d.label),
                // No published peak (A10G): every derived figure is marked an estimate.
                (_, None) => assert!(r.estimated.contains("mma_sync_bf16_flops"), "{}", d.label),
            }
            assert!(r.estimated.contains("launch_overhead_s"), "{}", d.label);
            if r.l2_bytes_per_s.is_some() && d.sm == 90 {
                assert!(r.estimated.contains("l2_bytes_per_s"), "{}", d.label);
            }
        }
    }

    #[test]
    fn lookup_is_exact() {
        assert_eq!(lookup("NVIDIA A100-SXM4-80GB\0\0").map(|d| d.sm), Some(80));
        assert!(lookup("nvidia a100-sxm4-80gb").is_none());
        assert!(lookup("NVIDIA A100").is_none());
        assert!(lookup("").is_none());
        assert_eq!(
            lookup_label("h100-sxm-80gb").map(|d| d.name),
            Some("NVIDIA H100 80GB HBM3")
        );
    }
}
