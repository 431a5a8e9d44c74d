//! A Go kratos v0.x client without a Go toolchain: the exact request sequence of the
//! kratos v0.x SDK (`pkg/naming/discovery`), decoded into the shapes the Go
//! structs declare. `New` blocks until its first `polls` on
//! `infra.discovery` answers with the node's own record; providers register
//! with one `addrs` field per address; consumers poll every watched appid
//! in one request with `x1-bmspy-timeout: 40000`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use discovery_server::{config::Config, server};
use serde::Deserialize;

/// `naming.InstancesInfo` of kratos v0.x.
#[derive(Debug, Deserialize)]
struct GoInstancesInfo {
    instances: HashMap<String, Vec<GoInstance>>,
    latest_timestamp: i64,
}

/// The `naming.Instance` fields the Go SDK reads.
#[derive(Debug, Deserialize)]
struct GoInstance {
    zone: String,
    hostname: String,
    addrs: Vec<String>,
    metadata: Option<HashMap<String, String>>,
}

/// The anonymous result struct of `Discovery.polls`.
#[derive(Debug, Deserialize)]
struct GoPolls {
    code: i64,
    #[serde(default)]
    data: HashMap<String, GoInstancesInfo>,
}

#[derive(Debug, Deserialize)]
struct GoCode {
    code: i64,
}

struct GoSdk {
    http: reqwest::Client,
    node: String,
    host: String,
    apps: Vec<(String, i64)>,
}

impl GoSdk {
    fn new(node: &str, host: &str, apps: Vec<(String, i64)>) -> Self {
        GoSdk {
            http: reqwest::Client::new(),
            node: node.into(),
            host: host.into(),
            apps,
        }
    }

    /// `Register` of demo.service at `addr` with `metadata`; the code.
    async fn register(&self, addr: &str, metadata: &str) -> i64 {
        self.post(
            "register",
            vec![
                ("appid", "demo.service".into()),
                ("addrs", addr.into()),
                ("version", "".into()),
                ("status", "1".into()),
                ("metadata", metadata.into()),
            ],
        )
        .await
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("region", "region01".into()),
            ("zone", "zone01".into()),
            ("env", "dev".into()),
            ("hostname", self.host.clone()),
        ]
    }

    async fn post(&self, route: &str, mut extra: Vec<(&'static str, String)>) -> i64 {
        let mut form = self.params();
        form.append(&mut extra);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let r: GoCode = serde_json::from_value(
            testkit::http::send_json(
                self.http
                    .post(format!("http://{}/discovery/{route}", self.node))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x1-bmspy-timeout", "40000")
                    .body(body),
            )
            .await,
        )
        .unwrap();
        r.code
    }

    /// One `polls` round as `serverproc` runs it; returns changed apps.
    async fn polls(&mut self) -> HashMap<String, GoInstancesInfo> {
        let mut url = format!(
            "http://{}/discovery/polls?env=dev&hostname={}",
            self.node, self.host
        );
        for (a, _) in &self.apps {
            url.push_str(&format!("&appid={a}"));
        }
        for (_, t) in &self.apps {
            url.push_str(&format!("&latest_timestamp={t}"));
        }
        let res: GoPolls = serde_json::from_value(
            testkit::http::send_json(self.http.get(url).header("x1-bmspy-timeout", "40000")).await,
        )
        .unwrap();
        if res.code != 0 {
            assert_eq!(res.code, -304);
            return HashMap::new();
        }
        for (appid, info) in &res.data {
            assert_ne!(
                info.latest_timestamp, 0,
                "the Go SDK treats 0 as a server error"
            );
            // broadcast() skips apps whose instance count is 0 without
            // advancing their timestamp.
            if info.instances.values().map(Vec::len).sum::<usize>() == 0 {
                continue;
            }
            for (a, t) in &mut self.apps {
                if a == appid {
                    *t = info.latest_timestamp;
                }
            }
        }
        res.data
    }
}

/// Waits until the watcher's poll is held by the node.
async fn parked(node: &server::ServerHandle) {
    testkit::wait_until(Duration::from_secs(3), "the poll parked", async || {
        node.registry().parked_polls() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c63_kratos_v0_sdk_registers_watches_and_cancels() {
    let node = server::start(
        Config::parse("").unwrap().0,
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr = node.addr().to_string();

    // Discovery.New: watch infra.discovery and block on its first event.
    let mut consumer = GoSdk::new(&addr, "consumer-1", vec![("infra.discovery".into(), 0)]);
    let started = Instant::now();
    let first = consumer.polls().await;
    let me = &first["infra.discovery"].instances["zone01"];
    assert_eq!(
        me[0].addrs,
        [format!("http://{addr}")],
        "newSelf finds the node"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "New returns at once"
    );

    // A provider registers (one addrs field per address, metadata JSON).
    let provider = GoSdk::new(&addr, "provider-1", vec![]);
    let code = provider
        .register("grpc://127.0.0.1:9000", r#"{"weight":"10"}"#)
        .await;
    assert_eq!(code, 0);

    // Build("demo.service") cancels the parked poll and polls both apps.
    consumer.apps.push(("demo.service".into(), 0));
    let got = consumer.polls().await;
    let ins = &got["demo.service"].instances["zone01"];
    assert_eq!(
        (ins[0].hostname.as_str(), ins[0].zone.as_str()),
        ("provider-1", "zone01")
    );
    assert_eq!(ins[0].metadata.as_ref().unwrap()["weight"], "10");

    // A second provider: the parked poll sees it within a second.
    let poll = {
        let mut c = GoSdk::new(&addr, &consumer.host, consumer.apps.clone());
        tokio::spawn(async move { (c.polls().await, c) })
    };
    parked(&node).await;
    let provider2 = GoSdk::new(&addr, "provider-2", vec![]);
    let changed = Instant::now();
    provider2.register("grpc://127.0.0.1:9001", "").await;
    let (got, c) = poll.await.unwrap();
    consumer = c;
    println!(
        "change delivered to the Go-style watcher in {:?}",
        changed.elapsed()
    );
    assert!(changed.elapsed() < Duration::from_secs(1));
    assert_eq!(got["demo.service"].instances["zone01"].len(), 2);

    // Renew, then the provider's cancel func: renew stops, cancel is sent.
    assert_eq!(
        provider
            .post("renew", vec![("appid", "demo.service".into())])
            .await,
        0
    );
    let poll = {
        let mut c = GoSdk::new(&addr, &consumer.host, consumer.apps.clone());
        tokio::spawn(async move { c.polls().await })
    };
    parked(&node).await;
    let cancelled = Instant::now();
    assert_eq!(
        provider
            .post("cancel", vec![("appid", "demo.service".into())])
            .await,
        0
    );
    let got = poll.await.unwrap();
    assert!(cancelled.elapsed() < Duration::from_secs(1));
    let left: Vec<&str> = got["demo.service"].instances["zone01"]
        .iter()
        .map(|i| i.hostname.as_str())
        .collect();
    assert_eq!(left, ["provider-2"]);
    node.shutdown().await;
}
