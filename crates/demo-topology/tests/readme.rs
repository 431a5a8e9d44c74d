//! The README's commands, run. Every fenced `sh` block of README.md is
//! listed in [`BLOCKS`] with the test that runs it, or runs its equivalent
//! when the command cannot run in a test as written (it blocks forever,
//! builds in release, or needs Docker). Each test reads its block from
//! README.md, so an edited command is what gets run, and compares the
//! answers the README shows (`# {...}` lines) with the real ones, where
//! `...` stands for any text, and a shortened (`1795...`) or long number
//! for any number (timestamps). Fixed ports of the README are replaced by free ones.
//!
//! The binaries are the ones next to this test (`cargo nextest run
//! --workspace` builds them all); `cargo xtask up` builds the same and execs
//! `demo-topology up`, which is what runs here.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::Instant,
};

/// Every `sh` block of README.md, by its first command, and the test that
/// covers it.
const BLOCKS: &[(&str, &str)] = &[
    // Two commands: the bare server. Run as the node of the walkthrough
    // (the built binary, on a free port instead of 7171).
    (
        "cargo run --release --bin discovery",
        "curl_walkthrough_answers_as_shown",
    ),
    // Two commands: the test command. It is the suite this test belongs
    // to; CI runs it as written.
    ("cargo xtask test", "ci_runs_the_readme_commands"),
    // Try it with curl: every command, against a real node.
    (
        "B=http://127.0.0.1:7171/discovery",
        "curl_walkthrough_answers_as_shown",
    ),
    // Try the demo: `up --check` as written (runner binary); plain `up`
    // with the curl of the next block, then SIGTERM and Ctrl-C.
    ("cargo xtask up", "xtask_up_check_greets_and_exits_0"),
    (
        "curl 'http://127.0.0.1:<client port>/say_hello?name=kratos'",
        "up_serves_the_curl_then_sigterm_leaves_no_child",
    ),
    // The same by hand: every line, with the test's binaries and free
    // ports.
    (
        "cargo build --release --bin demo-server --bin demo-client",
        "by_hand_demo_sequence",
    ),
    // In containers: needs a Docker daemon; CI's `cargo xtask e2e` builds
    // the image and runs the compose file with greetings through the
    // published client port.
    ("cargo xtask docker", "ci_runs_the_readme_commands"),
    // A cluster: the three configs as they are, on free ports.
    (
        "cargo run --release --bin discovery -- -conf configs/cluster/node1.toml",
        "cluster_configs_form_one_cluster",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fenced `sh` blocks of README.md, in order.
fn sh_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == "```sh" => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "README.md: unterminated sh block");
    blocks
}

/// A block's first command: its first line without a trailing comment.
fn first_command(block: &str) -> &str {
    let line = block.lines().next().unwrap_or_default();
    line.split(" #").next().unwrap_or_default().trim()
}

/// The README block whose first command is `first`.
fn block(first: &str) -> String {
    sh_blocks()
        .into_iter()
        .find(|b| first_command(b) == first)
        .unwrap_or_else(|| panic!("README.md has no sh block starting with {first:?}"))
}

#[test]
fn every_sh_block_is_covered() {
    let blocks = sh_blocks();
    assert!(blocks.len() >= BLOCKS.len(), "{blocks:#?}");
    for b in &blocks {
        let first = first_command(b);
        assert!(
            BLOCKS.iter().any(|(f, _)| *f == first),
            "README sh block starting with {first:?} is run by no test; add it to BLOCKS"
        );
    }
    for (first, test) in BLOCKS {
        assert!(
            blocks.iter().any(|b| first_command(b) == *first),
            "BLOCKS maps {first:?} (to {test}), which README.md no longer has"
        );
    }
}

/// Whether `actual` matches the README's `expected`: `...`/`…` match any
/// text; digits followed by `...`, or 10 or more digits, match any number
/// (timestamps); the rest is literal.
fn matches(expected: &str, actual: &str) -> bool {
    #[derive(Debug, PartialEq)]
    enum Tok {
        Lit(char),
        Any,
        Digits,
    }
    let chars: Vec<char> = expected.chars().collect();
    let mut pat = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i..].starts_with(&['.', '.', '.']) {
            pat.push(Tok::Any);
            i += 3;
        } else if chars[i] == '…' {
            pat.push(Tok::Any);
            i += 1;
        } else if chars[i].is_ascii_digit() {
            let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let elided = chars[i + run..].starts_with(&['.', '.', '.']);
            if elided {
                // `1795...`: a number shortened, in practice a timestamp.
                pat.push(Tok::Digits);
                i += 3;
            } else if run >= 10 {
                pat.push(Tok::Digits);
            } else {
                pat.extend(chars[i..i + run].iter().map(|c| Tok::Lit(*c)));
            }
            i += run;
        } else {
            pat.push(Tok::Lit(chars[i]));
            i += 1;
        }
    }
    fn go(p: &[Tok], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(Tok::Lit(c)) => s.first() == Some(c) && go(&p[1..], &s[1..]),
            Some(Tok::Any) => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
            Some(Tok::Digits) => {
                let run = s.iter().take_while(|c| c.is_ascii_digit()).count();
                (1..=run).any(|k| go(&p[1..], &s[k..]))
            }
        }
    }
    let actual: Vec<char> = actual.chars().collect();
    go(&pat, &actual)
}

#[test]
fn matcher_allows_only_the_marked_differences() {
    assert!(matches(
        r#"{"a":1,"ts":1795...}"#,
        r#"{"a":1,"ts":1795000000000000000}"#
    ));
    assert!(matches(r#"{"ts":1764000000000000000}"#, r#"{"ts":17}"#));
    assert!(matches(
        r#"{"ts":1795...}"#,
        r#"{"ts":1796138537826768645}"#
    ));
    assert!(!matches(r#"{"ts":1795...}"#, r#"{"ts":"x"}"#));
    assert!(matches(r#"{"d":{...}}"#, r#"{"d":{"x":[1,2]}}"#));
    assert!(!matches(r#"{"code":0}"#, r#"{"code":-404}"#));
    assert!(!matches(r#"{"a":1}"#, r#"{"a":1} "#));
}

/// A free loopback port (released for the child to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// Identity variables a developer's shell may hold; the README's lines set
/// what they need.
const IDENTITY: &[&str] = &naming::env::IDENTITY;

/// `sh -c <line>` with a clean identity, killed on drop.
fn sh(line: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line).kill_on_drop(true);
    for var in IDENTITY {
        cmd.env_remove(var);
    }
    cmd
}

async fn run_sh(line: &str) -> Output {
    sh(line)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run sh")
}

/// Polls `GET url` until 200.
async fn until_200(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url}: no 200 within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `discovery` with `args` (killed on drop), once `/readyz` answers 200.
async fn start_discovery(args: &[&str], addr: &str) -> Child {
    let child = Command::new(testkit::discovery_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn discovery");
    until_200(&format!("http://{addr}/readyz"), Duration::from_secs(30)).await;
    child
}

/// The bare server of "Two commands" (`cargo run --release --bin
/// discovery`: the embedded default config), on a free port.
async fn bare_node() -> (Child, String) {
    let first = block("cargo run --release --bin discovery");
    assert_eq!(first.trim(), "cargo run --release --bin discovery");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = start_discovery(&["--listen", &addr], &addr).await;
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_walkthrough_answers_as_shown() {
    let (_node, addr) = bare_node().await;
    let text = block("B=http://127.0.0.1:7171/discovery").replace("127.0.0.1:7171", &addr);
    let mut prelude = String::new();
    // (command, answers shown under it)
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.starts_with('{') {
                steps
                    .last_mut()
                    .expect("an answer follows a command")
                    .1
                    .push(comment.to_string());
            }
        } else if line
            .split_once('=')
            .is_some_and(|(k, v)| !k.contains(' ') && !v.contains(' ') && !line.starts_with("curl"))
        {
            prelude.push_str(line);
            prelude.push_str("; ");
        } else {
            steps.push((line.to_string(), Vec::new()));
        }
    }
    assert!(steps.len() >= 9, "{steps:#?}");
    let mut latest: Option<String> = None;
    for (cmd, shown) in &steps {
        assert!(cmd.starts_with("curl "), "not a curl: {cmd}");
        let mut cmd = cmd.clone();
        if cmd.contains("<N>") {
            let n = latest.as_ref().expect("a latest_timestamp seen before <N>");
            cmd = cmd.replace("<N>", n);
        }
        let out = run_sh(&format!("{prelude}{cmd}")).await;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success(), "{cmd}: {out:?}");
        println!("$ {cmd}\n{body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{cmd}: {e}: {body}"));
        if let Some(ts) = json["data"]["latest_timestamp"].as_i64() {
            latest = Some(ts.to_string());
        }
        if shown.is_empty() {
            // Nothing shown: the README implies success.
            assert_eq!(json["code"], 0, "{cmd}: {body}");
        }
        for answer in shown {
            assert!(
                matches(answer, &body),
                "{cmd}\n README shows: {answer}\n server says:  {body}"
            );
        }
    }
}

/// `ci_runs_the_readme_commands` covers the blocks a test cannot run as
/// written: CI runs them.
#[test]
fn ci_runs_the_readme_commands() {
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
    // The test command, as written.
    let test = block("cargo xtask test");
    assert!(ci_lines.contains(&test.trim()), "CI does not run {test:?}");
    // `up`, as the check.
    assert!(
        ci_lines
            .iter()
            .any(|l| l.starts_with("cargo xtask up --check"))
    );
    // The containers: `cargo xtask e2e` (without --no-docker) builds the
    // image as `cargo xtask docker` does and runs the compose file.
    assert!(
        ci_lines
            .iter()
            .any(|l| l.starts_with("cargo xtask e2e") && !l.contains("--no-docker")),
        "CI skips the docker e2e"
    );
    let docker = block("cargo xtask docker");
    assert!(docker.contains("docker compose up"), "{docker}");
    // The curl of the block reaches the port the compose file publishes.
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose");
    let port = docker
        .lines()
        .find_map(|l| l.split("localhost:").nth(1))
        .and_then(|rest| rest.split('/').next())
        .expect("the block curls localhost:<port>");
    assert!(
        compose.contains(&format!("${{DEMO_HTTP_PORT:-{port}}}:")),
        "docker-compose.yml does not publish port {port}"
    );
}

/// The runner `cargo xtask up` execs, with the README line's arguments.
fn up_command(line: &str) -> Command {
    let args = line
        .split('#')
        .next()
        .unwrap_or_default()
        .trim()
        .strip_prefix("cargo xtask up")
        .unwrap_or_else(|| panic!("not an up line: {line}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-topology"));
    cmd.arg("up")
        .args(args.split_whitespace().filter(|a| *a != "--dev"))
        // Readiness must not depend on the log level: the quietest that
        // still shows errors.
        .env("TESTKIT_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtask_up_check_greets_and_exits_0() {
    let text = block("cargo xtask up");
    let line = text
        .lines()
        .find(|l| l.starts_with("cargo xtask up --check"))
        .expect("the README shows `cargo xtask up --check`");
    let out = tokio::time::timeout(Duration::from_secs(120), up_command(line).output())
        .await
        .expect("up --check ends within 120 s")
        .expect("run demo-topology");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(r#"check: 200 {"message":"Hello kratos","served_by":"demo-server-"#),
        "{stdout}"
    );
}

/// What `up` printed: name → (address, pid).
struct Summary(BTreeMap<String, (String, Option<u32>)>);

impl Summary {
    /// Reads the runner's stdout up to the Ctrl-C line.
    async fn read(child: &mut Child) -> Self {
        let out = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(out).lines();
        let mut map = BTreeMap::new();
        let read = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                println!("{line}");
                // `  demo-server-1:    grpc://127.0.0.1:41983  (pid 7005)`,
                // `  web console:      http://127.0.0.1:33771/`
                if let Some((name, rest)) = line.trim().split_once(": ") {
                    let rest = rest.trim();
                    if let Some((addr, pid)) = rest.split_once("  (pid ") {
                        let pid = pid.trim_end_matches(')').parse().expect("pid");
                        map.insert(name.to_string(), (addr.trim().to_string(), Some(pid)));
                    } else if rest.starts_with("http://") {
                        map.insert(name.to_string(), (rest.to_string(), None));
                    }
                }
                if line.contains("stops everything") {
                    return;
                }
            }
            panic!("up ended before its summary");
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .expect("summary within 120 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Summary(map)
    }

    fn url(&self, name: &str) -> &str {
        &self.0.get(name).unwrap_or_else(|| panic!("no {name}")).0
    }

    fn pid(&self, name: &str) -> u32 {
        self.0
            .get(name)
            .and_then(|(_, pid)| *pid)
            .unwrap_or_else(|| panic!("no pid for {name}"))
    }
}

/// A child of the runner, told apart from a later process that reuses its
/// pid by its start time.
#[derive(Clone, Copy)]
struct Pid {
    pid: u32,
    started: u64,
}

impl Pid {
    fn of(pid: u32) -> Pid {
        let started = stat_fields(pid)
            .and_then(|f| f.get(STARTTIME).and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("pid {pid} is not running"));
        Pid { pid, started }
    }

    /// Whether the process still runs (not a zombie).
    fn alive(self) -> bool {
        stat_fields(self.pid).is_some_and(|f| {
            f.get(STARTTIME).and_then(|s| s.parse().ok()) == Some(self.started)
                && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
        })
    }
}

/// Kills the listed processes on drop, so that a failed test leaves
/// nothing behind (the children have process groups of their own, and the
/// runner's kill on drop is a SIGKILL that they do not see).
struct Reaper(Vec<Pid>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for p in self.0.iter().filter(|p| p.alive()) {
            let _ = testkit::signal::send(p.pid, "KILL");
        }
    }
}

/// Index of `starttime` in [`stat_fields`] (field 22 of `/proc/<pid>/stat`).
const STARTTIME: usize = 19;

/// The fields of `/proc/<pid>/stat` after `pid (comm)`, from `state` on
/// (`comm` may hold spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Starts `up` (the README's plain line), checks what it printed, stops it
/// with `signal` sent the way `how` says, and checks that nothing is left.
async fn up_then_stop(signal: &str, to_group: bool) {
    let text = block("cargo xtask up");
    let line = text
        .lines()
        .find(|l| l.split('#').next().unwrap_or_default().trim() == "cargo xtask up")
        .expect("the README shows `cargo xtask up`");
    let mut cmd = up_command(line);
    // As a shell runs a foreground job: its own process group, which a
    // terminal's Ctrl-C signals as a whole.
    cmd.process_group(0).stdout(Stdio::piped());
    let mut up = cmd.spawn().expect("spawn demo-topology up");
    let runner = up.id().expect("pid");
    let summary = Summary::read(&mut up).await;

    let names = [
        "discovery node 1",
        "discovery node 2",
        "discovery node 3",
        "demo-server-1",
        "demo-server-2",
        "demo-client-1",
    ];
    let reaper = Reaper(names.iter().map(|n| Pid::of(summary.pid(n))).collect());
    for name in names {
        let pid = summary.pid(name);
        assert_eq!(parent_of(pid), Some(runner), "{name} (pid {pid})");
    }
    assert!(
        summary
            .url("demo-server-1")
            .starts_with("grpc://127.0.0.1:")
    );
    // The web console answers.
    let console = summary.url("web console");
    assert_eq!(console, format!("{}/", summary.url("discovery node 1")));
    // Read to the end on a client that keeps no idle connection: a
    // response held unread keeps its connection to node 1 open, and the
    // node, stopping, waits for that client to close before it exits
    // (lingering close); the runner then has to kill it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let page = http.get(console).send().await.expect("console");
    assert!(page.status().is_success(), "{page:?}");
    let html = page.text().await.expect("console page");
    assert!(html.contains("<title>discovery console</title>"), "{html}");
    drop(http);

    // The README's curl, on the printed client address.
    let curl_block = block("curl 'http://127.0.0.1:<client port>/say_hello?name=kratos'");
    let client = summary.url("demo-client-1");
    let mut lines = curl_block.lines();
    let cmd = lines
        .next()
        .expect("curl")
        .replace("http://127.0.0.1:<client port>", client);
    let shown = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .expect("the answer the README shows");
    let out = run_sh(&cmd).await;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{cmd}: {out:?}");
    // Either server may answer.
    let shown = shown.replace(r#""served_by":"demo-server-1""#, r#""served_by":"..."#);
    assert!(
        matches(&shown, &body),
        "{cmd}\n README: {shown}\n got: {body}"
    );
    let served_by: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        ["demo-server-1", "demo-server-2"].contains(&served_by["served_by"].as_str().unwrap_or("")),
        "{body}"
    );

    if to_group {
        testkit::signal::send_group(runner, signal).expect("kill");
    } else {
        testkit::signal::send(runner, signal).expect("kill");
    }
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .expect("up exits within 60 s of the signal")
        .expect("wait");
    assert!(status.success(), "up exited with {status}");
    // Read once, on purpose: the runner reaps every child before it exits,
    // so none may be running, or dying, once `wait` has returned.
    for (name, p) in names.iter().zip(&reaper.0) {
        let (addr, pid) = (summary.url(name), p.pid);
        assert!(!p.alive(), "{name} (pid {pid}) survived {signal}");
        let hostport: SocketAddr = addr
            .split("://")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {addr}"));
        assert!(
            TcpStream::connect_timeout(&hostport, Duration::from_secs(1)).is_err(),
            "{name} still listens on {hostport}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_curl_then_sigterm_leaves_no_child() {
    up_then_stop("TERM", false).await;
}

/// A terminal's Ctrl-C signals the whole foreground process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_ctrl_c_leaves_no_child() {
    up_then_stop("INT", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_demo_sequence() {
    let (_node, node) = bare_node().await;
    let bins = testkit::bin_dir();
    let mut ports: BTreeMap<String, String> = BTreeMap::new();
    let text = block("cargo build --release --bin demo-server --bin demo-client");
    let mut background: Vec<Group> = Vec::new();
    let mut curled = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("cargo build --release") {
            // Built already, in this test's profile.
            for bin in rest.split_whitespace().filter(|w| *w != "--bin") {
                assert!(bins.join(bin).exists(), "{bin} not built");
            }
            continue;
        }
        // `target/release/x` → this profile's binaries; the README's ports
        // → free ones (the same README port, the same free port).
        let mut line = line
            .replace("target/release/", &format!("{}/", bins.display()))
            .replace("127.0.0.1:7171", &node);
        for word in line.clone().split_whitespace() {
            for part in word.split(['\'', '/']) {
                if let Some(port) = part.strip_prefix("127.0.0.1:") {
                    if port.parse::<u16>().is_ok() && !node.ends_with(&format!(":{port}")) {
                        let free = ports
                            .entry(port.to_string())
                            .or_insert_with(|| free_port().to_string())
                            .clone();
                        line = line
                            .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
                    }
                }
            }
        }
        let (cmd, comment) = match line.split_once('#') {
            Some((c, comment)) => (c.trim().to_string(), comment.trim().to_string()),
            None => (line.clone(), String::new()),
        };
        if let Some(expect) = comment.strip_prefix("exits ") {
            // `… # exits 2: <message> …`
            let (code, message) = expect.split_once(": ").expect("exits N: message");
            let message = message.trim_end_matches('…').trim();
            let out = run_sh(&cmd).await;
            assert_eq!(out.status.code(), code.parse().ok(), "{cmd}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(message), "{cmd}: {stderr}");
        } else if cmd.starts_with("curl ") {
            // The servers register and the client finds them: retried.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = run_sh(&format!("{cmd} -sf")).await;
                let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() {
                    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                    assert_eq!(json["message"], "Hello kratos", "{body}");
                    break;
                }
                assert!(Instant::now() < deadline, "{cmd}: {out:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            curled = true;
        } else {
            // A server: runs until the end of the test.
            let child = sh(&cmd)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn");
            background.push(Group(child));
        }
    }
    assert!(curled, "the sequence ends with a curl");
    assert_eq!(background.len(), 3, "two servers and a client");
    for Group(child) in &mut background {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{child:?} exited"
        );
    }
}

/// A shell line in its own process group, killed as a group on drop (the
/// shell may have forked the command).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = testkit::signal::send_group(pid, "KILL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_configs_form_one_cluster() {
    let text = block("cargo run --release --bin discovery -- -conf configs/cluster/node1.toml");
    let confs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("-conf ").nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(confs.len(), 3, "{text}");
    // The configs' loopback ports, each to a free one.
    let mut ports: BTreeMap<String, String> = BTreeMap::new();
    let texts: Vec<String> = confs
        .iter()
        .map(|c| std::fs::read_to_string(root().join(c)).expect("config"))
        .collect();
    for t in &texts {
        for part in t.split("127.0.0.1:").skip(1) {
            let port: String = part.chars().take_while(char::is_ascii_digit).collect();
            ports.entry(port).or_insert_with(|| free_port().to_string());
        }
    }
    let dir = std::env::temp_dir().join(format!("readme-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut addrs = Vec::new();
    let mut paths = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let mut t = t.clone();
        for (from, to) in &ports {
            t = t.replace(&format!("127.0.0.1:{from}\""), &format!("127.0.0.1:{to}\""));
        }
        let listen = t
            .split("[httpServer]")
            .nth(1)
            .and_then(|s| s.split("addr = \"").nth(1))
            .and_then(|s| s.split('"').next())
            .expect("httpServer.addr")
            .to_string();
        let path = dir.join(format!("node{}.toml", i + 1));
        std::fs::write(&path, t).expect("write config");
        addrs.push(listen);
        paths.push(path);
    }
    // Started together, as three terminals would.
    let starts = paths.iter().zip(&addrs).map(|(p, a)| {
        let p = p.display().to_string();
        let a = a.clone();
        tokio::spawn(async move { start_discovery(&["-conf", &p], &a).await })
    });
    let mut nodes = Vec::new();
    for s in starts.collect::<Vec<_>>() {
        nodes.push(s.await.expect("task"));
    }

    // A write on node 1 is on node 3; node 2 lists all three members.
    let http = reqwest::Client::new();
    let r: serde_json::Value = testkit::http::send_json(
        http.post(format!("http://{}/discovery/register", addrs[0]))
            .form(&[
                ("zone", "sh001"),
                ("env", "dev"),
                ("appid", "provider"),
                ("hostname", "myhostname"),
                ("status", "1"),
                ("addrs", "grpc://127.0.0.1:9000"),
            ]),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f: serde_json::Value = testkit::http::send_json(http.get(format!(
            "http://{}/discovery/fetch?zone=sh001&env=dev&appid=provider&status=1",
            addrs[2]
        )))
        .await;
        if f["code"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never had it: {f}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: serde_json::Value =
            testkit::http::send_json(http.get(format!("http://{}/discovery/nodes", addrs[1])))
                .await;
        let listed = n["data"].to_string();
        if addrs.iter().all(|a| listed.contains(a.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 lists {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
