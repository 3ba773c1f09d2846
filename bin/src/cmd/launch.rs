//! `frugal launch`: start the local ranks of a data-parallel job, like torchrun.
//!
//! Each rank is a child process running this same executable with the
//! command after `--`, and the variables torchrun sets (RANK, WORLD_SIZE,
//! LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) plus the job token
//! (FRUGAL_JOB_TOKEN). Every output line is prefixed with `[rank r]`. When a
//! rank fails, the others are stopped and launch exits non-zero naming the
//! rank; with `--max-restarts K` all ranks are started again, up to K times,
//! and a `train` command gets `--resume auto` so it continues from its newest
//! valid checkpoint.

use crate::args::{Args, UsageError};
use crate::CliError;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: frugal launch --nproc N [--nnodes M --node-rank R --master HOST:PORT]
                     [--max-restarts K] [--job-token T] -- <command> [flags]

Starts N ranks of '<command>' on this node (e.g. '-- train --model tiny').
  --nproc N          ranks on this node
  --nnodes M         nodes in the job (default 1); run one launch per node
  --node-rank R      this node's index, 0..M (default 0)
  --master HOST:PORT where rank 0 listens (default: 127.0.0.1 and a free port;
                     required with --nnodes > 1)
  --max-restarts K   restart every rank up to K times after a failure
                     ('train' continues with --resume auto)
  --job-token T      shared secret in every handshake (default: FRUGAL_JOB_TOKEN,
                     else a random one; required across nodes)";

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
    /// Rank 0's port.
    pub master_port: u16,
    /// Restarts allowed after a failure.
    pub max_restarts: usize,
    /// The job token.
    pub token: String,
    /// The children's arguments (after `--`).
    pub command: Vec<String>,
}

pub fn run(mut args: Args) -> Result<(), CliError> {
    if args.wants_help() {
        println!("{USAGE}");
        return Ok(());
    }
    let nproc: usize = args
        .value("nproc")?
        .ok_or_else(|| UsageError(format!("launch: --nproc is required\n{USAGE}")))?;
    let nnodes: usize = args.value_or("nnodes", 1)?;
    let node_rank: usize = args.value_or("node-rank", 0)?;
    let master = args.string("master")?;
    let max_restarts: usize = args.value_or("max-restarts", 0)?;
    let token = args.string("job-token")?;
    let command = std::mem::take(&mut args.rest);
    args.finish()?;
    let plan = plan(
        nproc,
        nnodes,
        node_rank,
        master.as_deref(),
        max_restarts,
        token,
        command,
    )?;
    launch(&plan)
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
    let usage = |m: String| CliError::Usage(UsageError(format!("launch: {m}\n{USAGE}")));
    if nproc == 0 || nnodes == 0 {
        return Err(usage("--nproc and --nnodes must be at least 1".into()));
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
        None => (
            "127.0.0.1".to_string(),
            free_port()
                .map_err(|e| CliError::Failed(format!("launch: no free local port: {e}")))?,
        ),
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
    })
}

/// A port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
}

/// Starts the ranks, streams their output, and stops all when one fails.
/// Returns the outcome and, without prefixing, the first rank's captured stdout.
pub fn run_ranks(set: &RankSet) -> Result<(Outcome, String), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("launch: cannot find this executable: {e}")))?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut pumps: Vec<JoinHandle<String>> = Vec::new();
    for local in 0..set.count {
        let rank = set.first_rank + local;
        let mut cmd = Command::new(&exe);
        cmd.args(set.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in (set.env)(local) {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut children);
                return Err(CliError::Failed(format!(
                    "launch: cannot start rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        };
        let capture = !set.prefix_output && local == 0;
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, rank, Stream::Out, set.prefix_output, capture));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, rank, Stream::Err, true, false));
        }
        children.push((rank, child));
    }
    let outcome = supervise(&mut children);
    let mut captured = String::new();
    for p in pumps {
        if let Ok(s) = p.join() {
            captured.push_str(&s);
        }
    }
    Ok((outcome, captured))
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
) -> JoinHandle<String> {
    std::thread::spawn(move || {
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
fn die_with_parent(cmd: &mut Command) {
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

/// Waits for all children; on the first failure stops the rest (a grace to exit on their
/// own, then SIGTERM, then SIGKILL after 3 s).
fn supervise(children: &mut [(usize, Child)]) -> Outcome {
    let mut running: Vec<bool> = vec![true; children.len()];
    loop {
        let mut all_done = true;
        for (i, (rank, child)) in children.iter_mut().enumerate() {
            if !running[i] {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    running[i] = false;
                    if !status.success() {
                        let rank = *rank;
                        stop_all(children);
                        return Outcome::Failed {
                            rank,
                            status: describe(status),
                        };
                    }
                }
                Ok(None) => all_done = false,
                Err(e) => {
                    let rank = *rank;
                    stop_all(children);
                    return Outcome::Failed {
                        rank,
                        status: format!("cannot be waited for: {e}"),
                    };
                }
            }
        }
        if all_done {
            return Outcome::Success;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the surviving ranks get to notice a failure and report it themselves
/// (their communicators fail within milliseconds of a peer's death) before SIGTERM.
const REPORT_GRACE: Duration = Duration::from_secs(2);

fn stop_all(children: &mut [(usize, Child)]) {
    let grace = Instant::now() + REPORT_GRACE;
    while Instant::now() < grace
        && children
            .iter_mut()
            .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Runs the job, restarting all ranks after a failure up to `max_restarts` times.
pub fn launch(plan: &LaunchPlan) -> Result<(), CliError> {
    let world = plan.nproc * plan.nnodes;
    let mut port = plan.master_port;
    for attempt in 0..=plan.max_restarts {
        let args = child_args(&plan.command, attempt);
        let first_rank = plan.node_rank * plan.nproc;
        let host = plan.master_host.clone();
        let token = plan.token.clone();
        let nproc = plan.nproc;
        let node_rank = plan.node_rank;
        let env = move |local: usize| {
            vec![
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
            ]
        };
        eprintln!(
            "launch: starting ranks {}..{} of {world} (master {}:{port}){}: frugal {}",
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
        };
        match run_ranks(&set)?.0 {
            Outcome::Success => return Ok(()),
            Outcome::Failed { rank, status } => {
                let msg = format!("rank {rank} failed ({status}); the other ranks were stopped");
                if attempt == plan.max_restarts {
                    let tail = if plan.max_restarts > 0 {
                        format!(" (after {} restarts)", plan.max_restarts)
                    } else {
                        String::new()
                    };
                    return Err(CliError::Failed(format!(
                        "launch: {msg}{tail}; see the [rank {rank}] lines above"
                    )));
                }
                eprintln!(
                    "launch: {msg}; restarting all ranks ({}/{})",
                    attempt + 1,
                    plan.max_restarts
                );
                if plan.nnodes == 1 {
                    // A fresh port: the old one may still be held by a dying rank.
                    port = free_port().unwrap_or(port);
                }
            }
        }
    }
    Ok(())
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
    fn random_tokens_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
