//! Loopback ports for tests that start ranks on a port they pick themselves
//! (also included by the binary's tests).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where test ports start; below it lie well-known services' ports.
const FLOOR: u32 = 10_000;

/// A loopback port for a test job's rendezvous: free when checked, never the same
/// twice in one process, and below the kernel's ephemeral range when that leaves
/// room. A port the kernel picked (bind to port 0) and the test released lies in
/// that range, where any connection opened meanwhile may take it as its own
/// before the test's rank 0 binds it; below the range only explicit binds go.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().min(u32::from(u16::MAX));
    if low > FLOOR + 1000 {
        let span = low - FLOOR;
        // Processes (test binaries, one after another) start at different places.
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (FLOOR + (start + step) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
