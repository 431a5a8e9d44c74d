//! The `discovery` binary and a node's lifecycle: bare start, the Go
//! original's config, env fallbacks, refusal of bad config, signals,
//! Self-registration, lease expiry.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use discovery_server::{config::Config, server};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_discovery");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Proc {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn signal(&self, sig: &str) {
        testkit::signal::send(self.child.id(), sig).expect("signal sent");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("log line");
            if line.contains(needle) {
                return line;
            }
        }
    }
}

/// Starts the binary and waits for its "listening on" line.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("REGION")
        .env_remove("ZONE")
        .env_remove("DEPLOY_ENV")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("[discovery] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut p = Proc {
        child,
        addr: String::new(),
        lines: rx,
    };
    let line = p.wait_line("listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    p.addr = addr;
    p
}

async fn get(addr: &str, path: &str) -> Value {
    testkit::http::get_json(&format!("http://{addr}"), path).await
}

/// The node's own `infra.discovery` record.
async fn own_record(addr: &str, env: &str) -> Value {
    let v = get(
        addr,
        &format!("/discovery/fetch?env={env}&appid=infra.discovery&status=1"),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    let zones = v["data"]["instances"].as_object().unwrap();
    assert_eq!(zones.len(), 1);
    zones.values().next().unwrap()[0].clone()
}

#[tokio::test]
async fn c60_bare_binary_serves_7171_and_registers_itself() {
    let mut p = spawn(&[], &[("HOSTNAME", "bare-node")]);
    assert_eq!(p.addr, "127.0.0.1:7171");
    let me = own_record("127.0.0.1:7171", "dev").await;
    assert_eq!(me["zone"], "zone01");
    assert_eq!(me["region"], "region01");
    assert_eq!(me["hostname"], "bare-node");
    assert_eq!(me["addrs"], serde_json::json!(["http://127.0.0.1:7171"]));
    let nodes = get("127.0.0.1:7171", "/discovery/nodes").await;
    assert_eq!(
        nodes["data"],
        serde_json::json!([{"addr":"127.0.0.1:7171","status":0,"zone":"zone01"}])
    );
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn c60_go_sample_config_loads_with_single_dash_flag() {
    let conf = repo_root().join("configs/discovery-example.toml");
    let mut p = spawn(
        &[
            "-conf",
            conf.to_str().unwrap(),
            "-log.stdout",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let me = own_record(&p.addr, "dev").await;
    assert_eq!(
        (
            me["zone"].as_str(),
            me["hostname"].as_str(),
            me["region"].as_str()
        ),
        (Some("sh001"), Some("test1"), Some("sh"))
    );
    assert_eq!(
        me["addrs"],
        serde_json::json!([format!("http://{}", p.addr)])
    );
    p.signal("INT");
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn c61_empty_env_values_come_from_the_environment() {
    let dir = tempdir("env");
    let conf = dir.join("d.toml");
    std::fs::write(
        &conf,
        "[ENV]\nzone = \"\"\n[HttpServer]\nAddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let p = spawn(
        &["--conf", conf.to_str().unwrap()],
        &[
            ("REGION", "r9"),
            ("ZONE", "z9"),
            ("DEPLOY_ENV", "uat"),
            ("HOSTNAME", "h9"),
        ],
    );
    let me = own_record(&p.addr, "uat").await;
    assert_eq!(
        (
            me["region"].as_str(),
            me["zone"].as_str(),
            me["env"].as_str(),
            me["hostname"].as_str()
        ),
        (Some("r9"), Some("z9"), Some("uat"), Some("h9"))
    );
    // Flags win over the environment.
    drop(p);
    let p = spawn(
        &["--conf", conf.to_str().unwrap(), "-zone", "fz"],
        &[("ZONE", "z9"), ("HOSTNAME", "h9")],
    );
    assert_eq!(own_record(&p.addr, "dev").await["zone"], "fz");
}

#[test]
fn c62_zero_timeout_refuses_to_start_naming_the_key() {
    let dir = tempdir("zero");
    let conf = dir.join("d.toml");
    std::fs::write(
        &conf,
        "[httpServer]\naddr = \"127.0.0.1:0\"\ntimeout = \"0s\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["-conf", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("httpServer.timeout"), "{err}");
}

#[test]
fn unknown_flag_prints_usage_and_exits_2() {
    let out = Command::new(BIN).arg("-bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[tokio::test]
async fn sighup_reloads_scheduler_files() {
    let dir = tempdir("sched");
    std::fs::write(
        dir.join("discovery.toml"),
        "[httpServer]\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let file = dir.join("demo.json");
    let sched = |w: i32| {
        format!(
            r#"{{"app_id":"infra.discovery","env":"dev","clients":{{"zone01":{{"zones":{{"zone01":{{"weight":{w}}}}}}}}},"remark":""}}"#
        )
    };
    std::fs::write(&file, sched(3)).unwrap();
    let p = spawn(&["-conf", dir.to_str().unwrap()], &[]);
    let path = "/discovery/fetch?env=dev&appid=infra.discovery&status=1";
    let before = get(&p.addr, path).await["data"].clone();
    assert_eq!(
        before["scheduler"]["clients"]["zone01"]["zones"]["zone01"]["weight"],
        3
    );
    std::fs::write(&file, sched(7)).unwrap();
    p.signal("HUP");
    p.wait_line("schedulers reloaded");
    let after = get(&p.addr, path).await["data"].clone();
    assert_eq!(
        after["scheduler"]["clients"]["zone01"]["zones"]["zone01"]["weight"],
        7
    );
    assert!(after["latest_timestamp"].as_i64() > before["latest_timestamp"].as_i64());
}

#[tokio::test]
async fn c46_unrenewed_instances_expire_and_renewing_ones_stay() {
    let cfg = Config::parse(
        "[registry]\nlease = \"1s\"\nevict_interval = \"500ms\"\nrenew_interval = \"250ms\"\n",
    )
    .unwrap()
    .0;
    let node = server::start(cfg, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let base = format!("http://{}", node.addr());
    let http = reqwest::Client::new();
    let form =
        |h: &str| format!("zone=sh001&env=dev&appid=a&hostname={h}&status=1&addrs=grpc://x:1");
    for h in (0..10).map(|i| format!("r{i}")).chain(["dead".to_string()]) {
        http.post(format!("{base}/discovery/register"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&h))
            .send()
            .await
            .unwrap();
    }
    let registered = Instant::now();
    let renewer = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                for i in 0..10 {
                    let _ = http
                        .post(format!("{base}/discovery/renew"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("zone=sh001&env=dev&appid=a&hostname=r{i}"))
                        .send()
                        .await;
                }
                // Fixed: the renew period of this stand-in client.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let dead = discovery_server::registry::InstanceKey::new("dev", "a", "sh001", "dead");
    while node.registry().get(&dead).is_some() {
        assert!(registered.elapsed() < Duration::from_secs(6), "not evicted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "evicted after {:?} (lease 1 s, tick 0.5 s)",
        registered.elapsed()
    );
    assert!(registered.elapsed() >= Duration::from_secs(1));
    // Fixed: two more leases in which the renewed ones must not go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    renewer.abort();
    assert_eq!(
        node.registry().len(),
        11,
        "10 renewing instances and the node itself remain"
    );
    node.shutdown().await;
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "discovery-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

/// Starts a node with `cfg`, fetches the app `kept` from it, stops it.
async fn fetch_after_start(cfg: Config) -> Value {
    let node = server::start(cfg, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let v = get(
        &node.addr().to_string(),
        "/discovery/fetch?env=dev&appid=kept&status=1",
    )
    .await;
    node.shutdown().await;
    v
}

#[tokio::test]
async fn snapshot_keeps_a_lone_node_registry_across_restarts() {
    let dir = tempdir("snapshot");
    let snap = dir.join("registry.json");
    let conf = format!(
        "[snapshot]\npath = \"{}\"\ninterval = \"1h\"\n",
        snap.display()
    );
    let cfg = || Config::parse(&conf).unwrap().0;
    let node = server::start(cfg(), Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let base = format!("http://{}", node.addr());
    let r = testkit::http::post_form(
        &base,
        "/discovery/register",
        "zone=sh001&env=dev&appid=kept&hostname=h1&status=1&addrs=grpc://a:1&addrs=http://a:2",
    )
    .await;
    assert_eq!(r["code"], 0);
    node.shutdown().await;
    assert!(snap.exists());

    let v = fetch_after_start(cfg()).await;
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(
        v["data"]["instances"]["sh001"][0]["addrs"],
        serde_json::json!(["grpc://a:1", "http://a:2"])
    );

    // A corrupt snapshot is reported and ignored.
    std::fs::write(&snap, b"{\"version\":1,\"inst").unwrap();
    let v = fetch_after_start(cfg()).await;
    assert_eq!(v["code"], -404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_node() {
    let node = discovery_server::server::start(
        discovery_server::config::Config::default(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    node.wait_ready().await;
    let addr = node.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(node);
    // The graceful shutdown runs in the background; the listener closes.
    testkit::wait_until(
        std::time::Duration::from_secs(10),
        "the listener closed after the handle was dropped",
        async || tokio::net::TcpStream::connect(addr).await.is_err(),
    )
    .await;
}
