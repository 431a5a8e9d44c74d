//! The benchmark scenarios, run against `discovery` child processes:
//! register, renew, fetch/fetchs, poll wake-up, memory, a cancel flood, a
//! 3-node cluster's replication, and the scaling table (the same figures at
//! growing sizes of the work); each throughput figure next to a ceiling
//! measured in the same run.
//!
//! One file, longer than the others on purpose: the scenarios run in order
//! on shared state (the loaded node, its ceilings), and reading them top to
//! bottom is reading the benchmark as it runs.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use clap::Parser as _;
//! use loadgen::{args::Cli, scenarios::Bench};
//!
//! let cli = Cli::parse_from(["bench", "--check"]);
//! let report = Bench::new(cli.run, 20_000)?.run().await?;
//! println!("{}", report.table());
//! # Ok(()) }
//! ```

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use tokio::{
    process::Command,
    sync::Semaphore,
    time::{Instant, sleep},
};

use crate::{
    args::{RunArgs, Scale},
    client::{Conn, Plan, Req, drive, drive_sampled},
    proc::{Machine, Rss as _, Server, free_addr, spawn},
    report::{PerUnit, Report, Row, ScalingRow, Target},
    stats::{Recorder, Summary},
};

/// Extra config of every benchmarked node: no eviction during the run, room
/// for a million instances, holds longer than any wake-up takes.
const NODE_TOML: &str = r#"
[registry]
lease = "1h"
evict_interval = "1h"
poll_hold = "60s"
[limits]
max_instances = 2000000
max_pollers = 50000
max_connections_per_ip = 50000
[cluster]
sync_timeout = "2s"
"#;

const ENV: &str = "dev";
const ZONE: &str = "sh001";
/// `{"weight":"10"}`, form-encoded.
const METADATA: &str = "%7B%22weight%22%3A%2210%22%7D";

/// The `i`-th instance of a set of `apps` apps named `<prefix>.<n>`:
/// (appid, hostname). Instances are dealt round-robin over the apps.
pub fn instance(prefix: &str, apps: u64, i: u64) -> (String, String) {
    (
        format!("bench.{prefix}.{:05}", i % apps),
        format!("host-{:07}", i / apps),
    )
}

fn register_form(appid: &str, hostname: &str, i: u64) -> String {
    format!(
        "zone={ZONE}&env={ENV}&appid={appid}&hostname={hostname}&status=1\
         &addrs=http%3A%2F%2F10.{}.{}.{}%3A8000&version=v1&metadata={METADATA}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

fn register_req(appid: &str, hostname: &str, i: u64) -> Req {
    Req::post_form("/discovery/register", register_form(appid, hostname, i))
}

fn renew_req(appid: &str, hostname: &str) -> Req {
    Req::post_form(
        "/discovery/renew",
        format!("zone={ZONE}&env={ENV}&appid={appid}&hostname={hostname}"),
    )
}

fn fetch_req(appid: &str) -> Req {
    Req::get(format!("/discovery/fetch?env={ENV}&appid={appid}&status=1"))
}

/// A registry of `sets` instance sets: (prefix, apps, count), numbered one
/// after the other, so that one index addresses every instance.
#[derive(Debug, Clone)]
struct Population(Vec<(&'static str, u64, u64)>);

impl Population {
    fn len(&self) -> u64 {
        self.0.iter().map(|s| s.2).sum()
    }

    fn get(&self, mut i: u64) -> (String, String) {
        for &(prefix, apps, n) in &self.0 {
            if i < n {
                return instance(prefix, apps, i);
            }
            i -= n;
        }
        unreachable!("index within the population")
    }
}

/// One benchmark run.
#[derive(Debug)]
pub struct Bench {
    args: RunArgs,
    scale: Scale,
    bin: PathBuf,
    dir: PathBuf,
    machine: Machine,
    rows: Vec<Row>,
    scaling: Vec<ScalingRow>,
    notes: Vec<String>,
}

/// The two ceilings: (ops/s, p50, p99) of each.
#[derive(Debug, Clone, Copy)]
struct Ceilings {
    fetch: Summary,
    small: Summary,
}

impl Bench {
    /// Prepares a run; `nofile` is the open-file limit already raised.
    pub fn new(args: RunArgs, nofile: u64) -> anyhow::Result<Bench> {
        let scale = Scale::of(&args);
        let bin = match &args.discovery_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("executable has a directory")?
                .join("discovery"),
        };
        ensure!(
            bin.exists(),
            "{} not found: build it with `cargo build --release -p discovery-server` or pass --discovery-bin",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("discovery-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Bench {
            args,
            scale,
            bin,
            dir,
            machine: Machine::probe(nofile),
            rows: Vec::new(),
            scaling: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn say(&self, what: &str) {
        eprintln!("bench: {what}");
    }

    async fn start_nodes(&self, n: usize, tag: &str) -> anyhow::Result<Vec<Server>> {
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect::<Result<_, _>>()?;
        let layout = testkit::Layout::zones(&[(ZONE, n)]).toml(NODE_TOML);
        let mut starts = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let conf = self.dir.join(format!("{tag}-{i}.toml"));
            std::fs::write(&conf, layout.config_text(i, &addrs))?;
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--conf").arg(&conf).env("RUST_LOG", "warn");
            let (addr, name) = (*addr, format!("{tag}-{i}"));
            starts.push(tokio::spawn(async move {
                spawn(cmd, addr, &name, "/readyz").await
            }));
        }
        let mut nodes = Vec::new();
        for s in starts {
            nodes.push(s.await??);
        }
        Ok(nodes)
    }

    async fn start_ceiling(&self, body_bytes: usize) -> anyhow::Result<Server> {
        let addr = free_addr()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "ceiling",
            "--listen",
            &addr.to_string(),
            "--body-bytes",
            &body_bytes.to_string(),
        ]);
        spawn(cmd, addr, "ceiling", "/").await
    }

    async fn measure_ceiling(&self, body_bytes: usize) -> anyhow::Result<Summary> {
        Ok(self
            .measure_ceiling_cpu(body_bytes, self.scale.measure)
            .await?
            .0)
    }

    /// The ceiling for `body_bytes` over `window`, with its CPU time per
    /// request in microseconds.
    async fn measure_ceiling_cpu(
        &self,
        body_bytes: usize,
        window: Duration,
    ) -> anyhow::Result<(Summary, f64)> {
        let mut c = self.start_ceiling(body_bytes).await?;
        let s = self
            .measure_cpu(&c, window, |_| {
                Req::get("/discovery/fetch?env=dev&appid=x&status=1")
            })
            .await;
        c.kill().await;
        let s = s?;
        check(&s.0, "ceiling")?;
        Ok(s)
    }

    /// [`drive`] for `window` against `server`, with the CPU time the
    /// server process spent per operation of the window, in microseconds.
    async fn measure_cpu<F>(
        &self,
        server: &Server,
        window: Duration,
        make: F,
    ) -> anyhow::Result<(Summary, f64)>
    where
        F: Fn(u64) -> Req + Send + Sync + 'static,
    {
        let pid = server.id().context("the server has exited")?;
        let (s, before, after) = drive_sampled(
            server.addr,
            self.args.conns,
            Plan::timed(window),
            make,
            move || crate::proc::cpu_time_of(pid),
        )
        .await?;
        let spent = after?.saturating_sub(before?);
        Ok((s, spent.as_secs_f64() * 1e6 / s.ops.max(1) as f64))
    }

    /// Runs every scenario and returns the report.
    pub async fn run(mut self) -> anyhow::Result<Report> {
        let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        self.notes.push(format!(
            "mode {}; load generator on the same {} cores as the servers; {} connections; server logs at RUST_LOG=warn",
            self.scale.mode, self.machine.nproc, self.args.conns
        ));
        if self.args.runs_main() {
            let single = self.single_node().await?;
            if !self.args.no_cluster {
                self.cluster(single).await?;
            }
        }
        if self.args.runs_scaling() {
            self.scaling().await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(Report {
            started: crate::report::utc(started),
            mode: self.scale.mode.into(),
            machine: self.machine,
            rows: self.rows,
            scaling: self.scaling,
            notes: self.notes,
        })
    }

    fn throughput_rows(&mut self, name: &str, s: &Summary, ceiling: (&str, &Summary), note: &str) {
        let (cname, c) = ceiling;
        self.rows.push(
            Row::new(name, "ops/s", s.ops_per_s, "/s")
                .ratio(cname, c.ops_per_s)
                .note(note),
        );
        self.rows
            .push(Row::new(name, "p50", s.p50_ms, "ms").ratio(cname, c.p50_ms));
        self.rows
            .push(Row::new(name, "p99", s.p99_ms, "ms").ratio(cname, c.p99_ms));
    }

    fn set_target(&mut self, scenario: &str, figure: &str, target: Target) {
        if let Some(r) = self
            .rows
            .iter_mut()
            .rev()
            .find(|r| r.scenario == scenario && r.figure == figure)
        {
            *r = r.clone().target(target);
        }
    }

    /// Register, fetch, renew, poll wake-up and memory on one node; returns
    /// the single-node register and renew rates for the cluster ratios.
    async fn single_node(&mut self) -> anyhow::Result<(f64, f64)> {
        let scale = self.scale.clone();
        let conns = self.args.conns;
        self.say("starting one discovery node");
        let mut node = self.start_nodes(1, "single").await?.remove(0);
        let addr = node.addr;
        sleep(Duration::from_millis(500)).await;
        let rss_empty = node.rss()?;

        // 1. Register.
        self.say(&format!(
            "register: {} instances over {} apps",
            scale.instances, scale.apps
        ));
        let apps = scale.apps;
        let register = drive(addr, conns, Plan::count(scale.instances), move |i| {
            let (a, h) = instance("app", apps, i);
            register_req(&a, &h, i)
        })
        .await?;
        check(&register, "register")?;
        sleep(Duration::from_millis(500)).await;
        let rss_base = node.rss()?;

        // The ceilings answer bodies as large as a fetch and a renew answer.
        let mut ctl = Conn::connect(addr).await?;
        let fetch_bytes = ctl
            .send(fetch_req(&instance("app", apps, 0).0))
            .await?
            .body
            .len();
        let (a, h) = instance("app", apps, 0);
        let renew_bytes = ctl.send(renew_req(&a, &h)).await?.body.len();
        self.say(&format!(
            "ceilings: {fetch_bytes} B (a fetch answer) and {renew_bytes} B (a renew answer)"
        ));
        let ceilings = Ceilings {
            fetch: self.measure_ceiling(fetch_bytes).await?,
            small: self.measure_ceiling(renew_bytes).await?,
        };
        let fetch_c = (format!("{fetch_bytes} B"), ceilings.fetch);
        let small_c = (format!("{renew_bytes} B"), ceilings.small);
        self.throughput_rows(
            "ceiling",
            &ceilings.fetch,
            (&fetch_c.0, &fetch_c.1),
            &format!("minimal hyper server, {fetch_bytes} B body"),
        );
        self.throughput_rows(
            "ceiling",
            &ceilings.small,
            (&small_c.0, &small_c.1),
            &format!("minimal hyper server, {renew_bytes} B body"),
        );
        self.throughput_rows(
            "register",
            &register,
            (&small_c.0, &small_c.1),
            &format!(
                "{} instances over {} apps, {conns} conns",
                scale.instances, scale.apps
            ),
        );
        self.set_target("register", "ops/s", Target::RatioAtLeast(0.50));

        // 3. Fetch and fetchs of random apps.
        self.say("fetch / fetchs of random apps");
        let fetch = drive(addr, conns, Plan::timed(scale.measure), move |_| {
            let app = rand::random_range(0..apps);
            fetch_req(&instance("app", apps, app).0)
        })
        .await?;
        check(&fetch, "fetch")?;
        self.throughput_rows(
            "fetch",
            &fetch,
            (&fetch_c.0, &fetch_c.1),
            &format!(
                "1 random app of {apps}, {} instances, {} B answer",
                scale.instances / apps,
                fetch.mean_body_bytes
            ),
        );
        self.set_target("fetch", "ops/s", Target::RatioAtLeast(0.40));
        let fetchs = drive(addr, conns, Plan::timed(scale.measure), move |_| {
            let (x, y) = (rand::random_range(0..apps), rand::random_range(0..apps));
            Req::get(format!(
                "/discovery/fetchs?env={ENV}&appid={}&appid={}&status=1",
                instance("app", apps, x).0,
                instance("app", apps, y).0
            ))
        })
        .await?;
        check(&fetchs, "fetchs")?;
        self.throughput_rows(
            "fetchs",
            &fetchs,
            (&fetch_c.0, &fetch_c.1),
            &format!("2 random apps, {} B answer", fetchs.mean_body_bytes),
        );

        // Fetch again with connections that trickle a request head one
        // byte per second (slow-loris); the p99 against the unloaded one.
        self.say(&format!("fetch with {SLOW_CONNS} slow connections"));
        let trickle = SlowLoris::open(addr, SLOW_CONNS).await?;
        let slowed = drive(addr, conns, Plan::timed(scale.measure), move |_| {
            let app = rand::random_range(0..apps);
            fetch_req(&instance("app", apps, app).0)
        })
        .await?;
        let still_open = trickle.close();
        check(&slowed, "fetch (slow-loris)")?;
        let name = format!("fetch, {SLOW_CONNS} slow conns");
        self.rows.push(
            Row::new(&name, "ops/s", slowed.ops_per_s, "/s")
                .ratio("unloaded fetch", fetch.ops_per_s)
                .note(format!(
                    "{still_open} of {SLOW_CONNS} still open at the end (closed at the read deadline)"
                )),
        );
        self.rows.push(
            Row::new(&name, "p99", slowed.p99_ms, "ms")
                .ratio("unloaded fetch", fetch.p99_ms)
                .target(Target::RatioAtMost(2.0)),
        );

        // 2. Steady renew of every instance, in order.
        self.say("renew of every instance");
        let n = scale.instances;
        let renew = drive(addr, conns, Plan::timed(scale.measure), move |i| {
            let (a, h) = instance("app", apps, i % n);
            renew_req(&a, &h)
        })
        .await?;
        check(&renew, "renew")?;
        self.throughput_rows(
            "renew",
            &renew,
            (&small_c.0, &small_c.1),
            &format!("{n} instances round-robin"),
        );
        self.set_target("renew", "ops/s", Target::RatioAtLeast(0.60));

        // 4. Poll wake-up, with the memory of parked pollers.
        for &pollers in &scale.pollers {
            self.say(&format!("poll wake-up: {pollers} parked pollers"));
            let (cw, w) = self.wakeup_pair(&node, pollers, renew_bytes).await?;
            let name = format!("poll wake-up {pollers}");
            let cname = format!("{pollers} parked on ceiling");
            for (figure, v, c) in [
                ("p50", cw.wake.p50_ms, cw.wake.p50_ms),
                ("p99", cw.wake.p99_ms, cw.wake.p99_ms),
                ("max", cw.wake.max_ms, cw.wake.max_ms),
            ] {
                self.rows.push(
                    Row::new(&format!("ceiling wake-up {pollers}"), figure, v, "ms")
                        .ratio(&cname, c)
                        .note("hyper server that parks and wakes, no registry"),
                );
            }
            for (figure, v, c) in [
                ("p50", w.wake.p50_ms, cw.wake.p50_ms),
                ("p99", w.wake.p99_ms, cw.wake.p99_ms),
                ("max", w.wake.max_ms, cw.wake.max_ms),
            ] {
                self.rows
                    .push(Row::new(&name, figure, v, "ms").ratio(&cname, c));
            }
            self.rows.push(
                Row::new(&name, "register call", w.register_ms, "ms")
                    .ratio(&small_c.0, ceilings.small.p50_ms)
                    .note("the write that woke them; must not wait for the wake-ups"),
            );
            if pollers >= 10_000 {
                self.set_target(&name, "p99", Target::AtMost(50.0));
            }
            self.rows.push(
                Row::new(
                    "memory",
                    &format!("RSS per parked poller ({pollers})"),
                    w.rss_per_poller(pollers),
                    "B",
                )
                .ratio(&cname, cw.rss_per_poller(pollers))
                .target(Target::AtMost(8192.0))
                .note("connection, request and waiter; kernel socket memory is not in RSS"),
            );
        }

        // 5. Memory: empty, base, big; big stays stable with renews.
        let big = scale.big.max(scale.instances);
        let extra = big - scale.instances;
        self.say(&format!("memory: loading {big} instances"));
        let big_apps = (extra / 100).max(1);
        let loaded = drive(addr, conns, Plan::count(extra), move |i| {
            let (a, h) = instance("big", big_apps, i);
            register_req(&a, &h, i)
        })
        .await?;
        check(&loaded, "register (big)")?;
        sleep(Duration::from_millis(500)).await;
        let rss_big = node.rss()?;
        let pop = Population(vec![("app", apps, n), ("big", big_apps, extra)]);
        let total = pop.len();
        let renew_big = drive(addr, conns, Plan::timed(scale.measure), move |i| {
            let (a, h) = pop.get(i % total);
            renew_req(&a, &h)
        })
        .await?;
        check(&renew_big, "renew (big)")?;
        sleep(Duration::from_millis(500)).await;
        let rss_after = node.rss()?;
        let scaled = if big < 1_000_000 {
            format!("scaled down from 1M in {} mode", scale.mode)
        } else {
            String::new()
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        self.rows
            .push(Row::new("memory", "RSS empty", mib(rss_empty), "MiB"));
        self.rows.push(Row::new(
            "memory",
            &format!("RSS {} instances", crate::report::human(n as f64)),
            mib(rss_base),
            "MiB",
        ));
        self.rows.push(
            Row::new(
                "memory",
                &format!("RSS {} instances", crate::report::human(big as f64)),
                mib(rss_big),
                "MiB",
            )
            .note(&scaled),
        );
        self.rows.push(
            Row::new(
                "memory",
                &format!("RSS per instance ({})", crate::report::human(n as f64)),
                rss_base.saturating_sub(rss_empty) as f64 / n as f64,
                "B",
            )
            .target(Target::AtMost(1024.0)),
        );
        self.rows.push(
            Row::new(
                "memory",
                &format!("RSS per instance ({})", crate::report::human(big as f64)),
                rss_big.saturating_sub(rss_empty) as f64 / big as f64,
                "B",
            )
            .target(Target::AtMost(1024.0))
            .note(&scaled),
        );
        self.rows.push(
            Row::new(
                "memory",
                &format!("RSS growth over {:?} of renews", scale.measure),
                mib(rss_after.saturating_sub(rss_big)),
                "MiB",
            )
            .note("stable = about 0"),
        );

        // Cancels of random keys that never existed: a registry that
        // remembered each of them grew by tens of MB per 100k.
        let cancels = big;
        self.say(&format!("cancel flood: {cancels} cancels of random keys"));
        let rss_pre = node.rss()?;
        let _ = drive(addr, conns, Plan::count(cancels), move |i| {
            Req::post_form(
                "/discovery/cancel",
                format!("zone=z&env=dev&appid=flood.{i}&hostname=h{i}"),
            )
        })
        .await?;
        sleep(Duration::from_millis(500)).await;
        let rss_post = node.rss()?;
        self.rows.push(
            Row::new(
                "cancel flood",
                &format!(
                    "RSS growth over {} random cancels",
                    crate::report::human(cancels as f64)
                ),
                mib(rss_post.saturating_sub(rss_pre)),
                "MiB",
            )
            .target(Target::AtMost(16.0)),
        );
        self.throughput_rows(
            &format!("renew at {}", crate::report::human(big as f64)),
            &renew_big,
            (&small_c.0, &small_c.1),
            &scaled,
        );
        self.set_target(
            &format!("renew at {}", crate::report::human(big as f64)),
            "ops/s",
            Target::AtLeast(33_000.0),
        );
        node.kill().await;
        Ok((register.ops_per_s, renew.ops_per_s))
    }

    /// Replication latency and cluster write throughput on three nodes.
    async fn cluster(&mut self, single: (f64, f64)) -> anyhow::Result<()> {
        let scale = self.scale.clone();
        let conns = self.args.conns;
        self.say("starting a 3-node cluster");
        let nodes = self.start_nodes(3, "cluster").await?;
        for n in &nodes {
            wait_peers_up(n.addr, 2).await?;
        }
        let mut w = Conn::connect(nodes[0].addr).await?;
        let mut readers = vec![
            Conn::connect(nodes[1].addr).await?,
            Conn::connect(nodes[2].addr).await?,
        ];
        let mut ctl: Vec<Conn> = vec![
            Conn::connect(nodes[1].addr).await?,
            Conn::connect(nodes[2].addr).await?,
        ];

        // Write on node 1 → visible on nodes 2 and 3: parked long polls on
        // both answer when the write arrives.
        self.say(&format!(
            "replication: {} write → visible trials",
            scale.repl_trials
        ));
        let app = "bench.repl";
        ensure!(
            w.send(register_req(app, "seed", 0)).await?.is_ok(),
            "seed register"
        );
        for c in ctl.iter_mut() {
            wait_visible(c, app).await?;
        }
        let (mut both, mut call) = (Recorder::new(), Recorder::new());
        let mut each = [Recorder::new(), Recorder::new()];
        for k in 0..scale.repl_trials {
            let mut polls = Vec::new();
            for (j, mut r) in std::mem::take(&mut readers).into_iter().enumerate() {
                let latest = latest_timestamp(&mut ctl[j], app).await?;
                let parked = parked_polls(&mut ctl[j]).await?;
                let req = poll_req(app, &format!("watcher-{j}"), latest);
                polls.push(tokio::spawn(async move {
                    let a = r.send(req).await;
                    (r, a, Instant::now())
                }));
                wait_parked(&mut ctl[j], parked + 1).await?;
            }
            let t0 = Instant::now();
            let a = w
                .send(register_req(app, &format!("r-{k}"), k as u64))
                .await?;
            ensure!(a.is_ok(), "register on node 1: {:?}", a.body);
            call.record(t0.elapsed());
            let mut slowest = Duration::ZERO;
            for (j, task) in polls.into_iter().enumerate() {
                let (conn, answer, at) = task.await?;
                readers.push(conn);
                let answer = answer?;
                ensure!(answer.is_ok(), "poll on node {}: {:?}", j + 2, answer.body);
                ensure!(at >= t0, "poll on node {} answered before the write", j + 2);
                let d = at - t0;
                each[j].record(d);
                slowest = slowest.max(d);
            }
            both.record(slowest);
            sleep(Duration::from_millis(5)).await;
        }
        let window = Duration::from_secs(1);
        let both = both.summary(window);
        for (figure, v) in [
            ("p50", both.p50_ms),
            ("p99", both.p99_ms),
            ("max", both.max_ms),
        ] {
            let mut row = Row::new("replication visible on 2 and 3", figure, v, "ms");
            if figure == "p99" {
                row = row.target(Target::AtMost(10.0));
            }
            self.rows
                .push(row.note("one write at a time; includes the long-poll wake-up"));
        }
        for (j, r) in each.iter().enumerate() {
            let s = r.summary(window);
            self.rows.push(Row::new(
                &format!("replication visible on {}", j + 2),
                "p99",
                s.p99_ms,
                "ms",
            ));
        }
        let c = call.summary(window);
        self.rows.push(
            Row::new("replication", "register call p99", c.p99_ms, "ms")
                .note("answers after one same-zone ack"),
        );

        // Sustained writes through node 1, and peer requests per write.
        let sent0 = peer_sent(&mut w).await?;
        self.say(&format!(
            "cluster: {} registers through node 1",
            scale.cluster_writes
        ));
        let reg = drive(
            nodes[0].addr,
            conns,
            Plan::count(scale.cluster_writes),
            move |i| {
                let (a, h) = instance("cl", 100, i);
                register_req(&a, &h, i)
            },
        )
        .await?;
        check(&reg, "cluster register")?;
        let drained = Instant::now();
        wait_drained(&mut w).await?;
        let drain_ms = drained.elapsed().as_secs_f64() * 1000.0;
        let sent1 = peer_sent(&mut w).await?;
        let writes = scale.cluster_writes;
        self.rows.push(
            Row::new("cluster register via node 1", "ops/s", reg.ops_per_s, "/s")
                .ratio("single node", single.0)
                .target(Target::RatioAtLeast(0.25))
                .note(format!(
                    "{writes} registers, {conns} conns; ratio to the single-node register rate"
                )),
        );
        self.rows.push(Row::new(
            "cluster register via node 1",
            "p99",
            reg.p99_ms,
            "ms",
        ));
        self.rows.push(
            Row::new(
                "cluster register via node 1",
                "peer requests per write",
                (sent1 - sent0) as f64 / writes as f64,
                "",
            )
            .target(Target::AtMost(2.0))
            .note("2 peers: 2 = one request per peer, no storm"),
        );
        self.rows.push(
            Row::new(
                "cluster register via node 1",
                "queues drained after",
                drain_ms,
                "ms",
            )
            .note("time after the last answer"),
        );

        self.say("cluster: renews through node 1");
        let renew = drive(nodes[0].addr, conns, Plan::timed(scale.measure), move |i| {
            let (a, h) = instance("cl", 100, i % writes);
            renew_req(&a, &h)
        })
        .await?;
        check(&renew, "cluster renew")?;
        let drained = Instant::now();
        wait_drained(&mut w).await?;
        let renew_drain_ms = drained.elapsed().as_secs_f64() * 1000.0;
        let sent2 = peer_sent(&mut w).await?;
        self.rows.push(
            Row::new("cluster renew via node 1", "ops/s", renew.ops_per_s, "/s")
                .ratio("single node", single.1)
                .note("ratio to the single-node renew rate"),
        );
        self.rows.push(Row::new(
            "cluster renew via node 1",
            "p99",
            renew.p99_ms,
            "ms",
        ));
        // Renews started in the warm-up replicate too; count per renew sent.
        let renews_sent = renew_requests(&renew, &scale);
        self.rows.push(
            Row::new(
                "cluster renew via node 1",
                "peer requests per renew",
                (sent2 - sent1) as f64 / renews_sent,
                "",
            )
            .note("estimate: warm-up renews counted at the measured rate"),
        );
        self.rows.push(Row::new(
            "cluster renew via node 1",
            "queues drained after",
            renew_drain_ms,
            "ms",
        ));
        let counts = {
            let mut v = Vec::new();
            for n in &nodes {
                let mut c = Conn::connect(n.addr).await?;
                v.push(
                    status(&mut c).await?["registry"]["instances"]
                        .as_u64()
                        .unwrap_or(0),
                );
            }
            v
        };
        if counts.iter().any(|&c| c != counts[0]) {
            self.notes.push(format!(
                "cluster nodes disagree on the instance count: {counts:?}"
            ));
        }
        for mut n in nodes {
            n.kill().await;
        }
        Ok(())
    }

    /// The ceiling's wake-up of `pollers` parked polls (parking on a body
    /// of `body_bytes`), then ours on `node`.
    async fn wakeup_pair(
        &self,
        node: &Server,
        pollers: usize,
        body_bytes: usize,
    ) -> anyhow::Result<(Wakeup, Wakeup)> {
        let mut ceiling = self.start_ceiling(body_bytes).await?;
        let cw = poll_wakeup(&ceiling, pollers, false).await?;
        ceiling.kill().await;
        let w = poll_wakeup(node, pollers, true).await?;
        Ok((cw, w))
    }

    fn push_scaling(&mut self, row: ScalingRow) {
        self.rows.extend(row.rows());
        self.scaling.push(row);
    }

    /// The scaling table: how cost grows with work. On one node, the fetch
    /// of one app at each answer size, each against a ceiling answering a
    /// body of that size, and the poll wake-up at each poller count against
    /// the parking ceiling; on a second node, started empty so that its RSS
    /// grows with the registry alone, register and renew at each registry
    /// size against the renew-answer-size ceiling. Every throughput row
    /// carries the CPU time each process spent per operation over the same
    /// window, which shows where the cost goes when the ratio drops.
    async fn scaling(&mut self) -> anyhow::Result<()> {
        let sc = self.scale.scaling.clone();
        let window = sc.measure;
        let conns = self.args.conns;

        self.say("scaling: starting a node for fetch and poll wake-up");
        let mut node = self.start_nodes(1, "scaling-fetch").await?.remove(0);
        let mut ctl = Conn::connect(node.addr).await?;
        for &per_app in &sc.fetch_per_app {
            // One app of `per_app` instances; every request fetches it, as
            // the fetch scenario's apps are fetched (its answer is built
            // once and served until the app changes).
            let prefix = format!("scale{per_app}");
            let p = prefix.clone();
            let workers = usize::try_from(per_app).unwrap_or(conns).clamp(1, conns);
            let loaded = drive(node.addr, workers, Plan::count(per_app), move |i| {
                let (a, h) = instance(&p, 1, i);
                register_req(&a, &h, i)
            })
            .await?;
            check(&loaded, "register (scaling fetch)")?;
            let app = instance(&prefix, 1, 0).0;
            let answer = ctl.send(fetch_req(&app)).await?;
            ensure!(answer.is_ok(), "fetch {app}: {:?}", answer.body);
            let bytes = answer.body.len();
            self.say(&format!(
                "scaling: fetch of {per_app} instances ({bytes} B answer) and its ceiling"
            ));
            let (c, c_cpu) = self.measure_ceiling_cpu(bytes, window).await?;
            let (s, cpu) = self
                .measure_cpu(&node, window, move |_| fetch_req(&app))
                .await?;
            check(&s, "fetch (scaling)")?;
            if s.mean_body_bytes != bytes as u64 {
                self.notes.push(format!(
                    "scaling: fetch of {per_app} answered {} B on average, its ceiling {bytes} B",
                    s.mean_body_bytes
                ));
            }
            let mut row = ScalingRow::new(
                &format!("{per_app}/app ({})", bytes_label(bytes)),
                "fetch ops/s",
                Some(s.ops_per_s),
                "/s",
            );
            row.ceiling = Some(c.ops_per_s);
            row.ceiling_name = Some(format!("{bytes} B"));
            row.cpu_us_ours = Some(cpu);
            row.cpu_us_ceiling = Some(c_cpu);
            self.push_scaling(row);
        }

        // The poll ceiling parks on, and the write ceiling answers, a body
        // the size of a renew answer.
        let (a, h) = instance("scale1", 1, 0);
        let renew = ctl.send(renew_req(&a, &h)).await?;
        ensure!(renew.is_ok(), "renew: {:?}", renew.body);
        let small = renew.body.len();
        for &pollers in &sc.pollers {
            self.say(&format!(
                "scaling: poll wake-up of {pollers} parked pollers"
            ));
            let (cw, w) = self.wakeup_pair(&node, pollers, small).await?;
            let mut row = ScalingRow::new(
                &format!("{} pollers", size_label(pollers as u64)),
                "wake-up p99",
                Some(w.wake.p99_ms),
                "ms",
            );
            row.ceiling = Some(cw.wake.p99_ms);
            row.ceiling_name = Some(format!("{pollers} parked on ceiling"));
            row.rss_per = Some(PerUnit {
                unit: "poller".into(),
                ours: w.rss_per_poller(pollers),
                ceiling: Some(cw.rss_per_poller(pollers)),
            });
            self.push_scaling(row);
        }
        drop(ctl);
        node.kill().await;

        self.say(&format!("scaling: the {small} B ceiling"));
        let (small_c, small_cpu) = self.measure_ceiling_cpu(small, window).await?;
        let small_name = format!("{small} B");

        self.say("scaling: starting an empty node for register and renew");
        let mut node = self.start_nodes(1, "scaling-size").await?.remove(0);
        let addr = node.addr;
        sleep(Duration::from_millis(500)).await;
        let rss_empty = node.rss()?;
        let mut empty = ScalingRow::new("0 instances", "RSS (empty)", None, "");
        empty.rss_bytes = Some(rss_empty);
        self.push_scaling(empty);
        let mut have = 0u64;
        for &n in &sc.registry {
            self.say(&format!("scaling: growing the registry to {n} instances"));
            let from = have;
            let grown = drive(addr, conns, Plan::count(n - from), move |i| {
                let k = from + sized_key(i, n - from);
                let (a, h) = sized_instance(k);
                register_req(&a, &h, k)
            })
            .await?;
            check(&grown, "register (scaling growth)")?;
            have = n;
            sleep(Duration::from_millis(500)).await;
            let rss = node.rss()?;

            // Re-registers of existing keys: the registry stays at n, which
            // is what "register at size n" means; a new key per request
            // would grow it by the rate times the window.
            self.say(&format!("scaling: register and renew at {n} instances"));
            let (reg, reg_cpu) = self
                .measure_cpu(&node, window, move |i| {
                    let k = sized_key(i, n);
                    let (a, h) = sized_instance(k);
                    register_req(&a, &h, k)
                })
                .await?;
            check(&reg, "re-register (scaling)")?;
            let (ren, ren_cpu) = self
                .measure_cpu(&node, window, move |i| {
                    let (a, h) = sized_instance(sized_key(i, n));
                    renew_req(&a, &h)
                })
                .await?;
            check(&ren, "renew (scaling)")?;
            let size = format!("{} instances", size_label(n));
            for (figure, s, cpu) in [
                ("register ops/s", &reg, reg_cpu),
                ("renew ops/s", &ren, ren_cpu),
            ] {
                let mut row = ScalingRow::new(&size, figure, Some(s.ops_per_s), "/s");
                row.ceiling = Some(small_c.ops_per_s);
                row.ceiling_name = Some(small_name.clone());
                row.cpu_us_ours = Some(cpu);
                row.cpu_us_ceiling = Some(small_cpu);
                if figure.starts_with("register") {
                    row.rss_bytes = Some(rss);
                    row.rss_per = Some(PerUnit {
                        unit: "instance".into(),
                        ours: rss.saturating_sub(rss_empty) as f64 / n as f64,
                        ceiling: None,
                    });
                }
                self.push_scaling(row);
            }
        }
        node.kill().await;
        self.notes.push(format!(
            "scaling: {window:?} windows, {conns} conns; register rows re-register existing keys (the size stays put); \
             RSS is the server's after the size was reached, per instance above the empty node; \
             CPU/op is the process's utime + stime over the window divided by the operations in it"
        ));
        Ok(())
    }
}

/// Instances per app of the scaling registry: as many as the register
/// scenario's apps hold.
const SIZED_PER_APP: u64 = 100;

/// The `k`-th instance of the scaling registry: app `k / 100`, so that
/// growing the registry adds apps and leaves the existing ones as they are.
fn sized_instance(k: u64) -> (String, String) {
    (
        format!("bench.size.{:05}", k / SIZED_PER_APP),
        format!("host-{:07}", k % SIZED_PER_APP),
    )
}

/// The key (below `n`, a multiple of 100) that operation `i` touches:
/// dealt round-robin over the apps, as in the register scenario, so that
/// concurrent operations rarely meet on one app; every key once per `n`
/// operations.
fn sized_key(i: u64, n: u64) -> u64 {
    let apps = (n / SIZED_PER_APP).max(1);
    let i = i % n;
    (i % apps) * SIZED_PER_APP + i / apps
}

/// `472` → `472 B`, `37194` → `37.2 kB`.
fn bytes_label(n: usize) -> String {
    if n < 1_000 {
        format!("{n} B")
    } else {
        format!("{:.1} kB", n as f64 / 1_000.0)
    }
}

/// `10000` → `10k`, `1000000` → `1M`, `250` → `250`.
fn size_label(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn renew_requests(s: &Summary, scale: &Scale) -> f64 {
    let Plan::For { warmup, measure } = Plan::timed(scale.measure) else {
        return s.ops as f64;
    };
    (s.ops as f64 * (warmup + measure).as_secs_f64() / measure.as_secs_f64()).max(1.0)
}

/// Fails a scenario that had errors or did nothing.
fn check(s: &Summary, what: &str) -> anyhow::Result<()> {
    if s.errors > 0 || s.ops == 0 {
        bail!("{what}: {} operations, {} errors", s.ops, s.errors);
    }
    Ok(())
}

fn poll_req(app: &str, hostname: &str, latest: i64) -> Req {
    Req::get(format!(
        "/discovery/poll?env={ENV}&hostname={hostname}&appid={app}&latest_timestamp={latest}"
    ))
    .header("x1-bmspy-timeout", "40000")
}

/// Connections held open by the slow-loris scenario.
const SLOW_CONNS: usize = 2_000;

/// Connections that send a request head one byte per second, from one
/// task, until closed.
struct SlowLoris {
    task: tokio::task::JoinHandle<()>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowLoris {
    async fn open(addr: SocketAddr, n: usize) -> anyhow::Result<SlowLoris> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Some(tokio::net::TcpStream::connect(addr).await?));
        }
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(n));
        let count = Arc::clone(&open);
        let task = tokio::spawn(async move {
            let head = b"GET /discovery/fetch?env=dev&appid=x&status=1 HTTP/1.1\r\nhost: x\r\n\r\n";
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for at in 0.. {
                tick.tick().await;
                let byte = &head[at % head.len()..=at % head.len()];
                for slot in &mut conns {
                    // A failed write means the node closed it.
                    if slot.as_ref().is_some_and(|c| c.try_write(byte).is_err()) {
                        *slot = None;
                    }
                }
                count.store(
                    conns.iter().filter(|c| c.is_some()).count(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        });
        Ok(SlowLoris { task, open })
    }

    /// Closes them all; how many the node had not closed yet.
    fn close(self) -> usize {
        self.task.abort();
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn status(c: &mut Conn) -> anyhow::Result<serde_json::Value> {
    c.send(Req::get("/status")).await?.json()
}

async fn parked_polls(c: &mut Conn) -> anyhow::Result<u64> {
    Ok(status(c).await?["registry"]["parked_polls"]
        .as_u64()
        .unwrap_or(0))
}

async fn wait_parked(c: &mut Conn, want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = parked_polls(c).await?;
        if now >= want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {now} of {want} polls parked after 60 s"
        );
        sleep(Duration::from_millis(2)).await;
    }
}

async fn latest_timestamp(c: &mut Conn, app: &str) -> anyhow::Result<i64> {
    let a = c.send(fetch_req(app)).await?;
    ensure!(a.is_ok(), "fetch {app}: {:?}", a.body);
    a.json()?["data"]["latest_timestamp"]
        .as_i64()
        .context("latest_timestamp")
}

async fn wait_visible(c: &mut Conn, app: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.send(fetch_req(app)).await?.is_ok() {
        ensure!(
            Instant::now() < deadline,
            "{app} not replicated within 30 s"
        );
        sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn peers(c: &mut Conn) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(status(c).await?["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn wait_peers_up(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = peers(&mut c).await?;
        if p.iter().filter(|p| p["status"] == 0).count() >= n {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{addr}: peers not UP: {p:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Writes delivered to all peers so far.
async fn peer_sent(c: &mut Conn) -> anyhow::Result<u64> {
    Ok(peers(c)
        .await?
        .iter()
        .map(|p| p["sent"].as_u64().unwrap_or(0))
        .sum())
}

async fn wait_drained(c: &mut Conn) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queued: u64 = peers(c)
            .await?
            .iter()
            .map(|p| p["queued"].as_u64().unwrap_or(0))
            .sum();
        if queued == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{queued} writes still queued");
        sleep(Duration::from_millis(5)).await;
    }
}

/// What one poll wake-up measured.
#[derive(Debug)]
struct Wakeup {
    wake: Summary,
    register_ms: f64,
    rss_before: u64,
    rss_parked: u64,
}

impl Wakeup {
    /// RSS growth per parked poller, bytes.
    fn rss_per_poller(&self, pollers: usize) -> f64 {
        self.rss_parked.saturating_sub(self.rss_before) as f64 / pollers.max(1) as f64
    }
}

/// Parks `n` long polls (one connection each) on a fresh app, registers
/// one instance there, and times every poller's answer from the register.
/// Against the ceiling (`discovery` false) the same requests park and wake
/// with no registry behind them.
async fn poll_wakeup(node: &Server, n: usize, discovery: bool) -> anyhow::Result<Wakeup> {
    let addr = node.addr;
    let app = format!("bench.poll.{n}");
    let mut ctl = Conn::connect(addr).await?;
    let mut writer = Conn::connect(addr).await?;
    let latest = if discovery {
        let seed = ctl.send(register_req(&app, "seed", 0)).await?;
        ensure!(seed.is_ok(), "seed register: {:?}", seed.body);
        latest_timestamp(&mut ctl, &app).await?
    } else {
        0
    };
    let parked0 = parked_polls(&mut ctl).await?;
    sleep(Duration::from_millis(300)).await;
    let rss_before = node.rss()?;

    // Connect with bounded concurrency, so that the listen backlog never
    // overflows (a dropped SYN costs a second).
    let gate = Arc::new(Semaphore::new(256));
    let t0 = Arc::new(OnceLock::<Instant>::new());
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let (gate, t0) = (Arc::clone(&gate), Arc::clone(&t0));
        let req = poll_req(&app, &format!("poller-{k}"), latest);
        tasks.push(tokio::spawn(async move {
            let mut c = {
                let _permit = gate.acquire().await?;
                Conn::connect(addr).await?
            };
            let a = c.send(req).await?;
            let at = Instant::now();
            ensure!(a.is_ok(), "poller {k}: {:?}", a.body);
            let t0 = *t0.get().context("answered before the register")?;
            Ok::<_, anyhow::Error>(at.saturating_duration_since(t0))
        }));
    }
    wait_parked(&mut ctl, parked0 + n as u64).await?;
    sleep(Duration::from_millis(300)).await;
    let rss_parked = node.rss()?;

    let start = Instant::now();
    let _ = t0.set(start);
    let a = writer.send(register_req(&app, "wake", 1)).await?;
    let register_ms = start.elapsed().as_secs_f64() * 1000.0;
    ensure!(a.is_ok(), "wake register: {:?}", a.body);
    let mut rec = Recorder::new();
    for t in tasks {
        match t.await? {
            Ok(d) => rec.record(d),
            Err(e) => {
                eprintln!("bench: {e:#}");
                rec.error();
            }
        }
    }
    let wake = rec.summary(start.elapsed());
    check(&wake, "poll wake-up")?;
    Ok(Wakeup {
        wake,
        register_ms,
        rss_before,
        rss_parked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_dealt_over_apps() {
        assert_eq!(
            instance("app", 1000, 0),
            ("bench.app.00000".into(), "host-0000000".into())
        );
        assert_eq!(
            instance("app", 1000, 1001),
            ("bench.app.00001".into(), "host-0000001".into())
        );
        let pop = Population(vec![("app", 10, 100), ("big", 5, 50)]);
        assert_eq!(pop.len(), 150);
        assert_eq!(pop.get(99), instance("app", 10, 99));
        assert_eq!(pop.get(100), instance("big", 5, 0));
    }

    #[test]
    fn sized_keys_cover_the_registry_round_robin_over_apps() {
        for n in [100, 1_000, 4_000] {
            let mut seen: Vec<u64> = (0..n).map(|i| sized_key(i, n)).collect();
            // Consecutive operations land on different apps.
            if n > 100 {
                assert_ne!(sized_instance(seen[0]).0, sized_instance(seen[1]).0);
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
            assert_eq!(sized_key(n, n), sized_key(0, n));
        }
        assert_eq!(
            sized_instance(1_234),
            ("bench.size.00012".into(), "host-0000034".into())
        );
        assert_eq!(size_label(10_000), "10k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(250), "250");
        assert_eq!(size_label(1_500), "1500");
        assert_eq!(bytes_label(472), "472 B");
        assert_eq!(bytes_label(372_664), "372.7 kB");
    }

    #[test]
    fn register_form_is_valid() {
        let f = register_form("a", "h", 0x010203);
        let pairs: Vec<(String, String)> = url_pairs(&f);
        assert!(pairs.contains(&("addrs".into(), "http://10.1.2.3:8000".into())));
        assert!(pairs.contains(&("metadata".into(), r#"{"weight":"10"}"#.into())));
    }

    fn url_pairs(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), decode(v))
            })
            .collect()
    }

    fn decode(v: &str) -> String {
        let b = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}
