//! AdamW against hand-computed steps, the cosine schedule's shape, and the
//! global gradient norm and clipping.

use frugal_model::optim::{clip_scale, grad_norm, AdamW};
use frugal_model::rng::Rng;
use frugal_model::schedule::CosineSchedule;

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
