//! A fixed set of worker threads, parked between parallel regions, that run the
//! regions of whichever thread has the pool installed.
//!
//! A region publishes one borrowed closure (a type-erased pointer) and a new
//! generation number; each worker runs the closure once and reports back; the
//! caller runs it too and then waits until every worker has reported, so the
//! closure (and what it borrows) outlives all uses. Nothing is allocated per region.
//! Waiting spins briefly first (regions follow each other within microseconds in a
//! training step), then parks on a condition variable with a timeout, re-checking.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Spin iterations before a waiting thread parks (a few microseconds).
const SPIN: usize = 4000;
/// How long a parked thread sleeps before re-checking its condition (a missed
/// wake-up costs at most this; none is expected).
const PARK: Duration = Duration::from_millis(100);

/// The region being run: a borrowed `dyn Fn()`, its lifetime erased. Only
/// dereferenced between its publication and the caller's wait for every worker.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn() + Sync));
// SAFETY: the closure is Sync and outlives every dereference (see `Pool::run`).
unsafe impl Send for Job {}

struct State {
    job: Option<Job>,
    /// The first panic of a worker in the current region.
    panic: Option<Box<dyn Any + Send>>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Generation of the latest published region (workers spin on it, then park).
    generation: AtomicU64,
    /// Workers that have not yet finished the current region.
    running: AtomicUsize,
    /// Whether a region is running (a nested region falls back to scoped threads).
    busy: AtomicBool,
    wake: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker's panic is caught before it takes the lock, so poisoning only
        // follows a panic inside this module's own short critical sections.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Worker threads for a model's parallel regions. Create with the thread count the
/// model runs with (it keeps one fewer: the calling thread works too) and make it
/// current with [`Pool::install`].
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} workers)", self.workers.len())
    }
}

thread_local! {
    /// The pool installed on this thread, if any.
    static CURRENT: Cell<*const Pool> = const { Cell::new(std::ptr::null()) };
}

impl Pool {
    /// A pool for regions of up to `threads` threads: `threads − 1` parked workers.
    /// A worker that cannot be spawned is left out (regions then use fewer threads,
    /// with the same results).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                panic: None,
                shutdown: false,
            }),
            generation: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map_while(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("frugal-cpu-{i}"))
                    .spawn(move || worker(&shared))
                    .ok()
            })
            .collect();
        Pool { shared, workers }
    }

    /// Threads a region on this pool runs on, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f` with this pool current on the calling thread: the parallel regions
    /// it starts run on the pool's workers. Restores the previous pool afterwards.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Pool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const Pool)));
        f()
    }

    /// Runs `work` on the caller and every worker, returning once all have finished;
    /// re-raises the first panic.
    fn run(&self, work: &(dyn Fn() + Sync)) {
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; every worker finishes with the job
        // before this function returns or unwinds (the wait below comes before either).
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync)>(
                work as *const _,
            )
        });
        {
            let mut st = shared.lock();
            st.job = Some(job);
            shared.running.store(self.workers.len(), Ordering::Release);
            shared.generation.fetch_add(1, Ordering::AcqRel);
        }
        shared.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(work));
        let mut spins = 0;
        while shared.running.load(Ordering::Acquire) != 0 && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        let mut st = shared.lock();
        while shared.running.load(Ordering::Acquire) != 0 {
            st = match shared.done.wait_timeout(st, PARK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st.job = None;
        let theirs = st.panic.take();
        drop(st);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            // A worker catches its job's panics, so joining cannot fail but for a bug here.
            let _ = w.join();
        }
    }
}

/// A worker: waits for each new generation, runs its job, reports, and exits at shutdown.
fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        while shared.generation.load(Ordering::Acquire) == seen && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                let generation = shared.generation.load(Ordering::Acquire);
                if generation != seen {
                    seen = generation;
                    break st.job;
                }
                st = match shared.wake.wait_timeout(st, PARK) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        };
        let result = match job {
            // SAFETY: the publishing caller waits for this worker before the closure dies.
            Some(Job(f)) => catch_unwind(AssertUnwindSafe(|| unsafe { (*f)() })),
            None => Ok(()),
        };
        let mut st = shared.lock();
        if let Err(p) = result {
            st.panic.get_or_insert(p);
        }
        if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.done.notify_one();
        }
    }
}

/// Runs `work` on the current pool if there is one with at least `threads` threads
/// that is not already running a region; returns whether it did.
pub(super) fn run_on_current(threads: usize, work: &(dyn Fn() + Sync)) -> bool {
    let pool = CURRENT.with(|c| c.get());
    if pool.is_null() {
        return false;
    }
    // SAFETY: `install` keeps the pointer current only while it borrows the pool.
    let pool = unsafe { &*pool };
    if pool.threads() < threads || pool.shared.busy.swap(true, Ordering::Acquire) {
        return false;
    }
    struct Idle<'a>(&'a AtomicBool);
    impl Drop for Idle<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _idle = Idle(&pool.shared.busy);
    pool.run(work);
    true
}
