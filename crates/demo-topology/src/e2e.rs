//! The loopback end-to-end checks of the demo topology.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use testkit::demo::{DemoBins, DemoTopology};
use tokio::{task::JoinHandle, time::Instant};

/// The outcome of a run of sequential calls.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: usize,
    /// (call index, status, body) of every failed call.
    pub(crate) failed: Vec<(usize, u16, String)>,
    /// Successful calls per `served_by`.
    pub(crate) served: BTreeMap<String, usize>,
    /// Calls the client's balancer hedged or retried on another backend
    /// meanwhile (through [`Load`] only).
    pub(crate) hedged: u64,
}

impl Tally {
    fn add(&mut self, i: usize, result: Result<(u16, serde_json::Value), reqwest::Error>) {
        match result {
            Ok((200, body)) => {
                self.ok += 1;
                let by = body["served_by"].as_str().unwrap_or_default().to_string();
                *self.served.entry(by).or_default() += 1;
            }
            Ok((status, body)) => self.failed.push((i, status, body.to_string())),
            Err(e) => self.failed.push((i, 0, e.to_string())),
        }
    }
}

/// Sequential greetings through one client's `/say_hello` until stopped,
/// about 100 a second.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Tally>,
}

impl Load {
    pub(crate) fn start(base: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{base}/say_hello");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let flag = stop.clone();
        let base = base.to_string();
        let task = tokio::spawn(async move {
            let mut t = Tally::default();
            let before = hedged(&http, &base).await;
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                t.add(i, greet(&http, &url).await);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            t.hedged = hedged(&http, &base).await.saturating_sub(before);
            t
        });
        Load { stop, task }
    }

    pub(crate) async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

pub(crate) async fn greet(
    http: &reqwest::Client,
    url: &str,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let resp = http.get(url).query(&[("name", "e2e")]).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// Calls a client's balancer hedged or retried so far.
async fn hedged(http: &reqwest::Client, base: &str) -> u64 {
    let Ok(resp) = http.get(format!("{base}/debug/balancer")).send().await else {
        return 0;
    };
    let pool: serde_json::Value = resp.json().await.unwrap_or_default();
    pool["hedged_calls"].as_u64().unwrap_or(0) + pool["retried_calls"].as_u64().unwrap_or(0)
}

/// A client's `/debug/balancer` state of the backend at `addr`.
pub(crate) async fn backend_state(
    http: &reqwest::Client,
    base: &str,
    addr: &str,
) -> anyhow::Result<serde_json::Value> {
    let pool: serde_json::Value = http
        .get(format!("{base}/debug/balancer"))
        .send()
        .await?
        .json()
        .await?;
    pool["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == addr).cloned())
        .with_context(|| format!("{addr} not in the pool of {base}: {pool}"))
}

/// Polls each client's `/debug/balancer` until `addr` is ejected (the
/// balancer stopped picking it), at most `within`; the time each took.
pub(crate) async fn until_ejected(
    bases: &[String],
    addr: &str,
    within: Duration,
) -> Vec<Option<Duration>> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut took = vec![None; bases.len()];
    while start.elapsed() < within && took.iter().any(Option::is_none) {
        for (i, base) in bases.iter().enumerate() {
            if took[i].is_none()
                && backend_state(&http, base, addr)
                    .await
                    .is_ok_and(|b| b["ejected"] == true)
            {
                took[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took
}

/// `n` sequential greetings.
pub(crate) async fn calls(topo: &DemoTopology, n: usize) -> Tally {
    let mut t = Tally::default();
    for i in 0..n {
        t.add(i, topo.say_hello("e2e").await);
    }
    t
}

/// Calls until one succeeds, at most `within`; returns how long it took.
pub(crate) async fn until_ok(topo: &DemoTopology, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let last = topo.say_hello("e2e").await;
        if matches!(last, Ok((200, _))) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("no greeting within {within:?}; last answer: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls until `host` serves one, at most `within`; returns how long it
/// took and the calls made meanwhile.
async fn until_served_by(
    topo: &DemoTopology,
    host: &str,
    within: Duration,
) -> anyhow::Result<(Duration, Tally)> {
    let start = Instant::now();
    let mut t = Tally::default();
    let mut i = 0;
    loop {
        t.add(i, topo.say_hello("e2e").await);
        i += 1;
        if t.served.contains_key(host) {
            return Ok((start.elapsed(), t));
        }
        if start.elapsed() > within {
            bail!("{host} served no call within {within:?}: {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn step(text: &str) {
    println!("e2e: {text}");
}

/// The checks; see the crate docs.
pub(crate) async fn run() -> anyhow::Result<()> {
    let mut figures: Vec<String> = Vec::new();
    let mut topo = DemoTopology::start(DemoBins::sibling(), 3, 2).await?;
    let mut result = checks(&mut topo, &mut figures).await;
    topo.shutdown().await;
    if result.is_ok() {
        let mut topo = start_zones().await?;
        result = zones(&mut topo, &mut figures).await;
        topo.shutdown().await;
    }
    println!();
    println!("e2e figures:");
    for f in &figures {
        println!("  {f}");
    }
    match &result {
        Ok(()) => println!("e2e: PASSED"),
        Err(e) => println!("e2e: FAILED: {e:#}"),
    }
    result
}

async fn checks(topo: &mut DemoTopology, figures: &mut Vec<String>) -> anyhow::Result<()> {
    step("a greeting through the demo client");
    let first = until_ok(topo, Duration::from_secs(15)).await?;
    figures.push(format!(
        "first greeting {first:?} after the last demo server listened"
    ));
    let (status, body) = topo.say_hello("kratos").await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(body["message"] == "Hello kratos", "{body}");

    step("both demo servers answer");
    // p2c may favour one backend for a while (a starved one gets a call at
    // least every 3 s), so both are given 10 s to show up.
    let start = Instant::now();
    let mut t = Tally::default();
    let mut i = 0;
    while t.served.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        t.add(i, topo.say_hello("e2e").await);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure!(t.failed.is_empty(), "failed calls: {:?}", t.failed);
    ensure!(
        t.served.contains_key("demo-server-1") && t.served.contains_key("demo-server-2"),
        "not both servers answered: {:?}",
        t.served
    );

    let wrr = topo
        .add_client("demo-client-wrr", &["--balancer", "wrr"], None)
        .await?;
    let clients = [("p2c", topo.client_url()), ("wrr", wrr.clone())];
    let bases: Vec<String> = clients.iter().map(|(_, b)| b.clone()).collect();
    for (_, base) in &clients {
        let http = reqwest::Client::new();
        for i in 0..2 {
            let addr = topo.server_addr(i).context("server runs")?.to_string();
            let start = Instant::now();
            while backend_state(&http, base, &addr)
                .await
                .map_or(true, |b| b["connected"] != true)
            {
                ensure!(
                    start.elapsed() < Duration::from_secs(15),
                    "{base} never connected to {addr}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    step("SIGSTOP demo-server-2: its sockets accept but nothing answers (a blackhole)");
    let victim = topo.server_addr(1).context("server runs")?.to_string();
    let loads: Vec<Load> = bases.iter().map(|b| Load::start(b)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    topo.signal_server(1, "STOP").await?;
    let ejected = until_ejected(&bases, &victim, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.finish().await);
    }
    topo.signal_server(1, "CONT").await?;
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        figures.push(format!(
            "SIGSTOP of 1 of 2 demo servers, {kind}: {} of {} calls failed ({} hedged or \
             retried); ejected {took:?} after the stop",
            t.failed.len(),
            t.ok + t.failed.len(),
            t.hedged
        ));
    }
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        ensure!(
            t.failed.is_empty(),
            "{kind}: calls failed with a silent demo server: {:?}",
            t.failed
        );
        ensure!(
            took.is_some(),
            "{kind}: the silent demo server was never ejected"
        );
    }

    step("SIGCONT demo-server-2: both clients take it back");
    for (kind, base) in &clients {
        let http = reqwest::Client::new();
        let start = Instant::now();
        while backend_state(&http, base, &victim)
            .await
            .map_or(true, |b| b["ejected"] == true)
        {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "{kind}: demo-server-2 not re-admitted after SIGCONT"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        figures.push(format!(
            "{kind}: demo-server-2 re-admitted {:?} after SIGCONT was seen",
            start.elapsed()
        ));
    }

    step("kill -9 demo-server-1 (the registry is not told)");
    let victim = topo.server_addr(0).context("server runs")?.to_string();
    let loads: Vec<Load> = bases.iter().map(|b| Load::start(b)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    topo.kill_server(0).await;
    let ejected = until_ejected(&bases, &victim, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.finish().await);
    }
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        figures.push(format!(
            "kill -9 of 1 of 2 demo servers, {kind}: {} of {} calls failed ({} hedged or \
             retried); ejected {took:?} after the kill",
            t.failed.len(),
            t.ok + t.failed.len(),
            t.hedged
        ));
    }
    for (((kind, _), t), took) in clients.iter().zip(&tallies).zip(&ejected) {
        ensure!(
            t.failed.is_empty(),
            "{kind}: calls failed after kill -9 of a demo server: {:?}",
            t.failed
        );
        ensure!(
            took.is_some(),
            "{kind}: the killed demo server was never ejected"
        );
    }
    let t = calls(topo, 100).await;
    ensure!(t.failed.is_empty(), "failed calls: {:?}", t.failed);
    ensure!(
        t.served.keys().all(|k| k == "demo-server-2"),
        "{:?}",
        t.served
    );

    step(
        "kill -9 discovery node 0, then start demo-server-3 (its node list starts with the dead node)",
    );
    topo.cluster.kill(0).await;
    let i = topo.add_server().await?;
    let host = format!("demo-server-{}", i + 1);
    let (took, t) = until_served_by(topo, &host, Duration::from_secs(30)).await?;
    figures.push(format!(
        "{host} (registered with discovery node 0 dead) served its first call {took:?} after it listened; {} failed calls meanwhile",
        t.failed.len()
    ));
    ensure!(
        t.failed.is_empty(),
        "calls failed while a discovery node was down: {:?}",
        t.failed
    );

    step("SIGTERM demo-server-2: it deregisters through the surviving nodes");
    let start = Instant::now();
    let status = topo.stop_server(1).await;
    ensure!(
        status.is_some_and(|s| s.success()),
        "demo-server-2 exit: {status:?}"
    );
    figures.push(format!(
        "demo-server-2 deregistered and exited {:?} after SIGTERM",
        start.elapsed()
    ));
    let t = calls(topo, 200).await;
    figures.push(format!(
        "after SIGTERM of demo-server-2: {} of 200 calls failed, served by {:?}",
        t.failed.len(),
        t.served
    ));
    ensure!(t.failed.is_empty(), "failed calls: {:?}", t.failed);
    ensure!(t.served.keys().all(|k| *k == host), "{:?}", t.served);

    step("the cluster still lists demo-server-3 and no longer demo-server-2");
    let http = reqwest::Client::new();
    for node in 1..3 {
        let url = format!(
            "{}/discovery/fetch?zone=zone01&env=dev&appid=demo.service&status=1",
            topo.cluster.url(node)
        );
        let body: serde_json::Value = http.get(&url).send().await?.json().await?;
        let hosts: Vec<&str> = body["data"]["instances"]["zone01"]
            .as_array()
            .map(|v| v.iter().filter_map(|i| i["hostname"].as_str()).collect())
            .unwrap_or_default();
        ensure!(
            hosts.contains(&host.as_str()) && !hosts.contains(&"demo-server-2"),
            "node {node} lists {hosts:?}"
        );
    }
    Ok(())
}

/// The local zone.
pub(crate) const LOCAL_ZONE: &str = "zone01";
/// The other zone.
pub(crate) const OTHER_ZONE: &str = "zone02";

/// Two zones: the client (p2c), a wrr client and demo-server-1 and -2 in
/// [`LOCAL_ZONE`], demo-server-3 and -4 in [`OTHER_ZONE`].
pub(crate) async fn start_zones() -> anyhow::Result<DemoTopology> {
    let mut topo = DemoTopology::start_in(DemoBins::sibling(), 3, 2, Some(LOCAL_ZONE)).await?;
    for _ in 0..2 {
        topo.add_server_in(Some(OTHER_ZONE)).await?;
    }
    topo.add_client("demo-client-wrr", &["--balancer", "wrr"], Some(LOCAL_ZONE))
        .await?;
    Ok(topo)
}

/// Calls through every client until each has had `in_a_row` calls in a row
/// served by one of `hosts`, at most `within`; how long that took.
async fn until_only(
    bases: &[String],
    hosts: &[&str],
    in_a_row: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    for base in bases {
        let url = format!("{base}/say_hello");
        let mut run = 0;
        while run < in_a_row {
            ensure!(
                start.elapsed() < within,
                "{base} not served only by {hosts:?} within {within:?}"
            );
            match greet(&http, &url).await {
                Ok((200, body)) if hosts.contains(&body["served_by"].as_str().unwrap_or("")) => {
                    run += 1
                }
                _ => run = 0,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(start.elapsed())
}

/// Stops the loads; a figure per client, and an error naming any failed
/// call.
async fn finish_loads(
    loads: Vec<Load>,
    what: &str,
    figures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.finish().await);
    }
    for (kind, t) in ["p2c", "wrr"].iter().zip(&tallies) {
        figures.push(format!(
            "zones, {what}, {kind}: {} of {} calls failed ({} hedged or retried); served by {:?}",
            t.failed.len(),
            t.ok + t.failed.len(),
            t.hedged,
            t.served
        ));
    }
    for (kind, t) in ["p2c", "wrr"].iter().zip(&tallies) {
        ensure!(
            t.failed.is_empty(),
            "zones, {what}, {kind}: failed calls: {:?}",
            t.failed
        );
    }
    Ok(())
}

/// Killing every server of the local zone moves traffic to the other zone
/// at once, while the registry still lists them; one local server back
/// takes it home; stopping it moves it away again. No call fails.
async fn zones(topo: &mut DemoTopology, figures: &mut Vec<String>) -> anyhow::Result<()> {
    step("zones: the clients in zone01 call zone01 only");
    let bases = vec![topo.client_url(), topo.clients[0].addr.to_string()];
    let bases: Vec<String> = bases
        .into_iter()
        .map(|b| {
            if b.starts_with("http") {
                b
            } else {
                format!("http://{b}")
            }
        })
        .collect();
    until_only(
        &bases,
        &["demo-server-1", "demo-server-2"],
        20,
        Duration::from_secs(20),
    )
    .await?;
    let other = ["demo-server-3", "demo-server-4"];

    step("zones: kill -9 both zone01 servers under load (the registry still lists them)");
    let loads: Vec<Load> = bases.iter().map(|b| Load::start(b)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    topo.kill_server(0).await;
    topo.kill_server(1).await;
    let killed = start.elapsed();
    // Each client's first call served by zone02 within 2 s of the kills,
    // then 20 in a row there.
    let within = Duration::from_secs(2).saturating_sub(killed);
    let first = killed + until_only(&bases, &other, 1, within).await?;
    let moved = until_only(&bases, &other, 20, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.push(format!(
        "zones: both zone01 servers killed ({killed:?}); both clients served by zone02 \
         {first:?} after the kills began, only by zone02 {moved:?} later"
    ));
    finish_loads(loads, "kill -9 of every zone01 server", figures).await?;

    step("zones: one zone01 server back takes the traffic home");
    let loads: Vec<Load> = bases.iter().map(|b| Load::start(b)).collect();
    let i = topo.add_server_in(Some(LOCAL_ZONE)).await?;
    let start = Instant::now();
    let host = format!("demo-server-{}", i + 1);
    let back = until_only(&bases, &[host.as_str()], 20, Duration::from_secs(20)).await?;
    figures.push(format!(
        "zones: {host} (zone01) listening; both clients served only by it {back:?} later \
         (started {:?} ago)",
        start.elapsed()
    ));
    finish_loads(loads, "a zone01 server back", figures).await?;

    step("zones: SIGTERM of the zone01 server under load");
    let loads: Vec<Load> = bases.iter().map(|b| Load::start(b)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let status = topo.stop_server(i).await;
    ensure!(
        status.is_some_and(|s| s.success()),
        "{host} exit: {status:?}"
    );
    let stopped = start.elapsed();
    let moved = until_only(&bases, &other, 20, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.push(format!(
        "zones: {host} stopped ({stopped:?}); both clients served only by zone02 {moved:?} later"
    ));
    finish_loads(loads, "SIGTERM of the zone01 server", figures).await?;
    Ok(())
}
