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
    let mut tasks = Vec::with_capacity(chunks);
    let (mut a_rest, mut b_rest, mut c_rest) = (a, b, c);
    let mut start = 0;
    while start < items {
        let end = (start + per).min(items);
        let last = end == items;
        let take = |rest_len: usize, per_item: usize| {
            if last {
                rest_len
            } else {
                ((end - start) * per_item).min(rest_len)
            }
        };
        let (a_mine, a_tail) = a_rest.split_at_mut(take(a_rest.len(), a_per));
        let (b_mine, b_tail) = b_rest.split_at_mut(take(b_rest.len(), b_per));
        let (c_mine, c_tail) = c_rest.split_at_mut(take(c_rest.len(), c_per));
        a_rest = a_tail;
        b_rest = b_tail;
        c_rest = c_tail;
        tasks.push((start..end, a_mine, b_mine, c_mine));
        start = end;
    }
    run_tasks(threads, tasks, |(r, a, b, c)| f(r, a, b, c));
}

/// [`split2`] with one output buffer.
pub fn split1<A: Send, F>(threads: usize, items: usize, a: &mut [A], a_per: usize, f: F)
where
    F: Fn(Range<usize>, &mut [A]) + Sync,
{
    split2::<A, u8, _>(threads, items, a, a_per, &mut [], 0, |r, a, _| f(r, a));
}
