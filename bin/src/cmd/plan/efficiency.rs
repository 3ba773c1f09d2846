//! The efficiency factors the plan applies by default: per GPU type and kernel family,
//! the time `frugal profile` predicts for frugal's own kernels (emulated, their counters
//! on the GPU's roofline) over the plan's roofline floor for the same operations
//! (`compute::floor_by_family`). The floor assumes every product and every attention
//! reaches its roofline with no tile, wave or occupancy loss; the profile counts what the
//! kernels actually execute, so the factors say how far frugal's kernels are from the
//! floor, family by family.
//!
//! Each row was derived with (docs/plan.md has the full procedure):
//!
//! ```text
//! frugal profile --model paper-100m --batch 16 --gpu a100-40gb,a100-80gb,h100-sxm \
//!     --sample-ctas 8 --json > p100m-b16.json
//! frugal plan --model paper-100m --gpus a100-40,a100-80,h100-sxm --devices 1 --batch 16 \
//!     --profile p100m-b16.json
//! ```
//!
//! which prints, per GPU, "the profile implies factors ...": the numbers below, rounded
//! to three digits. Configurations a `--profile` covers use the profile itself instead.

use super::compute::Family;

/// One GPU type's factors, in [`Family::ALL`]'s order.
pub struct Factors {
    /// The GPU's label (`DeviceFacts::label`).
    pub gpu: &'static str,
    pub factors: [f64; 4],
}

/// The table (see the module notes for the command that reproduces each row; paper-100m,
/// batch 16, flash attention, `--sample-ctas 8`). Fewer sampled CTAs over-count DRAM
/// traffic that neighbouring CTAs share (causal attention above all): `--sample-ctas 2` at
/// batch 4 implied factors up to 2.8x these. Batch 32 implies factors within 3 % of these
/// (flash-fwd within 5 % on the H100); batch 4 within 10 % except flash-bwd on the H100 and
/// matmul on the A100s (9-20 % higher: small products fill the GPU less).
pub const TABLE: &[Factors] = &[
    Factors {
        gpu: "A100-SXM-40GB",
        factors: [1.377, 1.116, 2.065, 0.957],
    },
    Factors {
        gpu: "A100-SXM-80GB",
        factors: [1.372, 1.116, 2.024, 0.986],
    },
    Factors {
        gpu: "H100-SXM-80GB",
        factors: [1.978, 1.504, 2.666, 1.024],
    },
];

/// The factors of the GPU labelled `label`, where the table has them.
pub fn of(label: &str) -> Option<&'static [f64; 4]> {
    TABLE.iter().find(|f| f.gpu == label).map(|f| &f.factors)
}

/// The factors as `matmul 1.23, flash-fwd ...`.
pub fn describe(factors: &[f64; 4]) -> String {
    Family::ALL
        .iter()
        .zip(factors)
        .map(|(f, x)| format!("{} {x:.3}", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}
