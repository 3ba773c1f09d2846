//! The NCCL backend: without libnccl or the CUDA driver, joining is a clear
//! error (never a panic inside cudarc); with them, a one-rank job works,
//! the collectives over explicit chunks included.

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
            // The grouped reduce-scatter and all-gather over explicit chunks:
            // one rank owns everything, so both leave the values as they were.
            let mut y = vec![0.5f32, -0.0, 4.0];
            comm.reduce_scatter_sum_f32_in(&mut y, &[0, 3])
                .expect("reduce-scatter");
            assert_eq!(y, vec![0.5, -0.0, 4.0]);
            let mut g = vec![1u8, 2, 3];
            comm.all_gather_bytes_in(&mut g, &[0, 3])
                .expect("all-gather");
            assert_eq!(g, vec![1, 2, 3]);
            let bad = comm.all_gather_bytes_in(&mut g, &[0, 2]).err();
            assert!(
                matches!(bad, Some(CommError::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
    }
}
