//! One CPU training step (forward + backward, no optimizer) of the `tiny`
//! preset at its default batch and sequence length, and the forward alone;
//! throughput in tokens. With `FRUGAL_BENCH_SMALL=1`, also the `small` preset.
//!
//! Run: `cargo bench -p frugal-model --bench step`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use frugal_model::config::Preset;
use frugal_model::cpu::CpuModel;
use frugal_model::init::init_params;
use frugal_model::rng::Rng;

fn bench_step(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    // `small` takes seconds per step: only when asked for.
    let presets: &[&str] = if std::env::var_os("FRUGAL_BENCH_SMALL").is_some() {
        &["tiny", "small"]
    } else {
        &["tiny"]
    };
    for &name in presets {
        let Ok(preset) = Preset::by_name(name) else {
            continue;
        };
        let cfg = preset.config();
        let (b, t) = (preset.default_batch, preset.seq_len);
        let params = init_params(&cfg, 1);
        let mut rng = Rng::new(2);
        let inputs: Vec<u32> = (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        let targets: Vec<u32> = (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        let Ok(mut model) = CpuModel::new(&cfg, b, t, threads) else {
            continue;
        };
        let mut grads = vec![0.0f32; params.len()];
        group.throughput(Throughput::Elements((b * t) as u64));
        group.bench_function(
            format!("{name}-forward_backward-b{b}-t{t}-threads{threads}"),
            |bench| {
                bench.iter(|| {
                    model
                        .forward_backward(
                            &params,
                            &inputs,
                            &targets,
                            black_box(&mut grads),
                            1.0,
                            &mut |_| {},
                        )
                        .map(black_box)
                })
            },
        );
        group.bench_function(
            format!("{name}-forward-b{b}-t{t}-threads{threads}"),
            |bench| bench.iter(|| model.loss(&params, &inputs, &targets).map(black_box)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
