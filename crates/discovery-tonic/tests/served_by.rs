//! Which instance served a call, from the balancer's pick, for servers that
//! say nothing about themselves (Go Greeters send no `x-served-by`); and a
//! server behind `interop::incoming` still serves tonic clients.

mod support;

use std::{sync::Arc, time::Duration};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_tonic::{Balanced, ClientConfig, ServedBy};
use naming::{InstancesInfo, Resolution};
use support::{ep, fake, found, hello, wait_ready};
use tonic::{Request, Response, Status};

/// A Greeter that, like a Go one, sends no `x-served-by`.
struct Quiet;

#[tonic::async_trait]
impl Greeter for Quiet {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    }
}

/// `found(eps)` with the given hostname on its one instance.
fn named(addr: std::net::SocketAddr, hostname: &str) -> Resolution {
    let Resolution::Found(info) = found(&[ep(addr)]) else {
        unreachable!("found() builds Found")
    };
    let mut info = InstancesInfo::clone(&info);
    for list in info.instances.values_mut() {
        for ins in list {
            ins.hostname = hostname.to_string();
        }
    }
    Resolution::Found(Arc::new(info))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_by_names_the_picked_instance_behind_the_interop_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Quiet))
            .serve_with_incoming(discovery_tonic::interop::incoming(listener)),
    );

    let (resolver, tx) = fake(named(addr, "go-greeter-1"));
    let channel = Balanced::new(
        resolver,
        &ClientConfig::default().timeout(Duration::from_secs(2)),
    )
    .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());

    let reply = client.say_hello(hello()).await.expect("call");
    assert!(reply.metadata().get("x-served-by").is_none());
    assert_eq!(
        reply.extensions().get::<ServedBy>(),
        Some(&ServedBy {
            addr: addr.to_string(),
            hostname: "go-greeter-1".into(),
        })
    );
    assert_eq!(reply.into_inner().message, "Hello kratos");

    // The same address re-registered under another hostname.
    tx.send_replace(named(addr, "go-greeter-2"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client.say_hello(hello()).await.expect("call");
        let served = reply.extensions().get::<ServedBy>().cloned().unwrap();
        if served.hostname == "go-greeter-2" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hostname never updated: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
