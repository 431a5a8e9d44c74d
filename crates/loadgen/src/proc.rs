//! Child processes under test (discovery nodes, the ceiling), their memory
//! (`VmRSS` from `/proc/<pid>/status`) and CPU time (`utime` + `stime` from
//! `/proc/<pid>/stat`), the open-file limit, and the machine a run happened
//! on.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use loadgen::proc::{Rss as _, free_addr, spawn};
//!
//! let addr = free_addr()?;
//! let mut cmd = tokio::process::Command::new("target/release/discovery");
//! cmd.args(["--listen", &addr.to_string()]);
//! let mut node = spawn(cmd, addr, "node-0", "/readyz").await?;
//! println!("{} bytes resident", node.rss()?);
//! node.kill().await;
//! # Ok(()) }
//! ```

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use tokio::process::Command;

/// A loopback address that was free a moment ago (for a child to bind).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A server running as a child process, killed on drop: testkit's one
/// launcher.
pub use testkit::Process as Server;

/// Starts `cmd` and waits until `ready` (a path) answers HTTP 200 on
/// `addr`. The child's stdout is echoed to our stderr, as our stdout holds
/// the report.
pub async fn spawn(
    mut cmd: Command,
    addr: SocketAddr,
    name: &str,
    ready: &str,
) -> anyhow::Result<Server> {
    testkit::echo_to_stderr();
    cmd.stdin(Stdio::null());
    let what = format!("starting {name}: {cmd:?}");
    Server::spawn_http(cmd, name, addr, ready)
        .await
        .context(what)
}

/// The resident set size of a running child.
pub trait Rss {
    /// Its resident set size in bytes.
    fn rss(&self) -> anyhow::Result<u64>;
}

impl Rss for Server {
    fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.id().context("the process has exited")?)
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_kb_field(&text, "VmRSS:").context("no VmRSS line")
}

/// The CPU time a running child has used so far.
pub trait CpuTime {
    /// User plus system time of all its threads.
    fn cpu_time(&self) -> anyhow::Result<Duration>;
}

impl CpuTime for Server {
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.id().context("the process has exited")?)
    }
}

/// `utime + stime` of a process (all its threads, not its children).
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&text).context("no utime/stime in /proc/<pid>/stat")?;
    // The kernel reports these in clock ticks (USER_HZ), not jiffies.
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(hz)).unwrap_or(u64::MAX),
    ))
}

/// `utime + stime`, in clock ticks, of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`: after it come
/// `state` (field 3) … `utime` (14) and `stime` (15).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   1234 kB` field of a `/proc` file, in bytes.
pub fn parse_kb_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Raises this process's open-file soft limit to its hard limit (children
/// inherit it); returns the new soft limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub nproc: usize,
    /// `MemTotal`, bytes.
    pub mem_total_bytes: u64,
    /// The kernel release.
    pub kernel: String,
    /// The CPU model, when `/proc/cpuinfo` names it.
    pub cpu: String,
    /// The open-file soft limit after raising it.
    pub nofile: u64,
}

impl Machine {
    /// Reads `/proc`.
    pub fn probe(nofile: u64) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(String::new, |s| s.trim().to_string());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            mem_total_bytes: parse_kb_field(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            nofile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_fields() {
        let status = "Name:\tdiscovery\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_kb_field(status, "VmRSS:"), Some(12345 * 1024));
        assert_eq!(parse_kb_field(status, "VmSwap:"), None);
        assert_eq!(parse_kb_field("VmRSS: x kB", "VmRSS:"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_of(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // Fields 1–15 of a real line, with a command name that holds a
        // space and a parenthesis: utime 250, stime 17.
        let stat = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 17 0 0 20 0 9\n";
        assert_eq!(parse_cpu_ticks(stat), Some(267));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_cpu_time_grows() {
        let before = cpu_time_of(std::process::id()).unwrap();
        // Spin until the tick counter moves (a tick is 10 ms at 100 Hz).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time_of(std::process::id()).unwrap() == before
            && start.elapsed() < Duration::from_secs(5)
        {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_time_of(std::process::id()).unwrap() > before);
    }
}
