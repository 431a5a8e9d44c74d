//! The Go-server double keeps the Go registry's long-poll rules: these pin
//! them at the HTTP level, so SDK tests against it mean what they say.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::go_double::{GoDouble, GoDoubleConfig};

async fn start(hold_ms: u64) -> GoDouble {
    GoDouble::start(GoDoubleConfig {
        hold: Duration::from_millis(hold_ms),
        ..Default::default()
    })
    .await
}

fn base(go: &GoDouble) -> String {
    format!("http://{}", go.addr())
}

async fn post(go: &GoDouble, path: &str, form: &str) -> Value {
    testkit::http::post_form(&base(go), path, form).await
}

async fn register(go: &GoDouble, appid: &str, host: &str) -> Value {
    post(
        go,
        "/discovery/register",
        &format!(
            "region=region01&zone=zone01&env=dev&appid={appid}&hostname={host}&addrs=grpc://127.0.0.1:9000&status=1"
        ),
    )
    .await
}

async fn cancel(go: &GoDouble, appid: &str, host: &str) -> Value {
    post(
        go,
        "/discovery/cancel",
        &format!("region=region01&zone=zone01&env=dev&appid={appid}&hostname={host}"),
    )
    .await
}

/// A `polls` request; `apps` = (appid, latest_timestamp).
fn poll(
    go: &GoDouble,
    host: &str,
    apps: &[(&str, i64)],
) -> tokio::task::JoinHandle<(Value, Duration)> {
    let mut url = format!("{}/discovery/polls?env=dev&hostname={host}", base(go));
    for (a, t) in apps {
        url.push_str(&format!("&appid={a}&latest_timestamp={t}"));
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        (v, start.elapsed())
    })
}

async fn latest(go: &GoDouble, appid: &str) -> i64 {
    let v = testkit::http::get_json(
        &base(go),
        &format!("/discovery/fetch?zone=zone01&env=dev&appid={appid}&status=1"),
    )
    .await;
    v["data"]["latest_timestamp"].as_i64().unwrap()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    testkit::wait_until(Duration::from_secs(5), what, async || cond()).await;
}

#[tokio::test]
async fn envelope_shapes_and_errors() {
    let go = start(300).await;
    assert_eq!(register(&go, "a.svc", "p1").await["code"], 0);
    // Status 0: the Go handler writes nothing at all.
    let r = reqwest::Client::new()
        .post(format!("{}/discovery/register", base(&go)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("zone=zone01&env=dev&appid=a.svc&hostname=p2&addrs=x://a:1&status=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().is_empty());
    // Immediate answer: changed apps only, unknown ones under error."-404".
    let (v, _) = poll(&go, "c", &[("a.svc", 0), ("ghost.svc", 0)])
        .await
        .unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["message"], "0");
    assert!(v["data"]["a.svc"]["instances"]["zone01"].is_array());
    assert_eq!(v["error"]["-404"], serde_json::json!(["ghost.svc"]));
    let ts = v["data"]["a.svc"]["latest_timestamp"].as_i64().unwrap();
    let (v, _) = poll(&go, "c", &[("a.svc", 0)]).await.unwrap();
    assert!(v["error"]["-404"].is_null());
    // Hold end: -304, no data.
    let (v, took) = poll(&go, "c", &[("a.svc", ts)]).await.unwrap();
    assert_eq!(
        (v["code"].as_i64(), v["message"].as_str()),
        (Some(-304), Some("-304"))
    );
    assert!(v.get("data").is_none());
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // An unknown app alone is not an error: it holds.
    let (v, _) = poll(&go, "c", &[("ghost.svc", 0)]).await.unwrap();
    assert_eq!(v["code"], -304);
    // Unpaired appid / latest_timestamp.
    let v = testkit::http::get_json(
        &base(&go),
        "/discovery/polls?env=dev&hostname=c&appid=a.svc&appid=b.svc&latest_timestamp=0",
    )
    .await;
    assert_eq!(v["code"], -400);
    // fetchs omits unknown apps.
    let v = testkit::http::get_json(
        &base(&go),
        "/discovery/fetchs?env=dev&appid=a.svc&appid=ghost.svc&status=1",
    )
    .await;
    assert_eq!(v["code"], 0);
    assert_eq!(v["data"].as_object().unwrap().len(), 1);
    go.shutdown().await;
}

#[tokio::test]
async fn a_smaller_timeout_header_shortens_the_hold() {
    let go = start(30_000).await;
    register(&go, "a.svc", "p1").await;
    let ts = latest(&go, "a.svc").await;
    let url = format!(
        "{}/discovery/polls?env=dev&hostname=c&appid=a.svc&latest_timestamp={ts}",
        base(&go)
    );
    let start = Instant::now();
    let v: Value = testkit::http::send_json(
        reqwest::Client::new()
            .get(url)
            .header("x1-bmspy-timeout", "200"),
    )
    .await;
    assert_eq!(v["code"], -304);
    assert!(start.elapsed() < Duration::from_secs(5));
    go.shutdown().await;
}

#[tokio::test]
async fn renew_neither_wakes_nor_raises_the_timestamp() {
    let go = start(400).await;
    register(&go, "a.svc", "p1").await;
    let ts = latest(&go, "a.svc").await;
    let held = poll(&go, "c", &[("a.svc", ts)]);
    until("held", || go.held_polls() == 1).await;
    let v = post(
        &go,
        "/discovery/renew",
        "zone=zone01&env=dev&appid=a.svc&hostname=p1",
    )
    .await;
    assert_eq!(v["code"], 0);
    assert_eq!(held.await.unwrap().0["code"], -304);
    assert_eq!(latest(&go, "a.svc").await, ts);
    let v = post(
        &go,
        "/discovery/renew",
        "zone=zone01&env=dev&appid=a.svc&hostname=nobody",
    )
    .await;
    assert_eq!(v["code"], -404);
    go.shutdown().await;
}

/// Two polls with one hostname share one waiter; one change wakes both.
#[tokio::test]
async fn one_waiter_per_appid_and_hostname() {
    let go = start(5_000).await;
    register(&go, "a.svc", "p1").await;
    let ts = latest(&go, "a.svc").await;
    let first = poll(&go, "c", &[("a.svc", ts)]);
    let second = poll(&go, "c", &[("a.svc", ts)]);
    let other = poll(&go, "d", &[("a.svc", ts)]);
    until("three held", || go.held_polls() == 3).await;
    let w = go.waiters("a.svc");
    assert_eq!(w.get("c"), Some(&2));
    assert_eq!(w.get("d"), Some(&1));
    register(&go, "a.svc", "p2").await;
    for p in [first, second, other] {
        let (v, took) = p.await.unwrap();
        assert_eq!(v["code"], 0);
        assert_eq!(
            v["data"]["a.svc"]["instances"]["zone01"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(took < Duration::from_secs(5));
    }
    until("waiters gone", || go.waiters("a.svc").is_empty()).await;
    go.shutdown().await;
}

/// A poll joining another's waiter shares its channel for all its apps: a
/// change of an app only it watches can wake the other poll, and it then
/// waits for the hold to end.
#[tokio::test]
async fn a_shared_hostname_loses_wake_ups() {
    let go = start(800).await;
    register(&go, "a.svc", "p1").await;
    register(&go, "b.svc", "p1").await;
    let (ta, tb) = (latest(&go, "a.svc").await, latest(&go, "b.svc").await);
    let only_a = poll(&go, "c", &[("a.svc", ta)]);
    until("first held", || go.held_polls() == 1).await;
    let a_and_b = poll(&go, "c", &[("a.svc", ta), ("b.svc", tb)]);
    until("second held", || go.held_polls() == 2).await;
    register(&go, "b.svc", "p2").await;
    let (v, _) = only_a.await.unwrap();
    assert!(
        v["data"]["b.svc"].is_object(),
        "the a.svc poll took b's wake-up: {v}"
    );
    let (v, took) = a_and_b.await.unwrap();
    assert_eq!(v["code"], -304, "{v}");
    assert!(took >= Duration::from_millis(800));
    go.shutdown().await;
}

/// Cancelling an app's last instance deletes the app: its waiters get
/// nothing and end with the hold.
#[tokio::test]
async fn the_last_cancel_wakes_nobody() {
    let go = start(500).await;
    register(&go, "a.svc", "p1").await;
    let ts = latest(&go, "a.svc").await;
    let held = poll(&go, "c", &[("a.svc", ts)]);
    until("held", || go.held_polls() == 1).await;
    assert_eq!(cancel(&go, "a.svc", "p1").await["code"], 0);
    let (v, took) = held.await.unwrap();
    assert_eq!(v["code"], -304);
    assert!(took >= Duration::from_millis(500));
    assert_eq!(cancel(&go, "a.svc", "p1").await["code"], -404);
    go.shutdown().await;
}

/// A poll whose client goes away gives up its share of the waiter.
#[tokio::test]
async fn a_vanished_poller_leaves_its_waiter() {
    let go = start(30_000).await;
    register(&go, "a.svc", "p1").await;
    let ts = latest(&go, "a.svc").await;
    let held = poll(&go, "c", &[("a.svc", ts)]);
    until("held", || go.waiters("a.svc").get("c") == Some(&1)).await;
    held.abort();
    until("waiter gone", || go.waiters("a.svc").is_empty()).await;
    go.shutdown().await;
}
