//! `[auth]` (docs/protocol.md#authentication): off by default; when on, writes without the right
//! token get `-401` and change nothing.

mod common;

use axum::body::Body;
use common::Harness;
use http::Request;

const AUTH: &str =
    "[auth]\nwrite_token = \"w-tok\"\nadmin_token = \"a-tok\"\npeer_token = \"p-tok\"\n";
const REG: &str = "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=1&addrs=grpc://h1:9000";

/// A peer's proof: the signature of the request with the cluster secret.
fn signed(method: &str, path: &str, body: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    discovery_server::auth::sign(
        &discovery_server::auth::Secret::new("p-tok"),
        method,
        path,
        body.as_bytes(),
        i64::try_from(now).unwrap(),
        u128::from(now as u64) << 8 | u128::from(path.len() as u8),
    )
}

async fn post_signed(h: &Harness, path: &str, form: &str) -> common::Resp {
    let req = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-discovery-signature", signed("POST", path, form));
    h.send(req.body(Body::from(form.to_string())).unwrap())
        .await
}

async fn post_with(h: &Harness, path: &str, form: &str, auth: Option<&str>) -> common::Resp {
    let mut req = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    h.send(req.body(Body::from(form.to_string())).unwrap())
        .await
}

#[tokio::test]
async fn open_by_default() {
    let h = Harness::new();
    assert_eq!(
        post_with(&h, "/discovery/register", REG, None).await.code(),
        0
    );
}

#[tokio::test]
async fn writes_need_the_write_token() {
    let h = Harness::from_toml(AUTH);
    let r = post_with(&h, "/discovery/register", REG, None).await;
    assert_eq!(
        r.body,
        r#"{"code":-401,"message":"unauthorized: write token required","ttl":1}"#
    );
    let r = post_with(&h, "/discovery/register", REG, Some("Bearer wrong")).await;
    assert_eq!(r.code(), -401);
    assert_eq!(h.api.registry().len(), 0, "nothing stored");
    assert_eq!(
        post_with(&h, "/discovery/register", REG, Some("Bearer w-tok"))
            .await
            .code(),
        0
    );
    // Go clients cannot set headers: the token may come as a parameter.
    let renew = "zone=sh001&env=dev&appid=demo.svc&hostname=h1&token=w-tok";
    assert_eq!(
        post_with(&h, "/discovery/renew", renew, None).await.code(),
        0
    );
    // Basic auth: the password is the token.
    let basic = "Basic dXNlcjp3LXRvaw=="; // user:w-tok
    let cancel = "zone=sh001&env=dev&appid=demo.svc&hostname=h1";
    assert_eq!(
        post_with(&h, "/discovery/cancel", cancel, None)
            .await
            .code(),
        -401
    );
    assert_eq!(
        post_with(&h, "/discovery/cancel", cancel, Some(basic))
            .await
            .code(),
        0
    );
}

#[tokio::test]
async fn replication_flags_do_not_bypass_the_tokens() {
    let h = Harness::from_toml(AUTH);
    let peer = format!("{REG}&replication=true");
    assert_eq!(
        post_with(&h, "/discovery/register", &peer, Some("Bearer w-tok"))
            .await
            .code(),
        -401
    );
    // The peer secret in clear is no proof; its signature is.
    assert_eq!(
        post_with(&h, "/discovery/register", &peer, Some("Bearer p-tok"))
            .await
            .code(),
        -401
    );
    assert_eq!(
        post_signed(&h, "/discovery/register", &peer).await.code(),
        0
    );
    let z = format!("{REG}&from_zone=true");
    assert_eq!(
        post_with(&h, "/discovery/register", &z, None).await.code(),
        -401
    );
}

#[tokio::test]
async fn set_needs_the_admin_token_and_fetch_all_the_peer_token() {
    let h = Harness::from_toml(AUTH);
    post_with(&h, "/discovery/register", REG, Some("Bearer w-tok")).await;
    let set = "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=2";
    let r = post_with(&h, "/discovery/set", set, Some("Bearer w-tok")).await;
    assert_eq!(r.code(), -401);
    assert!(r.body.contains("admin token"));
    assert_eq!(
        post_with(&h, "/discovery/set", set, Some("Bearer a-tok"))
            .await
            .code(),
        0
    );

    assert_eq!(h.get("/discovery/fetch/all").await.code(), -401);
    let clear = h
        .send(
            Request::get("/discovery/fetch/all")
                .header("authorization", "Bearer p-tok")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(clear.code(), -401);
    let ok = h
        .send(
            Request::get("/discovery/fetch/all")
                .header(
                    "x-discovery-signature",
                    signed("GET", "/discovery/fetch/all", ""),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(ok.code(), 0);
    // Other reads stay open.
    assert_eq!(
        h.get("/discovery/fetch?env=dev&appid=demo.svc&status=3")
            .await
            .code(),
        0
    );
}

#[tokio::test]
async fn trusted_networks_need_no_write_token() {
    let cfg = discovery_server::config::Config::parse(
        "[auth]\nwrite_token = \"w\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n",
    )
    .unwrap()
    .0;
    let node = discovery_server::server::start(cfg, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let r = testkit::http::post_form(
        &format!("http://{}", node.addr()),
        "/discovery/register",
        REG,
    )
    .await;
    assert_eq!(r["code"], 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tokens_replicates() {
    let layout = testkit::Layout::zones(&[("sh001", 2)])
        .toml(testkit::FAST)
        .toml(AUTH);
    let topo = testkit::Topology::start(&layout).await;
    topo.wait_ready().await;
    let r: serde_json::Value = testkit::http::send_json(
        reqwest::Client::new()
            .post(format!("{}/discovery/register", topo.url(0)))
            .header("content-type", "application/x-www-form-urlencoded")
            .bearer_auth("w-tok")
            .body(REG),
    )
    .await;
    assert_eq!(r["code"], 0);
    let key = discovery_server::registry::InstanceKey::new("dev", "demo.svc", "sh001", "h1");
    testkit::wait_until(
        std::time::Duration::from_secs(3),
        "replicated with the peer token",
        async || topo.node(1).registry().get(&key).is_some(),
    )
    .await;
    topo.shutdown().await;
}
