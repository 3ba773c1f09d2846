//! Work over threads with results that never depend on timing. Every op cuts
//! its items (rows, sequences, row chunks) into a fixed list of contiguous
//! chunks, each owning the matching parts of the output buffers; threads claim
//! chunks in list order from a shared counter until none is left. Which thread
//! computes a chunk varies from run to run, but no chunk's result depends on
//! it: no two chunks write the same element, and each computes its elements
//! with the same operations in the same order. Claiming (rather than one fixed
//! range per thread) keeps both cores busy when the machine is shared and one
//! thread is descheduled.
//!
//! Threads: a [`Pool`] of parked workers, created once per model and made current
//! on the calling thread with [`Pool::install`], runs every parallel region
//! without spawning or allocating (a region publishes one closure; workers wake,
//! claim chunks, and park again). Without a current pool (an op called on its own,
//! a benchmark, a test) a region runs on scoped threads spawned for it. The chunks
//! are the same either way, so the bits are too.

mod pool;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use pool::Pool;

/// Chunks per thread: enough to even out a descheduled thread, few enough that
/// per-chunk overheads (packing, scratch) stay small.
const CHUNKS_PER_THREAD: usize = 4;

/// Runs `f(i)` for every i in `0..count`, on up to `threads` threads (the caller's
/// included), each thread taking the next unclaimed index in order. On the current
/// [`Pool`] where there is one (and it is not already running a region), otherwise on
/// scoped threads.
pub fn run_indexed<F>(threads: usize, count: usize, f: F)
where
    F: Fn(usize) + Sync,
{
    let workers = threads.max(1).min(count);
    if workers <= 1 {
        (0..count).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        f(i);
    };
    if pool::run_on_current(workers, &work) {
        return;
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        work();
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

/// Runs `f` on every task, on up to `threads` threads (the caller's included),
/// each thread taking the next unclaimed task in list order.
pub fn run_tasks<T: Send, F>(threads: usize, tasks: Vec<T>, f: F)
where
    F: Fn(T) + Sync,
{
    let count = tasks.len();
    if threads.max(1).min(count) <= 1 {
        tasks.into_iter().for_each(f);
        return;
    }
    // Each index is claimed exactly once, so each task is moved out exactly once; the
    // Vec's buffer is then freed without dropping its (moved) elements. A task left
    // unclaimed after a panic is leaked, not dropped twice.
    let tasks = std::mem::ManuallyDrop::new(tasks);
    let base = SendPtr(tasks.as_ptr() as *mut T);
    run_indexed(threads, count, |i| {
        let base = &base;
        // SAFETY: i < count is claimed by one thread only, and the Vec outlives the region.
        f(unsafe { std::ptr::read(base.0.add(i)) })
    });
    let mut tasks = std::mem::ManuallyDrop::into_inner(tasks);
    // SAFETY: every element was moved out above (or leaked by a panic that unwinds past here).
    unsafe { tasks.set_len(0) };
}

/// A raw pointer that may cross to the threads of one region: the region hands each
/// thread disjoint elements behind it.
struct SendPtr<T>(*mut T);
// SAFETY: the pointee's elements are only accessed disjointly, one thread each, within
// a region the owner outlives (see each use).
unsafe impl<T: Send> Sync for SendPtr<T> {}
// SAFETY: as for Sync.
unsafe impl<T: Send> Send for SendPtr<T> {}

/// One output buffer cut by item: item i owns `data[i·per..(i+1)·per]`, the last
/// item's part running to the end of the buffer.
struct Cut<T> {
    ptr: SendPtr<T>,
    len: usize,
    per: usize,
}

impl<T: Send> Cut<T> {
    fn new(data: &mut [T], per: usize) -> Cut<T> {
        Cut {
            ptr: SendPtr(data.as_mut_ptr()),
            len: data.len(),
            per,
        }
    }

    /// The part owned by `items`; `last` says whether it ends at the last item.
    ///
    /// # Safety
    /// No two live results may come from overlapping item ranges, and the buffer must
    /// outlive them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, items: Range<usize>, last: bool) -> &mut [T] {
        let start = (items.start * self.per).min(self.len);
        let end = if last {
            self.len
        } else {
            (items.end * self.per).min(self.len)
        };
        std::slice::from_raw_parts_mut(self.ptr.0.add(start), end - start)
    }
}

/// Runs `f(items, a_part, b_part)` over contiguous chunks of `0..items`, where
/// item i owns `a[i·a_per..(i+1)·a_per]` and likewise for `b` (the last item's
/// part is cut short where the buffer ends). With one thread, one chunk.
pub fn split2<A: Send, B: Send, F>(
    threads: usize,
    items: usize,
    a: &mut [A],
    a_per: usize,
    b: &mut [B],
    b_per: usize,
    f: F,
) where
    F: Fn(Range<usize>, &mut [A], &mut [B]) + Sync,
{
    split3::<A, B, u8, _>(
        threads,
        items,
        (a, a_per),
        (b, b_per),
        (&mut [], 0),
        |r, a, b, _| f(r, a, b),
    );
}

/// [`split2`] with three output buffers, each given with its elements per item.
pub fn split3<A: Send, B: Send, C: Send, F>(
    threads: usize,
    items: usize,
    a: (&mut [A], usize),
    b: (&mut [B], usize),
    c: (&mut [C], usize),
    f: F,
) where
    F: Fn(Range<usize>, &mut [A], &mut [B], &mut [C]) + Sync,
{
    let threads = threads.max(1);
    let chunks = if threads == 1 {
        1
    } else {
        (threads * CHUNKS_PER_THREAD).min(items.max(1))
    };
    let ((a, a_per), (b, b_per), (c, c_per)) = (a, b, c);
    if chunks == 1 {
        f(0..items, a, b, c);
        return;
    }
    let per = items.div_ceil(chunks);
    let (a, b, c) = (Cut::new(a, a_per), Cut::new(b, b_per), Cut::new(c, c_per));
    run_indexed(threads, items.div_ceil(per), |i| {
        let range = i * per..((i + 1) * per).min(items);
        let last = range.end == items;
        // SAFETY: chunk i's item range is disjoint from every other chunk's, and the
        // buffers are borrowed for the whole region.
        let (a, b, c) = unsafe {
            (
                a.part(range.clone(), last),
                b.part(range.clone(), last),
                c.part(range.clone(), last),
            )
        };
        f(range, a, b, c)
    });
}

/// Runs `f(i, part)` for every item i in `0..items` as its own task, where item i
/// owns `a[i·a_per..(i+1)·a_per]` (the last item's part running to the buffer's end).
pub fn for_each_part<A: Send, F>(threads: usize, items: usize, a: &mut [A], a_per: usize, f: F)
where
    F: Fn(usize, &mut [A]) + Sync,
{
    let a = Cut::new(a, a_per);
    run_indexed(threads, items, |i| {
        // SAFETY: item i's part is disjoint from every other item's, and the buffer is
        // borrowed for the whole region.
        f(i, unsafe { a.part(i..i + 1, i + 1 == items) })
    });
}

/// [`split2`] with one output buffer.
pub fn split1<A: Send, F>(threads: usize, items: usize, a: &mut [A], a_per: usize, f: F)
where
    F: Fn(Range<usize>, &mut [A]) + Sync,
{
    split2::<A, u8, _>(threads, items, a, a_per, &mut [], 0, |r, a, _| f(r, a));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_with_its_own_parts() {
        for threads in [1, 2, 3, 5] {
            for pooled in [false, true] {
                let pool = Pool::new(threads);
                let run = || {
                    let items = 37;
                    let mut a = vec![0usize; items * 3];
                    let mut b = vec![0u32; items];
                    split2(threads, items, &mut a, 3, &mut b, 1, |r, a, b| {
                        assert_eq!(a.len(), r.len() * 3);
                        for (k, i) in r.clone().enumerate() {
                            a[3 * k..3 * k + 3].iter_mut().for_each(|x| *x += i);
                            b[k] += 1;
                        }
                    });
                    assert!(b.iter().all(|&x| x == 1));
                    assert!(a.iter().enumerate().all(|(j, &x)| x == j / 3));
                };
                if pooled {
                    pool.install(run);
                } else {
                    run();
                }
            }
        }
    }

    #[test]
    fn tasks_are_each_taken_once_and_a_panic_reaches_the_caller() {
        let pool = Pool::new(3);
        pool.install(|| {
            for _ in 0..200 {
                let mut out = [0u8; 50];
                let tasks: Vec<(usize, &mut u8)> = out.iter_mut().enumerate().collect();
                run_tasks(3, tasks, |(i, x)| *x = (i % 7) as u8 + 1);
                assert!(out.iter().enumerate().all(|(i, &x)| x == (i % 7) as u8 + 1));
            }
            let caught = std::panic::catch_unwind(|| {
                run_indexed(3, 10, |i| assert!(i != 6, "task six fails"));
            });
            assert!(caught.is_err());
            // The pool still works after a task panicked.
            let hits = AtomicUsize::new(0);
            run_indexed(3, 10, |_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.into_inner(), 10);
        });
    }
}
