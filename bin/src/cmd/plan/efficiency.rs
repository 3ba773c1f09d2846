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
//! frugal profile --model paper-100m --batch 4 --gpu a100-40gb,a100-80gb,h100-sxm \
//!     --sample-ctas 2 --json > p100m-b4.json
//! frugal plan --model paper-100m --gpus a100-40,a100-80,h100-sxm --devices 1 --batch 4 \
//!     --profile p100m-b4.json
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
/// batch 4, flash attention, `--sample-ctas 2`). The same procedure at paper-100m batch 2
/// gives factors within 6 % of these for matmul and flash-bwd and within 14 % for
/// flash-fwd and elementwise; tiny (a quarter of the width) gives matmul 2.0-2.8 and
/// elementwise 2.0-2.7, its kernels being too small to fill the GPU.
pub const TABLE: &[Factors] = &[
    Factors {
        gpu: "A100-SXM-40GB",
        factors: [2.392, 3.082, 3.131, 1.164],
    },
    Factors {
        gpu: "A100-SXM-80GB",
        factors: [1.919, 2.379, 2.424, 1.230],
    },
    Factors {
        gpu: "H100-SXM-80GB",
        factors: [2.326, 2.791, 3.332, 1.250],
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
