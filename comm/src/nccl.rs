//! The NCCL backend: NVIDIA's collectives through cudarc, with libnccl and
//! libcuda loaded at run time.
//!
//! cudarc panics when a dynamically loaded library is missing, so
//! [`NcclComm::connect`] first probes the same file names with the runtime's
//! `dylib::probe_names` (`dlopen`) and
//! returns [`CommError::NcclUnavailable`] saying what it looked for and what
//! to do (`--comm socket` works everywhere). NCCL's unique id travels through
//! frugal's rendezvous ([`crate::rendezvous::exchange`]'s blob).
//!
//! The [`Communicator`] methods take host slices (copy in, reduce on the
//! device, copy out) so the trait is the same as the socket ring's; the
//! device-side entry point is [`NcclComm::all_reduce_device_f32`] (on NCCL's own
//! stream); the training step's in-place gradient average on the runtime's comm
//! stream is [`crate::NcclDeviceCollective`].
//!
//! Chunks: NCCL's own reduce-scatter and all-gather need equal chunks, and
//! frugal's differ (by one element for the even split, arbitrarily for a
//! bucket's part of each rank's shard). So a reduce-scatter is one grouped
//! `ncclReduce` per non-empty chunk, to its owner, and an all-gather one
//! grouped `ncclBroadcast` per non-empty chunk, from its owner: the same
//! bytes on the wire as NCCL's collectives, launched together (the group lets
//! NCCL run them at once instead of one after another).
//!
//! Numerics: NCCL sums in its own order (its algorithm, channel count and
//! topology pick it), so sums over NCCL are NOT bitwise equal to the socket
//! ring's ([`crate::ring_order_sum_in`]) and may differ between an all-reduce
//! and a reduce-scatter of the same values; they are the same from run to run
//! on the same machine and NCCL version. All-gathers and broadcasts copy bits.

use crate::error::CommError;
use crate::ops::{check_bounds, chunk_range, even_bounds, Communicator, Transport};
use crate::rendezvous::{self, Rendezvous};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use frugal_runtime::dylib;
use half::bf16;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::Arc;

/// Where dlopen searches, for messages.
fn search_path() -> String {
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    format!("the dynamic loader's path (LD_LIBRARY_PATH='{ld}', /etc/ld.so.cache, /lib, /usr/lib)")
}

/// Checks that cudarc will find `lib` (e.g. "cuda", "nccl") under one of the
/// names it tries; `extra_names` are other names the library goes by, which
/// cudarc may not try (the hint then says how to make it).
fn probe(
    lib: &'static str,
    library: &'static str,
    extra_names: &[&str],
    hint: &str,
) -> Result<(), CommError> {
    let cudarc_names = dylib::probe_names(cudarc::get_lib_name_candidates(lib));
    if cudarc_names.found.is_some() {
        return Ok(());
    }
    let found_other = dylib::probe_names(extra_names.iter().map(|s| s.to_string()).collect()).found;
    let mut looked_for = cudarc_names.looked_for;
    looked_for.extend(extra_names.iter().map(|s| s.to_string()));
    let mut seen = std::collections::HashSet::new();
    looked_for.retain(|n| seen.insert(n.clone()));
    let hint = match found_other {
        Some(other) => format!(
            "{other} exists but cudarc loads only the names above: link it as lib{lib}.so in a directory on LD_LIBRARY_PATH, or use --comm socket"
        ),
        None => format!("searched {}; {hint}", search_path()),
    };
    Err(CommError::NcclUnavailable {
        library,
        looked_for,
        hint,
    })
}

/// Checks that both the CUDA driver and NCCL can be loaded.
///
/// # Errors
/// [`CommError::NcclUnavailable`] listing the names tried and what to do.
pub fn check_available() -> Result<(), CommError> {
    probe(
        "cuda",
        "the CUDA driver (libcuda)",
        &["libcuda.so.1"],
        "install the NVIDIA driver, or use --comm socket",
    )?;
    probe(
        "nccl",
        "NCCL (libnccl)",
        &["libnccl.so.2"],
        "install NCCL (e.g. the nvidia-nccl-cu12 wheel, then add its lib directory to LD_LIBRARY_PATH), or use --comm socket",
    )
}

/// `ncclComm_t` is a handle to NCCL state that may be used from any thread as
/// long as calls on it do not overlap; `NcclComm` owns it exclusively and takes `&mut self`.
struct OwnedComm(ManuallyDrop<Comm>);

// SAFETY: see the type's note: exclusive ownership, one caller at a time.
unsafe impl Send for OwnedComm {}

impl Drop for OwnedComm {
    fn drop(&mut self) {
        // cudarc's Drop panics if ncclCommAbort fails; a drop must never panic,
        // so the panic is contained here (the process is usually exiting anyway).
        let inner = &mut self.0;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: dropped exactly once, here; never used afterwards.
            unsafe { ManuallyDrop::drop(inner) }
        }));
    }
}

/// The NCCL communicator. See the module docs.
pub struct NcclComm {
    rank: usize,
    world: usize,
    stream: Arc<CudaStream>,
    comm: OwnedComm,
    /// Device staging for host collectives, grown on demand.
    staging: Option<CudaSlice<f32>>,
    /// The same for byte collectives (all-gather).
    staging_bytes: Option<CudaSlice<u8>>,
    host: Vec<f32>,
}

pub(crate) fn nccl_err(
    rank: usize,
    call: &'static str,
) -> impl Fn(cudarc::nccl::result::NcclError) -> CommError {
    move |e| CommError::Nccl {
        rank,
        call,
        message: format!("{e:?}"),
    }
}

fn cuda_err(rank: usize, call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CommError {
    move |e| CommError::Nccl {
        rank,
        call,
        message: format!("{e:?}"),
    }
}

/// Rank 0 makes NCCL's unique id and hands it out through the rendezvous; every rank
/// gets it (the caller checked that the libraries load).
pub(crate) fn exchange_id(rv: &Rendezvous) -> Result<[std::ffi::c_char; 128], CommError> {
    let rank = rv.rank;
    let id_bytes: Vec<u8> = if rank == 0 {
        let id = Id::new().map_err(nccl_err(rank, "ncclGetUniqueId"))?;
        id.internal().iter().map(|&c| c as u8).collect()
    } else {
        Vec::new()
    };
    let peers = rendezvous::exchange(rv, 0, &id_bytes)?;
    let mut internal = [0 as std::ffi::c_char; 128];
    if peers.blob.len() != internal.len() {
        return Err(CommError::InvalidArgument {
            what: format!(
                "rank {rank}: NCCL unique id from rank 0 has {} bytes, expected 128",
                peers.blob.len()
            ),
        });
    }
    for (d, s) in internal.iter_mut().zip(&peers.blob) {
        *d = *s as std::ffi::c_char;
    }
    Ok(internal)
}

impl NcclComm {
    /// Joins the job on GPU `device`: rank 0 makes NCCL's unique id and hands it
    /// out through the rendezvous, then every rank initialises its communicator.
    ///
    /// # Errors
    /// [`CommError::NcclUnavailable`] without the libraries; rendezvous and NCCL errors otherwise.
    pub fn connect(rv: &Rendezvous, device: usize) -> Result<NcclComm, CommError> {
        check_available()?;
        let rank = rv.rank;
        let internal = exchange_id(rv)?;
        let ctx = CudaContext::new(device).map_err(cuda_err(rank, "cuCtxCreate"))?;
        let stream = ctx.new_stream().map_err(cuda_err(rank, "cuStreamCreate"))?;
        let comm = Comm::from_rank(stream.clone(), rank, rv.world, Id::uninit(internal))
            .map_err(nccl_err(rank, "ncclCommInitRank"))?;
        Ok(NcclComm {
            rank,
            world: rv.world,
            stream,
            comm: OwnedComm(ManuallyDrop::new(comm)),
            staging: None,
            staging_bytes: None,
            host: Vec::new(),
        })
    }

    /// The stream NCCL runs on (order compute before it with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Sums a device buffer over ranks, in place, on [`NcclComm::stream`] (asynchronous).
    pub fn all_reduce_device_f32(&mut self, buf: &mut CudaSlice<f32>) -> Result<(), CommError> {
        self.comm
            .0
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(nccl_err(self.rank, "ncclAllReduce"))?;
        Ok(())
    }

    /// Host → device, `f` on the device buffer, device → host, synchronised.
    fn via_device(
        &mut self,
        data: &mut [f32],
        f: impl FnOnce(&Comm, &mut CudaSlice<f32>) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let mut staging = self.staging.take();
        let r = Self::staged(self.rank, &self.stream, &self.comm.0, &mut staging, data, f);
        self.staging = staging;
        r
    }

    /// [`NcclComm::via_device`] for bytes.
    fn via_device_bytes(
        &mut self,
        data: &mut [u8],
        f: impl FnOnce(&Comm, &mut CudaSlice<u8>) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let mut staging = self.staging_bytes.take();
        let r = Self::staged(self.rank, &self.stream, &self.comm.0, &mut staging, data, f);
        self.staging_bytes = staging;
        r
    }

    /// Copies `data` into `staging` (reallocated when its length differs),
    /// runs `f` on it, copies it back and waits for the stream. Everything runs
    /// on the one stream, so its order alone orders the copies and NCCL's calls.
    fn staged<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        rank: usize,
        stream: &Arc<CudaStream>,
        comm: &Comm,
        staging: &mut Option<CudaSlice<T>>,
        data: &mut [T],
        f: impl FnOnce(&Comm, &mut CudaSlice<T>) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut dev = match staging.take() {
            Some(d) if d.len() == data.len() => d,
            _ => stream
                .alloc_zeros::<T>(data.len())
                .map_err(cuda_err(rank, "cuMemAlloc"))?,
        };
        stream
            .memcpy_htod(&*data, &mut dev)
            .map_err(cuda_err(rank, "cuMemcpyHtoD"))?;
        f(comm, &mut dev)?;
        stream
            .memcpy_dtoh(&dev, data)
            .map_err(cuda_err(rank, "cuMemcpyDtoH"))?;
        stream
            .synchronize()
            .map_err(cuda_err(rank, "cuStreamSynchronize"))?;
        *staging = Some(dev);
        Ok(())
    }
}

/// Runs `f` between `ncclGroupStart` and `ncclGroupEnd`, so NCCL launches
/// the calls `f` makes together (several roots at once cannot deadlock). The
/// group is closed even when `f` fails (an open group would swallow the next
/// calls); the first error is returned. cudarc's `Comm::group` is not used:
/// it panics when either call fails.
fn grouped(rank: usize, f: impl FnOnce() -> Result<(), CommError>) -> Result<(), CommError> {
    cudarc::nccl::result::group_start().map_err(nccl_err(rank, "ncclGroupStart"))?;
    let r = f();
    let end = cudarc::nccl::result::group_end()
        .map(|_| ())
        .map_err(nccl_err(rank, "ncclGroupEnd"));
    r.and(end)
}

/// A device view of `range`, or an error naming it (the bounds were checked,
/// so this is a bug guard, not a panic).
fn view<'a, T>(
    rank: usize,
    dev: &'a mut CudaSlice<T>,
    range: Range<usize>,
) -> Result<cudarc::driver::CudaViewMut<'a, T>, CommError> {
    let len = dev.len();
    dev.try_slice_mut(range.clone())
        .ok_or_else(|| CommError::InvalidArgument {
            what: format!("rank {rank}: chunk {range:?} outside a device buffer of {len}"),
        })
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn transport(&self) -> Transport {
        Transport::Nccl
    }

    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let rank = self.rank;
        self.via_device(data, |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(nccl_err(rank, "ncclAllReduce"))
        })
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError> {
        let mut host = std::mem::take(&mut self.host);
        host.clear();
        host.extend(data.iter().map(|v| v.to_f32()));
        let r = self.all_reduce_sum_f32(&mut host);
        if r.is_ok() {
            for (d, s) in data.iter_mut().zip(&host) {
                *d = bf16::from_f32(*s);
            }
        }
        self.host = host;
        r
    }

    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError> {
        let bounds = even_bounds(data.len(), self.world);
        self.reduce_scatter_sum_f32_in(data, &bounds)?;
        Ok(chunk_range(data.len(), self.world, self.rank))
    }

    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let bounds = even_bounds(data.len(), self.world);
        self.all_gather_f32_in(data, &bounds)
    }

    fn all_reduce_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        check_bounds(bounds, data.len(), self.world, self.rank)?;
        // NCCL sums in its own order (see the module docs); the chunks only
        // say who would own what, which an all-reduce does not need.
        self.all_reduce_sum_f32(data)
    }

    /// One grouped `ncclReduce` per non-empty chunk, in place, to its owner
    /// (NCCL's order of summation, not the ring's; see the module docs).
    fn reduce_scatter_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        check_bounds(bounds, data.len(), self.world, self.rank)?;
        let rank = self.rank;
        let world = self.world;
        self.via_device(data, |comm, dev| {
            grouped(rank, || {
                for c in 0..world {
                    // Every rank skips the same chunks: the bounds are the same everywhere.
                    if bounds[c] == bounds[c + 1] {
                        continue;
                    }
                    let mut chunk = view(rank, dev, bounds[c]..bounds[c + 1])?;
                    comm.reduce_in_place(&mut chunk, &ReduceOp::Sum, c as i32)
                        .map_err(nccl_err(rank, "ncclReduce"))?;
                }
                Ok(())
            })
        })
    }

    /// One grouped `ncclBroadcast` per non-empty chunk, in place, from its owner.
    fn all_gather_bytes_in(&mut self, data: &mut [u8], bounds: &[usize]) -> Result<(), CommError> {
        check_bounds(bounds, data.len(), self.world, self.rank)?;
        let rank = self.rank;
        let world = self.world;
        self.via_device_bytes(data, |comm, dev| {
            grouped(rank, || {
                for c in 0..world {
                    if bounds[c] == bounds[c + 1] {
                        continue;
                    }
                    let mut chunk = view(rank, dev, bounds[c]..bounds[c + 1])?;
                    comm.broadcast_in_place(&mut chunk, c as i32)
                        .map_err(nccl_err(rank, "ncclBroadcast"))?;
                }
                Ok(())
            })
        })
    }

    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(CommError::InvalidArgument {
                what: format!("rank {}: broadcast root {root} out of range", self.rank),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let rank = self.rank;
        let mut dev = self
            .stream
            .clone_htod(&*data)
            .map_err(cuda_err(rank, "cuMemcpyHtoD"))?;
        self.comm
            .0
            .broadcast_in_place(&mut dev, root as i32)
            .map_err(nccl_err(rank, "ncclBroadcast"))?;
        self.stream
            .memcpy_dtoh(&dev, data)
            .map_err(cuda_err(rank, "cuMemcpyDtoH"))?;
        self.stream
            .synchronize()
            .map_err(cuda_err(rank, "cuStreamSynchronize"))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        let mut one = [0.0f32];
        self.all_reduce_sum_f32(&mut one)
    }
}
