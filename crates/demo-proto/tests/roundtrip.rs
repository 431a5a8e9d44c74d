//! The generated client and server talk to each other over loopback.

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Server};

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello {}", req.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }
}

#[tokio::test]
async fn say_hello_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(GreeterServer::new(Hello))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client
        .say_hello(HelloRequest {
            name: "kratos".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "Hello kratos");
}
