//! `frugal bench allreduce`: the socket ring's all-reduce time, algorithm
//! bandwidth and bus bandwidth, as nccl-tests define them:
//! algbw = bytes / time, busbw = algbw · 2(n−1)/n (the bytes each rank's links
//! must carry in an optimal all-reduce, so figures compare across rank counts).
//! `--op reduce-scatter|all-gather` times those instead (what sharded training
//! calls; the even split over ranks), with busbw = algbw · (n−1)/n, where
//! bytes is the whole buffer, as nccl-tests count them.
//!
//! Run plainly, it starts n local rank processes for each rank count (this
//! executable again, with the variables `frugal launch` sets); rank 0 prints
//! one result line per size, which the parent collects and prints as a table
//! or, with `--json`, one JSON object per (ranks, size).
//!
//! Started with a job's variables (under `frugal launch`, torchrun or srun:
//! RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, or Slurm's), each process is one
//! rank of that job instead, which may span hosts; rank 0 prints the table.
//! Time per size: the slowest rank's mean over the timed iterations, after warm-up.
//! `cpu_ms` is the busiest rank's CPU time (user + system) per iteration: on an
//! oversubscribed machine time_ms ≫ cpu_ms, and the figures say more about the
//! other load than about the ring.

use crate::cmd::launch::{random_token, run_ranks, MasterListener, Outcome, RankSet};
use crate::error::CliError;
use crate::flags::text;
use frugal_comm::{Algorithm, Communicator, Rendezvous, SameHost, SocketOptions};
use std::time::Instant;

/// What `frugal bench allreduce --help` says first.
pub const ABOUT: &str =
    "Times the socket communicator's f32 all-reduce (or, with --op, reduce-scatter \
     or all-gather) between local rank processes on loopback.";

/// What `frugal bench allreduce --help` says last.
pub const DELAY_NOTE: &str = "\
Across hosts: start it as one rank per process of a job, as for 'train': under
'frugal launch --nnodes M --node-rank R --master HOST:PORT --job-token T -- bench allreduce',
torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or srun (SLURM_PROCID, SLURM_NTASKS,
SLURM_NODELIST). Each process is then one rank of that job (--ranks is not used) and rank 0
prints the table, e.g. on two hosts:
  frugal launch --nproc 1 --nnodes 2 --node-rank 0 --master 10.0.0.1:29500 --job-token s3cret \\
      -- bench allreduce --sizes 1M,64M --comm-timeout 10
  (and --node-rank 1 on the other host)
--comm-timeout wins over FRUGAL_COMM_TIMEOUT (default 60 s); a rank that waits longer on a
peer fails naming it.

With FRUGAL_BENCH_DELAY=1 each rank also prints, per size, how long its main thread
waited runnable for a CPU (Linux schedstat): on a loaded machine, most of time_ms.";

/// Set by the parent for the local ranks it starts: they print tagged result
/// lines for the parent instead of a table.
const CHILD_ENV: &str = "FRUGAL_BENCH_ALLREDUCE_CHILD";

/// `frugal bench allreduce`'s flags.
#[derive(Debug, clap::Args)]
pub struct AllreduceFlags {
    /// rank counts to run
    #[arg(long, value_name = "LIST", default_value = "2,4,8", value_parser = text::<String>())]
    ranks: String,
    /// message sizes in bytes, with K/M/G (binary) suffixes
    #[arg(long, value_name = "LIST", default_value = "4K,64K,1M,16M,64M,256M", value_parser = text::<String>())]
    sizes: String,
    /// timed iterations per size (default: about 512 MiB of traffic, 3..1000)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    iters: Option<usize>,
    /// pipelining slice
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = text::<String>())]
    slice: String,
    /// shared memory: bytes per rank per piece
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = text::<String>())]
    shm_slot: String,
    /// SO_SNDBUF/SO_RCVBUF asked of the kernel (0 = its autotuning)
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = text::<String>())]
    socket_buffer: String,
    /// parallel rings (connections and threads) for large messages
    /// (default 0: one per 8 cores of rank 0, 1 to 4)
    #[arg(long, value_name = "N", default_value_t = frugal_comm::socket::DEFAULT_LANES, value_parser = text::<usize>(), verbatim_doc_comment)]
    lanes: usize,
    /// transport between ranks on this host: shm (collectives through shared memory
    /// when every rank is local), unix (Unix-domain socket ring) or tcp (loopback TCP ring)
    #[arg(long, value_name = "MODE", default_value = "shm", value_parser = text::<String>(), verbatim_doc_comment)]
    same_host: String,
    /// the collective to time: all-reduce, reduce-scatter or all-gather
    #[arg(long, value_name = "OP", default_value = "all-reduce", value_parser = text::<String>())]
    op: String,
    /// one JSON object per (ranks, size): bytes, ranks, time_ms, algbw_GBps, busbw_GBps, cpu_ms,
    /// op, same_host
    #[arg(long)]
    json: bool,
    /// the all-reduce when hosts run several ranks: auto (hierarchical when some
    /// host runs more than one rank and there are several hosts), flat (one ring
    /// over every rank) or hierarchical (within each host over shared memory,
    /// then a ring of one leader per host, then a broadcast within the host);
    /// wins over FRUGAL_ALLREDUCE
    #[arg(long, value_name = "ALGO", value_parser = text::<String>())]
    algo: Option<String>,
    /// seconds a rank waits for the others (joining, and for no progress in a
    /// collective) before failing naming the silent rank; wins over
    /// FRUGAL_COMM_TIMEOUT (default 60)
    #[arg(long, value_name = "SECONDS", value_parser = text::<String>())]
    comm_timeout: Option<String>,
}

const RESULT_TAG: &str = "allreduce-result";

/// The collective `--op` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
}

impl Op {
    fn parse(s: &str) -> Result<Op, String> {
        match s {
            "all-reduce" => Ok(Op::AllReduce),
            "reduce-scatter" => Ok(Op::ReduceScatter),
            "all-gather" => Ok(Op::AllGather),
            other => Err(format!(
                "--op '{other}': all-reduce, reduce-scatter or all-gather"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all-reduce",
            Op::ReduceScatter => "reduce-scatter",
            Op::AllGather => "all-gather",
        }
    }

    /// busbw / algbw for `n` ranks, as nccl-tests define it: the share of
    /// the buffer each rank's links carry in an optimal algorithm.
    fn bus_factor(self, n: usize) -> f64 {
        let share = (n as f64 - 1.0) / n as f64;
        match self {
            Op::AllReduce => 2.0 * share,
            Op::ReduceScatter | Op::AllGather => share,
        }
    }

    /// One call on `buf` (the even split over ranks).
    fn run(
        self,
        comm: &mut dyn Communicator,
        buf: &mut [f32],
    ) -> Result<(), frugal_comm::CommError> {
        match self {
            Op::AllReduce => comm.all_reduce_sum_f32(buf),
            Op::ReduceScatter => comm.reduce_scatter_sum_f32(buf).map(|_| ()),
            Op::AllGather => comm.all_gather_f32(buf),
        }
    }
}

/// Parses `4K`, `64M`, `1G`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches("i");
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 4K, 64M or 4096"))?;
    n.checked_mul(mult)
        .filter(|&b| b >= 4)
        .ok_or_else(|| format!("'{s}' must be at least 4 bytes (one f32)"))
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| f(p.trim()))
        .collect()
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn default_iters(bytes: usize) -> usize {
    ((512usize << 20) / bytes).clamp(3, 1000)
}

pub fn run(flags: AllreduceFlags) -> Result<(), CliError> {
    let AllreduceFlags {
        ranks,
        sizes,
        iters,
        slice,
        shm_slot,
        socket_buffer: sockbuf,
        lanes,
        same_host,
        op: op_name,
        json,
        algo,
        comm_timeout,
    } = flags;
    let usage = |m: String| super::shared::usage("bench allreduce", m);
    let ranks: Vec<usize> = parse_list(&ranks, |p| {
        p.parse::<usize>()
            .ok()
            .filter(|&n| (1..=64).contains(&n))
            .ok_or_else(|| format!("rank count '{p}' must be 1..64"))
    })
    .map_err(usage)?;
    let sizes: Vec<usize> = parse_list(&sizes, parse_size).map_err(usage)?;
    let slice = parse_size(&slice).map_err(usage)?;
    let shm_slot = parse_size(&shm_slot).map_err(usage)?;
    let sockbuf = if sockbuf.trim() == "0" {
        0
    } else {
        parse_size(&sockbuf).map_err(usage)?
    };
    let same_host_mode = match same_host.as_str() {
        "shm" => SameHost::SharedMemory,
        "unix" => SameHost::UnixSocket,
        "tcp" => SameHost::Tcp,
        other => return Err(usage(format!("--same-host '{other}': shm, unix or tcp"))),
    };
    if lanes > 64 {
        return Err(usage("--lanes must be 0..64 (0 = automatic)".into()));
    }
    if iters == Some(0) {
        return Err(usage("--iters must be at least 1".into()));
    }
    let op = Op::parse(&op_name).map_err(usage)?;
    let timeout = match comm_timeout.as_deref() {
        None => None,
        Some(t) => Some(
            frugal_comm::rendezvous::parse_timeout(t)
                .map_err(|e| usage(format!("--comm-timeout: {e}")))?,
        ),
    };
    let algorithm = match algo.as_deref() {
        Some(a) => Algorithm::parse(a).map_err(|e| usage(format!("--algo: {e}")))?,
        None => Algorithm::from_env().map_err(|e| usage(e.to_string()))?,
    };
    let child = std::env::var_os(CHILD_ENV).is_some();
    if child || crate::train::sync::launched_as_job() {
        let report = if child {
            Report::Tagged
        } else {
            Report::Table { json }
        };
        let options = SocketOptions {
            slice_bytes: slice,
            socket_buffer_bytes: sockbuf,
            lanes,
            same_host: same_host_mode,
            shm_slot_bytes: shm_slot,
        };
        return run_rank(op, &sizes, iters, options, (timeout, algorithm), report);
    }
    if !json {
        print_table_header();
    }
    for &n in &ranks {
        let held = MasterListener::bind_loopback("bench allreduce")?;
        let port = held.port();
        let token = random_token();
        let mut child = vec!["bench".to_string(), "allreduce".into()];
        child.extend([
            "--sizes".into(),
            sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ]);
        child.extend([
            "--slice".into(),
            slice.to_string(),
            "--shm-slot".into(),
            shm_slot.to_string(),
            "--socket-buffer".into(),
            sockbuf.to_string(),
            "--lanes".into(),
            lanes.to_string(),
            "--same-host".into(),
            same_host.clone(),
            "--op".into(),
            op.name().into(),
        ]);
        if let Some(i) = iters {
            child.extend(["--iters".into(), i.to_string()]);
        }
        if let Some(t) = timeout {
            child.extend(["--comm-timeout".into(), t.as_secs_f64().to_string()]);
        }
        if let Some(a) = &algo {
            child.extend(["--algo".into(), a.clone()]);
        }
        let env = move |local: usize| {
            vec![
                ("RANK".to_string(), local.to_string()),
                ("WORLD_SIZE".to_string(), n.to_string()),
                ("LOCAL_RANK".to_string(), local.to_string()),
                ("MASTER_ADDR".to_string(), "127.0.0.1".to_string()),
                ("MASTER_PORT".to_string(), port.to_string()),
                (
                    frugal_comm::rendezvous::TOKEN_ENV.to_string(),
                    token.clone(),
                ),
                (CHILD_ENV.to_string(), "1".to_string()),
            ]
        };
        let set = RankSet {
            args: &child,
            env: &env,
            count: n,
            first_rank: 0,
            prefix_output: false,
            master_listener: Some(&held),
        };
        let (outcome, out) = run_ranks(&set)?;
        if let Outcome::Failed { rank, status } = outcome {
            return Err(CliError::BenchRankFailed {
                rank,
                ranks: n,
                status,
            });
        }
        for line in out.lines().filter_map(|l| l.strip_prefix(RESULT_TAG)) {
            let f: Vec<f64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let [bytes, iters, ms, cpu_ms] = f[..] else {
                continue;
            };
            print_row(
                op,
                n,
                bytes as usize,
                iters as usize,
                (ms, cpu_ms),
                (&same_host, json),
            );
        }
    }
    Ok(())
}

fn print_table_header() {
    println!(
        "{:>5} {:>10} {:>7} {:>12} {:>12} {:>12} {:>10}",
        "ranks", "size", "iters", "time_ms", "algbw_GB/s", "busbw_GB/s", "cpu_ms"
    );
}

/// One result: a table row, or with `json` one JSON object.
/// One row of the table (or one JSON line); `same_host` is the --same-host transport
/// ("shm", "unix" or "tcp"), so `plan --calibrate` can model the path that was timed.
fn print_row(
    op: Op,
    n: usize,
    bytes: usize,
    iters: usize,
    (ms, cpu_ms): (f64, f64),
    (same_host, json): (&str, bool),
) {
    let algbw = bytes as f64 / (ms * 1e-3) / 1e9;
    let busbw = algbw * op.bus_factor(n);
    if json {
        println!(
            "{{\"bytes\": {bytes}, \"ranks\": {n}, \"iters\": {iters}, \"time_ms\": {ms:.6}, \"algbw_GBps\": {algbw:.4}, \"busbw_GBps\": {busbw:.4}, \"cpu_ms\": {cpu_ms:.6}, \"op\": \"{}\", \"same_host\": \"{same_host}\"}}",
            op.name()
        );
    } else {
        println!(
            "{n:>5} {:>10} {iters:>7} {ms:>12.4} {algbw:>12.3} {busbw:>12.3} {cpu_ms:>10.4}",
            human(bytes)
        );
    }
}

/// How rank 0 reports: tagged lines for the parent that started it, or the
/// table itself when it is one rank of an externally launched job.
#[derive(Debug, Clone, Copy)]
enum Report {
    Tagged,
    Table { json: bool },
}

/// The largest `x` over ranks: an all-gather of one value per rank.
fn max_over_ranks(
    comm: &mut dyn Communicator,
    scratch: &mut [f32],
    x: f64,
) -> Result<f64, CliError> {
    scratch.iter_mut().for_each(|v| *v = 0.0);
    scratch[comm.rank()] = x as f32;
    comm.all_gather_f32(scratch)?;
    Ok(scratch.iter().cloned().fold(0.0f32, f32::max) as f64)
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Time the calling thread waited, runnable, for a CPU (Linux schedstat), in seconds; 0 where unknown.
fn run_delay_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|ns| ns * 1e-9)
        .unwrap_or(0.0)
}

/// One rank: time each size; rank 0 reports as `report` says.
/// The --same-host value that selects `mode`.
fn same_host_name(mode: SameHost) -> &'static str {
    match mode {
        SameHost::SharedMemory => "shm",
        SameHost::UnixSocket => "unix",
        SameHost::Tcp => "tcp",
    }
}

fn run_rank(
    op: Op,
    sizes: &[usize],
    iters: Option<usize>,
    options: SocketOptions,
    (timeout, algorithm): (Option<std::time::Duration>, Algorithm),
    report: Report,
) -> Result<(), CliError> {
    let rv = Rendezvous::from_env_timeout(None, timeout)?;
    // Fault injection for the launch tests: this rank fails at once.
    if std::env::var("FRUGAL_BENCH_FAIL_RANK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(rv.rank)
    {
        return Err(CliError::FailingOnPurpose { rank: rv.rank });
    }
    let (mut comm, hierarchical) = frugal_comm::hier::connect(&rv, options, algorithm)?;
    let comm = comm.as_mut();
    if comm.rank() == 0 {
        eprintln!(
            "bench allreduce: rank 0 of {}, comm timeout {} s, {} all-reduce",
            comm.world(),
            rv.timeout.as_secs_f64(),
            if hierarchical { "hierarchical" } else { "flat" }
        );
        if let Report::Table { json: false } = report {
            print_table_header();
        }
    }
    let mut times = vec![0.0f32; comm.world()];
    for &bytes in sizes {
        let mut buf = vec![1e-7f32; bytes / 4];
        let iters = iters.unwrap_or_else(|| default_iters(bytes));
        let warmup = (iters / 10).clamp(1, 20);
        for _ in 0..warmup {
            op.run(comm, &mut buf)?;
        }
        comm.barrier()?;
        let t = Instant::now();
        let cpu = cpu_seconds();
        let delay = run_delay_seconds();
        for _ in 0..iters {
            op.run(comm, &mut buf)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
        let cpu_ms = (cpu_seconds() - cpu) * 1e3 / iters as f64;
        let delay_ms = (run_delay_seconds() - delay) * 1e3 / iters as f64;
        if std::env::var_os("FRUGAL_BENCH_DELAY").is_some() {
            eprintln!("rank {} bytes {bytes} ms {ms:.3} cpu_ms {cpu_ms:.3} waiting_for_cpu_ms {delay_ms:.3}", comm.rank());
        }
        // The slowest rank's time: gather everyone's, one element each.
        let (slowest, busiest) = (
            max_over_ranks(comm, &mut times, ms)?,
            max_over_ranks(comm, &mut times, cpu_ms)?,
        );
        if comm.rank() == 0 {
            let bytes = (bytes / 4) * 4;
            match report {
                Report::Tagged => {
                    println!("{RESULT_TAG} {bytes} {iters} {slowest:.6} {busiest:.6}")
                }
                Report::Table { json } => {
                    print_row(
                        op,
                        comm.world(),
                        bytes,
                        iters,
                        (slowest, busiest),
                        (same_host_name(options.same_host), json),
                    );
                }
            }
        }
    }
    comm.barrier()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn ops_parse_by_name_with_nccl_tests_bus_factors() {
        for op in [Op::AllReduce, Op::ReduceScatter, Op::AllGather] {
            assert_eq!(Op::parse(op.name()), Ok(op));
        }
        assert!(Op::parse("all_reduce").is_err());
        assert_eq!(Op::AllReduce.bus_factor(4), 1.5);
        assert_eq!(Op::ReduceScatter.bus_factor(4), 0.75);
        assert_eq!(Op::AllGather.bus_factor(2), 0.5);
    }
}
