//! The HTTP API of bilibili/discovery (see docs/protocol.md#routes): an
//! axum [`Router`] whose handlers bind parameters, call the
//! [registry core](crate::registry), and encode.
//!
//! One file per concern: `api/write.rs` (register, renew, cancel, set and
//! batched replication), `api/read.rs` (fetch, fetchs, fetch/all, nodes),
//! `api/poll.rs` (the long polls), `api/ops.rs` (console, status, metrics,
//! health). Handlers take the caller (token, address) and the bound
//! parameters as extractors and return `Result<Reply, Reply>`: the error
//! side is the envelope the client gets.
//!
//! ```
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! use discovery_server::{config::Config, server};
//!
//! let node = server::start(Config::default(), Some("127.0.0.1:0".parse()?)).await?;
//! println!("serving on {}", node.addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub(crate) mod entropy;
mod observe;
mod ops;
mod poll;
mod read;
mod write;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{FromRequest, FromRequestParts, State},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use http::{HeaderMap, HeaderValue, Request, StatusCode, request::Parts};
use tokio::sync::watch;

use crate::{
    auth::SIGNATURE_HEADER,
    clock::Clock,
    config::Config,
    membership::{Members, StaticMembers},
    node::{NodeIdentity, Phase, PhaseCell},
    params::Params,
    registry::{InstanceKey, Registry},
    replication::{Origin, Replicator},
    reply::{BAD_REQUEST, Reply, SERVER_ERROR, UNAUTHORIZED},
};

use ops::{console, healthz, metrics, readyz, status};
use poll::{poll, polls};
use read::{fetch, fetch_all, fetchs, nodes};
use write::{cancel, register, renew, replicate, set};

/// Whole-registry answers in flight at once; more are answered `-503`.
const MAX_DUMPS: usize = 4;

/// Shared state of the handlers.
pub struct Api {
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: Arc<Config>,
    pub(crate) node: NodeIdentity,
    pub(crate) clock: Clock,
    phase: PhaseCell,
    shutdown: watch::Receiver<bool>,
    replicator: Arc<dyn Replicator>,
    members: Arc<dyn Members>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// [`NODE_ID_HEADER`]'s value, built once.
    node_header: HeaderValue,
    /// Peer signatures' replay check.
    verifier: crate::auth::Verifier,
    /// Whole-registry answers (`fetch/all`, `/discovery/apps`) being built
    /// or written at once: each holds a copy of the registry.
    pub(crate) dumps: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("node", &self.node)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Assembles the handlers' state.
    pub fn new(
        registry: Arc<Registry>,
        config: Arc<Config>,
        node: NodeIdentity,
        clock: Clock,
        shutdown: watch::Receiver<bool>,
        replicator: Arc<dyn Replicator>,
        members: Arc<dyn Members>,
    ) -> Self {
        let node_header = HeaderValue::from_str(&node.id).expect("hex id is a valid header value");
        let verifier = crate::auth::Verifier::new(config.limits.max_peer_nonces);
        Api {
            registry,
            config,
            node,
            clock,
            phase: PhaseCell::new(Phase::Serving),
            shutdown,
            replicator,
            members,
            verifier,
            dumps: Arc::new(tokio::sync::Semaphore::new(MAX_DUMPS)),
            metrics: crate::metrics::Metrics::new(),
            node_header,
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Requests served on a route (e.g. `/discovery/register`) since start.
    pub fn requests(&self, route: &str) -> u64 {
        self.metrics.requests_on(route)
    }

    /// State for a router that runs outside [`server::start`]
    /// (`Router::oneshot` tests, embedding): no self-registration, no
    /// tickers, no peers.
    ///
    /// [`server::start`]: crate::server::start
    pub fn detached(config: Config) -> Arc<Api> {
        let advertise = config.http_server.addr.clone();
        let members = Arc::new(StaticMembers {
            own: advertise.clone(),
            zone: config.env.zone.clone(),
            nodes: config.nodes.clone(),
            rule: crate::membership::PeerRule::new(&advertise, &config),
        });
        let registry = Arc::new(Registry::new(config.registry.params.clone()));
        let api = Api::new(
            registry,
            Arc::new(config),
            NodeIdentity {
                id: format!("{:016x}", rand::random::<u64>()),
                advertise,
            },
            Clock::new(),
            watch::channel(false).1,
            Arc::new(crate::replication::Standalone),
            members,
        );
        Arc::new(api)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Moves to another phase.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
    }

    /// The registry core.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// `-500` while reads are not served (docs/protocol.md#start-up-and-phases).
    fn gate(&self, fetch_all: bool) -> Option<Reply> {
        match self.phase() {
            Phase::Serving | Phase::Draining => None,
            Phase::Syncing if fetch_all => None,
            Phase::Syncing | Phase::Protected => Some(Reply::code(SERVER_ERROR)),
        }
    }

    /// How long a long poll may hold (docs/protocol.md#deadline-header-and-hold).
    fn hold(&self, headers: &HeaderMap) -> Duration {
        let mut hold = self
            .config
            .registry
            .poll_hold
            .min(self.config.http_server.timeout);
        let client = headers
            .get("x1-bmspy-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(|ms| match ms {
                ms if ms > 20 => Some(ms - 20),
                ms if ms >= 1 => Some(ms),
                _ => None,
            });
        if let Some(ms) = client {
            hold = hold.min(Duration::from_millis(ms.unsigned_abs()));
        }
        if let Some(w) = self.config.http_server.write_timeout {
            hold = hold.min(w.saturating_sub(Duration::from_secs(1)));
        }
        hold
    }

    async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        if rx.wait_for(|down| *down).await.is_err() {
            // No owner can ever signal a shutdown (a detached router).
            std::future::pending::<()>().await;
        }
    }

    fn check_len(&self, name: &str, value: &str) -> Result<(), Reply> {
        let max = self.config.limits.max_field_len;
        if value.len() > max {
            return Err(Reply::message(
                BAD_REQUEST,
                format!("parameter '{name}' exceeds limits.max_field_len ({max})"),
            ));
        }
        Ok(())
    }

    /// A required key field within the length limit.
    fn key_field<'p>(&self, p: &'p Params, name: &str) -> Result<&'p str, Reply> {
        let v = p.required(name)?;
        self.check_len(name, v)?;
        Ok(v)
    }

    fn instance_key(&self, p: &Params) -> Result<InstanceKey, Reply> {
        Ok(InstanceKey::new(
            self.key_field(p, "env")?,
            self.key_field(p, "appid")?,
            self.key_field(p, "zone")?,
            self.key_field(p, "hostname")?,
        ))
    }

    /// Beyond `limits.max_pollers` a poll is refused at once (`-400`, which
    /// SDKs treat as an error: they switch node and back off) instead of
    /// being held.
    fn check_pollers(&self) -> Result<(), Reply> {
        let max = self.config.limits.max_pollers;
        if self.registry.parked_polls() >= max {
            return Err(Reply::message(
                BAD_REQUEST,
                format!("too many held polls: limits.max_pollers ({max})"),
            ));
        }
        Ok(())
    }

    fn check_appids(&self, appids: &[&str]) -> Result<(), Reply> {
        let max = self.config.limits.max_appids_per_poll;
        if appids.len() > max {
            return Err(Reply::message(
                BAD_REQUEST,
                format!(
                    "{} appids exceed limits.max_appids_per_poll ({max})",
                    appids.len()
                ),
            ));
        }
        Ok(())
    }
}

type Shared = State<Arc<Api>>;

/// The request's parameters, bound from the body then the query (see
/// docs/protocol.md#parameters) within `limits.max_body_bytes`.
pub(crate) struct Bound(pub(crate) Params);

impl FromRequest<Arc<Api>> for Bound {
    type Rejection = Reply;

    async fn from_request(req: Request<Body>, api: &Arc<Api>) -> Result<Self, Reply> {
        let max = api.config.limits.max_body_bytes;
        let certified = req
            .extensions()
            .get::<crate::tls::VerifiedClient>()
            .is_some();
        if !req.headers().contains_key(SIGNATURE_HEADER) {
            let mut p = Params::bind(req, max).await?;
            p.certified = certified;
            return Ok(Bound(p));
        }
        // A signature covers the body as sent: read it, check it, then bind
        // from the same bytes.
        let (parts, body) = req.into_parts();
        let bytes = crate::params::read_body(body, max).await?;
        api.verify_signature(&parts, &bytes)?;
        let mut p = Params::bind(Request::from_parts(parts, Body::from(bytes)), max).await?;
        p.signed = true;
        p.certified = certified;
        Ok(Bound(p))
    }
}

impl Api {
    /// Checks a request's [`SIGNATURE_HEADER`] against `[auth] peer_token`;
    /// a request without one passes unsigned. A bad one is `-401`.
    pub(crate) fn verify_signature(&self, parts: &Parts, body: &[u8]) -> Result<bool, Reply> {
        let Some(header) = parts.headers.get(SIGNATURE_HEADER) else {
            return Ok(false);
        };
        let checked = header
            .to_str()
            .map_err(|_| crate::auth::SignatureError::Malformed)
            .and_then(|header| {
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                self.verifier.verify(
                    self.config.auth.peer_token.as_ref(),
                    header,
                    parts.method.as_str(),
                    pq,
                    body,
                    self.clock.wall_ms(),
                    crate::auth::signature_window(self.config.cluster.max_clock_skew),
                )
            });
        match checked {
            Ok(()) => Ok(true),
            Err(e) => {
                self.metrics.signature_refused(e.label());
                tracing::warn!(reason = e.label(), "peer signature refused: {e}");
                Err(Reply::message(UNAUTHORIZED, format!("unauthorized: {e}")))
            }
        }
    }

    /// Whether an admin act is logged: anything not signed by a peer and
    /// not sent from a configured peer's address (a `replication=true`
    /// marker alone proves nothing).
    pub(crate) fn audited(&self, caller: &Caller, p: &Params) -> bool {
        let from_peer = is_peer(p) && caller.ip.is_some_and(|ip| self.members.is_peer_ip(ip));
        !(p.signed || from_peer)
    }

    /// A place for one whole-registry answer, or `-503`.
    pub(crate) fn dump_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Reply> {
        Arc::clone(&self.dumps).try_acquire_owned().map_err(|_| {
            Reply::message(
                naming::code::Code::Unavailable.as_i64(),
                format!("{MAX_DUMPS} whole-registry answers are in flight; retry shortly"),
            )
        })
    }

    /// `reply` as a response that keeps `permit` until its body is written
    /// (or the connection is gone): a slow reader holds its slot.
    pub(crate) fn holding(reply: Reply, permit: tokio::sync::OwnedSemaphorePermit) -> Response {
        reply.into_response().map(|body| {
            Body::new(Holding {
                inner: body,
                _permit: permit,
            })
        })
    }

    /// The proofs a request with a raw body carries (a signature over
    /// `body`, a verified client certificate), as otherwise empty
    /// parameters to authorize it with. A bad signature is `-401`.
    pub(crate) fn raw_proofs(&self, parts: &Parts, body: &[u8]) -> Result<Params, Reply> {
        let mut p = Params::default();
        p.signed = self.verify_signature(parts, body)?;
        p.certified = parts
            .extensions
            .get::<crate::tls::VerifiedClient>()
            .is_some();
        Ok(p)
    }

    /// Signature nonces remembered now.
    pub fn peer_nonces(&self) -> usize {
        self.verifier.held()
    }
}

/// Who is asking: the token presented and the peer address.
pub(crate) struct Caller {
    token: Option<String>,
    /// Known when `[auth]` is on, and on the routes that are audited.
    ip: Option<std::net::IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            token: crate::auth::presented(&parts.headers),
            ip: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        })
    }
}

impl Api {
    /// Applies `[auth]`; a `token` parameter counts when no header did.
    /// Returns the credential that let the request in.
    pub(crate) fn authorize(
        &self,
        need: crate::auth::Need,
        caller: &Caller,
        p: &Params,
    ) -> Result<crate::auth::Grant, Reply> {
        if self.config.auth.is_open() {
            return Ok(if p.signed {
                crate::auth::Grant::Peer
            } else {
                crate::auth::Grant::Open
            });
        }
        let token = caller
            .token
            .as_deref()
            .or(Some(p.str("token")).filter(|t| !t.is_empty()));
        self.config
            .auth
            .check(need, token, caller.ip, p.signed)
            .map_err(|why| Reply::message(UNAUTHORIZED, format!("unauthorized: {why}")))
    }
}

/// The auth rule of a write: peers' writes need the peer token.
pub(crate) fn write_need(p: &Params) -> crate::auth::Need {
    if is_peer(p) {
        crate::auth::Need::PeerWrite
    } else {
        crate::auth::Need::ClientWrite
    }
}

/// The discovery routes plus `/healthz` and `/readyz`.
pub fn router(api: Arc<Api>) -> Router {
    let d = |m: MethodRouter<Arc<Api>>| m.fallback(method_not_allowed);
    Router::new()
        .route("/discovery/register", d(post(register)))
        .route("/discovery/renew", d(post(renew)))
        .route("/discovery/cancel", d(post(cancel)))
        .route("/discovery/set", d(post(set)))
        .route("/discovery/replicate", d(post(replicate)))
        .route("/discovery/fetch/all", d(get(fetch_all)))
        .route("/discovery/digest", d(get(entropy::digest)))
        .route("/discovery/apps", d(post(entropy::apps)))
        .route("/discovery/fetch", d(get(fetch)))
        .route("/discovery/fetchs", d(get(fetchs)))
        .route("/discovery/poll", d(get(poll)))
        .route("/discovery/polls", d(get(polls)))
        .route("/discovery/nodes", d(get(nodes)))
        .route("/", d(get(console)))
        .route("/status", d(get(status)))
        .route("/metrics", d(get(metrics)))
        .route("/healthz", d(get(healthz)))
        .route("/readyz", d(get(readyz)))
        .fallback(not_found)
        .layer(observe::Observe(Arc::clone(&api)))
        .with_state(api)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(http::header::CONTENT_TYPE, "text/plain")],
        "404 page not found",
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(http::header::CONTENT_TYPE, "text/plain")],
        "Method Not Allowed",
    )
        .into_response()
}

pub(crate) fn origin(p: &Params) -> Option<Origin> {
    if p.bool("replication") {
        None
    } else if p.bool("from_zone") {
        Some(Origin::OtherZone)
    } else {
        Some(Origin::Client)
    }
}

pub(crate) fn is_peer(p: &Params) -> bool {
    p.bool("replication") || p.bool("from_zone")
}

/// `infra.discovery` records are the cluster's membership, and SDKs find
/// their nodes from them: only nodes write them (with the peer markers).
pub(crate) fn check_reserved(p: &Params, appid: &str) -> Result<(), Reply> {
    if appid == naming::DISCOVERY_APPID && !is_peer(p) {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "appid {appid} is reserved for discovery nodes (replication=true or from_zone=true)"
            ),
        ));
    }
    Ok(())
}

/// A peer's write carries timestamps from its clock; ours then never reads
/// earlier, so that a later write through this node sorts after it.
/// A timestamp implausibly far in the future is refused (`-400`): it
/// would pin the instance, and anti-entropy would carry it everywhere.
pub(crate) fn observe_peer_clock(api: &Api, p: &Params) -> Result<(), Reply> {
    for name in ["dirty_timestamp", "latest_timestamp", "set_timestamp"] {
        if let Ok(ts) = p.i64(name) {
            if api.clock.is_implausible(ts) {
                return Err(Reply::bad_param(
                    name,
                    "is more than cluster.max_clock_skew plus a minute ahead of this node's clock",
                ));
            }
        }
    }
    if !is_peer(p) {
        return Ok(());
    }
    for name in ["dirty_timestamp", "latest_timestamp", "set_timestamp"] {
        if let Ok(ts) = p.i64(name) {
            if !api.clock.observe(ts) {
                tracing::debug!(
                    param = name,
                    ts,
                    "peer timestamp too far ahead; not followed"
                );
            }
        }
    }
    Ok(())
}

pin_project_lite::pin_project! {
    /// A body that holds a [`MAX_DUMPS`] slot while it is written.
    struct Holding {
        #[pin]
        inner: Body,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
