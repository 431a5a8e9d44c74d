//! Instances whose addresses a gRPC channel cannot dial are skipped, and
//! each such address is logged once, not on every resolve.

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use naming::{Instance, InstancesInfo, Resolution};
use support::{APPID, Behaviour, TestServer, ep, found, hello, wait_ready};

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const UNDIALABLE: [&str; 5] = [
    "unix:///tmp/x.sock",
    "grpc://nohost",
    "http://a:1,grpc://b:2",
    "grpc://:9000",
    "http://only-http:8000",
];

/// `good` plus one instance per undialable address; `round` changes the
/// snapshot so that the balancer applies it again.
fn snapshot(good: std::net::SocketAddr, round: i64) -> Resolution {
    let Resolution::Found(info) = found(&[ep(good)]) else {
        unreachable!()
    };
    let mut info = InstancesInfo::clone(&info);
    let zone = info.instances.get_mut("sh001").unwrap();
    for (i, a) in UNDIALABLE.iter().enumerate() {
        zone.push(Instance {
            hostname: format!("bad{i}"),
            addrs: vec![a.to_string()],
            ..zone[0].clone()
        });
    }
    info.latest_timestamp = round;
    Resolution::Found(Arc::new(info))
}

#[tokio::test]
async fn undialable_addresses_are_skipped_and_logged_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread runtime: the balancer's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(Behaviour::default());
    let (resolver, tx) = support::fake(snapshot(server.addr, 1));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    for round in 2..6 {
        tx.send_replace(snapshot(server.addr, round));
        // Fixed: lets the updater take every round (a repeated log would
        // show); no public signal says a snapshot was applied.
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!(server.hits(), 4);
    assert_eq!(channel.ready_endpoints(), [server.addr.to_string()]);

    let text = logs.text();
    for a in UNDIALABLE {
        let lines = text
            .lines()
            .filter(|l| l.contains("cannot dial") && l.contains(&format!("addr=\"{a}\"")))
            .count();
        assert_eq!(lines, 1, "{a} logged {lines} times:\n{text}");
    }
    let good = server.addr.to_string();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("cannot dial") && l.contains(&good)),
        "{text}"
    );
    assert!(text.contains(APPID), "{text}");
}
