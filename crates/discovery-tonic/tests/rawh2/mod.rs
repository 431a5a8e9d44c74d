//! A hostile HTTP/2 client: raw frames over TCP, header blocks written by
//! hand or by `loona-hpack` (never by the crate under test), answers
//! decoded by `loona-hpack`; and the tonic Greeter servers it attacks, with
//! and without the interop shim.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, time::Duration};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Every exchange must end well within this: a hang fails the test.
pub const BOUND: Duration = Duration::from_secs(10);

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    }
}

/// A tonic Greeter on 127.0.0.1:0, behind the shim when `shim`, with
/// tonic's default HTTP/2 limits.
pub async fn greeter(shim: bool) -> SocketAddr {
    greeter_with(shim, None).await
}

/// [`greeter`] with tonic's `http2_max_header_list_size` set, and the
/// shim's [`Limits`](discovery_tonic::interop::Limits) to match.
pub async fn greeter_with(shim: bool, max_header_list_size: Option<u32>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .http2_max_header_list_size(max_header_list_size)
        .add_service(GreeterServer::new(Hello));
    if shim {
        let mut limits = discovery_tonic::interop::Limits::default();
        if let Some(max) = max_header_list_size {
            limits = limits.max_header_list_size(max);
        }
        tokio::spawn(
            router.serve_with_incoming(discovery_tonic::interop::incoming_with(listener, limits)),
        );
    } else {
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    }
    addr
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer (RFC 7541 5.1), written here rather than borrowed from
/// the crate under test.
pub fn int(out: &mut Vec<u8>, mut value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A plain string literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// A literal field with a literal name: `0x40` incremental indexing,
/// `0x00` without indexing.
pub fn literal(out: &mut Vec<u8>, kind: u8, name: &[u8], value: &[u8]) {
    out.push(kind);
    string(out, name);
    string(out, value);
}

/// A Greeter request's header block from `loona-hpack`'s encoder, which
/// indexes every new field the way grpc-go does.
pub fn request_block(encoder: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
    let fields: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/helloworld.Greeter/SayHello"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    encoder.encode(fields)
}

/// A length-prefixed `HelloRequest { name }`.
pub fn hello_request(name: &str) -> Vec<u8> {
    let mut msg = vec![0x0a, name.len() as u8];
    msg.extend_from_slice(name.as_bytes());
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend(msg);
    out
}

/// How the server answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `:status` of the response headers.
    pub status: Option<String>,
    pub grpc_status: Option<String>,
    /// `HelloReply.message`.
    pub message: Option<String>,
    /// RST_STREAM error code on the stream.
    pub reset: Option<u32>,
    /// GOAWAY error code and debug data.
    pub goaway: Option<(u32, String)>,
    /// The connection closed.
    pub closed: bool,
}

impl Outcome {
    /// The answer without details that differ between runs.
    pub fn summary(&self) -> String {
        if let Some((code, debug)) = &self.goaway {
            return format!("GOAWAY {code:#x} {debug:?}");
        }
        let mut s = String::new();
        if let Some(st) = &self.status {
            s += &format!(":status {st} ");
        }
        if let Some(g) = &self.grpc_status {
            s += &format!("grpc-status {g} ");
        }
        if let Some(m) = &self.message {
            s += &format!("{m:?} ");
        }
        if let Some(r) = self.reset {
            s += &format!("RST_STREAM {r:#x} ");
        }
        if self.closed {
            s += "closed";
        }
        s.trim_end().to_string()
    }
}

/// One client connection, speaking HTTP/2 frame by frame.
pub struct Conn {
    pub tcp: TcpStream,
    pub encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects and sends the preface and an empty SETTINGS.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        tcp.write_all(&hello).await.expect("preface");
        Conn {
            tcp,
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
            buf: Vec::new(),
        }
    }

    /// Frees the read buffer's spare room.
    pub fn shrink(&mut self) {
        self.buf.shrink_to_fit();
    }

    /// Writes `bytes`; a server that already closed is not an error here
    /// (the outcome says what it answered).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Sends a Greeter call on `stream` with `block` as its headers.
    pub async fn call(&mut self, stream: u32, block: &[u8]) {
        let mut out = frame(HEADERS, END_HEADERS, stream, block);
        out.extend(frame(DATA, END_STREAM, stream, &hello_request("go")));
        self.send(&out).await;
    }

    /// A well-formed call with this authority, encoded by `loona-hpack`.
    pub async fn good_call(&mut self, stream: u32, authority: &[u8]) {
        let block = request_block(&mut self.encoder, authority);
        self.call(stream, &block).await;
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
            // Into the buffer itself: a chunk array would sit in every
            // waiting connection's future, and the amplification test
            // counts this process's memory, clients included.
            self.buf.reserve(4096);
            match self.tcp.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until `stream` ends, a GOAWAY, or the connection closes;
    /// fails the test after [`BOUND`].
    pub async fn outcome(&mut self, stream: u32) -> Outcome {
        tokio::time::timeout(BOUND, self.outcome_inner(stream))
            .await
            .unwrap_or_else(|_| panic!("stream {stream}: no answer within {BOUND:?}"))
    }

    async fn outcome_inner(&mut self, stream: u32) -> Outcome {
        let mut out = Outcome::default();
        let mut data = Vec::new();
        loop {
            let Some((kind, flags, id, payload)) = self.read_frame().await else {
                out.closed = true;
                return out;
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                GOAWAY => {
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                    out.goaway = Some((code, debug));
                    return out;
                }
                HEADERS if id == stream => {
                    assert_ne!(flags & END_HEADERS, 0, "test server splits no headers");
                    let mut fields = Vec::new();
                    self.decoder
                        .decode_with_cb(&payload, |n, v| {
                            fields.push((n.into_owned(), v.into_owned()));
                        })
                        .expect("the server's HPACK");
                    for (n, v) in fields {
                        let v = String::from_utf8(v).unwrap();
                        match &n[..] {
                            b":status" => out.status = Some(v),
                            b"grpc-status" => out.grpc_status = Some(v),
                            _ => {}
                        }
                    }
                    if flags & END_STREAM != 0 {
                        return out;
                    }
                }
                HEADERS => {
                    // Another stream's answer: keep the HPACK state in step.
                    self.decoder.decode_with_cb(&payload, |_, _| {}).unwrap();
                }
                DATA if id == stream => {
                    data.extend_from_slice(&payload);
                    if data.len() >= 7 {
                        let len = usize::from(data[6]);
                        out.message = Some(String::from_utf8_lossy(&data[7..7 + len]).into_owned());
                    }
                    if flags & END_STREAM != 0 {
                        return out;
                    }
                }
                RST_STREAM if id == stream => {
                    out.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    return out;
                }
                _ => {}
            }
        }
    }
}
