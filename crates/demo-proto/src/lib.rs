//! Generated code of the Greeter demo, `proto/helloworld.proto`.
//!
//! This is the only crate of the workspace that compiles protos. The build
//! script uses protox (a pure-Rust protobuf compiler), so no `protoc` is
//! needed, and tonic-prost-build for the messages, client and server stubs.
//!
//! ```
//! use demo_proto::helloworld::{HelloReply, HelloRequest, greeter_server::Greeter};
//! use tonic::{Request, Response, Status};
//!
//! struct Hello;
//!
//! #[tonic::async_trait]
//! impl Greeter for Hello {
//!     async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
//!         let message = format!("Hello {}", req.into_inner().name);
//!         Ok(Response::new(HelloReply { message }))
//!     }
//! }
//!
//! let _service = demo_proto::helloworld::greeter_server::GreeterServer::new(Hello);
//! ```

/// Package `helloworld`: `Greeter.SayHello(HelloRequest) -> HelloReply`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod helloworld {
    tonic::include_proto!("helloworld");
}
