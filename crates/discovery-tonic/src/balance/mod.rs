//! The balanced channel: a cloneable tower `Service` over one tonic
//! [`Channel`] per endpoint, fed by a [`naming::Resolver`].
//!
//! Layered as a call flows, one file each:
//! discover (`balance/pool.rs`: the updater following the resolver) →
//! pool (`balance/endpoint.rs`: one channel per endpoint, its connection,
//! ejection and probes) → pick ([`crate::picker`]: p2c, wrr, round robin)
//! → call (`balance/call.rs`: deadlines, hedging, retries;
//! `balance/body.rs`: how the call ended, told back to the picker).
//!
//! * An updater task follows the resolver's watch, diffs snapshots, keeps
//!   existing connections and connects new endpoints eagerly (1 s per
//!   attempt, jittered backoff 100 ms → 10 s). Only connected endpoints are
//!   pickable; the set is swapped atomically. The task ends with the last
//!   clone of [`Balanced`].
//! * The set holds the client zone's endpoints and, as fallbacks, the other
//!   zones' ones ([`pipeline::fallback`]), all connected eagerly.
//! * A call loads the set, drops ejected endpoints (all of them if every one
//!   is ejected), keeps the client zone's endpoints if one is left (else the
//!   fallbacks: a zone whose endpoints all failed is left at once, not when
//!   the registry evicts them), keeps those of the request's colour, asks
//!   the [`Picker`] and sends on that endpoint's channel.
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
//! * Calls of any method that the server never processed (a stream refused
//!   with `REFUSED_STREAM`, above a GOAWAY's last stream id, or never handed
//!   to a connection that had closed) are sent to another endpoint, their
//!   body replayed (`balance/replay.rs`); a graceful stop costs no call.
//!   Both kinds of retry try at most 2 more endpoints, within the deadline.
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

mod body;
mod call;
mod endpoint;
mod pool;
mod replay;

pub use body::ResponseBody;
use body::*;
use endpoint::*;
use pool::*;
use replay::*;

use crate::{
    ClientConfig, Resolvers, Target,
    health::{EJECT_MAX, EJECT_MIN, Ejection},
    picker::{DoneInfo, Endpoint, PickContext, Picker},
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
    /// TLS for `grpcs://` endpoints, from `config.ca` (and `cert`, `key`).
    tls: Option<Arc<rustls::ClientConfig>>,
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
    /// `config.subset` keyed by `config.client_id`) and prefers the client
    /// zone's list, or every zone when it is empty or no zone is set; the
    /// other zones' endpoints take calls while none of the client zone's is
    /// healthy.
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
        let tls = crate::tls::client_config(config)?.map(Arc::new);
        let (state, _) = watch::channel(Arc::new(Snapshot::default()));
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            appid: resolver.appid().to_string(),
            config: config.clone(),
            tls,
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

    /// Addresses of the connected endpoints, in resolver order (the client
    /// zone's first, then the other zones' fallbacks).
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
                    fallback: b.fallback,
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
    /// Calls sent again on another endpoint: idempotent ones after a
    /// transport failure, any after the server refused them unprocessed.
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
    /// Of another zone than the client's: picked only while no endpoint of
    /// the client's zone is healthy.
    pub fallback: bool,
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
