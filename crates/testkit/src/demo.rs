//! The demo topology as child processes: `discovery` nodes, `demo-server`s
//! and one `demo-client`, all on loopback with OS-chosen ports. Used by
//! `cargo xtask up` and `cargo xtask e2e` (through the `demo-topology`
//! binary) and by tests.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use testkit::demo::{DemoBins, DemoTopology};
//!
//! let mut topo = DemoTopology::start(DemoBins::sibling(), 3, 2).await?;
//! let (status, body) = topo.say_hello("kratos").await.expect("HTTP");
//! println!("{status} {body}");
//! topo.kill_server(0).await; // kill -9 demo-server-1
//! topo.shutdown().await;
//! # Ok(()) }
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitStatus, sync::Arc, time::Duration};

use naming::env;
use tokio::process::Command;

use crate::{Layout, Process, ProcessTopology, sibling_bin, tls::TestCa};

/// Where the three binaries are.
#[derive(Debug, Clone)]
pub struct DemoBins {
    /// The registry, `discovery`.
    pub discovery: PathBuf,
    /// `demo-server`.
    pub demo_server: PathBuf,
    /// `demo-client`.
    pub demo_client: PathBuf,
}

impl DemoBins {
    /// The binaries next to the running executable (see [`crate::bin_dir`]).
    pub fn sibling() -> Self {
        DemoBins {
            discovery: crate::discovery_bin(),
            demo_server: sibling_bin("demo-server"),
            demo_client: sibling_bin("demo-client"),
        }
    }
}

/// A running demo: a discovery cluster, demo servers and a demo client.
#[derive(Debug)]
pub struct DemoTopology {
    bins: DemoBins,
    /// The discovery nodes.
    pub cluster: ProcessTopology,
    /// Demo servers by index; server `i` has hostname `demo-server-{i+1}`.
    /// `None` once killed or stopped.
    pub servers: Vec<Option<Process>>,
    /// The demo client.
    pub client: Process,
    /// More demo clients (see [`DemoTopology::add_client`]).
    pub clients: Vec<Process>,
    /// The zone of each server, when they were started in one.
    pub server_zones: Vec<Option<String>>,
    /// The throwaway authority of a topology started with TLS.
    tls: Option<Arc<TestCa>>,
    http: reqwest::Client,
}

impl DemoTopology {
    /// Starts `nodes` discovery nodes (zone `zone01`, env `dev`, default
    /// registry timings), waits until they serve reads, then `servers`
    /// demo servers and the demo client.
    pub async fn start(bins: DemoBins, nodes: usize, servers: usize) -> std::io::Result<Self> {
        Self::start_in(bins, nodes, servers, None).await
    }

    /// Like [`DemoTopology::start`], with the client (and the servers
    /// started here) in `zone` (the SDK's `ZONE`) when given; more servers,
    /// in any zone, come from [`DemoTopology::add_server_in`].
    pub async fn start_in(
        bins: DemoBins,
        nodes: usize,
        servers: usize,
        zone: Option<&str>,
    ) -> std::io::Result<Self> {
        Self::start_with_tls(bins, nodes, servers, zone, None).await
    }

    /// Like [`DemoTopology::start`], all over TLS with a throwaway
    /// authority: the nodes serve HTTPS with `client_auth = "required"`,
    /// the SDKs use `https://` nodes with `DISCOVERY_CA/CERT/KEY`, the demo
    /// servers serve gRPC over TLS (`grpcs://`) and the client dials them
    /// with `GRPC_TLS_CA`.
    pub async fn start_tls(bins: DemoBins, nodes: usize, servers: usize) -> std::io::Result<Self> {
        Self::start_with_tls(
            bins,
            nodes,
            servers,
            None,
            Some(Arc::new(TestCa::temp("demo-ca"))),
        )
        .await
    }

    async fn start_with_tls(
        bins: DemoBins,
        nodes: usize,
        servers: usize,
        zone: Option<&str>,
        tls: Option<Arc<TestCa>>,
    ) -> std::io::Result<Self> {
        let cluster = ProcessTopology::start_tls(
            &Layout::zones(&[("zone01", nodes)]),
            bins.discovery.clone(),
            tls.clone(),
        )
        .await?;
        cluster.wait_ready().await;
        let nodes_env = nodes_list(cluster.addrs(), tls.is_some());
        let client = start_client(&bins, &nodes_env, zone, tls.as_deref()).await?;
        let mut topo = DemoTopology {
            bins,
            cluster,
            servers: Vec::new(),
            client,
            clients: Vec::new(),
            server_zones: Vec::new(),
            tls,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        };
        for _ in 0..servers {
            topo.add_server_in(zone).await?;
        }
        Ok(topo)
    }

    /// `DISCOVERY_NODES` of the cluster: every node, dead or alive.
    pub fn discovery_nodes(&self) -> String {
        nodes_list(self.cluster.addrs(), self.tls.is_some())
    }

    /// The authority of a topology started with TLS.
    pub fn tls(&self) -> Option<&TestCa> {
        self.tls.as_deref()
    }

    /// The demo client's base URL.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client.addr)
    }

    /// A demo server's address, while it runs.
    pub fn server_addr(&self, i: usize) -> Option<SocketAddr> {
        self.servers.get(i)?.as_ref().map(|p| p.addr)
    }

    /// Starts one more demo server (hostname `demo-server-<n>`); returns its
    /// index.
    pub async fn add_server(&mut self) -> std::io::Result<usize> {
        self.add_server_in(None).await
    }

    /// Starts one more demo server registering in `zone` (the SDK's `ZONE`;
    /// the SDK default when `None`); returns its index.
    pub async fn add_server_in(&mut self, zone: Option<&str>) -> std::io::Result<usize> {
        let i = self.servers.len();
        let name = format!("demo-server-{}", i + 1);
        let mut cmd = Command::new(&self.bins.demo_server);
        demo_env(&mut cmd);
        cmd.args(["--grpc-addr", "127.0.0.1:0", "--advertise-ip", "127.0.0.1"])
            .env(env::NODES, self.discovery_nodes())
            .env(env::HOSTNAME, &name);
        if let Some(ca) = &self.tls {
            tls_env(&mut cmd, ca, &name);
            let id = ca.issue(&format!("{name}-grpc"), &["127.0.0.1"]);
            cmd.env(env::GRPC_TLS_CERT, &id.cert)
                .env(env::GRPC_TLS_KEY, &id.key);
        }
        if let Some(zone) = zone {
            cmd.env(env::ZONE, zone);
        }
        self.servers
            .push(Some(Process::spawn_ready_file(cmd, &name).await?));
        self.server_zones.push(zone.map(str::to_string));
        Ok(i)
    }

    /// Starts another demo client (hostname `name`) with extra arguments,
    /// e.g. `["--balancer", "wrr"]`, in `zone` when given; returns its base
    /// URL.
    pub async fn add_client(
        &mut self,
        name: &str,
        args: &[&str],
        zone: Option<&str>,
    ) -> std::io::Result<String> {
        let mut cmd = Command::new(&self.bins.demo_client);
        demo_env(&mut cmd);
        cmd.args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .env(env::NODES, self.discovery_nodes())
            .env(env::HOSTNAME, name);
        if let Some(ca) = &self.tls {
            tls_env(&mut cmd, ca, name);
        }
        if let Some(zone) = zone {
            cmd.env(env::ZONE, zone);
        }
        let p = Process::spawn_ready_file(cmd, name).await?;
        let url = format!("http://{}", p.addr);
        self.clients.push(p);
        Ok(url)
    }

    /// Sends a `kill -s` signal (`STOP`, `CONT`, …) to demo server `i`.
    pub async fn signal_server(&self, i: usize, signal: &str) -> std::io::Result<()> {
        match self.servers.get(i).and_then(Option::as_ref) {
            Some(p) => p.signal(signal).await,
            None => Ok(()),
        }
    }

    /// `kill -9` demo server `i`: the registry is not told.
    pub async fn kill_server(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].take() {
            p.kill().await;
        }
    }

    /// SIGTERM to demo server `i`; waits for its exit.
    pub async fn stop_server(&mut self, i: usize) -> Option<ExitStatus> {
        let mut p = self.servers[i].take()?;
        p.terminate().await.ok()
    }

    /// `GET /say_hello?name=<name>` on the client: the status and the JSON
    /// body (`Null` when it is not JSON).
    pub async fn say_hello(&self, name: &str) -> Result<(u16, serde_json::Value), reqwest::Error> {
        let resp = self
            .http
            .get(format!("{}/say_hello", self.client_url()))
            .query(&[("name", name)])
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Stops the client and the servers with SIGTERM (so that they
    /// deregister), then the nodes, and reaps every process before it
    /// returns: one that outlives its bound is killed with SIGKILL and
    /// waited for, so that a supervisor exiting next leaves no child.
    pub async fn shutdown(mut self) {
        let _ = self.client.stop(DEMO_STOP_WITHIN).await;
        for c in &mut self.clients {
            let _ = c.stop(DEMO_STOP_WITHIN).await;
        }
        for i in 0..self.servers.len() {
            // A stopped server could not act on SIGTERM.
            let _ = self.signal_server(i, "CONT").await;
            if let Some(mut p) = self.servers[i].take() {
                let _ = p.stop(DEMO_STOP_WITHIN).await;
            }
        }
        // The nodes stop together: each flushes its replication queues and
        // finishes its open connections, up to `drain_timeout` (5 s) for
        // each, which `NODE_STOP_WITHIN` leaves room for.
        let stops = self
            .cluster
            .nodes
            .iter_mut()
            .flatten()
            .map(|p| p.stop(NODE_STOP_WITHIN));
        for (i, stopped) in futures_util::future::join_all(stops)
            .await
            .into_iter()
            .enumerate()
        {
            if let Ok((_, true)) = stopped {
                eprintln!(
                    "discovery node {}: no exit within {NODE_STOP_WITHIN:?} of SIGTERM; killed",
                    i + 1
                );
            }
        }
    }
}

/// How long a demo server or client may take to exit after SIGTERM (it
/// deregisters, then stops).
const DEMO_STOP_WITHIN: Duration = Duration::from_secs(10);

/// How long a node may take to exit after SIGTERM: its own bounds are a
/// queue flush and then open connections, `drain_timeout` (default 5 s)
/// each.
const NODE_STOP_WITHIN: Duration = Duration::from_secs(15);

async fn start_client(
    bins: &DemoBins,
    nodes: &str,
    zone: Option<&str>,
    tls: Option<&TestCa>,
) -> std::io::Result<Process> {
    let mut cmd = Command::new(&bins.demo_client);
    demo_env(&mut cmd);
    cmd.args(["--http-addr", "127.0.0.1:0"])
        .env(env::NODES, nodes)
        .env(env::HOSTNAME, "demo-client-1");
    if let Some(ca) = tls {
        tls_env(&mut cmd, ca, "demo-client-1");
    }
    if let Some(zone) = zone {
        cmd.env(env::ZONE, zone);
    }
    Process::spawn_ready_file(cmd, "demo-client-1").await
}

/// The environment of demo processes: no inherited identity, logs from
/// `TESTKIT_LOG` (default `info`; readiness comes from ready files, not
/// from logs).
fn demo_env(cmd: &mut Command) {
    for var in env::IDENTITY {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", crate::child_log());
}

/// The TLS environment of a demo process: the SDK's CA and a client
/// certificate of its own, and the CA that verifies `grpcs://` Greeters.
fn tls_env(cmd: &mut Command, ca: &TestCa, name: &str) {
    let id = ca.issue(name, &[&format!("{name}.client")]);
    cmd.env(env::CA, ca.ca_path())
        .env(env::CERT, &id.cert)
        .env(env::KEY, &id.key)
        .env(env::GRPC_TLS_CA, ca.ca_path());
}

/// `DISCOVERY_NODES` for `addrs`, `https://` ones with TLS.
fn nodes_list(addrs: &[SocketAddr], tls: bool) -> String {
    addrs
        .iter()
        .map(|a| {
            if tls {
                format!("https://{a}")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
