//! GFLOP/s of the CPU GEMM in the three layouts of a linear layer, at the
//! shapes of the `tiny` and `small` presets (rows = B·T tokens). Throughput is
//! counted in FLOPs (2 per multiply-add), so criterion's "elem/s" reads as FLOP/s.
//!
//! Run: `cargo bench -p frugal-model --bench matmul`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use frugal_model::config::Preset;
use frugal_model::cpu::matmul::{
    linear_backward_input, linear_backward_weight, linear_forward, Accumulate, LinearDims,
};
use frugal_model::rng::Rng;

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn bench_matmul(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("matmul");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut rng = Rng::new(1);
    for name in ["tiny", "small"] {
        let Ok(p) = Preset::by_name(name) else {
            continue;
        };
        let rows = p.default_batch * p.seq_len;
        let (dim, ffn) = (p.dim, p.ffn_dim);
        for (what, inp, out) in [("attn", dim, dim), ("up", dim, ffn), ("down", ffn, dim)] {
            let x = random(rows * inp, &mut rng);
            let w = random(out * inp, &mut rng);
            let dy = random(rows * out, &mut rng);
            let mut y = vec![0.0f32; rows * out];
            let mut dx = vec![0.0f32; rows * inp];
            let mut dw = vec![0.0f32; out * inp];
            let dims = LinearDims { rows, inp, out };
            group.throughput(Throughput::Elements((2 * rows * inp * out) as u64));
            let shape = format!("{name}-{what}-{rows}x{inp}x{out}-t{threads}");
            group.bench_function(BenchmarkId::new("forward", &shape), |b| {
                b.iter(|| {
                    linear_forward(
                        black_box(&mut y),
                        &x,
                        &w,
                        dims,
                        Accumulate::Overwrite,
                        threads,
                    )
                })
            });
            group.bench_function(BenchmarkId::new("backward_input", &shape), |b| {
                b.iter(|| {
                    linear_backward_input(
                        black_box(&mut dx),
                        &dy,
                        &w,
                        dims,
                        Accumulate::Overwrite,
                        threads,
                    )
                })
            });
            group.bench_function(BenchmarkId::new("backward_weight", &shape), |b| {
                b.iter(|| linear_backward_weight(black_box(&mut dw), &dy, &x, dims, threads))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
