//! The CPU GEMM against the machine's FMA peak, without criterion (quick, one table).
//!
//! Peak: a loop of independent FMAs on `Kernel::detect()`'s vector width (ten
//! accumulators, so that latency never limits it) gives flops per second per core;
//! the peak of T threads is T times that (measured on one thread while the others
//! idle, so it is the clock the machine reaches, turbo included). Then the three
//! layouts of a linear layer at the shapes the issue names (rows = B·T tokens), on 1
//! and on all threads: best of `FRUGAL_GEMM_REPS` (default 5) runs, GFLOP/s = 2·M·N·K / time.
//! Several threads run on a [`Pool`] of parked workers, as inside a model's step.
//!
//! A second figure counts CPU time instead of wall time (the on-CPU nanoseconds of
//! every thread of the process, from Linux's `/proc/self/task/*/schedstat`, divided
//! by the threads): on a machine shared with other jobs a descheduled thread's wait
//! does not count, so it compares two builds more steadily than wall time does
//! (spinning while another thread finishes still counts). It is the mean over at
//! least 200 ms of CPU time: schedstat of a running thread is only brought up to date
//! at scheduler ticks, so one short run reads far too fast (or zero). NaN where
//! unavailable.
//!
//! `FRUGAL_GEMM_NO_PEAK=1` skips the peak loops (for callgrind: the products' instruction
//! counts without minutes of emulated FMAs).
//!
//! `FRUGAL_GEMM_THREADS=1,2` picks the thread counts (default 1 and all cores);
//! `FRUGAL_GEMM_ONLY=WORD` keeps the rows whose name contains WORD (e.g. `bwd-w`,
//! `512x1376`), for A/B runs of two builds on a shared machine.
//!
//! Run: `cargo bench -p frugal-model --bench gemm_peak`

mod timing;

use std::hint::black_box;
use std::time::Instant;
use timing::{best_of, random};

use frugal_model::cpu::matmul::{
    linear_backward_input, linear_backward_weight, linear_forward, Accumulate, Kernel, LinearDims,
};
use frugal_model::cpu::par::Pool;

/// On-CPU nanoseconds of all this process's threads so far (None off Linux).
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Mean CPU seconds per run, over as many runs (after a warm-up) as take at least
/// 200 ms of CPU time and at least `reps` (tick-grained, see above); NaN where
/// `cpu_ns` is unavailable.
fn mean_cpu(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let Some(t0) = cpu_ns() else {
        return f64::NAN;
    };
    let mut runs = 0;
    loop {
        f();
        runs += 1;
        let Some(t1) = cpu_ns() else {
            return f64::NAN;
        };
        let spent = (t1 - t0) as f64 * 1e-9;
        if runs >= reps && spent >= 0.2 {
            return spent / runs as f64;
        }
    }
}

/// FLOP/s of one core's FMA units: 10 independent accumulator chains, 2 flops per lane.
fn fma_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if Kernel::detect() == Kernel::Avx512 {
            // SAFETY: detect() saw AVX-512F.
            return unsafe { fma_peak_avx512() };
        }
        if Kernel::detect() != Kernel::Portable {
            // SAFETY: detect() saw AVX2 and FMA (AVX-512 machines have both too).
            return unsafe { fma_peak_avx2() };
        }
    }
    f64::NAN
}

/// A peak loop: `$accs` independent accumulator chains of one vector FMA each, best of
/// three timed runs, in FLOP/s (`$lanes` lanes, 2 flops per lane).
macro_rules! fma_peak_loop {
    ($name:ident, $feature:literal, $set1:ident, $fmadd:ident, $accs:expr, $lanes:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name() -> f64 {
            use std::arch::x86_64::*;
            let iters = 20_000_000u64;
            let mut acc = [$set1(0.0); $accs];
            let (a, b) = ($set1(0.999_999), $set1(1e-7));
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..iters {
                    for x in acc.iter_mut() {
                        *x = $fmadd(*x, a, b);
                    }
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            black_box(acc);
            (iters * $accs) as f64 * $lanes as f64 * 2.0 / best
        }
    };
}

fma_peak_loop!(
    fma_peak_avx2,
    "avx2,fma",
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    10,
    8
);
// The zmm loop itself, not twice the ymm loop: where a core has one 512-bit FMA unit (or
// a lower clock for 512-bit work) this is what the AVX-512 kernels can reach.
fma_peak_loop!(
    fma_peak_avx512,
    "avx512f",
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    12,
    16
);

fn main() {
    let reps: usize = std::env::var("FRUGAL_GEMM_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let thread_counts: Vec<usize> = match std::env::var("FRUGAL_GEMM_THREADS") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&t| t >= 1)
            .collect(),
        Err(_) => vec![1, all],
    };
    let only = std::env::var("FRUGAL_GEMM_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let pool = Pool::new(thread_counts.iter().copied().max().unwrap_or(1));
    // FRUGAL_GEMM_NO_PEAK=1 skips the FMA loops (slow under callgrind): % peak is NaN.
    let skip_peak = std::env::var_os("FRUGAL_GEMM_NO_PEAK").is_some();
    let peak_of = || if skip_peak { f64::NAN } else { fma_peak() };
    let peak = peak_of();
    // The same loop on every core at once: where the clock drops with all cores busy
    // (or another job shares them), this is below `all` times the one-core figure.
    let together: f64 = std::thread::scope(|s| {
        let runs: Vec<_> = (0..all).map(|_| s.spawn(peak_of)).collect();
        runs.into_iter().map(|r| r.join().unwrap_or(f64::NAN)).sum()
    });
    println!(
        "kernel {:?}; FMA peak per core {:.1} GFLOP/s ({} threads: {:.1}; measured on all at once: {:.1})",
        Kernel::detect(),
        peak / 1e9,
        all,
        peak * all as f64 / 1e9,
        together / 1e9
    );
    println!(
        "{:<34} {:>8} {:>10} {:>8} {:>12} {:>8}",
        "product (rows x inp x out)", "threads", "GFLOP/s", "% peak", "cpu GFLOP/s", "% peak"
    );
    let mut seed = 1u64;
    // (rows, inp, out): the two shapes, B·T = 2048 rows each.
    for (rows, inp, out) in [
        (2048, 256, 256),
        (2048, 256, 688),
        (2048, 688, 256),
        (2048, 512, 512),
        (2048, 512, 1376),
        (2048, 1376, 512),
    ] {
        let x = random(rows * inp, &mut seed);
        let w = random(out * inp, &mut seed);
        let dy = random(rows * out, &mut seed);
        let (mut y, mut dx, mut dw) = (
            vec![0.0f32; rows * out],
            vec![0.0f32; rows * inp],
            vec![0.0f32; out * inp],
        );
        let dims = LinearDims { rows, inp, out };
        let flops = 2.0 * (rows * inp * out) as f64;
        for &threads in &thread_counts {
            for what in ["fwd", "bwd-in", "bwd-w"] {
                let name = format!("{what} {rows}x{inp}x{out}");
                if !wanted(&name) {
                    continue;
                }
                let mut product = || match what {
                    "fwd" => linear_forward(&mut y, &x, &w, dims, Accumulate::Overwrite, threads),
                    "bwd-in" => {
                        let acc = Accumulate::Overwrite;
                        linear_backward_input(&mut dx, &dy, &w, dims, acc, threads)
                    }
                    _ => linear_backward_weight(&mut dw, &dy, &x, dims, threads),
                };
                let wall = pool.install(|| best_of(reps, &mut product));
                let cpu = pool.install(|| mean_cpu(reps, &mut product)) / threads as f64;
                let (g, gc) = (flops / wall, flops / cpu);
                let t_peak = peak * threads as f64;
                println!(
                    "{:<34} {:>8} {:>10.1} {:>7.0}% {:>12.1} {:>7.0}%",
                    name,
                    threads,
                    g / 1e9,
                    100.0 * g / t_peak,
                    gc / 1e9,
                    100.0 * gc / t_peak
                );
            }
        }
        black_box((&y, &dx, &dw));
    }
}
