//! The `bench` command line and the sizes each mode runs at.
//!
//! ```
//! use clap::Parser as _;
//! use loadgen::args::{Cli, Scale};
//!
//! let cli = Cli::try_parse_from(["bench", "--quick"]).unwrap();
//! assert_eq!(Scale::of(&cli.run).instances, 100_000);
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Benchmarks the discovery server against a ceiling measured in the same
/// run; prints a table and writes JSON.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Cli {
    /// Internal helpers (the ceiling server runs as a child process).
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// Options of a benchmark run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Internal subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Serves the ceiling: a fixed JSON body of `--body-bytes` bytes.
    Ceiling {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Size of the body answered to every request.
        #[arg(long)]
        body_bytes: usize,
    },
}

/// Options of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// About a minute: shorter windows, the "1M instances" figure scaled down.
    #[arg(long)]
    pub quick: bool,
    /// Smoke test of the harness (tiny sizes, seconds): fails only when a
    /// scenario errs, never on timings.
    #[arg(long)]
    pub check: bool,
    /// Skip the 3-node cluster scenarios.
    #[arg(long)]
    pub no_cluster: bool,
    /// Only the scaling table: fetch per answer size, register and renew
    /// per registry size, poll wake-up per poller count, each against its
    /// ceiling (sizes of --quick or --check when given with them).
    #[arg(long)]
    pub scaling: bool,
    /// The `discovery` binary (default: next to this executable).
    #[arg(long)]
    pub discovery_bin: Option<PathBuf>,
    /// Directory for the JSON report.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Concurrent connections for throughput scenarios.
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
}

impl RunArgs {
    /// Whether the run includes the register … cluster scenarios: all but
    /// a `--scaling` run.
    pub fn runs_main(&self) -> bool {
        !self.scaling
    }

    /// Whether the run includes the scaling table: a full run, `--check`
    /// (so that CI proves it works) and `--scaling`; not `--quick`, whose
    /// minute it would double (`--quick --scaling` runs it alone, reduced).
    pub fn runs_scaling(&self) -> bool {
        self.scaling || self.check || !self.quick
    }
}

/// The sizes of the scaling table: how cost grows with work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    /// Instances per app of the fetch rows (one app each, one answer size).
    pub fetch_per_app: Vec<u64>,
    /// Registry sizes of the register and renew rows, ascending, multiples
    /// of 100 (the instances of one app); the last is [`Scale::big`].
    pub registry: Vec<u64>,
    /// Parked long-poller counts of the wake-up rows.
    pub pollers: Vec<usize>,
    /// Measured window of each row, short so that the whole table fits in
    /// a few minutes (a full run has 15 of them).
    pub measure: Duration,
}

/// The sizes of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    /// Mode name: `full`, `quick` or `check`.
    pub mode: &'static str,
    /// Instances registered in the register scenario.
    pub instances: u64,
    /// Apps they are spread over.
    pub apps: u64,
    /// Registry size of the large memory figure (1M in a full run).
    pub big: u64,
    /// Parked long-poller counts of the wake-up scenario.
    pub pollers: Vec<usize>,
    /// Measured window of timed scenarios.
    pub measure: Duration,
    /// Write → visible trials on the cluster.
    pub repl_trials: usize,
    /// Registers through one cluster node in the cluster throughput figure.
    pub cluster_writes: u64,
    /// The scaling table.
    pub scaling: Scaling,
}

impl Scale {
    /// The sizes for `args`.
    pub fn of(args: &RunArgs) -> Scale {
        if args.check {
            Scale {
                mode: "check",
                instances: 2_000,
                apps: 20,
                big: 4_000,
                pollers: vec![10, 100],
                measure: Duration::from_millis(500),
                repl_trials: 5,
                cluster_writes: 200,
                scaling: Scaling {
                    fetch_per_app: vec![1, 10, 100, 1_000],
                    registry: vec![100, 1_000, 4_000],
                    pollers: vec![10, 100],
                    measure: Duration::from_millis(200),
                },
            }
        } else if args.quick {
            Scale {
                mode: "quick",
                instances: 100_000,
                apps: 1_000,
                big: 250_000,
                pollers: vec![1_000, 10_000],
                measure: Duration::from_secs(3),
                repl_trials: 50,
                cluster_writes: 5_000,
                scaling: Scaling {
                    fetch_per_app: vec![1, 10, 100, 1_000],
                    registry: vec![10_000, 100_000, 250_000],
                    pollers: vec![100, 1_000, 10_000],
                    measure: Duration::from_secs(2),
                },
            }
        } else {
            Scale {
                mode: "full",
                instances: 100_000,
                apps: 1_000,
                big: 1_000_000,
                pollers: vec![1_000, 10_000],
                measure: Duration::from_secs(10),
                repl_trials: 200,
                cluster_writes: 20_000,
                scaling: Scaling {
                    fetch_per_app: vec![1, 10, 100, 1_000],
                    registry: vec![10_000, 100_000, 1_000_000],
                    pollers: vec![100, 1_000, 10_000],
                    measure: Duration::from_secs(5),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn modes() {
        let full = Scale::of(&parse(&["bench"]).run);
        assert_eq!((full.mode, full.big), ("full", 1_000_000));
        let quick = Scale::of(&parse(&["bench", "--quick"]).run);
        assert_eq!(quick.mode, "quick");
        assert!(quick.big < full.big && quick.measure < full.measure);
        // --check wins over --quick: CI runs `--quick --check`.
        let check = Scale::of(&parse(&["bench", "--quick", "--check"]).run);
        assert_eq!(check.mode, "check");
        for s in [&full, &quick, &check] {
            let sizes = &s.scaling.registry;
            assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
            assert!(sizes.iter().all(|n| n % 100 == 0), "{sizes:?}");
            assert_eq!(
                sizes.last(),
                Some(&s.big),
                "the big size follows Scale::big"
            );
        }
        assert_eq!(full.scaling.pollers, [100, 1_000, 10_000]);
    }

    #[test]
    fn which_parts_run() {
        let parts = |a: &[&str]| {
            let r = parse(a).run;
            (r.runs_main(), r.runs_scaling())
        };
        assert_eq!(parts(&["bench"]), (true, true));
        assert_eq!(parts(&["bench", "--quick"]), (true, false));
        assert_eq!(parts(&["bench", "--quick", "--check"]), (true, true));
        assert_eq!(parts(&["bench", "--check"]), (true, true));
        assert_eq!(parts(&["bench", "--scaling"]), (false, true));
        assert_eq!(parts(&["bench", "--check", "--scaling"]), (false, true));
        assert_eq!(parts(&["bench", "--quick", "--scaling"]), (false, true));
    }

    #[test]
    fn options_and_ceiling_subcommand() {
        let cli = parse(&[
            "bench",
            "--no-cluster",
            "--conns",
            "8",
            "--out",
            "/tmp/b",
            "--discovery-bin",
            "/x/discovery",
        ]);
        assert!(cli.cmd.is_none());
        assert!(cli.run.no_cluster);
        assert_eq!(cli.run.conns, 8);
        assert_eq!(cli.run.out, PathBuf::from("/tmp/b"));
        assert_eq!(cli.run.discovery_bin, Some(PathBuf::from("/x/discovery")));
        let c = parse(&[
            "bench",
            "ceiling",
            "--listen",
            "127.0.0.1:9",
            "--body-bytes",
            "100",
        ]);
        assert!(matches!(
            c.cmd,
            Some(Cmd::Ceiling {
                body_bytes: 100,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["bench", "--bogus"]).is_err());
    }
}
