//! `demo-server`: the Greeter of the discovery walkthrough (README.md#try-the-demo).
//!
//! Binds the gRPC address (port 0 picks one), logs
//! `demo-server listening on <addr>`, serves, then registers
//! `grpc://<advertise-ip>:<port>` as `demo.service` (or `--appid`/`APP_ID`)
//! with weight, colour and cluster in the metadata. Replies `Hello <name>`
//! with the response metadata `x-served-by: <hostname>` and the `cpu_usage`
//! trailer. Requests whose `:authority` carries a query, as grpc-go sends
//! for kratos `discovery://` targets, are served like any other. On
//! SIGINT/SIGTERM it cancels the registration (at most 5 s) and logs one
//! line saying so (`SIGTERM: cancelled demo.service in 3 ms`), then
//! stops gRPC gracefully, so that clients have moved away before the
//! listener closes. An error exit still cancels: the client is closed on
//! every path, which waits for the cancel of a dropped registration.
//!
//! ```text
//! DISCOVERY_NODES=127.0.0.1:7171 HOSTNAME=demo-server-1 demo-server --grpc-addr 127.0.0.1:9000
//! ```
//!
//! `--ready-file PATH` writes the bound address to PATH once serving, for
//! supervisors that must not depend on the log level.
//!
//! Without discovery nodes it prints the SDK's error and exits with status 2.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_client::{Discovery, config::Flags};
use naming::{Instance, Registration, Registry, metadata};
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::{error, info, warn};

/// The appid registered when neither `--appid` nor `APP_ID` is set.
const DEFAULT_APPID: &str = "demo.service";
/// Bound of the cancel on shutdown (the SDK's own bound is the same).
const CANCEL_BOUND: Duration = Duration::from_secs(5);
/// Bound of the graceful gRPC stop once deregistered.
const DRAIN_BOUND: Duration = Duration::from_secs(5);
/// Longest TLS handshake of a client before its connection is dropped.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(10);

/// The Greeter demo server: serves gRPC and registers itself with discovery.
#[derive(Debug, Parser)]
#[command(name = "demo-server", version, about)]
struct Cli {
    /// gRPC listen address; port 0 picks a free one.
    #[arg(long, env = naming::env::GRPC_ADDR, default_value = "0.0.0.0:9000")]
    grpc_addr: SocketAddr,
    /// IP registered in `grpc://<ip>:<port>` [default: the listen IP when it
    /// is not 0.0.0.0, else the host's primary address (of the default
    /// route, else the first non-loopback IPv4), else 127.0.0.1]
    #[arg(long, env = naming::env::ADVERTISE_IP)]
    advertise_ip: Option<IpAddr>,
    /// Balancer weight, registered as `weight` metadata.
    #[arg(long, default_value_t = naming::DEFAULT_WEIGHT)]
    weight: u32,
    /// Traffic colour, registered as `color` metadata [default: DEPLOY_COLOR]
    #[arg(long)]
    color: Option<String>,
    /// Cluster, registered as `cluster` metadata.
    #[arg(long, default_value = "")]
    cluster: String,
    /// Once serving, write the bound gRPC address to this file (replaced
    /// atomically), so that a supervisor learns the port whatever the log
    /// level.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,
    /// PEM certificate chain: serve gRPC over TLS and register
    /// `grpcs://<ip>:<port>` (needs --tls-key)
    #[arg(long, env = naming::env::GRPC_TLS_CERT, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = naming::env::GRPC_TLS_KEY, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The SDK settings (`--appid` defaults to demo.service here).
    #[command(flatten)]
    sdk: Flags,
}

/// The service: greets and says who answered.
#[derive(Debug, Clone)]
struct Hello {
    hostname: String,
    served_by: MetadataValue<tonic::metadata::Ascii>,
}

impl Hello {
    fn new(hostname: &str) -> anyhow::Result<Self> {
        Ok(Hello {
            hostname: hostname.to_string(),
            served_by: hostname
                .parse()
                .with_context(|| format!("hostname {hostname:?} is not valid metadata"))?,
        })
    }
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let name = req.into_inner().name;
        tracing::debug!(%name, host = %self.hostname, "SayHello");
        let mut resp = Response::new(HelloReply {
            message: format!("Hello {name}"),
        });
        resp.metadata_mut()
            .insert("x-served-by", self.served_by.clone());
        Ok(resp)
    }
}

/// The IP to register: the flag, else the listen IP when specific, else the
/// host's primary address ([`naming::host::advertise_ip`]).
fn advertise_ip(flag: Option<IpAddr>, bound: SocketAddr) -> IpAddr {
    flag.unwrap_or_else(|| naming::host::advertise_ip(bound.ip()))
}

/// Writes `addr` to `path` through a temporary file and a rename, so that a
/// reader never sees a partial address.
fn write_ready_file(path: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the ready file {}", path.display()))
}

/// Registers, retrying every second while the registry cannot be reached,
/// until `stop` fires. Returns `None` when stopped first.
async fn register(
    discovery: &Discovery,
    instance: Instance,
    stop: &mut watch::Receiver<bool>,
) -> Option<Registration> {
    loop {
        tokio::select! {
            r = discovery.register(instance.clone()) => match r {
                Ok(reg) => return Some(reg),
                Err(e) => warn!(error = %e, "register failed; retrying in 1 s"),
            },
            _ = stop.wait_for(|s| *s) => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

async fn run(cli: Cli, discovery: Discovery) -> anyhow::Result<()> {
    let config = discovery.config().clone();
    let appid = if config.appid.is_empty() {
        DEFAULT_APPID.to_string()
    } else {
        config.appid.clone()
    };
    let color = cli.color.clone().unwrap_or_else(|| config.color.clone());
    let signal = naming::signals::shutdown().context("installing signal handlers")?;

    // Bad TLS files stop the server before it binds or registers.
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            discovery_tonic::tls::server_config(cert, key).context("TLS")?,
        ))),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.grpc_addr)
        .await
        .with_context(|| format!("binding {}", cli.grpc_addr))?;
    let bound = listener.local_addr()?;
    info!(
        hostname = %config.hostname,
        "demo-server listening on {bound}"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (grpc_stop_tx, mut grpc_stop) = watch::channel(false);
    let service = GreeterServer::new(Hello::new(&config.hostname)?);
    let secure = tls.is_some();
    let server = tokio::spawn(async move {
        let router = tonic::transport::Server::builder()
            .layer(discovery_tonic::CpuLayer::new())
            .add_service(service);
        let stop = async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        };
        // Accepts grpc-go's `<appid>?subset=50` authorities, so kratos
        // warden clients can call us (docs/grpc-interop.md); over TLS the
        // shim reads the decrypted stream.
        match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(
                        discovery_tonic::interop::incoming(listener),
                        stop,
                    )
                    .await
            }
            Some(acceptor) => {
                router
                    .serve_with_incoming_shutdown(
                        discovery_tonic::interop::incoming_tls(listener, acceptor, HANDSHAKE_BOUND),
                        stop,
                    )
                    .await
            }
        }
    });

    if let Some(path) = &cli.ready_file {
        write_ready_file(path, bound)?;
    }

    let addr = format!(
        "{}://{}",
        if secure { "grpcs" } else { "grpc" },
        SocketAddr::new(advertise_ip(cli.advertise_ip, bound), bound.port())
    );
    let mut md = BTreeMap::from([(metadata::WEIGHT.to_string(), cli.weight.to_string())]);
    if !color.is_empty() {
        md.insert(metadata::COLOR.to_string(), color);
    }
    if !cli.cluster.is_empty() {
        md.insert(metadata::CLUSTER.to_string(), cli.cluster.clone());
    }
    let instance = Instance {
        appid: appid.clone(),
        addrs: vec![addr.clone()],
        metadata: md,
        ..Default::default()
    };

    // A signal during a slow register still ends the process.
    let signals = tokio::spawn(async move {
        let sig = signal.await;
        let _ = stop_tx.send(true);
        sig
    });
    let mut reg_stop = stop_rx.clone();
    let registration = register(&discovery, instance, &mut reg_stop).await;
    if registration.is_some() {
        info!(
            zone = %config.zone,
            env = %config.env,
            hostname = %config.hostname,
            "{appid} registered as {addr}"
        );
    }

    let sig = signals.await.context("signal task")?;
    match registration {
        Some(reg) => {
            let started = tokio::time::Instant::now();
            let result = tokio::time::timeout(CANCEL_BOUND, reg.cancel()).await;
            let ms = started.elapsed().as_millis();
            match result {
                Ok(Ok(())) => info!("{sig}: cancelled {appid} in {ms} ms"),
                Ok(Err(e)) => warn!(
                    error = %e,
                    "{sig}: cancel of {appid} failed after {ms} ms; the registry evicts us after the lease"
                ),
                Err(_) => {
                    warn!("{sig}: cancel of {appid} took more than {CANCEL_BOUND:?}; going on")
                }
            }
        }
        None => info!("{sig}: stopping before {appid} was registered"),
    }
    // Deregistered: clients stop picking us within a poll, and in-flight
    // calls get a bounded time to finish.
    let _ = grpc_stop_tx.send(true);
    match tokio::time::timeout(DRAIN_BOUND, server).await {
        Ok(Ok(Ok(()))) => info!("gRPC stopped"),
        Ok(Ok(Err(e))) => error!(error = %e, "gRPC server error"),
        Ok(Err(e)) => error!(error = %e, "gRPC server task failed"),
        Err(_) => warn!("gRPC did not drain within {DRAIN_BOUND:?}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    naming::logs::init("info", false);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = rt.enter();
    let discovery = match Discovery::new(cli.sdk.builder().build()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo-server: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(run(cli, discovery.clone()));
    // Also on an error path: close waits for the cancel of a registration
    // that `run` dropped on its way out.
    let _ = rt.block_on(discovery.close());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_ip_prefers_flag_then_specific_listen_ip() {
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(advertise_ip(Some(ip), any), ip);
        assert_eq!(advertise_ip(None, lo), lo.ip());
        let detected = advertise_ip(None, any);
        assert!(detected.is_ipv4());
    }

    #[test]
    fn help_lists_the_spec_flags() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--grpc-addr",
            "--advertise-ip",
            "--appid",
            "--weight",
            "--color",
            "--cluster",
            "--discovery-nodes",
            "GRPC_ADDR",
            "ADVERTISE_IP",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
