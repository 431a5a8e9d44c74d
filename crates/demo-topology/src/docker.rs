//! The docker compose end-to-end check: `up`, greetings, one discovery
//! container and one demo server container stopped, greetings, `down`.
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
}

impl Compose {
    async fn detect(file: &str, port: u16) -> anyhow::Result<Self> {
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
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-f", &self.file, "-p", PROJECT])
            .args(args)
            .env("DEMO_HTTP_PORT", self.port.to_string())
            .stdin(Stdio::null());
        cmd
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
    let compose = Compose::detect(file, free_port()?).await?;
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
    // p2c may favour one backend for a while (a starved one gets a call at
    // least every 3 s), so both are given 10 s to show up.
    let start = Instant::now();
    let mut served = BTreeSet::new();
    while served.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        let (failed, seen) = calls(&http, &base, 10).await;
        ensure!(failed.is_empty(), "failed calls: {failed:?}");
        served.extend(seen);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        served.contains("demo-server-1") && served.contains("demo-server-2"),
        "not both demo servers answered within 10 s: {served:?}"
    );

    compose.run(&["stop", "discovery-1"]).await?;
    compose.run(&["kill", "demo-server-1"]).await?;
    // A killed container's address drops packets instead of refusing
    // connections, so calls may fail until the balancer ejects it; after
    // that, none may.
    let (again, before) = until_ok(&http, &base, Duration::from_secs(30)).await?;
    let (failed, served) = calls(&http, &base, 100).await;
    println!(
        "docker-e2e: discovery-1 stopped, demo-server-1 killed: first greeting after {again:?} \
         ({} failed before: {before:?}); then {} of 100 calls failed; served by {served:?}",
        before.len(),
        failed.len()
    );
    ensure!(failed.is_empty(), "failed calls: {failed:?}");
    ensure!(
        served.iter().all(|s| s == "demo-server-2"),
        "served by {served:?}"
    );
    Ok(())
}
