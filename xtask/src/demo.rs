//! The demo commands: `up`, `e2e` and `docker`.
//!
//! The topology code lives in `testkit::demo`, driven by the
//! `demo-topology` binary; this module only builds and launches.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, root, run};

/// The image `docker-compose.yml` runs.
const IMAGE: &str = "discovery-demo:latest";

/// The binaries of the demo, with their packages.
const BINS: &[(&str, &str)] = &[
    ("discovery-server", "discovery"),
    ("demo-server", "demo-server"),
    ("demo-client", "demo-client"),
];

/// Whether to use the dev profile (`--dev`): CI runs e2e on the binaries its
/// test run already built, instead of compiling everything again in release.
fn dev_profile() -> bool {
    DEV.load(std::sync::atomic::Ordering::Relaxed)
}

static DEV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn set_dev_profile() {
    DEV.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join(if dev_profile() { "debug" } else { "release" })
}

/// Builds the demo binaries (and the topology runner) once, release profile
/// (dev with `--dev`).
fn build(with_runner: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if !dev_profile() {
        cmd.arg("--release");
    }
    for (package, bin) in BINS {
        cmd.args(["-p", package, "--bin", bin]);
    }
    if with_runner {
        cmd.args(["-p", "demo-topology", "--bin", "demo-topology"]);
    }
    run(cmd)
}

fn runner(args: &[&str]) -> Command {
    let mut cmd = Command::new(release_dir().join("demo-topology"));
    cmd.current_dir(root()).args(args);
    cmd
}

/// `cargo xtask up [--check] [--zones] [--tls] [--dev]`: the topology on
/// loopback until Ctrl-C or SIGTERM; `--check` stops after one greeting
/// through the client; `--zones` starts two zones; `--tls` runs everything
/// over TLS with a throwaway CA.
pub(crate) fn up(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--dev") {
        set_dev_profile();
    }
    build(true)?;
    let mut cmd = runner(&["up"]);
    if args.iter().any(|a| a == "--check") {
        cmd.arg("--check");
    }
    if args.iter().any(|a| a == "--zones") {
        cmd.arg("--zones");
    }
    if args.iter().any(|a| a == "--tls") {
        cmd.arg("--tls");
    }
    // The nodes' info logs would drown the addresses; demo logs stay. The
    // children's readiness does not depend on their logs, so any level works.
    if std::env::var_os("TESTKIT_LOG").is_none() {
        cmd.env("TESTKIT_LOG", "warn,demo_client=info,demo_server=info");
    }
    eprintln!("xtask: running {cmd:?}");
    // `cargo run` execs xtask, and xtask execs the runner: the process the
    // user started is the runner itself, so that its SIGTERM reaches the
    // code that stops the children.
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    Err(err).context("starting demo-topology")
}

/// `cargo xtask e2e [--no-docker]`: loopback checks, then the docker ones.
pub(crate) fn e2e(args: &[String]) -> anyhow::Result<()> {
    let docker_too = !args.iter().any(|a| a == "--no-docker");
    if args.iter().any(|a| a == "--dev") {
        set_dev_profile();
    }
    build(true)?;
    run(runner(&["e2e"]))?;
    if docker_too {
        image()?;
        run(runner(&["docker-e2e", "--file", "docker-compose.yml"]))?;
    } else {
        eprintln!("xtask: --no-docker: the docker compose checks were not run");
    }
    Ok(())
}

/// `cargo xtask docker`: builds the image offline.
pub(crate) fn docker() -> anyhow::Result<()> {
    build(false)?;
    image()?;
    eprintln!("xtask: built {IMAGE}; now `docker compose up` (or `docker-compose up`)");
    Ok(())
}

/// Assembles `target/docker/rootfs` (the binaries, the shared libraries
/// `ldd` lists, configs and a minimal /etc) and builds `FROM scratch`, so
/// that no base image is pulled.
fn image() -> anyhow::Result<()> {
    let ctx = release_dir().parent().context("target dir")?.join("docker");
    if ctx.exists() {
        fs::remove_dir_all(&ctx).with_context(|| format!("cleaning {}", ctx.display()))?;
    }
    let rootfs = ctx.join("rootfs");
    let bin_dir = rootfs.join("usr/local/bin");
    fs::create_dir_all(&bin_dir)?;
    let mut libs: Vec<PathBuf> = Vec::new();
    for (_, bin) in BINS {
        let src = release_dir().join(bin);
        let dest = bin_dir.join(bin);
        fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
        if dev_profile() {
            // Debug info would make a dev image several times larger.
            let _ = Command::new("strip")
                .arg("--strip-debug")
                .arg(&dest)
                .status();
        }
        for lib in shared_libs(&src)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        // Copied to the path the binary asks for; `fs::copy` follows the
        // host's symlinks, so the image holds plain files.
        let dest = rootfs.join(lib.strip_prefix("/").unwrap_or(lib));
        fs::create_dir_all(dest.parent().context("lib dir")?)?;
        fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    let etc = rootfs.join("etc");
    fs::create_dir_all(etc.join("discovery"))?;
    fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n")?;
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
    )?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    for entry in fs::read_dir(root().join("configs/docker"))? {
        let entry = entry?;
        fs::copy(entry.path(), etc.join("discovery").join(entry.file_name()))?;
    }
    let tmp = rootfs.join("tmp");
    fs::create_dir_all(&tmp)?;
    set_mode(&tmp, 0o1777)?;
    fs::write(
        ctx.join("Dockerfile"),
        "# Generated by `cargo xtask docker`: no base image, nothing pulled.\n\
         FROM scratch\n\
         COPY rootfs/ /\n\
         ENV PATH=/usr/local/bin\n\
         USER 65534:65534\n\
         CMD [\"/usr/local/bin/discovery\"]\n",
    )?;
    eprintln!(
        "xtask: image rootfs: {} binaries, {} shared libraries",
        BINS.len(),
        libs.len()
    );
    let mut build = Command::new("docker");
    build.args(["build", "--pull=false", "-t", IMAGE]).arg(&ctx);
    run(build)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `bin`.
fn shared_libs(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (needed to assemble the image)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary needs nothing.
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {text}", bin.display());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", bin.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}
