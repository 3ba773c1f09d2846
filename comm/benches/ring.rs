//! Criterion benchmark of the socket ring's all-reduce between two ranks on
//! loopback (threads of this process). `frugal bench allreduce` measures the
//! same with one process per rank, for more ranks and sizes, as a table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use frugal_comm::{Communicator, Rendezvous, SocketComm, SocketOptions};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bench_all_reduce(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(29555);
    let timeout = Duration::from_secs(60);
    // Rank 1 runs on a helper thread: told how many iterations of which size, it runs them too.
    let (jobs, job_rx) = mpsc::channel::<(usize, u64)>();
    let helper = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 2, port, "bench", timeout);
        let Ok(mut comm) = SocketComm::connect(&rv, SocketOptions::default()) else {
            return;
        };
        while let Ok((len, iters)) = job_rx.recv() {
            let mut buf = vec![1e-7f32; len];
            for _ in 0..iters {
                if comm.all_reduce_sum_f32(&mut buf).is_err() {
                    return;
                }
            }
        }
    });
    let rv = Rendezvous::loopback(0, 2, port, "bench", timeout);
    let mut comm = match SocketComm::connect(&rv, SocketOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ring bench skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("ring_all_reduce_2_ranks");
    for bytes in [4usize << 10, 1 << 20, 16 << 20] {
        let len = bytes / 4;
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(bytes), &len, |b, &len| {
            let mut buf = vec![1e-7f32; len];
            b.iter_custom(|iters| {
                if jobs.send((len, iters)).is_err() {
                    return Duration::ZERO;
                }
                let t = Instant::now();
                for _ in 0..iters {
                    if comm.all_reduce_sum_f32(&mut buf).is_err() {
                        break;
                    }
                }
                t.elapsed()
            });
        });
    }
    group.finish();
    drop(jobs);
    let _ = helper.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(2));
    targets = bench_all_reduce
}
criterion_main!(benches);
