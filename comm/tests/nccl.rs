//! The NCCL backend: without libnccl or the CUDA driver, joining is a clear
//! error (never a panic inside cudarc); with them, a one-rank job works.

use frugal_comm::{CommError, Rendezvous, Transport};

#[test]
fn nccl_is_a_clear_error_without_its_libraries_and_works_with_them() {
    match frugal_comm::nccl::check_available() {
        Err(e) => {
            let text = e.to_string();
            eprintln!("as expected on this machine: {text}");
            assert!(matches!(e, CommError::NcclUnavailable { .. }), "{text}");
            assert!(
                text.contains("looked for") && text.contains(".so"),
                "says what it looked for: {text}"
            );
            assert!(text.contains("--comm socket"), "says what to do: {text}");
            // The same error through the public entry point, not a panic.
            let e = frugal_comm::connect(Transport::Nccl, &Rendezvous::single())
                .err()
                .expect("no NCCL here");
            assert!(matches!(e, CommError::NcclUnavailable { .. }), "{e}");
        }
        Ok(()) => {
            let mut comm = frugal_comm::connect(Transport::Nccl, &Rendezvous::single())
                .expect("one-rank NCCL job");
            assert_eq!(
                (comm.rank(), comm.world(), comm.transport()),
                (0, 1, Transport::Nccl)
            );
            let mut x = vec![1.5f32, -2.0, 3.25];
            comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
            assert_eq!(x, vec![1.5, -2.0, 3.25]);
            let mut b = vec![7u8; 5];
            comm.broadcast_bytes(&mut b, 0).expect("broadcast");
            assert_eq!(b, vec![7u8; 5]);
        }
    }
}
