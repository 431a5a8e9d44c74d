//! `demo-topology`: the demo topology for `cargo xtask up` and
//! `cargo xtask e2e`.
//!
//! * `up`: 3 discovery nodes, 2 demo servers and the demo client on
//!   loopback (ports chosen by the OS); prints the addresses and a curl;
//!   Ctrl-C stops everything.
//! * `e2e`: the same topology with assertions: a greeting through the
//!   client; `kill -9` of a demo server fails no call; `kill -9` of a
//!   discovery node leaves registration and resolution working; a new demo
//!   server receives calls; a SIGTERMed one leaves without failed calls.
//! * `docker-e2e`: `docker compose up` of `docker-compose.yml` (images from
//!   `cargo xtask docker`), a greeting, one discovery container and one demo
//!   server container stopped, greetings again, `down`.
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
    /// stops them.
    Up,
    /// The loopback end-to-end checks.
    E2e,
    /// The docker compose end-to-end checks (images must exist).
    DockerE2e {
        /// The compose file.
        #[arg(long, default_value = "docker-compose.yml")]
        file: String,
    },
}

async fn up() -> anyhow::Result<()> {
    let topo = DemoTopology::start(DemoBins::sibling(), 3, 2).await?;
    // The client serves at once; wait for a first greeting before telling
    // the user to try, so that the curl below works.
    let first = e2e::until_ok(&topo, Duration::from_secs(15)).await?;
    let nodes: Vec<String> = topo
        .cluster
        .addrs()
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let servers: Vec<String> = (0..topo.servers.len())
        .filter_map(|i| topo.server_addr(i))
        .map(|a| format!("grpc://{a}"))
        .collect();
    println!();
    println!("demo topology up (first greeting after {first:?}):");
    println!("  discovery nodes: {}", nodes.join(" "));
    println!("  demo servers:    {}", servers.join(" "));
    println!("  demo client:     {}", topo.client_url());
    println!();
    println!("try:");
    println!("  curl '{}/say_hello?name=kratos'", topo.client_url());
    println!(
        "  curl '{}/discovery/fetch?zone=zone01&env=dev&appid=demo.service&status=1'",
        nodes[0]
    );
    println!();
    println!("Ctrl-C stops everything.");
    tokio::signal::ctrl_c().await?;
    println!("stopping…");
    topo.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up => up().await,
        Cmd::E2e => e2e::run().await,
        Cmd::DockerE2e { file } => docker::run(&file).await,
    }
}
