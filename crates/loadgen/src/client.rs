//! A lean HTTP/1.1 client: one keep-alive hyper connection per worker, no
//! pool, no redirects, no decompression, so that the load generator costs as
//! little CPU as possible on the cores it shares with the server.
//!
//! [`drive`] runs `conns` workers against one address until a count of
//! operations or a duration is reached and records every latency;
//! [`drive_sampled`] also samples something (a server's CPU time) at the
//! edges of the measured window.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use loadgen::client::{Plan, Req, drive};
//!
//! let addr = "127.0.0.1:7171".parse()?;
//! let s = drive(addr, 64, Plan::count(10_000), |i| {
//!     Req::get(format!("/discovery/fetch?env=dev&appid=app{}&status=1", i % 10))
//! })
//! .await?;
//! println!("{:.0} fetch/s, p99 {:.2} ms", s.ops_per_s, s.p99_ms);
//! # Ok(()) }
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use crate::stats::{Recorder, Summary};

/// Header in which the discovery server repeats the envelope's `code`.
pub const CODE_HEADER: &str = "kratos-status-code";

/// One request to send: a path with its query, and a form body for POSTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    method: Method,
    path: String,
    form: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Req {
    /// `GET path_and_query`.
    pub fn get(path_and_query: impl Into<String>) -> Self {
        Req {
            method: Method::GET,
            path: path_and_query.into(),
            form: None,
            headers: Vec::new(),
        }
    }

    /// `POST path` with an `application/x-www-form-urlencoded` body.
    pub fn post_form(path: impl Into<String>, form: impl Into<String>) -> Self {
        Req {
            method: Method::POST,
            path: path.into(),
            form: Some(form.into()),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn build(self, host: &HeaderValue) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(self.method)
            .uri(self.path)
            .header(header::HOST, host);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        let body = match self.form {
            Some(form) => {
                b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        Ok(b.body(body)?)
    }
}

/// An answer: HTTP status, the envelope code from [`CODE_HEADER`], body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The discovery envelope's code, when the header is present.
    pub code: Option<i64>,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// HTTP 200 with code 0.
    pub fn is_ok(&self) -> bool {
        self.status == StatusCode::OK && self.code == Some(0)
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("answer is not JSON")
    }
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    addr: SocketAddr,
}

impl Conn {
    /// Connects (with `TCP_NODELAY`) and spawns the connection's driver task.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends when the peer closes or `tx` drops.
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(&addr.to_string())?;
        Ok(Conn { tx, host, addr })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, req: Req) -> anyhow::Result<Answer> {
        let req = req.build(&self.host)?;
        self.tx.ready().await?;
        let res = self.tx.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        let code = parts
            .headers
            .get(CODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Answer {
            status: parts.status,
            code,
            body,
        })
    }
}

/// When a [`drive`] run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// After this many operations (numbered `0..n`), timed from the first
    /// to the last.
    Count(u64),
    /// After `warmup` + `measure`; only operations started within `measure`
    /// are recorded.
    For {
        /// Unrecorded load before the measurement.
        warmup: Duration,
        /// The measured window.
        measure: Duration,
    },
}

impl Plan {
    /// [`Plan::Count`].
    pub fn count(n: u64) -> Self {
        Plan::Count(n)
    }

    /// [`Plan::For`] with a warm-up of a fifth of the measurement (≤ 2 s).
    pub fn timed(measure: Duration) -> Self {
        Plan::For {
            warmup: (measure / 5).min(Duration::from_secs(2)),
            measure,
        }
    }
}

/// Runs `conns` workers, each on its own connection, sending `make(i)` for
/// operation number `i` (a counter shared by all workers) until `plan` says
/// stop. An operation succeeds on HTTP 200 and code 0.
pub async fn drive<F>(
    addr: SocketAddr,
    conns: usize,
    plan: Plan,
    make: F,
) -> anyhow::Result<Summary>
where
    F: Fn(u64) -> Req + Send + Sync + 'static,
{
    Ok(drive_sampled(addr, conns, plan, make, || ()).await?.0)
}

/// [`drive`], plus `sample()` taken when the measured window opens and when
/// it closes (for [`Plan::Count`]: before the first operation and after the
/// last), e.g. a server's CPU time, so that a cost per operation covers the
/// same operations as the summary and not the warm-up.
pub async fn drive_sampled<F, S, T>(
    addr: SocketAddr,
    conns: usize,
    plan: Plan,
    make: F,
    sample: S,
) -> anyhow::Result<(Summary, T, T)>
where
    F: Fn(u64) -> Req + Send + Sync + 'static,
    S: Fn() -> T + Send + 'static,
    T: Send + 'static,
{
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Conn::connect(addr).await?);
    }
    let make = Arc::new(make);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (from, until) = match plan {
        Plan::Count(_) => (start, None),
        Plan::For { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
    };
    // The window's edges are sampled from their own task, on time, whatever
    // the workers are doing; a count's end is after the last worker.
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(from).await;
        let first = sample();
        let last = match until {
            Some(end) => {
                tokio::time::sleep_until(end).await;
                Some(sample())
            }
            None => None,
        };
        (first, last, sample)
    });
    let workers: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            let (make, seq) = (Arc::clone(&make), Arc::clone(&seq));
            tokio::spawn(async move {
                let mut rec = Recorder::new();
                loop {
                    let i = seq.fetch_add(1, Ordering::Relaxed);
                    match (plan, until) {
                        (Plan::Count(n), _) if i >= n => break,
                        (_, Some(end)) if Instant::now() >= end => break,
                        _ => {}
                    }
                    let req = make(i);
                    let t = Instant::now();
                    let answer = conn.send(req).await;
                    let counted = t >= from;
                    match answer {
                        Ok(a) if a.is_ok() => {
                            if counted {
                                rec.record(t.elapsed());
                                rec.bytes(a.body.len());
                            }
                        }
                        Ok(_) => rec.error(),
                        Err(_) => {
                            rec.error();
                            match Conn::connect(conn.addr()).await {
                                Ok(c) => conn = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::new();
    for w in workers {
        total.merge(&w.await?);
    }
    let elapsed = match plan {
        Plan::Count(_) => start.elapsed(),
        Plan::For { measure, .. } => measure,
    };
    let (first, last, sample) = sampler.await?;
    let last = last.unwrap_or_else(sample);
    Ok((total.summary(elapsed), first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_host_and_form_type() {
        let host = HeaderValue::from_static("127.0.0.1:1");
        let r = Req::post_form("/discovery/renew", "a=1")
            .header("x1-bmspy-timeout", "40000")
            .build(&host)
            .unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/discovery/renew");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:1");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(r.headers()["x1-bmspy-timeout"], "40000");
        let g = Req::get("/x?y=1").build(&host).unwrap();
        assert_eq!(g.uri().query(), Some("y=1"));
        assert!(g.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn timed_plan_warms_up_briefly() {
        assert_eq!(
            Plan::timed(Duration::from_secs(5)),
            Plan::For {
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(5)
            }
        );
        assert!(matches!(
            Plan::timed(Duration::from_secs(60)),
            Plan::For { warmup, .. } if warmup == Duration::from_secs(2)
        ));
    }
}
