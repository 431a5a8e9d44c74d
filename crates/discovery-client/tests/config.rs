//! SDK configuration.

mod common;

use std::time::{Duration, Instant};

use discovery_client::{Config, Discovery};
use naming::Error;

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

/// No nodes → `NoNodes` naming `DISCOVERY_NODES` and the
/// resolved identity; no panic.
#[tokio::test]
async fn no_nodes_is_an_error_naming_the_variable() {
    let config = Config::builder()
        .hostname("h1")
        .build_with(env(&[("ZONE", "sh001"), ("DISCOVERY_NODES", " , ,")]));
    let err = Discovery::new(config).unwrap_err();
    assert!(matches!(err, Error::NoNodes { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        "DISCOVERY_NODES",
        "zone=sh001",
        "env=dev",
        "hostname=h1",
        "region=region01",
    ] {
        assert!(text.contains(part), "{part} missing in {text}");
    }
}

/// Items trimmed, empties dropped, `http://` stripped.
#[test]
fn discovery_nodes_are_trimmed_and_stripped() {
    let c = Config::builder().build_with(env(&[("DISCOVERY_NODES", " a:7171, b:7171,")]));
    assert_eq!(c.nodes, ["a:7171", "b:7171"]);
    let c = Config::builder().build_with(env(&[("DISCOVERY_NODES", "http://a:1,,http://b:2/")]));
    assert_eq!(c.nodes, ["a:1", "b:2"]);
}

/// Defaults without any variable; the hostname is the OS's.
#[test]
fn defaults_without_environment() {
    let c = Config::builder().build_with(|_| None);
    assert!(c.nodes.is_empty());
    assert_eq!(c.region, "region01");
    assert_eq!(c.zone, "zone01");
    assert_eq!(c.env, "dev");
    assert_eq!(c.color, "");
    assert_eq!(c.appid, "");
    let os = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(c.hostname, os.trim());
    assert_eq!(c.renew_interval, Duration::from_secs(30));
    assert_eq!(c.cancel_timeout, Duration::from_secs(5));
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert_eq!(c.poll_timeout, Duration::from_secs(40));
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
}

/// Code beats the environment; the environment beats defaults.
#[test]
fn code_then_environment_then_default() {
    let vars = env(&[
        ("DISCOVERY_NODES", "env:1"),
        ("REGION", "sh"),
        ("ZONE", "sh001"),
        ("DEPLOY_ENV", "uat"),
        ("HOSTNAME", "box"),
        ("DEPLOY_COLOR", "red"),
        ("APP_ID", "demo.client"),
    ]);
    let c = Config::builder().build_with(&vars);
    assert_eq!(
        (
            c.nodes.as_slice(),
            &*c.region,
            &*c.zone,
            &*c.env,
            &*c.hostname,
            &*c.color,
            &*c.appid
        ),
        (
            &["env:1".to_string()][..],
            "sh",
            "sh001",
            "uat",
            "box",
            "red",
            "demo.client"
        )
    );
    let c = Config::builder()
        .nodes(["code:1"])
        .zone("sh002")
        .env("prod")
        .hostname("mine")
        .build_with(&vars);
    assert_eq!(c.nodes, ["code:1"]);
    assert_eq!(
        (&*c.zone, &*c.env, &*c.hostname, &*c.region),
        ("sh002", "prod", "mine", "sh")
    );
}

/// `new` does no blocking IO, and `ready(3 s)` against a seed
/// that accepts connections but never answers returns within 3.2 s.
#[tokio::test]
async fn ready_against_a_silent_seed_is_bounded() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut config = common::config(&[addr]);
    config.self_discovery = true;
    let start = Instant::now();
    let d = Discovery::new(config).unwrap();
    assert!(start.elapsed() < Duration::from_millis(100), "new blocked");
    let ready = d.ready(Duration::from_secs(3)).await;
    let took = start.elapsed();
    println!("ready(3s) against a silent seed returned {ready} after {took:?}");
    assert!(!ready);
    // The bound plus scheduling slack on a loaded machine: what matters is
    // that it returns, not to the millisecond.
    assert!(took < Duration::from_millis(4000), "{took:?}");
    d.close().await.unwrap();
    keep.abort();
}

/// `ready` against a live node learns the node list at once.
#[tokio::test]
async fn ready_against_a_live_node() {
    let s = common::server("").await;
    let mut config = common::config(&[common::addr_of(&s)]);
    config.self_discovery = true;
    let d = Discovery::new(config).unwrap();
    let (ok, took) = common::timed(d.ready(Duration::from_secs(3))).await;
    println!("ready against a live node took {took:?}");
    assert!(ok);
    assert_eq!(d.nodes(), [common::addr_of(&s)]);
    d.close().await.unwrap();
    s.shutdown().await;
}

/// Outside a runtime `new` fails cleanly instead of panicking.
#[test]
fn new_outside_a_runtime_is_an_error() {
    let err = Discovery::new(common::config(&["127.0.0.1:1".into()])).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

/// `https://` nodes turn HTTPS on; the TLS files come from the builder,
/// else `DISCOVERY_CA/CERT/KEY`.
#[test]
fn https_nodes_and_tls_files() {
    let c = Config::builder().hostname("h").build_with(env(&[
        ("DISCOVERY_NODES", "https://a:7171, b:7171"),
        ("DISCOVERY_CA", "/etc/ca.pem"),
        ("DISCOVERY_CERT", "/etc/me.pem"),
        ("DISCOVERY_KEY", "/etc/me.key"),
    ]));
    assert!(c.https);
    assert_eq!(c.nodes, ["a:7171", "b:7171"]);
    assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    assert_eq!(c.cert.as_deref(), Some(std::path::Path::new("/etc/me.pem")));
    assert_eq!(c.key.as_deref(), Some(std::path::Path::new("/etc/me.key")));

    let c = Config::builder()
        .nodes(["HTTPS://a:7171"])
        .ca("/code/ca.pem")
        .hostname("h")
        .build_with(env(&[("DISCOVERY_CA", "/env/ca.pem")]));
    assert!(c.https);
    assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/code/ca.pem")));

    let c = Config::builder()
        .hostname("h")
        .build_with(env(&[("DISCOVERY_NODES", "http://a:7171,b:7171")]));
    assert!(!c.https);
}
