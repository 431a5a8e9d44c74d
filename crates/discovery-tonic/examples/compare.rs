//! Failure rate and per-call overhead of our balancer against tonic's
//! `Channel::balance_list`, on loopback.
//!
//! ```text
//! cargo run --release -p discovery-tonic --example compare
//! ```
//!
//! Four Greeter servers; 100 warm-up calls; one server killed (listener and
//! connections, registry not told); 1000 sequential calls without retries.
//! Then 5000 sequential calls to one healthy server through a plain tonic
//! `Channel` and through `Balanced` give the added latency per call.

use std::{net::SocketAddr, time::Duration};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_tonic::{Balanced, BalancerKind, ClientConfig, Resolvers};
use tokio::time::Instant;
use tonic::{Request, Response, Status, transport::Channel};

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    }
}

/// A server on its own runtime, so that dropping the runtime kills it.
fn server() -> (SocketAddr, tokio::runtime::Runtime) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let _ = tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Hello))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    (addr, rt)
}

fn req() -> HelloRequest {
    HelloRequest {
        name: "kratos".into(),
    }
}

async fn kill_one_of_four<F>(name: &str, make: F)
where
    F: FnOnce(Vec<SocketAddr>) -> GreeterClient<Channel>,
{
    let servers: Vec<_> = (0..4).map(|_| server()).collect();
    let mut client = make(servers.iter().map(|s| s.0).collect());
    report(name, &mut client, servers).await;
}

async fn report<T>(
    name: &str,
    client: &mut GreeterClient<T>,
    mut servers: Vec<(SocketAddr, tokio::runtime::Runtime)>,
) where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut warm_failures = 0;
    for _ in 0..100 {
        if client.say_hello(req()).await.is_err() {
            warm_failures += 1;
        }
    }
    let (_, victim) = servers.remove(1);
    victim.shutdown_background();
    let t = Instant::now();
    let mut failed = 0;
    for _ in 0..1000 {
        if client.say_hello(req()).await.is_err() {
            failed += 1;
        }
    }
    println!(
        "{name:>14}: {failed:4} of 1000 failed after the kill ({:.1} %), {:?} (warm-up failures {warm_failures})",
        failed as f64 / 10.0,
        t.elapsed()
    );
    for (_, rt) in servers {
        rt.shutdown_background();
    }
}

async fn latency<T>(name: &str, client: &mut GreeterClient<T>) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    const N: u32 = 5000;
    for _ in 0..200 {
        client.say_hello(req()).await.unwrap();
    }
    let t = Instant::now();
    for _ in 0..N {
        client.say_hello(req()).await.unwrap();
    }
    let per_call = t.elapsed() / N;
    println!("{name:>14}: {per_call:?} per call");
    per_call
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("one of four servers killed, 1000 sequential calls, no retries:");
    kill_one_of_four("balance_list", |addrs| {
        let eps = addrs
            .iter()
            .map(|a| Channel::from_shared(format!("http://{a}")).unwrap());
        GreeterClient::new(Channel::balance_list(eps))
    })
    .await;
    for kind in [BalancerKind::P2c, BalancerKind::Wrr] {
        let servers: Vec<_> = (0..4).map(|_| server()).collect();
        let list = servers
            .iter()
            .map(|s| s.0.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let config = ClientConfig::default()
            .balancer(kind)
            .timeout(Duration::from_secs(2));
        let balanced = Balanced::from_target(
            &format!("direct://default/{list}"),
            &Resolvers::new(),
            &config,
        )
        .unwrap();
        balanced.connect().await.unwrap();
        while balanced.ready_endpoints().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut client = GreeterClient::new(balanced);
        report(&format!("ours {kind:?}"), &mut client, servers).await;
    }

    println!("sequential unary calls to one healthy server:");
    let (addr, rt) = server();
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let base = latency("tonic Channel", &mut GreeterClient::new(plain)).await;
    let balanced = Balanced::from_target(
        &format!("direct://default/{addr}"),
        &Resolvers::new(),
        &ClientConfig::default(),
    )
    .unwrap();
    balanced.connect().await.unwrap();
    let ours = latency("ours p2c", &mut GreeterClient::new(balanced)).await;
    println!("added per call: {:?}", ours.saturating_sub(base));
    rt.shutdown_background();
}
