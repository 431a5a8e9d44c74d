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

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

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
    /// Register an instance and keep it until Ctrl-C, then cancel it
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
    /// Watch apps and print every change until Ctrl-C
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
            eprintln!(
                "registered {} as {}; Ctrl-C to cancel",
                reg.appid(),
                d.config().hostname
            );
            let _ = tokio::signal::ctrl_c().await;
            reg.cancel().await
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

async fn watch(d: &Discovery, appids: Vec<String>, json: bool) -> Result<(), Error> {
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
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((appid, state)) = got else { return Ok(()) };
                match state {
                    Resolution::Pending => eprintln!("{appid}: waiting for the registry"),
                    Resolution::NotFound { appid, env } => eprintln!("{appid}: not found in env {env}"),
                    Resolution::Found(info) if json => println!(
                        "{}",
                        serde_json::json!({ "appid": appid, "info": &*info })
                    ),
                    Resolution::Found(info) => print_table([(appid.as_str(), &*info)]),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
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
