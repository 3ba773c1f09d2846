//! exp for f32, branch-free so that loops over slices vectorise, and the same
//! bits on every machine (plain arithmetic, no libm).
//!
//! Algorithm: exp(x) = 2ⁿ·eʳ with n = round(x/ln 2) and r = x − n·ln 2 (ln 2
//! split into a high part exact in f32 and a low correction, Cody–Waite), so
//! |r| ≤ ln2/2 ≈ 0.347; eʳ by its Taylor series to degree 7 (truncation
//! ≤ 0.347⁸/8! ≈ 5e-9, below f32's 6e-8 rounding); 2ⁿ assembled in the
//! exponent bits. Inputs below −87.3 are clamped (results ≈ 1.27e-38, taken as
//! the smallest normal rather than 0); above 88.7 likewise (≈ 3.4e38, finite).
//! NaN propagates. Relative error ≈ 2 ulps over the range.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with its low 12 bits zero so n·LN2_HI is exact for |n| < 2¹².
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// eˣ with ≈ 2 ulp relative error (see the module note).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.7 { 88.7 } else { x };
    let t = x * LOG2E + ROUND_MAGIC;
    let n_bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32; // round(x·log2 e)
    let n = t - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ for n in [−126, 128): n = 128 only at the clamp, handled by splitting
    // the scale into two halves so no exponent field overflows.
    let half = n_bits >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n_bits - half + 127) as u32) << 23);
    p * s1 * s2
}

/// xs[i] = exp(xs[i] − shift); returns the sum of the results (eight lanes, in a fixed order).
#[inline(always)]
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
    sum(xs)
}

/// The eight lanes of [`sum`] and [`dot`] added in their fixed order (a tree).
#[inline(always)]
pub fn sum_lanes(lanes: &[f32; 8]) -> f32 {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// Σ xs with eight independent lanes added in a fixed order (vectorisable).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut it = xs.chunks_exact(8);
    for ch in &mut it {
        for j in 0..8 {
            lanes[j] += ch[j];
        }
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        lanes[j] += v;
    }
    sum_lanes(&lanes)
}

/// Σ a·b with eight independent lanes added in a fixed order (vectorisable).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; 8];
    let (mut ia, mut ib) = (a.chunks_exact(8), b.chunks_exact(8));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for j in 0..8 {
            lanes[j] += ca[j] * cb[j];
        }
    }
    for (j, (&x, &y)) in ia.remainder().iter().zip(ib.remainder()).enumerate() {
        lanes[j] += x * y;
    }
    sum_lanes(&lanes)
}

/// max of xs (−∞ for an empty slice), eight lanes.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut it = xs.chunks_exact(8);
    for ch in &mut it {
        for j in 0..8 {
            lanes[j] = if ch[j] > lanes[j] { ch[j] } else { lanes[j] };
        }
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        lanes[j] = if v > lanes[j] { v } else { lanes[j] };
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulps_of_f64_exp() {
        // Sweep the whole finite range densely; compare with the correctly
        // rounded f64 result. 4 ulps (2.4e-7 relative) allows the degree-7
        // series, the two-part reduction and three f32 multiplications.
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38 && exp(f32::NEG_INFINITY) > 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 3e38);
    }

    #[test]
    fn sum_and_max_match_plain_loops() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f32>()); // small integers: exact in any order
        assert_eq!(max(&xs), xs.iter().cloned().fold(f32::MIN, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
