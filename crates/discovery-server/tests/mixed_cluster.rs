//! One of our nodes in a cluster with a Go node: per-op form replication
//! both ways, and a cancel made on either side seen on the other. The Go
//! node is `testkit::go_double`, which takes the Go server's form posts;
//! what it sends to us is written the way a Go node writes it (one form per
//! write, `replication=true`, comma-joined addresses, its own timestamps).

use std::time::Duration;

use discovery_server::{config::Config, server};
use testkit::{
    FAST,
    go_double::{GoDouble, GoDoubleConfig},
    http::{get_json, post_form as post},
};
use tokio::net::TcpListener;

async fn until(what: &str, ok: impl AsyncFnMut() -> bool) -> Duration {
    testkit::wait_until(Duration::from_secs(3), what, ok).await
}

async fn hosts(base: &str, appid: &str) -> Vec<String> {
    let v = get_json(
        base,
        &format!("/discovery/fetch?env=dev&appid={appid}&status=3"),
    )
    .await;
    v["data"]["instances"]["sh001"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["hostname"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_and_a_go_node_replicate_both_ways() {
    let go = GoDouble::start(GoDoubleConfig {
        zone: "sh001".into(),
        ..Default::default()
    })
    .await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = l.local_addr().unwrap();
    let text = format!(
        "nodes = [\"{ours}\", \"{}\"]\n[env]\nzone = \"sh001\"\nhost = \"rust-node\"\nDeployEnv = \"dev\"\n[httpServer]\naddr = \"{ours}\"\n{FAST}",
        go.addr()
    );
    let node = server::start_on(Config::parse(&text).unwrap().0, l)
        .await
        .unwrap();
    node.wait_ready().await;
    let base = format!("http://{ours}");

    // Ours → Go: a client write on our node reaches the Go node as a form.
    let reg = "zone=sh001&env=dev&appid=mixed.svc&hostname=r1&status=1&addrs=grpc://r1:1&addrs=http://r1:2";
    assert_eq!(post(&base, "/discovery/register", reg).await["code"], 0);
    let took = until("register on the Go node", async || {
        go.registered("mixed.svc").contains(&"r1".to_string())
    })
    .await;
    println!("our register on the Go node after {took:?}");
    let cancel = "zone=sh001&env=dev&appid=mixed.svc&hostname=r1";
    assert_eq!(post(&base, "/discovery/cancel", cancel).await["code"], 0);
    until("cancel on the Go node", async || {
        !go.registered("mixed.svc").contains(&"r1".to_string())
    })
    .await;

    // Go → ours: what a Go node sends when a client registers, then
    // cancels, through it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let from_go = format!(
        "zone=sh001&env=dev&appid=mixed.svc&hostname=g1&status=1&addrs=grpc://g1:1,http://g1:2&version=v1&metadata=&replication=true&reg_timestamp={now}&dirty_timestamp={now}&latest_timestamp={now}"
    );
    assert_eq!(
        post(&base, "/discovery/register", &from_go).await["code"],
        0
    );
    assert_eq!(hosts(&base, "mixed.svc").await, ["g1"]);
    let v = get_json(&base, "/discovery/fetch?env=dev&appid=mixed.svc&status=1").await;
    assert_eq!(
        v["data"]["instances"]["sh001"][0]["addrs"],
        serde_json::json!(["grpc://g1:1", "http://g1:2"]),
        "a Go peer's comma-joined addresses are split"
    );
    let go_cancel = format!(
        "zone=sh001&env=dev&appid=mixed.svc&hostname=g1&replication=true&latest_timestamp={}",
        now + 1_000_000
    );
    assert_eq!(
        post(&base, "/discovery/cancel", &go_cancel).await["code"],
        0
    );
    assert!(hosts(&base, "mixed.svc").await.is_empty());

    // The Go node's own record made it a member of ours.
    let nodes = get_json(&base, "/discovery/nodes").await;
    assert!(
        nodes["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["addr"] == go.addr().to_string()),
        "{nodes}"
    );
    node.shutdown().await;
    go.shutdown().await;
}
