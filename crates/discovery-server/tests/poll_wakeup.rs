//! Long polls over real sockets: holds, wake-ups, disconnects
//! (docs/protocol.md#long-poll).

use std::time::{Duration, Instant};

use discovery_server::{
    config::Config,
    server::{self, ServerHandle},
};
use serde_json::Value;

async fn node(toml: &str) -> ServerHandle {
    let cfg = Config::parse(toml).unwrap().0;
    server::start(cfg, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

struct Node {
    base: String,
    http: reqwest::Client,
}

impl Node {
    fn new(n: &ServerHandle) -> Self {
        Node {
            base: format!("http://{}", n.addr()),
            http: client(),
        }
    }

    async fn post(&self, path: &str, form: &str) -> Value {
        testkit::http::send_json(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.to_string()),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        testkit::http::send_json(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn register(&self, appid: &str, host: &str) {
        let r = self
            .post(
                "/discovery/register",
                &format!("zone=sh001&env=dev&appid={appid}&hostname={host}&status=1&addrs=grpc://{host}:1"),
            )
            .await;
        assert_eq!(r["code"], 0);
    }

    async fn latest(&self, appid: &str) -> i64 {
        let r = self
            .get(&format!("/discovery/fetch?env=dev&appid={appid}&status=3"))
            .await;
        r["data"]["latest_timestamp"].as_i64().unwrap()
    }

    /// Starts a held `polls` on `apps` (appid, timestamp); returns its answer
    /// and how long it took.
    fn polls(
        &self,
        host: &str,
        apps: &[(&str, i64)],
        timeout_ms: u64,
    ) -> tokio::task::JoinHandle<(Value, Duration)> {
        let mut url = format!("{}/discovery/polls?env=dev&hostname={host}", self.base);
        for (a, t) in apps {
            url.push_str(&format!("&appid={a}&latest_timestamp={t}"));
        }
        let http = client();
        tokio::spawn(async move {
            let start = Instant::now();
            let v: Value = testkit::http::send_json(
                http.get(url)
                    .header("x1-bmspy-timeout", timeout_ms.to_string()),
            )
            .await;
            (v, start.elapsed())
        })
    }
}

/// Waits until `n` requests are parked on the node.
async fn parked(n: &ServerHandle, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.registry().parked_polls() != count {
        assert!(
            Instant::now() < deadline,
            "parked {} != {count}",
            n.registry().parked_polls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node holding one instance (`h1`) of app `a`, and the app's latest
/// timestamp.
async fn with_app(toml: &str) -> (ServerHandle, Node, i64) {
    let s = node(toml).await;
    let n = Node::new(&s);
    n.register("a", "h1").await;
    let t = n.latest("a").await;
    (s, n, t)
}

/// [`with_app`], and a poll of `host` on app `a` parked on the node.
async fn parked_poll(
    host: &str,
) -> (
    ServerHandle,
    Node,
    i64,
    tokio::task::JoinHandle<(Value, Duration)>,
) {
    let (s, n, t) = with_app("").await;
    let poll = n.polls(host, &[("a", t)], 30_000);
    parked(&s, 1).await;
    (s, n, t, poll)
}

#[tokio::test]
async fn c30_register_during_a_hold_answers_at_once() {
    let (s, n, _, poll) = parked_poll("c").await;
    let woke = Instant::now();
    n.register("a", "h2").await;
    let (v, _) = poll.await.unwrap();
    let delay = woke.elapsed();
    println!("wake-up delay: {delay:?}");
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    assert_eq!(v["code"], 0);
    assert_eq!(
        v["data"]["a"]["instances"]["sh001"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.shutdown().await;
}

#[tokio::test]
async fn c31_two_polls_from_one_hostname_wake_for_their_own_app() {
    let s = node("").await;
    let n = Node::new(&s);
    n.register("a", "h1").await;
    n.register("b", "h1").await;
    let (ta, tb) = (n.latest("a").await, n.latest("b").await);
    let pa = n.polls("same", &[("a", ta)], 30_000);
    let pb = n.polls("same", &[("b", tb)], 30_000);
    parked(&s, 2).await;
    n.register("a", "h2").await;
    let (va, _) = pa.await.unwrap();
    assert!(va["data"].get("a").is_some());
    parked(&s, 1).await;
    n.register("b", "h2").await;
    let (vb, _) = pb.await.unwrap();
    assert!(vb["data"].get("b").is_some());
    s.shutdown().await;
}

#[tokio::test]
async fn c32_an_abandoned_poll_is_dropped_and_absorbs_nothing() {
    let (s, n, t) = with_app("").await;
    let abandoned = n.polls("same", &[("a", t)], 30_000);
    parked(&s, 1).await;
    abandoned.abort();
    // The server notices the closed connection and drops the waiter.
    parked(&s, 0).await;
    let next = n.polls("same", &[("a", t)], 30_000);
    parked(&s, 1).await;
    n.register("a", "h2").await;
    let (v, took) = next.await.unwrap();
    assert_eq!(v["code"], 0);
    assert!(took < Duration::from_secs(5));
    s.shutdown().await;
}

#[tokio::test]
async fn c33_c34_cancelling_the_last_instance_pushes_an_empty_app() {
    let (s, n, t, poll) = parked_poll("c").await;
    n.post(
        "/discovery/cancel",
        "zone=sh001&env=dev&appid=a&hostname=h1",
    )
    .await;
    let (v, _) = poll.await.unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["data"]["a"]["instances"], serde_json::json!({}));
    let gone_at = v["data"]["a"]["latest_timestamp"].as_i64().unwrap();
    assert!(gone_at > t);
    // Polling with that timestamp holds until the hold ends.
    let (v, took) = n.polls("c", &[("a", gone_at)], 520).await.unwrap();
    assert_eq!(v["code"], -304);
    assert!(took >= Duration::from_millis(450), "{took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn c35_set_wakes_pollers_and_old_timestamps_answer_at_once() {
    let (s, n, t, poll) = parked_poll("c").await;
    n.post(
        "/discovery/set",
        "zone=sh001&env=dev&appid=a&hostname=h1&metadata=%7B%22x%22%3A%221%22%7D",
    )
    .await;
    let (v, _) = poll.await.unwrap();
    assert_eq!(
        v["data"]["a"]["instances"]["sh001"][0]["metadata"]["x"],
        "1"
    );
    let (v, took) = n.polls("c", &[("a", t)], 30_000).await.unwrap();
    assert_eq!(v["code"], 0);
    assert!(took < Duration::from_secs(5));
    s.shutdown().await;
}

#[tokio::test]
async fn c35_eviction_wakes_pollers() {
    let (s, n, _) = with_app("[registry]\nlease = \"1s\"\nevict_interval = \"200ms\"\nrenew_interval = \"100ms\"\nself_preservation = false\n").await;
    n.register("a", "h2").await;
    let t = n.latest("a").await;
    // Keep h2 alive; h1 expires.
    let keep = {
        let base = n.base.clone();
        tokio::spawn(async move {
            let http = client();
            loop {
                let _ = http
                    .post(format!("{base}/discovery/renew"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("zone=sh001&env=dev&appid=a&hostname=h2")
                    .send()
                    .await;
                // Fixed: the renew period of this stand-in client.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (v, took) = n.polls("c", &[("a", t)], 10_000).await.unwrap();
    keep.abort();
    assert_eq!(v["code"], 0, "{v}");
    let hosts: Vec<_> = v["data"]["a"]["instances"]["sh001"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["h2"]);
    assert!(took < Duration::from_secs(5), "{took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn many_pollers_on_one_app_are_all_woken_by_one_register() {
    let (s, n, t) = with_app("").await;
    let pollers: Vec<_> = (0..500)
        .map(|i| n.polls(&format!("c{i}"), &[("a", t)], 30_000))
        .collect();
    parked(&s, 500).await;
    let woke = Instant::now();
    n.register("a", "h2").await;
    for p in pollers {
        let (v, _) = p.await.unwrap();
        assert_eq!(v["code"], 0);
    }
    println!("500 pollers answered in {:?}", woke.elapsed());
    assert!(woke.elapsed() < Duration::from_secs(10));
    s.shutdown().await;
}

#[tokio::test]
async fn poll_of_an_app_removed_while_held_is_answered() {
    let (s, n, t) = with_app("").await;
    let url = format!(
        "{}/discovery/poll?env=dev&hostname=c&appid=a&latest_timestamp={t}",
        n.base
    );
    let held = tokio::spawn(async move { testkit::http::send_json(client().get(url)).await });
    parked(&s, 1).await;
    n.post(
        "/discovery/cancel",
        "zone=sh001&env=dev&appid=a&hostname=h1",
    )
    .await;
    let v = held.await.unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["data"]["instances"], serde_json::json!({}));
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_held_polls_with_304() {
    let (s, _, _, poll) = parked_poll("c").await;
    let start = Instant::now();
    s.shutdown().await;
    let (v, _) = poll.await.unwrap();
    assert_eq!(v["code"], -304);
    assert!(start.elapsed() < Duration::from_secs(5));
}
