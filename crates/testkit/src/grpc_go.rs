//! A real grpc-go peer: the Greeter client and server of
//! `interop/go/greeter`, built with Debian's Go (`golang-go`) against
//! Debian's grpc-go 1.33 (`golang-google-grpc-dev`), offline, as a GOPATH
//! build. Tests call our servers with it and call it from our clients, so
//! that what crosses the wire comes from grpc-go itself rather than from
//! frames written to look like it.
//!
//! Without Go the build panics with the packages to install: a test that
//! needs a Go peer fails rather than skips. `cargo xtask test` installs
//! them when missing.
//!
//! ```no_run
//! # async fn run(addr: std::net::SocketAddr) {
//! use testkit::grpc_go::GoGreeter;
//!
//! // In an integration test: `Path::new(env!("CARGO_TARGET_TMPDIR"))`.
//! let go = GoGreeter::build(std::path::Path::new("target/tmp")).await;
//! let replies = go.call(addr, "go", 1).await;
//! assert_eq!(replies[0].message, "Hello go");
//! # }
//! ```

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustix::fs::{FlockOperation, flock};
use tokio::process::Command;

use crate::Process;

/// The Go program's package directory.
pub const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../interop/go/greeter");
/// Where Debian installs Go libraries (grpc-go among them).
pub const GOPATH: &str = "/usr/share/gocode";
/// The Debian packages the build needs.
pub const PACKAGES: &str = "golang-go golang-google-grpc-dev";
/// A cold build took 6 to 40 s on two cores shared with other builds; a
/// warm one, with Go's build cache kept in the target directory, well under
/// a second. Below the test runner's own limit (180 s), so that a stuck
/// build fails with this module's message.
const BUILD_WITHIN: Duration = Duration::from_secs(150);
/// Bounds each client run: its calls have deadlines of their own, so a
/// run that outlives this is a hang.
const CALL_WITHIN: Duration = Duration::from_secs(30);

/// The built Go program.
#[derive(Debug, Clone)]
pub struct GoGreeter {
    bin: PathBuf,
}

/// One answer the Go client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoReply {
    /// `HelloReply.message`.
    pub message: String,
    /// The server's `x-served-by` header, empty when it sent none.
    pub served_by: String,
}

impl GoGreeter {
    /// Builds the program into `<dir>/grpc-go/greeter` (Go's build cache
    /// beside it, so that later builds only check it); `dir` is a test's
    /// `CARGO_TARGET_TMPDIR`. Concurrent builds, from tests in other
    /// processes, take turns on a lock file: the second finds the first's
    /// work in the cache.
    ///
    /// # Panics
    /// When Go or grpc-go is not installed (naming the packages), when the
    /// build fails (with Go's output), or when it takes longer than 150 s.
    pub async fn build(dir: &Path) -> Self {
        let out = dir.join("grpc-go");
        std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
        let bin = out.join("greeter");
        let started = Instant::now();
        match tokio::time::timeout(BUILD_WITHIN, build_locked(&out, &bin)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("building the grpc-go greeter ({SOURCE}): {e}"),
            Err(_) => {
                panic!("building the grpc-go greeter ({SOURCE}) took longer than {BUILD_WITHIN:?}")
            }
        }
        eprintln!(
            "grpc-go greeter: {} ready in {:.1?}",
            bin.display(),
            started.elapsed()
        );
        GoGreeter { bin }
    }

    /// The executable.
    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// A client command calling the Greeter at `addr` with the authority a
    /// kratos warden client sends (`demo.service?subset=50`); more flags
    /// (`-name`, `-calls`, `-authority`, `-timeout`) may follow.
    pub fn client(&self, addr: SocketAddr) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-addr").arg(addr.to_string()).kill_on_drop(true);
        cmd
    }

    /// Calls SayHello(`name`) `calls` times on one connection and returns
    /// the answers.
    ///
    /// # Panics
    /// When a call fails (with the client's error) or the run hangs.
    pub async fn call(&self, addr: SocketAddr, name: &str, calls: usize) -> Vec<GoReply> {
        self.call_with(addr, &[], name, calls).await
    }

    /// As [`GoGreeter::call`] over TLS, verifying the server with the PEM
    /// bundle `ca` (the authority stays the warden one).
    ///
    /// # Panics
    /// As [`GoGreeter::call`].
    pub async fn call_tls(
        &self,
        addr: SocketAddr,
        ca: &Path,
        name: &str,
        calls: usize,
    ) -> Vec<GoReply> {
        let ca = ca.display().to_string();
        self.call_with(addr, &["-ca", &ca], name, calls).await
    }

    async fn call_with(
        &self,
        addr: SocketAddr,
        extra: &[&str],
        name: &str,
        calls: usize,
    ) -> Vec<GoReply> {
        let mut cmd = self.client(addr);
        cmd.args(extra)
            .args(["-name", name, "-calls", &calls.to_string()]);
        let out = tokio::time::timeout(CALL_WITHIN, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("grpc-go client → {addr}: no exit within {CALL_WITHIN:?}"))
            .expect("running the grpc-go client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "grpc-go client → {addr}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("grpc-go client printed {line:?}: {e}"));
                GoReply {
                    message: v["message"].as_str().unwrap_or_default().to_string(),
                    served_by: v["served_by"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// Starts the Go Greeter server on 127.0.0.1 (port chosen by the OS),
    /// `name` tagging its output; returns once it accepts connections. It
    /// answers `Hello <name>` and, like a kratos Go Greeter, sends no
    /// `x-served-by`.
    pub async fn serve(&self, name: &str) -> io::Result<Process> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-serve", "-listen", "127.0.0.1:0"]);
        Process::spawn_ready_file(cmd, name).await
    }
}

/// Runs `go build` once this process holds the lock in `out`.
async fn build_locked(out: &Path, bin: &Path) -> Result<(), String> {
    let lock_path = out.join("build.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    // flock blocks: off the runtime's threads. Released when `_held` drops.
    let _held = tokio::task::spawn_blocking(move || {
        flock(&lock, FlockOperation::LockExclusive).map(|()| lock)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;

    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(bin)
        .arg(".")
        .current_dir(SOURCE)
        // Debian's packaged libraries, no module download: offline.
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", out.join("cache"))
        // A static binary; the build needs no C compiler.
        .env("CGO_ENABLED", "0")
        .kill_on_drop(true);
    let output = match cmd.output().await {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "`go` is not on PATH. Install Go and grpc-go: \
                 `apt-get install -y {PACKAGES}` (`cargo xtask test` does)"
            ));
        }
        Err(e) => return Err(format!("running go build: {e}")),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hint = if stderr.contains("cannot find package") {
        format!("\ngrpc-go is not in {GOPATH}: `apt-get install -y {PACKAGES}`")
    } else {
        String::new()
    };
    Err(format!("go build: {}\n{stderr}{hint}", output.status))
}
