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
//! * a connection closed with request bytes still unread (a body over
//!   `limits.max_body_bytes`, a body nobody read) is closed lingeringly:
//!   our side is shut down first and the rest of the input is read and
//!   discarded for a bounded time and size, so that the client reads its
//!   answer instead of a reset.

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

/// How connections are served.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// Head, then body, each within this.
    pub(crate) read_deadline: Duration,
    /// Open connections.
    pub(crate) max_connections: usize,
}

impl ConnLimits {
    /// The configured limits, with the connection cap kept below the
    /// process's open-file limit (an `accept` failing on `EMFILE` would
    /// stall every client, not only the newest).
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        let mut max = config.limits.max_connections;
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            let room = usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(max);
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
            max_connections: max,
        }
    }
}

/// Accepts and serves connections until `down` turns true (or its sender
/// is gone); then stops accepting, lets every connection finish its
/// request in flight, and returns once all are closed. Dropping the future
/// aborts the remaining connections.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    api: Arc<crate::api::Api>,
    mut down: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_deadline);
    let shared = Arc::new(Shared {
        builder,
        app,
        read_deadline: limits.read_deadline,
        api,
    });
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
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
        let shared = Arc::clone(&shared);
        let down = down.clone();
        conns.spawn(async move {
            let open = &shared.metrics().open;
            open.inc();
            serve_one(&shared, stream, remote, down).await;
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

struct Shared {
    builder: http1::Builder,
    app: Router,
    read_deadline: Duration,
    api: Arc<crate::api::Api>,
}

impl Shared {
    fn metrics(&self) -> &ConnMetrics {
        &self.api.metrics().conns
    }
}

async fn serve_one(
    shared: &Shared,
    stream: TcpStream,
    remote: SocketAddr,
    mut down: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let app = shared.app.clone();
    let read_deadline = shared.read_deadline;
    // The peer address matters only to `[auth]` rules; without them a
    // request carries no extensions map at all.
    let auth_remote = (!shared.api.config.auth.is_open()).then_some(remote);
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
        if let Some(remote) = auth_remote {
            req.extensions_mut().insert(ConnectInfo(remote));
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let mut conn = shared
        .builder
        .serve_connection(TokioIo::new(stream), service);
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
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        Err(e) if e.is_timeout() => {
            shared.metrics().timed_out.inc();
            debug!(%remote, "request head not received within the read deadline; closed");
        }
        Err(e) => debug!(%remote, "connection error: {e}"),
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
        let text = std::str::from_utf8(super::BUSY).unwrap();
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
