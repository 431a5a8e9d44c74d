//! The provider side against real servers.

mod common;

use std::time::Duration;

use common::{
    addr_of, client, config, dead_node, eventually, instance, server, server_at, stored, timed,
};
use discovery_client::{Discovery, SetRequest};
use naming::{Error, Instance, Registry, Status};

/// Two addrs as two fields, status 1 when unset, identity
/// from the SDK config.
#[tokio::test]
async fn register_sends_both_addrs_status_up_and_the_config_identity() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let ins = Instance {
        appid: "demo.svc".into(),
        addrs: vec![
            "grpc://127.0.0.1:9000".into(),
            "http://127.0.0.1:8000".into(),
        ],
        version: "v7".into(),
        metadata: [("weight".to_string(), "20".to_string())].into(),
        status: Status::Other(0),
        ..Default::default()
    };
    let reg = d.register(ins).await.unwrap();
    let got = stored(&s, "demo.svc");
    assert_eq!(got.len(), 1, "{got:?}");
    let g = &got[0];
    assert_eq!(g.addrs, ["grpc://127.0.0.1:9000", "http://127.0.0.1:8000"]);
    assert_eq!(g.status, Status::Up);
    assert_eq!(g.version, "v7");
    assert_eq!(g.metadata["weight"], "20");
    let c = d.config();
    assert_eq!(
        (&*g.region, &*g.zone, &*g.env, &*g.hostname),
        (&*c.region, &*c.zone, &*c.env, &*c.hostname)
    );
    reg.cancel().await.unwrap();
    d.close().await.unwrap();
    s.shutdown().await;
}

/// An instance carrying a different zone than the client's is refused.
#[tokio::test]
async fn differing_identity_is_invalid_config() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let mut ins = instance("demo.svc", 1);
    ins.zone = "elsewhere".into();
    assert!(matches!(
        d.register(ins).await,
        Err(Error::InvalidConfig(_))
    ));
    let no_addrs = Instance {
        appid: "x".into(),
        ..Default::default()
    };
    assert!(matches!(
        d.register(no_addrs).await,
        Err(Error::InvalidConfig(_))
    ));
    assert!(stored(&s, "demo.svc").is_empty());
    s.shutdown().await;
}

/// After `cancel` returns, a fetch no longer lists the
/// instance; a second register of the appid is `Duplicate` until then.
#[tokio::test]
async fn cancel_removes_and_frees_the_appid() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let other = client(&[addr_of(&s)]);
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    assert!(other.fetch("demo.svc").await.unwrap().is_some());
    let dup = d.register(instance("demo.svc", 2)).await.unwrap_err();
    assert!(
        matches!(dup, Error::Duplicate(ref a) if a == "demo.svc"),
        "{dup:?}"
    );
    reg.cancel().await.unwrap();
    assert!(other.fetch("demo.svc").await.unwrap().is_none());
    assert!(stored(&s, "demo.svc").is_empty());
    let again = d.register(instance("demo.svc", 3)).await.unwrap();
    assert_eq!(stored(&s, "demo.svc")[0].addrs, ["grpc://127.0.0.1:3"]);
    again.cancel().await.unwrap();
    s.shutdown().await;
}

/// Dropping a registration sends a cancel within 1 s.
#[tokio::test]
async fn drop_sends_a_cancel() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    assert_eq!(stored(&s, "demo.svc").len(), 1);
    drop(reg);
    let took = eventually(Duration::from_secs(1), "cancel after drop", || {
        stored(&s, "demo.svc").is_empty()
    })
    .await;
    println!("drop → cancel seen by the server after {took:?}");
    // The appid is free again.
    let reg = d.register(instance("demo.svc", 2)).await.unwrap();
    reg.cancel().await.unwrap();
    s.shutdown().await;
}

/// With every node down, cancel gives up with an error within
/// 5.5 s (cancel_timeout 5 s).
#[tokio::test]
async fn cancel_with_every_node_down_is_bounded() {
    let s = server("").await;
    let d = client(&[addr_of(&s), dead_node()]);
    // The register may start on the dead node; it fails over.
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    s.shutdown().await;
    let (r, took) = timed(reg.cancel()).await;
    println!("cancel with every node down: {r:?} after {took:?}");
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_millis(5500),
        "{took:?}"
    );
}

/// Transport failure on register switches node and retries once.
#[tokio::test]
async fn register_fails_over_to_a_live_node() {
    let s = server("").await;
    for i in 0..6 {
        let d = client(&[dead_node(), addr_of(&s)]);
        let appid = format!("demo.fo{i}");
        let reg = d.register(instance(&appid, 1)).await.unwrap();
        assert_eq!(stored(&s, &appid).len(), 1);
        assert_eq!(d.current_node(), addr_of(&s));
        reg.cancel().await.unwrap();
    }
    s.shutdown().await;
}

/// Renews keep an instance past its lease; when the server forgets it
/// (renew answers -404) the SDK registers again at once.
#[tokio::test]
async fn renews_keep_it_and_minus_404_registers_again() {
    let s = server("lease = \"1s\"\nevict_interval = \"200ms\"\nrenew_interval = \"250ms\"\nself_preservation = false").await;
    let mut c = config(&[addr_of(&s)]);
    c.renew_interval = Duration::from_millis(300);
    let d = Discovery::new(c).unwrap();
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    // Fixed: more than two leases pass, and the renews keep it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(stored(&s, "demo.svc").len(), 1, "renewed instance evicted");

    // The server forgets the instance (as after an eviction).
    let hostname = d.config().hostname.clone();
    common::remove(&s, "demo.svc", &hostname);
    assert!(stored(&s, "demo.svc").is_empty());
    let took = eventually(Duration::from_secs(1), "register after -404", || {
        stored(&s, "demo.svc").len() == 1
    })
    .await;
    println!("forgotten instance registered again after {took:?} (renew period 300 ms)");
    reg.cancel().await.unwrap();
    assert!(stored(&s, "demo.svc").is_empty());
    s.shutdown().await;
}

/// A restarted server (same port, empty registry) gets the instance back.
#[tokio::test]
async fn server_restart_gets_the_instance_back() {
    let s = server("").await;
    let addr = s.addr();
    let mut c = config(&[addr.to_string()]);
    c.renew_interval = Duration::from_millis(300);
    let d = Discovery::new(c).unwrap();
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    s.shutdown().await;
    let s = server_at("", addr).await;
    assert!(stored(&s, "demo.svc").is_empty());
    let took = eventually(Duration::from_secs(3), "re-register after restart", || {
        stored(&s, "demo.svc").len() == 1
    })
    .await;
    println!("instance back on the restarted server after {took:?}");
    reg.cancel().await.unwrap();
    s.shutdown().await;
}

/// `set` changes status and metadata; a later re-register keeps them.
#[tokio::test]
async fn set_changes_status_and_metadata() {
    let s = server("").await;
    let mut c = config(&[addr_of(&s)]);
    c.renew_interval = Duration::from_millis(200);
    let d = Discovery::new(c).unwrap();
    let reg = d.register(instance("demo.svc", 1)).await.unwrap();
    d.set(
        "demo.svc",
        SetRequest {
            status: Some(Status::Waiting),
            metadata: Some([("color".to_string(), "red".to_string())].into()),
        },
    )
    .await
    .unwrap();
    let g = &stored(&s, "demo.svc")[0];
    assert_eq!(g.status, Status::Waiting);
    assert_eq!(g.metadata["color"], "red");
    let unknown = d.set("nope", SetRequest::default()).await.unwrap_err();
    assert!(
        matches!(unknown, Error::Server { code: -400, .. }),
        "{unknown:?}"
    );

    let hostname = d.config().hostname.clone();
    common::remove(&s, "demo.svc", &hostname);
    eventually(Duration::from_secs(2), "re-register", || {
        stored(&s, "demo.svc").len() == 1
    })
    .await;
    let g = &stored(&s, "demo.svc")[0];
    assert_eq!(
        (g.status, g.metadata["color"].as_str()),
        (Status::Waiting, "red")
    );
    reg.cancel().await.unwrap();
    s.shutdown().await;
}

/// `close` cancels every registration and later calls fail with `Closed`.
#[tokio::test]
async fn close_cancels_everything() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let a = d.register(instance("demo.a", 1)).await.unwrap();
    let b = d.register(instance("demo.b", 2)).await.unwrap();
    d.close().await.unwrap();
    assert!(stored(&s, "demo.a").is_empty() && stored(&s, "demo.b").is_empty());
    assert!(matches!(
        d.register(instance("demo.c", 3)).await,
        Err(Error::Closed)
    ));
    assert!(matches!(d.watch("demo.c"), Err(Error::Closed)));
    assert!(matches!(d.fetch("demo.c").await, Err(Error::Closed)));
    // Already cancelled by close: a no-op.
    a.cancel().await.unwrap();
    drop(b);
    s.shutdown().await;
}

/// A process that drops its guard and closes the client at once (the usual
/// way out of `main`) still leaves nothing registered: close waits for the
/// background cancel.
#[tokio::test]
async fn close_waits_for_the_cancel_of_a_dropped_registration() {
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    let reg = d.register(instance("drop.svc", 9000)).await.unwrap();
    drop(reg);
    d.close().await.unwrap();
    assert!(
        stored(&s, "drop.svc").is_empty(),
        "close returned with the dropped registration still registered"
    );
    s.shutdown().await;
}

/// A dropped registration says in one log line that it was cancelled.
#[tokio::test]
async fn a_dropped_registration_logs_one_line() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    // A current-thread test runtime: every task logs through this thread.
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let s = server("").await;
    let d = client(&[addr_of(&s)]);
    drop(d.register(instance("drop.svc", 9000)).await.unwrap());
    d.close().await.unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("drop.svc") && l.contains("registration dropped"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("cancelled"), "{}", lines[0]);
    s.shutdown().await;
}
