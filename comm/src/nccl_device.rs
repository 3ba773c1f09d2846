//! NCCL on the runtime's comm stream: see [`crate::device_reduce`].

use std::ops::Range;
use std::time::{Duration, Instant};

use cudarc::nccl::{result, sys};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::collective::{
    check_bounds, ring_all_gather_sent, ring_all_reduce_sent, ring_reduce_scatter_sent,
    CollectiveCounts, DeviceCollective,
};
use frugal_runtime::device::Device;
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::stream::{Event, StreamKind};
use frugal_runtime::RuntimeError;

use crate::device_reduce::Liveness;
use crate::error::CommError;
use crate::nccl::{check_available, exchange_id, nccl_err};
use crate::rendezvous::Rendezvous;

/// A raw `ncclComm_t` used on the device's comm stream (see the module docs).
pub struct NcclDeviceCollective {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Set once aborted: later calls fail instead of touching a dead communicator.
    aborted: Option<String>,
    counts: CollectiveCounts,
    /// The host side asked which peer is gone when a collective fails.
    liveness: Option<Liveness>,
    /// bf16 buckets ([`DeviceCollective::set_bf16_buckets`]).
    bf16: bool,
    /// bf16 buckets: where a range is cast to bf16 and reduced (reused range after range:
    /// the comm stream runs them one after another).
    scratch: Option<DeviceBuffer>,
    /// Scratch buffers replaced by a larger one, kept until a host wait has seen the
    /// collectives queued on them done.
    retired: Vec<DeviceBuffer>,
}

// SAFETY: the handle is used by one caller at a time (`&mut self`), as NCCL allows.
unsafe impl Send for NcclDeviceCollective {}

impl NcclDeviceCollective {
    /// Joins the job's NCCL communicator on `device` (a `cuda` device; its context is
    /// made current): rank 0's unique id through the rendezvous, then
    /// `ncclCommInitRank`. The rendezvous's timeout (`FRUGAL_COMM_TIMEOUT`) bounds
    /// every host wait on a collective.
    ///
    /// # Errors
    /// [`CommError::NcclUnavailable`] without the libraries; the device is not `cuda`;
    /// rendezvous and NCCL errors.
    pub fn connect(rv: &Rendezvous, device: &Device) -> Result<Self, CommError> {
        check_available()?;
        let rank = rv.rank;
        // Makes the device's context current: NCCL binds the communicator to it.
        device
            .cuda_stream(StreamKind::Comm)
            .map_err(|e| CommError::InvalidArgument {
                what: format!("rank {rank}: NCCL on device buffers needs a cuda device: {e}"),
            })?;
        let internal = exchange_id(rv)?;
        let id = sys::ncclUniqueId { internal };
        let mut comm = std::mem::MaybeUninit::uninit();
        let world = i32::try_from(rv.world).map_err(|_| CommError::InvalidArgument {
            what: format!("rank {rank}: {} ranks is more than NCCL takes", rv.world),
        })?;
        // SAFETY: `comm` is written by a successful call; rank < world was checked by the rendezvous.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world, id, rank as i32)
                .map_err(nccl_err(rank, "ncclCommInitRank"))?;
            comm.assume_init()
        };
        Ok(NcclDeviceCollective {
            comm,
            rank,
            world: rv.world,
            timeout: rv.timeout,
            aborted: None,
            counts: CollectiveCounts::default(),
            liveness: None,
            bf16: false,
            scratch: None,
            retired: Vec::new(),
        })
    }

    /// The bf16 scratch, at least `elems` long, and its address.
    fn scratch_for(&mut self, device: &Device, elems: usize) -> Result<u64, RuntimeError> {
        if self.scratch.as_ref().is_none_or(|b| b.bytes() < elems * 2) {
            let fresh = device.alloc(elems * 2, "bf16 gradient bucket")?;
            if let Some(old) = self.scratch.replace(fresh) {
                self.retired.push(old);
            }
        }
        Ok(self.scratch.as_ref().map_or(0, |b| b.ptr()))
    }

    /// Queues `kernel` (`cast_f32_bf16` or `cast_bf16_f32`: source, destination, count)
    /// on the comm stream.
    fn cast(
        device: &Device,
        kernel: &str,
        src: u64,
        dst: u64,
        n: usize,
    ) -> Result<(), RuntimeError> {
        if n == 0 {
            return Ok(());
        }
        device.launch_on(
            StreamKind::Comm,
            kernel,
            &dims_1d(n as u64, 256, 4, 1024),
            &[Arg::Ptr(src), Arg::Ptr(dst), Arg::U64(n as u64)],
        )?;
        Ok(())
    }

    /// Pairs the collective with the host side's liveness: on a failure or a timeout,
    /// after `ncclCommAbort`, the error says which peer the host ring found gone.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Aborts the communicator (its kernels end, the streams they held go on) and
    /// remembers why; returns the error to report.
    fn abort(&mut self, what: String, why: String) -> RuntimeError {
        if self.aborted.is_none() {
            // SAFETY: a live communicator, aborted once; never used afterwards.
            if let Err(e) = unsafe { result::comm_abort(self.comm) } {
                log::warn!("rank {}: ncclCommAbort: {e:?}", self.rank);
            }
            self.aborted = Some(why.clone());
        }
        // Asked after the abort: the other ranks' collectives then fail at once (NCCL's
        // asynchronous error) and they ask too, so the barrier completes when nobody died.
        let who = match self.liveness.as_mut() {
            Some(l) => l.ask(),
            None => "NCCL does not say which peer failed: see the other ranks' errors".into(),
        };
        RuntimeError::Collective {
            what,
            message: format!("rank {}: {why}; NCCL was aborted; {who}", self.rank),
        }
    }

    fn check_alive(&self, what: &str) -> Result<(), RuntimeError> {
        match &self.aborted {
            Some(why) => Err(RuntimeError::Collective {
                what: what.to_string(),
                message: format!("rank {}: NCCL was aborted earlier: {why}", self.rank),
            }),
            None => Ok(()),
        }
    }

    /// NCCL's asynchronous error, if any.
    fn async_error(&self) -> Option<String> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator; writes one result code.
        let r = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
        match (r, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
            | (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => None,
            (sys::ncclResult_t::ncclSuccess, e) => Some(format!("NCCL reported {e:?}")),
            (e, _) => Some(format!("ncclCommGetAsyncError failed: {e:?}")),
        }
    }
}

impl NcclDeviceCollective {
    /// bf16 buckets: the range cast to bf16 in the scratch, `ncclAllReduce` with
    /// `ncclBfloat16` and `ncclAvg` in place there, cast back (see the module docs).
    fn all_reduce_bf16(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        len: usize,
        what: String,
    ) -> Result<Event, RuntimeError> {
        let at = buf.ptr() + byte as u64;
        let scratch = self.scratch_for(device, len)?;
        Self::cast(device, "cast_f32_bf16", at, scratch, len)?;
        let stream = device.cuda_stream(StreamKind::Comm)? as sys::cudaStream_t;
        let ptr = scratch as *mut std::ffi::c_void;
        // SAFETY: the scratch holds `len` bf16 and lives until a host wait saw this done.
        let r = unsafe {
            result::all_reduce(
                ptr,
                ptr,
                len,
                sys::ncclDataType_t::ncclBfloat16,
                sys::ncclRedOp_t::ncclAvg,
                self.comm,
                stream,
            )
        };
        if let Err(e) = r {
            return Err(self.abort(what, format!("ncclAllReduce (bf16): {e:?}")));
        }
        Self::cast(device, "cast_bf16_f32", scratch, at, len)?;
        let chunks: Vec<usize> = (0..self.world)
            .map(|c| crate::ops::chunk_range(len, self.world, c).len())
            .collect();
        self.counts.collectives += 1;
        self.counts.bytes += len * 2;
        self.counts.sent_bytes += ring_all_reduce_sent(&chunks, self.rank, 2);
        device.record(StreamKind::Comm, &what)
    }
}

impl Drop for NcclDeviceCollective {
    fn drop(&mut self) {
        if self.aborted.is_none() {
            // SAFETY: a live communicator, destroyed once, never used afterwards.
            if let Err(e) = unsafe { result::comm_destroy(self.comm) } {
                log::warn!("rank {}: ncclCommDestroy: {e:?}", self.rank);
            }
        }
    }
}

impl DeviceCollective for NcclDeviceCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        let what = format!(
            "NCCL all-reduce of gradients {}..{}",
            elems.start, elems.end
        );
        self.check_alive(&what)?;
        let len = elems.len();
        if byte + len * 4 > buf.bytes() {
            return Err(RuntimeError::CopySize {
                what: "NCCL all-reduce range",
                bytes: byte + len * 4,
                capacity: buf.bytes(),
            });
        }
        device.wait(StreamKind::Comm, after)?;
        let stream = device.cuda_stream(StreamKind::Comm)?;
        if self.bf16 {
            return self.all_reduce_bf16(device, buf, byte, len, what);
        }
        let ptr = (buf.ptr() + byte as u64) as *mut std::ffi::c_void;
        // SAFETY: `ptr` addresses `len` f32 of a live device buffer (checked above), kept
        // alive by the caller until the returned event is done; in place is allowed.
        let r = unsafe {
            result::all_reduce(
                ptr,
                ptr,
                len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream as sys::cudaStream_t,
            )
        };
        if let Err(e) = r {
            return Err(self.abort(what, format!("ncclAllReduce: {e:?}")));
        }
        let view = buf.as_view::<f32>();
        let dims = dims_1d(len as u64, 256, 4, 1024);
        device.launch_on(
            StreamKind::Comm,
            "scale_f32",
            &dims,
            &[
                Arg::Ptr(view.ptr + byte as u64),
                Arg::U64(len as u64),
                Arg::F32(1.0 / self.world as f32),
            ],
        )?;
        // As a ring over even chunks would send them (NCCL picks its own algorithm).
        let chunks: Vec<usize> = (0..self.world)
            .map(|c| crate::ops::chunk_range(len, self.world, c).len())
            .collect();
        self.counts.collectives += 1;
        self.counts.bytes += len * 4;
        self.counts.sent_bytes += ring_all_reduce_sent(&chunks, self.rank, 4);
        device.record(StreamKind::Comm, &what)
    }

    fn take_counts(&mut self) -> CollectiveCounts {
        std::mem::take(&mut self.counts)
    }

    fn set_bf16_buckets(&mut self, bf16: bool) -> bool {
        self.bf16 = bf16;
        true
    }

    fn reduce_scatter_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        bounds: &[usize],
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        let what = format!(
            "NCCL reduce-scatter of gradients {}..{}",
            elems.start, elems.end
        );
        self.check_alive(&what)?;
        check_bounds(bounds, elems.len(), self.world, &what)?;
        check_range(buf, byte, elems.len() * 4, "NCCL reduce-scatter range")?;
        device.wait(StreamKind::Comm, after)?;
        let at = buf.ptr() + byte as u64;
        // bf16 buckets: reduced in the scratch, averaged there (ncclAvg), cast back.
        let (base, elem, dtype, op) = if self.bf16 {
            let scratch = self.scratch_for(device, elems.len())?;
            Self::cast(device, "cast_f32_bf16", at, scratch, elems.len())?;
            let dtype = sys::ncclDataType_t::ncclBfloat16;
            (scratch, 2, dtype, sys::ncclRedOp_t::ncclAvg)
        } else {
            let dtype = sys::ncclDataType_t::ncclFloat32;
            (at, 4, dtype, sys::ncclRedOp_t::ncclSum)
        };
        let stream = device.cuda_stream(StreamKind::Comm)? as sys::cudaStream_t;
        let comm = self.comm;
        // One ncclReduce per chunk, rooted at its owner (see the module docs).
        let r = grouped(|| {
            for (c, w) in bounds.windows(2).enumerate() {
                if w[0] == w[1] {
                    continue;
                }
                let ptr = (base + (w[0] * elem) as u64) as *mut std::ffi::c_void;
                // SAFETY: the chunk lies in a live device buffer (checked above), kept
                // alive by the caller until the returned event is done; in place is
                // allowed (only the root's receive buffer is written).
                unsafe { result::reduce(ptr, ptr, w[1] - w[0], dtype, op, c as i32, comm, stream) }
                    .map_err(|e| format!("ncclReduce: {e:?}"))?;
            }
            Ok(())
        });
        if let Err(why) = r {
            return Err(self.abort(what, why));
        }
        let own = bounds[self.rank]..bounds[self.rank + 1];
        if self.bf16 {
            let (src, dst) = (base + own.start as u64 * 2, at + own.start as u64 * 4);
            Self::cast(device, "cast_bf16_f32", src, dst, own.len())?;
        } else if !own.is_empty() {
            let view = buf.as_view::<f32>();
            device.launch_on(
                StreamKind::Comm,
                "scale_f32",
                &dims_1d(own.len() as u64, 256, 4, 1024),
                &[
                    Arg::Ptr(view.ptr + (byte + own.start * 4) as u64),
                    Arg::U64(own.len() as u64),
                    Arg::F32(1.0 / self.world as f32),
                ],
            )?;
        }
        let chunks: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        let elem = if self.bf16 { 2 } else { 4 };
        self.counts.collectives += 1;
        self.counts.bytes += elems.len() * elem;
        self.counts.sent_bytes += ring_reduce_scatter_sent(&chunks, self.rank, elem);
        device.record(StreamKind::Comm, &what)
    }

    fn all_gather_bytes(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        bounds: &[usize],
        own: Option<usize>,
        after: &Event,
        what: &str,
    ) -> Result<Event, RuntimeError> {
        let what = format!("NCCL all-gather of {what}");
        self.check_alive(&what)?;
        let len = bounds.last().copied().unwrap_or(0);
        check_bounds(bounds, len, self.world, &what)?;
        check_range(buf, byte, len, "NCCL all-gather range")?;
        let mine = bounds[self.rank]..bounds[self.rank + 1];
        if let Some(src) = own {
            check_range(buf, src, mine.len(), "NCCL all-gather source chunk")?;
        }
        device.wait(StreamKind::Comm, after)?;
        let stream = device.cuda_stream(StreamKind::Comm)? as sys::cudaStream_t;
        let (comm, rank) = (self.comm, self.rank);
        // One ncclBroadcast per chunk from its owner (see the module docs).
        let r = grouped(|| {
            for (c, w) in bounds.windows(2).enumerate() {
                if w[0] == w[1] {
                    continue;
                }
                let at = (buf.ptr() + (byte + w[0]) as u64) as *mut std::ffi::c_void;
                let from = match own {
                    Some(src) if c == rank => (buf.ptr() + src as u64) as *const std::ffi::c_void,
                    _ => at as *const std::ffi::c_void,
                };
                // SAFETY: both ranges lie in a live device buffer (checked above), kept
                // alive by the caller until the returned event is done; only the root
                // reads its send buffer, and in place is allowed.
                unsafe {
                    result::broadcast(
                        from,
                        at,
                        w[1] - w[0],
                        sys::ncclDataType_t::ncclUint8,
                        c as i32,
                        comm,
                        stream,
                    )
                }
                .map_err(|e| format!("ncclBroadcast: {e:?}"))?;
            }
            Ok(())
        });
        if let Err(why) = r {
            return Err(self.abort(what, why));
        }
        let chunks: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        self.counts.collectives += 1;
        self.counts.bytes += len;
        self.counts.sent_bytes += ring_all_gather_sent(&chunks, self.rank);
        device.record(StreamKind::Comm, &what)
    }

    fn wait(&mut self, _device: &Device, event: &Event) -> Result<(), RuntimeError> {
        let what = format!("waiting for {}", event.label());
        self.check_alive(&what)?;
        let start = Instant::now();
        loop {
            if event.query()? {
                // Everything queued before the event is done: the replaced scratch too
                // (the waits are on the comm stream's last events).
                if event.stream() == StreamKind::Comm {
                    self.retired.clear();
                }
                return Ok(());
            }
            if let Some(why) = self.async_error() {
                return Err(self.abort(what, why));
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                let why = format!(
                    "no progress in {} ms (a dead or stuck peer)",
                    waited.as_millis()
                );
                return Err(self.abort(what, why));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Runs `calls` between `ncclGroupStart` and `ncclGroupEnd` (the group is ended
/// whatever happens, so that NCCL is not left inside it).
fn grouped(calls: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    result::group_start().map_err(|e| format!("ncclGroupStart: {e:?}"))?;
    let r = calls();
    let end = result::group_end().map_err(|e| format!("ncclGroupEnd: {e:?}"));
    r.and(end.map(|_| ()))
}

/// `CopySize` when `len` bytes from `byte` are not all in `buf`.
fn check_range(
    buf: &DeviceBuffer,
    byte: usize,
    len: usize,
    what: &'static str,
) -> Result<(), RuntimeError> {
    if byte + len > buf.bytes() {
        return Err(RuntimeError::CopySize {
            what,
            bytes: byte + len,
            capacity: buf.bytes(),
        });
    }
    Ok(())
}
