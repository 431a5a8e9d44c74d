//! `discovery`: the registry server.
//!
//! Accepts the Go original's command line (`-conf path`, `-region`, `-zone`,
//! `-deploy.env`, `-log.*`, and ignores its other flags) as well as GNU-style
//! `--conf`. Without a config it serves 127.0.0.1:7171 from an embedded
//! default.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use discovery_server::{
    config::{Config, EnvFlags},
    server,
};
use tracing::{info, warn};

/// An AP service registry, wire-compatible with bilibili/discovery.
#[derive(Debug, Parser)]
#[command(name = "discovery", version)]
struct Cli {
    /// Config file, or a directory holding discovery.toml and scheduler
    /// *.json files. Without it, the embedded default is used.
    #[arg(long)]
    conf: Option<PathBuf>,
    /// Listen address, overriding httpServer.addr (port 0 picks one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Region, when [env] region is empty.
    #[arg(long)]
    region: Option<String>,
    /// Zone, when [env] zone is empty.
    #[arg(long)]
    zone: Option<String>,
    /// Deploy env, when [env] DeployEnv is empty.
    #[arg(long = "deploy.env", alias = "deploy-env")]
    deploy_env: Option<String>,
    /// Log verbosity (> 0 enables debug logs). Env: LOG_V.
    #[arg(long = "log.v", env = "LOG_V")]
    log_v: Option<i32>,
    /// Log to stdout. Env: LOG_STDOUT.
    #[arg(long = "log.stdout", env = "LOG_STDOUT", num_args = 0..=1, default_missing_value = "true")]
    log_stdout: Option<bool>,
    /// Log directory (accepted for compatibility; logs go to stdout). Env: LOG_DIR.
    #[arg(long = "log.dir", env = "LOG_DIR")]
    log_dir: Option<PathBuf>,
}

/// Flags of the Go original that we accept and ignore; the bool ones take no
/// value.
const IGNORED_VALUE_FLAGS: &[&str] = &[
    "appid",
    "deploy.color",
    "discovery.nodes",
    "http",
    "http.perf",
    "trace",
];

/// Turns the Go original's single-dash flags into clap's double-dash ones
/// and drops the flags we ignore.
fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(bin) = iter.next() {
        out.push(bin);
    }
    while let Some(arg) = iter.next() {
        let long = if arg.starts_with("--") {
            arg.clone()
        } else if arg.len() > 2 && arg.starts_with('-') {
            format!("-{arg}")
        } else {
            out.push(arg);
            continue;
        };
        let name = long[2..].split('=').next().unwrap_or("").to_string();
        let known_log = matches!(name.as_str(), "log.v" | "log.stdout" | "log.dir");
        if IGNORED_VALUE_FLAGS.contains(&name.as_str()) || (name.starts_with("log.") && !known_log)
        {
            if !long.contains('=') && !name.starts_with("log.") {
                iter.next();
            }
            continue;
        }
        out.push(long);
    }
    out
}

fn init_logs(cfg: &Config, cli: &Cli) {
    let verbose = cli.log_v.unwrap_or(cfg.log.v) > 0;
    naming::logs::init(if verbose { "debug" } else { "info" }, cfg.log.json);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut cfg, warnings) = match &cli.conf {
        Some(path) => Config::load(path)?,
        None => (Config::default(), Vec::new()),
    };
    cfg.fill_env(
        &EnvFlags {
            region: cli.region.clone(),
            zone: cli.zone.clone(),
            deploy_env: cli.deploy_env.clone(),
        },
        |k| std::env::var(k).ok(),
    );
    if let Some(dir) = &cli.log_dir {
        cfg.log.dir = Some(dir.clone());
    }
    if let Some(stdout) = cli.log_stdout {
        cfg.log.stdout = stdout;
    }
    init_logs(&cfg, &cli);
    // The Go original could also write log files; this node logs to
    // stdout only, where a service manager or container runtime collects
    // it. Say so rather than silently ignore the settings.
    if let Some(dir) = &cfg.log.dir {
        tracing::warn!(dir = %dir.display(), "[log] dir / -log.dir is not used: logs go to stdout");
    }
    if !cfg.log.stdout {
        tracing::warn!("[log] stdout = false is not honoured: logs go to stdout");
    }
    // Every held long poll is an open socket: take all the descriptors the
    // hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "open-file limit"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    for w in warnings {
        warn!("{w}");
    }
    if cli.conf.is_none() {
        info!("no -conf given; using the embedded default config");
    }
    // Signal handlers go in before the node announces itself, so that a
    // SIGHUP or SIGTERM right after start is never the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let node = server::start(cfg, cli.listen)
        .await
        .context("starting discovery")?;
    let api = std::sync::Arc::clone(node.api());
    let sig = loop {
        tokio::select! {
            _ = hup.recv() => {
                server::reload_schedulers(&api);
                match node.reload_tls() {
                    Ok(true) => info!("TLS certificate, key and CA reloaded"),
                    Ok(false) => {}
                    Err(e) => warn!("TLS reload failed, keeping the files in use: {e}"),
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = quit.recv() => break "SIGQUIT",
        }
    };
    info!("{sig}: shutting down");
    node.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("discovery: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discovery: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_style_flags_are_accepted() {
        assert_eq!(
            norm(&[
                "discovery",
                "-conf",
                "a.toml",
                "-deploy.env=uat",
                "-appid",
                "x",
                "-log.stdout"
            ]),
            [
                "discovery",
                "--conf",
                "a.toml",
                "--deploy.env=uat",
                "--log.stdout"
            ]
        );
        assert_eq!(
            norm(&["d", "-log.module", "-http.perf=tcp://x", "--conf=b"]),
            ["d", "--conf=b"]
        );
        let cli =
            Cli::try_parse_from(norm(&["discovery", "-conf", "x.toml", "-zone", "sh1"])).unwrap();
        assert_eq!(cli.conf, Some(PathBuf::from("x.toml")));
        assert_eq!(cli.zone.as_deref(), Some("sh1"));
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(norm(&["discovery", "-bogus"])).unwrap_err();
        assert!(err.use_stderr());
    }
}
