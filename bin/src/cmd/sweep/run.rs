//! Running one repeat of a configuration as a child process (`frugal train`,
//! or `frugal launch --nproc D -- train ...`), with its output in a log file,
//! a deadline, and the sweep's own stop signals passed on.
//!
//! The child runs in its own process group (a terminal's Ctrl-C reaches the
//! sweep alone, which passes it on once) and dies with the sweep (so does
//! every rank of a launch, which die with their launcher).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::error::CliError;

/// How long a child asked to stop (SIGTERM) has before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// How often the child is looked at.
const POLL: Duration = Duration::from_millis(50);

/// The first stop signal the sweep received, or 0.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe. A second signal finds the flag
    // set and exits at once; the child dies with the sweep.
    if STOP.swap(sig, Ordering::SeqCst) != 0 {
        let msg = b"\nfrugal sweep: second signal: stopping now\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; msg outlives the call.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }
}

/// Installs the sweep's SIGINT and SIGTERM handlers.
///
/// # Errors
/// The OS refused.
pub fn catch_stop_signals() -> Result<(), CliError> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is "no flags, empty mask"; the handler is
        // an extern "C" fn making only async-signal-safe calls.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(CliError::CatchSignal {
                signal: sig,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The stop signal the sweep received, if any.
pub fn stop_requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// How a child ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// Past the deadline: stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    TimedOut,
    /// The sweep was asked to stop (the signal) and stopped the child.
    Stopped,
}

/// Runs `program args` with `env` added, its stdout and stderr into `log`,
/// until it exits, `timeout` passes or the sweep is asked to stop.
///
/// # Errors
/// The log cannot be created or the child cannot be started.
pub fn run(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    log: &Path,
    timeout: Duration,
) -> Result<Ended, CliError> {
    let out = File::create(log).map_err(|source| CliError::Io {
        action: "create the run log",
        path: log.to_path_buf(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| CliError::Io {
        action: "open the run log",
        path: log.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    super::super::launch::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| CliError::Io {
        action: "start",
        path: program.to_path_buf(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = try_wait(&mut child, program)? {
            return Ok(Ended::Exited(status));
        }
        if let Some(sig) = stop_requested() {
            stop(&mut child, sig, program)?;
            return Ok(Ended::Stopped);
        }
        if Instant::now() >= deadline {
            stop(&mut child, libc::SIGTERM, program)?;
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(POLL);
    }
}

fn try_wait(child: &mut Child, program: &Path) -> Result<Option<ExitStatus>, CliError> {
    child.try_wait().map_err(|source| CliError::Io {
        action: "wait for",
        path: program.to_path_buf(),
        source,
    })
}

/// Passes `sig` on, waits up to [`STOP_GRACE`], then kills the child and its group.
fn stop(child: &mut Child, sig: i32, program: &Path) -> Result<(), CliError> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
    unsafe { libc::kill(pid, sig) };
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if try_wait(child, program)?.is_some() {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    // SAFETY: as above; -pid is the child's own process group (process_group(0)).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    child.wait().map_err(|source| CliError::Io {
        action: "wait for",
        path: program.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// The status as a shell would say it: "exit status 1", "killed by SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by {}", crate::units::signal_name(s)),
        _ => status.to_string(),
    }
}

/// The last lines of a log that say why a run failed: those naming an error
/// when there are any, else the last few, joined by " | ".
pub fn tail(log: &Path) -> String {
    const LAST_BYTES: u64 = 8192;
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(LAST_BYTES)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error") || l.contains("Error") || l.contains("panicked"))
        .collect();
    let chosen = if errors.is_empty() { &lines } else { &errors };
    let start = chosen.len().saturating_sub(3);
    chosen[start..].join(" | ")
}
