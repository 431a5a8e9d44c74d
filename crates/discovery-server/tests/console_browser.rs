//! The web console in a real headless Chromium, driven over the DevTools
//! protocol: instances registered through the API show up in the rendered
//! DOM (and live, through the console's long poll), and a screenshot lands
//! in `target/console.png`.
//!
//! Needs `chromium` (Debian package; `.ci/run` installs it) or `$CHROMIUM`.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine as _;
use discovery_server::{config::Config, server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("no chromium found: install the `chromium` package or set $CHROMIUM");
}

/// A DevTools session on one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("devtools answer")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn wait_text(&mut self, id: &str, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let text = self
                .eval(&format!(
                    "(document.getElementById('{id}') || {{}}).innerText || ''"
                ))
                .await
                .as_str()
                .unwrap_or("")
                .to_string();
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "#{id} never showed {needles:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts headless Chromium on `url`; returns the process, a DevTools
/// session on its page, and the profile directory.
async fn launch(url: &str) -> (tokio::process::Child, Page, PathBuf) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("console-chromium-{}-{n}", std::process::id()));
    let browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");

    // Chromium writes its DevTools port into the profile directory.
    let port_file = profile.join("DevToolsActivePort");
    let start = Instant::now();
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Some(p) = text.lines().next().and_then(|l| l.parse::<u16>().ok()) {
                break p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromium did not open DevTools"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let targets = testkit::http::get_json(&format!("http://127.0.0.1:{port}"), "/json/list").await;
    let ws_url = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let mut page = Page { ws, next_id: 0 };
    page.call("Page.enable", json!({})).await;
    page.call("Page.navigate", json!({"url": url})).await;
    (browser, page, profile)
}

/// A node on loopback with the config `toml`, and its base URL.
async fn start(toml: &str) -> (server::ServerHandle, String) {
    let node = server::start(
        Config::parse(toml).unwrap().0,
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let base = format!("http://{}", node.addr());
    (node, base)
}

async fn register(base: &str, zone: &str, host: &str, status: u8) {
    let r = testkit::http::post_form(base, "/discovery/register", &format!("zone={zone}&env=dev&appid=demo.svc&hostname={host}&status={status}&addrs=grpc://10.0.0.9:9000&version=v7&metadata=%7B%22weight%22%3A%2220%22%7D")).await;
    assert_eq!(r["code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_registered_instances_in_a_real_browser() {
    let (node, base) = start("").await;
    register(&base, "sh001", "web-1", 1).await;
    register(&base, "sh001", "web-2", 1).await;
    register(&base, "sh002", "web-3", 2).await;

    let (mut browser, mut page, profile) = launch(&format!("{base}/")).await;

    // The app list, the selected app's instances, the cluster, the charts.
    page.wait_text("apps", &["demo.svc", "infra.discovery"])
        .await;
    let instances = page
        .wait_text(
            "instances",
            &[
                "web-1",
                "web-2",
                "web-3",
                "sh002",
                "UP",
                "waiting",
                "weight=20",
            ],
        )
        .await;
    assert!(instances.contains("ago"), "renew age shown: {instances}");
    page.wait_text("members", &[&node.addr().to_string(), "UP"])
        .await;
    page.wait_text("protect-text", &["threshold"]).await;
    let bars = page
        .eval("document.querySelectorAll('#zone-chart rect').length")
        .await;
    assert_eq!(
        bars, 3,
        "one bar per zone: sh001, sh002 and the node's own zone01"
    );

    // Live: a new instance appears without reloading the page.
    register(&base, "sh001", "web-4", 1).await;
    let shown = Instant::now();
    page.wait_text("instances", &["web-4"]).await;
    println!(
        "new instance rendered {:?} after its register",
        shown.elapsed()
    );

    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::fs::create_dir_all(&target).unwrap();
    let path = target.join("console.png");
    std::fs::write(&path, &png).unwrap();
    assert!(png.len() > 10_000, "a real screenshot");
    println!("screenshot: {}", path.display());

    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let (node, base) = start("").await;
    register(&base, "sh001", "m-1", 1).await;
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().await.unwrap();
    for needle in [
        "discovery_http_requests_total{route=\"/discovery/register\",code=\"0\"} 1",
        "discovery_instances 2",
        "discovery_apps 2",
        "discovery_parked_polls 0",
        "discovery_protected 0",
        "discovery_renews_expected 4",
        "discovery_http_request_duration_seconds_bucket",
        "discovery_evictions_total 0",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_with_auth_on_after_the_admin_token_is_entered_once() {
    let (node, base) = start("[auth]\nwrite_token = \"w\"\nadmin_token = \"adm\"\npeer_token = \"p\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n").await;
    register(&base, "sh001", "secure-1", 1).await;
    let (mut browser, mut page, profile) = launch(&format!("{base}/")).await;
    // Without a token the registry listing is refused and the form shows.
    let start = Instant::now();
    while page
        .eval("getComputedStyle(document.getElementById('login')).display")
        .await
        != "block"
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "login form never shown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.eval("document.getElementById('token').value = 'adm'; document.getElementById('login').requestSubmit(); true").await;
    page.wait_text("instances", &["secure-1"]).await;
    // Entered once: a reload keeps it.
    page.call("Page.reload", json!({})).await;
    page.wait_text("instances", &["secure-1"]).await;
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    node.shutdown().await;
}
