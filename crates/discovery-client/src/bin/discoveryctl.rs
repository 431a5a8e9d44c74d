//! `discoveryctl`: register, fetch, watch, set and list nodes through the
//! SDK; prints a table, or JSON with `--json`. Exit status 2 when no
//! discovery node is configured, 1 on other errors.
//!
//! ```sh
//! export DISCOVERY_NODES=127.0.0.1:7171
//! discoveryctl register demo.service grpc://127.0.0.1:9000 --metadata weight=20
//! discoveryctl fetch demo.service
//! discoveryctl watch demo.service other.service
//! discoveryctl --hostname demo-1 set demo.service --status 2
//! discoveryctl nodes
//! ```

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use discovery_client::{Discovery, SetRequest, config::Flags};
use naming::{Error, Instance, InstancesInfo, Registry, Resolution, Status};

#[derive(Debug, Parser)]
#[command(
    name = "discoveryctl",
    version,
    about = "Talk to a discovery registry through the SDK"
)]
struct Cli {
    #[command(flatten)]
    sdk: Flags,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Register an instance and keep it until SIGINT (Ctrl-C) or SIGTERM,
    /// then cancel it
    Register {
        /// The appid
        appid: String,
        /// Addresses such as grpc://10.0.0.1:9000
        #[arg(required = true)]
        addrs: Vec<String>,
        /// Build version
        #[arg(long, default_value = "")]
        version: String,
        /// Metadata entries, key=value (repeatable)
        #[arg(long, value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// 1 = UP, 2 = waiting
        #[arg(long, default_value_t = 1)]
        status: u32,
    },
    /// Fetch the UP instances of apps once
    Fetch {
        /// Appids
        #[arg(required = true)]
        appids: Vec<String>,
    },
    /// Watch apps and print each change of their instance sets until SIGINT
    /// or SIGTERM
    Watch {
        /// Appids
        #[arg(required = true)]
        appids: Vec<String>,
    },
    /// Change status or metadata of the instance (appid, --hostname)
    Set {
        /// The appid
        appid: String,
        /// 1 = UP, 2 = waiting
        #[arg(long)]
        status: Option<u32>,
        /// Metadata entries to merge, key=value (repeatable)
        #[arg(long, value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Print the discovery nodes the SDK uses (after self-discovery)
    Nodes,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let discovery = match Discovery::new(cli.sdk.builder().build()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("discoveryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run(&discovery, cli.cmd, cli.json).await;
    let _ = discovery.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discoveryctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(d: &Discovery, cmd: Cmd, json: bool) -> Result<(), Error> {
    match cmd {
        Cmd::Register {
            appid,
            addrs,
            version,
            metadata,
            status,
        } => {
            // Installed before registering: a signal that lands during the
            // register then cancels it instead of killing the process.
            let stop = signals()?;
            let reg = d
                .register(Instance {
                    appid,
                    addrs,
                    version,
                    metadata: metadata.into_iter().collect(),
                    status: Status::from(status),
                    ..Default::default()
                })
                .await?;
            let (appid, hostname) = (reg.appid().to_string(), d.config().hostname.clone());
            eprintln!("registered {appid} as {hostname}; SIGINT (Ctrl-C) or SIGTERM cancels");
            let sig = stop.await;
            let started = Instant::now();
            // The SDK bounds the cancel by `cancel_timeout`; this outer bound
            // only guards against a stuck runtime.
            let bound = d.config().cancel_timeout + Duration::from_secs(1);
            let result = tokio::time::timeout(bound, reg.cancel())
                .await
                .unwrap_or(Err(Error::Timeout(naming::Elapsed(bound))));
            let took = started.elapsed().as_millis();
            match &result {
                Ok(()) => eprintln!("{sig}: cancelled {appid} ({hostname}) in {took} ms"),
                Err(e) => eprintln!(
                    "{sig}: cancel of {appid} ({hostname}) failed after {took} ms: {e}; \
                     the registry evicts it when its lease expires"
                ),
            }
            result
        }
        Cmd::Fetch { appids } => {
            let mut found = BTreeMap::new();
            for appid in appids {
                match d.fetch(&appid).await? {
                    Some(info) => {
                        found.insert(appid, Some(InstancesInfo::clone(&info)));
                    }
                    None => {
                        eprintln!("{appid}: not found in env {}", d.config().env);
                        found.insert(appid, None);
                    }
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&found).unwrap_or_default()
                );
            } else {
                print_table(
                    found
                        .iter()
                        .filter_map(|(a, i)| Some((a.as_str(), i.as_ref()?))),
                );
            }
            Ok(())
        }
        Cmd::Watch { appids } => watch(d, appids, json).await,
        Cmd::Set {
            appid,
            status,
            metadata,
        } => {
            let req = SetRequest {
                status: status.map(Status::from),
                metadata: (!metadata.is_empty()).then(|| metadata.into_iter().collect()),
            };
            d.set(&appid, req).await
        }
        Cmd::Nodes => {
            d.ready(Duration::from_secs(3)).await;
            let nodes = d.nodes();
            if json {
                println!("{}", serde_json::to_string(&nodes).unwrap_or_default());
            } else {
                for n in nodes {
                    println!("{n}");
                }
            }
            Ok(())
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves with
/// the first signal's name. SIGTERM matters as much as Ctrl-C: it is what
/// `timeout`, systemd, Docker and Kubernetes send.
fn signals() -> Result<impl std::future::Future<Output = &'static str>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind).map_err(|e| Error::InvalidConfig(format!("installing signal handlers: {e}")))
    };
    let (mut term, mut int) = (
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// What a watch last printed for an app: a table is printed only when the
/// instance set differs from the previous one. Timestamps are left out:
/// a renew, or a re-sent snapshot, changes them without changing the set.
#[derive(Debug, PartialEq, Eq)]
enum Shown {
    NotFound,
    Set(Vec<InstanceKey>),
}

/// The fields of an instance a change is made of.
type InstanceKey = (
    String,
    String,
    u32,
    String,
    Vec<String>,
    BTreeMap<String, String>,
);

fn instance_set(info: &InstancesInfo) -> Vec<InstanceKey> {
    let mut set: Vec<InstanceKey> = info
        .instances
        .iter()
        .flat_map(|(zone, list)| {
            list.iter().map(move |i| {
                (
                    zone.clone(),
                    i.hostname.clone(),
                    i.status.as_u32(),
                    i.version.clone(),
                    i.addrs.clone(),
                    i.metadata.clone(),
                )
            })
        })
        .collect();
    set.sort();
    set
}

async fn watch(d: &Discovery, appids: Vec<String>, json: bool) -> Result<(), Error> {
    let stop = signals()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for appid in appids {
        let w = d.watch(&appid)?;
        let mut states = w.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let now = states.borrow_and_update().clone();
                if tx.send((appid.clone(), now)).is_err() || states.changed().await.is_err() {
                    return;
                }
            }
        });
        watches.push(w);
    }
    drop(tx);
    let mut shown: BTreeMap<String, Shown> = BTreeMap::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((appid, state)) = got else { return Ok(()) };
                let now = match &state {
                    // Every watch starts pending; the registry's first answer
                    // follows within a round trip, so there is nothing to say.
                    Resolution::Pending => continue,
                    Resolution::NotFound { .. } => Shown::NotFound,
                    Resolution::Found(info) => Shown::Set(instance_set(info)),
                };
                if shown.get(&appid) == Some(&now) {
                    continue;
                }
                shown.insert(appid.clone(), now);
                match state {
                    Resolution::Pending => {}
                    Resolution::NotFound { appid, env } => eprintln!("{appid}: not found in env {env}"),
                    Resolution::Found(info) if json => println!(
                        "{}",
                        serde_json::json!({ "appid": appid, "info": &*info })
                    ),
                    Resolution::Found(info) => print_table([(appid.as_str(), &*info)]),
                }
            }
            _ = &mut stop => return Ok(()),
        }
    }
}

fn print_table<'a>(apps: impl IntoIterator<Item = (&'a str, &'a InstancesInfo)>) {
    let mut rows = vec![[
        "APPID".to_string(),
        "ZONE".into(),
        "HOSTNAME".into(),
        "STATUS".into(),
        "VERSION".into(),
        "ADDRS".into(),
    ]];
    for (appid, info) in apps {
        for ins in info.iter() {
            rows.push([
                appid.to_string(),
                ins.zone.clone(),
                ins.hostname.clone(),
                ins.status.as_u32().to_string(),
                ins.version.clone(),
                ins.addrs.join(","),
            ]);
        }
        if info.is_empty() {
            rows.push([
                appid.to_string(),
                "-".into(),
                "(no instances)".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
