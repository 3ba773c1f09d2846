//! How long planning takes: `sweep`, `plan` and `arena --mem-target` plan many
//! configurations (every candidate batch of every preset), so the planner must stay in
//! microseconds to low milliseconds. Reports plans per second for the example buffer
//! list and for synthetic step-like lists as deep as the paper's presets (the real step's
//! requests come from frugal-model's step program, which this crate does not depend on).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use frugal_runtime::arena::{parse_buffers, plan, BufferRequest, Category};

/// A step-shaped request list of `layers` layers: state for the whole schedule, per layer
/// activations saved from its forward to its backward, and one-operation scratch in both.
/// About the 35 buffers a layer of the real step declares.
fn step_like(layers: u32, act_bytes: u64, state_bytes: u64) -> Vec<BufferRequest> {
    let ops_per_layer = 20;
    let fwd = |l: u32| 1 + l * ops_per_layer;
    let bwd = |l: u32| 1 + (2 * layers - 1 - l) * ops_per_layer;
    let end = bwd(0) + ops_per_layer;
    let mut r: Vec<BufferRequest> = ["weights", "master", "grads", "adam.m", "adam.v"]
        .iter()
        .map(|name| BufferRequest::new(*name, Category::Params, state_bytes, 0, end))
        .collect();
    for l in 0..layers {
        for i in 0..15 {
            let (first, last) = (fwd(l) + i, bwd(l) + ops_per_layer - 1 - i);
            let name = format!("layer{l}.saved{i}");
            r.push(BufferRequest::new(
                name,
                Category::Activations,
                act_bytes,
                first,
                last,
            ));
        }
        for (pass, at) in [("fwd", fwd(l)), ("bwd", bwd(l))] {
            for i in 0..10 {
                let name = format!("layer{l}.{pass}.scratch{i}");
                let (first, last) = (at + i, at + i + 1);
                r.push(BufferRequest::new(
                    name,
                    Category::Workspace,
                    act_bytes / 2,
                    first,
                    last,
                ));
            }
        }
    }
    r
}

fn bench_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena_plan");
    g.throughput(Throughput::Elements(1));
    let example = parse_buffers(include_str!("../tests/data/example.buffers"))
        .expect("the example buffer list parses");
    for (name, reqs) in [
        ("example.buffers", example),
        ("9 layers", step_like(9, 54 << 20, 500 << 20)),
        ("24 layers", step_like(24, 160 << 20, 7 << 30)),
    ] {
        g.bench_function(format!("{name} ({} buffers)", reqs.len()), |b| {
            b.iter(|| plan(std::hint::black_box(&reqs)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
