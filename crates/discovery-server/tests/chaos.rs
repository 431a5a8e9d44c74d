//! Chaos: three `discovery` processes, each in its own Linux network
//! namespace on a private bridge, under a steady workload (registers,
//! renews, sets of status and metadata, cancels, long pollers). Faults, one
//! at a time: `kill -9` and restart; isolation of a node (its link cut)
//! longer than the lease, then healing; SIGSTOP past the lease, then
//! SIGCONT; a rolling restart of all three. After each, every node must
//! converge to what the clients were told: every acknowledged write on
//! every node, with its status and metadata; nothing lost, nothing
//! resurrected. The workload keeps running during the checks, so a write
//! still in flight may be found on either side of it. Convergence times are
//! printed.
//!
//! Each test claims a subnet and network names of its own, so that the
//! tests run side by side, in one process (`cargo test`) or in several
//! (nextest). Needs root and `ip` (iproute2), as CI machines of this kind
//! have.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use testkit::{Layout, Process};
use tokio::{process::Command, task::JoinSet};

/// The test timings of `testkit::FAST`, plus a short peer timeout: a
/// SIGSTOPped peer never answers, and a 40 s timeout would stall its queue.
const PEER_CLIENT: &str = r#"
[httpClient]
dial = "500ms"
timeout = "2s"
"#;

/// How long a check waits for the nodes to converge before it fails.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_quiet(args: &[&str]) {
    let _ = std::process::Command::new(args[0])
        .args(&args[1..])
        .output();
}

/// Subnets `10.77.<slot>.0/24` a test may claim.
const SLOTS: u8 = 250;

/// Three namespaces on a bridge, in subnet `10.77.<slot>.0/24`; removed on
/// drop (also when the test panics).
///
/// A slot is claimed by creating its bridge, `dcs<slot>b`: the kernel
/// creates a link name once, so two tests, in one process or in two, never
/// hold the same slot, and every other name (namespaces `dcs<slot>n<i>`,
/// veths `dcs<slot>v<i>`) derives from it. All fit the 15 bytes of an
/// interface name.
struct Net {
    slot: u8,
    nodes: usize,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("dcs{}n{i}", self.slot)
    }
    fn bridge(&self) -> String {
        bridge_name(self.slot)
    }
    fn veth(&self, i: usize) -> String {
        format!("dcs{}v{i}", self.slot)
    }
    fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.slot, i + 1)
    }

    fn create(n: usize) -> Net {
        assert!(
            std::process::Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n")
                .unwrap_or(false),
            "the chaos suite needs root (network namespaces)"
        );
        let net = Net {
            slot: claim_slot(),
            nodes: n,
        };
        let br = net.bridge();
        // The slot was free, so whatever still bears its names is left from
        // a run that died while removing them (the bridge goes last).
        for i in 0..n {
            sh_quiet(&["ip", "netns", "del", &net.ns(i)]);
            sh_quiet(&["ip", "link", "del", &net.veth(i)]);
        }
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{}.254/24", net.slot),
            "dev",
            &br,
        ]);
        sh(&["ip", "link", "set", &br, "up"]);
        // Docker may set the FORWARD policy to DROP for bridged traffic.
        sh_quiet(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        for i in 0..n {
            let (ns, veth) = (net.ns(i), net.veth(i));
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            sh(&["ip", "link", "set", &veth, "master", &br, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn link(&self, i: usize, up: bool) {
        sh(&[
            "ip",
            "-n",
            &self.ns(i),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}

fn bridge_name(slot: u8) -> String {
    format!("dcs{slot}b")
}

/// Claims the first free slot by creating its bridge.
fn claim_slot() -> u8 {
    for slot in 0..SLOTS {
        let out = std::process::Command::new("ip")
            .args(["link", "add", &bridge_name(slot), "type", "bridge"])
            .output()
            .expect("run ip");
        if out.status.success() {
            return slot;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // Taken by another test; anything else is a real failure.
        assert!(err.contains("File exists"), "ip link add: {err}");
    }
    panic!("all {SLOTS} chaos subnets are taken (leftover dcs*b bridges?)");
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            // Deleting a namespace deletes its end of the veth pair, and
            // with it ours; the second command is for a half-built one.
            sh_quiet(&["ip", "netns", "del", &self.ns(i)]);
            sh_quiet(&["ip", "link", "del", &self.veth(i)]);
        }
        let br = self.bridge();
        sh_quiet(&[
            "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        // Last: this releases the slot.
        sh_quiet(&["ip", "link", "del", &br]);
    }
}

struct Cluster {
    /// Declared first, so dropped (killed) before their namespaces go.
    nodes: Vec<Option<Process>>,
    net: Net,
    layout: Layout,
    addrs: Vec<SocketAddr>,
    dir: std::path::PathBuf,
}

impl Cluster {
    async fn spawn(&self, i: usize) -> Process {
        let conf = self.dir.join(format!("node-{i}.toml"));
        std::fs::write(&conf, self.layout.config_text(i, &self.addrs)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.ns(i)])
            .arg(testkit::discovery_bin())
            .arg("-conf")
            .arg(&conf)
            .env("RUST_LOG", "warn,discovery_server=info");
        Process::spawn_http(cmd, &format!("node-{i}"), self.addrs[i], "/healthz")
            .await
            .expect("node starts")
    }

    async fn wait_ready(&self, i: usize) {
        let url = format!("http://{}/readyz", self.addrs[i]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "node {i} not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a node holds for one hostname: its status and its metadata `v`
/// ("" when none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Inst {
    status: u64,
    v: String,
}

/// A hostname's state: held, or absent (never registered, cancelled).
type State = Option<Inst>;

/// One hostname as its client knows it.
#[derive(Clone, Debug)]
struct Host {
    /// The states the acknowledged writes leave it in: one, or two after a
    /// `set` whose outcome no answer told (it timed out on one node, then
    /// another refused it), until the next acknowledged write.
    settled: Vec<State>,
    /// The state the write in flight leads to, while one is.
    pending: Option<State>,
    /// Bumped when a write starts and when it ends: a check that sees it
    /// move knows a write ran while it read the nodes.
    generation: u64,
    /// A writer or the renewer works on it: one at a time, as an SDK does
    /// for an instance.
    busy: bool,
    /// Its last writes, with when, the answer and the node that gave it:
    /// what a failed check prints.
    log: Vec<String>,
}

impl Host {
    fn live(&self) -> Option<&Inst> {
        self.settled.last().and_then(Option::as_ref)
    }
}

/// What the clients know: every hostname the workload ever wrote.
type Truth = BTreeMap<String, Host>;

struct Workload {
    truth: Mutex<Truth>,
    stop: AtomicBool,
    writes: AtomicU64,
    failovers: AtomicU64,
    reregisters: AtomicU64,
    poll_answers: AtomicU64,
    /// Checks that found a write in flight (and let it be on either side).
    in_flight_seen: AtomicU64,
    /// The start of the workload, for the hosts' logs.
    started: Instant,
}

impl Workload {
    /// Takes `h` for a write (or a renewal) if no one else holds it.
    fn take(&self, h: &str) -> bool {
        let mut t = self.truth.lock();
        match t.get_mut(h) {
            Some(host) if !host.busy => {
                host.busy = true;
                true
            }
            Some(_) => false,
            None => {
                t.insert(
                    h.to_string(),
                    Host {
                        settled: vec![None],
                        pending: None,
                        generation: 0,
                        busy: true,
                        log: Vec::new(),
                    },
                );
                true
            }
        }
    }

    fn release(&self, h: &str) {
        if let Some(host) = self.truth.lock().get_mut(h) {
            host.busy = false;
        }
    }

    /// A write to `target` starts.
    fn begin(&self, h: &str, target: State) {
        let mut t = self.truth.lock();
        let host = t.get_mut(h).expect("taken");
        host.pending = Some(target);
        host.generation += 1;
    }

    /// The write in flight (a `what`) ends with `answer`: `Applied`
    /// (acknowledged), `Refused` (a node answered that it changed nothing)
    /// or `Either` (no answer told).
    fn end(&self, h: &str, what: &str, answer: &Answer, outcome: Outcome) {
        let mut t = self.truth.lock();
        let host = t.get_mut(h).expect("taken");
        let target = host.pending.take().expect("a write in flight");
        host.generation += 1;
        if host.log.len() == 6 {
            host.log.remove(0);
        }
        host.log.push(format!(
            "{what} {target:?} at {:?}: {:?} from node {:?}{} → {outcome:?}",
            self.started.elapsed(),
            answer.code,
            answer.node,
            if answer.maybe_applied {
                " (after a node that may have applied it)"
            } else {
                ""
            },
        ));
        match outcome {
            Outcome::Applied => {
                host.settled = vec![target];
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused => {}
            Outcome::Either => {
                if !host.settled.contains(&target) {
                    host.settled.push(target);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Applied,
    Refused,
    Either,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// The answer of [`post_any`].
struct Answer {
    /// The first code other than `-500`, if a node gave one.
    code: Option<i64>,
    /// The node that gave it.
    node: Option<usize>,
    /// Whether a node that gave none may have applied the request anyway
    /// (it timed out or failed after the request was sent).
    maybe_applied: bool,
}

/// Posts to the first node that answers, as an SDK fails over.
async fn post_any(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    start: usize,
    path: &str,
    form: &str,
    w: &Workload,
) -> Answer {
    let mut maybe_applied = false;
    for k in 0..addrs.len() {
        let node = (start + k) % addrs.len();
        let a = addrs[node];
        let r = http
            .post(format!("http://{a}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await;
        match r {
            Ok(r) => match r.json::<Value>().await {
                Ok(v) => match v["code"].as_i64() {
                    Some(-500) | None => maybe_applied = true,
                    Some(code) => {
                        return Answer {
                            code: Some(code),
                            node: Some(node),
                            maybe_applied,
                        };
                    }
                },
                Err(_) => maybe_applied = true,
            },
            // Not connected: the node never saw the request.
            Err(e) if e.is_connect() => {}
            Err(_) => maybe_applied = true,
        }
        w.failovers.fetch_add(1, Ordering::Relaxed);
    }
    Answer {
        code: None,
        node: None,
        maybe_applied,
    }
}

/// [`post_any`] until a node gives a code (as an SDK retries a write), or
/// the workload stops.
async fn post_until_answered(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    start: usize,
    path: &str,
    form: &str,
    w: &Workload,
) -> Answer {
    let mut maybe_applied = false;
    loop {
        let a = post_any(http, addrs, start, path, form, w).await;
        maybe_applied |= a.maybe_applied;
        if a.code.is_some() || w.stop.load(Ordering::Relaxed) {
            return Answer {
                code: a.code,
                node: a.node,
                maybe_applied,
            };
        }
        // Fixed: every node failed; a pause before the next round.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const APP: &str = "zone=sh001&env=dev&appid=chaos.app";

fn key_form(h: &str) -> String {
    format!("{APP}&hostname={h}")
}

/// A register carries the instance's status and metadata, so that the one
/// an SDK sends again after `-404` restores what its instance had.
fn reg_form(h: &str, i: &Inst) -> String {
    let mut form = format!(
        "{}&status={}&addrs=grpc://{h}.svc:9000",
        key_form(h),
        i.status
    );
    if !i.v.is_empty() {
        form.push_str(&format!("&metadata={{\"v\":\"{}\"}}", i.v));
    }
    form
}

/// Registers `h` (taken) as `inst`, retried until a node answers.
async fn register(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    start: usize,
    h: &str,
    inst: Inst,
    w: &Workload,
) {
    let form = reg_form(h, &inst);
    w.begin(h, Some(inst));
    let a = post_until_answered(http, addrs, start, "/discovery/register", &form, w).await;
    w.end(
        h,
        "register",
        &a,
        match a.code {
            Some(0) => Outcome::Applied,
            Some(_) if !a.maybe_applied => Outcome::Refused,
            _ => Outcome::Either,
        },
    );
}

/// The writer: registers new instances, changes the status or metadata of
/// live ones, cancels some; keeps 20 to 50 live.
async fn run_writer(addrs: Vec<SocketAddr>, w: Arc<Workload>) {
    let http = client();
    let mut rng = StdRng::seed_from_u64(42);
    let mut next = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let start = rng.random_range(0..addrs.len());
        let (live, idle): (usize, Vec<(String, Inst)>) = {
            let t = w.truth.lock();
            let live: Vec<_> = t
                .iter()
                .filter_map(|(h, host)| Some((h, host.live()?, host.busy)))
                .collect();
            (
                live.len(),
                live.iter()
                    .filter(|(_, _, busy)| !busy)
                    .map(|(h, i, _)| (h.to_string(), (*i).clone()))
                    .collect(),
            )
        };
        let roll = rng.random_range(0..100);
        if idle.is_empty() || live < 20 || (live <= 50 && roll < 45) {
            let h = format!("i{next}");
            next += 1;
            assert!(w.take(&h), "a new hostname");
            let inst = Inst {
                status: 1,
                v: String::new(),
            };
            register(&http, &addrs, start, &h, inst, &w).await;
            w.release(&h);
        } else {
            let (h, now) = idle[rng.random_range(0..idle.len())].clone();
            if !w.take(&h) {
                // The renewer took it meanwhile.
                continue;
            }
            if rng.random_bool(0.45) {
                // A change of status (UP ↔ waiting) or of metadata.
                let mut target = now.clone();
                let form = if rng.random_bool(0.3) {
                    target.status = 3 - now.status;
                    format!("{}&status={}", key_form(&h), target.status)
                } else {
                    target.v = next.to_string();
                    next += 1;
                    format!("{}&metadata={{\"v\":\"{}\"}}", key_form(&h), target.v)
                };
                w.begin(&h, Some(target));
                let a =
                    post_until_answered(&http, &addrs, start, "/discovery/set", &form, &w).await;
                w.end(
                    &h,
                    "set",
                    &a,
                    match a.code {
                        Some(0) => Outcome::Applied,
                        // `-400`: that node does not hold it (it lost it,
                        // or evicted it); nothing changed there.
                        Some(_) if !a.maybe_applied => Outcome::Refused,
                        _ => Outcome::Either,
                    },
                );
            } else {
                // Taken: the renewer stopped renewing it (the SDK's order),
                // then cancel.
                w.begin(&h, None);
                let a = post_until_answered(
                    &http,
                    &addrs,
                    start,
                    "/discovery/cancel",
                    &key_form(&h),
                    &w,
                )
                .await;
                w.end(
                    &h,
                    "cancel",
                    &a,
                    match a.code {
                        Some(0 | -404) => Outcome::Applied,
                        Some(_) if !a.maybe_applied => Outcome::Refused,
                        _ => Outcome::Either,
                    },
                );
            }
            w.release(&h);
        }
        // Fixed: paces the writer.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The renewer: every live instance, every `renew_interval` (500 ms in
/// `testkit::FAST`), each renewal on its own, so that one through a
/// stopped node (1.5 s to time out) delays no other; a `-404` registers the
/// instance again, as the SDK does.
async fn run_renewer(addrs: Vec<SocketAddr>, w: Arc<Workload>) {
    let http = client();
    let mut rng = StdRng::seed_from_u64(7);
    let mut renewals = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Late ticks (a busy machine) are not made up in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !w.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        while renewals.try_join_next().is_some() {}
        let due: Vec<(String, Inst)> = w
            .truth
            .lock()
            .iter()
            .filter(|(_, host)| !host.busy)
            .filter_map(|(h, host)| Some((h.clone(), host.live()?.clone())))
            .collect();
        for (h, inst) in due {
            if !w.take(&h) {
                continue;
            }
            let (http, addrs, w) = (http.clone(), addrs.clone(), Arc::clone(&w));
            let start = rng.random_range(0..addrs.len());
            renewals.spawn(async move {
                let a = post_any(&http, &addrs, start, "/discovery/renew", &key_form(&h), &w).await;
                if a.code == Some(-404) {
                    w.reregisters.fetch_add(1, Ordering::Relaxed);
                    register(&http, &addrs, start, &h, inst, &w).await;
                }
                w.release(&h);
            });
        }
    }
    while renewals.join_next().await.is_some() {}
}

async fn run_poller(addr: SocketAddr, w: Arc<Workload>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let mut ts = 0i64;
    while !w.stop.load(Ordering::Relaxed) {
        let url = format!(
            "http://{addr}/discovery/polls?env=dev&hostname=poller-{addr}&appid=chaos.app&latest_timestamp={ts}"
        );
        match http
            .get(url)
            .header("x1-bmspy-timeout", "5000")
            .send()
            .await
        {
            Ok(r) => match r.json::<Value>().await {
                Ok(v) if v["code"] == 0 => {
                    ts = v["data"]["chaos.app"]["latest_timestamp"]
                        .as_i64()
                        .unwrap_or(0);
                    w.poll_answers.fetch_add(1, Ordering::Relaxed);
                }
                // Fixed: a pause before the watcher polls again.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            },
            Err(_) => {
                ts = 0;
                // Fixed: a pause before the watcher polls again.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Hostname → what one node holds for it.
async fn instances(http: &reqwest::Client, addr: SocketAddr) -> Option<BTreeMap<String, Inst>> {
    let v: Value = http
        .get(format!(
            "http://{addr}/discovery/fetch?env=dev&appid=chaos.app&status=3"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    match v["code"].as_i64()? {
        0 => Some(
            v["data"]["instances"]
                .as_object()?
                .values()
                .flat_map(|z| z.as_array().cloned().unwrap_or_default())
                .map(|i| {
                    (
                        i["hostname"].as_str().unwrap_or("").to_string(),
                        Inst {
                            status: i["status"].as_u64().unwrap_or(0),
                            v: i["metadata"]["v"].as_str().unwrap_or("").to_string(),
                        },
                    )
                })
                .collect(),
        ),
        -404 => Some(BTreeMap::new()),
        _ => None,
    }
}

/// What a check allows for one hostname, given the clients' knowledge
/// before it read the nodes (`before`) and after (`after`).
enum Allowed {
    /// No write ran: every node holds the same one of these.
    Settled(Vec<State>),
    /// A write was in flight: each node may be on either side of it.
    Either(Vec<State>),
    /// Several writes ran while the nodes were read: any state.
    Any,
}

fn allowed(before: Option<&Host>, after: Option<&Host>) -> Allowed {
    let states = |h: &Host| {
        let mut v = h.settled.clone();
        v.extend(h.pending.clone());
        v
    };
    match (before, after) {
        (Some(b), Some(a)) if b.generation == a.generation && b.pending.is_none() => {
            Allowed::Settled(b.settled.clone())
        }
        // A write moves `generation` twice, at its start and at its end.
        // The targets seen are the one in flight before (if any), the last
        // one started, and the results `settled` keeps; a write that both
        // started and was overtaken by another while the nodes were read
        // is seen by neither (four steps beyond the one in flight).
        (Some(b), Some(a))
            if (a.generation - b.generation).saturating_sub(u64::from(b.pending.is_some()))
                >= 4 =>
        {
            Allowed::Any
        }
        (Some(b), Some(a)) => {
            let mut v = states(b);
            v.extend(states(a));
            Allowed::Either(v)
        }
        // A new hostname, its register started during the check.
        (None, Some(a)) => {
            let mut v = vec![None];
            v.extend(states(a));
            Allowed::Either(v)
        }
        // No client ever wrote it (a hostname only removed never happens).
        (_, None) => Allowed::Settled(vec![None]),
    }
}

/// Compares what the nodes hold with what the clients know; `Err` names
/// every difference found.
fn judge(
    before: &Truth,
    after: &Truth,
    held: &[(usize, Option<BTreeMap<String, Inst>>)],
    in_flight: &mut bool,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, m) in held {
        if m.is_none() {
            problems.push(format!("node {i} not answering"));
        }
    }
    let nodes: Vec<(usize, &BTreeMap<String, Inst>)> = held
        .iter()
        .filter_map(|(i, m)| Some((*i, m.as_ref()?)))
        .collect();
    let hosts: BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .chain(nodes.iter().flat_map(|(_, m)| m.keys()))
        .collect();
    for h in hosts {
        let allow = allowed(before.get(h), after.get(h));
        let states: Vec<(usize, State)> =
            nodes.iter().map(|(i, m)| (*i, m.get(h).cloned())).collect();
        match allow {
            Allowed::Any => *in_flight = true,
            Allowed::Either(ok) => {
                *in_flight = true;
                for (i, s) in &states {
                    if !ok.contains(s) {
                        problems.push(describe(*i, h, s, &ok, before.get(h)));
                    }
                }
            }
            Allowed::Settled(ok) => {
                for (i, s) in &states {
                    if !ok.contains(s) {
                        problems.push(describe(*i, h, s, &ok, before.get(h)));
                    }
                }
                if states.iter().any(|(_, s)| *s != states[0].1) {
                    problems.push(format!("{h}: the nodes disagree: {states:?}"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let n = problems.len();
        problems.truncate(8);
        Err(format!("{n} differences: {}", problems.join("; ")))
    }
}

fn describe(i: usize, h: &str, held: &State, ok: &[State], known: Option<&Host>) -> String {
    let what = match held {
        None => "lost",
        Some(_) if ok.iter().all(Option::is_none) => {
            if known.is_some() {
                "resurrected"
            } else {
                "extra (never written)"
            }
        }
        Some(_) => "stale status or metadata",
    };
    let log = known.map(|k| k.log.join(", ")).unwrap_or_default();
    format!("node {i}: {h} {what}: holds {held:?}, acknowledged {ok:?} (its writes: {log})")
}

/// Waits, with the workload running, until every running node holds what
/// the clients were told, and returns how long that took.
async fn converge(c: &Cluster, w: &Workload, fault: &str) -> Duration {
    let http = client();
    let start = Instant::now();
    let deadline = start + CONVERGE_WITHIN;
    // What the first check found, printed when convergence was slow.
    let mut first: Option<String> = None;
    loop {
        let before = w.truth.lock().clone();
        let mut held = Vec::new();
        for (i, n) in c.nodes.iter().enumerate() {
            if n.is_some() {
                held.push((i, instances(&http, c.addrs[i]).await));
            }
        }
        let after = w.truth.lock().clone();
        let mut in_flight = false;
        match judge(&before, &after, &held, &mut in_flight) {
            Ok(()) => {
                if in_flight {
                    w.in_flight_seen.fetch_add(1, Ordering::Relaxed);
                }
                let t = start.elapsed();
                println!(
                    "CHAOS {fault}: converged in {t:?} with {} live instances",
                    after.values().filter(|h| h.live().is_some()).count()
                );
                if let Some(first) = first.filter(|_| t > Duration::from_secs(1)) {
                    println!("CHAOS {fault}: slow; the first check found {first}");
                }
                return t;
            }
            Err(detail) => {
                assert!(
                    Instant::now() < deadline,
                    "{fault}: no convergence within {CONVERGE_WITHIN:?}: {detail}"
                );
                first.get_or_insert(detail);
            }
        }
        // Fixed: the pace of the checks.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes in their namespaces, ready, under the workload and pollers.
async fn setup(tag: &str) -> (Cluster, Arc<Workload>, Vec<tokio::task::JoinHandle<()>>) {
    let net = Net::create(3);
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|i| format!("{}:7171", net.ip(i)).parse().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("chaos-{tag}-{}-{}", std::process::id(), net.slot));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Cluster {
        nodes: vec![],
        net,
        layout: Layout::zones(&[("sh001", 3)])
            .toml(testkit::FAST)
            .toml(PEER_CLIENT),
        addrs: addrs.clone(),
        dir,
    };
    for i in 0..3 {
        let p = c.spawn(i).await;
        c.nodes.push(Some(p));
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }

    let w = Arc::new(Workload {
        truth: Mutex::new(Truth::new()),
        stop: AtomicBool::new(false),
        writes: AtomicU64::new(0),
        failovers: AtomicU64::new(0),
        reregisters: AtomicU64::new(0),
        poll_answers: AtomicU64::new(0),
        in_flight_seen: AtomicU64::new(0),
        started: Instant::now(),
    });
    let mut tasks = vec![
        tokio::spawn(run_writer(addrs.clone(), Arc::clone(&w))),
        tokio::spawn(run_renewer(addrs.clone(), Arc::clone(&w))),
    ];
    for a in &addrs {
        tasks.push(tokio::spawn(run_poller(*a, Arc::clone(&w))));
    }
    (c, w, tasks)
}

/// Stops the workload; every write ends (answered, or given up as
/// either-side) before this returns.
async fn stop_workload(w: &Workload, tasks: Vec<tokio::task::JoinHandle<()>>) {
    w.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

fn print_workload(w: &Workload) {
    println!(
        "CHAOS workload: {} acknowledged writes, {} failovers, {} client re-registers after -404, {} poll answers, {} checks met a write in flight",
        w.writes.load(Ordering::Relaxed),
        w.failovers.load(Ordering::Relaxed),
        w.reregisters.load(Ordering::Relaxed),
        w.poll_answers.load(Ordering::Relaxed),
        w.in_flight_seen.load(Ordering::Relaxed),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_nodes_lose_nothing_and_resurrect_nothing() {
    let (mut c, w, tasks) = setup("fixed").await;
    // Fixed: load runs on a healthy cluster before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut report = Vec::new();

    // 1. kill -9 node 2, keep going, restart it.
    c.nodes[2].take().unwrap().kill().await;
    // Fixed: how long the node stays dead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nodes[2] = Some(c.spawn(2).await);
    c.wait_ready(2).await;
    report.push((
        "kill -9 + restart",
        converge(&c, &w, "kill -9 + restart").await,
    ));

    // 2. Isolate node 1 for longer than the lease, then heal (fixed: the
    // length of the fault).
    c.net.link(1, false);
    tokio::time::sleep(Duration::from_secs(8)).await;
    c.net.link(1, true);
    report.push((
        "isolation 8 s (lease 3 s)",
        converge(&c, &w, "isolation").await,
    ));

    // 3. SIGSTOP node 0 past the lease, then SIGCONT (fixed: the length of
    // the fault).
    c.nodes[0].as_ref().unwrap().signal("STOP").await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.nodes[0].as_ref().unwrap().signal("CONT").await.unwrap();
    report.push(("SIGSTOP 6 s", converge(&c, &w, "SIGSTOP").await));

    // 4. Rolling restart.
    for i in 0..3 {
        let mut p = c.nodes[i].take().unwrap();
        assert!(p.terminate().await.unwrap().success(), "graceful exit");
        c.nodes[i] = Some(c.spawn(i).await);
        c.wait_ready(i).await;
    }
    report.push(("rolling restart", converge(&c, &w, "rolling restart").await));

    stop_workload(&w, tasks).await;
    converge(&c, &w, "final").await;
    print_workload(&w);
    for (fault, t) in &report {
        println!("CHAOS | {fault} | converged in {t:?} |");
    }
    // A floor, not a rate: the writer is paced and waits out failovers
    // during each fault, so on a loaded machine it acknowledges a few
    // dozen writes; the convergence checks above are what this test is for.
    assert!(w.writes.load(Ordering::Relaxed) > 20, "the workload ran");
    assert!(
        w.poll_answers.load(Ordering::Relaxed) > 0,
        "pollers were answered"
    );
    for p in c.nodes.iter_mut().flatten() {
        let _ = p.terminate().await;
    }
}

/// One fault of the randomized schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9`, down for the hold, then started again.
    Kill(usize),
    /// SIGSTOP for the hold, then SIGCONT.
    Pause(usize),
    /// Link cut for the hold, then restored.
    Isolate(usize),
    /// Every node in turn: SIGTERM, start, wait until ready (a rolling
    /// deploy, as an orchestrator runs it).
    Rolling,
    /// Restart with the clock off by this many milliseconds (kept after).
    Skew(usize, i64),
}

impl Fault {
    fn pick(rng: &mut StdRng) -> Fault {
        let node = rng.random_range(0..3);
        match rng.random_range(0..10) {
            0..=2 => Fault::Kill(node),
            3..=4 => Fault::Pause(node),
            5..=7 => Fault::Isolate(node),
            8 => Fault::Rolling,
            _ => Fault::Skew(node, if rng.random_bool(0.5) { 2000 } else { -2000 }),
        }
    }

    /// How many nodes it brings back: a rolling restart, all three.
    fn heals(self) -> usize {
        match self {
            Fault::Rolling => 3,
            _ => 1,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Isolate(_) => "isolate",
            Fault::Rolling => "rolling",
            Fault::Skew(..) => "skew",
        }
    }
}

impl Cluster {
    fn set_clock_offset(&mut self, i: usize, ms: i64) {
        let toml = format!(
            "{}{PEER_CLIENT}",
            testkit::FAST.replace(
                "[cluster]\n",
                &format!("[cluster]\nclock_offset = \"{ms}ms\"\n")
            )
        );
        self.layout = self.layout.clone().node_toml(i, &toml);
    }

    async fn restart(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            let _ = p.terminate().await;
        }
        self.nodes[i] = Some(self.spawn(i).await);
        self.wait_ready(i).await;
    }

    /// Applies `fault` for `hold`, then heals it.
    async fn apply(&mut self, fault: Fault, hold: Duration) {
        match fault {
            Fault::Kill(i) => {
                if let Some(mut p) = self.nodes[i].take() {
                    p.kill().await;
                }
                // Fixed: `hold` is the length of the fault.
                tokio::time::sleep(hold).await;
                self.nodes[i] = Some(self.spawn(i).await);
                self.wait_ready(i).await;
            }
            Fault::Pause(i) => {
                let p = self.nodes[i].as_ref().expect("running");
                p.signal("STOP").await.unwrap();
                // Fixed: `hold` is the length of the fault.
                tokio::time::sleep(hold).await;
                p.signal("CONT").await.unwrap();
            }
            Fault::Isolate(i) => {
                self.net.link(i, false);
                // Fixed: `hold` is the length of the fault.
                tokio::time::sleep(hold).await;
                self.net.link(i, true);
            }
            Fault::Rolling => {
                for i in 0..3 {
                    self.restart(i).await;
                }
            }
            Fault::Skew(i, ms) => {
                self.set_clock_offset(i, ms);
                self.restart(i).await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change
/// between Rust releases, and a seed must name the same schedule).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The schedule's seed when `CHAOS_SEED` is not set: the hash of the
/// checked-out commit, so that every commit runs a schedule no commit
/// before it ran, and the same commit the same one; the clock's when there
/// is no git.
fn default_seed() -> (u64, String) {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => (fnv1a(head.as_bytes()), format!("commit {head}")),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            (fnv1a(&now.to_le_bytes()), "the clock (no git)".into())
        }
    }
}

/// A randomized schedule of faults over three nodes (`kill -9` + restart,
/// SIGSTOP/SIGCONT, isolation, rolling restarts, ±2 s clock offsets) under
/// a workload of registers, renews, cancels and sets through random nodes.
/// After every heal, all nodes must hold the clients' acknowledged state
/// (live instances with their status and last metadata): nothing lost,
/// nothing cancelled brought back. `CHAOS_SEED` and `CHAOS_DURATION`
/// (seconds, default 40) choose the schedule; without `CHAOS_SEED` the
/// seed comes from the commit. `cargo xtask chaos --seed S --duration D`
/// runs one, `--seeds N` many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_fault_schedule_converges_after_every_heal() {
    let (seed, from) = match std::env::var("CHAOS_SEED") {
        Ok(s) => (
            s.parse().expect("CHAOS_SEED: an unsigned integer"),
            "CHAOS_SEED".to_string(),
        ),
        Err(_) => default_seed(),
    };
    let duration = Duration::from_secs(
        std::env::var("CHAOS_DURATION")
            .ok()
            .map(|s| s.parse().expect("CHAOS_DURATION: seconds"))
            .unwrap_or(40),
    );
    let repro = format!(
        "cargo xtask chaos --seed {seed} --duration {}",
        duration.as_secs()
    );
    println!("CHAOS schedule seed {seed} (from {from}); reproduce with: {repro}");
    // Printed again on failure, where the output is read first.
    struct Repro(String);
    impl Drop for Repro {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("CHAOS failed; reproduce with: {}", self.0);
            }
        }
    }
    let _repro = Repro(repro);

    let (mut c, w, tasks) = setup(&format!("seed{seed}")).await;
    let mut rng = StdRng::seed_from_u64(seed);
    // Fixed: load runs on a healthy cluster before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut times = Vec::new();
    let mut faults = Vec::new();
    while started.elapsed() < duration {
        let fault = Fault::pick(&mut rng);
        let hold = Duration::from_millis(rng.random_range(500..5000));
        println!("CHAOS fault {fault:?} for {hold:?}");
        c.apply(fault, hold).await;
        let t = converge(&c, &w, &format!("{fault:?}")).await;
        faults.push((fault, hold, t));
        times.push(t);
        // Fixed: a random healthy gap between faults.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
    }
    stop_workload(&w, tasks).await;
    // The final check on a quiet cluster.
    converge(&c, &w, "final").await;
    times.sort();
    let (p50, p99, max) = (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default(),
    );
    print_workload(&w);
    for (f, hold, t) in &faults {
        println!("CHAOS | {f:?} | held {hold:?} | converged in {t:?} |");
    }
    // One line for `cargo xtask chaos`, which collects it per seed.
    let by_kind = ["kill", "pause", "isolate", "rolling", "skew"]
        .map(|k| format!("{k}={}", faults.iter().filter(|f| f.0.kind() == k).count()));
    println!(
        "CHAOS summary seed={seed} duration={} faults={} heals={} {} p50_ms={} p99_ms={} max_ms={} writes={} times_ms={}",
        duration.as_secs(),
        faults.len(),
        faults.iter().map(|f| f.0.heals()).sum::<usize>(),
        by_kind.join(" "),
        p50.as_millis(),
        p99.as_millis(),
        max.as_millis(),
        w.writes.load(Ordering::Relaxed),
        times
            .iter()
            .map(|t| t.as_millis().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    assert!(!times.is_empty(), "the schedule ran");
    assert!(w.writes.load(Ordering::Relaxed) > 50, "the workload ran");
    for p in c.nodes.iter_mut().flatten() {
        let _ = p.terminate().await;
    }
}

/// The checker fails what it must: a node that lost a write, holds stale
/// metadata or status, or holds a cancelled instance; and lets a write in
/// flight be on either side.
#[test]
fn checker_tells_in_flight_from_lost() {
    let inst = |status: u64, v: &str| Inst {
        status,
        v: v.to_string(),
    };
    let host = |settled: Vec<State>, pending: Option<State>, generation: u64| Host {
        settled,
        pending,
        generation,
        busy: false,
        log: Vec::new(),
    };
    let truth = |hosts: Vec<(&str, Host)>| -> Truth {
        hosts.into_iter().map(|(h, x)| (h.to_string(), x)).collect()
    };
    let node = |hosts: &[(&str, Inst)]| -> Option<BTreeMap<String, Inst>> {
        Some(
            hosts
                .iter()
                .map(|(h, i)| (h.to_string(), i.clone()))
                .collect(),
        )
    };
    let check = |before: &Truth, after: &Truth, held: Vec<Option<BTreeMap<String, Inst>>>| {
        let held: Vec<_> = held.into_iter().enumerate().collect();
        judge(before, after, &held, &mut false)
    };
    let settled = truth(vec![
        ("a", host(vec![Some(inst(1, "7"))], None, 2)),
        ("gone", host(vec![None], None, 4)),
    ]);
    let good = || node(&[("a", inst(1, "7"))]);
    assert!(check(&settled, &settled, vec![good(), good()]).is_ok());
    // Lost on one node.
    let e = check(&settled, &settled, vec![good(), node(&[])]).unwrap_err();
    assert!(e.contains("node 1: a lost"), "{e}");
    // Stale metadata, stale status.
    let e = check(
        &settled,
        &settled,
        vec![good(), node(&[("a", inst(1, "6"))])],
    )
    .unwrap_err();
    assert!(e.contains("stale"), "{e}");
    let e = check(
        &settled,
        &settled,
        vec![good(), node(&[("a", inst(2, "7"))])],
    )
    .unwrap_err();
    assert!(e.contains("stale"), "{e}");
    // Cancelled, held again.
    let e = check(
        &settled,
        &settled,
        vec![good(), node(&[("a", inst(1, "7")), ("gone", inst(1, ""))])],
    )
    .unwrap_err();
    assert!(e.contains("gone resurrected"), "{e}");
    // Never written.
    let e = check(
        &settled,
        &settled,
        vec![node(&[("a", inst(1, "7")), ("x", inst(1, ""))])],
    )
    .unwrap_err();
    assert!(e.contains("never written"), "{e}");
    // A node that does not answer.
    assert!(check(&settled, &settled, vec![good(), None]).is_err());

    // A set of "8" in flight: either side, node by node; not a third value.
    let flying = truth(vec![
        (
            "a",
            host(vec![Some(inst(1, "7"))], Some(Some(inst(1, "8"))), 3),
        ),
        ("gone", host(vec![None], None, 4)),
    ]);
    let new = || node(&[("a", inst(1, "8"))]);
    assert!(check(&flying, &flying, vec![good(), new()]).is_ok());
    assert!(check(&flying, &flying, vec![node(&[("a", inst(1, "9"))])]).is_err());
    // Acknowledged while the nodes were read: still either side.
    let acked = truth(vec![
        ("a", host(vec![Some(inst(1, "8"))], None, 4)),
        ("gone", host(vec![None], None, 4)),
    ]);
    assert!(check(&flying, &acked, vec![good(), new()]).is_ok());
    // Acknowledged before the check: everywhere.
    assert!(check(&acked, &acked, vec![good(), new()]).is_err());
    // A cancel in flight: held or not.
    let cancelling = truth(vec![
        ("a", host(vec![Some(inst(1, "7"))], Some(None), 3)),
        ("gone", host(vec![None], None, 4)),
    ]);
    assert!(check(&cancelling, &cancelling, vec![good(), node(&[])]).is_ok());
    // A register of a new hostname started during the check.
    let mut registering = settled.clone();
    registering.insert("b".into(), host(vec![None], Some(Some(inst(1, ""))), 1));
    assert!(
        check(
            &settled,
            &registering,
            vec![good(), node(&[("a", inst(1, "7")), ("b", inst(1, ""))])]
        )
        .is_ok()
    );
    // An outcome no answer told: either value, but the same on every node.
    let unsure = truth(vec![(
        "a",
        host(vec![Some(inst(1, "7")), Some(inst(1, "8"))], None, 4),
    )]);
    assert!(check(&unsure, &unsure, vec![new(), new()]).is_ok());
    let e = check(&unsure, &unsure, vec![good(), new()]).unwrap_err();
    assert!(e.contains("disagree"), "{e}");
}
