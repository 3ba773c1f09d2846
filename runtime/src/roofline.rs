//! A roofline PREDICTION of one kernel launch's time on a GPU model, from what the launch
//! does (counted by the emulator) and the GPU's throughput figures ([`Roofline`]).
//!
//! The model: each resource the kernel uses gives a lower bound on its time, the work on that
//! resource divided by the resource's peak rate; the kernel can go no faster than its
//! slowest resource, so the prediction is the largest bound, plus a fixed launch overhead:
//!
//! | bound | time |
//! |---|---|
//! | [`Bound::Compute`] | tensor FLOPs ÷ the `mma.sync` BF16 rate, × quantisation |
//! | [`Bound::Fp32`] | FP32 FLOPs ÷ the FP32 rate, × quantisation |
//! | [`Bound::Issue`] | warp instructions ÷ (SMs × 4 schedulers × clock), × quantisation |
//! | [`Bound::Shared`] | shared-memory wavefronts ÷ (SMs × wavefronts per clock × clock), × quantisation |
//! | [`Bound::Dram`] | DRAM bytes ÷ DRAM bandwidth |
//! | [`Bound::L2`] | L2 bytes ÷ L2 bandwidth (left out where the GPU has no L2 figure) |
//! | [`Bound::Launch`] | the launch overhead, always added |
//!
//! **Wave quantisation.** A grid runs in waves of `SMs × blocks_per_sm` CTAs; a last, partial
//! wave leaves SMs idle while it runs, so the per-SM resources (tensor cores, FP32 units,
//! schedulers, shared memory) deliver only `waves / ceil(waves)` of their peak over the whole
//! launch. Those four bounds are multiplied by `ceil(waves) / waves` (NVIDIA Deep Learning
//! Performance Documentation, "Matrix Multiplication Background User's Guide", section "Wave
//! Quantization"). The memory bounds are not: DRAM and L2 are shared by all SMs, and fewer
//! busy SMs can still keep them busy. With no `blocks_per_sm` known the grid is not quantised
//! (`waves` is then CTAs per SM). Fewer CTAs than one wave is the extreme case: 54 CTAs on
//! 108 slots use half the GPU, and the per-SM bounds double.
//!
//! What the model leaves out, so the prediction is a floor, not a forecast: latency (a
//! kernel with too few warps to hide memory latency runs slower than its bounds), overlap
//! that is less than perfect between the bounds, clock throttling, and caches other than L2.
//! `occupancy` is carried for reports and does not change the time.
//!
//! Every figure here is a prediction and must be printed as one.
//!
//! # Examples
//! ```
//! use frugal_runtime::roofline::{lookup_gpu, predict, Bound, KernelWork};
//! let a100 = lookup_gpu("a100-40gb").unwrap().roofline.unwrap();
//! // A bf16 matmul of 4096³ in 128×128 tiles: 1024 CTAs, 2 per SM.
//! let work = KernelWork {
//!     ctas: 1024,
//!     threads_per_cta: 256,
//!     tensor_flops: 2.0 * 4096f64.powi(3),
//!     dram_bytes: 3.0 * 4096.0 * 4096.0 * 2.0,
//!     blocks_per_sm: Some(2),
//!     ..KernelWork::default()
//! };
//! let p = predict(&a100, &work);
//! assert_eq!(p.bound, Bound::Compute);
//! assert!(p.time_s > 2.0 * 4096f64.powi(3) / 312e12);
//! ```

use crate::facts::{lookup, lookup_label, DeviceFacts, Roofline, DEVICES};

/// What one kernel launch does, from the emulator's counters (all totals over the launch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelWork {
    /// CTAs (thread blocks) in the grid.
    pub ctas: u64,
    /// Threads per CTA.
    pub threads_per_cta: u32,
    /// Warp-level instructions executed (Nsight's `smsp__inst_executed.sum`).
    pub warp_instructions: u64,
    /// FLOPs done by tensor-core instructions (an `mma.m16n8k16` is 2 × 16 × 8 × 16 per warp).
    pub tensor_flops: f64,
    /// FLOPs done by FP32 instructions on the CUDA cores (an FMA is 2); 0 if not counted.
    pub fp32_flops: f64,
    /// Bytes from DRAM: distinct 32-byte sectors touched × 32 (a lower bound on DRAM traffic).
    pub dram_bytes: f64,
    /// Bytes through L2: global-memory sectors requested × 32.
    pub l2_bytes: f64,
    /// Shared-memory wavefronts (each one 128-byte bank cycle of one SM).
    pub shared_wavefronts: u64,
    /// Theoretical occupancy as a fraction of the SM's maximum warps, where known.
    pub occupancy: Option<f64>,
    /// CTAs resident per SM at once, where known (from occupancy); sets the wave size.
    pub blocks_per_sm: Option<u32>,
}

/// A resource that bounds a kernel's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// Tensor cores (`mma.sync`).
    Compute,
    /// FP32 units on the CUDA cores.
    Fp32,
    /// Instruction issue: one warp instruction per scheduler per clock.
    Issue,
    /// DRAM bandwidth.
    Dram,
    /// L2 bandwidth.
    L2,
    /// Shared-memory bandwidth (bank wavefronts).
    Shared,
    /// The fixed cost of a launch exceeds every other bound.
    Launch,
}

impl Bound {
    /// A short lower-case name for tables and JSON: `tensor`, `fp32`, `issue`, `dram`, `l2`,
    /// `shared`, `launch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Compute => "tensor",
            Bound::Fp32 => "fp32",
            Bound::Issue => "issue",
            Bound::Dram => "dram",
            Bound::L2 => "l2",
            Bound::Shared => "shared",
            Bound::Launch => "launch",
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The predicted time of one launch and what limits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Predicted seconds: the largest bound plus the launch overhead.
    pub time_s: f64,
    /// The bound that sets `time_s` ([`Bound::Launch`] when the overhead exceeds the rest).
    pub bound: Bound,
    /// Every bound evaluated and its time in seconds (quantised where the module notes say),
    /// in the order Compute, Fp32, Issue, Shared, Dram, L2 (where the GPU has a figure), Launch.
    pub bounds: Vec<(Bound, f64)>,
    /// Waves of CTAs over the SMs: CTAs ÷ (SMs × blocks per SM).
    pub waves: f64,
    /// Tensor-core time at the full `mma.sync` rate on every SM, unquantised, ÷ `time_s`:
    /// the share of the GPU's tensor throughput the launch would use.
    pub tensor_utilisation: f64,
}

/// Predicts the time of the launch `work` on the GPU `gpu` (see the module notes).
pub fn predict(gpu: &Roofline, work: &KernelWork) -> Prediction {
    let sms = f64::from(gpu.sms);
    let clock = gpu.clock_hz();
    // A kernel that cannot launch (0 blocks per SM) is still quantised as one per SM: the
    // occupancy report says why it cannot launch; the prediction stays finite.
    let per_sm = work.blocks_per_sm.map(|b| f64::from(b.max(1)));
    let slots = sms * per_sm.unwrap_or(1.0);
    let waves = work.ctas as f64 / slots;
    let quantisation = if per_sm.is_some() && waves > 0.0 {
        waves.ceil() / waves
    } else {
        1.0
    };
    let tensor_unquantised = ratio(work.tensor_flops, gpu.mma_sync_bf16_flops);
    let issue_rate = sms * f64::from(gpu.warp_issue_per_clock_per_sm) * clock;
    // One wavefront moves 128 bytes, the width of the 32 banks.
    let wavefront_rate = sms * f64::from(gpu.smem_bytes_per_clock_per_sm) / 128.0 * clock;
    let mut bounds = vec![
        (Bound::Compute, tensor_unquantised * quantisation),
        (
            Bound::Fp32,
            ratio(work.fp32_flops, gpu.fp32_flops) * quantisation,
        ),
        (
            Bound::Issue,
            ratio(work.warp_instructions as f64, issue_rate) * quantisation,
        ),
        (
            Bound::Shared,
            ratio(work.shared_wavefronts as f64, wavefront_rate) * quantisation,
        ),
        (Bound::Dram, ratio(work.dram_bytes, gpu.dram_bytes_per_s)),
    ];
    if let Some(l2) = gpu.l2_bytes_per_s {
        bounds.push((Bound::L2, ratio(work.l2_bytes, l2)));
    }
    // The first of equal bounds wins, so an all-zero launch names Compute only if the launch
    // overhead is zero too; otherwise it is launch-bound.
    let (mut bound, slowest) =
        bounds.iter().copied().fold(
            (Bound::Compute, 0.0),
            |best, b| if b.1 > best.1 { b } else { best },
        );
    if gpu.launch_overhead_s > slowest {
        bound = Bound::Launch;
    }
    bounds.push((Bound::Launch, gpu.launch_overhead_s));
    let time_s = slowest + gpu.launch_overhead_s;
    Prediction {
        time_s,
        bound,
        bounds,
        waves,
        tensor_utilisation: ratio(tensor_unquantised, time_s),
    }
}

/// `work / rate`, 0 when there is no work (and when the rate is not positive, which no
/// table entry has; a bound without a rate is no bound).
fn ratio(work: f64, rate: f64) -> f64 {
    if work > 0.0 && rate > 0.0 {
        work / rate
    } else {
        0.0
    }
}

/// Short names accepted by [`lookup_gpu`] besides the driver names and labels, with the
/// label each stands for. The paper's three GPUs have its short names (`a100-40gb`,
/// `a100-80gb`, `h100-80gb`); a bare family name means the SXM part.
pub const GPU_ALIASES: &[(&str, &str)] = &[
    ("a100", "A100-SXM-40GB"),
    ("a100-40gb", "A100-SXM-40GB"),
    ("a100-sxm", "A100-SXM-40GB"),
    ("a100-80gb", "A100-SXM-80GB"),
    ("a100-pcie", "A100-PCIe-40GB"),
    ("h100", "H100-SXM-80GB"),
    ("h100-sxm", "H100-SXM-80GB"),
    ("h100-80gb", "H100-SXM-80GB"),
    ("h100-pcie", "H100-PCIe-80GB"),
    ("h100-nvl", "H100-NVL-94GB"),
    ("h200", "H200-SXM-141GB"),
    ("h200-sxm", "H200-SXM-141GB"),
    ("h200-nvl", "H200-NVL-141GB"),
    ("rtx-4090", "RTX-4090"),
    ("4090", "RTX-4090"),
    ("rtx-3090", "RTX-3090"),
    ("3090", "RTX-3090"),
];

/// The GPU called `name` for `frugal profile --gpu NAME`: a driver name
/// (`NVIDIA H100 80GB HBM3`), a label (`H100-SXM-80GB`) or an alias from [`GPU_ALIASES`]
/// (`h100-sxm`, `a100-40gb`, `l4`, `a10g`, `rtx-4090`, ...), case-insensitive, with `_` and
/// spaces read as `-` in labels and aliases. `None` for anything else: list
/// [`known_gpu_names`] to the user.
///
/// # Examples
/// ```
/// use frugal_runtime::roofline::lookup_gpu;
/// assert_eq!(lookup_gpu("H100_SXM").map(|d| d.label), Some("H100-SXM-80GB"));
/// assert_eq!(lookup_gpu("l4").map(|d| d.label), Some("L4"));
/// assert!(lookup_gpu("h100-sxm4").is_none());
/// ```
pub fn lookup_gpu(name: &str) -> Option<&'static DeviceFacts> {
    let name = name.trim();
    if let Some(d) = lookup(name) {
        return Some(d);
    }
    if let Some(d) = DEVICES.iter().find(|d| d.name.eq_ignore_ascii_case(name)) {
        return Some(d);
    }
    let dashed: String = name
        .chars()
        .map(|c| if c == '_' || c == ' ' { '-' } else { c })
        .collect();
    if let Some(d) = lookup_label(&dashed) {
        return Some(d);
    }
    GPU_ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(&dashed))
        .and_then(|(_, label)| lookup_label(label))
}

/// Every name [`lookup_gpu`] accepts besides driver names: the labels, then the aliases, for
/// an error message that lists them.
pub fn known_gpu_names() -> Vec<&'static str> {
    DEVICES
        .iter()
        .filter(|d| d.roofline.is_some())
        .map(|d| d.label)
        .chain(GPU_ALIASES.iter().map(|(alias, _)| *alias))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round figures so every expected time is computed by hand: 100 SMs at 1 GHz,
    /// 100 TFLOP/s tensor, 10 TFLOP/s FP32, 4 issues and one 128-byte wavefront per SM per
    /// clock, 1 TB/s DRAM, 4 TB/s L2, 1 µs launch.
    const GPU: Roofline = Roofline {
        sms: 100,
        boost_clock_ghz: 1.0,
        mma_sync_bf16_flops: 100e12,
        fp32_flops: 10e12,
        warp_issue_per_clock_per_sm: 4,
        dram_bytes_per_s: 1e12,
        l2_bytes_per_s: Some(4e12),
        smem_bytes_per_clock_per_sm: 128,
        launch_overhead_s: 1e-6,
        estimated: "",
    };

    /// One full wave: 200 CTAs, 2 per SM on 100 SMs.
    fn one_wave() -> KernelWork {
        KernelWork {
            ctas: 200,
            threads_per_cta: 128,
            blocks_per_sm: Some(2),
            ..KernelWork::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
    }

    fn bound_time(p: &Prediction, which: Bound) -> f64 {
        p.bounds
            .iter()
            .find(|b| b.0 == which)
            .map(|b| b.1)
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn each_bound_is_work_over_rate() {
        // Each case puts 0.01 s of work on one resource and a little on the others.
        let cases = [
            (
                Bound::Compute,
                KernelWork {
                    tensor_flops: 1e12,
                    ..one_wave()
                },
            ),
            (
                Bound::Fp32,
                KernelWork {
                    fp32_flops: 1e11,
                    ..one_wave()
                },
            ),
            // 100 SMs × 4 × 1e9 = 4e11 warp instructions per second.
            (
                Bound::Issue,
                KernelWork {
                    warp_instructions: 4_000_000_000,
                    ..one_wave()
                },
            ),
            // 100 SMs × 1 wavefront × 1e9 = 1e11 wavefronts per second.
            (
                Bound::Shared,
                KernelWork {
                    shared_wavefronts: 1_000_000_000,
                    ..one_wave()
                },
            ),
            (
                Bound::Dram,
                KernelWork {
                    dram_bytes: 1e10,
                    ..one_wave()
                },
            ),
            (
                Bound::L2,
                KernelWork {
                    l2_bytes: 4e10,
                    ..one_wave()
                },
            ),
        ];
        for (want, work) in cases {
            let work = KernelWork {
                dram_bytes: work.dram_bytes.max(1e9),
                ..work
            };
            let p = predict(&GPU, &work);
            assert_eq!(p.bound, want, "{p:?}");
            assert!(close(bound_time(&p, want), 0.01), "{want}: {p:?}");
            assert!(close(p.time_s, 0.01 + 1e-6), "{want}: {p:?}");
            assert!(close(p.waves, 1.0));
            assert!(close(bound_time(&p, Bound::Launch), 1e-6));
        }
    }

    #[test]
    fn tensor_utilisation_is_tensor_time_over_predicted_time() {
        let p = predict(
            &GPU,
            &KernelWork {
                tensor_flops: 1e12,
                ..one_wave()
            },
        );
        assert!(close(p.tensor_utilisation, 0.01 / (0.01 + 1e-6)));
        // DRAM-bound at 0.02 s with 0.01 s of tensor work: half the tensor throughput.
        let p = predict(
            &GPU,
            &KernelWork {
                tensor_flops: 1e12,
                dram_bytes: 2e10,
                ..one_wave()
            },
        );
        assert_eq!(p.bound, Bound::Dram);
        assert!(close(p.tensor_utilisation, 0.01 / (0.02 + 1e-6)));
    }

    #[test]
    fn a_partial_last_wave_slows_the_per_sm_bounds_only() {
        // 201 CTAs on 200 slots: 1.005 waves run in 2, so the per-SM bounds take 2 / 1.005
        // times longer; DRAM does not.
        let work = KernelWork {
            ctas: 201,
            tensor_flops: 1e12,
            fp32_flops: 1e11,
            warp_instructions: 4_000_000_000,
            shared_wavefronts: 1_000_000_000,
            dram_bytes: 1e10,
            l2_bytes: 4e10,
            ..one_wave()
        };
        let p = predict(&GPU, &work);
        assert!(close(p.waves, 1.005));
        let q = 2.0 / 1.005;
        for b in [Bound::Compute, Bound::Fp32, Bound::Issue, Bound::Shared] {
            assert!(close(bound_time(&p, b), 0.01 * q), "{b}: {p:?}");
        }
        assert!(close(bound_time(&p, Bound::Dram), 0.01));
        assert!(close(bound_time(&p, Bound::L2), 0.01));
        // Ties between equal quantised bounds name the first, Compute.
        assert_eq!(p.bound, Bound::Compute);
        assert!(close(p.time_s, 0.01 * q + 1e-6));
        // Tensor utilisation uses the unquantised tensor time.
        assert!(close(p.tensor_utilisation, 0.01 / (0.01 * q + 1e-6)));
        // Less than one wave: 50 CTAs on 200 slots use a quarter of the GPU.
        let p = predict(
            &GPU,
            &KernelWork {
                ctas: 50,
                tensor_flops: 1e12,
                ..one_wave()
            },
        );
        assert!(close(p.waves, 0.25));
        assert!(close(bound_time(&p, Bound::Compute), 0.04));
        // Exactly three waves: no loss.
        let p = predict(
            &GPU,
            &KernelWork {
                ctas: 600,
                tensor_flops: 1e12,
                ..one_wave()
            },
        );
        assert!(close(p.waves, 3.0) && close(bound_time(&p, Bound::Compute), 0.01));
    }

    #[test]
    fn without_blocks_per_sm_there_is_no_quantisation() {
        let work = KernelWork {
            ctas: 150,
            blocks_per_sm: None,
            tensor_flops: 1e12,
            ..one_wave()
        };
        let p = predict(&GPU, &work);
        assert!(close(p.waves, 1.5));
        assert!(close(bound_time(&p, Bound::Compute), 0.01));
        // A configuration that cannot launch (0 per SM) is quantised as 1 per SM.
        let p = predict(
            &GPU,
            &KernelWork {
                ctas: 150,
                blocks_per_sm: Some(0),
                tensor_flops: 1e12,
                ..one_wave()
            },
        );
        assert!(close(p.waves, 1.5) && close(bound_time(&p, Bound::Compute), 0.01 * 2.0 / 1.5));
    }

    #[test]
    fn a_tiny_launch_is_launch_bound_and_an_empty_one_costs_the_overhead() {
        // 5e5 bytes of DRAM take 0.5 µs, less than the 1 µs overhead.
        let p = predict(
            &GPU,
            &KernelWork {
                dram_bytes: 5e5,
                ..one_wave()
            },
        );
        assert_eq!(p.bound, Bound::Launch);
        assert!(close(p.time_s, 1.5e-6));
        let p = predict(&GPU, &KernelWork::default());
        assert_eq!(
            (p.bound, p.time_s, p.waves, p.tensor_utilisation),
            (Bound::Launch, 1e-6, 0.0, 0.0)
        );
    }

    #[test]
    fn a_gpu_without_an_l2_figure_has_no_l2_bound() {
        let gpu = Roofline {
            l2_bytes_per_s: None,
            ..GPU
        };
        let p = predict(
            &gpu,
            &KernelWork {
                l2_bytes: 1e12,
                ..one_wave()
            },
        );
        assert!(p.bounds.iter().all(|b| b.0 != Bound::L2));
        assert_eq!(p.bound, Bound::Launch);
        let order: Vec<Bound> = predict(&GPU, &one_wave())
            .bounds
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(
            order,
            [
                Bound::Compute,
                Bound::Fp32,
                Bound::Issue,
                Bound::Shared,
                Bound::Dram,
                Bound::L2,
                Bound::Launch
            ]
        );
    }

    #[test]
    fn hopper_runs_mma_sync_at_two_thirds_of_its_peak() {
        // The same compute-bound launch (one full wave on each GPU) on A100 and H100 SXM:
        // the H100's mma.sync rate is 2/3 × 989.4 TFLOP/s against the A100's 312.
        let a100 = lookup_gpu("a100-40gb").and_then(|d| d.roofline).unwrap();
        let h100 = lookup_gpu("h100-sxm").and_then(|d| d.roofline).unwrap();
        let work = |gpu: &Roofline| KernelWork {
            ctas: u64::from(gpu.sms) * 2,
            tensor_flops: 1e15,
            blocks_per_sm: Some(2),
            ..KernelWork::default()
        };
        let ta = predict(&a100, &work(&a100)).time_s - a100.launch_overhead_s;
        let th = predict(&h100, &work(&h100)).time_s - h100.launch_overhead_s;
        assert!(close(ta, 1e15 / 312e12), "{ta}");
        assert!(
            (ta / th - 989.4 * 2.0 / 3.0 / 312.0).abs() < 1e-9,
            "{}",
            ta / th
        );
    }

    #[test]
    fn gpu_names_labels_and_aliases() {
        for (name, label) in [
            ("h100-sxm", "H100-SXM-80GB"),
            ("H100-SXM", "H100-SXM-80GB"),
            ("a100-40gb", "A100-SXM-40GB"),
            ("A100_80GB", "A100-SXM-80GB"),
            ("h100-pcie", "H100-PCIe-80GB"),
            ("h100 nvl", "H100-NVL-94GB"),
            ("h200", "H200-SXM-141GB"),
            ("l4", "L4"),
            ("a10g", "A10G"),
            ("rtx-4090", "RTX-4090"),
            ("a100-pcie-80gb", "A100-PCIe-80GB"),
            ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
            ("nvidia h100 80gb hbm3", "H100-SXM-80GB"),
            ("  l40s ", "L40S"),
        ] {
            assert_eq!(lookup_gpu(name).map(|d| d.label), Some(label), "{name}");
        }
        for unknown in ["", "h100-sxm4", "b200", "a100-", "nvidia"] {
            assert!(lookup_gpu(unknown).is_none(), "{unknown}");
        }
        // Every alias resolves, and every known name resolves to a GPU with a roofline.
        for (alias, _) in GPU_ALIASES {
            assert!(lookup_gpu(alias).is_some(), "{alias}");
        }
        let names = known_gpu_names();
        assert!(names.contains(&"h100-sxm") && names.contains(&"A10G"));
        for n in names {
            assert!(lookup_gpu(n).and_then(|d| d.roofline).is_some(), "{n}");
        }
        assert_eq!(Bound::Compute.to_string(), "tensor");
    }
}
