//! Peer membership that clients cannot forge, and bounded remembered
//! cancels.
//!
//! `infra.discovery` records are both the cluster's membership and the node
//! list every SDK discovers: a client must not be able to write them, and a
//! peer-marked record is used only once its address has proven to be a
//! discovery node holding that record.

use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use discovery_server::{
    config::Config,
    server::{self, ServerHandle},
};
use serde_json::{Value, json};
use testkit::{
    FAST,
    http::{get_json, get_metric, post_form as post},
    wait_until,
};
use tokio::net::TcpListener;

async fn node(extra: &str, nodes: &[&str], listener: TcpListener) -> ServerHandle {
    let addr = listener.local_addr().unwrap();
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "nodes = [{}]\n[env]\nzone = \"sh001\"\nhost = \"node-{}\"\nDeployEnv = \"dev\"\n[httpServer]\naddr = \"{addr}\"\n{FAST}{extra}",
        list.join(", "),
        addr.port()
    );
    let cfg = Config::parse(&text).expect("valid config").0;
    let n = server::start_on(cfg, listener).await.expect("starts");
    n.wait_ready().await;
    n
}

async fn lone(extra: &str) -> ServerHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    node(extra, &[&a], l).await
}

/// Addresses in the node's `infra.discovery` records, as SDKs see them.
async fn served_nodes(base: &str) -> Vec<String> {
    let v = get_json(
        base,
        "/discovery/fetch?env=dev&appid=infra.discovery&status=3",
    )
    .await;
    let mut out: Vec<String> = v["data"]["instances"]
        .as_object()
        .into_iter()
        .flat_map(|z| z.values())
        .filter_map(Value::as_array)
        .flatten()
        .flat_map(|i| i["addrs"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

async fn listed_nodes(base: &str) -> Vec<String> {
    get_json(base, "/discovery/nodes").await["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .collect()
}

fn record(host: &str, addrs: &[String], marker: &str) -> String {
    let mut form =
        format!("zone=sh001&env=dev&appid=infra.discovery&hostname={host}&status=1{marker}");
    for a in addrs {
        form.push_str(&format!("&addrs={a}"));
    }
    form
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_write_infra_discovery() {
    let n = lone("").await;
    let base = format!("http://{}", n.addr());
    let before = served_nodes(&base).await;
    let forged: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();

    let r = post(&base, "/discovery/register", &record("evil", &forged, "")).await;
    assert_eq!(r["code"], -400, "{r}");
    assert!(r["message"].as_str().unwrap().contains("reserved"), "{r}");
    // Nor take a node out, or mark it down.
    let own = format!(
        "zone=sh001&env=dev&appid=infra.discovery&hostname=node-{}",
        n.addr().port()
    );
    assert_eq!(post(&base, "/discovery/cancel", &own).await["code"], -400);
    assert_eq!(
        post(&base, "/discovery/set", &format!("{own}&status=2")).await["code"],
        -400
    );

    assert_eq!(served_nodes(&base).await, before);
    assert_eq!(listed_nodes(&base).await, vec![n.addr().to_string()]);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_record_of_no_node_is_never_served_and_is_dropped_after_a_lease() {
    let n = lone("").await;
    let base = format!("http://{}", n.addr());
    let forged: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();
    let r = post(
        &base,
        "/discovery/register",
        &record("evil", &forged, "&replication=true"),
    )
    .await;
    assert_eq!(r["code"], 0, "held, as the sending peer expects");
    assert_eq!(get_metric(&base, "discovery_peer_candidates").await, 1.0);
    // Never served, never a replication target.
    for _ in 0..10 {
        assert_eq!(
            served_nodes(&base).await,
            vec![format!("http://{}", n.addr())]
        );
        assert_eq!(listed_nodes(&base).await, vec![n.addr().to_string()]);
        let status = get_json(&base, "/status").await;
        assert_eq!(status["peers"], json!([]), "{status}");
        // Fixed: a second of checks that it stays out.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dropped once its lease (3 s here) passed without a handshake.
    wait_until(
        Duration::from_secs(8),
        "the failed record dropped",
        async || get_metric(&base, "discovery_peer_candidates").await == 0.0,
    )
    .await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_records_are_bounded_by_max_peers() {
    let n = lone("[limits]\nmax_peers = 2\n").await;
    let base = format!("http://{}", n.addr());
    for i in 0..2 {
        let a = vec![format!("http://127.0.0.1:{}", 10 + i)];
        let r = post(
            &base,
            "/discovery/register",
            &record(&format!("h{i}"), &a, "&replication=true"),
        )
        .await;
        assert_eq!(r["code"], 0);
    }
    let a = vec!["http://127.0.0.1:12".to_string()];
    let r = post(
        &base,
        "/discovery/register",
        &record("h2", &a, "&replication=true"),
    )
    .await;
    assert_eq!(r["code"], -400, "{r}");
    assert!(r["message"].as_str().unwrap().contains("max_peers"), "{r}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_from_the_static_list_is_verified_then_learned() {
    // A knows only itself; B lists both, so B's self-registration reaches
    // A as a peer-marked record of an address A was never told about.
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (
        la.local_addr().unwrap().to_string(),
        lb.local_addr().unwrap().to_string(),
    );
    let a = node("", &[&aa], la).await;
    let b = node("", &[&aa, &ab], lb).await;
    let base = format!("http://{aa}");
    wait_until(Duration::from_secs(3), "A learns B", async || {
        listed_nodes(&base).await.contains(&ab)
    })
    .await;
    assert!(served_nodes(&base).await.contains(&format!("http://{ab}")));
    // And A now replicates to B.
    let w = "zone=sh001&env=dev&appid=p.svc&hostname=h&status=1&addrs=grpc://h:1";
    assert_eq!(post(&base, "/discovery/register", w).await["code"], 0);
    let b_url = format!("http://{ab}");
    wait_until(Duration::from_secs(2), "A replicates to B", async || {
        get_json(&b_url, "/discovery/fetch?env=dev&appid=p.svc&status=1").await["code"] == 0
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}

fn json_reply(v: Value) -> ([(http::HeaderName, &'static str); 1], String) {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

/// Answers `fetch` of `infra.discovery` the way a Go node does, holding a
/// record of `hostname` at its own address.
async fn go_node_stand_in(hostname: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let own = addr.clone();
    let app = Router::new()
        .route(
            "/discovery/fetch",
            get(
                move |Query(q): Query<std::collections::HashMap<String, String>>| {
                    let own = own.clone();
                    async move {
                        assert_eq!(q.get("appid").map(String::as_str), Some("infra.discovery"));
                        json_reply(json!({
                            "code": 0, "message": "0", "ttl": 1,
                            "data": {
                                "instances": {"sh001": [{
                                    "region": "", "zone": "sh001", "env": q["env"],
                                    "appid": "infra.discovery", "hostname": hostname,
                                    "addrs": [format!("http://{own}")], "version": "",
                                    "metadata": null, "status": 1,
                                    "reg_timestamp": 1, "up_timestamp": 1,
                                    "renew_timestamp": 1, "dirty_timestamp": 1,
                                    "latest_timestamp": 1
                                }]},
                                "latest_timestamp": 1
                            }
                        }))
                    }
                },
            ),
        )
        .fallback(|| async { json_reply(json!({"code": 0, "message": "0"})) });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_node_passes_the_handshake_unmodified_and_an_impostor_does_not() {
    let n = lone("").await;
    let base = format!("http://{}", n.addr());
    let go = go_node_stand_in("go-node-1").await;
    let r = post(
        &base,
        "/discovery/register",
        &record("go-node-1", &[format!("http://{go}")], "&replication=true"),
    )
    .await;
    assert_eq!(r["code"], 0);
    wait_until(Duration::from_secs(3), "the Go node learned", async || {
        listed_nodes(&base).await.contains(&go)
    })
    .await;

    // A server that answers like a node but holds another record.
    let other = go_node_stand_in("someone-else").await;
    let r = post(
        &base,
        "/discovery/register",
        &record(
            "impostor",
            &[format!("http://{other}")],
            "&replication=true",
        ),
    )
    .await;
    assert_eq!(r["code"], 0);
    // Fixed: time for a (wrong) handshake to make it a peer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!listed_nodes(&base).await.contains(&other));
    assert!(
        !served_nodes(&base)
            .await
            .contains(&format!("http://{other}"))
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_of_unknown_keys_cost_nothing_and_remembered_cancels_are_capped() {
    let n = lone("[limits]\nmax_tombstones = 500\n").await;
    let base = format!("http://{}", n.addr());
    let http = reqwest::Client::new();
    let target = base.clone();
    let send = move |path: &'static str, form: String| {
        let http = http.clone();
        let target = target.clone();
        async move {
            let v: Value = testkit::http::send_json(
                http.post(format!("{target}{path}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form),
            )
            .await;
            v["code"].as_i64().unwrap()
        }
    };
    // Random keys that never existed: nothing to remember.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let f = format!("zone=z&env=dev&appid=rand{t}x{i}&hostname=h{i}");
                assert_eq!(send("/discovery/cancel", f).await, -404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 0.0);
    // Instances that existed and were cancelled: remembered, up to the cap,
    // and so are the emptied apps.
    for i in 0..1500 {
        let k = format!("zone=z&env=dev&appid=gone{i}&hostname=h");
        assert_eq!(
            send(
                "/discovery/register",
                format!("{k}&status=1&addrs=grpc://h:1")
            )
            .await,
            0
        );
        assert_eq!(send("/discovery/cancel", k).await, 0);
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 500.0);
    assert_eq!(
        get_metric(&base, "discovery_tombstones_evicted_total").await,
        1000.0
    );
    assert!(get_metric(&base, "discovery_emptied_apps").await <= 500.0);
    // A peer's cancel of an unknown key is remembered (the instance may
    // still be on its way), within the same cap.
    for i in 0..600 {
        let f = format!("zone=z&env=dev&appid=peer{i}&hostname=h&replication=true");
        send("/discovery/cancel", f).await;
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 500.0);
    n.shutdown().await;
}
