//! What the hand-timed CPU benchmarks (`gemm_peak`, `step_ops`) share: seeded inputs
//! and best-of-N wall-clock timing.

use std::time::Instant;

/// `n` values in [-0.5, 0.5) from a 64-bit LCG (Knuth's MMIX constants), advancing `seed`.
pub fn random(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// The fastest of `reps` timed runs of `f` in seconds, after one untimed warm-up run.
pub fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
