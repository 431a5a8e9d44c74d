//! The `demo-client` binary: HTTP statuses before and after a provider
//! registers, the `direct://` target, deadlines, and the exit status
//! without discovery nodes. Providers are real tonic servers on loopback,
//! and a real grpc-go Greeter ([`testkit::grpc_go`]), registered with a
//! real (in-process) discovery node.

use std::{net::SocketAddr, time::Duration};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_client::{Config, Discovery};
use naming::{Instance, Registry};
use testkit::{Layout, Process, Topology};
use tokio::{process::Command, time::Instant};
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_demo-client");

/// A Greeter answering as `host`, after `delay`.
struct Hello {
    host: &'static str,
    delay: Duration,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // Fixed: the greeter's configured latency.
        tokio::time::sleep(self.delay).await;
        let mut resp = Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        });
        // An empty host answers as a Go Greeter does: no `x-served-by`.
        if !self.host.is_empty() {
            resp.metadata_mut()
                .insert("x-served-by", self.host.parse().expect("ascii"));
        }
        Ok(resp)
    }
}

/// Serves a Greeter on 127.0.0.1:0 until the test ends.
async fn greeter(host: &'static str, delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Hello { host, delay }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

/// A command without any inherited SDK or demo setting.
fn demo_client(hostname: &str) -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "DISCOVERY_NODES",
        "ZONE",
        "REGION",
        "DEPLOY_ENV",
        "DEPLOY_COLOR",
        "APP_ID",
        "HTTP_ADDR",
        "DEMO_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["--http-addr", "127.0.0.1:0"])
        .env("HOSTNAME", hostname);
    cmd
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(url).await.expect("HTTP");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

/// Polls `url` until it answers `want`, at most `within`.
async fn until_status(url: &str, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(url).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers {status} {body}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SDK client on `node` that registers demo.service, served at `addr`,
/// as `hostname`.
async fn provide(
    node: &str,
    hostname: &str,
    addr: std::net::SocketAddr,
) -> (Discovery, naming::Registration) {
    let provider = Discovery::new(
        Config::builder()
            .nodes([node])
            .hostname(hostname)
            .build_with(|_| None),
    )
    .expect("SDK");
    let registration = provider
        .register(Instance {
            appid: "demo.service".into(),
            addrs: vec![format!("grpc://{addr}")],
            ..Default::default()
        })
        .await
        .expect("register");
    (provider, registration)
}

#[tokio::test]
async fn without_nodes_exits_2_naming_discovery_nodes() {
    let out = demo_client("demo-client-nonodes")
        .output()
        .await
        .expect("run demo-client");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DISCOVERY_NODES"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503_without_providers_then_200_once_one_registers() {
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let node = topo.addr(0).to_string();

    let mut cmd = demo_client("demo-client-t1");
    cmd.env("DISCOVERY_NODES", &node);
    let client = Process::spawn_ready_file(cmd, "demo-client-t1")
        .await
        .expect("starts");
    let base = format!("http://{}", client.addr);
    let hello = format!("{base}/say_hello?name=x");

    // Served at once; nothing registered yet.
    let (status, body) = get(&format!("{base}/say_hello")).await;
    assert_eq!(status, 400, "{body}");
    let started = Instant::now();
    let (status, body) = get(&hello).await;
    let no_provider = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    // Loose bound (shared machine): fail-fast, not a deadline or a hang.
    assert!(no_provider < Duration::from_secs(5), "{no_provider:?}");

    // A provider registers: calls succeed soon after.
    let addr = greeter("inproc-1", Duration::ZERO).await;
    let (provider, registration) = provide(&node, "inproc-1", addr).await;
    let body = until_status(&hello, 200, Duration::from_secs(10)).await;
    assert_eq!(body["message"], "Hello x");
    assert_eq!(body["served_by"], "inproc-1");

    // (An app's last instance leaving keeps the last set: the
    // client answers 503 only once that instance is unreachable too.)
    registration.cancel().await.expect("cancel");

    let _ = provider.close().await;
    drop(client);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_by_is_the_picked_instance_when_the_server_does_not_say() {
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let node = topo.addr(0).to_string();
    let addr = greeter("", Duration::ZERO).await;
    let (provider, _registration) = provide(&node, "go-greeter-1", addr).await;

    let mut cmd = demo_client("demo-client-t4");
    cmd.env("DISCOVERY_NODES", &node);
    let client = Process::spawn_ready_file(cmd, "demo-client-t4")
        .await
        .expect("starts");
    let hello = format!("http://{}/say_hello?name=go", client.addr);
    let body = until_status(&hello, 200, Duration::from_secs(10)).await;
    assert_eq!(body["message"], "Hello go");
    assert_eq!(body["served_by"], "go-greeter-1");

    let _ = provider.close().await;
    drop(client);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_grpc_go_greeter_found_through_discovery() {
    let go =
        testkit::grpc_go::GoGreeter::build(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let node = topo.addr(0).to_string();
    let server = go.serve("go-greeter").await.expect("Go Greeter starts");
    let (provider, _registration) = provide(&node, "go-greeter-2", server.addr).await;

    let mut cmd = demo_client("demo-client-t5");
    cmd.env("DISCOVERY_NODES", &node);
    let client = Process::spawn_ready_file(cmd, "demo-client-t5")
        .await
        .expect("starts");
    let hello = format!("http://{}/say_hello?name=go", client.addr);
    // Until the client has watched the registration and connected.
    let body = until_status(&hello, 200, Duration::from_secs(10)).await;
    assert_eq!(body["message"], "Hello go");
    // grpc-go sends no `x-served-by`: the picked instance names it.
    assert_eq!(body["served_by"], "go-greeter-2");
    // Then every call, on the established connection, succeeds.
    for _ in 0..20 {
        let (status, body) = get(&hello).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message"], "Hello go", "{body}");
    }

    let _ = provider.close().await;
    drop(client);
    drop(server);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_target_needs_no_registry_and_maps_deadlines_to_504() {
    let fast = greeter("direct-fast", Duration::ZERO).await;
    let mut cmd = demo_client("demo-client-t2");
    cmd.env("DEMO_TARGET", format!("direct://default/{fast}"));
    let client = Process::spawn_ready_file(cmd, "demo-client-t2")
        .await
        .expect("starts");
    let body = until_status(
        &format!("http://{}/say_hello?name=y", client.addr),
        200,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(body["message"], "Hello y");
    assert_eq!(body["served_by"], "direct-fast");

    // A handler slower than the 250 ms deadline.
    let slow = greeter("direct-slow", Duration::from_secs(3)).await;
    let mut cmd = demo_client("demo-client-t3");
    cmd.env("DEMO_TARGET", format!("direct://default/{slow}"));
    let client = Process::spawn_ready_file(cmd, "demo-client-t3")
        .await
        .expect("starts");
    // (The first calls may find the connection still being made: 503.)
    let body = until_status(
        &format!("http://{}/say_hello?name=z", client.addr),
        504,
        Duration::from_secs(10),
    )
    .await;
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_debug_balancer_show_the_pool() {
    let a = greeter("pool-a", Duration::ZERO).await;
    let b = greeter("pool-b", Duration::ZERO).await;
    let mut cmd = demo_client("demo-client-t4");
    cmd.env("DEMO_TARGET", format!("direct://default/{a},{b}"))
        .args(["--balancer", "wrr"]);
    let client = Process::spawn_ready_file(cmd, "demo-client-t4")
        .await
        .expect("starts");
    let base = format!("http://{}", client.addr);
    until_status(
        &format!("{base}/say_hello?name=m"),
        200,
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..20 {
        let (status, _) = get(&format!("{base}/say_hello?name=m")).await;
        assert_eq!(status, 200);
    }
    let (status, pool) = get(&format!("{base}/debug/balancer")).await;
    assert_eq!(status, 200);
    assert_eq!(pool["balancer"], "wrr", "{pool}");
    let backends = pool["backends"].as_array().expect("backends");
    let addrs: Vec<&str> = backends.iter().filter_map(|b| b["addr"].as_str()).collect();
    assert_eq!(addrs, [a.to_string(), b.to_string()], "{pool}");
    let picks: u64 = backends.iter().filter_map(|b| b["picks"].as_u64()).sum();
    assert!(picks >= 21, "{pool}");
    for b in backends {
        assert_eq!(b["connected"], true, "{pool}");
        assert_eq!(b["ejected"], false, "{pool}");
        assert!(b["picks"].as_u64().unwrap_or(0) > 0, "wrr spreads: {pool}");
    }

    let resp = reqwest::get(format!("{base}/metrics")).await.expect("HTTP");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.expect("body");
    for metric in [
        "demo_balancer_picks_total",
        "demo_balancer_ejections_total",
        "demo_balancer_in_flight",
        "demo_balancer_latency_ewma_seconds",
        "demo_balancer_score",
        "demo_balancer_effective_weight",
        "demo_balancer_hedged_calls_total",
    ] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }
    let picks = testkit::http::metric(
        &text,
        &format!("demo_balancer_picks_total{{backend=\"{a}\",balancer=\"wrr\"}}"),
    );
    assert!(picks > 0.0, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}
