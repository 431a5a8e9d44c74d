//! `cargo xtask <command>`: project automation, one small binary.
//!
//! * `test`: the whole test suite (nextest when installed, then doctests);
//! * `ci`: formatting, clippy, `test`, then the chaos tests under plain
//!   `cargo test`: what `.ci/run` runs;
//! * `bench [--quick] [--check] [--no-cluster] [--scaling]`: builds the
//!   release `discovery` and `bench` binaries, then runs `bench` (flags
//!   passed through), which starts the servers as child processes, prints a
//!   table and writes `target/bench/<time>.json`; `--scaling` runs only the
//!   scaling table. The heavy code lives in `crates/loadgen`,
//!   so xtask itself stays small for `cargo xtask test`.
//! * `fuzz [http [SECONDS] [SEED] | shim [--cases N] [--seed S]]`: the HTTP
//!   fuzz test for longer than CI runs it, and a million cases of the gRPC
//!   interop shim's fuzzer (both without arguments);
//! * `chaos [--seed S|commit] [--seeds N] [--duration SECS]`: randomized
//!   fault schedules of the chaos suite, N in a row, each with its heal
//!   distribution; a failure prints the command that repeats it;
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
    test(&[])?;
    // The chaos tests again under plain `cargo test` (as `.ci/run`).
    let mut chaos = cargo();
    chaos.args(["test", "-p", "discovery-server", "--test", "chaos"]);
    run(chaos)
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

const USAGE: &str = "usage: cargo xtask <test [nextest args…] | ci | bench [--quick] [--check] [--no-cluster] [--scaling] | fuzz [http [seconds] [seed] | shim [--cases N] [--seed S] [--start I]] | chaos [--seed S|commit] [--seeds N] [--duration SECS] | up [--check] [--zones] [--tls] [--dev] | e2e [--no-docker] [--dev] | docker>";

/// `fuzz [http [SECONDS] [SEED] | shim [--cases N] [--seed S] [--start I]]`:
/// the HTTP fuzz test for longer than its CI budget (default 60 s), and
/// the gRPC interop shim's fuzzer over a million cases (the
/// `interop_fuzz` example of discovery-tonic, in release); both without
/// arguments. A failing shim case prints the command that replays it.
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        None => {
            fuzz_http(&[])?;
            fuzz_shim(&[])
        }
        Some("http") => fuzz_http(&args[1..]),
        Some("shim") => fuzz_shim(&args[1..]),
        // `fuzz SECONDS [SEED]`, as before the shim's fuzzer.
        Some(secs) if secs.parse::<u64>().is_ok() => fuzz_http(args),
        Some(other) => bail!("fuzz: unknown target {other:?} (http, shim)"),
    }
}

fn fuzz_http(args: &[String]) -> anyhow::Result<()> {
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

fn fuzz_shim(args: &[String]) -> anyhow::Result<()> {
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if ["--cases", "--seed", "--start"].contains(&flag.as_str()) => {
                value
                    .parse::<u64>()
                    .with_context(|| format!("{flag} {value}: a number"))?;
            }
            _ => bail!("fuzz shim: arguments are --cases N, --seed S, --start I"),
        }
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "discovery-tonic",
        "--example",
        "interop_fuzz",
        "--",
    ])
    .args(args);
    run(cmd)
}

/// `chaos [--seed S | --seed commit] [--seeds N] [--duration SECS]`: the
/// randomized fault schedule of the chaos suite (three nodes in network
/// namespaces; needs root), N schedules in a row (default 1), each printed
/// with its heal distribution, then all of them together. Seeds: `S` for
/// the first and derived from it for the others; `commit`, the hash of the
/// checked-out commit (what the test takes when no seed is given); random
/// otherwise. A failing schedule prints the command that runs it again.
fn chaos(args: &[String]) -> anyhow::Result<()> {
    let mut base: Option<u64> = None;
    let mut count = 1usize;
    let mut duration = 40u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{a} needs a value"))?
            .as_str();
        match a.as_str() {
            "--seed" if value == "commit" => {
                let (seed, head) = commit_seed()?;
                eprintln!("xtask: seed {seed} from commit {head}");
                base = Some(seed);
            }
            "--seed" => {
                base =
                    Some(value.parse().with_context(|| {
                        format!("--seed {value}: an unsigned integer or `commit`")
                    })?);
            }
            "--seeds" => {
                count = value
                    .parse()
                    .with_context(|| format!("--seeds {value}: a count"))?;
            }
            "--duration" => {
                let secs = value.trim_end_matches('s');
                duration = secs
                    .parse()
                    .with_context(|| format!("--duration {value}: seconds"))?;
            }
            other => bail!(
                "chaos: unknown argument {other:?} (--seed S|commit, --seeds N, --duration SECS)"
            ),
        }
    }
    let base = base.unwrap_or_else(random_seed);
    // The first seed is the one given, so that `--seed S` alone repeats a
    // schedule; each next one is derived from the one before.
    let seeds: Vec<u64> = std::iter::successors(Some(base), |s| Some(splitmix64(*s)))
        .take(count)
        .collect();

    let mut build = cargo();
    build.args([
        "test",
        "-p",
        "discovery-server",
        "--test",
        "chaos",
        "--no-run",
    ]);
    run(build)?;
    let mut runs = Vec::new();
    for (k, seed) in seeds.iter().enumerate() {
        eprintln!(
            "xtask: chaos schedule {}/{count}, seed {seed}, {duration} s",
            k + 1
        );
        let summary = chaos_once(*seed, duration)?;
        match &summary {
            Some(s) => eprintln!("xtask: {}", s.line(*seed)),
            None => eprintln!(
                "xtask: seed {seed} FAILED; reproduce with: {}",
                repro(*seed, duration)
            ),
        }
        runs.push((*seed, summary));
    }

    eprintln!("\nxtask: {} chaos schedules of {duration} s:", runs.len());
    let mut all = Vec::new();
    let (mut faults, mut heals) = (0, 0);
    for (seed, summary) in &runs {
        match summary {
            Some(s) => {
                eprintln!("  {}", s.line(*seed));
                all.extend(&s.times_ms);
                faults += s.faults;
                heals += s.heals;
            }
            None => eprintln!(
                "  seed {seed}: FAILED; reproduce with: {}",
                repro(*seed, duration)
            ),
        }
    }
    all.sort_unstable();
    let failed: Vec<u64> = runs
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(seed, _)| *seed)
        .collect();
    eprintln!(
        "  all: {} schedules, {} failed; {faults} faults, {heals} heals; heal→converged p50 {} ms, p99 {} ms, max {} ms",
        runs.len(),
        failed.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0),
    );
    if !failed.is_empty() {
        bail!(
            "{} of {} chaos schedules failed; reproduce with:\n{}",
            failed.len(),
            runs.len(),
            failed
                .iter()
                .map(|s| format!("  {}", repro(*s, duration)))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

fn repro(seed: u64, duration: u64) -> String {
    format!("cargo xtask chaos --seed {seed} --duration {duration}")
}

/// What one schedule printed on its `CHAOS summary` line.
struct ChaosSummary {
    faults: usize,
    heals: usize,
    /// Faults by kind, as printed (`kill=3 pause=1 …`).
    kinds: String,
    times_ms: Vec<u64>,
}

impl ChaosSummary {
    /// `key=value` pairs of the line; `None` when a count is missing.
    fn parse(line: &str) -> Option<Self> {
        let fields: std::collections::BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let kinds = ["kill", "pause", "isolate", "rolling", "skew"]
            .iter()
            .filter_map(|k| Some(format!("{k}={}", fields.get(k)?)))
            .collect::<Vec<_>>()
            .join(" ");
        Some(ChaosSummary {
            faults: fields.get("faults")?.parse().ok()?,
            heals: fields.get("heals")?.parse().ok()?,
            kinds,
            times_ms: fields
                .get("times_ms")
                .map(|t| t.split(',').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default(),
        })
    }

    fn line(&self, seed: u64) -> String {
        let mut sorted = self.times_ms.clone();
        sorted.sort_unstable();
        format!(
            "seed {seed}: {} faults ({}), {} heals; heal→converged p50 {} ms, p99 {} ms, max {} ms",
            self.faults,
            self.kinds,
            self.heals,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or(0)
        )
    }
}

/// Nearest-rank percentile of sorted values, as the chaos test computes it.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs one schedule, its output passed through; its summary when it
/// passed.
fn chaos_once(seed: u64, duration: u64) -> anyhow::Result<Option<ChaosSummary>> {
    use std::io::BufRead as _;
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
    ])
    .env("CHAOS_SEED", seed.to_string())
    .env("CHAOS_DURATION", duration.to_string())
    .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let mut summary = None;
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("CHAOS summary ") {
            summary = ChaosSummary::parse(rest);
        }
    }
    let status = child.wait()?;
    Ok(if status.success() { summary } else { None })
}

/// A stable 64-bit hash (FNV-1a), the one the chaos test applies to the
/// commit: the same commit, the same schedule.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seed of the checked-out commit, and the commit.
fn commit_seed() -> anyhow::Result<(u64, String)> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .context("running git rev-parse HEAD")?;
    if !out.status.success() {
        bail!(
            "git rev-parse HEAD: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((fnv1a(head.as_bytes()), head))
}

/// A seed nobody chose: std's randomly keyed hasher over the clock.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// SplitMix64's step: well-spread seeds from one another.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
