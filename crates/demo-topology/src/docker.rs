//! The docker compose end-to-end check: `up`, greetings through the p2c and
//! the wrr client, one discovery container stopped, then one demo server
//! container killed and another cut off the network (`docker network
//! disconnect`: its address drops packets, as a crashed host or a partition
//! would) under steady load, with no failed call allowed; `down`.
//!
//! The images come from `cargo xtask docker` (built offline, `FROM
//! scratch`); nothing is pulled. A missing daemon is a failure with the
//! reason, never a skip.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use anyhow::{Context as _, bail, ensure};
use tokio::{process::Command, time::Instant};

/// Project name, so that the check never touches a user's own `up`.
const PROJECT: &str = "discovery-demo-e2e";

/// `docker compose` (v2 plugin) or `docker-compose` (v1), with the file,
/// project and published port.
struct Compose {
    program: Vec<String>,
    file: String,
    port: u16,
    wrr_port: u16,
}

impl Compose {
    async fn detect(file: &str, port: u16, wrr_port: u16) -> anyhow::Result<Self> {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .await
            .context("running `docker info`: is docker installed?")?;
        ensure!(
            info.status.success(),
            "the docker daemon is not reachable (`docker info` failed: {}); the docker part of \
             the e2e needs it",
            String::from_utf8_lossy(&info.stderr).trim()
        );
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        let program = if v2 {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            let v1 = Command::new("docker-compose")
                .arg("version")
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            ensure!(
                v1,
                "neither `docker compose` nor `docker-compose` is installed"
            );
            vec!["docker-compose".to_string()]
        };
        Ok(Compose {
            program,
            file: file.to_string(),
            port,
            wrr_port,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-f", &self.file, "-p", PROJECT])
            .args(args)
            .env("DEMO_HTTP_PORT", self.port.to_string())
            .env("DEMO_WRR_HTTP_PORT", self.wrr_port.to_string())
            .stdin(Stdio::null());
        cmd
    }

    /// The container id of a service.
    async fn container(&self, service: &str) -> anyhow::Result<String> {
        let out = self.command(&["ps", "-q", service]).output().await?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id)
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        println!("docker-e2e: {} {}", self.program.join(" "), args.join(" "));
        let status = self
            .command(args)
            .status()
            .await
            .with_context(|| format!("running compose {args:?}"))?;
        ensure!(status.success(), "compose {args:?} failed: {status}");
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn greet(http: &reqwest::Client, base: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = http
        .get(format!("{base}/say_hello"))
        .query(&[("name", "docker")])
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// Greets until one answer is 200, at most `within`; how long it took and
/// the failed answers meanwhile.
async fn until_ok(
    http: &reqwest::Client,
    base: &str,
    within: Duration,
) -> anyhow::Result<(Duration, Vec<String>)> {
    let start = Instant::now();
    let mut failed = Vec::new();
    loop {
        let last = greet(http, base).await;
        if matches!(last, Ok((200, _))) {
            return Ok((start.elapsed(), failed));
        }
        failed.push(format!("{last:?}"));
        if start.elapsed() > within {
            bail!("no greeting from {base} within {within:?}; last answer: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` greetings: failures and the set of servers seen.
async fn calls(http: &reqwest::Client, base: &str, n: usize) -> (Vec<String>, BTreeSet<String>) {
    let mut failed = Vec::new();
    let mut served = BTreeSet::new();
    for _ in 0..n {
        match greet(http, base).await {
            Ok((200, body)) => {
                served.insert(body["served_by"].as_str().unwrap_or_default().to_string());
            }
            other => failed.push(format!("{other:?}")),
        }
    }
    (failed, served)
}

/// The check; compose is always brought down, logs are shown on failure.
pub(crate) async fn run(file: &str) -> anyhow::Result<()> {
    let compose = Compose::detect(file, free_port()?, free_port()?).await?;
    let result = checks(&compose).await;
    if result.is_err() {
        let _ = compose.run(&["logs", "--no-color", "--tail", "40"]).await;
    }
    let down = compose.run(&["down", "-v", "--remove-orphans"]).await;
    match &result {
        Ok(()) => println!("docker-e2e: PASSED"),
        Err(e) => println!("docker-e2e: FAILED: {e:#}"),
    }
    result.and(down)
}

async fn checks(compose: &Compose) -> anyhow::Result<()> {
    // A leftover of an interrupted run would hold the names.
    compose.run(&["down", "-v", "--remove-orphans"]).await?;
    compose.run(&["up", "-d"]).await?;
    let base = format!("http://127.0.0.1:{}", compose.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    let (first, _) = until_ok(&http, &base, Duration::from_secs(90)).await?;
    println!("docker-e2e: first greeting {first:?} after `up -d` returned");
    let wrr = format!("http://127.0.0.1:{}", compose.wrr_port);
    until_ok(&http, &wrr, Duration::from_secs(60)).await?;
    // p2c may favour one backend for a while (a starved one gets a call at
    // least every 3 s), so each client gives all three 10 s to show up.
    let all = ["demo-server-1", "demo-server-2", "demo-server-3"];
    for b in [&base, &wrr] {
        let start = Instant::now();
        let mut served = BTreeSet::new();
        while !all.iter().all(|s| served.contains(*s)) && start.elapsed() < Duration::from_secs(10)
        {
            let (failed, seen) = calls(&http, b, 10).await;
            ensure!(failed.is_empty(), "failed calls: {failed:?}");
            served.extend(seen);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(
            all.iter().all(|s| served.contains(*s)),
            "not every demo server answered {b} within 10 s: {served:?}"
        );
    }

    compose.run(&["stop", "discovery-1"]).await?;
    let clients = [("p2c", base.clone()), ("wrr", wrr.clone())];
    let bases: Vec<String> = clients.iter().map(|(_, b)| b.clone()).collect();
    let mut figures = Vec::new();

    // kill: the container's address stops answering at once, without a
    // reset for the open connections.
    let victim = format!(
        "{}:9000",
        docker_ip(&compose.container("demo-server-1").await?).await?
    );
    fault(
        &bases,
        &victim,
        &clients,
        "kill demo-server-1",
        &mut figures,
        async { compose.run(&["kill", "demo-server-1"]).await },
    )
    .await?;

    // disconnect: the container lives on, unreachable.
    let id = compose.container("demo-server-2").await?;
    let victim = format!("{}:9000", docker_ip(&id).await?);
    let network = docker_network(&id).await?;
    fault(
        &bases,
        &victim,
        &clients,
        "docker network disconnect demo-server-2",
        &mut figures,
        async {
            println!("docker-e2e: docker network disconnect {network} {id}");
            let status = Command::new("docker")
                .args(["network", "disconnect", &network, &id])
                .status()
                .await?;
            ensure!(status.success(), "docker network disconnect: {status}");
            Ok(())
        },
    )
    .await?;
    let (failed, served) = calls(&http, &base, 50).await;
    ensure!(failed.is_empty(), "failed calls: {failed:?}");
    ensure!(
        served.iter().all(|s| s == "demo-server-3"),
        "served by {served:?}"
    );
    println!();
    println!("docker-e2e figures:");
    for f in figures {
        println!("  {f}");
    }
    Ok(())
}

/// Steady load through both clients across `act`; no call may fail and
/// both balancers must eject `victim`.
async fn fault(
    bases: &[String],
    victim: &str,
    clients: &[(&str, String)],
    what: &str,
    figures: &mut Vec<String>,
    act: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let loads: Vec<crate::e2e::Load> = bases.iter().map(|b| crate::e2e::Load::start(b)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Polled from the moment the command starts: compose may take seconds
    // to return after the container is gone.
    let start = Instant::now();
    let act = async {
        let r = act.await;
        (r, start.elapsed())
    };
    let ((acted_result, acted), ejected) = tokio::join!(
        act,
        crate::e2e::until_ejected(bases, victim, Duration::from_secs(20))
    );
    acted_result?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.finish().await);
    }
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        let line = format!(
            "{what}, {kind}: {} of {} calls failed ({} hedged or retried); {victim} ejected \
             {took:?} after the command started (the command took {acted:?}); served by {:?}",
            t.failed.len(),
            t.ok + t.failed.len(),
            t.hedged,
            t.served
        );
        println!("docker-e2e: {line}");
        figures.push(line);
    }
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        ensure!(
            t.failed.is_empty(),
            "{what}, {kind}: failed calls: {:?}",
            t.failed
        );
        ensure!(took.is_some(), "{what}, {kind}: {victim} was never ejected");
    }
    Ok(())
}

async fn inspect(id: &str, format: &str) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, id])
        .output()
        .await?;
    ensure!(out.status.success(), "docker inspect {id}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn docker_ip(id: &str) -> anyhow::Result<String> {
    inspect(
        id,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    )
    .await
}

async fn docker_network(id: &str) -> anyhow::Result<String> {
    inspect(
        id,
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
    )
    .await
}
