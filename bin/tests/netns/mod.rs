//! Hosts as Linux network namespaces for the multi-host tests
//! (`multihost.rs`): each host its own namespace, host name (a UTS namespace
//! per process) and private address, on a bridge in a namespace of its own;
//! removed, with every process in them, when the [`Net`] is dropped.
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_frugal");
/// The communication timeout of the fault tests: short, so the file runs in seconds.
pub const TIMEOUT_S: f64 = 3.0;
/// Slack over "the timeout plus a second" for a loaded 2-core machine.
pub const SLACK_S: f64 = 1.0;
pub const PORT: &str = "29400";

/// One test at a time: each runs several ranks, and a starved rank would time out.
pub static SERIAL: Mutex<()> = Mutex::new(());
pub static NETS: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip`/`tc`-style commands; Err carries the command and its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// N hosts on a bridge. Dropping it kills every process in its namespaces and
/// removes them (the veths and the bridge go with them).
pub struct Net {
    prefix: String,
    pub hosts: usize,
    made: Vec<String>,
}

impl Net {
    /// Makes `hosts` namespaces on a bridge, or says why it cannot.
    pub fn new(hosts: usize) -> Result<Net, String> {
        let k = NETS.fetch_add(1, Ordering::Relaxed);
        let mut net = Net {
            prefix: format!("frugal{}n{k}", std::process::id()),
            hosts,
            made: Vec::new(),
        };
        let sw = net.switch();
        net.add_ns(&sw)?;
        // Each rank gets its own host name: that needs CAP_SYS_ADMIN too.
        sh("ip", &["netns", "exec", &sw, "unshare", "--uts", "true"])?;
        sh("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = net.ns(i);
            net.add_ns(&ns)?;
            let v = format!("v{i}");
            sh(
                "ip",
                &[
                    "-n", &sw, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ],
            )?;
            sh("ip", &["-n", &sw, "link", "set", &v, "master", "br0", "up"])?;
            let addr = format!("{}/24", net.ip(i));
            sh("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn add_ns(&mut self, name: &str) -> Result<(), String> {
        sh("ip", &["netns", "add", name])?;
        self.made.push(name.to_string());
        Ok(())
    }

    pub fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.231.0.{}", i + 1)
    }

    /// `frugal args` on host `i`, as host name `h{i}`, with `env`.
    pub fn frugal(&self, i: usize, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i), "unshare", "--uts", "sh", "-c"])
            .arg(format!("hostname h{i} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args);
        for v in [
            "FRUGAL_COMM_TIMEOUT",
            "FRUGAL_JOB_TOKEN",
            "RANK",
            "WORLD_SIZE",
        ] {
            c.env_remove(v);
        }
        c.env_remove("FRUGAL_PRICE_PER_GPU_HOUR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// torchrun's variables for rank `i` of a job of one rank per host.
    pub fn rank_env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", i.to_string()),
            ("WORLD_SIZE", self.hosts.to_string()),
            ("LOCAL_RANK", "0".into()),
            ("MASTER_ADDR", self.ip(0)),
            ("MASTER_PORT", PORT.into()),
            ("FRUGAL_JOB_TOKEN", "multihost".into()),
        ]
    }

    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        let ns = self.ns(i);
        if let Err(e) = sh("ip", &["-n", &ns, "link", "set", "eth0", state]) {
            panic!("{e}");
        }
    }

    /// The processes in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.ns(i)])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn kill_host(&self, i: usize) {
        for pid in self.pids(i) {
            // SAFETY: a process of our own test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            // SIGCONT first: a stopped process cannot die of SIGKILL until resumed.
            for pid in self.pids(i) {
                // SAFETY: processes of our own test namespace.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for ns in self.made.iter().rev() {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

/// The net, or None after saying why the test is skipped.
pub fn net_or_skip(hosts: usize) -> Option<Net> {
    match Net::new(hosts) {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot make network namespaces here (needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN, and ip/unshare): {e}"
            );
            None
        }
    }
}

/// Waits for `child` with a bound; kills it and panics past `limit`.
pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> (Output, f64) {
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let secs = start.elapsed().as_secs_f64();
            let o = child.wait_with_output().expect("collect output");
            return (o, secs);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().ok();
            panic!(
                "{what} still running after {limit:?}; stderr: {}",
                o.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
