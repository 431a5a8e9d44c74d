//! gRPC over TLS: an instance registered as `grpcs://` is dialled with
//! the CA of `ClientConfig`, a client without one skips it, and
//! `interop::incoming_tls` hands the authority shim the decrypted stream,
//! so a grpc-go-shaped request with a warden authority
//! (`demo.service?subset=50`) is served over TLS.

mod support;

use std::{sync::Arc, time::Duration};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_client::GreeterClient,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_tonic::{Balanced, ClientConfig};
use naming::{InstancesInfo, Resolution};
use rustls::pki_types::pem::PemObject;
use support::{ep, fake, found, hello, wait_ready};
use testkit::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status};

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    }
}

/// A Greeter serving TLS with a certificate of `ca`, behind the interop
/// shim.
async fn tls_greeter(ca: &TestCa) -> std::net::SocketAddr {
    let id = ca.issue("greeter", &["127.0.0.1"]);
    let tls = discovery_tonic::tls::server_config(&id.cert, &id.key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Hello))
            .serve_with_incoming(discovery_tonic::interop::incoming_tls(
                listener,
                tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                Duration::from_secs(5),
            )),
    );
    addr
}

/// `found(eps)` with every address written `grpcs://`.
fn secure(addr: std::net::SocketAddr) -> Resolution {
    let Resolution::Found(info) = found(&[ep(addr)]) else {
        unreachable!("found() builds Found")
    };
    let mut info = InstancesInfo::clone(&info);
    for list in info.instances.values_mut() {
        for ins in list {
            ins.addrs = vec![format!("grpcs://{addr}")];
        }
    }
    Resolution::Found(Arc::new(info))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_endpoints_are_dialled_with_the_ca() {
    let ca = TestCa::temp("grpcs");
    let addr = tls_greeter(&ca).await;
    let (resolver, _tx) = fake(secure(addr));
    let config = ClientConfig::default()
        .timeout(Duration::from_secs(2))
        .ca(ca.ca_path());
    let channel = Balanced::new(resolver, &config).unwrap();
    wait_ready(&channel, 1).await;
    let reply = GreeterClient::new(channel)
        .say_hello(hello())
        .await
        .expect("call over TLS");
    assert_eq!(reply.into_inner().message, "Hello kratos");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_endpoints_need_a_trusted_ca() {
    let ca = TestCa::temp("grpcs-untrusted");
    let addr = tls_greeter(&ca).await;

    // No CA: the endpoint is skipped, never dialled in clear.
    let (resolver, _tx) = fake(secure(addr));
    let config = ClientConfig::default()
        .dial(Duration::from_millis(500))
        .timeout(Duration::from_secs(1));
    let channel = Balanced::new(resolver, &config).unwrap();
    assert!(channel.connect().await.is_err());

    // Another authority: the handshake fails, so nothing connects.
    let other = TestCa::temp("grpcs-other");
    let (resolver, _tx) = fake(secure(addr));
    let channel = Balanced::new(resolver, &config.clone().ca(other.ca_path())).unwrap();
    assert!(channel.connect().await.is_err());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK field "literal without indexing, new name", no Huffman.
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend(name);
    block.push(value.len() as u8);
    block.extend(value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warden_authority_is_served_over_tls() {
    let ca = TestCa::temp("grpcs-warden");
    let addr = tls_greeter(&ca).await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca.ca_path()).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut io = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("handshake");

    // What grpc-go sends for `discovery://default/demo.service?subset=50`:
    // the query stays in `:authority`, which h2 alone refuses.
    let mut block = Vec::new();
    block.push(0x83); // :method POST
    block.push(0x86); // :scheme http
    literal(&mut block, b":path", b"/helloworld.Greeter/SayHello");
    literal(&mut block, b":authority", b"demo.service?subset=50");
    literal(&mut block, b"content-type", b"application/grpc");
    literal(&mut block, b"te", b"trailers");
    // HelloRequest { name: "kratos" }, length-prefixed.
    let mut message = vec![0, 0, 0, 0, 8, 0x0a, 6];
    message.extend(b"kratos");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &message)); // DATA, END_STREAM
    io.write_all(&out).await.unwrap();

    // Read frames until the answer's DATA arrives (or the stream is reset).
    let mut buf: Vec<u8> = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed: {buf:?}");
            buf.extend(&chunk[..n]);
            let mut b = &buf[..];
            while b.len() >= 9 {
                let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
                if b.len() < 9 + len {
                    break;
                }
                let (kind, payload) = (b[3], &b[9..9 + len]);
                assert_ne!(kind, 0x3, "stream reset: the authority was refused");
                assert_ne!(kind, 0x7, "GOAWAY");
                if kind == 0x0 && payload.windows(12).any(|w| w == b"Hello kratos") {
                    return;
                }
                b = &b[9 + len..];
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer within 10 s");
}
