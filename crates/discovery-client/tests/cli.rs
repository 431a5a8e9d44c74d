//! `discoveryctl` against a real server.

mod common;

use std::process::{Command, Output};

use common::{addr_of, put, server, stored};
use naming::Status;

async fn ctl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_discoveryctl"))
            .args(&args)
            .env_remove("DISCOVERY_NODES")
            .env("ZONE", "zone01")
            .env("DEPLOY_ENV", "dev")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[tokio::test]
async fn no_nodes_exits_with_status_2() {
    let out = ctl(&["fetch", "demo.svc"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("DISCOVERY_NODES"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn fetch_table_and_json_then_set() {
    let s = server("").await;
    put(&s, "demo.svc", "p1", 9000);
    let node = addr_of(&s);
    let out = ctl(&["--discovery-nodes", &node, "fetch", "demo.svc", "ghost.svc"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("APPID"), "{table}");
    assert!(
        table.contains("p1") && table.contains("grpc://127.0.0.1:9000"),
        "{table}"
    );
    assert!(text(&out.stderr).contains("ghost.svc: not found in env dev"));

    let out = ctl(&["--discovery-nodes", &node, "--json", "fetch", "demo.svc"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["demo.svc"]["instances"]["zone01"][0]["hostname"], "p1");

    let out = ctl(&[
        "--discovery-nodes",
        &node,
        "--hostname",
        "p1",
        "set",
        "demo.svc",
        "--status",
        "2",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored(&s, "demo.svc")[0].status, Status::Waiting);
    let out = ctl(&[
        "--discovery-nodes",
        &node,
        "--hostname",
        "nobody",
        "set",
        "demo.svc",
        "--status",
        "2",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    s.shutdown().await;
}

/// A running `discoveryctl` whose stdout and stderr lines are collected.
struct Running {
    child: tokio::process::Child,
    stdout: Lines,
    stderr: Lines,
    /// The tasks collecting them, done at EOF.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

type Lines = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

fn collect(
    r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> (Lines, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncBufReadExt;
    let lines = Lines::default();
    let out = std::sync::Arc::clone(&lines);
    let reader = tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(l)) = r.next_line().await {
            println!("[discoveryctl] {l}");
            out.lock().push(l);
        }
    });
    (lines, reader)
}

fn spawn_ctl(args: &[&str]) -> Running {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_discoveryctl"))
        .args(args)
        .env_remove("DISCOVERY_NODES")
        .env("ZONE", "zone01")
        .env("DEPLOY_ENV", "dev")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (stdout, out_reader) = collect(child.stdout.take().unwrap());
    let (stderr, err_reader) = collect(child.stderr.take().unwrap());
    Running {
        child,
        stdout,
        stderr,
        readers: vec![out_reader, err_reader],
    }
}

impl Running {
    async fn signal(&self, sig: &str) {
        testkit::signal::send(self.child.id().expect("running"), sig).unwrap();
    }

    /// Waits for the exit (at most 10 s) and for the pipes to drain.
    async fn exit(&mut self) -> std::process::ExitStatus {
        let st = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits within 10 s")
            .unwrap();
        for r in self.readers.drain(..) {
            tokio::time::timeout(std::time::Duration::from_secs(5), r)
                .await
                .expect("stdout and stderr end within 5 s of the exit")
                .unwrap();
        }
        st
    }
}

/// `discoveryctl register` ended by a signal leaves nothing registered, and
/// says so in one line.
async fn register_then_signal(sig: &str) {
    use std::time::{Duration, Instant};
    let s = server("").await;
    let node = addr_of(&s);
    let host = format!("ctl-{sig}");
    let mut ctl = spawn_ctl(&[
        "--discovery-nodes",
        &node,
        "--hostname",
        &host,
        "register",
        "ctl.svc",
        "grpc://127.0.0.1:9000",
    ]);
    common::eventually(Duration::from_secs(10), "registered", || {
        stored(&s, "ctl.svc").iter().any(|i| i.hostname == host)
    })
    .await;
    let sent = Instant::now();
    ctl.signal(sig).await;
    let status = ctl.exit().await;
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        stored(&s, "ctl.svc").is_empty(),
        "still registered after {sig}"
    );
    let said: Vec<String> = ctl
        .stderr
        .lock()
        .iter()
        .filter(|l| l.contains("cancelled"))
        .cloned()
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with(&format!("SIG{sig}: cancelled ctl.svc ({host})")));
    println!("SIG{sig} to exit with the instance cancelled: {took:?}");
    // The bound is the SDK's 5 s cancel_timeout; loopback takes milliseconds.
    assert!(took < Duration::from_secs(5), "{took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn register_cancels_on_sigterm() {
    register_then_signal("TERM").await;
}

#[tokio::test]
async fn register_cancels_on_sigint() {
    register_then_signal("INT").await;
}

/// `discoveryctl watch` prints one table per change of the instance set:
/// renews and re-sent snapshots print nothing, "not found" comes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_only() {
    use std::time::Duration;

    use naming::Registry;
    let s = server("").await;
    let node = addr_of(&s);
    let mut ctl = spawn_ctl(&["--discovery-nodes", &node, "watch", "w.svc"]);
    let tables = |r: &Running| {
        r.stdout
            .lock()
            .iter()
            .filter(|l| l.starts_with("APPID"))
            .count()
    };
    common::eventually(Duration::from_secs(10), "not found", || {
        ctl.stderr.lock().iter().any(|l| l.contains("not found"))
    })
    .await;

    // Providers renewing every 100 ms.
    let provider = |host: &str| {
        let mut c = common::config(std::slice::from_ref(&node));
        c.hostname = host.into();
        c.renew_interval = Duration::from_millis(100);
        discovery_client::Discovery::new(c).unwrap()
    };
    let (d1, d2) = (provider("p1"), provider("p2"));
    let r1 = d1.register(common::instance("w.svc", 9001)).await.unwrap();
    common::eventually(Duration::from_secs(5), "table with p1", || {
        tables(&ctl) == 1
    })
    .await;
    let not_found = |r: &Running| {
        r.stderr
            .lock()
            .iter()
            .filter(|l| l.contains("not found"))
            .count()
    };
    assert_eq!(not_found(&ctl), 1, "one not-found line before the provider");
    let r2 = d2.register(common::instance("w.svc", 9002)).await.unwrap();
    common::eventually(Duration::from_secs(5), "table with p1, p2", || {
        tables(&ctl) == 2
    })
    .await;
    // Let both renew several times: renews are no change.
    let renewed = |host: &str| {
        stored(&s, "w.svc")
            .iter()
            .find(|i| i.hostname == host)
            .map_or(0, |i| i.renew_timestamp)
    };
    let (t1, t2) = (renewed("p1"), renewed("p2"));
    common::eventually(Duration::from_secs(5), "three renews each", || {
        renewed("p1") >= t1 + 250_000_000 && renewed("p2") >= t2 + 250_000_000
    })
    .await;
    assert_eq!(tables(&ctl), 2, "renews printed something");
    // Taking p1 out of traffic is a change: watches see UP instances only.
    d1.set(
        "w.svc",
        discovery_client::SetRequest {
            status: Some(naming::Status::Waiting),
            metadata: None,
        },
    )
    .await
    .unwrap();
    common::eventually(Duration::from_secs(5), "table after the set", || {
        tables(&ctl) == 3
    })
    .await;
    r2.cancel().await.unwrap();
    common::eventually(Duration::from_secs(5), "table after the cancel", || {
        tables(&ctl) == 4
    })
    .await;
    r1.cancel().await.unwrap();
    let _ = tokio::join!(d1.close(), d2.close());
    ctl.signal("TERM").await;
    assert!(ctl.exit().await.success());
    let out = ctl.stdout.lock().clone();
    // p1; p1+p2; p2 (p1 waiting); no UP instance left. Cancelling the
    // waiting p1 changes no UP set, so it prints nothing.
    let tables: Vec<&[String]> = out.split(|l| l.starts_with("APPID")).skip(1).collect();
    let hosts: Vec<Vec<&str>> = tables
        .iter()
        .map(|t| {
            t.iter()
                .map(|row| row.split_whitespace().nth(2).unwrap_or(""))
                .collect()
        })
        .collect();
    assert_eq!(
        hosts,
        [vec!["p1"], vec!["p1", "p2"], vec!["p2"], vec!["(no"]],
        "{out:#?}"
    );
    assert_eq!(not_found(&ctl), 1);
    s.shutdown().await;
}

#[test]
fn help_opens_with_a_one_line_description() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_discoveryctl"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Talk to a discovery registry through the SDK")
    );
    assert_eq!(lines.next(), Some(""), "one line, then usage: {text}");
    assert!(!text.contains("```"), "no doc block in --help: {text}");
}

#[tokio::test]
async fn fetch_over_https_with_ca_cert_and_key() {
    let ca = testkit::tls::TestCa::temp("ctl-tls");
    let id = ca.issue("node", &["127.0.0.1"]);
    let s = server(&format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nclient_auth = \"required\"\n",
        id.cert,
        id.key,
        ca.ca_path()
    ))
    .await;
    put(&s, "demo.svc", "p1", 9000);
    let me = ca.issue("ctl", &["ctl.example"]);
    let node = format!("https://{}", addr_of(&s));
    let vars = vec![
        ("DISCOVERY_NODES".to_string(), node.clone()),
        (
            "DISCOVERY_CA".to_string(),
            ca.ca_path().display().to_string(),
        ),
        ("DISCOVERY_CERT".to_string(), me.cert.display().to_string()),
        ("DISCOVERY_KEY".to_string(), me.key.display().to_string()),
    ];
    let run = |args: Vec<String>, vars: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_discoveryctl"))
                .args(&args)
                .envs(vars)
                .env("ZONE", "zone01")
                .env("DEPLOY_ENV", "dev")
                .output()
                .unwrap()
        })
    };
    let fetch = || vec!["fetch".to_string(), "demo.svc".to_string()];
    let out = run(fetch(), vars.clone()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("p1"), "{}", text(&out.stdout));

    // The same files as flags.
    let mut args: Vec<String> = [
        ("--ca", ca.ca_path()),
        ("--cert", me.cert.clone()),
        ("--key", me.key.clone()),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect();
    args.extend(fetch());
    let out = run(args, vec![vars[0].clone()]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("p1"), "{}", text(&out.stdout));

    // Without the client certificate the node refuses, and the error says
    // which node.
    let out = run(fetch(), vec![vars[0].clone(), vars[1].clone()])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&addr_of(&s)),
        "{}",
        text(&out.stderr)
    );
}
