//! Shared-memory collectives for a job whose ranks all run on one host (what
//! NCCL's SHM transport does): no byte goes through the kernel.
//!
//! Rank 0 creates an anonymous segment (`memfd_create`, never named in a file
//! system, so nothing leaks when a process dies) and hands its descriptor
//! round the ring over the Unix sockets (`SCM_RIGHTS`). The segment holds a
//! header (an abort word, and per rank on its own cache line an arrival
//! counter and what the rank announced for the current call) and two halves
//! of `world` slots of `slot_elems` f32 each.
//!
//! Every collective takes explicit chunks (`bounds`, chunk `c` owned by rank
//! `c`, empty chunks allowed; the even-split calls pass
//! [`crate::ops::even_bounds`]) and goes in pieces of at most one slot (the
//! all-gather: one half). All-reduce of a piece:
//! 1. each rank converts its piece into its slot (f32; bf16 is widened here),
//! 2. barrier,
//! 3. rank r sums part r of the piece ([`chunk_range`] of the piece, so the
//!    work is even whatever the chunks), reading the slots in the ring's order
//!    for each element's owner (owner = the element's chunk in the WHOLE
//!    buffer, so the sum is bitwise [`crate::ring_order_sum_in`], the socket
//!    ring's), and writes it into its own slot,
//! 4. barrier, 5. every rank copies every part back (bf16 rounded once here).
//!
//! Reduce-scatter: each rank copies the parts of the piece the others own
//! into its slot, barrier, each rank sums the part it owns as in step 3.
//! All-gather: each owner copies its part of the piece into the half (one
//! area of `world` slots; the chunks are disjoint), barrier, everyone copies
//! the rest out. Bits are copied, never converted (NaN payloads, -0.0 stay).
//!
//! Pieces alternate between the two halves, so the next piece's copy-in can
//! start without another barrier: a rank writes a half again only after it
//! passed the next piece's first barrier, which every rank reaches only once
//! done reading that half.
//!
//! Before its first barrier a rank announces the call (collective, length,
//! a hash of the bounds); after it every rank checks all the announcements,
//! so ranks that disagree all fail at once, naming the odd rank, instead of
//! desynchronising the barriers.
//!
//! Waiting: spin briefly, then sleep on a futex on the awaited counter for at
//! most [`WAIT_SLICE`], looking in between at the abort word and at the Unix
//! sockets to the ring neighbours (a dead neighbour hangs up). A rank that
//! fails posts an abort word naming the failed rank, so ranks that are not
//! its neighbours learn of it too. Every wait is bounded by the timeout and
//! its error names the rank waited for.

use crate::error::{AbortCause, CommError, PeerFailure};
use crate::ops::chunk_range;
use crate::wait;
use half::bf16;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default `SocketOptions::shm_slot_bytes`: 1 MiB per rank per half, so a
/// piece written by one rank is still in cache when the others read it.
pub const DEFAULT_SLOT_BYTES: usize = 1 << 20;

/// The segment's bounds per rank per half: 4 KiB to 64 MiB.
const MIN_SLOT_ELEMS: usize = 1024;
const MAX_SLOT_BYTES: usize = 64 << 20;

/// The longest a waiter sleeps before it looks at the abort word, the sockets and the clock.
const WAIT_SLICE: Duration = Duration::from_millis(2);

/// How long a wait goes before it also polls the neighbours' sockets for hang-up.
const HANGUP_CHECK_AFTER: Duration = Duration::from_micros(500);

/// Busy polls of a counter before sleeping: a few hundred nanoseconds, as ranks often
/// outnumber free cores and a spinning waiter then only delays the rank it waits for.
const SPINS: u32 = 64;

const MAGIC: u64 = 0x6672_7567_616c_5348; // "frugalSH"
const ABORT_OFFSET: usize = 64;
const ARRIVE_OFFSET: usize = 128;
const LINE: usize = 64;
/// The words of a rank's header line after its arrival counter: what it
/// announced for the current call (see [`Segment::check_peers`]), in two sets
/// that calls alternate between, as pieces alternate halves: a call with one
/// barrier lets a fast rank announce its next call while a slow one is still
/// reading this call's announcements.
const LEN_WORD: usize = 1;
const OP_WORD: usize = 2;
const BOUNDS_WORD: usize = 3;
const ANNOUNCE_WORDS: usize = 3;

/// The collectives the segment carries, as announced in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    AllReduceF32 = 1,
    AllReduceBf16 = 2,
    ReduceScatter = 3,
    AllGather = 4,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduceF32 => "an f32 all-reduce",
            Op::AllReduceBf16 => "a bf16 all-reduce",
            Op::ReduceScatter => "a reduce-scatter",
            Op::AllGather => "an all-gather",
        }
    }

    /// The name of an announced op code (a peer's, so possibly anything).
    fn name_of(code: u64) -> &'static str {
        [
            Op::AllReduceF32,
            Op::AllReduceBf16,
            Op::ReduceScatter,
            Op::AllGather,
        ]
        .into_iter()
        .find(|op| *op as u64 == code)
        .map_or("an unknown collective", Op::name)
    }
}

/// What a rank announces for one call: every rank must make the same.
struct CallId {
    op: Op,
    len: usize,
    /// FNV-1a of the chunk bounds: equal bounds give equal hashes, and a
    /// different split is caught with near certainty.
    bounds_hash: u64,
}

impl CallId {
    fn new(op: Op, len: usize, bounds: &[usize]) -> CallId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bounds {
            for byte in (*b as u64).to_le_bytes() {
                h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        CallId {
            op,
            len,
            bounds_hash: h,
        }
    }
}

/// The elements both ranges hold; when none, an empty range whose start may
/// lie outside both (callers skip it before making a pointer from it).
fn intersect(a: Range<usize>, b: Range<usize>) -> Range<usize> {
    let start = a.start.max(b.start);
    start..a.end.min(b.end).max(start)
}

/// An element type the shared-memory all-reduce carries (summed in f32).
pub(crate) trait ShmElem: Copy {
    /// The all-reduce of this type, as announced.
    const ALL_REDUCE: Op;
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl ShmElem for f32 {
    const ALL_REDUCE: Op = Op::AllReduceF32;
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn narrow(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl ShmElem for bf16 {
    const ALL_REDUCE: Op = Op::AllReduceBf16;
    fn widen(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    fn narrow(src: &[f32], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_f32(*s);
        }
    }
}

/// A ring neighbour's Unix socket, watched for hang-up while waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    pub fd: i32,
    pub peer: usize,
}

/// The mapped segment and this rank's place in it.
#[derive(Debug)]
pub(crate) struct Segment {
    base: *mut u8,
    len: usize,
    rank: usize,
    world: usize,
    slot_elems: usize,
    data_offset: usize,
    /// Barriers this rank has passed (every rank passes the same ones).
    barriers: u32,
    /// Pieces done so far; its parity picks the half.
    pieces: u64,
    /// Calls announced so far; its parity picks the set of announcement words.
    calls: u64,
    /// Every rank's ring listener, to name peers in errors.
    addrs: Vec<SocketAddr>,
    timeout: Duration,
}

// SAFETY: the segment is plain shared memory owned by this value (unmapped on
// drop); every cross-process access goes through atomics or is ordered by them.
unsafe impl Send for Segment {}

fn header_bytes(world: usize) -> usize {
    (ARRIVE_OFFSET + LINE * world).div_ceil(4096) * 4096
}

fn segment_bytes(world: usize, slot_elems: usize) -> usize {
    header_bytes(world) + 2 * world * slot_elems * 4
}

fn os_error(rank: usize, during: &str) -> CommError {
    CommError::Io {
        rank,
        peer: None,
        addr: "shared-memory segment".into(),
        during: during.into(),
        source: std::io::Error::last_os_error(),
    }
}

impl Segment {
    /// Rank 0: creates and maps a segment for `world` ranks; returns it and its descriptor.
    pub fn create(
        rank: usize,
        world: usize,
        slot_bytes: usize,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Segment, std::os::fd::OwnedFd), CommError> {
        use std::os::fd::FromRawFd;
        let slot_elems = (slot_bytes / 4).clamp(MIN_SLOT_ELEMS, MAX_SLOT_BYTES / 4);
        let len = segment_bytes(world, slot_elems);
        // The raw system call, not glibc's wrapper: the wrapper arrived in glibc 2.27
        // and the portable build (scripts/build-portable.sh) targets glibc 2.17, whose
        // kernels (3.17+) all have the call.
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_memfd_create,
                c"frugal-comm-shm".as_ptr(),
                libc::MFD_CLOEXEC,
            )
        } as libc::c_int;
        if fd < 0 {
            return Err(os_error(rank, "memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: `fd` is an open memfd; the length fits off_t on 64-bit Linux.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(os_error(rank, "sizing the segment (ftruncate)"));
        }
        let seg = Self::map(fd, len, rank, world, slot_elems, addrs, timeout)?;
        // SAFETY: the header lies inside the fresh mapping; nobody else has it yet.
        unsafe {
            let h = seg.base.cast::<u64>();
            h.write(MAGIC);
            h.add(1).write(world as u64);
            h.add(2).write(slot_elems as u64);
        }
        Ok((seg, owned))
    }

    /// Other ranks: maps the segment rank 0 created, checking its header.
    pub fn open(
        fd: i32,
        rank: usize,
        world: usize,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<Segment, CommError> {
        // SAFETY: `stat` is plain data, for which all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor we own, into a struct that lives across the call.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(os_error(rank, "fstat of the segment"));
        }
        let len = st.st_size as usize;
        if len < header_bytes(world) {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {rank}: the shared-memory segment from rank 0 is too short ({len} bytes)"
                ),
            });
        }
        let mut seg = Self::map(fd, len, rank, world, 1, addrs, timeout)?;
        // SAFETY: the header lies inside the mapping (checked above); rank 0 wrote it
        // before passing the descriptor, and the socket hand-off orders that write before us.
        let (magic, w, slot) = unsafe {
            let h = seg.base.cast::<u64>();
            (h.read(), h.add(1).read(), h.add(2).read())
        };
        // The slot size is bounded before any arithmetic on it: an out-of-range one would
        // overflow `segment_bytes` or, at 0, make `all_reduce` loop without advancing.
        let slot_ok = (MIN_SLOT_ELEMS as u64..=(MAX_SLOT_BYTES / 4) as u64).contains(&slot);
        if magic != MAGIC
            || w != world as u64
            || !slot_ok
            || segment_bytes(world, slot as usize) != len
        {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {rank}: the shared-memory segment from rank 0 does not match this job \
                     (world {w}, expected {world}): run the same frugal binary on every rank"
                ),
            });
        }
        seg.slot_elems = slot as usize;
        Ok(seg)
    }

    fn map(
        fd: i32,
        len: usize,
        rank: usize,
        world: usize,
        slot_elems: usize,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<Segment, CommError> {
        // SAFETY: mapping `len` bytes of an open memfd of at least that size, shared.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_error(rank, "mapping the segment (mmap)"));
        }
        Ok(Segment {
            base: p.cast(),
            len,
            rank,
            world,
            slot_elems,
            data_offset: header_bytes(world),
            barriers: 0,
            pieces: 0,
            calls: 0,
            addrs,
            timeout,
        })
    }

    fn abort_word(&self) -> &AtomicU64 {
        // SAFETY: 8-aligned offset inside the mapping, only ever accessed atomically.
        unsafe { &*self.base.add(ABORT_OFFSET).cast::<AtomicU64>() }
    }

    fn arrival(&self, rank: usize) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the header (rank < world), only accessed atomically.
        unsafe {
            &*self
                .base
                .add(ARRIVE_OFFSET + LINE * rank)
                .cast::<AtomicU32>()
        }
    }

    /// Word `index` ([`LEN_WORD`], [`OP_WORD`] or [`BOUNDS_WORD`]) of rank's
    /// header line, in the set of the current call: what it announced for it.
    fn header_word(&self, rank: usize, index: usize) -> &AtomicU64 {
        let word = index + (self.calls % 2) as usize * ANNOUNCE_WORDS;
        debug_assert!((1..LINE / 8).contains(&word));
        // SAFETY: 8-aligned offset inside rank's header line (after its arrival
        // counter; word < 8 as 1 + 2 sets of 3 words fit a 64-byte line), only
        // accessed atomically.
        unsafe {
            &*self
                .base
                .add(ARRIVE_OFFSET + LINE * rank + 8 * word)
                .cast::<AtomicU64>()
        }
    }

    fn slot_ptr(&self, half: usize, rank: usize) -> *mut f32 {
        let at = self.data_offset + (half * self.world + rank) * self.slot_elems * 4;
        debug_assert!(at + self.slot_elems * 4 <= self.len);
        // SAFETY: inside the mapping by construction of `segment_bytes`.
        unsafe { self.base.add(at).cast::<f32>() }
    }

    fn addr(&self, rank: usize) -> SocketAddr {
        self.addrs
            .get(rank)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Tells every rank that `failed_rank` failed (the first report wins).
    /// `reporter` is the rank that saw it and `cause` how it failed.
    pub fn post_abort(&self, failed_rank: usize, reporter: usize, cause: AbortCause) {
        let word = 1
            | ((failed_rank as u64) << 1 & 0xffff_fffe)
            | (((reporter as u64) & 0xff_ffff) << 32)
            | ((cause.code() as u64) << 56);
        let _ = self
            .abort_word()
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire);
        for r in 0..self.world {
            futex_wake(self.arrival(r));
        }
    }

    fn posted_abort(&self) -> Option<CommError> {
        let w = self.abort_word().load(Ordering::Acquire);
        if w == 0 {
            return None;
        }
        let failed_rank = ((w & 0xffff_ffff) >> 1) as usize;
        let reported_by = ((w >> 32) & 0xff_ffff) as usize;
        // Host names are filled in by the caller, which holds the rendezvous table.
        Some(CommError::PeerFailed(Box::new(PeerFailure {
            rank: self.rank,
            failed_rank,
            failed_host: String::new(),
            failed_addr: self.addr(failed_rank).to_string(),
            cause: AbortCause::from_code((w >> 56) as u16),
            reported_by,
            reporter_host: String::new(),
            relayed_by: reported_by,
            own: None,
        })))
    }

    /// Waits until every rank reached this barrier.
    fn barrier(&mut self, watch: &[Watch], what: &str) -> Result<(), CommError> {
        self.barriers = self.barriers.wrapping_add(1);
        let k = self.barriers;
        let mine = self.arrival(self.rank);
        mine.store(k, Ordering::Release);
        futex_wake(mine);
        for p in 0..self.world {
            if p != self.rank {
                self.wait_for(p, k, watch, what)?;
            }
        }
        Ok(())
    }

    fn wait_for(&self, peer: usize, k: u32, watch: &[Watch], what: &str) -> Result<(), CommError> {
        let counter = self.arrival(peer);
        let reached = |v: u32| v.wrapping_sub(k) as i32 >= 0;
        for _ in 0..SPINS {
            if reached(counter.load(Ordering::Acquire)) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let start = Instant::now();
        loop {
            let v = counter.load(Ordering::Acquire);
            if reached(v) {
                return Ok(());
            }
            if let Some(e) = self.posted_abort() {
                return Err(e);
            }
            // A poll(2) per wake-up would double the cost of a short wait: look at the
            // sockets only once the wait is long enough for a death to be the likely cause.
            let long = start.elapsed() >= HANGUP_CHECK_AFTER;
            if let Some(dead) = long.then(|| hung_up(watch)).flatten() {
                // The peer may have arrived and left normally just before: look again.
                if reached(counter.load(Ordering::Acquire)) {
                    return Ok(());
                }
                if let Some(e) = self.posted_abort() {
                    return Err(e);
                }
                return Err(CommError::PeerClosed {
                    rank: self.rank,
                    peer: dead,
                    addr: self.addr(dead),
                    during: format!("{what} (shared memory)"),
                });
            }
            if start.elapsed() >= self.timeout {
                return Err(CommError::Timeout {
                    rank: self.rank,
                    peer: Some(peer),
                    addr: self.addr(peer).to_string(),
                    waiting_for: format!("{what}: shared-memory barrier {k}"),
                    timeout: self.timeout,
                    phase: crate::error::TimeoutPhase::Collective,
                });
            }
            futex_wait(counter, v, WAIT_SLICE);
        }
    }

    /// Publishes what this rank is about to do; read by every rank after the
    /// call's first barrier ([`Segment::check_peers`]).
    fn announce(&mut self, call: &CallId) {
        self.calls += 1;
        let me = self.rank;
        self.header_word(me, LEN_WORD)
            .store(call.len as u64, Ordering::Relaxed);
        self.header_word(me, OP_WORD)
            .store(call.op as u64, Ordering::Relaxed);
        self.header_word(me, BOUNDS_WORD)
            .store(call.bounds_hash, Ordering::Relaxed);
    }

    /// After the first barrier of a call: every rank announced the same
    /// collective, length and chunks. A rank that differs fails every rank at
    /// once (naming it) instead of desynchronising the barriers that follow.
    fn check_peers(&self, call: &CallId, what: &str) -> Result<(), CommError> {
        let me = self.rank;
        for p in 0..self.world {
            let len = self.header_word(p, LEN_WORD).load(Ordering::Relaxed);
            let op = self.header_word(p, OP_WORD).load(Ordering::Relaxed);
            let hash = self.header_word(p, BOUNDS_WORD).load(Ordering::Relaxed);
            let problem = if op != call.op as u64 {
                format!(
                    "rank {p} called {}, this rank {}",
                    Op::name_of(op),
                    call.op.name()
                )
            } else if len != call.len as u64 {
                format!(
                    "rank {p} passed {len} elements, this rank {} \
                     (every rank must pass buffers of the same length)",
                    call.len
                )
            } else if hash != call.bounds_hash {
                format!(
                    "rank {p} passed other chunk bounds than this rank's \
                     (every rank must split the buffer alike)"
                )
            } else {
                continue;
            };
            return Err(CommError::InvalidArgument {
                what: format!("rank {me}: {what}: {problem}"),
            });
        }
        Ok(())
    }

    /// The half the next piece uses: pieces alternate (see the module docs).
    fn next_half(&mut self) -> usize {
        let half = (self.pieces % 2) as usize;
        self.pieces += 1;
        half
    }

    /// A piece's first barrier; on the call's first piece it also checks the peers.
    fn first_barrier(
        &mut self,
        call: &CallId,
        first: &mut bool,
        watch: &[Watch],
        what: &str,
    ) -> Result<(), CommError> {
        self.barrier(watch, what)?;
        if std::mem::take(first) {
            self.check_peers(call, what)?;
        }
        Ok(())
    }

    /// In-place all-reduce of `data` through the segment, chunk `c` =
    /// `bounds[c]..bounds[c + 1]` summed in the ring's order for owner `c`
    /// (bitwise [`crate::ring_order_sum_in`], the socket ring's sum). `bounds`
    /// must have passed [`crate::ops::check_bounds`].
    pub fn all_reduce_in<T: ShmElem>(
        &mut self,
        data: &mut [T],
        bounds: &[usize],
        watch: &[Watch],
        what: &str,
    ) -> Result<(), CommError> {
        let len = data.len();
        let n = self.world;
        let me = self.rank;
        let call = CallId::new(T::ALL_REDUCE, len, bounds);
        self.announce(&call);
        let mut off = 0;
        let mut first = true;
        // At least one piece, even when empty: the peer check needs its barrier.
        while first || off < len {
            let plen = self.slot_elems.min(len - off);
            let half = self.next_half();
            let mine = self.slot_ptr(half, me);
            for q in (0..n).filter(|&q| q != me) {
                // Only the parts other ranks reduce: our own part is read from `data`.
                let w = chunk_range(plen, n, q);
                // SAFETY: part `w` of our own slot of this half; no other rank reads it until
                // the barrier below (see the module docs for why the half is free).
                let dst = unsafe { std::slice::from_raw_parts_mut(mine.add(w.start), w.len()) };
                T::widen(&data[off + w.start..off + w.end], dst);
            }
            self.first_barrier(&call, &mut first, watch, what)?;
            // The work is split evenly over the piece (each rank sums 1/n of it,
            // whoever owns it); the order of each element's sum follows its owner.
            let work = chunk_range(plen, n, me);
            for owner in 0..n {
                let r = intersect(
                    bounds[owner]..bounds[owner + 1],
                    off + work.start..off + work.end,
                );
                if !r.is_empty() {
                    self.reduce_part(half, owner, off, r.start - off..r.end - off, data, true);
                }
            }
            self.barrier(watch, what)?;
            for q in (0..n).filter(|&q| q != me) {
                let w = chunk_range(plen, n, q);
                // SAFETY: part `w` of rank q's slot, final since the barrier; nobody writes
                // it until every rank passed the next piece's first barrier.
                let src = unsafe {
                    std::slice::from_raw_parts(self.slot_ptr(half, q).add(w.start), w.len())
                };
                T::narrow(src, &mut data[off + w.start..off + w.end]);
            }
            off += plen;
        }
        Ok(())
    }

    /// In-place reduce-scatter through the segment: only this rank's chunk
    /// (`bounds[rank]..bounds[rank + 1]`) ends reduced, with the bits
    /// [`Segment::all_reduce_in`] gives it; the rest of `data` is untouched.
    ///
    /// One barrier per piece: every rank copies the parts the others own into
    /// its slot, then each sums its own part reading the peers' slots. A half
    /// is written again two pieces later, after the next piece's barrier,
    /// which every rank reaches only once done reading it.
    pub fn reduce_scatter_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
        watch: &[Watch],
        what: &str,
    ) -> Result<(), CommError> {
        let len = data.len();
        let n = self.world;
        let me = self.rank;
        let call = CallId::new(Op::ReduceScatter, len, bounds);
        self.announce(&call);
        let own = bounds[me]..bounds[me + 1];
        let mut off = 0;
        let mut first = true;
        while first || off < len {
            let plen = self.slot_elems.min(len - off);
            let piece = off..off + plen;
            let half = self.next_half();
            let slot = self.slot_ptr(half, me);
            for q in (0..n).filter(|&q| q != me) {
                let r = intersect(bounds[q]..bounds[q + 1], piece.clone());
                // An empty intersection may start past the piece: no pointer is made for it.
                if r.is_empty() {
                    continue;
                }
                // SAFETY: elements r - off of our own slot of this half, inside the slot
                // (r lies in the piece, at most `slot_elems` long); nobody reads it
                // before the barrier below, and the half is free (see above).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(slot.add(r.start - off), r.len()) };
                dst.copy_from_slice(&data[r]);
            }
            self.first_barrier(&call, &mut first, watch, what)?;
            let r = intersect(own.clone(), piece);
            if !r.is_empty() {
                self.reduce_part(half, me, off, r.start - off..r.end - off, data, false);
            }
            off += plen;
        }
        Ok(())
    }

    /// In-place all-gather of bytes through the segment: chunk `c` (`bounds`
    /// in bytes) of rank `c` is copied, bit for bit, to every rank.
    ///
    /// The chunks are disjoint, so a half serves as one area of
    /// `world · slot` bytes that every owner writes its part of a piece into;
    /// one barrier per piece, as in [`Segment::reduce_scatter_in`].
    pub fn all_gather_bytes_in(
        &mut self,
        data: &mut [u8],
        bounds: &[usize],
        watch: &[Watch],
        what: &str,
    ) -> Result<(), CommError> {
        let len = data.len();
        let n = self.world;
        let me = self.rank;
        let call = CallId::new(Op::AllGather, len, bounds);
        self.announce(&call);
        let area_bytes = n * self.slot_elems * 4;
        let mut off = 0;
        let mut first = true;
        while first || off < len {
            let plen = area_bytes.min(len - off);
            let piece = off..off + plen;
            let half = self.next_half();
            let area = self.slot_ptr(half, 0).cast::<u8>();
            let r = intersect(bounds[me]..bounds[me + 1], piece.clone());
            // An empty intersection may start past the piece: no pointer is made for it.
            if !r.is_empty() {
                // SAFETY: bytes r - off of this half's area (the half's `world` slots, one
                // after another), inside it as r lies in the piece; only this rank writes
                // them, and nobody reads them before the barrier below.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(area.add(r.start - off), r.len()) };
                dst.copy_from_slice(&data[r]);
            }
            self.first_barrier(&call, &mut first, watch, what)?;
            for q in (0..n).filter(|&q| q != me) {
                let r = intersect(bounds[q]..bounds[q + 1], piece.clone());
                if r.is_empty() {
                    continue;
                }
                // SAFETY: bytes rank q wrote before the barrier; nobody writes this half
                // again until every rank passed the next piece's barrier.
                let src = unsafe { std::slice::from_raw_parts(area.add(r.start - off), r.len()) };
                data[r].copy_from_slice(src);
            }
            off += plen;
        }
        Ok(())
    }

    /// Sums `range` of the piece at `off` in the ring's order for chunk `owner`
    /// (starting at rank owner+1, ending at owner): the peers' values from their
    /// slots, ours from `data`. The sum goes into `data` and, when `publish`
    /// (the all-reduce, whose peers copy it back), into our slot.
    fn reduce_part<T: ShmElem>(
        &self,
        half: usize,
        owner: usize,
        off: usize,
        range: Range<usize>,
        data: &mut [T],
        publish: bool,
    ) {
        const BLOCK: usize = 2048;
        let n = self.world;
        let me = self.rank;
        let mut acc = [0f32; BLOCK];
        let mut own = [0f32; BLOCK];
        let mut at = range.start;
        while at < range.end {
            let m = BLOCK.min(range.end - at);
            let acc = &mut acc[..m];
            let own = &mut own[..m];
            let ours = &mut data[off + at..off + at + m];
            T::widen(ours, own);
            for k in 1..=n {
                let src_rank = (owner + k) % n;
                let src: &[f32] = if src_rank == me {
                    own
                } else {
                    // SAFETY: elements at..at+m of a peer's slot, which it wrote before the
                    // barrier and nobody writes during this phase.
                    unsafe { std::slice::from_raw_parts(self.slot_ptr(half, src_rank).add(at), m) }
                };
                if k == 1 {
                    acc.copy_from_slice(src);
                } else {
                    for (a, s) in acc.iter_mut().zip(src) {
                        *a += *s;
                    }
                }
            }
            if publish {
                // SAFETY: our own slot's part, which only we write and nobody reads until
                // the barrier.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(half, me).add(at), m) };
                dst.copy_from_slice(acc);
            }
            T::narrow(acc, ours);
            at += m;
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are our mapping, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The first watched neighbour whose socket hung up, if any.
fn hung_up(watch: &[Watch]) -> Option<usize> {
    let mut fds = [wait::pollfd(-1, 0); 2];
    for (slot, w) in fds.iter_mut().zip(watch) {
        *slot = wait::pollfd(w.fd, libc::POLLRDHUP);
    }
    let n = watch.len().min(2);
    // A zero wait never blocks; a failed poll counts as no hang-up (the wait's timeout still bounds it).
    if !matches!(wait::poll(&mut fds[..n], Duration::ZERO), Ok(ready) if ready > 0) {
        return None;
    }
    fds[..n]
        .iter()
        .zip(watch)
        .find(|(p, _)| p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0)
        .map(|(_, w)| w.peer)
}

fn futex_wait(word: &AtomicU32, expected: u32, wait: Duration) {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a shared (not PRIVATE) futex wait on an aligned u32 in shared memory with a
    // relative timeout; it returns at once if the value is no longer `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: waking waiters of an aligned u32; no memory is accessed beyond the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A segment whose header claims slots of `slot` elements, sized to match that claim
    /// (so only the bound on the slot size can refuse it).
    fn forged(world: usize, slot: u64) -> std::os::fd::OwnedFd {
        let (seg, fd) =
            Segment::create(0, world, 4096, Vec::new(), Duration::from_secs(1)).expect("create");
        // SAFETY: the header lies inside the mapping; only this test uses it.
        unsafe { seg.base.cast::<u64>().add(2).write(slot) };
        // Wrapping, as unchecked `segment_bytes` would compute it: 2^62 wraps to the header alone.
        let len =
            (header_bytes(world) as u64).wrapping_add((2 * world as u64 * 4).wrapping_mul(slot));
        // SAFETY: `fd` is an open memfd owned by this test.
        let resized = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(resized, 0);
        fd
    }

    #[test]
    fn open_refuses_a_slot_size_out_of_bounds() {
        // 0 would loop forever in `all_reduce`; 2^62 overflows `segment_bytes`.
        for slot in [0, 1 << 62] {
            let fd = forged(2, slot);
            let r = Segment::open(fd.as_raw_fd(), 1, 2, Vec::new(), Duration::from_secs(1));
            assert!(
                matches!(r, Err(CommError::InvalidArgument { .. })),
                "slot {slot}: {r:?}"
            );
        }
        // The slot size rank 0 writes itself is accepted.
        let fd = forged(2, 1024);
        assert!(Segment::open(fd.as_raw_fd(), 1, 2, Vec::new(), Duration::from_secs(1)).is_ok());
    }
}
