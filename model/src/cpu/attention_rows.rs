//! The attention's per-row element-wise work (the softmax, and its backward), compiled
//! for the baseline target and again with AVX2, chosen at run time. Every sum and max is
//! [`fastmath`]'s fixed eight-lane order and Rust never fuses a multiply and an add, so
//! the two copies give the same bits; the AVX2 one runs exp on eight lanes at once.

use super::super::fastmath;

/// Softmax of `row[..valid]·scale` in place, zeros past `valid`; returns the row's
/// log-sum-exp.
#[inline(always)]
fn softmax_impl(row: &mut [f32], valid: usize, scale: f32) -> f32 {
    let (live, masked) = row.split_at_mut(valid);
    live.iter_mut().for_each(|x| *x *= scale);
    let max = fastmath::max(live);
    let sum = fastmath::exp_shifted_sum(live, max);
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    masked.iter_mut().for_each(|x| *x = 0.0);
    max + sum.ln()
}

/// From raw scores in `prow` and dP in `dsrow`: P = exp(s·scale − lse) into `prow`,
/// dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale into `dsrow`; zeros past `valid` in both.
#[inline(always)]
fn backward_impl(prow: &mut [f32], dsrow: &mut [f32], valid: usize, scale: f32, lse: f32) {
    let (p, p_masked) = prow.split_at_mut(valid);
    let (ds, ds_masked) = dsrow.split_at_mut(valid);
    p.iter_mut()
        .for_each(|x| *x = fastmath::exp(*x * scale - lse));
    let pdp = fastmath::dot(p, ds);
    for (ds, &p) in ds.iter_mut().zip(p.iter()) {
        *ds = p * (*ds - pdp) * scale;
    }
    p_masked.iter_mut().for_each(|x| *x = 0.0);
    ds_masked.iter_mut().for_each(|x| *x = 0.0);
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_avx2(row: &mut [f32], valid: usize, scale: f32) -> f32 {
    softmax_impl(row, valid, scale)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn backward_avx2(prow: &mut [f32], dsrow: &mut [f32], valid: usize, scale: f32, lse: f32) {
    backward_impl(prow, dsrow, valid, scale, lse)
}

/// Whether this CPU runs the AVX2 copies.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`softmax_impl`] on the widest copy this CPU runs.
pub(super) fn softmax(row: &mut [f32], valid: usize, scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: avx2() saw the feature on this CPU.
        return unsafe { softmax_avx2(row, valid, scale) };
    }
    softmax_impl(row, valid, scale)
}

/// [`backward_impl`] on the widest copy this CPU runs.
pub(super) fn softmax_backward(
    prow: &mut [f32],
    dsrow: &mut [f32],
    valid: usize,
    scale: f32,
    lse: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: avx2() saw the feature on this CPU.
        return unsafe { backward_avx2(prow, dsrow, valid, scale, lse) };
    }
    backward_impl(prow, dsrow, valid, scale, lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx2_copies_give_the_baseline_bits() {
        if !avx2() {
            return;
        }
        let n = 203;
        let raw: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 * 0.21 - 9.0)
            .collect();
        let dp: Vec<f32> = (0..n).map(|i| ((i * 11) % 17) as f32 * 0.3 - 2.0).collect();
        for valid in [1, 7, 8, 9, 100, n] {
            let (mut a, mut b) = (raw.clone(), raw.clone());
            let la = softmax_impl(&mut a, valid, 0.125);
            // SAFETY: avx2() is true.
            let lb = unsafe { softmax_avx2(&mut b, valid, 0.125) };
            assert_eq!(la.to_bits(), lb.to_bits());
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            let (mut pa, mut pb, mut da, mut db) =
                (raw.clone(), raw.clone(), dp.clone(), dp.clone());
            backward_impl(&mut pa, &mut da, valid, 0.125, la);
            // SAFETY: avx2() is true.
            unsafe { backward_avx2(&mut pb, &mut db, valid, 0.125, la) };
            assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(da.iter().zip(&db).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
