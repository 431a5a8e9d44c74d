//! The cluster as operators run it: nodes started one after another and
//! waited on (a StatefulSet), `kill -9` and restart, rolling restarts,
//! skewed clocks, dead static peers. Each test runs with the production
//! retry and sync settings where they matter, because short test timings
//! hide stalls of exactly the kind these tests look for.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{FAST, Layout, ProcessTopology, Topology, http::post_form as post};

/// Registry timings of [`FAST`] (short lease), but the production sync
/// timeout and retry ceiling: a node must not wait 10 s for peers that are
/// not running, nor leave a returning peer in a 5 s backoff.
fn operator_toml() -> String {
    FAST.replace("sync_timeout = \"3s\"", "sync_timeout = \"10s\"")
        .replace("retry_max = \"500ms\"", "retry_max = \"5s\"")
        .replace("probe_interval = \"500ms\"", "probe_interval = \"5s\"")
}

use testkit::http::try_get_json as get;

async fn hosts(base: &str) -> BTreeSet<String> {
    let Some(v) = get(base, "/discovery/fetch?env=dev&appid=ops.svc&status=3").await else {
        return BTreeSet::new();
    };
    v["data"]["instances"]
        .as_object()
        .into_iter()
        .flat_map(|z| z.values())
        .filter_map(Value::as_array)
        .flatten()
        .map(|i| i["hostname"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn reg(host: &str) -> String {
    format!("zone=sh001&env=dev&appid=ops.svc&hostname={host}&status=1&addrs=grpc://{host}:1")
}

/// Waits until `host` is on every node in `urls`; returns how long it took,
/// or `None` after `limit`.
async fn visible_everywhere(urls: &[String], host: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut all = true;
        for u in urls {
            all &= hosts(u).await.contains(host);
        }
        if all {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Three nodes, started one after another, each waited on.
async fn started_in_order() -> (ProcessTopology, Vec<String>) {
    let mut topo =
        ProcessTopology::prepare(&Layout::zones(&[("sh001", 3)]).toml(&operator_toml())).await;
    for i in 0..3 {
        topo.start_node(i).await.unwrap();
        assert!(topo.wait_node_ready(i, Duration::from_secs(8)).await);
    }
    let urls = (0..3).map(|i| topo.url(i)).collect();
    (topo, urls)
}

async fn status(base: &str) -> Value {
    get(base, "/status").await.expect("status answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_start_each_node_ready_at_once_and_writes_reach_the_last_within_1s() {
    let mut topo =
        ProcessTopology::prepare(&Layout::zones(&[("sh001", 3)]).toml(&operator_toml())).await;
    let first = Instant::now();
    let mut ready_at = Vec::new();
    for i in 0..3 {
        let started = Instant::now();
        topo.start_node(i).await.unwrap();
        // The orchestrator starts the next pod only once this one is ready;
        // 8 s is under the 10 s sync timeout a node used to wait for peers
        // that were not running.
        assert!(topo.wait_node_ready(i, Duration::from_secs(8)).await);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "node {i} ready only {:?} after its start",
            started.elapsed()
        );
        ready_at.push(first.elapsed());
    }
    println!("ready after first start: {ready_at:?}");

    // Right after the last node became ready, a write through any node is
    // on every node within 1 s (node 0's queue to node 2 used to sit in a
    // backoff from before node 2 existed).
    let urls: Vec<String> = (0..3).map(|i| topo.url(i)).collect();
    for (i, u) in urls.iter().enumerate() {
        let h = format!("after-start-{i}");
        assert_eq!(post(u, "/discovery/register", &reg(&h)).await["code"], 0);
        let took = visible_everywhere(&urls, &h, Duration::from_secs(1)).await;
        println!("write through node {i} visible everywhere after {took:?}");
        assert!(
            took.is_some(),
            "write through node {i} not everywhere within 1 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_from_kill_9_gets_new_writes_at_once() {
    let (mut topo, urls) = started_in_order().await;
    topo.kill(1).await;
    // Writes while it is away fill node 0's queue to it and push it into
    // its longest backoff.
    for i in 0..30 {
        let h = format!("away-{i}");
        assert_eq!(
            post(&urls[0], "/discovery/register", &reg(&h)).await["code"],
            0
        );
        // Fixed: spreads the writes over 3 s, so that the retries back off.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    topo.restart(1).await.unwrap();
    assert!(topo.wait_node_ready(1, Duration::from_secs(8)).await);
    let ready = Instant::now();
    // What it missed came with its start-up sync ...
    let missed = hosts(&urls[1]).await;
    for i in 0..30 {
        assert!(
            missed.contains(&format!("away-{i}")),
            "away-{i} missing after the sync"
        );
    }
    // ... and a write made right after it returned reaches it at once.
    assert_eq!(
        post(&urls[0], "/discovery/register", &reg("back")).await["code"],
        0
    );
    let took = visible_everywhere(&urls, "back", Duration::from_secs(1)).await;
    println!(
        "write after return visible everywhere {took:?} after the write, {:?} after ready",
        ready.elapsed()
    );
    assert!(
        took.is_some(),
        "write after the return not on every node within 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_keeps_every_write_and_new_writes_reach_everyone_within_1s() {
    let (mut topo, urls) = started_in_order().await;
    let mut expected = BTreeSet::new();
    for round in 0..3 {
        let other = (round + 1) % 3;
        let h = format!("before-{round}");
        assert_eq!(
            post(&urls[other], "/discovery/register", &reg(&h)).await["code"],
            0
        );
        expected.insert(h);
        let p = topo.nodes[round].as_mut().expect("running");
        p.terminate().await.unwrap();
        topo.nodes[round] = None;
        topo.restart(round).await.unwrap();
        assert!(topo.wait_node_ready(round, Duration::from_secs(8)).await);
        let h = format!("after-{round}");
        assert_eq!(
            post(&urls[other], "/discovery/register", &reg(&h)).await["code"],
            0
        );
        let took = visible_everywhere(&urls, &h, Duration::from_secs(1)).await;
        println!("restart of node {round}: next write everywhere after {took:?}");
        assert!(
            took.is_some(),
            "after restarting node {round}, a write took over 1 s"
        );
        expected.insert(h);
    }
    for u in &urls {
        // Clients renew through the SDK; here the test renews nothing, so
        // compare before the lease (3 s) can expire anything.
        let have = hosts(u).await;
        assert!(
            expected.is_subset(&have),
            "{u}: {expected:?} not in {have:?}"
        );
    }
}

/// Node 0's clock lags by 2 s and node 2's leads by 2 s.
fn skewed() -> Layout {
    let with = |offset: &str| {
        FAST.replace(
            "[cluster]\n",
            &format!("[cluster]\nclock_offset = \"{offset}\"\n"),
        )
    };
    Layout::zones(&[("sh001", 3)])
        .toml(FAST)
        .node_toml(0, &with("-2s"))
        .node_toml(2, &with("2s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_register_through_a_lagging_node_after_a_cancel_is_kept_everywhere() {
    let topo = Topology::start(&skewed()).await;
    topo.wait_ready().await;
    let urls: Vec<String> = (0..3).map(|i| topo.url(i)).collect();
    // Registered and cancelled through the node whose clock leads.
    assert_eq!(
        post(&urls[2], "/discovery/register", &reg("x")).await["code"],
        0
    );
    assert!(
        visible_everywhere(&urls, "x", Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(
        post(&urls[2], "/discovery/cancel", &reg("x")).await["code"],
        0
    );
    testkit::wait_until(
        Duration::from_secs(2),
        "the cancel reached node 0",
        async || !hosts(&urls[0]).await.contains("x"),
    )
    .await;
    // Registered again through the node whose clock lags 4 s behind the
    // cancel's timestamp: its peers must not take it for a stale copy.
    assert_eq!(
        post(&urls[0], "/discovery/register", &reg("x")).await["code"],
        0
    );
    let took = visible_everywhere(&urls, "x", Duration::from_secs(1)).await;
    assert!(took.is_some(), "the re-register was refused by a peer");
    // Still there after renew repairs and ticks had their chance (fixed:
    // nothing is expected to happen).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for u in &urls {
        assert!(
            hosts(u).await.contains("x"),
            "{u} lost the re-registered instance"
        );
    }
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_register_wins_whatever_the_clocks_say() {
    let topo = Topology::start(&skewed()).await;
    topo.wait_ready().await;
    let urls: Vec<String> = (0..3).map(|i| topo.url(i)).collect();
    let with_version = |v: &str| format!("{}&version={v}", reg("y"));
    assert_eq!(
        post(&urls[2], "/discovery/register", &with_version("v1")).await["code"],
        0
    );
    assert!(
        visible_everywhere(&urls, "y", Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(
        post(&urls[0], "/discovery/register", &with_version("v2")).await["code"],
        0
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    'wait: loop {
        let mut versions = Vec::new();
        for u in &urls {
            let v = get(u, "/discovery/fetch?env=dev&appid=ops.svc&status=3")
                .await
                .unwrap();
            versions.push(v["data"]["instances"]["sh001"][0]["version"].clone());
        }
        if versions.iter().all(|v| v == "v2") {
            break 'wait;
        }
        assert!(
            Instant::now() < deadline,
            "versions after the later register: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_static_peer_stops_queueing_and_is_caught_up_when_it_returns() {
    let toml = FAST.replace(
        "[cluster]\n",
        "[cluster]\ndead_after = \"1s\"\nqueue_capacity = 50\n",
    );
    let mut topo = Topology::start(&Layout::zones(&[("sh001", 2)]).toml(&toml)).await;
    topo.wait_ready().await;
    let (u0, u1) = (topo.url(0), topo.url(1));
    let peer1 = topo.addr(1).to_string();
    let report = |s: &Value| {
        s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == peer1.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    topo.stop(1).await;
    // A minute of writes at production rates would overflow the queue; a
    // dead peer keeps none of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        assert_eq!(
            post(&u0, "/discovery/register", &reg(&format!("d{i}"))).await["code"],
            0
        );
        i += 1;
        let s = status(&u0).await;
        if report(&s)["dead"] == true && i >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "peer never declared dead: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = status(&u0).await;
    assert_eq!(
        report(&s)["queued"],
        0,
        "a dead peer's queue is dropped: {s}"
    );
    assert!(
        report(&s)["dropped"].as_u64().unwrap() > 0,
        "dropped writes are counted: {s}"
    );
    // One cancel while it is dead: the catch-up must carry it too.
    assert_eq!(post(&u0, "/discovery/cancel", &reg("d0")).await["code"], 0);

    topo.restart(1).await;
    topo.wait_ready().await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        let r = report(&status(&u0).await);
        if r["catch_ups"].as_u64() == Some(1) && r["dead"] == false {
            println!(
                "caught up in {} ms (catch-up itself), {:?} after the peer was ready",
                r["last_catch_up_ms"],
                back.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no catch-up: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let have = hosts(&u1).await;
    assert!(
        !have.contains("d0"),
        "the cancel reached the returning peer"
    );
    for k in 1..i {
        assert!(
            have.contains(&format!("d{k}")),
            "d{k} missing on the returning peer"
        );
    }
    topo.shutdown().await;
}
