//! Starts discovery topologies on loopback, with ports chosen by the OS, and
//! waits until they are ready. Used by tests, benchmarks and `cargo xtask`.
//!
//! Two flavours:
//! * [`Topology`]: nodes in this process ([`discovery_server::server`]);
//!   fast, and a node can be stopped and restarted;
//! * [`ProcessTopology`]: `discovery` binaries as child processes, for what
//!   only a real process shows (`kill -9`, signals).
//!
//! [`demo::DemoTopology`] adds demo servers and the demo client to a
//! process topology. [`go_double::GoDouble`] stands in for a node of the Go
//! original where its long-poll rules matter to an SDK.
//! [`grpc_go::GoGreeter`] is a real grpc-go Greeter client and server.
//!
//! ```no_run
//! # async fn run() {
//! use testkit::{Layout, Topology};
//!
//! // Three nodes in zone sh001, registry timings shortened for tests.
//! let topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(testkit::FAST)).await;
//! topo.wait_ready().await;
//! println!("node 0 at {}", topo.addr(0));
//! topo.shutdown().await;
//! # }
//! ```

pub mod demo;
pub mod go_double;
pub mod grpc_go;
pub mod signal;
pub mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use discovery_server::{
    config::Config,
    server::{self, ServerHandle},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
};

/// Registry and cluster timings for tests: a 90 s lease in 3 s.
pub const FAST: &str = r#"
[registry]
lease = "3s"
evict_interval = "1s"
renew_interval = "500ms"
poll_hold = "5s"
[cluster]
sync_timeout = "3s"
retry_initial = "50ms"
retry_max = "500ms"
probe_interval = "500ms"
anti_entropy_interval = "250ms"
ack_timeout = "1s"
drain_timeout = "2s"
"#;

/// Which nodes a topology has: zones and node counts, plus extra TOML.
#[derive(Debug, Clone)]
pub struct Layout {
    zones: Vec<(String, usize)>,
    toml: String,
    /// Replaces `toml` for one node (a skewed clock, a different limit).
    node_toml: std::collections::BTreeMap<usize, String>,
    env: String,
}

impl Layout {
    /// `zones` = `[("sh001", 3), ("sh002", 2)]`.
    pub fn zones(zones: &[(&str, usize)]) -> Self {
        Layout {
            zones: zones.iter().map(|(z, n)| (z.to_string(), *n)).collect(),
            toml: String::new(),
            node_toml: std::collections::BTreeMap::new(),
            env: "dev".into(),
        }
    }

    /// Extra TOML for node `i` only, used instead of [`Layout::toml`]'s.
    pub fn node_toml(mut self, i: usize, toml: &str) -> Self {
        self.node_toml.insert(i, toml.to_string());
        self
    }

    /// Extra TOML appended to every node's config (tables only).
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self
    }

    fn count(&self) -> usize {
        self.zones.iter().map(|(_, n)| n).sum()
    }

    /// (zone, index within the topology) of every node.
    fn nodes(&self) -> Vec<String> {
        self.zones
            .iter()
            .flat_map(|(z, n)| std::iter::repeat_n(z.clone(), *n))
            .collect()
    }

    /// The config text of node `i`, given every node's address.
    pub fn config_text(&self, i: usize, addrs: &[SocketAddr]) -> String {
        let zones = self.nodes();
        let my_zone = &zones[i];
        let list = |zone: &str| {
            let v: Vec<String> = zones
                .iter()
                .zip(addrs)
                .filter(|(z, _)| z.as_str() == zone)
                .map(|(_, a)| format!("\"{a}\""))
                .collect();
            v.join(", ")
        };
        let mut text = format!("nodes = [{}]\n", list(my_zone));
        text.push_str("[zones]\n");
        for (zone, _) in &self.zones {
            if zone != my_zone {
                text.push_str(&format!("\"{zone}\" = [{}]\n", list(zone)));
            }
        }
        text.push_str(&format!(
            "[env]\nregion = \"region01\"\nzone = \"{my_zone}\"\nhost = \"node-{i}\"\nDeployEnv = \"{}\"\n[httpServer]\naddr = \"{}\"\ntimeout = \"40s\"\n",
            self.env, addrs[i]
        ));
        text.push_str(self.node_toml.get(&i).unwrap_or(&self.toml));
        text
    }
}

/// Reserves `n` loopback ports (for child processes, which bind themselves).
async fn reserve(n: usize) -> Vec<SocketAddr> {
    let mut v = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        v.push(l.local_addr().expect("bound"));
        keep.push(l);
    }
    v
}

/// A topology of in-process nodes.
#[derive(Debug)]
pub struct Topology {
    layout: Layout,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Option<ServerHandle>>,
}

impl Topology {
    /// Binds every listener, then starts every node at once.
    pub async fn start(layout: &Layout) -> Self {
        let mut listeners = Vec::new();
        for _ in 0..layout.count() {
            listeners.push(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind loopback"),
            );
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        let starts = listeners.into_iter().enumerate().map(|(i, l)| {
            let cfg = Config::parse(&layout.config_text(i, &addrs))
                .expect("valid config")
                .0;
            async move { server::start_on(cfg, l).await.expect("node starts") }
        });
        let nodes = futures_join_all(starts)
            .await
            .into_iter()
            .map(Some)
            .collect();
        Topology {
            layout: layout.clone(),
            addrs,
            nodes,
        }
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Node `i`'s base URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the topology has no node.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Node `i`, if running.
    pub fn node(&self, i: usize) -> &ServerHandle {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Waits until every running node serves reads.
    pub async fn wait_ready(&self) {
        for n in self.nodes.iter().flatten() {
            tokio::time::timeout(Duration::from_secs(30), n.wait_ready())
                .await
                .expect("node ready within 30 s");
        }
    }

    /// Graceful stop of node `i`.
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Starts node `i` again on its address with an empty registry.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let cfg = Config::parse(&self.layout.config_text(i, &self.addrs))
            .expect("valid config")
            .0;
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addrs[i]).await {
                Ok(l) => {
                    self.nodes[i] = Some(server::start_on(cfg, l).await.expect("node starts"));
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addrs[i]);
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Path of the `discovery` binary next to the running executable, or
/// `$DISCOVERY_BIN`.
pub fn discovery_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DISCOVERY_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("discovery")
}

/// The directory holding the workspace's binaries for the running
/// executable: `target/<profile>` for a test (`target/<profile>/deps/<test>`)
/// as for a binary (`target/<profile>/<bin>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of the workspace binary `name` in [`bin_dir`]; panics with the
/// command to build it when missing.
pub fn sibling_bin(name: &str) -> PathBuf {
    let bin = bin_dir().join(name);
    assert!(
        bin.exists(),
        "{} not built; run `cargo build --bin {name}`",
        bin.display()
    );
    bin
}

/// Whether children get a process group of their own; see
/// [`own_process_groups`].
static OWN_GROUPS: AtomicBool = AtomicBool::new(false);

/// From now on, children started by this process get a process group of
/// their own. A terminal's Ctrl-C then reaches only the supervisor, which
/// stops them in order (clients before servers before nodes) instead of
/// every process stopping at once. Off by default: a test runner that
/// signals a test's process group then reaches its children too.
pub fn own_process_groups() {
    OWN_GROUPS.store(true, Ordering::Relaxed);
}

/// Whether children's stdout is echoed to our stderr; see
/// [`echo_to_stderr`].
static ECHO_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// From now on, the stdout of children started by this process is echoed
/// to our stderr instead of our stdout, for a tool whose own stdout is its
/// result (the `bench` report).
pub fn echo_to_stderr() {
    ECHO_TO_STDERR.store(true, Ordering::Relaxed);
}

/// Distinguishes the ready files of one process's children.
static READY_FILES: AtomicU64 = AtomicU64::new(0);

/// How long a child may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A child process (`discovery`, `demo-server`, `demo-client`, …).
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Process {
    /// Starts the `discovery` binary with `config` text, which makes it
    /// listen on `addr`; waits until its `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        config: &str,
        addr: SocketAddr,
        dir: &Path,
        name: &str,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(&conf, config)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-conf").arg(&conf).env("RUST_LOG", child_log());
        Process::spawn_http(cmd, name, addr, "/readyz").await
    }

    /// Spawns `cmd`, a server that listens on `addr`, and waits until
    /// `GET http://<addr><path>` answers 200 (`/healthz`: listening;
    /// `/readyz`: serving reads).
    pub async fn spawn_http(
        cmd: Command,
        name: &str,
        addr: SocketAddr,
        path: &str,
    ) -> std::io::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(std::io::Error::other)?;
        Process::spawn_url(cmd, name, addr, &format!("http://{addr}{path}"), http).await
    }

    /// Spawns `cmd`, a server that listens on `addr`, and waits until
    /// `GET url` with `http` (an HTTPS client with the right CA and
    /// certificate, for a node with `[tls]`) answers 200.
    pub async fn spawn_url(
        cmd: Command,
        name: &str,
        addr: SocketAddr,
        url: &str,
        http: reqwest::Client,
    ) -> std::io::Result<Self> {
        let mut child = spawn_echoing(cmd, name)?;
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "{name} exited with {status} before {url} answered 200"
                )));
            }
            if http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(Process { child, addr });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{url} did not answer 200 within {READY_WITHIN:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spawns `cmd` with `--ready-file <path>` appended (as `demo-server`
    /// and `demo-client` take it) and waits until the child has written its
    /// bound address there.
    pub async fn spawn_ready_file(mut cmd: Command, name: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "testkit-{}-{}-{name}.addr",
            std::process::id(),
            READY_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        cmd.arg("--ready-file").arg(&path);
        let mut child = spawn_echoing(cmd, name)?;
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            // The child writes a temporary file and renames it: a file
            // that exists is complete.
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let _ = std::fs::remove_file(&path);
                    let addr = text.trim().parse().map_err(|e| {
                        std::io::Error::other(format!("{name} ready file {text:?}: {e}"))
                    })?;
                    return Ok(Process { child, addr });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "{name} exited with {status} before writing its ready file"
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{name} wrote no ready file within {READY_WITHIN:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The OS process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (a `kill -s` name: `TERM`, `INT`, `KILL`; see
    /// [`signal::send`]) without waiting; nothing once it has exited.
    pub async fn signal(&self, signal: &str) -> std::io::Result<()> {
        match self.child.id() {
            Some(pid) => signal::send(pid, signal),
            None => Ok(()),
        }
    }

    /// Waits for the exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        self.child.wait().await
    }

    /// Sends SIGTERM and waits up to `within` for the exit; past it, `kill
    /// -9` and waits again. Either way the child is reaped before this
    /// returns, so that a supervisor that exits next leaves no process
    /// behind (dropping a [`Process`] only sends SIGKILL). Returns the exit
    /// status and whether it took the SIGKILL.
    pub async fn stop(
        &mut self,
        within: Duration,
    ) -> std::io::Result<(std::process::ExitStatus, bool)> {
        self.signal("TERM").await?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok((status?, false)),
            Err(_) => {
                // `Child::kill` sends SIGKILL, then waits.
                self.child.kill().await?;
                Ok((self.child.wait().await?, true))
            }
        }
    }
}

/// The log filter of children: `$TESTKIT_LOG`, default `info`. Readiness
/// never depends on it.
pub(crate) fn child_log() -> String {
    std::env::var("TESTKIT_LOG").unwrap_or_else(|_| "info".into())
}

/// Spawns `cmd` (stdout piped and echoed with a `[name]` prefix, so that
/// test output shows what happened, to our stderr after [`echo_to_stderr`];
/// stderr inherited; killed on drop).
fn spawn_echoing(mut cmd: Command, name: &str) -> std::io::Result<Child> {
    if OWN_GROUPS.load(Ordering::Relaxed) {
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let tag = name.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if ECHO_TO_STDERR.load(Ordering::Relaxed) {
                eprintln!("[{tag}] {line}");
            } else {
                println!("[{tag}] {line}");
            }
        }
    });
    Ok(child)
}

/// A topology of `discovery` child processes.
#[derive(Debug)]
pub struct ProcessTopology {
    layout: Layout,
    addrs: Vec<SocketAddr>,
    dir: PathBuf,
    bin: PathBuf,
    /// Set when the nodes serve HTTPS with certificates of this authority.
    tls: Option<std::sync::Arc<tls::TestCa>>,
    /// The client for readiness checks: an HTTPS one with a certificate
    /// of `tls` when it is set.
    http: reqwest::Client,
    /// The processes; `None` when stopped.
    pub nodes: Vec<Option<Process>>,
}

impl ProcessTopology {
    /// Starts every node at once ([`discovery_bin`]); returns once each
    /// answers `/readyz` with 200.
    pub async fn start(layout: &Layout) -> std::io::Result<Self> {
        Self::start_with(layout, discovery_bin()).await
    }

    /// Starts every node at once, running `bin`.
    pub async fn start_with(layout: &Layout, bin: PathBuf) -> std::io::Result<Self> {
        Self::start_tls(layout, bin, None).await
    }

    /// Starts every node at once, running `bin`; with `ca`, every node
    /// serves HTTPS with a certificate of it (`client_auth = "required"`)
    /// and calls its peers over HTTPS.
    pub async fn start_tls(
        layout: &Layout,
        bin: PathBuf,
        ca: Option<std::sync::Arc<tls::TestCa>>,
    ) -> std::io::Result<Self> {
        let addrs = reserve(layout.count()).await;
        let http = match &ca {
            Some(ca) => ca.client("topology-probe"),
            None => reqwest::Client::new(),
        };
        let dir = std::env::temp_dir().join(format!(
            "testkit-{}-{}",
            std::process::id(),
            addrs[0].port()
        ));
        let mut topo = ProcessTopology {
            layout: layout.clone(),
            addrs,
            dir,
            bin,
            tls: ca,
            http,
            nodes: Vec::new(),
        };
        let starts: Vec<_> = (0..topo.addrs.len()).map(|i| topo.spawn_node(i)).collect();
        for s in starts {
            topo.nodes.push(Some(s.await.expect("task")?));
        }
        Ok(topo)
    }

    /// Reserves every node's address and starts none: start them with
    /// [`ProcessTopology::start_node`], one after another, as an
    /// orchestrator (a StatefulSet) would.
    pub async fn prepare(layout: &Layout) -> Self {
        let addrs = reserve(layout.count()).await;
        let dir = std::env::temp_dir().join(format!(
            "testkit-{}-{}",
            std::process::id(),
            addrs[0].port()
        ));
        ProcessTopology {
            layout: layout.clone(),
            nodes: addrs.iter().map(|_| None).collect(),
            addrs,
            dir,
            bin: discovery_bin(),
            tls: None,
            http: reqwest::Client::new(),
        }
    }

    /// Starts node `i` (not running).
    pub async fn start_node(&mut self, i: usize) -> std::io::Result<()> {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        self.restart(i).await
    }

    /// Whether node `i` answers `GET /discovery/nodes` with code 0, the
    /// readiness check operators use.
    pub async fn is_ready(&self, i: usize) -> bool {
        let url = format!("{}/discovery/nodes", self.url(i));
        let Ok(r) = self.http.get(&url).send().await else {
            return false;
        };
        r.json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v["code"] == 0)
    }

    /// Waits until node `i` [is ready](ProcessTopology::is_ready), at most
    /// `limit`; returns whether it became ready.
    pub async fn wait_node_ready(&self, i: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.is_ready(i).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn spawn_node(&self, i: usize) -> tokio::task::JoinHandle<std::io::Result<Process>> {
        let mut text = self.layout.config_text(i, &self.addrs);
        let (bin, dir, addr) = (self.bin.clone(), self.dir.clone(), self.addrs[i]);
        let Some(ca) = &self.tls else {
            return tokio::spawn(async move {
                Process::start(&bin, &text, addr, &dir, &format!("node-{i}")).await
            });
        };
        let id = ca.issue(&format!("node-{i}"), &["127.0.0.1", "localhost"]);
        text.push_str(&format!(
            "\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nclient_auth = \"required\"\n",
            id.cert,
            id.key,
            ca.ca_path()
        ));
        let (url, http) = (format!("{}/readyz", self.url(i)), self.http.clone());
        tokio::spawn(async move {
            let name = format!("node-{i}");
            std::fs::create_dir_all(&dir)?;
            let conf = dir.join(format!("{name}.toml"));
            std::fs::write(&conf, text)?;
            let mut cmd = Command::new(bin);
            cmd.arg("-conf").arg(&conf).env("RUST_LOG", child_log());
            Process::spawn_url(cmd, &name, addr, &url, http).await
        })
    }

    /// The authority of a topology with TLS.
    pub fn tls(&self) -> Option<&tls::TestCa> {
        self.tls.as_deref()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Node `i`'s base URL (`https://` with TLS).
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addrs[i])
    }

    /// Every node's address (running or not).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `kill -9` node `i`.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill().await;
        }
    }

    /// Starts node `i` again.
    pub async fn restart(&mut self, i: usize) -> std::io::Result<()> {
        let p = self.spawn_node(i).await.expect("task")?;
        self.nodes[i] = Some(p);
        Ok(())
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        let http = self.http.clone();
        for (i, _) in self.nodes.iter().enumerate().filter(|(_, n)| n.is_some()) {
            let url = format!("{}/readyz", self.url(i));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "node {i} not ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for ProcessTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 5 ms until it holds, and returns how long that took.
///
/// # Panics
/// When `cond` still does not hold after `within`, with `what` (what was
/// awaited) in the message.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Small HTTP helpers for talking to a node in tests.
pub mod http {
    use serde_json::Value;

    /// POSTs a url-encoded form and decodes the JSON answer.
    ///
    /// # Panics
    /// When the node does not answer with JSON.
    pub async fn post_form(base: &str, path: &str, form: &str) -> Value {
        send_json(
            reqwest::Client::new()
                .post(format!("{base}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.to_string()),
        )
        .await
    }

    /// Sends `req` (a request with headers of its own) and decodes the JSON
    /// answer.
    ///
    /// # Panics
    /// When the node does not answer with JSON.
    pub async fn send_json(req: reqwest::RequestBuilder) -> Value {
        req.send()
            .await
            .expect("node answers")
            .json()
            .await
            .expect("JSON answer")
    }

    /// GETs and decodes the JSON answer.
    ///
    /// # Panics
    /// When the node does not answer with JSON.
    pub async fn get_json(base: &str, path: &str) -> Value {
        reqwest::get(format!("{base}{path}"))
            .await
            .expect("node answers")
            .json()
            .await
            .expect("JSON answer")
    }

    /// GETs and decodes the JSON answer; `None` while the node is down or
    /// answers something else (for tests that wait through restarts).
    pub async fn try_get_json(base: &str, path: &str) -> Option<Value> {
        reqwest::get(format!("{base}{path}"))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// GETs and returns the body as text.
    ///
    /// # Panics
    /// When the node does not answer.
    pub async fn get_text(base: &str, path: &str) -> String {
        reqwest::get(format!("{base}{path}"))
            .await
            .expect("node answers")
            .text()
            .await
            .expect("text answer")
    }

    /// The value of the sample `name` in Prometheus text: `name` is the
    /// metric name with its labels as written (`x_total{a="b"}`).
    ///
    /// # Panics
    /// When `text` has no such sample.
    pub fn metric(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// The value of the sample `name` in the node's `/metrics`; see
    /// [`metric`].
    pub async fn get_metric(base: &str, name: &str) -> f64 {
        metric(&get_text(base, "/metrics").await, name)
    }
}
