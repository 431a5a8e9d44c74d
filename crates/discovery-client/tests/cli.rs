//! `discoveryctl` against a real server.

mod common;

use std::process::{Command, Output};

use common::{addr_of, put, server, stored};
use naming::Status;

async fn ctl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_discoveryctl"))
            .args(&args)
            .env_remove("DISCOVERY_NODES")
            .env("ZONE", "zone01")
            .env("DEPLOY_ENV", "dev")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[tokio::test]
async fn no_nodes_exits_with_status_2() {
    let out = ctl(&["fetch", "demo.svc"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("DISCOVERY_NODES"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn fetch_table_and_json_then_set() {
    let s = server("").await;
    put(&s, "demo.svc", "p1", 9000);
    let node = addr_of(&s);
    let out = ctl(&["--discovery-nodes", &node, "fetch", "demo.svc", "ghost.svc"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("APPID"), "{table}");
    assert!(
        table.contains("p1") && table.contains("grpc://127.0.0.1:9000"),
        "{table}"
    );
    assert!(text(&out.stderr).contains("ghost.svc: not found in env dev"));

    let out = ctl(&["--discovery-nodes", &node, "--json", "fetch", "demo.svc"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["demo.svc"]["instances"]["zone01"][0]["hostname"], "p1");

    let out = ctl(&[
        "--discovery-nodes",
        &node,
        "--hostname",
        "p1",
        "set",
        "demo.svc",
        "--status",
        "2",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored(&s, "demo.svc")[0].status, Status::Waiting);
    let out = ctl(&[
        "--discovery-nodes",
        &node,
        "--hostname",
        "nobody",
        "set",
        "demo.svc",
        "--status",
        "2",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    s.shutdown().await;
}
