//! `cargo xtask <command>`: project automation, one small binary.
//!
//! * `test`: the whole test suite (nextest when installed, then doctests);
//! * `ci`: formatting, clippy, then `test`: what `.ci/run` runs;
//! * `bench [--quick] [--check] [--no-cluster] [--scaling]`: builds the
//!   release `discovery` and `bench` binaries, then runs `bench` (flags
//!   passed through), which starts the servers as child processes, prints a
//!   table and writes `target/bench/<time>.json`; `--scaling` runs only the
//!   scaling table. The heavy code lives in `crates/loadgen`,
//!   so xtask itself stays small for `cargo xtask test`.
//! * `chaos [--seed S] [--duration SECS]`: the randomized fault schedule
//!   of the chaos suite, long or with a given seed;
//! * `up [--check] [--zones] [--tls] [--dev]`, `e2e [--no-docker] [--dev]`, `docker`: the demo
//!   topology on loopback (`--check`: one greeting, then exit; `--zones`: two
//!   zones; `--tls`: everything over TLS with a throwaway CA), its
//!   end-to-end checks (loopback, then docker compose), and the offline
//!   `FROM scratch` image of `docker-compose.yml`; see [`demo`].

mod demo;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The suite drives a real headless Chromium (the web console), cuts
/// links between network namespaces (the chaos suite), runs the README's
/// curl commands and builds a grpc-go peer (`interop/go/greeter`, against
/// Debian's grpc-go in `/usr/share/gocode`); on a fresh machine their
/// Debian packages are installed first.
fn ensure_test_tools() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !on_path("chromium") && std::env::var_os("CHROMIUM").is_none() {
        missing.extend(["chromium", "fonts-dejavu-core"]);
    }
    if !on_path("ip") {
        missing.push("iproute2");
    }
    if !on_path("iptables") {
        missing.push("iptables");
    }
    // The README test runs the README's curl commands as written.
    if !on_path("curl") {
        missing.push("curl");
    }
    // The grpc-go interop tests build offline, as a GOPATH build, against
    // the packaged grpc-go; they fail, not skip, without it.
    if !on_path("go") {
        missing.push("golang-go");
    }
    if !Path::new("/usr/share/gocode/src/google.golang.org/grpc").is_dir() {
        missing.push("golang-google-grpc-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {missing:?} for the browser, chaos, README and grpc-go tests");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(install)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    ensure_test_tools()?;
    let mut cmd = cargo();
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(extra);
    run(cmd)?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    run(doc)
}

fn ci() -> anyhow::Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;
    test(&[])
}

fn bench(extra: &[String]) -> anyhow::Result<()> {
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "discovery-server",
        "--bin",
        "discovery",
        "-p",
        "loadgen",
        "--bin",
        "bench",
    ]);
    run(build)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let release = target.join("release");
    let mut cmd = Command::new(release.join("bench"));
    cmd.current_dir(root())
        .arg("--discovery-bin")
        .arg(release.join("discovery"))
        .arg("--out")
        .arg(target.join("bench"))
        .args(extra);
    run(cmd)
}

const USAGE: &str = "usage: cargo xtask <test [nextest args…] | ci | bench [--quick] [--check] [--no-cluster] [--scaling] | fuzz [seconds] [seed] | chaos [--seed S] [--duration SECS] | up [--check] [--zones] [--tls] [--dev] | e2e [--no-docker] [--dev] | docker>";

/// The HTTP fuzz test for longer than its CI budget (default 60 s).
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let secs = args.first().map_or("60", String::as_str);
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "discovery-server",
        "--test",
        "http_fuzz",
        "--",
        "--nocapture",
    ])
    .env("FUZZ_SECS", secs);
    if let Some(seed) = args.get(1) {
        cmd.env("FUZZ_SEED", seed);
    }
    run(cmd)
}

/// `chaos [--seed S] [--duration SECS]`: the randomized fault schedule of
/// the chaos suite (three nodes in network namespaces; needs root), with a
/// chosen seed and length. A failing run prints the command that repeats it.
fn chaos(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "discovery-server",
        "--test",
        "chaos",
        "--",
        "--exact",
        "randomized_fault_schedule_converges_after_every_heal",
        "--nocapture",
    ]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = || {
            it.clone()
                .next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--seed" => {
                cmd.env("CHAOS_SEED", value()?);
                it.next();
            }
            "--duration" => {
                let secs = value()?;
                let secs = secs.trim_end_matches('s');
                secs.parse::<u64>()
                    .with_context(|| format!("--duration {secs}: seconds"))?;
                cmd.env("CHAOS_DURATION", secs);
                it.next();
            }
            other => bail!("chaos: unknown argument {other:?} (--seed S, --duration SECS)"),
        }
    }
    run(cmd)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("up") => demo::up(&args[1..]),
        Some("e2e") => demo::e2e(&args[1..]),
        Some("docker") => demo::docker(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
