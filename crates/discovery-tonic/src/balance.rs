//! The balanced channel: a cloneable tower `Service` over one tonic
//! [`Channel`] per endpoint, fed by a [`naming::Resolver`].
//!
//! * An updater task follows the resolver's watch, diffs snapshots, keeps
//!   existing connections and connects new endpoints eagerly (1 s per
//!   attempt, jittered backoff 100 ms → 10 s). Only connected endpoints are
//!   pickable; the set is swapped atomically. The task ends with the last
//!   clone of [`Balanced`].
//! * A call loads the set, drops ejected endpoints (all of them if every one
//!   is ejected), keeps those of the request's colour, asks the
//!   [`Picker`] and sends on that endpoint's channel.
//!   The picker hears how the call ended when the response body ends
//!   (`grpc-status` and `cpu_usage` are trailers).
//! * A transport failure ejects the endpoint with backoff
//!   ([`health`](crate::health)); so does the loss of its connection, which
//!   HTTP/2 keepalive notices within `keepalive_interval +
//!   keepalive_timeout` when the peer vanished without a reset (a killed
//!   container, a partition). A probe re-admits the endpoint once a fresh
//!   connection answers a request.
//! * Calls of idempotent methods ([`ClientConfig::idempotent`]) are hedged:
//!   with no response after `hedge_percent` of the deadline, a second
//!   endpoint is asked too and the first answer wins; after a transport
//!   failure they are retried on another endpoint at once. A peer that
//!   stopped answering therefore costs latency, not failed calls.
//! * With nothing to pick, a call fails at once with `Unavailable` saying
//!   why, except that while resolution is pending or first connections run
//!   it waits up to the startup grace (never past its deadline).
//! * Every call has a deadline (default 250 ms), sent as `grpc-timeout` and
//!   enforced here; expiry gives `DeadlineExceeded`. Errors are
//!   [`tonic::Status`] values, so clients see their codes.
//!
//! ```no_run
//! use demo_proto::helloworld::{HelloRequest, greeter_client::GreeterClient};
//! use discovery_tonic::{Balanced, ClientConfig, Resolvers};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let resolvers = Resolvers::new(); // plus the SDK's `discovery` builder
//! let channel = Balanced::from_target(
//!     "direct://default/127.0.0.1:9000,127.0.0.1:9001",
//!     &resolvers,
//!     &ClientConfig::default(),
//! )?;
//! let mut client = GreeterClient::new(channel);
//! let reply = client.say_hello(HelloRequest { name: "kratos".into() }).await?;
//! println!("{}", reply.into_inner().message);
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full};
use naming::{BuildOptions, Resolution, Resolver};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Notify, mpsc, oneshot, watch},
    time::{Instant, Sleep},
};
use tonic::{Code, Status, body::Body, transport::Channel};
use tower::{Service, ServiceExt};

use crate::{
    ClientConfig, Resolvers, Target,
    health::{EJECT_MAX, EJECT_MIN, Ejection},
    picker::{DoneInfo, Endpoint, PickContext, Picker, jitter},
    pipeline,
};

/// The trailer (or trailers-only header) carrying the server's CPU usage.
pub const CPU_USAGE: &str = "cpu_usage";
/// Request metadata naming the request's colour.
pub const COLOR: &str = "color";
/// Request metadata naming the calling appid.
pub const CALLER: &str = "caller";
const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_STATUS: &str = "grpc-status";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which instance answered a call: set as a response extension on every
/// response the balancer returns, so callers can report it even when the
/// server sends nothing about itself (Go servers send no `x-served-by`).
///
/// `GreeterClient::new(balanced).say_hello(..).await?.extensions().get::<ServedBy>()`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    /// The endpoint's `host:port`.
    pub addr: String,
    /// The instance's registered hostname (empty for `direct://` targets).
    pub hostname: String,
}

/// A load-balanced gRPC channel; clone it freely, every clone shares the
/// endpoints. Use it wherever a tonic [`Channel`] goes:
/// `GreeterClient::new(balanced)`.
#[derive(Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
    _owner: Arc<oneshot::Sender<()>>,
}

struct Shared {
    appid: String,
    config: ClientConfig,
    picker: Arc<dyn Picker>,
    state: watch::Sender<Arc<Snapshot>>,
    republish: Notify,
    /// Connections that ended, reported by their socket's drop.
    lost: mpsc::UnboundedSender<Lost>,
    hedged: AtomicU64,
    retried: AtomicU64,
}

/// A connection of endpoint `addr`, dialled as `generation`, has ended.
#[derive(Debug)]
struct Lost {
    addr: Arc<str>,
    generation: u64,
}

/// What calls see: the connected endpoints and why there may be none.
#[derive(Default)]
struct Snapshot {
    ready: Vec<Arc<Backend>>,
    /// Every endpoint, connected or not, for introspection.
    all: Vec<Arc<Backend>>,
    phase: Phase,
    known: usize,
    first_connects: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Pending,
    NotFound {
        env: String,
    },
    Found,
}

struct Backend {
    endpoint: Arc<Endpoint>,
    hostname: String,
    channel: Mutex<Option<Channel>>,
    ejected: AtomicBool,
    health: Mutex<Health>,
    target: tonic::transport::Endpoint,
    connect_timeout: Duration,
    first_attempt_done: AtomicBool,
    /// The dial whose channel is in use; connections of older dials may end
    /// without consequence.
    generation: AtomicU64,
    lost: mpsc::UnboundedSender<Lost>,
}

#[derive(Default)]
struct Health {
    ejection: Ejection,
    probing: bool,
}

/// How the updater turns a resolver snapshot into endpoints.
struct Stages {
    /// Pipeline options; `None` uses the snapshot as it is.
    options: Option<BuildOptions>,
    /// Whose list to take after the pipeline.
    client_zone: Option<String>,
    /// The subset key.
    client_id: String,
}

impl Balanced {
    /// A balanced channel over `resolver`'s endpoints.
    ///
    /// Resolvers deliver the registry's raw snapshots; the balancer runs the
    /// resolution pipeline on them ([`pipeline::apply`]: scheme `grpc`,
    /// `config.clusters`, zone scheduling for `config.zone`, subset
    /// `config.subset` keyed by `config.client_id`) and uses the client
    /// zone's list, or every zone when it is empty or no zone is set.
    ///
    /// Never blocks; must be called inside a tokio runtime (otherwise
    /// [`naming::Error::InvalidConfig`]).
    pub fn new(resolver: Box<dyn Resolver>, config: &ClientConfig) -> Result<Self, naming::Error> {
        Self::with_picker(resolver, config, config.picker())
    }

    /// Like [`Balanced::new`] with a picker of the caller's own instead of
    /// the one `config.balancer` names.
    pub fn with_picker(
        resolver: Box<dyn Resolver>,
        config: &ClientConfig,
        picker: Arc<dyn Picker>,
    ) -> Result<Self, naming::Error> {
        let stages = Stages {
            options: Some(BuildOptions {
                scheme: "grpc".to_string(),
                clusters: config.clusters.clone(),
                client_zone: config.zone.clone(),
                subset: config.subset,
            }),
            client_zone: config.zone.clone(),
            client_id: config.client_id.clone(),
        };
        Self::build(resolver, stages, config, picker)
    }

    /// Parses `target`, adds the config's zone, clusters and subset
    /// ([`Target::with_defaults`]), builds its resolver from `resolvers` and
    /// balances over it. The target's options drive the pipeline, except for
    /// `direct://` targets, whose fixed list is used as it is.
    pub fn from_target(
        target: &str,
        resolvers: &Resolvers,
        config: &ClientConfig,
    ) -> Result<Self, naming::Error> {
        let target = Target::parse(target)?.with_defaults(
            &config.clusters,
            config.zone.as_deref(),
            config.subset,
        );
        let resolver = resolvers.build(&target)?;
        let stages = Stages {
            options: (target.scheme != "direct").then(|| target.build_options()),
            client_zone: target.zone.clone(),
            client_id: config.client_id.clone(),
        };
        Self::build(resolver, stages, config, config.picker())
    }

    fn build(
        resolver: Box<dyn Resolver>,
        stages: Stages,
        config: &ClientConfig,
        picker: Arc<dyn Picker>,
    ) -> Result<Self, naming::Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            naming::Error::InvalidConfig(
                "a balanced channel must be built inside a tokio runtime".to_string(),
            )
        })?;
        let (state, _) = watch::channel(Arc::new(Snapshot::default()));
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            appid: resolver.appid().to_string(),
            config: config.clone(),
            picker,
            state,
            republish: Notify::new(),
            lost,
            hedged: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        handle.spawn(run_updater(
            shared.clone(),
            resolver,
            stages,
            stop_rx,
            lost_rx,
        ));
        Ok(Balanced {
            shared,
            _owner: Arc::new(stop_tx),
        })
    }

    /// The balanced appid (as the resolver reports it).
    pub fn appid(&self) -> &str {
        &self.shared.appid
    }

    /// Waits until at least one endpoint is connected, at most `dial`
    /// (10 s by default); the error says why there is none.
    pub async fn connect(&self) -> Result<(), Status> {
        let mut rx = self.shared.state.subscribe();
        let deadline = Instant::now() + self.shared.config.dial;
        loop {
            let snap = rx.borrow_and_update().clone();
            if !snap.ready.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    let snap = rx.borrow().clone();
                    return Err(self.shared.unavailable(&snap, None));
                }
            }
        }
    }

    /// Addresses of the connected endpoints, in resolver order.
    pub fn ready_endpoints(&self) -> Vec<String> {
        self.shared
            .state
            .borrow()
            .ready
            .iter()
            .map(|b| b.endpoint.addr().to_string())
            .collect()
    }

    /// The pool as the balancer sees it now: every endpoint with its
    /// connection, ejection and picker statistics.
    pub fn pool(&self) -> PoolState {
        let snap = self.shared.state.borrow().clone();
        let now = Instant::now();
        let kind = self.shared.config.balancer;
        let backends = snap
            .all
            .iter()
            .map(|b| {
                let e = &b.endpoint;
                let h = b.health.lock();
                let lag = e.lag();
                let load = (e.cpu() as f64)
                    * ((lag as f64).sqrt().floor() + 1.0)
                    * e.inflight().max(0) as f64;
                let p2c_score = if load > 0.0 {
                    e.success() as f64 * f64::from(e.weight()) / load
                } else {
                    0.0
                };
                BackendState {
                    addr: e.addr().to_string(),
                    color: e.color().map(str::to_string),
                    weight: e.weight(),
                    connected: b.channel.lock().is_some(),
                    ejected: b.ejected.load(Ordering::Relaxed),
                    ejected_for_ms: h
                        .ejection
                        .until()
                        .map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    consecutive_failures: h.ejection.failures(),
                    in_flight: e.calls_in_flight(),
                    latency_ewma_ms: lag as f64 / 1e6,
                    success_permille: e.success(),
                    cpu: e.cpu(),
                    effective_weight: e.effective_weight(),
                    score: match kind {
                        crate::BalancerKind::Wrr => e.wrr_score(),
                        _ => p2c_score,
                    },
                    picks: e.picks(),
                    ejections: e.ejections(),
                    hedges: e.hedges(),
                }
            })
            .collect();
        PoolState {
            appid: self.shared.appid.clone(),
            balancer: format!("{kind:?}").to_ascii_lowercase(),
            phase: match &snap.phase {
                Phase::Pending => "pending".to_string(),
                Phase::NotFound { .. } => "not_found".to_string(),
                Phase::Found => "found".to_string(),
            },
            hedged_calls: self.shared.hedged.load(Ordering::Relaxed),
            retried_calls: self.shared.retried.load(Ordering::Relaxed),
            backends,
        }
    }

    /// Addresses of the endpoints currently ejected.
    pub fn ejected_endpoints(&self) -> Vec<String> {
        self.shared
            .state
            .borrow()
            .ready
            .iter()
            .filter(|b| b.ejected.load(Ordering::Relaxed))
            .map(|b| b.endpoint.addr().to_string())
            .collect()
    }
}

/// The balancer's view of its pool; see [`Balanced::pool`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolState {
    /// The balanced appid.
    pub appid: String,
    /// The picker: `p2c`, `wrr`, `roundrobin` or `random`.
    pub balancer: String,
    /// `pending`, `not_found` or `found`.
    pub phase: String,
    /// Idempotent calls sent to a second endpoint because the first had not
    /// answered yet.
    pub hedged_calls: u64,
    /// Idempotent calls sent again after a transport failure.
    pub retried_calls: u64,
    /// Every resolved endpoint, in resolver order.
    pub backends: Vec<BackendState>,
}

/// One endpoint of a [`PoolState`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendState {
    /// `host:port`.
    pub addr: String,
    /// Traffic colour.
    pub color: Option<String>,
    /// Registered weight.
    pub weight: u32,
    /// Whether a connection was made (only connected endpoints are picked).
    pub connected: bool,
    /// Whether it is out of rotation.
    pub ejected: bool,
    /// Time left until a probe may re-admit it.
    pub ejected_for_ms: Option<u64>,
    /// Consecutive transport failures (lost connections included).
    pub consecutive_failures: u32,
    /// Calls waiting for or reading their response.
    pub in_flight: i64,
    /// p2c's EWMA of the call latency.
    pub latency_ewma_ms: f64,
    /// p2c's EWMA of the success rate, per mille.
    pub success_permille: u64,
    /// The server's last `cpu_usage` (500 until one arrives).
    pub cpu: u64,
    /// The weight `wrr` uses now.
    pub effective_weight: i64,
    /// p2c: `success × weight / load`; wrr: the dynamic score.
    pub score: f64,
    /// Calls picked for it so far.
    pub picks: u64,
    /// Times it was ejected so far.
    pub ejections: u64,
    /// Hedged calls it received as the second endpoint.
    pub hedges: u64,
}

impl fmt::Debug for Balanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.shared.state.borrow();
        f.debug_struct("Balanced")
            .field("appid", &self.shared.appid)
            .field("phase", &snap.phase)
            .field("known", &snap.known)
            .field("ready", &snap.ready.len())
            .finish()
    }
}

impl Service<Request<Body>> for Balanced {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call, after the pick: endpoints come and
        // go, and a call must be able to fail fast when there are none.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.dispatch(req).await.map_err(BoxError::from) })
    }
}

impl Shared {
    async fn dispatch(
        self: Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<ResponseBody>, Status> {
        let start = Instant::now();
        let method = req.uri().path().to_string();
        let mut timeout = self.config.timeout_for(&method);
        if let Some(t) = req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout) {
            timeout = timeout.min(t);
        }
        let headers = req.headers_mut();
        headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(timeout));
        if !self.config.caller.is_empty() && !headers.contains_key(CALLER) {
            if let Ok(v) = HeaderValue::from_str(&self.config.caller) {
                headers.insert(CALLER, v);
            }
        }
        let color = match headers.get(COLOR).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => Some(c.to_string()),
            _ if !self.config.color.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(&self.config.color) {
                    headers.insert(COLOR, v);
                }
                Some(self.config.color.clone())
            }
            _ => None,
        };
        let deadline = start + timeout;
        let send = self
            .clone()
            .send(req, &method, color.as_deref(), start, deadline);
        match tokio::time::timeout_at(deadline, send).await {
            Ok(result) => result,
            Err(_) => Err(self.deadline_exceeded(&method, timeout)),
        }
    }

    fn deadline_exceeded(&self, method: &str, timeout: Duration) -> Status {
        Status::deadline_exceeded(format!(
            "{}: {method} exceeded its {timeout:?} deadline",
            self.appid
        ))
    }

    async fn send(
        self: Arc<Self>,
        req: Request<Body>,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Status> {
        if self.config.is_idempotent(method) {
            return self.send_hedged(req, method, color, start, deadline).await;
        }
        let backend = self
            .pick_or_wait(method, color, start, deadline, &[])
            .await?;
        self.send_to(backend, req, method, start, deadline)
            .await
            .map_err(|f| f.status)
    }

    /// An idempotent call: its body is buffered so that it can be sent
    /// again, to a second endpoint when the first has not answered after
    /// `hedge_percent` of the deadline, or to another one at once after a
    /// transport failure. The first response wins; the other attempt is
    /// cancelled.
    async fn send_hedged(
        self: Arc<Self>,
        req: Request<Body>,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Status> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(status) => return Err(status),
        };
        let make = || {
            let mut r = Request::new(Body::new(Full::new(body.clone())));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let first = self
            .pick_or_wait(method, color, start, deadline, &[])
            .await?;
        let tried = [first.endpoint.addr().to_string()];
        let a = self.clone().send_to(first, make(), method, start, deadline);
        tokio::pin!(a);
        let pct = self.config.hedge_percent.min(100);
        let hedge_at = (pct > 0).then(|| start + (deadline - start) * pct / 100);
        let timer = async move {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut a => match r {
                Ok(resp) => Ok(resp),
                Err(failed) if failed.retry => {
                    let Some(next) = self.pick_now(method, color, &tried) else {
                        return Err(failed.status);
                    };
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        failed = tried[0],
                        retry = next.endpoint.addr(),
                        "idempotent call retried on another endpoint"
                    );
                    self.clone()
                        .send_to(next, make(), method, start, deadline)
                        .await
                        .map_err(|f| f.status)
                }
                Err(failed) => Err(failed.status),
            },
            () = timer => {
                let Some(second) = self.pick_now(method, color, &tried) else {
                    return a.await.map_err(|f| f.status);
                };
                self.hedged.fetch_add(1, Ordering::Relaxed);
                second.endpoint.counters.hedges.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    silent = tried[0],
                    hedge = second.endpoint.addr(),
                    "no response yet; hedging on another endpoint"
                );
                let b = self.clone().send_to(second, make(), method, start, deadline);
                tokio::pin!(b);
                tokio::select! {
                    r = &mut a => match r {
                        Ok(resp) => Ok(resp),
                        Err(_) => b.await.map_err(|f| f.status),
                    },
                    r = &mut b => match r {
                        Ok(resp) => Ok(resp),
                        Err(_) => a.await.map_err(|f| f.status),
                    },
                }
            }
        }
    }

    /// A pick from the current set without waiting, avoiding `exclude`.
    fn pick_now(
        &self,
        method: &str,
        color: Option<&str>,
        exclude: &[String],
    ) -> Option<Arc<Backend>> {
        let snap = self.state.borrow().clone();
        self.pick(&snap, method, color, exclude).ok()
    }

    /// One attempt on `backend`.
    async fn send_to(
        self: Arc<Self>,
        backend: Arc<Backend>,
        req: Request<Body>,
        method: &str,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Failed> {
        backend
            .endpoint
            .counters
            .inflight
            .fetch_add(1, Ordering::Relaxed);
        let mut guard = DoneGuard {
            picker: self.picker.clone(),
            backend: backend.clone(),
            start: Instant::now(),
            deadline,
            finished: false,
        };
        let Some(channel) = backend.channel.lock().clone() else {
            guard.finish(Code::Unavailable, true, None);
            return Err(Failed::retry(Status::unavailable(format!(
                "{}: {} is not connected",
                self.appid,
                backend.endpoint.addr()
            ))));
        };
        match channel.oneshot(req).await {
            Err(e) if is_timeout(&e) => {
                // The channel enforces `grpc-timeout` too and may fire in the
                // same timer tick as our own deadline: not a transport failure.
                guard.finish(Code::DeadlineExceeded, false, None);
                Err(Failed::fatal(
                    self.deadline_exceeded(method, deadline - start),
                ))
            }
            Err(e) => {
                backend.transport_failed();
                guard.finish(Code::Unavailable, true, None);
                Err(Failed::retry(Status::unavailable(format!(
                    "{}: {}: {}",
                    self.appid,
                    backend.endpoint.addr(),
                    error_chain(&e)
                ))))
            }
            Ok(mut resp) => {
                backend.call_succeeded();
                resp.extensions_mut().insert(ServedBy {
                    addr: backend.endpoint.addr().to_string(),
                    hostname: backend.hostname.clone(),
                });
                let header_code = resp
                    .headers()
                    .get(GRPC_STATUS)
                    .map(|v| Code::from_bytes(v.as_bytes()));
                if header_code == Some(Code::Cancelled) && Instant::now() >= deadline {
                    // A tonic server answers its own expiry of our deadline
                    // with `Cancelled`; the caller asked for a deadline.
                    guard.finish(Code::DeadlineExceeded, false, None);
                    return Err(Failed::fatal(
                        self.deadline_exceeded(method, deadline - start),
                    ));
                }
                let header_cpu = parse_cpu(resp.headers());
                Ok(resp.map(|inner| ResponseBody {
                    inner,
                    guard: Some(guard),
                    header_code,
                    header_cpu,
                    deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                    expired: false,
                }))
            }
        }
    }

    async fn pick_or_wait(
        &self,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
        exclude: &[String],
    ) -> Result<Arc<Backend>, Status> {
        let mut rx = self.state.subscribe();
        let grace_end = (start + self.config.startup_grace).min(deadline);
        loop {
            let snap = rx.borrow_and_update().clone();
            let why = match self.pick(&snap, method, color, exclude) {
                Ok(b) => return Ok(b),
                Err(why) => why,
            };
            let may_wait = snap.phase == Phase::Pending || snap.first_connects > 0;
            if !may_wait || Instant::now() >= grace_end {
                return Err(self.unavailable(&snap, why));
            }
            if !matches!(
                tokio::time::timeout_at(grace_end, rx.changed()).await,
                Ok(Ok(()))
            ) {
                let snap = rx.borrow().clone();
                let why = self.pick(&snap, method, color, exclude).err().flatten();
                let status = self.unavailable(&snap, why);
                if Instant::now() >= deadline {
                    // The deadline, not the grace, ended the wait.
                    return Err(Status::deadline_exceeded(format!(
                        "deadline exceeded while waiting for an endpoint: {}",
                        status.message()
                    )));
                }
                return Err(status);
            }
        }
    }

    /// Picks among the snapshot's usable endpoints other than `exclude`.
    /// `Err(Some(reason))` when endpoints exist but none suits the request.
    fn pick(
        &self,
        snap: &Snapshot,
        method: &str,
        color: Option<&str>,
        exclude: &[String],
    ) -> Result<Arc<Backend>, Option<String>> {
        let ready: Vec<&Arc<Backend>> = snap
            .ready
            .iter()
            .filter(|b| !exclude.iter().any(|x| x == b.endpoint.addr()))
            .collect();
        if ready.is_empty() {
            return Err(None);
        }
        let healthy: Vec<&Arc<Backend>> = ready
            .iter()
            .copied()
            .filter(|b| !b.ejected.load(Ordering::Relaxed))
            .collect();
        // Every endpoint ejected: pick among all of them rather than none
        // ("panic mode"); the ejection may be stale.
        let pool = if healthy.is_empty() { ready } else { healthy };
        let coloured: Vec<&Arc<Backend>> = match color {
            Some(c) => pool
                .iter()
                .copied()
                .filter(|b| b.endpoint.color() == Some(c))
                .collect(),
            None => Vec::new(),
        };
        let group = if coloured.is_empty() {
            pool.into_iter()
                .filter(|b| b.endpoint.color().is_none())
                .collect()
        } else {
            coloured
        };
        if group.is_empty() {
            return Err(Some(format!(
                "no uncoloured endpoint among {} connected",
                snap.ready.len()
            )));
        }
        let candidates: Vec<Arc<Endpoint>> = group.iter().map(|b| b.endpoint.clone()).collect();
        let ctx = PickContext {
            method,
            now: Instant::now(),
        };
        match self.picker.pick(&ctx, &candidates) {
            Some(i) if i < group.len() => {
                group[i]
                    .endpoint
                    .counters
                    .picks
                    .fetch_add(1, Ordering::Relaxed);
                Ok(group[i].clone())
            }
            _ => Err(Some("the picker chose no endpoint".to_string())),
        }
    }

    fn unavailable(&self, snap: &Snapshot, why: Option<String>) -> Status {
        let (env, reason) = match &snap.phase {
            Phase::NotFound { env } => (env.as_str(), "not registered".to_string()),
            Phase::Pending => (self.config.env.as_str(), "resolution pending".to_string()),
            Phase::Found => {
                let reason = match why {
                    Some(why) => why,
                    None if snap.known == 0 => "no instances".to_string(),
                    None if snap.first_connects > 0 => {
                        format!("connecting to {} endpoints", snap.known)
                    }
                    None => format!("{} endpoints unreachable", snap.known),
                };
                (self.config.env.as_str(), reason)
            }
        };
        Status::unavailable(format!(
            "no instances of {} in env {env} ({reason})",
            self.appid
        ))
    }
}

impl Backend {
    fn new(
        addr: &str,
        weight: u32,
        color: Option<String>,
        hostname: String,
        config: &ClientConfig,
        lost: mpsc::UnboundedSender<Lost>,
    ) -> Option<Self> {
        let target = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tracing::warn!(addr, error = %e, "unusable endpoint address"))
            .ok()?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .keep_alive_while_idle(config.keepalive_while_idle);
        Some(Backend {
            endpoint: Arc::new(Endpoint::new(addr, weight, color)),
            hostname,
            channel: Mutex::new(None),
            ejected: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            target,
            connect_timeout: config.connect_timeout,
            first_attempt_done: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            lost,
        })
    }

    /// The same connection and health under new metadata.
    fn updated(&self, weight: u32, color: Option<String>, hostname: String) -> Self {
        let h = self.health.lock();
        Backend {
            endpoint: Arc::new(self.endpoint.updated(weight, color)),
            hostname,
            channel: Mutex::new(self.channel.lock().clone()),
            ejected: AtomicBool::new(h.ejection.is_ejected()),
            health: Mutex::new(Health {
                ejection: h.ejection.clone(),
                probing: false,
            }),
            target: self.target.clone(),
            connect_timeout: self.connect_timeout,
            first_attempt_done: AtomicBool::new(self.first_attempt_done.load(Ordering::Relaxed)),
            generation: AtomicU64::new(self.generation.load(Ordering::Relaxed)),
            lost: self.lost.clone(),
        }
    }

    fn call_succeeded(&self) {
        if self.ejected.load(Ordering::Relaxed) || self.health.lock().ejection.failures() > 0 {
            let mut h = self.health.lock();
            h.ejection.succeed();
            self.ejected.store(false, Ordering::Relaxed);
        }
    }

    fn transport_failed(self: &Arc<Self>) {
        self.eject("transport failure");
    }

    fn eject(self: &Arc<Self>, why: &str) {
        let mut h = self.health.lock();
        let d = h.ejection.fail(Instant::now());
        if !self.ejected.swap(true, Ordering::Relaxed) {
            self.endpoint
                .counters
                .ejections
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            addr = self.endpoint.addr(),
            failures = h.ejection.failures(),
            ejected_for = ?d,
            "endpoint ejected: {why}"
        );
        if !h.probing {
            h.probing = true;
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }

    /// A new connection that has answered a request, within the connect
    /// timeout. A peer that accepts connections but never answers (a frozen
    /// process, a blackholed address behind a proxy) fails here rather than
    /// being re-admitted.
    async fn dial(&self) -> Result<(Channel, u64), String> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let addr: Arc<str> = Arc::from(self.endpoint.addr());
        let lost = self.lost.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let addr = addr.clone();
            let lost = lost.clone();
            async move {
                let io = TcpStream::connect(&*addr).await?;
                io.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Tracked {
                    io,
                    _hook: LostHook {
                        lost,
                        addr,
                        generation,
                    },
                }))
            }
        });
        let attempt = async {
            let channel = self
                .target
                .connect_with_connector(connector)
                .await
                .map_err(|e| error_chain(&e))?;
            answers(&channel, self.endpoint.addr()).await?;
            Ok::<_, String>(channel)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(ch)) => Ok((ch, generation)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "no connection answering within {:?}",
                self.connect_timeout
            )),
        }
    }

    /// Puts a dialled channel in use.
    fn install(&self, channel: Channel, generation: u64) {
        let mut slot = self.channel.lock();
        self.generation.store(generation, Ordering::Relaxed);
        *slot = Some(channel);
    }
}

/// Sends one gRPC request on a fresh channel; any HTTP response, even
/// `Unimplemented`, shows that the peer is alive and serving.
async fn answers(channel: &Channel, addr: &str) -> Result<(), String> {
    let mut req = Request::new(Body::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{addr}/grpc.health.v1.Health/Check")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    match channel.clone().oneshot(req).await {
        Ok(_) => Ok(()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// A connection's socket; dropping it (the connection ended: keepalive
/// timeout, reset, GOAWAY, EOF) tells the updater.
struct Tracked {
    io: TcpStream,
    _hook: LostHook,
}

struct LostHook {
    lost: mpsc::UnboundedSender<Lost>,
    addr: Arc<str>,
    generation: u64,
}

impl Drop for LostHook {
    fn drop(&mut self) {
        let _ = self.lost.send(Lost {
            addr: self.addr.clone(),
            generation: self.generation,
        });
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why an attempt failed, and whether another endpoint may be tried.
struct Failed {
    status: Status,
    retry: bool,
}

impl Failed {
    fn retry(status: Status) -> Self {
        Failed {
            status,
            retry: true,
        }
    }

    fn fatal(status: Status) -> Self {
        Failed {
            status,
            retry: false,
        }
    }
}

impl Backend {
    /// The connection of the channel in use ended: eject at once, so that
    /// no caller picks it while the probe reconnects.
    fn connection_lost(self: &Arc<Self>, generation: u64) {
        if self.generation.load(Ordering::Relaxed) != generation
            || self.ejected.load(Ordering::Relaxed)
        {
            return;
        }
        self.eject("connection lost");
    }
}

/// Re-admits an ejected endpoint once a fresh connection succeeds after its
/// ejection; each failed probe ejects it for longer.
async fn probe(backend: Weak<Backend>) {
    loop {
        let until = {
            let Some(b) = backend.upgrade() else { return };
            let mut h = b.health.lock();
            match h.ejection.until() {
                Some(until) => until,
                None => {
                    // A call succeeded meanwhile (panic mode): nothing to do.
                    h.probing = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(until).await;
        let Some(b) = backend.upgrade() else { return };
        if b.health
            .lock()
            .ejection
            .until()
            .is_some_and(|u| u > Instant::now())
        {
            continue; // extended by a failure in panic mode
        }
        let result = b.dial().await;
        let mut h = b.health.lock();
        match result {
            Ok((channel, generation)) => {
                b.install(channel, generation);
                h.ejection.readmit();
                h.probing = false;
                b.ejected.store(false, Ordering::Relaxed);
                tracing::info!(addr = b.endpoint.addr(), "endpoint re-admitted");
                return;
            }
            Err(error) => {
                let d = h.ejection.fail(Instant::now());
                tracing::debug!(addr = b.endpoint.addr(), %error, ejected_for = ?d, "probe failed");
            }
        }
    }
}

/// Connects a new endpoint, retrying with jittered exponential backoff until
/// it succeeds or the endpoint leaves the set.
async fn connect_loop(backend: Weak<Backend>, shared: Weak<Shared>) {
    let mut backoff = EJECT_MIN;
    loop {
        let Some(b) = backend.upgrade() else { return };
        let result = b.dial().await;
        let first = !b.first_attempt_done.swap(true, Ordering::AcqRel);
        let connected = match result {
            Ok((channel, generation)) => {
                b.install(channel, generation);
                true
            }
            Err(error) => {
                tracing::debug!(addr = b.endpoint.addr(), %error, ?backoff, "connect failed");
                false
            }
        };
        if connected || first {
            match shared.upgrade() {
                Some(s) => s.republish.notify_one(),
                None => return,
            }
        }
        if connected {
            return;
        }
        drop(b);
        tokio::time::sleep(jitter(backoff, 0.2)).await;
        backoff = (backoff * 2).min(EJECT_MAX);
    }
}

/// The endpoint set as the updater keeps it: every resolved endpoint,
/// connected or not, in resolver order.
struct Pool {
    backends: Vec<Arc<Backend>>,
    phase: Phase,
    undialable: Undialable,
}

/// The `host:port` of an instance's last `grpc://` address that a channel
/// can dial. Registries keep addresses opaque (`unix://`, no port, a
/// comma-joined list), so anything else is skipped.
fn dialable(ins: &naming::Instance) -> Option<&str> {
    ins.addrs.iter().rev().find_map(|a| {
        let rest = a.strip_prefix("grpc://")?;
        // kratos v2 endpoints carry `?isSecure=false`.
        let authority = rest.split(['?', '/']).next().unwrap_or(rest);
        let (host, port) = authority.rsplit_once(':')?;
        let host_ok = !host.is_empty() && !host.contains([',', ' ', '@']);
        (host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)).then_some(authority)
    })
}

/// Addresses already reported as undialable, so that each is logged once
/// and not on every resolve.
#[derive(Default)]
struct Undialable {
    seen: std::collections::HashSet<String>,
}

/// Distinct addresses remembered; past it the memory starts over (and an
/// address may be reported again) rather than growing with a hostile
/// registry's contents.
const UNDIALABLE_REMEMBERED: usize = 1024;

impl Undialable {
    fn report(&mut self, shared: &Shared, ins: &naming::Instance) {
        for a in &ins.addrs {
            if self.seen.contains(a) {
                continue;
            }
            if self.seen.len() >= UNDIALABLE_REMEMBERED {
                self.seen.clear();
            }
            self.seen.insert(a.clone());
            tracing::warn!(
                appid = shared.appid,
                hostname = ins.hostname,
                addr = a,
                "skipping an instance address the gRPC client cannot dial (needs grpc://host:port)"
            );
        }
    }
}

impl Pool {
    fn apply(&mut self, shared: &Arc<Shared>, res: &Resolution, stages: &Stages) {
        let info = match res {
            Resolution::Pending => return,
            Resolution::NotFound { env, .. } => {
                if !self.backends.is_empty() {
                    tracing::warn!(
                        appid = shared.appid,
                        env,
                        kept = self.backends.len(),
                        "resolver says not found; keeping the last endpoints"
                    );
                }
                self.phase = Phase::NotFound { env: env.clone() };
                return;
            }
            Resolution::Found(info) => info,
        };
        // Before the pipeline, whose scheme filter drops instances without
        // a `grpc://` address silently.
        for ins in info.iter() {
            if dialable(ins).is_none() {
                self.undialable.report(shared, ins);
            }
        }
        let processed;
        let info = match &stages.options {
            Some(options) => {
                let zone = stages.client_zone.as_deref().unwrap_or_default();
                processed = pipeline::apply(info, options, zone, &stages.client_id);
                &processed
            }
            None => &**info,
        };
        let mut wanted: Vec<(String, u32, Option<String>, String)> = Vec::new();
        for ins in pipeline::select(info, stages.client_zone.as_deref()) {
            if ins.status != naming::Status::Up {
                continue;
            }
            let Some(addr) = dialable(ins) else {
                continue;
            };
            if wanted.iter().any(|(a, ..)| a == addr) {
                continue; // duplicate addresses are merged
            }
            wanted.push((
                addr.to_string(),
                ins.weight(),
                ins.color().map(str::to_string),
                ins.hostname.clone(),
            ));
        }
        if wanted.is_empty() && !self.backends.is_empty() {
            // A non-empty set is never replaced by an empty snapshot.
            tracing::warn!(
                appid = shared.appid,
                kept = self.backends.len(),
                "resolver returned no instances; keeping the last endpoints"
            );
            self.phase = Phase::Found;
            return;
        }
        self.phase = Phase::Found;
        let mut old: HashMap<String, Arc<Backend>> = self
            .backends
            .drain(..)
            .map(|b| (b.endpoint.addr().to_string(), b))
            .collect();
        for (addr, weight, color, hostname) in wanted {
            let backend = match old.remove(&addr) {
                Some(b)
                    if b.endpoint.weight() == weight.max(1)
                        && b.endpoint.color() == color.as_deref()
                        && b.hostname == hostname =>
                {
                    b
                }
                Some(b) => {
                    let next = Arc::new(b.updated(weight, color, hostname));
                    if next.channel.lock().is_none() {
                        tokio::spawn(connect_loop(Arc::downgrade(&next), Arc::downgrade(shared)));
                    }
                    if next.ejected.load(Ordering::Relaxed) {
                        next.health.lock().probing = true;
                        tokio::spawn(probe(Arc::downgrade(&next)));
                    }
                    next
                }
                None => {
                    let Some(b) = Backend::new(
                        &addr,
                        weight,
                        color,
                        hostname,
                        &shared.config,
                        shared.lost.clone(),
                    ) else {
                        continue;
                    };
                    let b = Arc::new(b);
                    tokio::spawn(connect_loop(Arc::downgrade(&b), Arc::downgrade(shared)));
                    b
                }
            };
            self.backends.push(backend);
        }
        if !old.is_empty() {
            tracing::info!(
                appid = shared.appid,
                removed = ?old.keys().collect::<Vec<_>>(),
                "endpoints removed"
            );
        }
    }

    fn publish(&self, shared: &Shared) {
        let ready: Vec<Arc<Backend>> = self
            .backends
            .iter()
            .filter(|b| b.channel.lock().is_some())
            .cloned()
            .collect();
        let first_connects = self
            .backends
            .iter()
            .filter(|b| !b.first_attempt_done.load(Ordering::Acquire))
            .count();
        shared.state.send_replace(Arc::new(Snapshot {
            ready,
            all: self.backends.clone(),
            phase: self.phase.clone(),
            known: self.backends.len(),
            first_connects,
        }));
    }
}

async fn run_updater(
    shared: Arc<Shared>,
    resolver: Box<dyn Resolver>,
    stages: Stages,
    mut stop: oneshot::Receiver<()>,
    mut lost: mpsc::UnboundedReceiver<Lost>,
) {
    let mut rx = resolver.watch();
    let mut pool = Pool {
        backends: Vec::new(),
        phase: Phase::Pending,
        undialable: Undialable::default(),
    };
    let mut watching = true;
    let mut changed = true;
    loop {
        if changed {
            let res = rx.borrow_and_update().clone();
            pool.apply(&shared, &res, &stages);
        }
        pool.publish(&shared);
        tokio::select! {
            _ = &mut stop => break,
            r = rx.changed(), if watching => {
                changed = r.is_ok();
                // A closed watch keeps the last endpoints.
                watching = r.is_ok();
            }
            () = shared.republish.notified() => changed = false,
            Some(l) = lost.recv() => {
                if let Some(b) = pool.backends.iter().find(|b| *b.endpoint.addr() == *l.addr) {
                    b.connection_lost(l.generation);
                }
                changed = false;
            }
        }
    }
    resolver.close();
    // Release the endpoints: calls in flight keep their own channel clones.
    shared.state.send_replace(Arc::new(Snapshot::default()));
}

/// Reports a picked call's end to the picker exactly once.
struct DoneGuard {
    picker: Arc<dyn Picker>,
    backend: Arc<Backend>,
    start: Instant,
    deadline: Instant,
    finished: bool,
}

impl DoneGuard {
    fn finish(&mut self, code: Code, transport_failure: bool, cpu_usage: Option<u64>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.backend
            .endpoint
            .counters
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
        self.picker.done(
            &self.backend.endpoint,
            &DoneInfo {
                start: self.start,
                end: Instant::now(),
                code,
                transport_failure,
                cpu_usage,
            },
        );
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // Dropped before the body ended: cancelled by the caller, or its
        // deadline passed.
        let code = if Instant::now() >= self.deadline {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        };
        self.finish(code, false, None);
    }
}

/// The response body of a balanced call: the endpoint's body, which reports
/// the call's end (status and `cpu_usage` trailers) to the picker and fails
/// with `DeadlineExceeded` if the deadline passes while it streams.
pub struct ResponseBody {
    inner: Body,
    guard: Option<DoneGuard>,
    header_code: Option<Code>,
    header_cpu: Option<u64>,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl ResponseBody {
    fn finish(&mut self, code: Code, transport_failure: bool, cpu: Option<u64>) {
        if let Some(mut guard) = self.guard.take() {
            if transport_failure {
                guard.backend.transport_failed();
            }
            guard.finish(code, transport_failure, cpu);
        }
        self.deadline = None;
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("finished", &self.guard.is_none())
            .finish_non_exhaustive()
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(GRPC_STATUS)
                        .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()));
                    let cpu = parse_cpu(trailers).or(this.header_cpu);
                    this.finish(code, false, cpu);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                // A stream broken below gRPC (reset, connection lost) is a
                // transport failure; a deadline or cancellation is not.
                let transport = !matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled);
                this.finish(status.code(), transport, None);
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                let code = this.header_code.unwrap_or(Code::Unknown);
                let cpu = this.header_cpu;
                this.finish(code, false, cpu);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(sleep) = this.deadline.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.expired = true;
                        this.finish(Code::DeadlineExceeded, false, None);
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(
                            "deadline exceeded while reading the response",
                        ))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn parse_cpu(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CPU_USAGE)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|c| *c > 0)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    // The most precise unit whose value fits in 8 digits.
    const MAX: u128 = 99_999_999;
    let (n, unit) = if d.as_micros() <= MAX {
        (d.as_micros(), 'u')
    } else if d.as_millis() <= MAX {
        (d.as_millis(), 'm')
    } else {
        (u128::from(d.as_secs()).min(MAX), 'S')
    };
    HeaderValue::from_str(&format!("{n}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999S"))
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(10),
            Duration::from_secs(200),
            Duration::from_secs(1_000_000),
        ] {
            let v = encode_grpc_timeout(d);
            let back = parse_grpc_timeout(&v).unwrap();
            assert_eq!(back, d, "{v:?}");
        }
        assert_eq!(encode_grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("1x")), None);
        assert_eq!(
            parse_grpc_timeout(&HeaderValue::from_static("123456789m")),
            None
        );
    }
}
