//! `frugal launch`: start the local ranks of a data-parallel job, like torchrun.
//!
//! Each rank is a child process running this same executable with the
//! command after `--`, and the variables torchrun sets (RANK, WORLD_SIZE,
//! LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) plus the job token
//! (FRUGAL_JOB_TOKEN). Every output line is prefixed with `[rank r]`. When a
//! rank fails, the others are stopped and launch exits non-zero naming the
//! rank; with `--max-restarts K` all ranks are started again, up to K times,
//! and a `train` command gets `--resume auto` so it continues from its newest
//! valid checkpoint. A rank that cannot be started (or fails while the others
//! are still being started) stops the launch at once. Without `--master`,
//! launch binds rank 0's rendezvous port itself and rank 0 inherits the
//! listening socket ([`MasterListener`]).
//!
//! SIGINT and SIGTERM are passed on to every rank (a `train` rank finishes its
//! step, saves a checkpoint and exits 130 or 143); launch waits for them up to
//! [`STOP_GRACE`] and exits with their status. The same signal again is passed
//! on again (a rank then stops at once) and launch exits within
//! [`FORCED_STOP_GRACE`]. Each rank runs in its own process group, so that a
//! terminal's Ctrl-C reaches the ranks once, through launch, and not twice.

mod master;

use crate::error::CliError;
use crate::flags::text;
use crate::units::signal_name;
use frugal_comm::rendezvous::LISTENER_FD_ENV;
pub use master::MasterListener;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What `frugal launch --help` says after the flags.
const SIGNALS: &str = "\
Signals: SIGINT or SIGTERM to launch is passed on to every rank ('train' finishes
the step, saves it and exits 130/143); launch waits for them and exits with their
status. A second signal stops the ranks at once. A rank that exits 130/143 by
itself (a signal sent to it alone) is the job's stop too, not a failure.";

/// What `frugal launch --help` says first.
pub const ABOUT: &str =
    "Starts N ranks of '<command>' on this node (e.g. '-- train --model tiny').";

/// `frugal launch`'s flags and the command after `--`.
#[derive(Debug, clap::Args)]
#[command(
    allow_negative_numbers = true,
    override_usage = "frugal launch --nproc N [--nnodes M --node-rank R --master HOST:PORT]
                     [--max-restarts K] [--job-token T] [--comm-timeout S] -- <command> [flags]",
    after_help = SIGNALS
)]
pub struct LaunchFlags {
    /// ranks on this node (at most 256)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    nproc: Option<usize>,
    /// nodes in the job; run one launch per node
    #[arg(long, value_name = "M", value_parser = text::<usize>(), default_value_t = 1)]
    nnodes: usize,
    /// this node's index, 0..M
    #[arg(long, value_name = "R", value_parser = text::<usize>(), default_value_t = 0)]
    node_rank: usize,
    /// where rank 0 listens (default: 127.0.0.1 and a free port; required with --nnodes > 1)
    #[arg(long, value_name = "HOST:PORT", value_parser = text::<String>())]
    master: Option<String>,
    /// restart every rank up to K times after a failure ('train' continues with --resume auto)
    #[arg(long, value_name = "K", value_parser = text::<usize>(), default_value_t = 0)]
    max_restarts: usize,
    /// shared secret in every handshake (default: FRUGAL_JOB_TOKEN, else a random one;
    /// required across nodes)
    #[arg(long, value_name = "T", value_parser = text::<String>())]
    job_token: Option<String>,
    /// seconds every rank waits for the others (joining, and for no progress in
    /// a collective) before failing and naming the silent rank; passed to the
    /// ranks as FRUGAL_COMM_TIMEOUT, so it wins over the variable (default 60)
    #[arg(long, value_name = "SECONDS", value_parser = text::<String>())]
    comm_timeout: Option<String>,
    /// the command each rank runs, e.g. 'train --model tiny'
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// A usage error of `launch`, followed by its help.
fn usage(message: String) -> CliError {
    CliError::usage_with_help("launch", format!("launch: {message}"))
}

/// The most ranks one launch starts on its node. One rank per GPU, or per
/// few CPU cores, is what a host runs usefully; each rank also costs launch
/// two pipes and two threads, and 256 keeps those within the usual limit of
/// 1024 open files.
pub const MAX_NPROC: usize = 256;

/// What `launch` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Ranks on this node.
    pub nproc: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Rank 0's host.
    pub master_host: String,
    /// Rank 0's port; 0 when launch picks it (on loopback, a fresh one for each
    /// start of the ranks, bound by launch and handed to rank 0).
    pub master_port: u16,
    /// Restarts allowed after a failure.
    pub max_restarts: usize,
    /// The job token.
    pub token: String,
    /// The children's arguments (after `--`).
    pub command: Vec<String>,
    /// `--comm-timeout`, passed to every rank as FRUGAL_COMM_TIMEOUT.
    pub comm_timeout: Option<std::time::Duration>,
}

pub fn run(flags: LaunchFlags) -> Result<(), CliError> {
    let LaunchFlags {
        nproc,
        nnodes,
        node_rank,
        master,
        max_restarts,
        job_token: token,
        comm_timeout,
        command,
    } = flags;
    let comm_timeout = match comm_timeout.as_deref() {
        None => None,
        Some(t) => Some(
            frugal_comm::rendezvous::parse_timeout(t)
                .map_err(|e| usage(format!("--comm-timeout: {e}")))?,
        ),
    };
    let nproc = nproc.ok_or_else(|| usage("--nproc is required".into()))?;
    let command = command
        .into_iter()
        .map(|w| {
            w.into_string().map_err(|w| {
                CliError::usage(format!(
                    "launch: the word '{}' after -- is not valid UTF-8; the command after -- must be text",
                    w.to_string_lossy()
                ))
            })
        })
        .collect::<Result<Vec<String>, CliError>>()?;
    let mut plan = plan(
        nproc,
        nnodes,
        node_rank,
        master.as_deref(),
        max_restarts,
        token,
        command,
    )?;
    plan.comm_timeout = comm_timeout;
    catch_stop_signals()?;
    match launch(&plan)? {
        Ended::Finished => Ok(()),
        Ended::Stopped { code: 0 } => Ok(()),
        Ended::Stopped { code } => {
            // The ranks' own status (130/143 after a signal), which the
            // Ok/usage/failure codes of the other commands cannot carry.
            let _ = std::io::stdout().flush();
            std::process::exit(code)
        }
    }
}

/// Checks the flags and fills in the defaults.
pub fn plan(
    nproc: usize,
    nnodes: usize,
    node_rank: usize,
    master: Option<&str>,
    max_restarts: usize,
    token: Option<String>,
    command: Vec<String>,
) -> Result<LaunchPlan, CliError> {
    if nproc == 0 || nnodes == 0 {
        return Err(usage("--nproc and --nnodes must be at least 1".into()));
    }
    if nproc > MAX_NPROC {
        return Err(usage(format!(
            "--nproc {nproc} is more ranks than one node runs usefully (at most {MAX_NPROC}): \
             start one rank per GPU (or per few CPU cores), and for a larger job run one \
             launch per node with --nnodes"
        )));
    }
    let max_world = frugal_comm::frame::MAX_WORLD;
    if nproc.checked_mul(nnodes).is_none_or(|w| w > max_world) {
        return Err(usage(format!(
            "--nproc {nproc} × --nnodes {nnodes} ranks is more than the {max_world} a job can have"
        )));
    }
    if node_rank >= nnodes {
        return Err(usage(format!(
            "--node-rank {node_rank} must be below --nnodes {nnodes}"
        )));
    }
    if command.is_empty() {
        return Err(usage(
            "nothing to run: put the command after '--', e.g. 'frugal launch --nproc 2 -- train'"
                .into(),
        ));
    }
    if command[0] == "launch" {
        return Err(usage(
            "the command after '--' cannot be another launch".into(),
        ));
    }
    let (master_host, master_port) = match master {
        Some(m) => {
            let (h, p) = m
                .rsplit_once(':')
                .ok_or_else(|| usage(format!("--master '{m}' must be HOST:PORT")))?;
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| usage(format!("--master '{m}': bad port '{p}'")))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        None if nnodes > 1 => {
            return Err(usage(
                "--master HOST:PORT is required with --nnodes > 1 (the address of node 0)".into(),
            ))
        }
        // Port 0: `launch` binds one itself for each start (see `MasterListener`).
        None => ("127.0.0.1".to_string(), 0),
    };
    let token = match token.or_else(|| std::env::var(frugal_comm::rendezvous::TOKEN_ENV).ok()) {
        Some(t) => t,
        None if nnodes > 1 => {
            return Err(usage(format!(
                "give every node the same --job-token (or set {}) when --nnodes > 1",
                frugal_comm::rendezvous::TOKEN_ENV
            )))
        }
        None => random_token(),
    };
    Ok(LaunchPlan {
        nproc,
        nnodes,
        node_rank,
        master_host,
        master_port,
        max_restarts,
        token,
        command,
        comm_timeout: None,
    })
}

/// 128 random bits as hex, from the kernel; the clock and pid if that fails.
pub fn random_token() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t ^ ((std::process::id() as u128) << 64)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The children's arguments for attempt `attempt` (0 = first): a restarted
/// `train` resumes from its newest valid checkpoint.
pub fn child_args(command: &[String], attempt: usize) -> Vec<String> {
    let mut out = command.to_vec();
    let resumes = out
        .iter()
        .any(|a| a == "--resume" || a.starts_with("--resume="));
    if attempt > 0 && out.first().map(String::as_str) == Some("train") && !resumes {
        out.push("--resume".into());
        out.push("auto".into());
    }
    out
}

/// How a set of ranks ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every rank exited with status 0.
    Success,
    /// `rank` failed first with `status`; the others were stopped.
    Failed { rank: usize, status: String },
    /// A stop signal came, was passed on, and every rank ended: `code` is the
    /// status of the first rank (in rank order) that did not exit 0, 128 + the
    /// signal's number for one a signal killed, and 0 when all exited 0;
    /// `ranks` says how each ended.
    Stopped {
        signal: i32,
        code: i32,
        ranks: Vec<(usize, String)>,
    },
}

/// Options for [`run_ranks`].
pub struct RankSet<'a> {
    /// Arguments of every child.
    pub args: &'a [String],
    /// Environment for child `local` (besides the inherited one).
    pub env: &'a dyn Fn(usize) -> Vec<(String, String)>,
    /// Ranks to start.
    pub count: usize,
    /// Global rank of local child 0.
    pub first_rank: usize,
    /// Prefix output with `[rank r]` (else: stdout of rank `first_rank` is captured and returned).
    pub prefix_output: bool,
    /// The listener global rank 0 inherits for the rendezvous, where launch bound it.
    pub master_listener: Option<&'a MasterListener>,
}

/// How long the ranks get, after the first stop signal, to finish their step,
/// save a checkpoint and exit, before launch kills them.
pub const STOP_GRACE: Duration = Duration::from_secs(300);

/// How long the ranks get after the second stop signal (on which they stop at
/// once) before launch kills them.
pub const FORCED_STOP_GRACE: Duration = Duration::from_secs(5);

/// Stop signals (SIGINT, SIGTERM) received: how many, and the latest.
struct Signals {
    count: AtomicUsize,
    last: AtomicI32,
}

impl Signals {
    const fn new() -> Signals {
        Signals {
            count: AtomicUsize::new(0),
            last: AtomicI32::new(0),
        }
    }

    /// Records `signal`. Touches only atomics, so a signal handler may call it.
    fn note(&self, signal: i32) {
        // `last` first: whoever sees the new count also sees its signal.
        self.last.store(signal, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last(&self) -> i32 {
        self.last.load(Ordering::SeqCst)
    }
}

/// What launch's signal handlers record; read by the wait loop.
static RECEIVED: Signals = Signals::new();

extern "C" fn on_stop_signal(signal: libc::c_int) {
    RECEIVED.note(signal);
}

/// Routes SIGINT and SIGTERM into [`RECEIVED`] instead of ending launch, so
/// that the wait loop passes them on to the ranks and waits for them.
fn catch_stop_signals() -> Result<(), CliError> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: all-zero bytes are a valid `sigaction` (no handler, no flags), filled in below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // Reads interrupted by the signal (the output pumps) resume by themselves.
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is a valid, initialised sigaction whose handler only
        // stores to atomics (async-signal-safe); a null old-action pointer is allowed.
        let rc = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(CliError::CatchSignal {
                signal,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Starts the ranks, streams their output, and stops all when one fails.
/// Returns the outcome and, without prefixing, the first rank's captured stdout.
pub fn run_ranks(set: &RankSet) -> Result<(Outcome, String), CliError> {
    let exe = std::env::current_exe().map_err(CliError::CurrentExe)?;
    run_program(&exe, set, &RECEIVED)
}

/// [`run_ranks`] with `program` as every rank's executable and `signals` as
/// the stop signals to pass on (tests run `sh` and note signals themselves).
fn run_program(
    program: &Path,
    set: &RankSet,
    signals: &Signals,
) -> Result<(Outcome, String), CliError> {
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut pumps: Vec<JoinHandle<String>> = Vec::new();
    let started = start_ranks(program, set, signals, &mut children, &mut pumps);
    let outcome = match started {
        Ok(None) => supervise(&mut children, signals),
        Ok(Some(failed)) => {
            // The others would only wait at the rendezvous for ranks never started.
            stop_now(&mut children);
            failed
        }
        Err(e) => {
            stop_now(&mut children);
            for p in pumps {
                let _ = p.join();
            }
            return Err(e);
        }
    };
    let mut captured = String::new();
    for p in pumps {
        if let Ok(s) = p.join() {
            captured.push_str(&s);
        }
    }
    Ok((outcome, captured))
}

/// Starts the ranks one by one into `children`, stopping early on a stop
/// signal (`Ok(None)`: the wait loop passes it on), on a rank that already
/// failed (`Ok(Some(..))`), or on a rank that cannot be started (`Err`).
fn start_ranks(
    program: &Path,
    set: &RankSet,
    signals: &Signals,
    children: &mut Vec<(usize, Child)>,
    pumps: &mut Vec<JoinHandle<String>>,
) -> Result<Option<Outcome>, CliError> {
    use std::os::unix::process::CommandExt;
    for local in 0..set.count {
        if signals.count() > 0 {
            return Ok(None);
        }
        if let Some((rank, status)) = first_failure(children) {
            return Ok(Some(Outcome::Failed {
                rank,
                status: format!(
                    "{status}, with {} of {} ranks started",
                    children.len(),
                    set.count
                ),
            }));
        }
        let rank = set.first_rank + local;
        let mut cmd = Command::new(program);
        cmd.args(set.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C goes to launch alone,
            // which passes it on once (a second SIGINT would stop the rank
            // before its checkpoint).
            .process_group(0);
        for (k, v) in (set.env)(local) {
            cmd.env(k, v);
        }
        cmd.env_remove(LISTENER_FD_ENV);
        if let (0, Some(held)) = (rank, set.master_listener) {
            held.hand_over(&mut cmd);
        }
        die_with_parent(&mut cmd);
        let started = children.len();
        let mut child = cmd
            .spawn()
            .map_err(|e| cannot_start(rank, program.display().to_string(), started, e))?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        children.push((rank, child));
        let capture = !set.prefix_output && local == 0;
        let pumped = [
            out.map(|o| pump(o, rank, Stream::Out, set.prefix_output, capture)),
            err.map(|e| pump(e, rank, Stream::Err, true, false)),
        ];
        for p in pumped.into_iter().flatten() {
            let p = p.map_err(|e| {
                cannot_start(
                    rank,
                    "a thread to read its output".to_string(),
                    children.len(),
                    e,
                )
            })?;
            pumps.push(p);
        }
    }
    Ok(None)
}

/// The first rank (in start order) that has already exited non-zero, and how.
fn first_failure(children: &mut [(usize, Child)]) -> Option<(usize, String)> {
    children
        .iter_mut()
        .find_map(|(rank, c)| match c.try_wait() {
            Ok(Some(status)) if !status.success() => Some((*rank, describe(status))),
            _ => None,
        })
}

/// The error for a rank that could not be started, with what to do about it.
fn cannot_start(rank: usize, what: String, started: usize, source: std::io::Error) -> CliError {
    let advice = match source.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            "raise the open-file limit ('ulimit -n') or start fewer ranks (--nproc)"
        }
        Some(libc::EAGAIN) => {
            "raise the process limit ('ulimit -u') or start fewer ranks (--nproc)"
        }
        Some(libc::ENOMEM) => "start fewer ranks (--nproc)",
        Some(libc::ENOENT | libc::EACCES | libc::ENOEXEC) => {
            "was the executable replaced or removed while launching?"
        }
        _ => "check the limits this host sets on processes and files ('ulimit -a')",
    };
    CliError::RankStart {
        rank,
        what,
        started,
        source,
        advice,
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Copies a child's output line by line, prefixed; or captures it.
fn pump(
    src: impl Read + Send + 'static,
    rank: usize,
    stream: Stream,
    prefix: bool,
    capture: bool,
) -> std::io::Result<JoinHandle<String>> {
    std::thread::Builder::new()
        .name(format!("rank {rank} output"))
        .spawn(move || {
            let mut reader = BufReader::new(src);
            let mut line = Vec::new();
            let mut captured = String::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if capture {
                    captured.push_str(text);
                    captured.push('\n');
                    continue;
                }
                let shown = if prefix {
                    format!("[rank {rank}] {text}\n")
                } else {
                    format!("{text}\n")
                };
                // One write per line keeps lines of different ranks whole.
                let _ = match stream {
                    Stream::Out => std::io::stdout().lock().write_all(shown.as_bytes()),
                    Stream::Err => std::io::stderr().lock().write_all(shown.as_bytes()),
                };
            }
            captured
        })
}

/// The child is killed if launch dies, so no rank outlives its launcher.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The status a shell would report: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn rank_list(ranks: impl Iterator<Item = usize>) -> String {
    ranks.map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// Sends `signal` to every child that has not ended yet; returns their ranks.
fn send_to_running(
    children: &[(usize, Child)],
    ended: &[Option<(i32, String)>],
    signal: i32,
) -> String {
    let mut sent = Vec::new();
    for ((rank, c), end) in children.iter().zip(ended) {
        if end.is_some() {
            continue;
        }
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: `pid` is our own child, not yet reaped (no status recorded), so not reused.
            unsafe { libc::kill(pid, signal) };
            sent.push(*rank);
        }
    }
    rank_list(sent.into_iter())
}

/// Waits for all children. Without a stop signal, the first failure stops the
/// rest (a grace to exit on their own, then SIGTERM, then SIGKILL after 3 s).
/// On a stop signal, passes it on and waits for every rank ([`STOP_GRACE`];
/// [`FORCED_STOP_GRACE`] after a second signal; a third kills them).
fn supervise(children: &mut [(usize, Child)], signals: &Signals) -> Outcome {
    // How each rank ended: its exit code (as a shell reports it) and a description.
    let mut ended: Vec<Option<(i32, String)>> = vec![None; children.len()];
    let mut passed_on = 0;
    // Once a stop signal came: which, and when ranks still running are killed.
    let mut stopping: Option<(i32, Instant)> = None;
    loop {
        let received = signals.count();
        if received > passed_on {
            let signal = signals.last();
            let name = signal_name(signal);
            let now = Instant::now();
            let kill_at = stopping.map_or(now + STOP_GRACE, |(_, at)| at);
            let (first, kill_at) = match received {
                1 => {
                    let ranks = send_to_running(children, &ended, signal);
                    eprintln!(
                        "launch: got {name}; passed it on to ranks {ranks}; waiting up to {} s for them \
                         to finish the current step, save a checkpoint and exit ({name} again stops them at once)",
                        STOP_GRACE.as_secs()
                    );
                    (signal, kill_at)
                }
                2 => {
                    let ranks = send_to_running(children, &ended, signal);
                    eprintln!(
                        "launch: got {name} again; passed it on to ranks {ranks}, which stop at once; \
                         killing any still running in {} s",
                        FORCED_STOP_GRACE.as_secs()
                    );
                    (
                        stopping.map_or(signal, |(s, _)| s),
                        kill_at.min(now + FORCED_STOP_GRACE),
                    )
                }
                _ => (stopping.map_or(signal, |(s, _)| s), now),
            };
            stopping = Some((first, kill_at));
            passed_on = received;
        }
        let mut all_done = true;
        for (i, (rank, child)) in children.iter_mut().enumerate() {
            if ended[i].is_some() {
                continue;
            }
            let end = match child.try_wait() {
                Ok(Some(status)) => (exit_code(status), describe(status)),
                Ok(None) => {
                    all_done = false;
                    continue;
                }
                Err(e) => (1, format!("cannot be waited for: {e}")),
            };
            // A rank that exits 130 or 143 stopped on a signal: the job's ranks
            // agreed to stop after one step, and the others are saving and
            // exiting too (a preempted node's rank may be the first to go). That
            // is a stop, not a failure: wait for the rest.
            if stopping.is_none() && (end.0 == 128 + libc::SIGINT || end.0 == 128 + libc::SIGTERM) {
                let signal = end.0 - 128;
                eprintln!(
                    "launch: rank {rank} stopped on {}; waiting up to {} s for the other ranks to save and exit",
                    signal_name(signal),
                    STOP_GRACE.as_secs()
                );
                stopping = Some((signal, Instant::now() + STOP_GRACE));
                ended[i] = Some(end);
                continue;
            }
            if stopping.is_none() && end.0 != 0 {
                let rank = *rank;
                stop_all(children);
                return Outcome::Failed {
                    rank,
                    status: end.1,
                };
            }
            ended[i] = Some(end);
        }
        match stopping {
            Some((signal, _)) if all_done => return stopped(children, ended, signal),
            None if all_done => return Outcome::Success,
            Some((signal, kill_at)) if Instant::now() >= kill_at => {
                let late = rank_list(
                    children
                        .iter()
                        .zip(&ended)
                        .filter(|(_, e)| e.is_none())
                        .map(|((r, _), _)| *r),
                );
                eprintln!(
                    "launch: ranks {late} are still running after {}; killing them",
                    signal_name(signal)
                );
                for ((_, c), end) in children.iter_mut().zip(ended.iter_mut()) {
                    if end.is_none() {
                        let _ = c.kill();
                        *end = Some(match c.wait() {
                            Ok(status) => (exit_code(status), describe(status)),
                            Err(e) => (1, format!("cannot be waited for: {e}")),
                        });
                    }
                }
                return stopped(children, ended, signal);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome once every rank ended after a stop signal.
fn stopped(children: &[(usize, Child)], ended: Vec<Option<(i32, String)>>, signal: i32) -> Outcome {
    let ranks: Vec<(usize, i32, String)> = children
        .iter()
        .zip(ended)
        .map(|((rank, _), end)| {
            let (code, how) = end.unwrap_or((1, "unknown".into()));
            (*rank, code, how)
        })
        .collect();
    let code = ranks.iter().map(|r| r.1).find(|&c| c != 0).unwrap_or(0);
    Outcome::Stopped {
        signal,
        code,
        ranks: ranks.into_iter().map(|(r, _, how)| (r, how)).collect(),
    }
}

/// How long the surviving ranks get to notice a failure and report it themselves
/// (their communicators fail within milliseconds of a peer's death) before SIGTERM.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// Stops the children after a rank failed: first a grace to report it themselves.
fn stop_all(children: &mut [(usize, Child)]) {
    let grace = Instant::now() + REPORT_GRACE;
    while Instant::now() < grace
        && children
            .iter_mut()
            .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_now(children);
}

/// SIGTERM to every child still running, SIGKILL to those still there after 3 s.
fn stop_now(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: `pid` is our own child, not yet reaped (try_wait said running).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for (_, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// How a launch ended without an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every rank exited 0.
    Finished,
    /// A stop signal came; `code` is the ranks' status (see [`Outcome::Stopped`]).
    Stopped { code: i32 },
}

/// Runs the job, restarting all ranks after a failure up to `max_restarts` times.
pub fn launch(plan: &LaunchPlan) -> Result<Ended, CliError> {
    let world = plan.nproc * plan.nnodes;
    for attempt in 0..=plan.max_restarts {
        if RECEIVED.count() > 0 {
            // A stop signal between attempts: start nothing more.
            let signal = RECEIVED.last();
            eprintln!(
                "launch: got {}; not restarting the ranks",
                signal_name(signal)
            );
            return Ok(Ended::Stopped { code: 128 + signal });
        }
        // A fresh listener for each start: the last one's queue may hold
        // connections from ranks that have died since.
        let held = match plan.master_port {
            0 => Some(MasterListener::bind_loopback("launch")?),
            _ => None,
        };
        let port = held.as_ref().map_or(plan.master_port, MasterListener::port);
        let args = child_args(&plan.command, attempt);
        let first_rank = plan.node_rank * plan.nproc;
        let host = plan.master_host.clone();
        let token = plan.token.clone();
        let nproc = plan.nproc;
        let node_rank = plan.node_rank;
        let timeout = plan.comm_timeout;
        let env = move |local: usize| {
            let mut vars = vec![
                ("RANK".to_string(), (first_rank + local).to_string()),
                ("WORLD_SIZE".to_string(), world.to_string()),
                ("LOCAL_RANK".to_string(), local.to_string()),
                ("LOCAL_WORLD_SIZE".to_string(), nproc.to_string()),
                ("GROUP_RANK".to_string(), node_rank.to_string()),
                ("MASTER_ADDR".to_string(), host.clone()),
                ("MASTER_PORT".to_string(), port.to_string()),
                (
                    frugal_comm::rendezvous::TOKEN_ENV.to_string(),
                    token.clone(),
                ),
            ];
            if let Some(t) = timeout {
                vars.push((
                    frugal_comm::TIMEOUT_ENV.to_string(),
                    t.as_secs_f64().to_string(),
                ));
            }
            vars
        };
        let timeout_note = match plan.comm_timeout {
            Some(t) => format!(", comm timeout {} s", t.as_secs_f64()),
            None => match std::env::var(frugal_comm::TIMEOUT_ENV) {
                Ok(v) => format!(", comm timeout {v} s from {}", frugal_comm::TIMEOUT_ENV),
                Err(_) => String::new(),
            },
        };
        eprintln!(
            "launch: starting ranks {}..{} of {world} (master {}:{port}{timeout_note}){}: frugal {}",
            first_rank,
            first_rank + plan.nproc - 1,
            plan.master_host,
            if attempt > 0 {
                format!(", restart {attempt}/{}", plan.max_restarts)
            } else {
                String::new()
            },
            args.join(" ")
        );
        let set = RankSet {
            args: &args,
            env: &env,
            count: plan.nproc,
            first_rank,
            prefix_output: true,
            master_listener: held.as_ref(),
        };
        match run_ranks(&set)?.0 {
            Outcome::Success => return Ok(Ended::Finished),
            Outcome::Stopped {
                signal,
                code,
                ranks,
            } => {
                let how: Vec<String> = ranks
                    .iter()
                    .map(|(r, how)| format!("rank {r}: {how}"))
                    .collect();
                eprintln!(
                    "launch: the ranks stopped after {} ({}); exiting with status {code}",
                    signal_name(signal),
                    how.join(", ")
                );
                return Ok(Ended::Stopped { code });
            }
            Outcome::Failed { rank, status } => {
                let msg = format!("rank {rank} failed ({status}); the other ranks were stopped");
                // After a stop signal, a failure is not worth a restart.
                if attempt == plan.max_restarts || RECEIVED.count() > 0 {
                    return Err(CliError::RankFailed {
                        rank,
                        status,
                        restarts: plan.max_restarts,
                    });
                }
                eprintln!(
                    "launch: {msg}; restarting all ranks ({}/{})",
                    attempt + 1,
                    plan.max_restarts
                );
            }
        }
    }
    Ok(Ended::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn restarted_train_resumes_once() {
        assert_eq!(
            child_args(&words("train --steps 5"), 0),
            words("train --steps 5")
        );
        assert_eq!(
            child_args(&words("train --steps 5"), 1),
            words("train --steps 5 --resume auto")
        );
        assert_eq!(
            child_args(&words("train --resume ckpt"), 2),
            words("train --resume ckpt")
        );
        assert_eq!(
            child_args(&words("train --resume=auto"), 1),
            words("train --resume=auto")
        );
        // Other commands have no checkpoints to resume.
        assert_eq!(
            child_args(&words("bench allreduce"), 1),
            words("bench allreduce")
        );
    }

    #[test]
    fn plans_check_their_flags() {
        let cmd = words("train");
        assert!(plan(0, 1, 0, None, 0, None, cmd.clone()).is_err());
        assert!(plan(2, 2, 2, Some("h:1"), 0, Some("t".into()), cmd.clone()).is_err());
        assert!(
            plan(2, 2, 0, None, 0, Some("t".into()), cmd.clone()).is_err(),
            "multi-node needs --master"
        );
        assert!(plan(2, 1, 0, Some("nohost"), 0, None, cmd.clone()).is_err());
        assert!(plan(2, 1, 0, None, 0, None, vec![]).is_err());
        let p = plan(2, 2, 1, Some("node01:29500"), 1, Some("tok".into()), cmd).expect("valid");
        assert_eq!(
            (p.master_host.as_str(), p.master_port, p.token.as_str()),
            ("node01", 29500, "tok")
        );
    }

    #[test]
    fn nproc_is_bounded() {
        let cmd = words("train");
        let e = plan(70_000, 1, 0, None, 0, None, cmd.clone()).expect_err("too many ranks");
        let CliError::UsageWithHelp { message: m, .. } = e else {
            panic!("a usage error (exit 2) expected");
        };
        assert!(m.contains("at most 256") && m.contains("--nnodes"), "{m}");
        assert!(plan(MAX_NPROC, 1, 0, None, 0, None, cmd.clone()).is_ok());
        // The world, too, stays within what the rendezvous accepts.
        assert!(plan(256, 1 << 9, 0, Some("h:1"), 0, Some("t".into()), cmd).is_err());
    }

    /// Runs `count` ranks of `sh -c script`, noting a stop signal for each of
    /// `signal_after` (from the start) on another thread, as the handler would.
    fn run_sh(
        script: &str,
        count: usize,
        signal_after: &[Duration],
    ) -> (Outcome, String, Duration) {
        let signals: &'static Signals = Box::leak(Box::new(Signals::new()));
        let args = vec!["-c".to_string(), script.to_string()];
        let env = |_: usize| Vec::new();
        let set = RankSet {
            args: &args,
            env: &env,
            count,
            first_rank: 0,
            prefix_output: false,
            master_listener: None,
        };
        let at = signal_after.to_vec();
        let started = Instant::now();
        let noter = std::thread::spawn(move || {
            for t in at {
                std::thread::sleep(t.saturating_sub(started.elapsed()));
                signals.note(libc::SIGTERM);
            }
        });
        let (outcome, out) = run_program(Path::new("/bin/sh"), &set, signals).expect("ranks start");
        let took = started.elapsed();
        noter.join().expect("noter");
        (outcome, out, took)
    }

    #[test]
    fn rank_0_alone_inherits_the_held_listener() {
        let held = MasterListener::bind_loopback("test").expect("bind loopback");
        let fd = held.fd();
        let args = vec![
            "-c".to_string(),
            // Rank 0: the variable names an open socket. Other ranks: no variable,
            // and launch's descriptor is not open in them.
            "mine=$(readlink /proc/$$/fd/$HELD_FD 2>/dev/null); \
             if [ \"$RANK\" = 0 ]; then \
               [ \"$FRUGAL_RENDEZVOUS_FD\" = \"$HELD_FD\" ] || exit 3; \
               case $mine in socket:*) echo rank 0 has it;; *) exit 4;; esac; \
             else \
               [ -z \"${FRUGAL_RENDEZVOUS_FD+set}\" ] || exit 5; \
               case $mine in socket:*) exit 6;; esac; \
             fi"
            .to_string(),
        ];
        let env = |local: usize| {
            vec![
                ("RANK".to_string(), local.to_string()),
                ("HELD_FD".to_string(), fd.to_string()),
                // As if launch itself had been handed one: the other ranks lose it.
                (LISTENER_FD_ENV.to_string(), "7".to_string()),
            ]
        };
        let set = RankSet {
            args: &args,
            env: &env,
            count: 3,
            first_rank: 0,
            prefix_output: false,
            master_listener: Some(&held),
        };
        let (outcome, out) =
            run_program(Path::new("/bin/sh"), &set, &Signals::new()).expect("ranks start");
        assert!(matches!(outcome, Outcome::Success), "{outcome:?}");
        assert_eq!(out, "rank 0 has it\n");
        // Held until dropped: the port cannot be bound meanwhile.
        assert!(std::net::TcpListener::bind(("127.0.0.1", held.port())).is_err());
    }

    #[test]
    fn a_stop_signal_is_passed_on_and_the_ranks_status_returned() {
        // Ranks that exit 143 on SIGTERM, as `train` does after its checkpoint.
        let script = "trap 'echo stopping; exit 143' TERM; echo up; while :; do sleep 0.05; done";
        let (outcome, out, took) = run_sh(script, 3, &[Duration::from_millis(300)]);
        match outcome {
            Outcome::Stopped {
                signal,
                code,
                ranks,
            } => {
                assert_eq!((signal, code), (libc::SIGTERM, 143));
                assert_eq!(ranks.len(), 3);
                assert!(
                    ranks.iter().all(|(_, how)| how == "exit status 143"),
                    "{ranks:?}"
                );
            }
            other => panic!("expected the ranks stopped by the signal, got {other:?}"),
        }
        assert_eq!(out, "up\nstopping\n", "rank 0 got the signal once");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn a_second_stop_signal_is_passed_on_again() {
        // Ranks that keep going on the first SIGTERM and stop on the second.
        let script = "n=0; trap 'n=$((n+1)); echo got $n; [ $n -ge 2 ] && exit 143' TERM; \
                      while :; do sleep 0.05; done";
        let (outcome, out, took) = run_sh(
            script,
            2,
            &[Duration::from_millis(300), Duration::from_millis(900)],
        );
        assert!(
            matches!(outcome, Outcome::Stopped { code: 143, .. }),
            "{outcome:?}"
        );
        assert_eq!(out, "got 1\ngot 2\n");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "the ranks ran on after the first signal and stopped on the second: {took:?}"
        );
    }

    #[test]
    fn ranks_killed_by_the_signal_give_128_plus_its_number() {
        let (outcome, _, _) = run_sh(
            "while :; do sleep 0.05; done",
            2,
            &[Duration::from_millis(200)],
        );
        match outcome {
            Outcome::Stopped { code, ranks, .. } => {
                assert_eq!(code, 128 + libc::SIGTERM);
                assert!(
                    ranks.iter().all(|(_, how)| how == "killed by signal 15"),
                    "{ranks:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rank_failing_while_others_start_stops_the_starting() {
        let (outcome, _, took) = run_sh("exit 3", MAX_NPROC, &[]);
        match outcome {
            Outcome::Failed { status, .. } => {
                assert!(status.starts_with("exit status 3, with "), "{status}");
                assert!(
                    !status.contains(&format!("with {MAX_NPROC} of")),
                    "{status}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn random_tokens_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
