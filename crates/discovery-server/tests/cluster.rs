//! A replicated cluster in one process: writes on
//! any node reach the others, late nodes sync before serving, nodes started
//! together form one cluster, zones forward once.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{FAST, Layout, Topology, wait_until};

use testkit::http::{get_json as get, post_form as post};

fn reg_form(host: &str) -> String {
    format!(
        "zone=sh001&env=dev&appid=demo.svc&hostname={host}&status=1&addrs=grpc://{host}:9000&addrs=http://{host}:8000&version=v1&metadata=%7B%22weight%22%3A%2220%22%7D"
    )
}

/// The instance `host` of demo.svc as node `base` has it.
async fn instance(base: &str, host: &str) -> Option<Value> {
    let v = get(base, "/discovery/fetch?env=dev&appid=demo.svc&status=3").await;
    v["data"]["instances"]
        .as_object()?
        .values()
        .flat_map(|z| z.as_array().unwrap().iter())
        .find(|i| i["hostname"] == host)
        .cloned()
}

/// Waits until every node holds the `infra.discovery` record of each of
/// the `topo.len()` nodes: the writes of the start-up have landed.
async fn wait_node_records(topo: &Topology) {
    for i in 0..topo.len() {
        let url = topo.url(i);
        wait_until(
            Duration::from_secs(5),
            "every node record everywhere",
            async || {
                let v = get(
                    &url,
                    "/discovery/fetch?env=dev&appid=infra.discovery&status=3",
                )
                .await;
                v["data"]["instances"].as_object().map_or(0, |zones| {
                    zones
                        .values()
                        .filter_map(Value::as_array)
                        .map(Vec::len)
                        .sum::<usize>()
                }) == topo.len()
            },
        )
        .await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c50_c51_writes_on_any_node_reach_the_others_intact() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    let mut delays = Vec::new();
    for i in 0..30 {
        let origin = i % 3;
        let host = format!("h{i}");
        let r = post(&topo.url(origin), "/discovery/register", &reg_form(&host)).await;
        assert_eq!(r["code"], 0);
        let written = Instant::now();
        for other in (0..3).filter(|o| *o != origin) {
            let url = topo.url(other);
            wait_until(Duration::from_secs(2), "register replicated", || {
                let (url, host) = (url.clone(), host.clone());
                async move { instance(&url, &host).await.is_some() }
            })
            .await;
        }
        delays.push(written.elapsed());
        // A multi-address instance keeps both addresses on every peer.
        for n in 0..3 {
            let ins = instance(&topo.url(n), &host).await.unwrap();
            assert_eq!(
                ins["addrs"],
                serde_json::json!([format!("grpc://{host}:9000"), format!("http://{host}:8000")])
            );
            assert_eq!(ins["metadata"]["weight"], "20");
        }
    }
    delays.sort();
    println!(
        "replication delay (write acknowledged → visible on both peers): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );

    // Dirty timestamps agree everywhere.
    let dirty = |v: Value| v["dirty_timestamp"].as_i64().unwrap();
    let d0 = dirty(instance(&topo.url(0), "h0").await.unwrap());
    for n in 1..3 {
        assert_eq!(dirty(instance(&topo.url(n), "h0").await.unwrap()), d0);
    }

    // Renew replicates: the peers' renew_timestamp moves.
    let before = instance(&topo.url(2), "h1").await.unwrap()["renew_timestamp"]
        .as_i64()
        .unwrap();
    // Fixed: the clock must move past `before` for the renew to show.
    tokio::time::sleep(Duration::from_millis(5)).await;
    post(
        &topo.url(0),
        "/discovery/renew",
        "zone=sh001&env=dev&appid=demo.svc&hostname=h1",
    )
    .await;
    let url2 = topo.url(2);
    wait_until(Duration::from_secs(2), "renew replicated", || {
        let url = url2.clone();
        async move {
            instance(&url, "h1").await.unwrap()["renew_timestamp"]
                .as_i64()
                .unwrap()
                > before
        }
    })
    .await;

    // Cancel replicates.
    post(
        &topo.url(1),
        "/discovery/cancel",
        "zone=sh001&env=dev&appid=demo.svc&hostname=h2",
    )
    .await;
    for n in [0, 2] {
        let url = topo.url(n);
        wait_until(Duration::from_secs(2), "cancel replicated", || {
            let url = url.clone();
            async move { instance(&url, "h2").await.is_none() }
        })
        .await;
    }
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_replicates_and_wakes_pollers_on_every_node() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    post(&topo.url(0), "/discovery/register", &reg_form("s1")).await;
    for n in 0..3 {
        let url = topo.url(n);
        wait_until(Duration::from_secs(2), "registered", || {
            let url = url.clone();
            async move { instance(&url, "s1").await.is_some() }
        })
        .await;
    }
    // One held poll per node.
    let mut polls = Vec::new();
    for n in 0..3 {
        let url = topo.url(n);
        let t = get(&url, "/discovery/fetch?env=dev&appid=demo.svc&status=3").await["data"]["latest_timestamp"].as_i64().unwrap();
        polls.push(tokio::spawn(async move {
            get(
                &url,
                &format!("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp={t}"),
            )
            .await
        }));
    }
    for n in 0..3 {
        wait_until(Duration::from_secs(3), "the poll parked", async || {
            topo.node(n).registry().parked_polls() == 1
        })
        .await;
    }
    let r = post(
        &topo.url(1),
        "/discovery/set",
        "zone=sh001&env=dev&appid=demo.svc&hostname=s1&status=2",
    )
    .await;
    assert_eq!(r["code"], 0);
    for p in polls {
        let v = tokio::time::timeout(Duration::from_secs(3), p)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(v["code"], 0, "{v}");
        // The set made the app all-waiting: UP list empty.
        assert_eq!(
            v["data"]["demo.svc"]["instances"]["sh001"],
            serde_json::json!([])
        );
    }
    for n in 0..3 {
        assert_eq!(instance(&topo.url(n), "s1").await.unwrap()["status"], 2);
    }
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c53_a_late_node_syncs_everything_before_it_serves() {
    let mut topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    topo.stop(2).await;
    for i in 0..50 {
        post(
            &topo.url(i % 2),
            "/discovery/register",
            &reg_form(&format!("late{i}")),
        )
        .await;
    }
    topo.restart(2).await;
    // From its first served read, the new node has everything.
    let url = topo.url(2);
    let mut v = Value::Null;
    wait_until(
        Duration::from_secs(10),
        "the late node serves reads",
        async || {
            v = get(&url, "/discovery/fetch?env=dev&appid=demo.svc&status=3").await;
            v["code"] != -500
        },
    )
    .await;
    assert_eq!(v["code"], 0);
    let n = v["data"]["instances"]["sh001"].as_array().unwrap().len();
    assert_eq!(n, 50, "first served read holds every instance");
    topo.wait_ready().await;
    let all = |v: Value| {
        let mut keys: Vec<(String, i64)> = v["data"]["demo.svc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["hostname"].as_str().unwrap().to_string(),
                    i["dirty_timestamp"].as_i64().unwrap(),
                )
            })
            .collect();
        keys.sort();
        keys
    };
    let a = all(get(&topo.url(0), "/discovery/fetch/all").await);
    assert_eq!(a, all(get(&topo.url(1), "/discovery/fetch/all").await));
    assert_eq!(a, all(get(&topo.url(2), "/discovery/fetch/all").await));
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c56_c57_three_nodes_started_at_once_form_one_cluster() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    let started = Instant::now();
    topo.wait_ready().await;
    for n in 0..3 {
        let url = topo.url(n);
        wait_until(Duration::from_secs(5), "three UP nodes", || {
            let url = url.clone();
            async move {
                let v = get(&url, "/discovery/nodes").await;
                let nodes = v["data"].as_array().cloned().unwrap_or_default();
                nodes.len() == 3 && nodes.iter().all(|n| n["status"] == 0)
            }
        })
        .await;
        // Every node is an infra.discovery instance on every node.
        let v = get(
            &url,
            "/discovery/fetch?env=dev&appid=infra.discovery&status=1",
        )
        .await;
        let mut addrs: Vec<String> = v["data"]["instances"]["sh001"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["addrs"][0].as_str().unwrap().to_string())
            .collect();
        addrs.sort();
        let mut want: Vec<String> = (0..3).map(|i| format!("http://{}", topo.addr(i))).collect();
        want.sort();
        assert_eq!(addrs, want);
    }
    println!("one cluster of 3 after {:?}", started.elapsed());
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c54_renew_repairs_a_missing_copy_and_adopts_a_newer_one() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 2)]).toml(FAST)).await;
    topo.wait_ready().await;
    use discovery_server::registry::{InstanceKey, RegisterOptions};
    let ins = naming::Instance {
        zone: "sh001".into(),
        env: "dev".into(),
        appid: "demo.svc".into(),
        hostname: "only-a".into(),
        addrs: vec!["grpc://a:1".into()],
        status: naming::Status::Up,
        ..Default::default()
    };
    // Present on node 0 only (as if its replication had been lost).
    topo.node(0)
        .registry()
        .register(ins.clone(), RegisterOptions::default(), now());
    assert!(instance(&topo.url(1), "only-a").await.is_none());
    post(
        &topo.url(0),
        "/discovery/renew",
        "zone=sh001&env=dev&appid=demo.svc&hostname=only-a",
    )
    .await;
    let url1 = topo.url(1);
    wait_until(Duration::from_secs(3), "repaired by register", || {
        let url = url1.clone();
        async move { instance(&url, "only-a").await.is_some() }
    })
    .await;

    // Node 1 holds a newer copy; node 0's next renew adopts it.
    let mut newer = ins.clone();
    newer.version = "v2".into();
    topo.node(1).registry().register(
        newer,
        RegisterOptions {
            dirty_timestamp: now() + 1_000_000_000,
            ..Default::default()
        },
        now(),
    );
    post(
        &topo.url(0),
        "/discovery/renew",
        "zone=sh001&env=dev&appid=demo.svc&hostname=only-a",
    )
    .await;
    let key = InstanceKey::new("dev", "demo.svc", "sh001", "only-a");
    let n0 = topo.node(0);
    wait_until(Duration::from_secs(3), "newer copy adopted", || {
        let v = n0.registry().get(&key).map(|i| i.version);
        async move { v.as_deref() == Some("v2") }
    })
    .await;
    topo.shutdown().await;
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c55_a_write_crosses_to_another_zone_once() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 2), ("sh002", 2)]).toml(FAST)).await;
    topo.wait_ready().await;
    // Let start-up traffic land, then count registers per node.
    wait_node_records(&topo).await;
    let count = |i: usize| topo.node(i).api().requests("/discovery/register");
    let before: Vec<u64> = (0..4).map(count).collect();
    post(&topo.url(0), "/discovery/register", &reg_form("x1")).await;
    for n in 0..4 {
        let url = topo.url(n);
        wait_until(Duration::from_secs(3), "visible in both zones", || {
            let url = url.clone();
            async move { instance(&url, "x1").await.is_some() }
        })
        .await;
    }
    // Fixed: time for a second, wrong copy of the write to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deltas: Vec<u64> = (0..4).map(|i| count(i) - before[i]).collect();
    assert_eq!(deltas, [1, 1, 1, 1], "each node got the write exactly once");
    // Nodes list their own zone only.
    let v = get(&topo.url(2), "/discovery/nodes").await;
    let zones: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["sh002", "sh002"]);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c58_c59_membership_follows_infra_discovery_and_shutdown_cancels_only_own_record() {
    let mut topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    post(&topo.url(2), "/discovery/register", &reg_form("client1")).await;
    let url0 = topo.url(0);
    wait_until(Duration::from_secs(2), "client replicated", || {
        let url = url0.clone();
        async move { instance(&url, "client1").await.is_some() }
    })
    .await;
    topo.stop(2).await;
    let gone = topo.addr(2).to_string();
    for n in 0..2 {
        let url = topo.url(n);
        let gone = gone.clone();
        wait_until(Duration::from_secs(3), "stopped node leaves /nodes", || {
            let (url, gone) = (url.clone(), gone.clone());
            async move {
                let v = get(&url, "/discovery/nodes").await;
                !v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["addr"] == gone.as_str())
            }
        })
        .await;
        assert!(
            instance(&topo.url(n), "client1").await.is_some(),
            "client instances stay"
        );
    }
    topo.restart(2).await;
    topo.wait_ready().await;
    let url0 = topo.url(0);
    let t = wait_until(
        Duration::from_secs(3),
        "restarted node listed again",
        || {
            let (url, back) = (url0.clone(), gone.clone());
            async move {
                let v = get(&url, "/discovery/nodes").await;
                v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["addr"] == back.as_str())
            }
        },
    )
    .await;
    println!("restarted node listed again after {t:?}");
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_of_another_zone_is_replaced_by_its_sibling() {
    let mut topo = Topology::start(&Layout::zones(&[("sh001", 2), ("sh002", 2)]).toml(FAST)).await;
    topo.wait_ready().await;
    // Whichever sh002 node node 0 would use first, one of them is gone.
    topo.stop(2).await;
    post(&topo.url(0), "/discovery/register", &reg_form("across")).await;
    let url3 = topo.url(3);
    wait_until(
        Duration::from_secs(5),
        "reached the surviving node of sh002",
        || {
            let url = url3.clone();
            async move { instance(&url, "across").await.is_some() }
        },
    )
    .await;
    let status = get(&topo.url(0), "/status").await;
    assert_eq!(status["node"]["phase"], "Serving");
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "zone:sh002")
    );
    assert!(status["protection"]["expected"].as_i64().is_some());
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_replicated_in_batches_between_our_nodes() {
    let topo = Topology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    // Peers learn that the others take batches from their records.
    wait_node_records(&topo).await;
    let n = 400;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let url = topo.url(0);
            tokio::spawn(async move {
                post(&url, "/discovery/register", &reg_form(&format!("b{i}"))).await
            })
        })
        .collect();
    for w in writes {
        assert_eq!(w.await.unwrap()["code"], 0);
    }
    for peer in 1..3 {
        let url = topo.url(peer);
        wait_until(Duration::from_secs(10), "every write replicated", || {
            let url = url.clone();
            async move {
                let v = get(&url, "/discovery/fetch?env=dev&appid=demo.svc&status=3").await;
                v["data"]["instances"]["sh001"]
                    .as_array()
                    .map_or(0, Vec::len)
                    == n
            }
        })
        .await;
        let api = topo.node(peer).api();
        let batches = api.requests("/discovery/replicate");
        let single = api.requests("/discovery/register");
        println!("peer {peer}: {batches} batches and {single} single registers carried {n} writes");
        assert!(batches > 0, "batching was used");
        assert!(batches + single < n as u64, "fewer requests than writes");
    }
    topo.shutdown().await;
}
