//! Anti-entropy (docs/cluster.md#anti-entropy): writes that reached one
//! node only are repaired on the others within an interval, whatever was
//! lost: a register, a `set`, a cancel.
//!
//! A write marked `replication=true` is applied by the node that receives
//! it and not passed on (it is a peer's write), so sending one to a single
//! node makes exactly the divergence a lost replication leaves.

use std::time::Duration;

use serde_json::Value;
use testkit::{
    FAST, Layout, Topology,
    http::{get_json, get_metric, post_form as post},
    wait_until,
};

fn layout(interval: &str) -> Layout {
    let toml = FAST.replace(
        "anti_entropy_interval = \"250ms\"",
        &format!("anti_entropy_interval = \"{interval}\""),
    );
    assert_ne!(toml, FAST, "FAST sets the interval this test replaces");
    Layout::zones(&[("sh001", 3)]).toml(&toml)
}

const KEY: &str = "zone=sh001&env=dev&appid=ae.svc&hostname=h1";

async fn instance(base: &str) -> Option<Value> {
    let v = get_json(base, "/discovery/fetch?env=dev&appid=ae.svc&status=3").await;
    v["data"]["instances"]["sh001"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["hostname"] == "h1").cloned())
}

/// Writes only node 0 sees: a register, then a metadata `set`, then a
/// cancel. Each must reach nodes 1 and 2 within `limit`.
async fn lost_writes_are_repaired(topo: &Topology, limit: Duration) {
    let n0 = topo.url(0);
    let reg =
        format!("{KEY}&status=1&addrs=grpc://10.0.0.1:9000&replication=true&dirty_timestamp=1000");
    assert_eq!(post(&n0, "/discovery/register", &reg).await["code"], 0);
    for i in 1..3 {
        let b = topo.url(i);
        wait_until(limit, "a lost register repaired", async || {
            instance(&b).await.is_some()
        })
        .await;
    }
    let set =
        format!("{KEY}&metadata=%7B%22weight%22%3A%2277%22%7D&replication=true&set_timestamp=2000");
    assert_eq!(post(&n0, "/discovery/set", &set).await["code"], 0);
    for i in 1..3 {
        let b = topo.url(i);
        wait_until(limit, "a lost set repaired", async || {
            instance(&b)
                .await
                .is_some_and(|i| i["metadata"]["weight"] == "77")
        })
        .await;
    }
    let cancel = format!("{KEY}&replication=true&latest_timestamp=3000");
    assert_eq!(post(&n0, "/discovery/cancel", &cancel).await["code"], 0);
    for i in 1..3 {
        let b = topo.url(i);
        wait_until(limit, "a lost cancel repaired", async || {
            instance(&b).await.is_none()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_reached_one_node_reach_all_within_an_interval() {
    let topo = Topology::start(&layout("200ms")).await;
    topo.wait_ready().await;
    // One interval (200 ms) and an exchange; the bound leaves room for a
    // loaded machine. The heal distribution is measured by the chaos suite.
    lost_writes_are_repaired(&topo, Duration::from_secs(5)).await;
    let base = topo.url(1);
    assert!(get_metric(&base, "discovery_anti_entropy_repairs_total").await >= 2.0);
    topo.shutdown().await;
}

/// The same writes without anti-entropy stay lost: the test above can
/// fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anti_entropy_a_lost_write_stays_lost() {
    let topo = Topology::start(&layout("0s")).await;
    topo.wait_ready().await;
    let reg =
        format!("{KEY}&status=1&addrs=grpc://10.0.0.1:9000&replication=true&dirty_timestamp=1000");
    assert_eq!(
        post(&topo.url(0), "/discovery/register", &reg).await["code"],
        0
    );
    // Fixed: several intervals of the other test pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(instance(&topo.url(1)).await.is_none());
    assert_eq!(
        get_metric(&topo.url(1), "discovery_anti_entropy_rounds_total").await,
        0.0
    );
    topo.shutdown().await;
}

/// Idle nodes compare roots only: a few bytes per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rounds_exchange_only_the_root() {
    let topo = Topology::start(&layout("100ms")).await;
    topo.wait_ready().await;
    let base = topo.url(0);
    for i in 0..200 {
        let f = format!(
            "zone=sh001&env=dev&appid=idle.{}&hostname=h{i}&status=1&addrs=grpc://10.0.0.1:{i}",
            i % 20
        );
        assert_eq!(post(&base, "/discovery/register", &f).await["code"], 0);
    }
    // Replication first, then rounds that find nothing to do.
    let rounds =
        |b: String| async move { get_metric(&b, "discovery_anti_entropy_rounds_total").await };
    wait_until(Duration::from_secs(3), "rounds run", async || {
        rounds(base.clone()).await >= 10.0
    })
    .await;
    let (r0, b0) = (
        rounds(base.clone()).await,
        get_metric(&base, "discovery_anti_entropy_received_bytes_total").await,
    );
    wait_until(Duration::from_secs(5), "twenty more rounds", async || {
        rounds(base.clone()).await >= r0 + 20.0
    })
    .await;
    let (r1, b1) = (
        rounds(base.clone()).await,
        get_metric(&base, "discovery_anti_entropy_received_bytes_total").await,
    );
    let per_round = (b1 - b0) / (r1 - r0);
    assert!(per_round < 200.0, "{per_round} bytes per idle round");
    topo.shutdown().await;
}

/// A client's cancel reaching a node still in its start-up sync is
/// remembered and passed on, not answered `-404`: the node does not know
/// yet what its peers hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_start_up_sync_is_remembered() {
    // A configured peer that accepts connections and never answers keeps
    // the node syncing for `sync_timeout` (3 s in FAST).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = l.local_addr().unwrap().to_string();
    let text = format!(
        "nodes = [\"{own}\", \"{peer}\"]\n[env]\nzone = \"sh001\"\nhost = \"n\"\nDeployEnv = \"dev\"\n[httpServer]\naddr = \"{own}\"\n{FAST}"
    );
    let cfg = discovery_server::config::Config::parse(&text).unwrap().0;
    let n = discovery_server::server::start_on(cfg, l).await.unwrap();
    let base = format!("http://{own}");
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "still syncing");
    let r = post(&base, "/discovery/cancel", KEY).await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 1.0);
    n.shutdown().await;
    hold.abort();
}
