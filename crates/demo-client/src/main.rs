//! `demo-client`: the HTTP front of the discovery walkthrough (README.md#try-the-demo).
//!
//! `GET /say_hello?name=x` calls `Greeter.SayHello` through
//! `discovery://default/demo.service` (balanced by `discovery-tonic`) and
//! answers `200 {"message":"Hello x","served_by":"<hostname>"}`, the hostname
//! being the server's `x-served-by`, or the registered hostname of the
//! instance the balancer picked when the server sends none. A missing
//! `name` is a 400; `Unavailable` (no instance, or none reachable) a 503 with
//! the balancer's message; `DeadlineExceeded` a 504. `Unavailable` is
//! retried once: SayHello is idempotent, and the retry goes to another
//! instance once the failed one is ejected.
//!
//! SayHello is marked idempotent for the balancer: a call that has no
//! answer after 30 % of its deadline is also sent to a second instance, and
//! one that hits a broken connection is sent to another at once, so a
//! server that dies or falls silent costs latency, not errors.
//!
//! `GET /metrics` shows the balancer in the Prometheus text format (picks,
//! ejections, hedges, in-flight calls, EWMA latency, score and weight per
//! backend); `GET /debug/balancer` shows the current pool with each
//! backend's state as JSON.
//!
//! HTTP is served at once; providers may appear later. The client logs the
//! watched app's instance count whenever it changes.
//!
//! ```text
//! DISCOVERY_NODES=127.0.0.1:7171 HOSTNAME=demo-client-1 demo-client --http-addr 127.0.0.1:8000
//! curl 'http://127.0.0.1:8000/say_hello?name=kratos'
//! ```
//!
//! `demo-client --healthcheck http://127.0.0.1:7171/readyz` only checks that
//! a URL answers 200 (exit 0, else 1); container healthchecks use it, as
//! the images hold no curl.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use demo_proto::helloworld::{HelloRequest, greeter_client::GreeterClient};
use discovery_client::{Discovery, config::Flags};
use discovery_tonic::{Balanced, BalancerKind, ClientConfig, Resolvers, Target};
use naming::Resolution;
use tonic::Code;
use tracing::{debug, info, warn};

mod metrics;

/// Own appid when neither `--appid` nor `APP_ID` is set.
const DEFAULT_APPID: &str = "demo.client";
/// The one method called; it has no side effect, so it may be sent twice.
const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The Greeter demo client: an HTTP front end calling demo.service through
/// discovery://.
#[derive(Debug, Parser)]
#[command(name = "demo-client", version, about)]
struct Cli {
    /// HTTP listen address; port 0 picks a free one.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8000")]
    http_addr: SocketAddr,
    /// The Greeter target (`discovery://default/<appid>` or
    /// `direct://default/host:port,...`).
    #[arg(
        long,
        env = "DEMO_TARGET",
        default_value = "discovery://default/demo.service"
    )]
    target: String,
    /// Per-call deadline (`250ms`, `1s`).
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    timeout: Duration,
    /// Picker: p2c or wrr (also round_robin, random).
    #[arg(long, env = "DEMO_BALANCER", default_value = "p2c")]
    balancer: BalancerKind,
    /// With wrr: keep the registered weights instead of adjusting them to
    /// each server's success rate, latency and CPU.
    #[arg(long)]
    static_weights: bool,
    /// Once serving, write the bound HTTP address to this file (replaced
    /// atomically), so that a supervisor learns the port whatever the log
    /// level.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,
    /// PEM bundle verifying `grpcs://` Greeters (servers started with
    /// --tls-cert); without it they are skipped
    #[arg(long, env = naming::env::GRPC_TLS_CA, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Only check that URL answers 200, then exit (0 when it does, else 1).
    #[arg(long, value_name = "URL", exclusive = true)]
    healthcheck: Option<String>,
    /// The SDK settings (`--appid` defaults to demo.client here).
    #[command(flatten)]
    sdk: Flags,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    discovery_tonic::config::parse_duration(s).map_err(|e| e.to_string())
}

fn init_logs() {
    naming::logs::init("info", false);
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct App {
    greeter: GreeterClient<Balanced>,
    channel: Balanced,
}

#[derive(Debug, serde::Deserialize)]
struct HelloQuery {
    name: Option<String>,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

async fn say_hello(State(app): State<App>, Query(q): Query<HelloQuery>) -> Response {
    let Some(name) = q.name.filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing query parameter: name");
    };
    let mut greeter = app.greeter.clone();
    let request = || HelloRequest { name: name.clone() };
    let mut result = greeter.say_hello(request()).await;
    if let Err(status) = &result {
        if status.code() == Code::Unavailable {
            debug!(error = %status.message(), "SayHello unavailable; retrying once");
            result = greeter.say_hello(request()).await;
        }
    }
    match result {
        Ok(resp) => {
            // Our servers name themselves; Go servers do not, so fall back
            // to the hostname of the instance the balancer picked.
            let served_by = resp
                .metadata()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| {
                    resp.extensions()
                        .get::<discovery_tonic::ServedBy>()
                        .map(|s| s.hostname.clone())
                })
                .unwrap_or_default();
            let message = resp.into_inner().message;
            json(
                StatusCode::OK,
                serde_json::json!({ "message": message, "served_by": served_by }),
            )
        }
        Err(status) => {
            let http = match status.code() {
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(code = ?status.code(), error = %status.message(), "SayHello failed");
            let message = if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_string()
            };
            error(http, &message)
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&app.channel.pool()),
    )
        .into_response()
}

async fn debug_balancer(State(app): State<App>) -> Response {
    json(StatusCode::OK, metrics::debug(&app.channel))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/say_hello", get(say_hello))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/debug/balancer", get(debug_balancer))
        .with_state(app)
}

/// Logs the watched app's instance count whenever it changes (README.md#try-the-demo
/// walkthrough: `demo.service: 2 instances`).
async fn log_instances(discovery: Discovery, appid: String) {
    let Ok(watch) = discovery.watch(&appid) else {
        return;
    };
    let mut rx = watch.subscribe();
    let mut last: Option<String> = None;
    loop {
        let line = match &*rx.borrow_and_update() {
            Resolution::Pending => None,
            Resolution::NotFound { env, .. } => {
                Some(format!("{appid}: not registered in env {env}"))
            }
            Resolution::Found(info) => Some(match info.len() {
                1 => format!("{appid}: 1 instance"),
                n => format!("{appid}: {n} instances"),
            }),
        };
        if line.is_some() && line != last {
            info!("{}", line.as_deref().unwrap_or_default());
            last = line;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future
/// resolves at the first signal, once it is logged.
fn signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let signal = naming::signals::shutdown()?;
    Ok(async move {
        let sig = signal.await;
        info!("{sig}: shutting down");
    })
}

async fn run(cli: Cli, target: Target, discovery: Option<Discovery>) -> anyhow::Result<()> {
    let signal = signals().context("installing signal handlers")?;
    let sdk = match &discovery {
        Some(d) => d.config().clone(),
        None => cli.sdk.builder().build(),
    };
    let caller = if sdk.appid.is_empty() {
        DEFAULT_APPID.to_string()
    } else {
        sdk.appid.clone()
    };
    let mut resolvers = Resolvers::new();
    if let Some(d) = &discovery {
        resolvers.insert(Arc::new(d.clone()));
    }
    let mut config = ClientConfig::default()
        .zone(sdk.zone.clone())
        .env(sdk.env.clone())
        .client_id(sdk.hostname.clone())
        .caller(caller)
        .color(sdk.color.clone())
        .timeout(cli.timeout)
        .balancer(cli.balancer)
        .static_weights(cli.static_weights)
        .idempotent(SAY_HELLO);
    if let Some(ca) = &cli.tls_ca {
        config = config.ca(ca);
    }
    let channel = Balanced::from_target(&cli.target, &resolvers, &config)
        .with_context(|| format!("target {}", cli.target))?;
    let app = App {
        greeter: GreeterClient::new(channel.clone()),
        channel,
    };
    let logger = discovery
        .clone()
        .map(|d| tokio::spawn(log_instances(d, target.endpoint.clone())));

    let listener = tokio::net::TcpListener::bind(cli.http_addr)
        .await
        .with_context(|| format!("binding {}", cli.http_addr))?;
    let bound = listener.local_addr()?;
    info!(
        hostname = %sdk.hostname,
        target = %cli.target,
        "demo-client listening on {bound}"
    );
    if let Some(path) = &cli.ready_file {
        // Connections made from now on wait in the listen backlog until
        // `serve` accepts them.
        write_ready_file(path, bound)?;
    }
    axum::serve(listener, router(app))
        .with_graceful_shutdown(signal)
        .await
        .context("serving HTTP")?;
    if let Some(task) = logger {
        task.abort();
    }
    if let Some(d) = discovery {
        let _ = d.close().await;
    }
    Ok(())
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

/// `GET url` over plain HTTP/1.0; whether it answered 200 within 3 s.
fn healthcheck(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} has no address"))?;
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code = line.split_whitespace().nth(1).unwrap_or_default();
    anyhow::ensure!(code == "200", "{url} answered {line:?}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(url) = &cli.healthcheck {
        return match healthcheck(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo-client: healthcheck: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logs();
    let target = match Target::parse(&cli.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("demo-client: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = rt.enter();
    // Only `discovery://` targets need the registry; `direct://` works
    // without DISCOVERY_NODES.
    let discovery = if target.scheme == "discovery" {
        match Discovery::new(cli.sdk.builder().build()) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("demo-client: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    match rt.block_on(run(cli, target, discovery)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_spec_flags() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--http-addr",
            "--target",
            "--appid",
            "--timeout",
            "--balancer",
            "--discovery-nodes",
            "HTTP_ADDR",
            "DEMO_TARGET",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn flags_parse() {
        let cli =
            Cli::try_parse_from(["demo-client", "--timeout", "1s", "--balancer", "wrr"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(1));
        assert_eq!(cli.balancer, BalancerKind::Wrr);
        assert!(Cli::try_parse_from(["demo-client", "--balancer", "nope"]).is_err());
    }
}
