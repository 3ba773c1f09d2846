//! How long planning takes: `sweep` and `plan` plan thousands of configurations
//! (every batch of every preset), so the planner must stay in microseconds to
//! low milliseconds. Reports plans per second for the paper's presets.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use frugal_runtime::arena::plan;
use frugal_runtime::step_memory::{step_requests, Attention, StepShape};

fn shape(layers: u64, dim: u64, heads: u64, ffn: u64, params: u64) -> StepShape {
    StepShape {
        vocab: 32000,
        dim,
        layers,
        heads,
        kv_heads: heads,
        ffn,
        seq: 1024,
        batch: 32,
        params,
        attention: Attention::Flash,
        comm_bucket_bytes: 25 << 20,
    }
}

fn bench_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena_plan");
    g.throughput(Throughput::Elements(1));
    for (name, s) in [
        ("paper-100m", shape(9, 832, 13, 2332, 130_569_920)),
        ("paper-2b", shape(24, 2496, 39, 6739, 1_969_027_008)),
    ] {
        let reqs = step_requests(&s);
        g.bench_function(format!("{name} ({} buffers)", reqs.len()), |b| {
            b.iter(|| plan(std::hint::black_box(&reqs)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
