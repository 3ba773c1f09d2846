//! AdamW against hand-computed steps, the cosine schedule's shape, and the
//! global gradient norm and clipping; the norm by blocks and AdamW by shards give
//! the whole vector's bits (what sharded data parallelism relies on), and AdamW on
//! threads with the clip factor folded in gives scaling-then-one-thread's bits.

use std::ops::Range;

use frugal_model::cpu::par::Pool;
use frugal_model::optim::{
    clip_scale, grad_norm, grad_norm_threads, norm_block_sums, norm_from_block_sums, zero_grads,
    AdamW, NORM_BLOCK,
};
use frugal_model::rng::Rng;
use frugal_model::schedule::CosineSchedule;
use proptest::prelude::*;

#[test]
fn adamw_matches_a_hand_computed_step_with_bias_correction_and_decay_mask() {
    // β1 0.9, β2 0.95, ε 1e-8, λ 0.1, lr 0.01; decay on params 0 and 2 only.
    let mut opt = AdamW::new(3, 0.9, 0.95, 1e-8, 0.1);
    let mut p = [1.0f32, -2.0, 0.5];
    let g = [0.1f32, -0.2, 0.0];
    let mask = [true, false, true];
    opt.update(&mut p, &g, 0.01, &mask);
    // Step 1: m = 0.1·g, v = 0.05·g²; bias corrections 1−0.9 = 0.1 and 1−0.95 = 0.05
    // give m̂ = g, v̂ = g², so the Adam direction is g/(|g|+ε) = sign(g) (1 − 1e-7).
    // p0: decayed 1 − 0.01·0.1·1 = 0.999, then − 0.01·1 → 0.989
    // p1: no decay, −2 + 0.01 → −1.99
    // p2: zero gradient (direction 0/(0+ε) = 0), decayed only: 0.5·(1 − 0.001) → 0.4995
    let want = [0.989f32, -1.99, 0.4995];
    for i in 0..3 {
        // f32 rounding of these O(1) values: a few ulps (~2e-7); the ε term moves
        // the result by 1e-9. 1e-6 separates those from any formula error (≥1e-4).
        assert!(
            (p[i] - want[i]).abs() < 1e-6,
            "step 1, param {i}: {} vs {}",
            p[i],
            want[i]
        );
    }
    assert_eq!(opt.step(), 1);
    opt.update(&mut p, &g, 0.01, &mask);
    // Step 2, same gradient: m = 0.9·0.1g + 0.1g = 0.19g, bias correction 1−0.81 = 0.19
    // → m̂ = g; v = 0.95·0.05g² + 0.05g² = 0.0975g², correction 1−0.9025 → v̂ = g².
    // Without bias correction the step would be 0.19/√0.0975 ≈ 0.61 of this.
    // p0: 0.989·0.999 − 0.01 = 0.978011; p1: −1.98; p2: 0.4995·0.999 = 0.4990005.
    let want = [0.978011f32, -1.98, 0.4990005];
    for i in 0..3 {
        assert!(
            (p[i] - want[i]).abs() < 1e-6,
            "step 2, param {i}: {} vs {}",
            p[i],
            want[i]
        );
    }
    // The moments themselves, to f32 precision (relative 1e-6 ≈ 8 ulps).
    assert!((opt.m()[0] / 0.019 - 1.0).abs() < 1e-6, "{}", opt.m()[0]);
    assert!(
        (opt.v()[1] / (0.0975 * 0.04) - 1.0).abs() < 1e-6,
        "{}",
        opt.v()[1]
    );
}

#[test]
fn adamw_state_round_trips_bitwise() {
    let mut rng = Rng::new(9);
    let n = 1000;
    let mut p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..n).map(|_| rng.normal() as f32 * 0.01).collect())
        .collect();
    let mask: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
    let mut a = AdamW::new(n, 0.9, 0.95, 1e-8, 0.1);
    let mut pa = p.clone();
    for g in &grads {
        a.update(&mut pa, g, 3e-4, &mask);
    }
    let mut b = AdamW::new(n, 0.9, 0.95, 1e-8, 0.1);
    b.update(&mut p, &grads[0], 3e-4, &mask);
    let mut b = AdamW::from_state(
        0.9,
        0.95,
        1e-8,
        0.1,
        b.m().to_vec(),
        b.v().to_vec(),
        b.step(),
    )
    .unwrap();
    for g in &grads[1..] {
        b.update(&mut p, g, 3e-4, &mask);
    }
    assert_eq!(a, b);
    assert!(pa.iter().zip(&p).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(AdamW::from_state(0.9, 0.95, 1e-8, 0.1, vec![0.0; 2], vec![0.0; 3], 0).is_none());
}

#[test]
fn cosine_schedule_warms_up_linearly_then_decays_to_min() {
    let s = CosineSchedule {
        max_lr: 1e-3,
        min_lr: 1e-4,
        warmup_steps: 10,
        total_steps: 110,
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15;
    assert!(close(s.lr(0), 1e-4), "{}", s.lr(0)); // (0+1)/10 of max
    assert!(close(s.lr(4), 5e-4));
    assert!(close(s.lr(9), 1e-3)); // the last warm-up step reaches max
    assert!(close(s.lr(10), 1e-3)); // decay starts at max
    assert!(close(s.lr(60), 5.5e-4), "{}", s.lr(60)); // halfway: cos(π/2) = 0 → the mean
    assert!(close(s.lr(110), 1e-4));
    assert!(close(s.lr(10_000), 1e-4)); // constant after the end
    for step in 10..110 {
        assert!(s.lr(step + 1) <= s.lr(step), "not monotone at {step}");
    }
    let no_warmup = CosineSchedule {
        warmup_steps: 0,
        ..s.clone()
    };
    assert!(close(no_warmup.lr(0), 1e-3));
    let constant = CosineSchedule {
        warmup_steps: 5,
        total_steps: 5,
        ..s
    };
    assert!(close(constant.lr(7), 1e-3));
}

#[test]
fn grad_norm_is_the_l2_norm_and_clipping_bounds_it() {
    assert_eq!(grad_norm(&[3.0, 4.0]), 5.0);
    assert_eq!(grad_norm(&[]), 0.0);
    let mut rng = Rng::new(4);
    let g: Vec<f32> = (0..100_003).map(|_| rng.normal() as f32).collect();
    // Against a plain f64 sum: both add f64 squares of f32 values (exact
    // products), differing only in association: relative error ≤ n·ε_f64 ≈ 1e-11.
    let naive = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    assert!((grad_norm(&g) - naive).abs() <= 1e-10 * naive);
    assert_eq!(grad_norm(&g).to_bits(), grad_norm(&g.clone()).to_bits());

    assert_eq!(clip_scale(10.0, 1.0), 0.1);
    assert_eq!(clip_scale(0.5, 1.0), 1.0);
    assert_eq!(clip_scale(10.0, 0.0), 1.0); // clipping off
    assert_eq!(clip_scale(f64::NAN, 1.0), 1.0);
    let norm = grad_norm(&g);
    let scale = clip_scale(norm, 1.0);
    let clipped: Vec<f32> = g.iter().map(|&x| x * scale).collect();
    // One f32 rounding of the scale and of each product: relative ~1e-7.
    assert!((grad_norm(&clipped) - 1.0).abs() < 1e-6);
}

/// `grad_norm` as it was written before it was split into block sums (kept here
/// to hold the refactor to the same bits: checkpoints and runs compare norms).
fn grad_norm_as_before(grads: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in grads.chunks(4096) {
        let mut lanes = [0.0f64; 4];
        let mut quads = block.chunks_exact(4);
        for q in &mut quads {
            for j in 0..4 {
                lanes[j] += q[j] as f64 * q[j] as f64;
            }
        }
        for (j, &g) in quads.remainder().iter().enumerate() {
            lanes[j] += g as f64 * g as f64;
        }
        total += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
    total.sqrt()
}

/// Values spread over many binades, so the association of the sum shows in the bits.
fn spread(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.normal() * (4.0 * rng.normal()).exp()) as f32)
        .collect()
}

/// Sorted cut points in 0..=len (duplicates allowed: empty pieces), made
/// multiples of `align` when it is not 1, always with 0 and len at the ends.
fn pieces(len: usize, cuts: &[usize], align: usize) -> Vec<Range<usize>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| (c % (len + 1)) / align * align)
        .collect();
    at.push(0);
    at.push(len);
    at.sort_unstable();
    at.windows(2).map(|w| w[0]..w[1]).collect()
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_norm_block_is_the_one_the_cpu_shards_align_to() {
    assert_eq!(NORM_BLOCK, 4096);
    let g = spread(3 * NORM_BLOCK + 5, 1);
    assert_eq!(norm_block_sums(&g).len(), 4);
    assert!(norm_block_sums(&[]).is_empty());
    assert_eq!(norm_from_block_sums(&[]), 0.0);
    assert_eq!(norm_from_block_sums(&[9.0, 16.0]), 5.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn block_sums_of_aligned_pieces_concatenate_to_the_wholes(
        len in 0usize..6 * NORM_BLOCK,
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
        seed in any::<u64>(),
    ) {
        let g = spread(len, seed);
        let whole = norm_block_sums(&g);
        prop_assert_eq!(whole.len(), len.div_ceil(NORM_BLOCK));
        let joined: Vec<f64> = pieces(len, &cuts, NORM_BLOCK)
            .into_iter()
            .flat_map(|r| norm_block_sums(&g[r]))
            .collect();
        let b = |xs: &[f64]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(b(&joined), b(&whole));
        let norm = grad_norm(&g);
        prop_assert_eq!(norm_from_block_sums(&joined).to_bits(), norm.to_bits());
        prop_assert_eq!(norm.to_bits(), grad_norm_as_before(&g).to_bits());
    }

    /// On threads (enough elements to use them: past 16 blocks), four blocks at a time:
    /// the one-thread norm's bits; zeroing on threads clears every element.
    #[test]
    fn the_norm_on_threads_has_one_threads_bits_and_zeroing_clears_all(
        len in 0usize..40 * NORM_BLOCK + 77,
        threads in 1usize..5,
        pooled in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut g = spread(len, seed);
        let run = |g: &mut Vec<f32>| {
            let norm = grad_norm_threads(g, threads);
            zero_grads(g, threads);
            norm
        };
        let want = grad_norm(&g);
        let norm = if pooled { Pool::new(threads).install(|| run(&mut g)) } else { run(&mut g) };
        prop_assert_eq!(norm.to_bits(), want.to_bits());
        prop_assert!(g.iter().all(|&x| x.to_bits() == 0));
    }

    #[test]
    fn adamw_on_shards_gives_the_whole_vectors_bits(
        len in 1usize..3000,
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        seed in any::<u64>(),
    ) {
        // Shards at any element (AdamW is element-wise; the run aligns them, the
        // optimizer does not need it).
        let shards = pieces(len, &cuts, 1);
        let mut rng = Rng::new(seed);
        let mask: Vec<bool> = (0..len).map(|_| rng.below(3) != 0).collect();
        let mut whole_p = spread(len, seed ^ 1);
        let mut shard_p = whole_p.clone();
        let mut whole = AdamW::new(len, 0.9, 0.95, 1e-8, 0.1);
        let mut parts: Vec<AdamW> = shards
            .iter()
            .map(|r| AdamW::new(r.len(), 0.9, 0.95, 1e-8, 0.1))
            .collect();
        for step in 0..5u64 {
            let g = spread(len, seed ^ (step + 2));
            let lr = 1e-3 * (step + 1) as f32;
            whole.update(&mut whole_p, &g, lr, &mask);
            for (opt, r) in parts.iter_mut().zip(&shards) {
                opt.update(&mut shard_p[r.clone()], &g[r.clone()], lr, &mask[r.clone()]);
            }
        }
        prop_assert_eq!(bits(&shard_p), bits(&whole_p));
        let m: Vec<f32> = parts.iter().flat_map(|o| o.m().to_vec()).collect();
        let v: Vec<f32> = parts.iter().flat_map(|o| o.v().to_vec()).collect();
        prop_assert_eq!(bits(&m), bits(whole.m()));
        prop_assert_eq!(bits(&v), bits(whole.v()));
        prop_assert!(parts.iter().all(|o| o.step() == whole.step()));

        // Re-sharding mid-run (a resume on another world size): the whole state cut
        // into other shards with from_state carries on with the same bits.
        let other = pieces(len, &[len / 3, len / 2], 1);
        let mut resharded: Vec<AdamW> = other
            .iter()
            .map(|r| {
                AdamW::from_state(
                    0.9, 0.95, 1e-8, 0.1,
                    whole.m()[r.clone()].to_vec(),
                    whole.v()[r.clone()].to_vec(),
                    whole.step(),
                )
                .unwrap()
            })
            .collect();
        let g = spread(len, seed ^ 99);
        whole.update(&mut whole_p, &g, 2e-3, &mask);
        for (opt, r) in resharded.iter_mut().zip(&other) {
            opt.update(&mut shard_p[r.clone()], &g[r.clone()], 2e-3, &mask[r.clone()]);
        }
        prop_assert_eq!(bits(&shard_p), bits(&whole_p));
    }
}

#[test]
fn adamw_on_threads_with_a_clip_factor_equals_scaling_then_one_thread() {
    // Past the size below which update_with stays on one thread, and not a multiple of
    // any chunk; three steps so the moments and the bias correction move.
    let n = 3 * (1 << 16) + 77;
    let params0 = spread(n, 2);
    let mask: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
    let scale = clip_scale(7.5, 1.0);
    let mut want_p = params0.clone();
    let mut want = AdamW::new(n, 0.9, 0.95, 1e-8, 0.1);
    let mut steps = Vec::new();
    for s in 0..3 {
        let g = spread(n, 10 + s);
        let mut scaled = g.clone();
        scaled.iter_mut().for_each(|x| *x *= scale);
        want.update(&mut want_p, &scaled, 1e-3, &mask);
        steps.push(g);
    }
    for threads in [1, 2, 3] {
        let mut p = params0.clone();
        let mut opt = AdamW::new(n, 0.9, 0.95, 1e-8, 0.1);
        for g in &steps {
            opt.update_with(&mut p, g, scale, 1e-3, &mask, threads);
        }
        assert_eq!(bits(&p), bits(&want_p), "params, {threads} threads");
        assert_eq!(bits(opt.m()), bits(want.m()), "m, {threads} threads");
        assert_eq!(bits(opt.v()), bits(want.v()), "v, {threads} threads");
    }
    // A factor of 1 is no scaling at all.
    let (mut a, mut b) = (params0.clone(), params0.clone());
    let (mut oa, mut ob) = (
        AdamW::new(n, 0.9, 0.95, 1e-8, 0.1),
        AdamW::new(n, 0.9, 0.95, 1e-8, 0.1),
    );
    oa.update(&mut a, &steps[0], 1e-3, &mask);
    ob.update_with(&mut b, &steps[0], 1.0, 1e-3, &mask, 2);
    assert_eq!(bits(&a), bits(&b));
}
