//! frugal-comm: how the ranks of a data-parallel job find each other and sum
//! their gradients.
//!
//! - [`Rendezvous`] reads torchrun's or Slurm's variables (or is built by hand).
//! - [`SocketComm`] is frugal's own ring all-reduce over TCP (no GPU needed;
//!   Unix sockets between ranks on one host, and all-reduces, reduce-scatters
//!   and all-gathers through shared memory when every rank is on one host);
//!   [`NcclComm`] is NCCL through cudarc, loaded at run time. Both implement
//!   [`Communicator`]: all-reduce (f32, and bf16 summed in f32), reduce-scatter,
//!   all-gather, broadcast, barrier.
//! - [`Ddp`] is the sync engine of every sharding mode: gradients reduced in
//!   fixed buckets on a communication thread while the backward pass goes on
//!   ([`Reduce::AllReduce`] for `--shard none`, [`Reduce::ReduceScatter`]
//!   for `grad-op` and `full`), parameters gathered on the same thread, each
//!   element reduced on its owner in [`Shards`], so every mode gives the same bits.
//!
//! # Walkthrough
//!
//! Two ranks on loopback, here as two threads (a real job runs one process per
//! rank, started by `frugal launch`, torchrun or srun, and calls
//! `Rendezvous::from_env(None)`):
//!
//! ```
//! use frugal_comm::{chunk_range, Communicator, Ddp, Reduce, Rendezvous, Shards, SocketComm, SocketOptions};
//! use std::time::Duration;
//!
//! // Any free port; rank 0 listens on it for the rendezvous.
//! let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
//! let ranks: Vec<_> = (0..2)
//!     .map(|rank| {
//!         std::thread::spawn(move || {
//!             let rv = Rendezvous::loopback(rank, 2, port, "doc-token", Duration::from_secs(10));
//!             let mut comm = SocketComm::connect(&rv, SocketOptions::default()).unwrap();
//!
//!             // All-reduce: every rank ends with the same sum, bit for bit.
//!             let mut x = vec![rank as f32 + 1.0; 5];
//!             comm.all_reduce_sum_f32(&mut x).unwrap();
//!             assert_eq!(x, vec![3.0; 5]);
//!
//!             // Reduce-scatter leaves each rank its chunk of the sum.
//!             let mut y = vec![1.0f32; 5];
//!             let mine = comm.reduce_scatter_sum_f32(&mut y).unwrap();
//!             assert_eq!(mine, chunk_range(5, 2, rank));
//!             assert!(y[mine].iter().all(|&v| v == 2.0));
//!
//!             // --shard none (DDP): parameters from rank 0, gradients averaged in buckets.
//!             let mut params = vec![rank as f32; 8];
//!             let mut grads = vec![rank as f32 * 2.0; 8];
//!             let mut ddp = Ddp::new(Box::new(comm), 8, 16).unwrap();
//!             ddp.broadcast_params(&mut params).unwrap();
//!             assert_eq!(params, vec![0.0; 8]);
//!             ddp.on_ready(&grads, 4..8).unwrap(); // last layers first, as backward finishes them
//!             ddp.on_ready(&grads, 0..4).unwrap();
//!             let stats = ddp.finish(&mut grads).unwrap();
//!             assert_eq!(grads, vec![1.0; 8]); // (0 + 2) / 2
//!             assert_eq!((stats.bytes, stats.buckets), (32, 2));
//!
//!             // --shard grad-op / full: 8 parameters in blocks of 4, rank 0 owns 0..4,
//!             // rank 1 owns 4..8; each rank gets the averaged gradients of its shard only.
//!             let shards = Shards::new(8, 2, 4);
//!             let comm = ddp.into_comm().unwrap();
//!             let mut ddp = Ddp::with_shards(comm, shards, 16, Reduce::ReduceScatter).unwrap();
//!             let grads = vec![rank as f32 * 2.0; 8];
//!             ddp.on_ready_values(6..8, &grads[6..8]).unwrap(); // the rest comes from `grads`
//!             let mut shard_grads = vec![0.0; 4];
//!             ddp.finish_shard(&grads, &mut shard_grads).unwrap();
//!             assert_eq!(shard_grads, vec![1.0; 4]); // the bits finish gives those elements
//!             // The gradient norm: each rank's block partial sums, gathered in rank order.
//!             let mine = [shard_grads.iter().map(|g| (g * g) as f64).sum::<f64>()];
//!             let partials = ddp.all_gather_now_f64(&mine, &[1, 1]).unwrap();
//!             assert_eq!(partials, vec![4.0, 4.0]);
//!             // Each rank updates its shard; weights are gathered whole (a unit at a time).
//!             let my_weights = vec![rank as f32 + 10.0; 4];
//!             let unit = ddp.start_gather(2..6, &my_weights[..2]).unwrap(); // 2..4 or 4..6
//!             let mut weights = Vec::new();
//!             ddp.wait_gather(unit, &mut weights).unwrap();
//!             assert_eq!(weights, vec![10.0, 10.0, 11.0, 11.0]); // each from its owner
//!         })
//!     })
//!     .collect();
//! for r in ranks {
//!     r.join().unwrap();
//! }
//! ```

//!
//! # Layout
//!
//! Each module uses only modules to its left (no cycles):
//! `error <- wait <- ops <- shard <- frame <- nodelist <- handshake <- rendezvous <- shm <- socket <- hier <- nccl <- ddp`;
//! `nccl_device` and `device_reduce` (the runtime's `DeviceCollective`: NCCL on the
//! device's comm stream, the host ring on the emulator's) use `nccl` and `ops`.
//! `wait` bounds every wait on a peer (poll, connect, accept, read, write, the
//! timeouts); `handshake` is the one accept-by-identity, used by rank 0's
//! rendezvous and by every ring listener; `socket/` is the ring in rooms
//! (options, link, setup, ring, event_loop).

pub mod ddp;
pub mod device_reduce;
pub mod error;
pub mod frame;
mod handshake;
pub mod hier;
pub mod nccl;
mod nccl_device;
pub mod nodelist;
pub mod ops;
pub mod rendezvous;
pub mod shard;
mod shm;
pub mod socket;
mod wait;

pub use ddp::{CommStats, Ddp, Reduce, Ticket, DEFAULT_BUCKET_BYTES};
pub use device_reduce::{HostRingCollective, NcclDeviceCollective};
pub use error::{AbortCause, CommError, FrameProblem, PeerFailure, Refusal, TimeoutPhase};
pub use hier::{Algorithm, HierComm, ALGORITHM_ENV};
pub use nccl::NcclComm;
pub use nodelist::parse_nodelist;
pub use ops::{chunk_range, ring_order_sum, ring_order_sum_in, Communicator, Transport};
pub use rendezvous::{LaunchedBy, Rendezvous};
pub use shard::{ShardMode, Shards};
pub use socket::{SameHost, SocketComm, SocketOptions};
pub use wait::{DEFAULT_TIMEOUT, TIMEOUT_ENV};

/// Joins the job over the chosen transport (`local_rank` picks the GPU for NCCL);
/// over sockets with the all-reduce FRUGAL_ALLREDUCE chooses ([`Algorithm`]).
///
/// # Errors
/// Whatever the transport's `connect` reports.
pub fn connect(transport: Transport, rv: &Rendezvous) -> Result<Box<dyn Communicator>, CommError> {
    Ok(match transport {
        Transport::Socket => hier::connect(rv, SocketOptions::default(), Algorithm::from_env()?)?.0,
        Transport::Nccl => Box::new(NcclComm::connect(rv, rv.local_rank)?),
    })
}
