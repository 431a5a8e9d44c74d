//! The `demo-server` binary called the way a kratos warden client on
//! grpc-go 1.29 calls it: HTTP/2 frames written by hand, header blocks
//! encoded as Go's HPACK encoder does (incremental indexing, Huffman, later
//! requests from the dynamic table), and `:authority: demo.service?subset=50`.
//! Malformed authorities are refused promptly, never left hanging.
//!
//! Then the same call from grpc-go itself: the Go client of
//! `interop/go/greeter` ([`testkit::grpc_go`]), built against Debian's
//! grpc-go 1.33, with the same authority. Its frames are Go's own, so a bug
//! this file's hand-written frames share with the server cannot hide there.

use std::{net::SocketAddr, time::Duration};

use discovery_tonic::interop::hpack::{Decoder, encode_int, encode_str};
use testkit::{Layout, Process, Topology};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_demo-server");
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// Every exchange must end well within this: a hang fails the test.
const BOUND: Duration = Duration::from_secs(10);

/// A demo-server registered with a one-node topology.
async fn demo_server(name: &str) -> (Topology, Process) {
    demo_server_with(name, &[]).await
}

/// The same with extra arguments (`--tls-cert`, `--tls-key`).
async fn demo_server_with(name: &str, args: &[&str]) -> (Topology, Process) {
    let topo = Topology::start(&Layout::zones(&[("zone01", 1)])).await;
    topo.wait_ready().await;
    let mut cmd = Command::new(BIN);
    for var in naming::env::IDENTITY {
        cmd.env_remove(var);
    }
    cmd.args(["--grpc-addr", "127.0.0.1:0"])
        .args(args)
        .env(naming::env::NODES, topo.addr(0).to_string())
        .env(naming::env::HOSTNAME, name);
    let server = Process::spawn_ready_file(cmd, name)
        .await
        .expect("demo-server starts");
    (topo, server)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal with incremental indexing and an indexed name, the value
/// Huffman-coded when shorter: what Go's `hpack.Encoder` writes for a field
/// whose name is in the static table.
fn indexed_name(block: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    encode_int(block, name_index, 6, 0x40);
    let huffman = discovery_tonic::interop::hpack::huffman_encode(value).len() < value.len();
    encode_str(block, value, huffman);
}

/// The same with a literal name.
fn new_name(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x40);
    encode_str(block, name, true);
    let huffman = discovery_tonic::interop::hpack::huffman_encode(value).len() < value.len();
    encode_str(block, value, huffman);
}

/// The first request's header block, in grpc-go 1.29's order and with its
/// values (`createHeaderFields` in its http2 client).
fn first_block(authority: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(0x83); // :method: POST (static 3)
    b.push(0x86); // :scheme: http (static 6)
    indexed_name(&mut b, 4, b"/helloworld.Greeter/SayHello"); // → 66 after all inserts
    indexed_name(&mut b, 1, authority); // → 65
    indexed_name(&mut b, 31, b"application/grpc"); // content-type → 64
    indexed_name(&mut b, 58, b"grpc-go/1.29.1"); // user-agent → 63
    new_name(&mut b, b"te", b"trailers"); // → 62
    new_name(&mut b, b"grpc-timeout", b"999870u"); // → newest
    b
}

/// A later request on the same connection: the repeated fields come from
/// the dynamic table (grpc-timeout, inserted last, is index 62).
fn later_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    // After `first_block`: 62 grpc-timeout, 63 te, 64 user-agent,
    // 65 content-type, 66 :authority, 67 :path.
    for index in [67usize, 66, 65, 64, 63] {
        encode_int(&mut b, index, 7, 0x80);
    }
    // A fresh timeout value with the indexed name.
    encode_int(&mut b, 62, 6, 0x40);
    encode_str(&mut b, b"999512u", true);
    b
}

/// A length-prefixed `HelloRequest { name }`.
fn hello_request(name: &str) -> Vec<u8> {
    let mut msg = vec![0x0a, name.len() as u8];
    msg.extend_from_slice(name.as_bytes());
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend(msg);
    out
}

/// `HelloReply.message` from a length-prefixed gRPC message.
fn hello_reply(data: &[u8]) -> String {
    assert!(data.len() >= 5, "short gRPC message: {data:?}");
    let msg = &data[5..];
    assert_eq!(msg[0], 0x0a, "HelloReply field 1");
    let len = usize::from(msg[1]);
    String::from_utf8(msg[2..2 + len].to_vec()).expect("UTF-8 message")
}

/// How one stream ended.
#[derive(Debug, Default)]
struct Outcome {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    trailers: Vec<(String, String)>,
    reset: Option<u32>,
    goaway: Option<u32>,
    closed: bool,
}

impl Outcome {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .chain(&self.trailers)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One client connection, speaking HTTP/2 frame by frame.
struct Conn {
    tcp: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects and sends what grpc-go sends first: the preface, its
    /// SETTINGS and a connection WINDOW_UPDATE.
    async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(WINDOW_UPDATE, 0, 0, &983_041u32.to_be_bytes()));
        tcp.write_all(&hello).await.expect("preface");
        Conn {
            tcp,
            decoder: Decoder::new(4096),
            buf: Vec::new(),
        }
    }

    /// Sends one unary call's HEADERS and DATA.
    async fn call(&mut self, stream: u32, block: &[u8], name: &str) {
        let mut out = frame(HEADERS, END_HEADERS, stream, block);
        out.extend(frame(DATA, END_STREAM, stream, &hello_request(name)));
        self.tcp.write_all(&out).await.expect("write call");
    }

    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let id = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], id, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16_384];
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `stream` ends (END_STREAM or RST_STREAM) or the
    /// connection does; fails the test after [`BOUND`].
    async fn outcome(&mut self, stream: u32) -> Outcome {
        tokio::time::timeout(BOUND, self.outcome_inner(stream))
            .await
            .unwrap_or_else(|_| panic!("stream {stream}: no answer within {BOUND:?}"))
    }

    async fn outcome_inner(&mut self, stream: u32) -> Outcome {
        let mut o = Outcome::default();
        let mut block: Vec<u8> = Vec::new();
        loop {
            let Some((kind, flags, id, payload)) = self.read_frame().await else {
                o.closed = true;
                return o;
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let ack = frame(SETTINGS, ACK, 0, &[]);
                    self.tcp.write_all(&ack).await.expect("settings ack");
                }
                PING if flags & ACK == 0 => {
                    let pong = frame(PING, ACK, 0, &payload);
                    self.tcp.write_all(&pong).await.expect("ping ack");
                }
                GOAWAY => {
                    o.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                RST_STREAM if id == stream => {
                    o.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    return o;
                }
                HEADERS | CONTINUATION => {
                    block.extend_from_slice(&payload);
                    if flags & END_HEADERS == 0 {
                        continue;
                    }
                    let fields = self.decoder.decode(&block).expect("server's HPACK");
                    block.clear();
                    let fields = fields.into_iter().map(|f| {
                        (
                            String::from_utf8_lossy(&f.name).into_owned(),
                            String::from_utf8_lossy(&f.value).into_owned(),
                        )
                    });
                    if id == stream {
                        if o.headers.is_empty() {
                            o.headers.extend(fields);
                        } else {
                            o.trailers.extend(fields);
                        }
                        if flags & END_STREAM != 0 {
                            return o;
                        }
                    }
                }
                DATA if id == stream => {
                    o.data.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return o;
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_authority_with_query_is_served() {
    let (topo, server) = demo_server("demo-server-go1").await;
    let mut conn = Conn::open(server.addr).await;

    conn.call(1, &first_block(b"demo.service?subset=50"), "kratos")
        .await;
    let first = conn.outcome(1).await;
    assert_eq!(first.reset, None, "{first:?}");
    assert_eq!(first.header(":status"), Some("200"), "{first:?}");
    assert_eq!(first.header("content-type"), Some("application/grpc"));
    assert_eq!(first.header("grpc-status"), Some("0"), "{first:?}");
    assert_eq!(first.header("x-served-by"), Some("demo-server-go1"));
    assert_eq!(hello_reply(&first.data), "Hello kratos");

    // The same connection, fields from the caller's dynamic table.
    conn.call(3, &later_block(), "again").await;
    let second = conn.outcome(3).await;
    assert_eq!(second.header("grpc-status"), Some("0"), "{second:?}");
    assert_eq!(hello_reply(&second.data), "Hello again");

    drop(server);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorities_are_refused_not_hung() {
    let (topo, server) = demo_server("demo-server-go2").await;
    let mut conn = Conn::open(server.addr).await;

    // A control character: h2 resets the stream, the connection lives on.
    conn.call(1, &first_block(b"demo\x01.service?subset=50"), "x")
        .await;
    let ctl = conn.outcome(1).await;
    assert_eq!(ctl.reset, Some(0x1), "PROTOCOL_ERROR expected: {ctl:?}");
    assert!(ctl.data.is_empty());

    // A space, in a block that shares the table with the one above.
    conn.call(3, &first_block(b"demo service?subset=50"), "x")
        .await;
    let space = conn.outcome(3).await;
    assert_eq!(space.reset, Some(0x1), "{space:?}");

    // Oversized (20 KB, above the 16 KiB header list limit): 431.
    let mut big = vec![b'a'; 20_000];
    big.extend_from_slice(b"?subset=50");
    let mut block = vec![0x83, 0x86];
    indexed_name(&mut block, 4, b"/helloworld.Greeter/SayHello");
    block.push(0x01); // :authority, literal without indexing
    encode_str(&mut block, &big, false);
    let mut out = Vec::new();
    for (i, chunk) in block.chunks(16_000).enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let last = (i + 1) * 16_000 >= block.len();
        out.extend(frame(kind, if last { END_HEADERS } else { 0 }, 5, chunk));
    }
    conn.tcp.write_all(&out).await.expect("write");
    let big = conn.outcome(5).await;
    assert!(
        big.header(":status") == Some("431") || big.reset.is_some(),
        "oversized authority not refused: {big:?}"
    );
    assert!(big.data.is_empty());

    // Each refusal was per stream: a well-formed call still succeeds.
    conn.call(7, &first_block(b"demo.service?subset=50"), "after")
        .await;
    let ok = conn.outcome(7).await;
    assert_eq!(hello_reply(&ok.data), "Hello after", "{ok:?}");

    // Past what the server decodes at all (300 KB): the connection is
    // refused with GOAWAY, or closed.
    let mut huge = vec![0x83, 0x86];
    huge.push(0x01);
    encode_str(&mut huge, &vec![b'a'; 300_000], false);
    let mut out = Vec::new();
    for (i, chunk) in huge.chunks(16_000).enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let last = (i + 1) * 16_000 >= huge.len();
        out.extend(frame(kind, if last { END_HEADERS } else { 0 }, 9, chunk));
    }
    // The server may close before reading all of it.
    let _ = conn.tcp.write_all(&out).await;
    let huge = conn.outcome(9).await;
    assert!(
        huge.goaway.is_some() || huge.closed || huge.reset.is_some(),
        "{huge:?}"
    );
    assert!(huge.data.is_empty());

    drop(server);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_grpc_go_client_with_warden_authority_is_served() {
    let go =
        testkit::grpc_go::GoGreeter::build(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let (topo, server) = demo_server("demo-server-go3").await;

    // Three calls on one connection: the later ones reuse grpc-go's HPACK
    // dynamic table, authority included.
    let replies = go.call(server.addr, "go", 3).await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    for reply in &replies {
        assert_eq!(reply.message, "Hello go", "{replies:?}");
        assert_eq!(reply.served_by, "demo-server-go3", "{replies:?}");
    }

    drop(server);
    topo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_grpc_go_client_calls_the_tls_demo_server_with_warden_authority() {
    let go =
        testkit::grpc_go::GoGreeter::build(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
    let ca = testkit::tls::TestCa::temp("go-tls");
    let id = ca.issue("demo-server", &["127.0.0.1"]);
    let (cert, key) = (id.cert.display().to_string(), id.key.display().to_string());
    let (topo, server) = demo_server_with(
        "demo-server-go-tls",
        &["--tls-cert", &cert, "--tls-key", &key],
    )
    .await;

    // grpc-go's own TLS and HPACK, the warden authority inside: the shim
    // must read the decrypted stream for these to be served.
    let replies = go.call_tls(server.addr, &ca.ca_path(), "go", 3).await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    for reply in &replies {
        assert_eq!(reply.message, "Hello go", "{replies:?}");
        assert_eq!(reply.served_by, "demo-server-go-tls", "{replies:?}");
    }
    // The registered address says TLS (the server registers once it
    // serves, so this may take a moment).
    let want = format!("grpcs://{}", server.addr);
    let base = format!("http://{}", topo.addr(0));
    testkit::wait_until(BOUND, "grpcs:// registered", async || {
        testkit::http::try_get_json(
            &base,
            "/discovery/fetch?env=dev&appid=demo.service&status=1",
        )
        .await
        .is_some_and(|v| v["data"].to_string().contains(&want))
    })
    .await;

    drop(server);
    topo.shutdown().await;
}
