//! What the interop shim costs a caller: sequential unary Greeter calls
//! over loopback to a tonic server with and without
//! `discovery_tonic::interop::incoming`, in alternating rounds. Run in
//! release:
//!
//! ```text
//! cargo run --release -p discovery-tonic --example shim_overhead
//! ```

use std::time::{Duration, Instant};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
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

async fn serve(shim: bool) -> GreeterClient<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(GreeterServer::new(Hello));
    if shim {
        tokio::spawn(router.serve_with_incoming(discovery_tonic::interop::incoming(listener)));
    } else {
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    }
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    GreeterClient::new(channel)
}

async fn round(client: &mut GreeterClient<Channel>, calls: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..calls {
        let req = HelloRequest {
            name: "kratos".into(),
        };
        client.say_hello(req).await.unwrap();
    }
    t.elapsed() / calls
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut plain = serve(false).await;
    let mut shim = serve(true).await;
    round(&mut plain, 500).await;
    round(&mut shim, 500).await;
    let (mut best_plain, mut best_shim) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        best_plain = best_plain.min(round(&mut plain, 2000).await);
        best_shim = best_shim.min(round(&mut shim, 2000).await);
    }
    println!(
        "sequential unary calls over loopback, best of 7 rounds of 2000: \
         without the shim {:.1} µs, with it {:.1} µs per call",
        best_plain.as_secs_f64() * 1e6,
        best_shim.as_secs_f64() * 1e6
    );
}
