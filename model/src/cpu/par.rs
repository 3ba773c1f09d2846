//! Work over scoped threads with results that never depend on timing. Every op
//! cuts its items (rows, sequences, row chunks) into a fixed list of
//! contiguous chunks, each owning the matching parts of the output buffers;
//! threads claim chunks from a shared queue until it is empty. Which thread
//! computes a chunk varies from run to run, but no chunk's result depends on
//! it: no two chunks write the same element, and each computes its elements
//! with the same operations in the same order. Claiming (rather than one fixed
//! range per thread) keeps both cores busy when the machine is shared and one
//! thread is descheduled.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Mutex;

/// Chunks per thread: enough to even out a descheduled thread, few enough that
/// per-chunk overheads (packing, scratch) stay small.
const CHUNKS_PER_THREAD: usize = 4;

/// Runs `f` on every task, on up to `threads` threads (the caller's included),
/// each thread taking the next unclaimed task in list order.
pub fn run_tasks<T: Send, F>(threads: usize, tasks: Vec<T>, f: F)
where
    F: Fn(T) + Sync,
{
    let workers = threads.max(1).min(tasks.len());
    if workers <= 1 {
        tasks.into_iter().for_each(f);
        return;
    }
    let queue = Mutex::new(VecDeque::from(tasks));
    let work = || loop {
        // A panic in another task poisons the lock; the queue itself is still
        // consistent, and that panic is re-raised at join below.
        let next = match queue.lock() {
            Ok(mut q) => q.pop_front(),
            Err(poisoned) => poisoned.into_inner().pop_front(),
        };
        match next {
            Some(task) => f(task),
            None => break,
        }
    };
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
    let threads = threads.max(1);
    let chunks = if threads == 1 {
        1
    } else {
        (threads * CHUNKS_PER_THREAD).min(items.max(1))
    };
    if chunks == 1 {
        f(0..items, a, b);
        return;
    }
    let per = items.div_ceil(chunks);
    let mut tasks = Vec::with_capacity(chunks);
    let (mut a_rest, mut b_rest) = (a, b);
    let mut start = 0;
    while start < items {
        let end = (start + per).min(items);
        let last = end == items;
        let a_take = if last {
            a_rest.len()
        } else {
            ((end - start) * a_per).min(a_rest.len())
        };
        let b_take = if last {
            b_rest.len()
        } else {
            ((end - start) * b_per).min(b_rest.len())
        };
        let (a_mine, a_tail) = a_rest.split_at_mut(a_take);
        let (b_mine, b_tail) = b_rest.split_at_mut(b_take);
        a_rest = a_tail;
        b_rest = b_tail;
        tasks.push((start..end, a_mine, b_mine));
        start = end;
    }
    run_tasks(threads, tasks, |(r, a, b)| f(r, a, b));
}

/// [`split2`] with one output buffer.
pub fn split1<A: Send, F>(threads: usize, items: usize, a: &mut [A], a_per: usize, f: F)
where
    F: Fn(Range<usize>, &mut [A]) + Sync,
{
    split2::<A, u8, _>(threads, items, a, a_per, &mut [], 0, |r, a, _| f(r, a));
}
