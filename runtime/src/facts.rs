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
