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
//! as sent, so h2 still refuses them.
//!
//! Decoding first makes the shim the first code to meet a hostile client,
//! so it applies h2's limits itself (frame size, CONTINUATION count, header
//! list size and its abuse limit), decodes one block per read of h2, and
//! holds a bounded number of bytes per connection ([`Limits`],
//! [`Rewriter`]). See `docs/grpc-interop.md`.
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
mod rewriter;

use std::{
    fmt, io,
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

pub use rewriter::{Limits, Rewriter};

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
/// with the default [`Limits`] (those of a tonic server left at its
/// defaults) and with `TCP_NODELAY` set, for tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<LenientAuthority<TcpStream>>> + Send + 'static {
    incoming_with(listener, Limits::default())
}

/// [`incoming`] for a server whose header list or frame size limits were
/// changed: `limits` must match them.
pub fn incoming_with(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<LenientAuthority<TcpStream>>> + Send + 'static {
    TcpListenerStream::new(listener).map(move |conn| {
        conn.map(|tcp| {
            // Small gRPC frames must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            LenientAuthority::with_limits(tcp, limits)
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
pub struct LenientAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader.
    ready: BytesMut,
    eof: bool,
}

/// Sizes only: the rewriter holds header values.
impl<IO> fmt::Debug for LenientAuthority<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LenientAuthority")
            .field("rewriter", &self.rewriter)
            .field("ready_len", &self.ready.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<IO> LenientAuthority<IO> {
    /// Wraps the server side of a connection to a server with the default
    /// [`Limits`].
    pub fn new(io: IO) -> Self {
        Self::with_limits(io, Limits::default())
    }

    /// Wraps the server side of a connection to a server with `limits`.
    pub fn with_limits(io: IO, limits: Limits) -> Self {
        LenientAuthority {
            io,
            rewriter: Rewriter::new(limits),
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
            // Whatever is buffered first: the socket is read only when the
            // rewriter cannot go on without more bytes, so a client that
            // sends many blocks at once is decoded one block per read of h2.
            if this.rewriter.pull(&mut this.ready) {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; rewriter::READ_CHUNK];
            // The rest of a DATA frame goes to h2 without passing through
            // the rewriter's buffer.
            let direct = this.rewriter.direct_read_limit().min(buf.remaining());
            let limit = if direct > 0 { direct } else { chunk.len() };
            let mut raw = ReadBuf::new(&mut chunk[..limit.min(rewriter::READ_CHUNK)]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            let filled = raw.filled();
            if filled.is_empty() {
                this.eof = true;
                continue;
            }
            if direct > 0 {
                buf.put_slice(filled);
                this.rewriter.read_directly(filled.len());
                return Poll::Ready(Ok(()));
            }
            this.rewriter.push(filled);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
