//! Serving gRPC-Go and kratos callers: a connection wrapper that makes
//! `:authority` values such as `demo.service?subset=50` acceptable to h2.
//!
//! A kratos warden client dials `discovery://default/<appid>?subset=50`, and
//! grpc-go sends the target's endpoint, query included, as `:authority`. h2
//! (the HTTP/2 layer under hyper and tonic) refuses any `:authority` that is
//! not a URI authority and resets the stream with `PROTOCOL_ERROR` before
//! tonic sees the request; it has no option to relax this. [`LenientAuthority`]
//! sits between the socket and h2: it decodes each request header block with
//! the caller's HPACK state, cuts such an authority at its first `?`, `#` or
//! `/` when what remains is a valid authority, and hands h2 the block
//! re-encoded as plain literals. Every other byte passes through unchanged,
//! and authorities that stay invalid (control characters, spaces) reach h2
//! as sent, so h2 still refuses them. See `docs/grpc-interop.md`.
//!
//! ```no_run
//! # use demo_proto::helloworld::greeter_server::{Greeter, GreeterServer};
//! # async fn serve<G: Greeter>(greeter: G) -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! tonic::transport::Server::builder()
//!     .add_service(GreeterServer::new(greeter))
//!     .serve_with_incoming(discovery_tonic::interop::incoming(listener))
//!     .await?;
//! # Ok(()) }
//! ```

pub mod hpack;
mod huffman_table;

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::TcpListenerStream};
use tonic::transport::server::Connected;

use hpack::{Decoder, encode_literal};

/// The 24 bytes every HTTP/2 client sends first, before its SETTINGS.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer accepts (`SETTINGS_MAX_FRAME_SIZE`
/// can only be raised from here), so re-encoded frames never exceed it.
const SAFE_FRAME_SIZE: usize = 16_384;
/// The HPACK table size h2 advertises (the protocol default: neither hyper
/// nor tonic changes it), which bounds the caller's table.
const HEADER_TABLE_SIZE: usize = 4096;
/// Bound on one header block as received (all its frames) and decoded.
/// Far above hyper's 16 KiB header list limit, so h2 still answers lists
/// between the two with its own 431; past it h2 is handed an undecodable
/// block and refuses the connection (GOAWAY `PROTOCOL_ERROR`).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// `value` as an authority h2 accepts: `None` when it already is one or
/// cannot be made one, else the part before the first `?`, `#` or `/`.
///
/// ```
/// use discovery_tonic::interop::lenient_authority;
///
/// assert_eq!(lenient_authority(b"demo.service?subset=50").as_deref(), Some(&b"demo.service"[..]));
/// assert_eq!(lenient_authority(b"demo.service"), None);
/// assert_eq!(lenient_authority(b"bad\x01host?subset=50"), None);
/// ```
pub fn lenient_authority(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let cut = value.iter().position(|b| matches!(b, b'?' | b'#' | b'/'))?;
    let head = &value[..cut];
    (!head.is_empty() && http::uri::Authority::try_from(head).is_ok()).then(|| head.to_vec())
}

/// Accepted connections of `listener`, each wrapped in [`LenientAuthority`]
/// and with `TCP_NODELAY` set, for tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<LenientAuthority<TcpStream>>> + Send + 'static {
    TcpListenerStream::new(listener).map(|conn| {
        conn.map(|tcp| {
            // Small gRPC frames must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            LenientAuthority::new(tcp)
        })
    })
}

/// As [`incoming`], over TLS: each accepted connection goes through the
/// handshake of `acceptor` (within `handshake_timeout`, concurrently with
/// the others) and is then wrapped in [`LenientAuthority`], which so reads
/// the decrypted HTTP/2 stream. Failed handshakes are logged at debug
/// level and dropped. The accept task ends when the stream is dropped.
pub fn incoming_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: std::time::Duration,
) -> impl Stream<Item = io::Result<LenientAuthority<tokio_rustls::server::TlsStream<TcpStream>>>>
+ Send
+ 'static {
    // Handshakes finished but not yet taken by the server wait here.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(LenientAuthority::new(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A server-side connection whose incoming HTTP/2 request headers are
/// normalised by [`lenient_authority`]; writes pass straight through.
#[derive(Debug)]
pub struct LenientAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader.
    ready: BytesMut,
    eof: bool,
}

impl<IO> LenientAuthority<IO> {
    /// Wraps the server side of a connection.
    pub fn new(io: IO) -> Self {
        LenientAuthority {
            io,
            rewriter: Rewriter::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: Connected> Connected for LenientAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LenientAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut raw = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.rewriter.feed(raw.filled(), &mut this.ready);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the client preface.
    Preface,
    /// Between or inside frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Raw,
    /// A protocol or compression error was handed to h2, which closes the
    /// connection; later input is dropped.
    Failed,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The byte-level rewriter of the client-to-server direction.
#[derive(Debug)]
struct Rewriter {
    state: State,
    buf: BytesMut,
    /// Payload bytes of a pass-through frame still to copy.
    passthrough: usize,
    block: Option<Block>,
    decoder: Decoder,
}

impl Rewriter {
    fn new() -> Self {
        Rewriter {
            state: State::Preface,
            buf: BytesMut::new(),
            passthrough: 0,
            block: None,
            decoder: Decoder::new(HEADER_TABLE_SIZE).with_max_list_size(MAX_HEADER_BLOCK),
        }
    }

    /// Consumes `input`, appending to `out` whatever h2 may see now.
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) {
        self.buf.extend_from_slice(input);
        loop {
            match self.state {
                State::Failed => {
                    self.buf.clear();
                    return;
                }
                State::Raw => {
                    out.extend_from_slice(&self.buf.split());
                    return;
                }
                State::Preface => {
                    let n = self.buf.len().min(PREFACE.len());
                    if self.buf[..n] != PREFACE[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    out.extend_from_slice(&self.buf.split_to(n));
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.passthrough > 0 {
                        if self.buf.is_empty() {
                            return;
                        }
                        let n = self.passthrough.min(self.buf.len());
                        out.extend_from_slice(&self.buf.split_to(n));
                        self.passthrough -= n;
                        continue;
                    }
                    if !self.frame(out) {
                        return;
                    }
                }
            }
        }
    }

    /// Handles the frame at the start of `buf`; `false` when more input is
    /// needed first.
    fn frame(&mut self, out: &mut BytesMut) -> bool {
        if self.buf.len() < FRAME_HEADER_LEN {
            return false;
        }
        let len = usize::from(self.buf[0]) << 16
            | usize::from(self.buf[1]) << 8
            | usize::from(self.buf[2]);
        let kind = self.buf[3];
        let flags = self.buf[4];
        let stream_id: [u8; 4] = [self.buf[5], self.buf[6], self.buf[7], self.buf[8]];
        let pending = self.block.as_ref().map(|b| b.stream_id);
        let is_header_frame = kind == HEADERS || (kind == CONTINUATION && pending.is_some());
        if !is_header_frame {
            if let Some(id) = pending {
                // Anything but CONTINUATION inside a header block: let h2
                // see exactly that and fail the connection.
                self.fail(out, id, false);
                return true;
            }
            out.extend_from_slice(&self.buf.split_to(FRAME_HEADER_LEN));
            self.passthrough = len;
            return true;
        }
        let collected = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if collected + len > MAX_HEADER_BLOCK
            || (kind == CONTINUATION && pending != Some(stream_id))
        {
            self.fail(out, pending.unwrap_or(stream_id), true);
            return true;
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return false;
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let payload = self.buf.split_to(len);
        if kind == HEADERS {
            if pending.is_some() {
                self.fail(out, stream_id, false);
                return true;
            }
            let Some((priority, fragment)) = split_headers_payload(&payload, flags) else {
                self.fail(out, stream_id, true);
                return true;
            };
            self.block = Some(Block {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else if let Some(block) = self.block.as_mut() {
            block.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(out, block);
            }
        }
        true
    }

    /// Decodes a complete block and emits it re-encoded.
    fn finish(&mut self, out: &mut BytesMut, block: Block) {
        let fields = match self.decoder.decode(&block.fragment) {
            Ok(fields) => fields,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable header block; h2 refuses the connection");
                self.fail(out, block.stream_id, true);
                return;
            }
        };
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for f in &fields {
            let value = if f.name == b":authority" {
                match lenient_authority(&f.value) {
                    Some(v) => {
                        tracing::trace!(
                            authority = %String::from_utf8_lossy(&f.value),
                            "accepting non-URI :authority"
                        );
                        std::borrow::Cow::Owned(v)
                    }
                    None => std::borrow::Cow::Borrowed(&f.value[..]),
                }
            } else {
                std::borrow::Cow::Borrowed(&f.value[..])
            };
            encode_literal(&mut encoded, &f.name, &value, f.never_indexed);
        }
        emit_block(out, &block, &encoded);
    }

    /// Hands h2 a frame sequence it must refuse as a connection error
    /// (an invalid HPACK index, or a header block cut short), then drops all
    /// further input: h2 answers with GOAWAY `PROTOCOL_ERROR` and closes.
    fn fail(&mut self, out: &mut BytesMut, stream_id: [u8; 4], compression: bool) {
        let (flags, payload): (u8, &[u8]) = if compression {
            (END_HEADERS, &[0x80])
        } else {
            (0, &[])
        };
        write_frame_header(out, payload.len(), HEADERS, flags, stream_id);
        out.extend_from_slice(payload);
        if !compression {
            // A PING where h2 expects CONTINUATION: PROTOCOL_ERROR.
            write_frame_header(out, 8, 0x6, 0, [0; 4]);
            out.extend_from_slice(&[0; 8]);
        }
        self.block = None;
        self.state = State::Failed;
        self.buf.clear();
    }
}

/// The priority fields and header block fragment of a HEADERS payload,
/// padding removed; `None` when the padding does not fit.
fn split_headers_payload(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if p.len() < 5 {
            return None;
        }
        priority = Some([p[0], p[1], p[2], p[3], p[4]]);
        p = &p[5..];
    }
    if pad > p.len() {
        return None;
    }
    Some((priority, &p[..p.len() - pad]))
}

fn write_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream_id);
}

/// Writes `encoded` as one HEADERS frame and as many CONTINUATION frames as
/// needed, each within [`SAFE_FRAME_SIZE`].
fn emit_block(out: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first = encoded.len().min(SAFE_FRAME_SIZE - prio_len);
    let (head, mut rest) = encoded.split_at(first);
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    write_frame_header(out, prio_len + head.len(), HEADERS, flags, block.stream_id);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(SAFE_FRAME_SIZE);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame_header(out, n, CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpack::{encode_int, encode_str};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame_header(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Splits `bytes` (after the preface) into frames.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut b = bytes;
        while b.len() >= 9 {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], id, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        assert!(b.is_empty(), "trailing partial frame");
        v
    }

    /// A grpc-go style block: incremental indexing and Huffman values.
    fn go_block(authority: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.push(0x83); // :method POST
        b.push(0x86); // :scheme http
        encode_int(&mut b, 4, 6, 0x40); // :path, indexed
        encode_str(&mut b, b"/helloworld.Greeter/SayHello", true);
        encode_int(&mut b, 1, 6, 0x40); // :authority, indexed
        encode_str(&mut b, authority, true);
        encode_int(&mut b, 31, 6, 0x40);
        encode_str(&mut b, b"application/grpc", true);
        b
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = Rewriter::new();
        let mut out = BytesMut::new();
        for c in input.chunks(chunk.max(1)) {
            r.feed(c, &mut out);
        }
        out.to_vec()
    }

    #[test]
    fn query_authority_is_cut_and_table_stays_in_step() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &go_block(b"demo.service?subset=50"),
        ));
        // Second request: every field from the caller's dynamic table.
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0xc0, 0xbf, 0xbe],
        ));
        input.extend(frame(0x0, END_STREAM, 1, b"payload"));
        for chunk in [1, 7, 4096] {
            let out = run(&input, chunk);
            assert_eq!(&out[..PREFACE.len()], PREFACE);
            let fs = frames(&out[PREFACE.len()..]);
            assert_eq!(fs.len(), 4);
            assert_eq!(fs[0].0, 0x4);
            let mut server = Decoder::new(4096);
            for (i, id) in [(1, 1), (2, 3)] {
                assert_eq!((fs[i].0, fs[i].2), (HEADERS, id));
                let fields = server.decode(&fs[i].3).unwrap();
                let get = |n: &[u8]| fields.iter().find(|f| f.name == n).unwrap().value.clone();
                assert_eq!(get(b":authority"), b"demo.service");
                assert_eq!(get(b":path"), b"/helloworld.Greeter/SayHello");
                assert_eq!(get(b"content-type"), b"application/grpc");
            }
            assert_eq!(fs[2].1, END_HEADERS | END_STREAM);
            assert_eq!(server.table_size(), 0, "re-encoded blocks never index");
            assert_eq!(fs[3], (0x0, END_STREAM, 1, b"payload".to_vec()));
        }
    }

    #[test]
    fn padding_priority_and_continuation_are_handled() {
        let block = go_block(b"demo.service?subset=50");
        let (a, b) = block.split_at(10);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 0, 15]); // exclusive dep on 0, weight 16
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let fs = frames(&run(&input, 5)[PREFACE.len()..]);
        assert_eq!(fs.len(), 1);
        let (kind, flags, id, p) = &fs[0];
        assert_eq!((*kind, *flags, *id), (HEADERS, PRIORITY | END_HEADERS, 1));
        assert_eq!(&p[..5], &[0x80, 0, 0, 0, 15]);
        let fields = Decoder::new(4096).decode(&p[5..]).unwrap();
        assert_eq!(fields[3].value, b"demo.service");
    }

    #[test]
    fn large_blocks_are_split_into_safe_frames() {
        let mut block = go_block(b"demo.service");
        encode_literal(&mut block, b"x-big", &vec![b'v'; 40_000], false);
        let mut input = PREFACE.to_vec();
        // The caller may use frames up to our 16 KiB limit.
        for (i, chunk) in block.chunks(16_000).enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let last = (i + 1) * 16_000 >= block.len();
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let fs = frames(&run(&input, 10_000)[PREFACE.len()..]);
        assert!(fs.len() >= 3);
        assert!(fs.iter().all(|f| f.3.len() <= SAFE_FRAME_SIZE));
        assert_eq!(fs.last().unwrap().1, END_HEADERS);
        let all: Vec<u8> = fs.iter().flat_map(|f| f.3.clone()).collect();
        let fields = Decoder::new(4096).decode(&all).unwrap();
        assert_eq!(fields[3].value, b"demo.service");
        assert_eq!(fields[5].value.len(), 40_000);
    }

    #[test]
    fn invalid_authorities_pass_unchanged() {
        for bad in [&b"demo\x01.service?subset=50"[..], b"?subset=50", b"a b"] {
            assert_eq!(lenient_authority(bad), None, "{bad:?}");
        }
        assert_eq!(
            lenient_authority(b"host:80/x").as_deref(),
            Some(&b"host:80"[..])
        );
        assert_eq!(lenient_authority(b"svc#frag").as_deref(), Some(&b"svc"[..]));
    }

    #[test]
    fn undecodable_or_oversized_blocks_fail_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ));
        input.extend(frame(0x0, 0, 1, b"dropped"));
        let fs = frames(&run(&input, 3)[PREFACE.len()..]);
        assert_eq!(fs, vec![(HEADERS, END_HEADERS, 1, vec![0x80])]);

        // A block that keeps growing past the bound.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82; 16_000]));
        for _ in 0..20 {
            input.extend(frame(CONTINUATION, 0, 1, &[0x82; 16_000]));
        }
        let fs = frames(&run(&input, 16_384)[PREFACE.len()..]);
        assert_eq!(fs, vec![(HEADERS, END_HEADERS, 1, vec![0x80])]);

        // A DATA frame inside a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        let fs = frames(&run(&input, 64)[PREFACE.len()..]);
        assert_eq!(fs[0], (HEADERS, 0, 1, vec![]));
        assert_eq!(fs[1].0, 0x6);
    }

    #[test]
    fn non_http2_input_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(input, 2), input);
    }
}
