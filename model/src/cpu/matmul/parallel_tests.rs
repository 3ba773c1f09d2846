//! The parallel driver against one thread: every layout's strides, ragged shapes,
//! several depth blocks and B regions, 1 to 4 threads, on scoped threads and on a
//! [`Pool`]: the bits never depend on the thread count, and the products are right.

use super::*;
use crate::cpu::par::Pool;
use crate::rng::Rng;
use proptest::prelude::*;

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// A (m, k) matrix stored row-major or transposed: the view and its storage's width.
fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> View<'_> {
    if transposed {
        View::transposed(data, rows)
    } else {
        View::row_major(data, cols)
    }
}

/// C (m, n) += A·B through `blocked` on `threads` (no small-product shortcut), with C
/// padded to ldc = n + 3 (the padding must stay as it was).
#[allow(clippy::too_many_arguments)]
fn product(
    shape: Gemm,
    a: &[f32],
    at: bool,
    b: &[f32],
    bt: bool,
    prior: &[f32],
    acc: Accumulate,
    threads: usize,
) -> Vec<f32> {
    let Gemm { m, n, k } = shape;
    let mut c = prior.to_vec();
    let (av, bv) = (view(a, m, k, at), view(b, k, n, bt));
    let cv = ViewMut {
        data: &mut c,
        rs: n + 3,
    };
    let kernel = Kernel::detect();
    check_shapes(shape, &av, &bv, &cv, kernel);
    blocked(
        &mut [Part {
            a: av,
            c: cv,
            m,
            base: None,
        }],
        bv,
        n,
        k,
        acc,
        kernel,
        threads,
    );
    c
}

/// Runs every thread count from 1 to 4 (on a pool when `pooled`) and checks that all
/// give one thread's bits, and one thread's result against f64 on sampled elements.
#[allow(clippy::too_many_arguments)]
fn same_bits_for_any_threads(
    shape: Gemm,
    at: bool,
    bt: bool,
    acc: Accumulate,
    pooled: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Gemm { m, n, k } = shape;
    let mut rng = Rng::new(seed);
    let (a, b) = (random(m * k, &mut rng), random(k * n, &mut rng));
    let ldc = n + 3;
    let prior = random(m * ldc, &mut rng);
    let one = product(shape, &a, at, &b, bt, &prior, acc, 1);
    let (av, bv) = (view(&a, m, k, at), view(&b, k, n, bt));
    let el = |v: View, i: usize, j: usize| v.data[i * v.rs + j * v.cs] as f64;
    for s in 0..16 {
        let (i, j) = ((s * 7919) % m, (s * 104_729) % n);
        let base = if acc == Accumulate::Add {
            prior[i * ldc + j] as f64
        } else {
            0.0
        };
        let want = base + (0..k).map(|p| el(av, i, p) * el(bv, p, j)).sum::<f64>();
        let got = one[i * ldc + j] as f64;
        prop_assert!(
            (got - want).abs() <= 1e-5 * k as f64 + 1e-6,
            "({i}, {j}): {got} vs {want}"
        );
    }
    for i in 0..m {
        prop_assert!(one[i * ldc + n..(i + 1) * ldc] == prior[i * ldc + n..(i + 1) * ldc]);
    }
    for threads in 2..=4 {
        let run = || product(shape, &a, at, &b, bt, &prior, acc, threads);
        let many = if pooled {
            Pool::new(threads).install(run)
        } else {
            run()
        };
        prop_assert!(
            one.iter()
                .zip(&many)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{threads} threads differ from one ({shape:?}, A transposed {at}, B transposed {bt})"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn parallel_products_have_one_threads_bits(
        m in 1usize..200, n in 1usize..90, k in 1usize..700,
        at in any::<bool>(), bt in any::<bool>(), add in any::<bool>(), pooled in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let acc = if add { Accumulate::Add } else { Accumulate::Overwrite };
        same_bits_for_any_threads(Gemm { m, n, k }, at, bt, acc, pooled, seed)?;
    }
}

/// Past one B block both ways: more than NC columns and several KC-deep blocks.
#[test]
fn several_b_blocks_have_one_threads_bits() {
    let shape = Gemm {
        m: 31,
        n: NC + 37,
        k: 3 * KC + 77,
    };
    for (at, bt) in [(false, false), (true, true)] {
        same_bits_for_any_threads(shape, at, bt, Accumulate::Add, true, 5).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Weight gradients that share their input, in one call, have the bits each gets
    /// alone, on any thread count; nothing outside each dw is touched.
    #[test]
    fn weight_gradients_sharing_x_have_their_own_bits(
        outs in proptest::collection::vec(1usize..140, 1..=3),
        rows in 1usize..600, inp in 1usize..90, threads in 1usize..5, seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let x = random(rows * inp, &mut rng);
        let dys: Vec<Vec<f32>> = outs.iter().map(|&o| random(rows * o, &mut rng)).collect();
        let priors: Vec<Vec<f32>> = outs.iter().map(|&o| random(o * inp, &mut rng)).collect();
        let mut alone = priors.clone();
        for ((dw, dy), &out) in alone.iter_mut().zip(&dys).zip(&outs) {
            linear_backward_weight(dw, dy, &x, LinearDims { rows, inp, out }, 1);
        }
        // One buffer holding the gradients back to back, as a layer's q, k and v are.
        let mut together: Vec<f32> = priors.concat();
        let mut rest = &mut together[..];
        let mut grads = Vec::new();
        for (dy, &out) in dys.iter().zip(&outs) {
            let (dw, tail) = rest.split_at_mut(out * inp);
            grads.push(WeightGrad { dw, dy, out });
            rest = tail;
        }
        Pool::new(threads).install(|| linear_backward_weights(&mut grads, &x, rows, inp, threads));
        let want = alone.concat();
        prop_assert!(together.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A forward from a residual base has the bits of copying the base and adding the
    /// product, on any thread count (several B blocks both ways where the shape has them).
    #[test]
    fn a_forward_from_a_base_is_the_copy_then_the_add(
        rows in 1usize..300, inp in 0usize..600, out in 1usize..1700, threads in 1usize..5,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let (x, w, base) = (
            random(rows * inp, &mut rng),
            random(out * inp, &mut rng),
            random(rows * out, &mut rng),
        );
        let dims = LinearDims { rows, inp, out };
        let mut want = base.clone();
        linear_forward(&mut want, &x, &w, dims, Accumulate::Add, 1);
        let mut got = vec![f32::NAN; rows * out];
        Pool::new(threads).install(|| linear_forward_residual(&mut got, &base, &x, &w, dims, threads));
        prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn row_tasks_are_whole_tiles_in_multiples_of_the_threads() {
    for tiles in 1..400 {
        for threads in 1..=4 {
            let tasks = row_tasks(tiles, threads);
            assert!(tasks >= 1 && tasks <= tiles, "{tiles} tiles: {tasks} tasks");
            // At most one A block per task.
            assert!(
                tiles.div_ceil(tasks) * MR <= MC,
                "{tiles} tiles, {tasks} tasks"
            );
            if !tasks.is_multiple_of(threads) {
                assert!(tasks.div_ceil(threads) * threads > tiles);
            }
        }
    }
}
