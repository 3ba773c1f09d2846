//! Emulated instructions per second of the PTX emulator.
//!
//! Two workloads: a loop-heavy scalar kernel (16 CTAs × 256 threads, 256 iterations of
//! fma/add/compare/branch each, with per-thread divergence at the end of the loop), and the
//! 128×128×128 bf16 `mma.sync` + `ldmatrix` + `cp.async` tiled matmul test kernel. Criterion's
//! throughput is in warp-level instructions ("elements"), so `thrpt` reads as emulated
//! warp instructions per second; each bench also prints thread-level instructions once.
//!
//! Run: `cargo bench -p frugal-ptx --bench emu`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};

const LOOP_KERNEL: &str = r#"
.version 8.0
.target sm_80
.address_size 64
// loop_fma: out[i] = sum over j < 256 + (i % 8) of fma chains; (B*T) threads, one value each.
.visible .entry loop_fma(.param .u64 out)
{
    .reg .pred %p<3>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<4>;
    .reg .f32 %f<6>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r0, %r1, %r2, %r3;
    and.b32 %r4, %r0, 7;
    add.s32 %r4, %r4, 256;
    cvt.rn.f32.u32 %f1, %r0;
    mov.f32 %f2, 0f3F800000;
    mov.f32 %f3, 0f00000000;
    mov.u32 %r5, 0;
LOOP:
    fma.rn.f32 %f3, %f1, %f2, %f3;
    mul.f32 %f2, %f2, 0f3F7FF000;
    add.s32 %r5, %r5, 1;
    xor.b32 %r6, %r5, %r0;
    setp.lt.u32 %p1, %r5, %r4;
    @%p1 bra LOOP;
    mul.wide.u32 %rd2, %r0, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3], %f3;
    ret;
}
"#;

fn bench_loop(c: &mut Criterion) {
    let module = Module::parse(LOOP_KERNEL).expect("bench kernel parses");
    let mut mem = DeviceMemory::new();
    let threads = 16 * 256;
    let out = mem.alloc(4 * threads, "out");
    let dims = LaunchDims {
        grid: [16, 1, 1],
        block: [256, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let params = out.to_le_bytes();
    for (name, checks) in [
        ("loop_fma/checks_on", Checks::default()),
        ("loop_fma/checks_off", Checks::none()),
    ] {
        let stats = launch(&module, "loop_fma", &dims, &params, &mut mem, &checks)
            .expect("bench kernel runs");
        println!(
            "{name}: {} warp instructions, {} thread instructions per launch",
            stats.instructions, stats.thread_instructions
        );
        let mut g = c.benchmark_group("emu");
        g.throughput(Throughput::Elements(stats.instructions));
        g.sample_size(10);
        g.bench_function(name, |b| {
            b.iter(|| {
                launch(&module, "loop_fma", &dims, &params, &mut mem, &checks)
                    .expect("bench kernel runs")
            })
        });
        g.finish();
    }
}

fn bench_matmul(c: &mut Criterion) {
    // The test kernel lives with the kernel tests; skip (loudly) if it is not there.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/kernels/matmul_bf16_cp_async.ptx"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("skipping matmul bench: {path} not found");
        return;
    };
    let module = match Module::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            println!("skipping matmul bench: {e}");
            return;
        }
    };
    const M: usize = 128;
    let mut mem = DeviceMemory::new();
    // bf16 inputs: small integers (exact), the values do not matter for speed.
    let a: Vec<u8> = (0..M * M)
        .flat_map(|i| half::bf16::from_f32((i % 7) as f32).to_bits().to_le_bytes())
        .collect();
    let pa = mem.alloc(a.len(), "a");
    let pb = mem.alloc(a.len(), "b");
    let pc = mem.alloc(M * M * 4, "c");
    mem.write(pa, &a).expect("fits");
    mem.write(pb, &a).expect("fits");
    let mut params = Vec::new();
    for p in [pa, pb, pc] {
        params.extend_from_slice(&p.to_le_bytes());
    }
    for v in [M as u32; 3] {
        params.extend_from_slice(&v.to_le_bytes());
    }
    let dims = LaunchDims {
        grid: [(M / 64) as u32, (M / 64) as u32, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let kernel = "matmul_bf16_cp_async";
    let Ok(stats) = launch(
        &module,
        kernel,
        &dims,
        &params,
        &mut mem,
        &Checks::default(),
    ) else {
        println!("skipping matmul bench: the kernel does not run");
        return;
    };
    println!(
        "matmul 128^3: {} warp instructions, {} thread instructions per launch",
        stats.instructions, stats.thread_instructions
    );
    let mut g = c.benchmark_group("emu");
    g.throughput(Throughput::Elements(stats.instructions));
    g.sample_size(10);
    g.bench_function("matmul_bf16_128/checks_on", |b| {
        b.iter(|| {
            launch(
                &module,
                kernel,
                &dims,
                &params,
                &mut mem,
                &Checks::default(),
            )
            .expect("runs")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_loop, bench_matmul);
criterion_main!(benches);
