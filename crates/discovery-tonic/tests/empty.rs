//! Empty sets fail fast and recover without a new client.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use naming::{InstancesInfo, Resolution};
use support::{APPID, Behaviour, TestServer, dead_addr, ep, eventually, fake, found, hello};
use tokio::time::Instant;
use tonic::Code;

#[tokio::test]
async fn empty_set_fails_fast_then_recovers() {
    let (resolver, tx) = fake(Resolution::Found(std::sync::Arc::new(
        InstancesInfo::default(),
    )));
    let config = ClientConfig::default().env("uat");
    let channel = Balanced::new(resolver, &config).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    eventually(
        Duration::from_secs(2),
        "the updater saw the empty set",
        || channel.pool().phase == "found",
    )
    .await;

    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    let took = t.elapsed();
    println!("empty set: {:?} after {took:?}", err.message());
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains(APPID) && err.message().contains("env uat"),
        "{err:?}"
    );
    assert!(took < Duration::from_millis(50), "{took:?}");

    let server = TestServer::start(Behaviour::default());
    tx.send_replace(found(&[ep(server.addr)]));
    // The update reaches the balancer asynchronously; once it has, calls
    // wait for the first connect (startup grace) instead of failing. The
    // same client serves within 1 s.
    let t = Instant::now();
    let reply = loop {
        match client.say_hello(hello()).await {
            Ok(reply) => break reply,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                assert!(t.elapsed() < Duration::from_secs(1), "still failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    println!(
        "first success {:?} after the endpoint appeared",
        t.elapsed()
    );
    assert_eq!(reply.into_inner().message, "Hello kratos");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn not_found_names_the_registry_env() {
    let (resolver, _tx) = fake(Resolution::NotFound {
        appid: APPID.into(),
        env: "fat".into(),
    });
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    eventually(Duration::from_secs(2), "the updater saw not-found", || {
        channel.pool().phase == "not_found"
    })
    .await;
    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(50));
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        "no instances of demo.service in env fat (not registered)"
    );
}

#[tokio::test]
async fn pending_waits_for_the_grace_then_says_so() {
    let (resolver, tx) = fake(Resolution::Pending);
    let config = ClientConfig::default()
        .timeout(Duration::from_secs(5))
        .startup_grace(Duration::from_millis(200));
    let channel = Balanced::new(resolver, &config).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().ends_with("(resolution pending)"), "{err:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "{took:?}"
    );

    drop(tx);

    // Resolution arriving during the grace serves the waiting call.
    let server = TestServer::start(Behaviour::default());
    let addr = server.addr;
    let (resolver, tx) = fake(Resolution::Pending);
    let channel = Balanced::new(resolver, &config).unwrap();
    let mut client = GreeterClient::new(channel);
    let push = tokio::spawn(async move {
        // Fixed: the resolution must come while the call already waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(found(&[ep(addr)]));
        tx
    });
    client
        .say_hello(hello())
        .await
        .expect("served within the grace");
    assert_eq!(server.hits(), 1);
    drop(push.await);
}

#[tokio::test]
async fn unreachable_endpoints_fail_fast_with_the_count() {
    let (resolver, _tx) = fake(found(&[ep(dead_addr()), ep(dead_addr())]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    let mut client = GreeterClient::new(channel);
    // Let the first connect attempts fail. Fixed: no public signal says a
    // dial failed; a refused loopback connect takes far less than 300 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().ends_with("(2 endpoints unreachable)"),
        "{err:?}"
    );
}

#[tokio::test]
async fn no_call_outlives_its_deadline_while_pending() {
    // The grace never extends past the deadline.
    let (resolver, _tx) = fake(Resolution::Pending);
    let config = ClientConfig::default().timeout(Duration::from_millis(100));
    let channel = Balanced::new(resolver, &config).unwrap();
    let mut client = GreeterClient::new(channel);
    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn an_empty_snapshot_never_replaces_a_working_set() {
    let server = TestServer::start(Behaviour::default());
    let (resolver, tx) = fake(found(&[ep(server.addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    client.say_hello(hello()).await.unwrap();
    tx.send_replace(Resolution::Found(std::sync::Arc::new(
        InstancesInfo::default(),
    )));
    // Fixed: time for the updater to (wrongly) apply the empty snapshot.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .say_hello(hello())
        .await
        .expect("the last set is kept");
    assert_eq!(channel.ready_endpoints(), [server.addr.to_string()]);
}
