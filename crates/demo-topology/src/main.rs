//! `demo-topology`: the demo topology for `cargo xtask up` and
//! `cargo xtask e2e`.
//!
//! * `up`: 3 discovery nodes, 2 demo servers and the demo client on
//!   loopback (ports chosen by the OS); prints the addresses, the web
//!   console and a curl; Ctrl-C or SIGTERM stops everything, clients first.
//!   `up --check` makes one greeting through the client, stops everything
//!   and exits 0. `up --tls` runs it all over TLS with a throwaway CA. `up --zones` runs two zones instead: the client, a wrr
//!   client and two servers in zone01, two servers in zone02.
//! * `e2e`: the same topology with assertions, under load through a p2c
//!   and a wrr client: SIGSTOP (a blackhole) and `kill -9` of a demo server
//!   fail no call; `kill -9` of a discovery node leaves registration and
//!   resolution working; a new demo server receives calls; a SIGTERMed one
//!   leaves without failed calls. Then two zones: `kill -9` of every local
//!   server moves traffic to the other zone within 2 s (the registry still
//!   lists them) without a failed call, a local server back takes it home,
//!   and its SIGTERM moves it away again, without a failed call either.
//! * `docker-e2e`: `docker compose up` of `docker-compose.yml` (images from
//!   `cargo xtask docker`), greetings, one discovery container stopped, one
//!   demo server container killed and another disconnected from the network
//!   under load, no failed call, `down`.
//!
//! The binaries are taken from this executable's directory (build them
//! with the same profile); `cargo xtask` does that.

mod docker;
mod e2e;

use std::time::Duration;

use clap::{Parser, Subcommand};
use testkit::demo::{DemoBins, DemoTopology};

/// Runs the demo topology and its end-to-end checks.
#[derive(Debug, Parser)]
#[command(name = "demo-topology", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start 3 discovery nodes, 2 demo servers and the demo client; Ctrl-C
    /// or SIGTERM stops them.
    Up {
        /// Make one greeting through the client, then stop everything and
        /// exit 0 (non-zero when the greeting fails).
        #[arg(long)]
        check: bool,
        /// Two zones: the clients and demo-server-1, -2 in zone01,
        /// demo-server-3, -4 in zone02.
        #[arg(long, conflicts_with = "tls")]
        zones: bool,
        /// Everything over TLS with a throwaway CA: HTTPS nodes with
        /// client_auth = "required", grpcs:// demo servers.
        #[arg(long)]
        tls: bool,
    },
    /// The loopback end-to-end checks.
    E2e,
    /// The docker compose end-to-end checks (images must exist).
    DockerE2e {
        /// The compose file.
        #[arg(long, default_value = "docker-compose.yml")]
        file: String,
    },
}

async fn up(check: bool, zones: bool, tls: bool) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up stops what has started.
    let signal = naming::signals::shutdown()?;
    // A terminal's Ctrl-C then reaches this process only, which stops the
    // children in order.
    testkit::own_process_groups();
    let topo = if zones {
        e2e::start_zones().await?
    } else if tls {
        DemoTopology::start_tls(DemoBins::sibling(), 3, 2).await?
    } else {
        DemoTopology::start(DemoBins::sibling(), 3, 2).await?
    };
    let result = serve(&topo, check, signal).await;
    topo.shutdown().await;
    println!("demo topology stopped");
    result
}

/// Waits for a first greeting, prints what runs, then waits for a signal
/// (or, with `check`, makes one more greeting and returns).
async fn serve(
    topo: &DemoTopology,
    check: bool,
    signal: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let mut signal = std::pin::pin!(signal);
    // The client serves at once; wait for a first greeting before telling
    // the user to try, so that the curl below works.
    let first = tokio::select! {
        r = e2e::until_ok(topo, Duration::from_secs(30)) => r?,
        sig = &mut signal => {
            println!("{sig} before the first greeting: stopping");
            return Ok(());
        }
    };
    let nodes: Vec<String> = (0..topo.cluster.addrs().len())
        .map(|i| topo.cluster.url(i))
        .collect();
    let grpc = if topo.tls().is_some() {
        "grpcs"
    } else {
        "grpc"
    };
    println!();
    println!("demo topology up (first greeting after {first:?}):");
    for (i, node) in nodes.iter().enumerate() {
        let pid = topo.cluster.nodes[i].as_ref().and_then(|p| p.id());
        println!(
            "  discovery node {}: {node}  (pid {})",
            i + 1,
            pid_text(pid)
        );
    }
    for (i, server) in topo.servers.iter().enumerate() {
        if let Some(p) = server {
            println!(
                "  demo-server-{}:    {grpc}://{}  (pid {})",
                i + 1,
                p.addr,
                pid_text(p.id())
            );
        }
    }
    println!(
        "  demo-client-1:    {}  (pid {})",
        topo.client_url(),
        pid_text(topo.client.id())
    );
    // `up --zones` adds the wrr client (`start_zones`).
    for c in &topo.clients {
        println!(
            "  demo-client-wrr:  http://{}  (pid {})",
            c.addr,
            pid_text(c.id())
        );
    }
    println!(
        "  balancer:         {0}/debug/balancer (JSON), {0}/metrics (Prometheus)",
        topo.client_url()
    );
    println!("  web console:      {}/", nodes[0]);
    if topo.server_zones.iter().any(Option::is_some) {
        let zone_of = |z: &str| {
            topo.server_zones
                .iter()
                .enumerate()
                .filter(|(_, sz)| sz.as_deref() == Some(z))
                .map(|(i, _)| format!("demo-server-{}", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  zones:            {} (the clients'): {}; {}: {}",
            e2e::LOCAL_ZONE,
            zone_of(e2e::LOCAL_ZONE),
            e2e::OTHER_ZONE,
            zone_of(e2e::OTHER_ZONE)
        );
    }
    println!();
    println!("try:");
    println!("  curl '{}/say_hello?name=kratos'", topo.client_url());
    match topo.tls() {
        None => println!(
            "  curl '{}/discovery/fetch?zone=zone01&env=dev&appid=demo.service&status=1'",
            nodes[0]
        ),
        Some(ca) => {
            // The throwaway CA lives as long as the topology.
            let me = ca.issue("curl", &["curl.client"]);
            println!(
                "  curl --cacert {} --cert {} --key {} '{}/discovery/fetch?zone=zone01&env=dev&appid=demo.service&status=1'",
                ca.ca_path().display(),
                me.cert.display(),
                me.key.display(),
                nodes[0]
            );
        }
    }
    println!();
    if check {
        let (status, body) = topo.say_hello("kratos").await?;
        anyhow::ensure!(
            status == 200 && body["message"] == "Hello kratos",
            "greeting through the client: {status} {body}"
        );
        println!("check: {status} {body}");
        return Ok(());
    }
    println!("Ctrl-C (or SIGTERM) stops everything.");
    let sig = signal.await;
    println!("{sig}: stopping the client, the servers, then the nodes");
    Ok(())
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "-".into(), |p| p.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up { check, zones, tls } => up(check, zones, tls).await,
        Cmd::E2e => e2e::run().await,
        Cmd::DockerE2e { file } => docker::run(&file).await,
    }
}
