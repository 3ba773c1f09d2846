//! Helpers shared by the comm integration tests: free loopback ports, ranks as
//! threads, and deterministic test data.
#![allow(dead_code)]

use frugal_comm::{CommError, Rendezvous, SocketComm, SocketOptions};
use std::time::Duration;

mod port;
#[allow(unused_imports)] // each test binary uses a different subset
pub use port::free_port;

/// Runs `f(rank, comm)` on `world` threads joined into one loopback job and
/// returns each rank's result, in rank order.
pub fn with_ranks<T: Send + 'static>(
    world: usize,
    options: SocketOptions,
    timeout: Duration,
    f: impl Fn(usize, &mut SocketComm) -> T + Send + Sync + Clone + 'static,
) -> Vec<Result<T, CommError>> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, world, port, "test-token", timeout);
                let mut comm = SocketComm::connect(&rv, options)?;
                Ok(f(rank, &mut comm))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect()
}

/// Deterministic pseudo-random f32 in [-1, 1) with varied exponents, so that
/// summation order matters to the last bit (which the bitwise tests need).
pub fn data(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let unit = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let scale = [1.0f32, 1e-3, 37.0, 0.1][(s & 3) as usize];
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}
