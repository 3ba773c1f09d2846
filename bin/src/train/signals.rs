//! SIGINT and SIGTERM while training. Cloud spot and preemptible instances
//! send SIGTERM and give 30–120 s: the first signal asks the loop to finish
//! the step it is in, save a checkpoint (none with `--ckpt-every never`) and
//! exit 130 (SIGINT) or 143 (SIGTERM); a second one exits at once (checkpoints are written to a
//! temporary name and renamed, so the last complete one stays valid).
//!
//! A Ctrl-C on a terminal reaches every process of the foreground group, and
//! `frugal launch` also forwards it to its ranks: a rank can so receive the
//! same stop twice within moments. A second signal within [`DUPLICATE_WINDOW_NS`]
//! of the first counts as the same one.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

use crate::error::CliError;

/// The first signal received, or 0.
static FIRST: AtomicI32 = AtomicI32::new(0);
/// When it arrived (CLOCK_MONOTONIC, nanoseconds).
static FIRST_AT_NS: AtomicI64 = AtomicI64::new(0);

/// Signals closer together than this are one request.
const DUPLICATE_WINDOW_NS: i64 = 1_000_000_000;

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: atomics, clock_gettime, write, _exit.
    // The time is claimed first, so a second handler running on another
    // thread always sees when the first signal came. (0 never is a
    // CLOCK_MONOTONIC reading after boot: max(1) keeps it so.)
    let now = monotonic_ns().max(1);
    match FIRST_AT_NS.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            FIRST.store(sig, Ordering::SeqCst);
            return;
        }
        Err(first_at) if now - first_at < DUPLICATE_WINDOW_NS => return,
        Err(_) => {}
    }
    let msg = b"\nfrugal: second signal: stopping now; the last complete checkpoint is kept\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; msg outlives the call.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(128 + sig);
    }
}

/// Installs the handlers for SIGINT and SIGTERM.
///
/// # Errors
/// The OS refused (the message names the signal).
pub fn install() -> Result<(), CliError> {
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
        // the handler is an extern "C" fn that only makes async-signal-safe
        // calls; SA_RESTART lets interrupted reads and writes continue.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            // While one stop signal is handled, the other waits.
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaddset(&mut action.sa_mask, libc::SIGINT);
            libc::sigaddset(&mut action.sa_mask, libc::SIGTERM);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(CliError::SignalHandler {
                signal: name,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The signal that asked training to stop, if one came.
pub fn pending() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The name of a stop signal, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
