//! The `demo-server` binary against a real (in-process) discovery node:
//! exit status without nodes, registration, serving through `discovery://`,
//! and deregistration on SIGTERM before the process exits.

use std::{sync::Arc, time::Duration};

use demo_proto::helloworld::{HelloRequest, greeter_client::GreeterClient};
use discovery_client::{Config, Discovery};
use discovery_tonic::{Balanced, ClientConfig, Resolvers};
use testkit::{Layout, Process, Topology};
use tokio::{process::Command, time::Instant};

const BIN: &str = env!("CARGO_BIN_EXE_demo-server");

/// A command without any inherited SDK or demo setting.
fn demo_server() -> Command {
    let mut cmd = Command::new(BIN);
    for var in naming::env::IDENTITY {
        cmd.env_remove(var);
    }
    cmd.args(["--grpc-addr", "127.0.0.1:0"]);
    cmd
}

/// `GET /discovery/fetch` of demo.service on `node`: the UP instances.
async fn instances(node: &str) -> Vec<serde_json::Value> {
    let body = testkit::http::get_json(
        node,
        "/discovery/fetch?zone=zone01&env=dev&appid=demo.service&status=1",
    )
    .await;
    body["data"]["instances"]
        .as_object()
        .map(|zones| {
            zones
                .values()
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn without_nodes_exits_2_naming_discovery_nodes() {
    let out = demo_server()
        .env(naming::env::HOSTNAME, "demo-server-nonodes")
        .output()
        .await
        .expect("run demo-server");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DISCOVERY_NODES"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_and_deregisters_on_sigterm() {
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let node = topo.url(0);

    let mut cmd = demo_server();
    cmd.env(naming::env::NODES, topo.addr(0).to_string())
        .env(naming::env::HOSTNAME, "demo-server-t1")
        .args(["--weight", "20", "--cluster", "c1"]);
    let mut server = Process::spawn_ready_file(cmd, "demo-server-t1")
        .await
        .expect("starts");
    let expected_addr = format!("grpc://{}", server.addr);

    // Registered with its address and metadata.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ins = loop {
        if let Some(ins) = instances(&node)
            .await
            .into_iter()
            .find(|i| i["hostname"] == "demo-server-t1")
        {
            break ins;
        }
        assert!(Instant::now() < deadline, "demo-server-t1 never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ins["addrs"], serde_json::json!([expected_addr]));
    assert_eq!(ins["metadata"]["weight"], "20");
    assert_eq!(ins["metadata"]["cluster"], "c1");

    // Reachable through discovery://, saying who answered.
    let discovery = Discovery::new(
        Config::builder()
            .nodes([topo.addr(0).to_string()])
            .hostname("test-client")
            .build_with(|_| None),
    )
    .expect("SDK");
    let channel = Balanced::from_target(
        "discovery://default/demo.service",
        &Resolvers::new().with(Arc::new(discovery.clone())),
        &ClientConfig::default()
            .zone("zone01")
            .timeout(Duration::from_secs(2)),
    )
    .expect("channel");
    let mut client = GreeterClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        match client
            .say_hello(HelloRequest {
                name: "kratos".into(),
            })
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "no successful call: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        reply
            .metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
        Some("demo-server-t1")
    );
    assert_eq!(reply.into_inner().message, "Hello kratos");

    // SIGTERM: the cancel reaches the registry before the process exits.
    server.signal("TERM").await.expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let left = instances(&node).await;
    assert!(
        left.iter().all(|i| i["hostname"] != "demo-server-t1"),
        "still registered after exit: {left:?}"
    );
    let _ = discovery.close().await;
    topo.shutdown().await;
}

/// SIGINT (Ctrl-C) cancels as SIGTERM does, before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregisters_on_sigint() {
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let node = topo.url(0);
    let mut cmd = demo_server();
    cmd.env(naming::env::NODES, topo.addr(0).to_string())
        .env(naming::env::HOSTNAME, "demo-server-int");
    let mut server = Process::spawn_ready_file(cmd, "demo-server-int")
        .await
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !instances(&node)
        .await
        .iter()
        .any(|i| i["hostname"] == "demo-server-int")
    {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    server.signal("INT").await.expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits after SIGINT")
        .expect("wait");
    println!("SIGINT to exit: {:?}", sent.elapsed());
    assert!(status.success(), "{status:?}");
    let left = instances(&node).await;
    assert!(
        left.iter().all(|i| i["hostname"] != "demo-server-int"),
        "still registered after exit: {left:?}"
    );
    topo.shutdown().await;
}
