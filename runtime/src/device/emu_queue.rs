//! The emulated GPU's streams: work queued per stream (compute, copy, comm) and run
//! only when its stream predecessors and the events it waits for are done, in an order
//! that is legal but adversarial, so that a missing `wait` shows up here rather than
//! as a rare wrong bit on a GPU:
//!
//! - copy- and comm-stream work runs as EARLY as the rules allow: at once when it is
//!   queued, if its stream is idle and the events it waits for are done;
//! - compute-stream work runs as LATE as they allow: only when the host needs it (a
//!   synchronous copy or launch, a device or stream synchronize, an event wait that
//!   depends on it; each event query lets one compute item run, as a GPU would make
//!   progress on its own).
//!
//! So a copy that should wait for the kernel writing its source but does not reads the
//! old bytes. Better: when such a copy runs while compute work queued before it is still
//! pending, the emulator keeps what it read, and once that compute work has run it
//! compares the source again; if a kernel changed it, the next synchronisation reports
//! [`RuntimeError::Race`] naming the copy and the kernels. (Writes are not watched: a
//! host-to-device copy racing a kernel that reads its bytes gives a wrong value only.)
//!
//! Collectives (an operation over device bytes queued with `Device::queue_in_place`)
//! read their range as early as the rules allow, watched like a copy, and write their
//! result back as LATE as they allow (only when a wait, a host wait or a
//! synchronisation needs it): a kernel that reads the range without waiting for the
//! collective's event reads the bytes from before it, and one that wrote the range
//! between the read and the write-back is reported as a race.
//!
//! Graph capture: while the compute stream captures, its launches are recorded (not run)
//! and anything else on it is refused, as CUDA refuses synchronous work on a capturing
//! stream; replay queues the recorded launches.

use std::collections::{HashSet, VecDeque};

use crate::collective::InPlaceOp;
use crate::device::emu::EmuInner;
use crate::error::RuntimeError;
use crate::launch::LaunchDims;
use crate::stream::StreamKind;

/// A launch as queued or captured: the kernel, its module, shape and packed parameters.
#[derive(Clone, Debug)]
pub(crate) struct QueuedLaunch {
    pub kernel: String,
    pub module: usize,
    pub dims: LaunchDims,
    pub params: Vec<u8>,
}

/// A host address that queued work reads or writes. The owner of the memory (a
/// `HostTransfer`) waits for the work before it releases the memory, and leaks it
/// instead when the wait fails, so the address stays valid while the work is queued.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostPtr(pub *mut u8);

// SAFETY: see HostPtr: the memory outlives the queued work, and only the queue (under
// its mutex) touches it while the work is pending.
unsafe impl Send for HostPtr {}

enum Work {
    Launch(QueuedLaunch),
    /// Reads the device bytes and runs the operation on a copy, as early as its waits
    /// allow (like a copy); the result is written back by the `WriteBack` it leaves at
    /// the head of its stream.
    InPlace {
        label: String,
        addr: u64,
        len: usize,
        op: InPlaceOp,
        /// Compute items queued before it: the work it must be ordered after (later
        /// compute work is ordered by the waits on its event, checked at the write-back).
        queued_at: u64,
    },
    /// The result of an `InPlace`, written back as LATE as the rules allow (only when a
    /// wait or a synchronisation needs it), so that a kernel that reads the range without
    /// waiting for the collective's event reads the bytes from before it.
    WriteBack {
        label: String,
        addr: u64,
        read: Vec<u8>,
        result: Vec<u8>,
    },
    Record(u64),
    Wait {
        event: u64,
    },
    ToHost {
        label: String,
        src: u64,
        dst: HostPtr,
        len: usize,
    },
    FromHost {
        label: String,
        dst: u64,
        src: HostPtr,
        len: usize,
    },
}

impl Work {
    fn describe(&self) -> String {
        match self {
            Work::Launch(l) => format!("kernel '{}'", l.kernel),
            Work::Record(_) => "an event record".into(),
            Work::Wait { .. } => "an event wait".into(),
            Work::ToHost { label, .. } | Work::FromHost { label, .. } => format!("copy '{label}'"),
            Work::InPlace { label, .. } | Work::WriteBack { label, .. } => {
                format!("collective '{label}'")
            }
        }
    }
}

/// A copy that ran while compute work queued before it was pending: what it read,
/// checked again once that work has run.
struct Watch {
    label: String,
    stream: StreamKind,
    src: u64,
    bytes: Vec<u8>,
    /// The check happens when this many compute items have run.
    until: u64,
    kernels: String,
}

/// The queues of one emulated device.
#[derive(Default)]
pub(crate) struct EmuQueues {
    streams: [VecDeque<Work>; 3],
    /// Events recorded (queued) but not yet reached.
    pending_events: HashSet<u64>,
    next_event: u64,
    compute_queued: u64,
    compute_run: u64,
    watches: Vec<Watch>,
    capture: Option<Vec<QueuedLaunch>>,
    /// The first failure of queued work, reported at the next synchronisation.
    error: Option<RuntimeError>,
}

fn index(s: StreamKind) -> usize {
    match s {
        StreamKind::Compute => 0,
        StreamKind::Copy => 1,
        StreamKind::Comm => 2,
    }
}

const KINDS: [StreamKind; 3] = [StreamKind::Compute, StreamKind::Copy, StreamKind::Comm];

impl EmuQueues {
    fn event_done(&self, e: u64) -> bool {
        e < self.next_event && !self.pending_events.contains(&e)
    }

    fn runnable(&self, s: usize) -> bool {
        match self.streams[s].front() {
            None => false,
            Some(Work::Wait { event }) => self.event_done(*event),
            // Runs only when something needs it (see Work::WriteBack).
            Some(Work::WriteBack { .. }) => false,
            Some(_) => true,
        }
    }

    fn fail(&mut self, e: RuntimeError) {
        self.error.get_or_insert(e);
    }

    pub(crate) fn capturing(&self) -> bool {
        self.capture.is_some()
    }
}

impl EmuInner {
    /// Queues `work` on `stream`, then lets the copy and comm streams run what they can.
    fn enqueue(
        &self,
        q: &mut EmuQueues,
        stream: StreamKind,
        work: Work,
    ) -> Result<(), RuntimeError> {
        if stream == StreamKind::Compute {
            if let Some(list) = q.capture.as_mut() {
                return match work {
                    Work::Launch(l) => {
                        list.push(l);
                        Ok(())
                    }
                    other => Err(RuntimeError::Capture {
                        reason: format!(
                            "{} on the compute stream while it captures: only kernel \
                             launches can be captured (end the capture first)",
                            other.describe()
                        ),
                    }),
                };
            }
            q.compute_queued += 1;
        }
        q.streams[index(stream)].push_back(work);
        self.progress(q);
        Ok(())
    }

    /// Runs the head of stream `s` (which must be runnable).
    fn exec(&self, q: &mut EmuQueues, s: usize) {
        let Some(work) = q.streams[s].pop_front() else {
            return;
        };
        match work {
            Work::Launch(l) => {
                if let Err(e) = self.run_launch(&l.kernel, l.module, &l.dims, &l.params) {
                    q.fail(e);
                }
            }
            Work::Record(e) => {
                q.pending_events.remove(&e);
            }
            Work::Wait { .. } => {}
            Work::ToHost {
                label,
                src,
                dst,
                len,
            } => {
                // SAFETY: see HostPtr: `dst` addresses `len` bytes kept alive for this work.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.0, len) };
                match self.read(&label, src, out) {
                    Ok(()) if s != 0 && q.compute_queued > q.compute_run => {
                        let kernels = pending_kernels(&q.streams[0]);
                        q.watches.push(Watch {
                            label,
                            stream: KINDS[s],
                            src,
                            bytes: out.to_vec(),
                            until: q.compute_queued,
                            kernels,
                        });
                    }
                    Ok(()) => {}
                    Err(e) => q.fail(e),
                }
            }
            Work::FromHost {
                label,
                dst,
                src,
                len,
            } => {
                // SAFETY: see HostPtr.
                let data = unsafe { std::slice::from_raw_parts(src.0, len) };
                if let Err(e) = self.write(&label, dst, data) {
                    q.fail(e);
                }
            }
            Work::InPlace {
                label,
                addr,
                len,
                op,
                queued_at,
            } => self.exec_in_place(q, s, label, (addr, len), op, queued_at),
            Work::WriteBack {
                label,
                addr,
                read,
                result,
            } => self.exec_write_back(q, s, label, addr, &read, result),
        }
        if s == 0 {
            q.compute_run += 1;
            self.check_watches(q);
        }
    }

    /// Reads the range (watched like a copy when compute work queued before it is still
    /// pending), runs the operation and leaves its write-back at the head of stream `s`.
    fn exec_in_place(
        &self,
        q: &mut EmuQueues,
        s: usize,
        label: String,
        (addr, len): (u64, usize),
        op: InPlaceOp,
        queued_at: u64,
    ) {
        let mut read = vec![0u8; len];
        if let Err(e) = self.read(&label, addr, &mut read) {
            q.fail(e);
            return;
        }
        if s != 0 && queued_at > q.compute_run {
            q.watches.push(Watch {
                label: label.clone(),
                stream: KINDS[s],
                src: addr,
                bytes: read.clone(),
                until: queued_at,
                kernels: pending_kernels(&q.streams[0]),
            });
        }
        let mut result = read.clone();
        match op(&mut result) {
            Ok(()) => q.streams[s].push_front(Work::WriteBack {
                label,
                addr,
                read,
                result,
            }),
            Err(message) => q.fail(RuntimeError::Collective {
                what: label,
                message,
            }),
        }
    }

    /// Writes a collective's result back; bytes changed since it read them mean a kernel
    /// wrote the range between the two without being ordered by events (a race).
    fn exec_write_back(
        &self,
        q: &mut EmuQueues,
        s: usize,
        label: String,
        addr: u64,
        read: &[u8],
        result: Vec<u8>,
    ) {
        let mut now = vec![0u8; read.len()];
        match self.read(&label, addr, &mut now) {
            Ok(()) if now != read => {
                q.fail(RuntimeError::Race {
                    reader: format!("collective '{label}'"),
                    stream: KINDS[s].name(),
                    kernels: "compute-stream work that ran between its read and its write".into(),
                });
                return;
            }
            Ok(()) => {}
            Err(e) => {
                q.fail(e);
                return;
            }
        }
        if let Err(e) = self.write(&label, addr, &result) {
            q.fail(e);
            return;
        }
        // A watch on the read now expects the written bytes: only a kernel's change is a race.
        for w in q
            .watches
            .iter_mut()
            .filter(|w| w.src == addr && w.bytes == read)
        {
            w.bytes.clone_from(&result);
        }
    }

    fn check_watches(&self, q: &mut EmuQueues) {
        let run = q.compute_run;
        let due: Vec<Watch> = {
            let (due, keep) = std::mem::take(&mut q.watches)
                .into_iter()
                .partition(|w| w.until <= run);
            q.watches = keep;
            due
        };
        for w in due {
            let mut now = vec![0u8; w.bytes.len()];
            match self.read(&w.label, w.src, &mut now) {
                Ok(()) if now != w.bytes => q.fail(RuntimeError::Race {
                    reader: w.label,
                    stream: w.stream.name(),
                    kernels: w.kernels,
                }),
                Ok(()) => {}
                Err(e) => q.fail(e),
            }
        }
    }

    /// Runs copy- and comm-stream work while any is runnable (never compute work).
    fn progress(&self, q: &mut EmuQueues) {
        loop {
            let mut ran = false;
            for s in 1..3 {
                while q.runnable(s) {
                    self.exec(q, s);
                    ran = true;
                }
            }
            if !ran {
                return;
            }
        }
    }

    /// Runs what event `e` depends on, and no compute work after it.
    fn run_until(&self, q: &mut EmuQueues, e: u64, depth: usize) -> Result<(), RuntimeError> {
        while !q.event_done(e) {
            let Some(s) = (0..3).find(|&s| {
                q.streams[s]
                    .iter()
                    .any(|w| matches!(w, Work::Record(x) if *x == e))
            }) else {
                return Err(internal(format!("event {e} is pending but on no stream")));
            };
            self.step_stream(q, s, depth)?;
        }
        Ok(())
    }

    /// Runs the head of stream `s`, first running what its wait depends on.
    fn step_stream(&self, q: &mut EmuQueues, s: usize, depth: usize) -> Result<(), RuntimeError> {
        if let Some(Work::Wait { event }) = q.streams[s].front() {
            let event = *event;
            if !q.event_done(event) {
                // A wait names an event recorded before it, so the chain ends; the depth
                // bound only turns a bug here into an error instead of a stack overflow.
                if depth > 64 {
                    return Err(internal("event waits nested past 64 levels".into()));
                }
                return self.run_until(q, event, depth + 1);
            }
        }
        self.exec(q, s);
        self.progress(q);
        Ok(())
    }

    /// Runs everything queued on `stream` so far.
    fn drain_stream(&self, q: &mut EmuQueues, stream: StreamKind) -> Result<(), RuntimeError> {
        let s = index(stream);
        while !q.streams[s].is_empty() {
            self.step_stream(q, s, 0)?;
        }
        Ok(())
    }

    fn take_error(q: &mut EmuQueues) -> Result<(), RuntimeError> {
        match q.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs all queued work (compute last among what is runnable) and reports the first
    /// failure of queued work.
    pub(crate) fn flush(&self) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        self.flush_locked(&mut q)
    }

    fn flush_locked(&self, q: &mut EmuQueues) -> Result<(), RuntimeError> {
        for stream in KINDS {
            self.drain_stream(q, stream)?;
        }
        Self::take_error(q)
    }

    /// Runs the queued work a synchronous copy or launch is ordered after (all of it but
    /// collectives' pending write-backs and what follows them on their stream), unless
    /// the compute stream is capturing: then it is refused, as on CUDA.
    pub(crate) fn flush_for(&self, what: &str) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        if q.capturing() {
            return Err(RuntimeError::Capture {
                reason: format!(
                    "{what} while the compute stream captures a graph: synchronous work \
                     cannot be captured"
                ),
            });
        }
        // A synchronous copy is ordered after the compute stream's work (and, here, the
        // copy stream's), not after collectives nobody waited for: CUDA's synchronous
        // copies do not wait for other non-blocking streams either. So a read of a range
        // a pending collective will write back sees the bytes from before it.
        for stream in KINDS {
            let s = index(stream);
            while let Some(head) = q.streams[s].front() {
                if matches!(head, Work::WriteBack { .. }) {
                    break;
                }
                self.step_stream(&mut q, s, 0)?;
            }
        }
        Self::take_error(&mut q)
    }

    pub(crate) fn queue_launch(
        &self,
        stream: StreamKind,
        launch: QueuedLaunch,
    ) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        self.enqueue(&mut q, stream, Work::Launch(launch))
    }

    /// Queues the record of a new event on `stream`; returns its id.
    pub(crate) fn record_event(&self, stream: StreamKind) -> Result<u64, RuntimeError> {
        let mut q = self.lock_queues();
        let id = q.next_event;
        q.next_event += 1;
        q.pending_events.insert(id);
        if let Err(e) = self.enqueue(&mut q, stream, Work::Record(id)) {
            q.pending_events.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    pub(crate) fn wait_event(&self, stream: StreamKind, event: u64) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        self.enqueue(&mut q, stream, Work::Wait { event })
    }

    /// Whether `event` is done; lets one compute item run first (a GPU progresses on its
    /// own, the emulator only when asked), so that a host polling loop ends.
    pub(crate) fn query_event(&self, event: u64) -> Result<bool, RuntimeError> {
        let mut q = self.lock_queues();
        if !q.event_done(event) {
            // One compute item, or else a pending write-back (a GPU finishes both on its
            // own), so that a host polling loop ends.
            let lazy =
                (1..3).find(|&s| matches!(q.streams[s].front(), Some(Work::WriteBack { .. })));
            if q.runnable(0) {
                self.exec(&mut q, 0);
            } else if let Some(s) = lazy {
                self.exec(&mut q, s);
            }
            self.progress(&mut q);
        }
        Self::take_error(&mut q)?;
        Ok(q.event_done(event))
    }

    /// Runs what `event` depends on (nothing more) and reports failures of queued work.
    pub(crate) fn sync_event(&self, event: u64) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        self.run_until(&mut q, event, 0)?;
        Self::take_error(&mut q)
    }

    pub(crate) fn sync_stream(&self, stream: StreamKind) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        self.drain_stream(&mut q, stream)?;
        Self::take_error(&mut q)
    }

    pub(crate) fn queue_to_host(
        &self,
        stream: StreamKind,
        label: &str,
        src: u64,
        dst: HostPtr,
        len: usize,
    ) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        let work = Work::ToHost {
            label: label.to_string(),
            src,
            dst,
            len,
        };
        self.enqueue(&mut q, stream, work)
    }

    pub(crate) fn queue_from_host(
        &self,
        stream: StreamKind,
        label: &str,
        dst: u64,
        src: HostPtr,
        len: usize,
    ) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        let work = Work::FromHost {
            label: label.to_string(),
            dst,
            src,
            len,
        };
        self.enqueue(&mut q, stream, work)
    }

    pub(crate) fn queue_in_place(
        &self,
        stream: StreamKind,
        label: &str,
        addr: u64,
        len: usize,
        op: InPlaceOp,
    ) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        let work = Work::InPlace {
            label: label.to_string(),
            addr,
            len,
            op,
            queued_at: q.compute_queued,
        };
        self.enqueue(&mut q, stream, work)
    }

    pub(crate) fn begin_capture(&self) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        if q.capturing() {
            return Err(RuntimeError::Capture {
                reason: "the compute stream is already capturing".into(),
            });
        }
        q.capture = Some(Vec::new());
        Ok(())
    }

    pub(crate) fn end_capture(&self) -> Result<Vec<QueuedLaunch>, RuntimeError> {
        self.lock_queues()
            .capture
            .take()
            .ok_or_else(|| RuntimeError::Capture {
                reason: "end of capture without a begin".into(),
            })
    }

    pub(crate) fn replay(
        &self,
        stream: StreamKind,
        launches: &[QueuedLaunch],
    ) -> Result<(), RuntimeError> {
        let mut q = self.lock_queues();
        for l in launches {
            self.enqueue(&mut q, stream, Work::Launch(l.clone()))?;
        }
        Ok(())
    }
}

/// The kernels queued on the compute stream, the first few, for a race report.
fn pending_kernels(compute: &VecDeque<Work>) -> String {
    const SHOWN: usize = 3;
    let names: Vec<&str> = compute
        .iter()
        .filter_map(|w| match w {
            Work::Launch(l) => Some(l.kernel.as_str()),
            _ => None,
        })
        .collect();
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    if s.is_empty() {
        s.push_str("no kernel: copies");
    }
    s
}

fn internal(reason: String) -> RuntimeError {
    RuntimeError::Deferred {
        messages: vec![format!("internal: the emulated stream scheduler: {reason}")],
    }
}
