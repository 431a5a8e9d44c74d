//! Serving client connections with bounds on how many, how slow and how
//! idle they may be.
//!
//! `axum::serve` exposes neither hyper's header read timeout nor the socket
//! once a connection ends, so connections are served here with hyper's
//! HTTP/1 builder directly:
//!
//! * at most `limits.max_connections` are open; more are answered `503` and
//!   closed at once, before any per-connection state exists;
//! * a request head must arrive within the read deadline, and an idle
//!   keep-alive connection is closed after it (hyper's header read timer);
//! * a request body must arrive within the read deadline after its head
//!   ([`TimedBody`]); a late body fails the read, answered `-400`;
//! * at most `limits.max_connections_per_ip` come from one IP address, so
//!   that one host cannot take every slot;
//! * writing an answer must make progress within the write deadline: a
//!   client that stops reading (a large `fetch/all` it never reads) is
//!   cut off instead of pinning the answer in memory ([`Deadlined`]);
//! * a connection closed with request bytes still unread (a body over
//!   `limits.max_body_bytes`, a body nobody read) is closed lingeringly:
//!   our side is shut down first and the rest of the input is read and
//!   discarded for a bounded time and size, so that the client reads its
//!   answer instead of a reset. A lingering close gives its connection slot
//!   back at once; lingering sockets have a bound of their own
//!   ([`MAX_LINGERING`]), past which they are closed outright.
//!
//! With `[tls]`, the listener of `[httpServer] addr` speaks HTTPS only:
//! each accepted socket goes through the TLS handshake (within the read
//! deadline, so a silent or slow client holds its slot no longer than one
//! that sends no request head) before hyper sees the decrypted stream;
//! anything that is not a TLS client hello, plain HTTP included, fails the
//! handshake and is closed. `[httpServer] plainAddr` adds a plain listener
//! served by the same loop, with the same bounds.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::Bytes;
use http::Request;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
    time::{Instant, Sleep},
};
use tracing::{debug, info, warn};

use crate::metrics::ConnMetrics;

/// Longest lingering close, and most input discarded during it: enough
/// for a client to finish sending a few MiB over a slow link, small
/// enough that lingering sockets cost little (they hold a connection slot).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 << 20;

/// Connections closing lingeringly at once; past it, a close is abrupt.
const MAX_LINGERING: usize = 1024;

/// Descriptors kept free below the open-file limit for peers, snapshot
/// files and logs.
const FD_RESERVE: u64 = 256;

/// The answer to a connection over `limits.max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json; charset=utf-8\r\n\
connection: close\r\n\
content-length: 78\r\n\
\r\n\
{\"code\":-503,\"message\":\"too many connections: limits.max_connections\",\"ttl\":1}";

/// The answer to a connection over `limits.max_connections_per_ip`.
const BUSY_IP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json; charset=utf-8\r\n\
connection: close\r\n\
content-length: 102\r\n\
\r\n\
{\"code\":-503,\"message\":\"too many connections from one address: limits.max_connections_per_ip\",\"ttl\":1}";

/// How connections are served.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// Head, then body, each within this.
    pub(crate) read_deadline: Duration,
    /// A stalled answer write, at most.
    pub(crate) write_deadline: Duration,
    /// Open connections.
    pub(crate) max_connections: usize,
    /// Open connections from one IP address.
    pub(crate) max_per_ip: usize,
}

impl ConnLimits {
    /// The configured limits, with the connection cap kept below the
    /// process's open-file limit (an `accept` failing on `EMFILE` would
    /// stall every client, not only the newest).
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        let mut max = config.limits.max_connections;
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            // Lingering sockets no longer hold a slot: they need room too.
            let reserve = FD_RESERVE + MAX_LINGERING as u64;
            let room = usize::try_from(soft.saturating_sub(reserve).max(1)).unwrap_or(max);
            if room < max {
                // Only a configured value deserves a warning; the default is
                // meant to be capped on hosts with a low limit.
                if max == crate::config::Limits::default().max_connections {
                    info!(open_file_limit = soft, effective = room, "connection cap");
                } else {
                    warn!(
                        configured = max,
                        open_file_limit = soft,
                        effective = room,
                        "limits.max_connections exceeds the open-file limit; capping it"
                    );
                }
                max = room;
            }
        }
        ConnLimits {
            read_deadline: config.http_server.read_deadline(),
            write_deadline: config.http_server.write_deadline(),
            max_connections: max,
            max_per_ip: config.limits.max_connections_per_ip,
        }
    }
}

/// The listeners of a node: `addr` (HTTPS when `tls` is set) and,
/// optionally, a plain one beside it.
pub(crate) struct Listeners {
    /// `[httpServer] addr`.
    pub(crate) main: TcpListener,
    /// Set when `main` serves HTTPS.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    /// `[httpServer] plainAddr`.
    pub(crate) plain: Option<TcpListener>,
}

/// Accepts from `plain`, or never when there is none.
async fn accept_plain(plain: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match plain {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts and serves connections until `down` turns true (or its sender
/// is gone); then stops accepting, lets every connection finish its
/// request in flight, and returns once all are closed. Dropping the future
/// aborts the remaining connections. Both listeners share the bounds.
pub(crate) async fn serve(
    listeners: Listeners,
    app: Router,
    limits: ConnLimits,
    api: Arc<crate::api::Api>,
    mut down: watch::Receiver<bool>,
) {
    let Listeners {
        main: listener,
        tls,
        plain,
    } = listeners;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let per_ip = Arc::new(PerIp::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_deadline);
    let shared = Arc::new(Shared {
        builder,
        app,
        read_deadline: limits.read_deadline,
        write_deadline: limits.write_deadline,
        api,
    });
    let mut conns = JoinSet::new();
    loop {
        let (accepted, tls) = tokio::select! {
            r = listener.accept() => (r, tls.clone()),
            r = accept_plain(plain.as_ref()) => (r, None),
            _ = down.wait_for(|d| *d) => break,
            Some(_) = conns.join_next() => continue,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection errors (the client gave up) need no pause;
                // resource errors (EMFILE, ENOBUFS) would spin.
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            shared.metrics().refused.inc();
            debug!(%remote, "connection refused: limits.max_connections open");
            // Best effort and never waiting: a full socket buffer drops
            // the answer, the close still tells the client.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let Some(ip_slot) = PerIp::acquire(&per_ip, remote.ip(), limits.max_per_ip) else {
            shared.metrics().refused_per_ip.inc();
            debug!(%remote, "connection refused: limits.max_connections_per_ip open");
            let _ = stream.try_write(BUSY_IP);
            continue;
        };
        let shared = Arc::clone(&shared);
        let down = down.clone();
        let lingering = Arc::clone(&lingering);
        conns.spawn(async move {
            let open = &shared.metrics().open;
            open.inc();
            let unread = match tls {
                None => {
                    let io = Deadlined::new(stream, shared.write_deadline);
                    serve_one(&shared, io, remote, down, false)
                        .await
                        .map(|io| io.inner)
                }
                Some(tls) => serve_tls(&shared, &tls, stream, remote, down).await,
            };
            open.dec();
            // The slots go back before the lingering close: a client that
            // keeps sending into it must not hold a connection slot.
            drop(slot);
            drop(ip_slot);
            if let Some(io) = unread {
                if let Ok(_permit) = lingering.try_acquire() {
                    linger(io).await;
                }
            }
        });
    }
    drop(listener);
    drop(plain);
    while conns.join_next().await.is_some() {}
}

/// The TLS handshake, within the read deadline, then [`serve_one`] on the
/// decrypted stream.
async fn serve_tls(
    shared: &Shared,
    tls: &crate::tls::Tls,
    stream: TcpStream,
    remote: SocketAddr,
    down: watch::Receiver<bool>,
) -> Option<TcpStream> {
    // The write deadline sits under TLS: it bounds the socket writes that
    // carry the encrypted answer.
    let io = Deadlined::new(stream, shared.write_deadline);
    let mut stopping = down.clone();
    let handshake = tokio::select! {
        r = tokio::time::timeout(shared.read_deadline, tls.acceptor().accept(io)) => r,
        // No request is in flight yet: a node shutting down drops it.
        _ = stopping.wait_for(|d| *d) => return None,
    };
    let io = match handshake {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            shared.metrics().tls_failed.inc();
            debug!(%remote, "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            shared.metrics().timed_out.inc();
            debug!(%remote, "TLS handshake not done within the read deadline; closed");
            return None;
        }
    };
    // The verifier refused any certificate that does not chain to `ca`: a
    // presented certificate is a verified one.
    let verified = io
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    serve_one(shared, io, remote, down, verified)
        .await
        .map(|io| io.into_inner().0.inner)
}

struct Shared {
    builder: http1::Builder,
    app: Router,
    read_deadline: Duration,
    write_deadline: Duration,
    api: Arc<crate::api::Api>,
}

/// Open connections per IP address; an entry lives while its count is
/// above zero, so the map is bounded by the open connections.
#[derive(Default)]
struct PerIp(parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`PerIp`], given back on drop.
struct IpSlot {
    map: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn acquire(map: &Arc<PerIp>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = map.0.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: Arc::clone(map),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.0.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn metrics(&self) -> &ConnMetrics {
        &self.api.metrics().conns
    }
}

/// Serves one connection, plain or decrypted; returns its stream when the
/// socket must be closed lingeringly. `verified`: the client presented a
/// certificate verified against `[tls] ca`.
async fn serve_one<I>(
    shared: &Shared,
    io: I,
    remote: SocketAddr,
    mut down: watch::Receiver<bool>,
    verified: bool,
) -> Option<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let read_deadline = shared.read_deadline;
    // The peer address matters to `[auth]` rules and to the audited routes;
    // elsewhere a request carries no extensions map at all.
    let auth_on = !shared.api.config.auth.is_open();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let deadline = Instant::now() + read_deadline;
        let mut req = req.map(|b| {
            Body::new(TimedBody {
                inner: b,
                deadline,
                limit: read_deadline,
                sleep: None,
            })
        });
        if auth_on
            || matches!(
                req.uri().path(),
                "/discovery/set" | "/discovery/cancel" | "/discovery/replicate"
            )
        {
            req.extensions_mut().insert(ConnectInfo(remote));
        }
        if verified {
            req.extensions_mut().insert(crate::tls::VerifiedClient);
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let mut conn = shared.builder.serve_connection(TokioIo::new(io), service);
    let mut draining = false;
    let ended = loop {
        let stop = tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = down.wait_for(|d| *d), if !draining => true,
        };
        if stop {
            // Finish the request in flight (held polls are answered by the
            // handlers), then close.
            draining = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
    };
    match ended {
        Ok(()) => return Some(conn.into_parts().io.into_inner()),
        Err(e) if e.is_timeout() => {
            shared.metrics().timed_out.inc();
            debug!(%remote, "request head not received within the read deadline; closed");
        }
        Err(e) if write_stalled(&e) => {
            shared.metrics().write_timed_out.inc();
            debug!(%remote, "answer not read within the write deadline; closed");
        }
        Err(e) => debug!(%remote, "connection error: {e}"),
    }
    None
}

fn write_stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        // `io::Error::source` skips the error it wraps: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<WriteStalled>());
        if inner || e.is::<WriteStalled>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Writing an answer made no progress within the write deadline.
#[derive(Debug, thiserror::Error)]
#[error("answer not read by the client within {0:?} (httpServer.writeTimeout)")]
struct WriteStalled(Duration);

pin_project_lite::pin_project! {
    /// A socket whose writes must make progress within a deadline: the
    /// timer is armed when a write has to wait and disarmed by any
    /// progress, so a slow reader is fine and a stopped one is cut off.
    struct Deadlined {
        #[pin]
        inner: TcpStream,
        limit: Duration,
        stall: Option<Pin<Box<Sleep>>>,
    }
}

impl Deadlined {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        let _ = inner.set_nodelay(true);
        Deadlined {
            inner,
            limit,
            stall: None,
        }
    }
}

/// The outcome of a write-side poll, through the stall timer.
fn through_deadline<T>(
    stall: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    polled: Poll<std::io::Result<T>>,
) -> Poll<std::io::Result<T>> {
    match polled {
        Poll::Ready(r) => {
            *stall = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    WriteStalled(limit),
                ))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl tokio::io::AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        through_deadline(this.stall, *this.limit, cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        through_deadline(this.stall, *this.limit, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        through_deadline(this.stall, *this.limit, cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Closes a connection without a reset: shut our side down (the client
/// sees the end of the answer), then read and discard whatever the client
/// still sends, until it closes or the bounds are reached.
async fn linger(mut io: TcpStream) {
    if io.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(until, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// A request body that must arrive by a deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    /// Armed on the first read that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// A request body did not arrive within the read deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?} (httpServer.readTimeout)")]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body read failed, when it failed because the body was late.
pub(crate) fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(t.to_string());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_answer_is_well_formed() {
        for answer in [super::BUSY, super::BUSY_IP] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len());
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["code"], -503);
        }
    }
}
