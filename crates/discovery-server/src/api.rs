//! The HTTP API of bilibili/discovery (spec §3): an axum [`Router`] whose
//! handlers parse, call the [registry core](crate::registry), and encode.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use discovery_server::{config::Config, server};
//!
//! let node = server::start(Config::default(), Some("127.0.0.1:0".parse()?)).await?;
//! println!("serving on {}", node.addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use naming::{Instance, Status};
use tokio::sync::watch;

use crate::{
    clock::Clock,
    config::Config,
    membership::{Members, StaticMembers, Vetted},
    node::{NODE_ADDR_HEADER, NODE_ID_HEADER, NodeIdentity, Phase, PhaseCell},
    params::Params,
    registry::{
        AppKey, Fetched, InstanceKey, MetadataPatch, PollState, RegisterOptions, Registry, Renewed,
        SetError, SetRequest,
    },
    replication::{Op, Origin, Replicator},
    reply::{self, BAD_REQUEST, CONFLICT, NOT_FOUND, NOT_MODIFIED, Reply, SERVER_ERROR},
};

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
        Api {
            registry,
            config,
            node,
            clock,
            phase: PhaseCell::new(Phase::Serving),
            shutdown,
            replicator,
            members,
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

    /// `-500` while reads are not served (spec §7.5).
    fn gate(&self, fetch_all: bool) -> Option<Reply> {
        match self.phase() {
            Phase::Serving | Phase::Draining => None,
            Phase::Syncing if fetch_all => None,
            Phase::Syncing | Phase::Protected => Some(Reply::code(SERVER_ERROR)),
        }
    }

    /// How long a long poll may hold (spec §2.3).
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

/// `-401`: a token is missing or wrong.
const UNAUTHORIZED: i64 = -401;

/// Who is asking: the token presented and the peer address.
struct Caller {
    token: Option<String>,
    ip: Option<std::net::IpAddr>,
}

impl Caller {
    fn of(req: &Request<Body>) -> Self {
        Caller {
            token: crate::auth::presented(req.headers()),
            ip: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        }
    }
}

impl Api {
    /// Applies `[auth]`; a `token` parameter counts when no header did.
    fn authorize(&self, need: crate::auth::Need, caller: &Caller, p: &Params) -> Result<(), Reply> {
        if self.config.auth.is_open() {
            return Ok(());
        }
        let token = caller
            .token
            .as_deref()
            .or(Some(p.str("token")).filter(|t| !t.is_empty()));
        self.config
            .auth
            .check(need, token, caller.ip)
            .map_err(|why| Reply::message(UNAUTHORIZED, format!("unauthorized: {why}")))
    }
}

/// The auth rule of a write: peers' writes need the peer token.
fn write_need(p: &Params) -> crate::auth::Need {
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            |State(api): State<Arc<Api>>, req: Request<Body>, next: axum::middleware::Next| async move {
                let route = crate::metrics::route_index(
                    req.extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |p| p.as_str()),
                );
                if let Some(addr) = req.headers().get(NODE_ADDR_HEADER).and_then(|v| v.to_str().ok()) {
                    api.members.heard_from(addr);
                }
                let start = tokio::time::Instant::now();
                let mut res = next.run(req).await;
                res.headers_mut()
                    .insert(NODE_ID_HEADER, api.node_header.clone());
                let seconds = start.elapsed().as_secs_f64();
                match res.headers().get("kratos-status-code").and_then(|v| v.to_str().ok()) {
                    Some(code) => api.metrics.request(route, code, seconds),
                    None => api.metrics.request(route, res.status().as_str(), seconds),
                }
                res
            },
        ))
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

/// Runs a handler body that may bail out early with a [`Reply`].
fn respond(r: Result<Response, Reply>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn bind(api: &Api, req: Request<Body>) -> Result<Params, Reply> {
    Params::bind(req, api.config.limits.max_body_bytes).await
}

/// Binds the parameters, then applies `[auth]` with the rule `need` picks.
async fn bind_authorized(
    api: &Api,
    req: Request<Body>,
    need: impl FnOnce(&Params) -> crate::auth::Need,
) -> Result<Params, Reply> {
    let caller = Caller::of(&req);
    let p = bind(api, req).await?;
    api.authorize(need(&p), &caller, &p)?;
    Ok(p)
}

fn origin(p: &Params) -> Option<Origin> {
    if p.bool("replication") {
        None
    } else if p.bool("from_zone") {
        Some(Origin::OtherZone)
    } else {
        Some(Origin::Client)
    }
}

fn is_peer(p: &Params) -> bool {
    p.bool("replication") || p.bool("from_zone")
}

/// `infra.discovery` records are the cluster's membership, and SDKs find
/// their nodes from them: only nodes write them (with the peer markers).
fn check_reserved(p: &Params, appid: &str) -> Result<(), Reply> {
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
fn observe_peer_clock(api: &Api, p: &Params) {
    if !is_peer(p) {
        return;
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
}

/// Decodes register/set metadata values: strings as they are, `null` as
/// `""` (register) or removal (set), anything else as compact JSON text.
fn metadata_value(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

async fn register(State(api): Shared, req: Request<Body>) -> Response {
    respond(register_inner(&api, req).await)
}

async fn register_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let p = bind_authorized(api, req, write_need).await?;
    register_apply(api, &p)
        .await
        .map(IntoResponse::into_response)
}

/// `register` on bound, authorized parameters (also used for batches).
async fn register_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p);
    let key = api.instance_key(p)?;
    check_reserved(p, &key.appid)?;
    let status = match p.u32("status")? {
        0 => return Err(Reply::bad_param("status", "required")),
        s @ (1 | 2) => Status::from(s),
        s => {
            return Err(Reply::bad_param(
                "status",
                format!("{s} is not 1 (UP) or 2 (waiting)"),
            ));
        }
    };
    let peer = is_peer(p);
    let mut addrs: Vec<String> = p.list("addrs").into_iter().map(str::to_string).collect();
    if peer && addrs.len() == 1 && addrs[0].contains(',') {
        // The Go original's peers comma-join the addresses of an instance.
        addrs = addrs[0]
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
    }
    if addrs.is_empty() {
        return Err(Reply::bad_param("addrs", "required"));
    }
    let limits = &api.config.limits;
    if addrs.len() > limits.max_addrs {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "{} addrs exceed limits.max_addrs ({})",
                addrs.len(),
                limits.max_addrs
            ),
        ));
    }
    for a in &addrs {
        api.check_len("addrs", a)?;
        if !valid_addr(a) {
            return Err(Reply::bad_param(
                "addrs",
                format!("{a:?} contains control characters"),
            ));
        }
    }
    let region = p.str("region");
    let version = p.str("version");
    api.check_len("region", region)?;
    api.check_len("version", version)?;
    let metadata = parse_register_metadata(api, p.str("metadata"))?;
    let dirty_timestamp = p.i64("dirty_timestamp")?;
    let reg_timestamp = p.i64("reg_timestamp")?;
    p.i64("latest_timestamp")?;

    if api.registry.len() >= limits.max_instances && api.registry.get(&key).is_none() {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "registry is full: limits.max_instances ({})",
                limits.max_instances
            ),
        ));
    }
    let ins = Instance {
        region: region.to_string(),
        zone: key.zone,
        env: key.env,
        appid: key.appid,
        hostname: key.hostname,
        addrs,
        version: version.to_string(),
        metadata,
        status,
        ..Default::default()
    };
    let opts = RegisterOptions {
        dirty_timestamp: dirty_timestamp.max(0),
        reg_timestamp: if peer { reg_timestamp.max(0) } else { 0 },
        peer,
    };
    if ins.appid == naming::DISCOVERY_APPID {
        match api.members.vet(ins.clone(), opts, origin(p)) {
            Vetted::Admit => {}
            Vetted::Held => return Ok(Reply::ok()),
            Vetted::Refused(why) => return Err(Reply::message(BAD_REQUEST, why)),
        }
    }
    let out = api.registry.register(ins, opts, api.clock.now());
    let i = &out.instance;
    tracing::info!(
        appid = %i.appid, env = %i.env, zone = %i.zone, hostname = %i.hostname,
        addrs = ?i.addrs, new = out.is_new, applied = out.applied, peer,
        "register"
    );
    if let Some(origin) = origin(p) {
        api.replicator
            .replicate(Op::Register(out.instance), origin)
            .await;
    }
    Ok(Reply::ok())
}

/// A client's address is opaque, as the Go original keeps it: any
/// `scheme://rest` (port optional, `unix://` included, commas kept), so
/// only text that would corrupt logs or answers is refused.
fn valid_addr(a: &str) -> bool {
    !a.is_empty() && !a.chars().any(char::is_control)
}

fn parse_register_metadata(api: &Api, text: &str) -> Result<BTreeMap<String, String>, Reply> {
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let limits = &api.config.limits;
    if text.len() > limits.max_metadata_bytes {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "metadata exceeds limits.max_metadata_bytes ({})",
                limits.max_metadata_bytes
            ),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Reply::code(BAD_REQUEST))?;
    let map = match value {
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        serde_json::Value::Object(m) => m,
        _ => return Err(Reply::bad_param("metadata", "not a JSON object")),
    };
    if map.len() > limits.max_metadata_keys {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "metadata exceeds limits.max_metadata_keys ({})",
                limits.max_metadata_keys
            ),
        ));
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, metadata_value(v).unwrap_or_default()))
        .collect())
}

async fn renew(State(api): Shared, req: Request<Body>) -> Response {
    respond(renew_inner(&api, req).await)
}

async fn renew_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let p = bind_authorized(api, req, write_need).await?;
    renew_apply(api, &p).await.map(IntoResponse::into_response)
}

/// `renew` on bound, authorized parameters (also used for batches).
async fn renew_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p);
    let key = api.instance_key(p)?;
    if key.appid == naming::DISCOVERY_APPID && is_peer(p) {
        // A node renewing its record is alive: flush our queue to it.
        if let Some(record) = api.registry.get(&key) {
            for a in record
                .addrs
                .iter()
                .filter_map(|a| a.strip_prefix("http://"))
            {
                api.members.heard_from(a);
            }
        }
    }
    let dirty = p.i64("dirty_timestamp")?;
    let peer_dirty = is_peer(p).then_some(dirty);
    let out = api.registry.renew(&key, peer_dirty, api.clock.now());
    tracing::debug!(appid = %key.appid, hostname = %key.hostname, found = out.is_found(), "renew");
    let reply = match &out {
        Renewed::NotFound => return Ok(Reply::code(NOT_FOUND).null()),
        Renewed::Ok(i) => Reply::ok().json(i),
        Renewed::PeerNewer(i) => Reply::code(NOT_FOUND).json(i),
        Renewed::PeerOlder(i) => Reply::code(CONFLICT).json(i),
    };
    if let (Some(origin), Renewed::Ok(i) | Renewed::PeerNewer(i) | Renewed::PeerOlder(i)) =
        (origin(p), out)
    {
        api.replicator.replicate(Op::Renew(i), origin).await;
    }
    Ok(reply)
}

async fn cancel(State(api): Shared, req: Request<Body>) -> Response {
    respond(cancel_inner(&api, req).await)
}

async fn cancel_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let p = bind_authorized(api, req, write_need).await?;
    cancel_apply(api, &p).await.map(IntoResponse::into_response)
}

/// `cancel` on bound, authorized parameters (also used for batches).
async fn cancel_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p);
    let key = api.instance_key(p)?;
    check_reserved(p, &key.appid)?;
    let cancelled_at = p.i64("latest_timestamp")?;
    let now = api.clock.now();
    let at = if is_peer(p) && cancelled_at > 0 {
        cancelled_at
    } else {
        now
    };
    let Some(gone) = api.registry.cancel_at(&key, now, at, is_peer(p)) else {
        return Ok(Reply::code(NOT_FOUND));
    };
    tracing::info!(appid = %key.appid, env = %key.env, zone = %key.zone, hostname = %key.hostname, "cancel");
    if let Some(origin) = origin(p) {
        api.replicator
            .replicate(Op::Cancel(gone, now), origin)
            .await;
    }
    Ok(Reply::ok())
}

async fn set(State(api): Shared, req: Request<Body>) -> Response {
    respond(set_inner(&api, req).await)
}

async fn set_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let p = bind_authorized(api, req, |p| {
        if is_peer(p) {
            crate::auth::Need::PeerWrite
        } else {
            crate::auth::Need::Admin
        }
    })
    .await?;
    set_apply(api, &p).await.map(IntoResponse::into_response)
}

/// `set` on bound, authorized parameters (also used for batches).
async fn set_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p);
    let zone = api.key_field(p, "zone")?;
    let env = api.key_field(p, "env")?;
    let appid = api.key_field(p, "appid")?;
    check_reserved(p, appid)?;
    let hostnames = p.list("hostname");
    if hostnames.is_empty() {
        return Err(Reply::bad_param("hostname", "required"));
    }
    let status = p
        .i64_list("status")?
        .into_iter()
        .map(|s| match s {
            1 | 2 => Ok(Status::from(s as u32)),
            s => Err(Reply::bad_param(
                "status",
                format!("{s} is not 1 (UP) or 2 (waiting)"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = p
        .list("metadata")
        .into_iter()
        .map(parse_set_metadata)
        .collect::<Result<Vec<_>, _>>()?;
    let set_timestamp = p.i64("set_timestamp")?;
    let now = api.clock.now();
    let mut req = SetRequest {
        env: env.to_string(),
        appid: appid.to_string(),
        zone: zone.to_string(),
        hostnames: hostnames.into_iter().map(str::to_string).collect(),
        status,
        metadata,
        set_timestamp: if set_timestamp == 0 {
            now
        } else {
            set_timestamp
        },
    };
    match api.registry.set(&req, now) {
        Ok(()) => {}
        Err(SetError::NotFound(h)) => {
            return Err(Reply::bad_param("hostname", format!("{h} not found")));
        }
        Err(SetError::LengthMismatch(name)) => {
            return Err(Reply::bad_param(
                name,
                "count does not match hostname count",
            ));
        }
    }
    if let Some(origin) = origin(p) {
        req.set_timestamp = req.set_timestamp.max(1);
        api.replicator.replicate(Op::Set(req), origin).await;
    }
    Ok(Reply::ok())
}

/// A batch of writes from a node of ours.
#[derive(serde::Deserialize)]
struct Batch {
    ops: Vec<BatchOp>,
}

#[derive(serde::Deserialize)]
struct BatchOp {
    path: String,
    form: String,
}

/// `POST /discovery/replicate` (ours): several replicated writes in one
/// request, applied in order, each answered as its own route would. Only
/// peer-originated writes are taken.
async fn replicate(State(api): Shared, req: Request<Body>) -> Response {
    respond(replicate_inner(&api, req).await)
}

async fn replicate_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let caller = Caller::of(&req);
    let body = crate::params::read_body(req.into_body(), api.config.limits.max_body_bytes).await?;
    api.authorize(crate::auth::Need::PeerWrite, &caller, &Params::default())?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| Reply::bad_param("ops", format!("not a batch: {e}")))?;
    let mut out = Vec::with_capacity(64 * batch.ops.len() + 2);
    out.push(b'[');
    for (i, op) in batch.ops.iter().enumerate() {
        let p = Params::from_query(&op.form);
        let result = if !is_peer(&p) {
            Err(Reply::bad_param(
                "replication",
                "a batch carries replicated writes only",
            ))
        } else {
            match op.path.as_str() {
                "/discovery/register" => register_apply(api, &p).await,
                "/discovery/renew" => renew_apply(api, &p).await,
                "/discovery/cancel" => cancel_apply(api, &p).await,
                "/discovery/set" => set_apply(api, &p).await,
                other => Err(Reply::bad_param(
                    "path",
                    format!("{other:?} cannot be batched"),
                )),
            }
        };
        let reply = result.unwrap_or_else(|e| e);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"code\":{}", reply.code_of()).as_bytes());
        if let Some(data) = reply.data_of() {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(Reply::ok().data(Bytes::from(out)).into_response())
}

fn parse_set_metadata(text: &str) -> Result<MetadataPatch, Reply> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Reply::code(BAD_REQUEST))?;
    match value {
        serde_json::Value::Null => Ok(MetadataPatch::Clear),
        serde_json::Value::Object(m) => Ok(MetadataPatch::Merge(
            m.into_iter().map(|(k, v)| (k, metadata_value(v))).collect(),
        )),
        _ => Err(Reply::bad_param("metadata", "not a JSON object or null")),
    }
}

async fn fetch_all(State(api): Shared, req: Request<Body>) -> Response {
    if let Some(r) = api.gate(true) {
        return r.into_response();
    }
    if let Err(r) = bind_authorized(&api, req, |_| crate::auth::Need::PeerRead).await {
        return r.into_response();
    }
    Reply::ok().json(&api.registry.all()).into_response()
}

/// `zone` and the required `status` bitmask of the fetch routes.
fn fetch_scope(p: &Params) -> Result<(Option<&str>, u32), Reply> {
    let zone = Some(p.str("zone")).filter(|z| !z.is_empty());
    match p.u32("status")? {
        0 => Err(Reply::bad_param("status", "required")),
        s => Ok((zone, s)),
    }
}

async fn fetch(State(api): Shared, req: Request<Body>) -> Response {
    respond(fetch_inner(&api, req).await)
}

async fn fetch_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    let p = bind(api, req).await?;
    let env = p.required("env")?;
    let appid = p.required("appid")?;
    // The nodes' own records are always right, so they are served while
    // syncing too: a peer verifying this node's record asks for them.
    if appid != naming::DISCOVERY_APPID {
        if let Some(r) = api.gate(false) {
            return Err(r);
        }
    }
    let (zone, status) = fetch_scope(&p)?;
    let reply = match api.registry.fetch(env, appid, zone, status) {
        Fetched::Found(json) => Reply::ok().data(json),
        Fetched::Unknown => Reply::code(NOT_FOUND).null(),
        Fetched::ZoneAbsent { latest_timestamp } => Reply::code(NOT_FOUND).data(Bytes::from(
            format!(r#"{{"instances":{{}},"latest_timestamp":{latest_timestamp}}}"#),
        )),
    };
    Ok(reply.into_response())
}

async fn fetchs(State(api): Shared, req: Request<Body>) -> Response {
    respond(fetchs_inner(&api, req).await)
}

async fn fetchs_inner(api: &Api, req: Request<Body>) -> Result<Response, Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    let p = bind(api, req).await?;
    let env = p.required("env")?;
    let appids = p.list("appid");
    if appids.is_empty() {
        return Err(Reply::bad_param("appid", "required"));
    }
    api.check_appids(&appids)?;
    let (zone, status) = fetch_scope(&p)?;
    let mut found = BTreeMap::new();
    for appid in appids {
        if let Fetched::Found(json) = api.registry.fetch(env, appid, zone, status) {
            found.insert(appid, json);
        }
    }
    let mut buf = Vec::with_capacity(found.values().map(Bytes::len).sum::<usize>() + 64);
    buf.push(b'{');
    for (i, (appid, json)) in found.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, appid).expect("writing to memory");
        buf.push(b':');
        buf.extend_from_slice(json);
    }
    buf.push(b'}');
    Ok(Reply::ok().data(Bytes::from(buf)).into_response())
}

/// What a long poll is about: its apps, their timestamps, its zone.
struct Watch<'p> {
    env: &'p str,
    zone: Option<&'p str>,
    apps: Vec<(&'p str, i64)>,
}

impl Watch<'_> {
    fn classify(&self, api: &Api) -> Vec<PollState> {
        let now = api.clock.now();
        self.apps
            .iter()
            .map(|(appid, since)| {
                api.registry
                    .poll_state(&AppKey::new(self.env, *appid), self.zone, *since, now)
            })
            .collect()
    }
}

/// Waits for the first change of any subscribed app.
async fn any_change(subs: &mut [crate::registry::Subscription]) {
    let futs: Vec<_> = subs.iter_mut().map(|s| Box::pin(s.changed())).collect();
    futures_util::future::select_all(futs).await;
}

/// Counts a held poll answered because of a change, and how long after it.
fn woken(api: &Api, subs: &[crate::registry::Subscription]) {
    api.metrics.wakeups.inc();
    if let Some(at) = subs.iter().filter_map(|s| s.last_change()).max() {
        api.metrics
            .wakeup_latency
            .observe(at.elapsed().as_secs_f64());
    }
}

async fn poll(State(api): Shared, headers: HeaderMap, req: Request<Body>) -> Response {
    respond(poll_inner(&api, &headers, req).await)
}

async fn poll_inner(api: &Api, headers: &HeaderMap, req: Request<Body>) -> Result<Response, Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    let p = bind(api, req).await?;
    let env = p.required("env")?;
    p.required("hostname")?;
    let appids = p.list("appid");
    let Some(appid) = appids.first().copied() else {
        return Err(Reply::bad_param("appid", "required"));
    };
    let stamps = p.i64_list("latest_timestamp")?;
    let since = if stamps.len() == appids.len() {
        stamps[0]
    } else {
        0
    };
    let watch = Watch {
        env,
        zone: Some(p.str("zone")).filter(|z| !z.is_empty()),
        apps: vec![(appid, since)],
    };
    let mut subs = [api.registry.watchers().subscribe(AppKey::new(env, appid))];
    let answer = |state: PollState| match state {
        PollState::Missing => Some(reply::poll_miss(appid)),
        PollState::Newer(json) | PollState::NewerEmpty(json) => {
            Some(Reply::ok().data(json).into_response())
        }
        PollState::Current => None,
    };
    let first = watch.classify(api).pop().unwrap_or(PollState::Missing);
    if let Some(r) = answer(first) {
        return Ok(r);
    }
    hold_until(
        api,
        headers,
        &mut subs,
        || answer(watch.classify(api).pop().unwrap_or(PollState::Missing)),
        || Reply::code(NOT_MODIFIED).into_response(),
    )
    .await
}

async fn polls(State(api): Shared, headers: HeaderMap, req: Request<Body>) -> Response {
    respond(polls_inner(&api, &headers, req).await)
}

async fn polls_inner(
    api: &Api,
    headers: &HeaderMap,
    req: Request<Body>,
) -> Result<Response, Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    let p = bind(api, req).await?;
    let env = p.required("env")?;
    p.required("hostname")?;
    let appids = p.list("appid");
    if appids.is_empty() {
        return Err(Reply::bad_param("appid", "required"));
    }
    api.check_appids(&appids)?;
    let stamps = p.i64_list("latest_timestamp")?;
    if stamps.len() != appids.len() {
        return Err(Reply::code(BAD_REQUEST));
    }
    let watch = Watch {
        env,
        zone: Some(p.str("zone")).filter(|z| !z.is_empty()),
        apps: appids.iter().copied().zip(stamps).collect(),
    };
    let mut seen = HashSet::new();
    let mut subs: Vec<_> = appids
        .iter()
        .filter(|a| seen.insert(**a))
        .map(|a| api.registry.watchers().subscribe(AppKey::new(env, *a)))
        .collect();

    let first = watch.classify(api);
    if first.iter().any(|s| matches!(s, PollState::Newer(_))) {
        return Ok(polls_answer(&watch, &first));
    }
    let missing_at_start: Vec<bool> = first.iter().map(|s| *s == PollState::Missing).collect();
    let newer = |states: &[PollState]| states.iter().any(PollState::is_newer);
    hold_until(
        api,
        headers,
        &mut subs,
        || {
            let states = watch.classify(api);
            let newly_missing = states
                .iter()
                .zip(&missing_at_start)
                .any(|(s, was)| *s == PollState::Missing && !was);
            (newer(&states) || newly_missing).then(|| polls_answer(&watch, &states))
        },
        || {
            let states = watch.classify(api);
            if newer(&states) {
                polls_answer(&watch, &states)
            } else {
                Reply::code(NOT_MODIFIED).into_response()
            }
        },
    )
    .await
}

/// Holds a long poll (spec §6): parks the request, re-decides on every
/// change of a subscribed app (`on_change` answering ends the hold), answers
/// with `on_expiry` when the hold ends, and with `-304` on shutdown.
async fn hold_until(
    api: &Api,
    headers: &HeaderMap,
    subs: &mut [crate::registry::Subscription],
    mut on_change: impl FnMut() -> Option<Response>,
    on_expiry: impl FnOnce() -> Response,
) -> Result<Response, Reply> {
    api.check_pollers()?;
    let _parked = api.registry.watchers().park();
    let hold = tokio::time::sleep(api.hold(headers));
    tokio::pin!(hold);
    loop {
        tokio::select! {
            () = any_change(subs) => {
                if let Some(r) = on_change() {
                    woken(api, subs);
                    return Ok(r);
                }
            }
            () = &mut hold => return Ok(on_expiry()),
            () = api.shutting_down() => return Ok(Reply::code(NOT_MODIFIED).into_response()),
        }
    }
}

fn polls_answer(watch: &Watch<'_>, states: &[PollState]) -> Response {
    let mut data = BTreeMap::new();
    let mut missing = Vec::new();
    for ((appid, _), state) in watch.apps.iter().zip(states) {
        match state {
            PollState::Newer(json) | PollState::NewerEmpty(json) => {
                data.insert(*appid, json);
            }
            PollState::Missing if !missing.contains(appid) => missing.push(*appid),
            PollState::Missing | PollState::Current => {}
        }
    }
    reply::polls_map(data, &missing)
}

async fn nodes(State(api): Shared) -> Response {
    if let Some(r) = api.gate(false) {
        return r.into_response();
    }
    Reply::ok().json(&api.members.nodes()).into_response()
}

/// `GET /`: the web console, compiled into the binary.
async fn console() -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("console/index.html"),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
async fn metrics(State(api): Shared) -> Response {
    let text = api
        .metrics
        .render(&api.registry, api.members.as_ref(), &api.clock);
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /status`: this node's phase, protection and replication state.
async fn status(State(api): Shared) -> Response {
    let body = serde_json::json!({
        "node": {
            "id": api.node.id,
            "addr": api.node.advertise,
            "zone": api.config.env.zone,
            "env": api.config.env.deploy_env,
            "phase": format!("{:?}", api.phase()),
        },
        "registry": {
            "instances": api.registry.len(),
            "apps": api.registry.apps(),
            "parked_polls": api.registry.parked_polls(),
        },
        "protection": api.registry.guard_state(),
        "nodes": api.members.nodes(),
        "peers": api.members.peers(),
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).expect("serializing to memory"),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok").into_response()
}

async fn readyz(State(api): Shared) -> Response {
    match api.phase() {
        Phase::Serving => (StatusCode::OK, "ready").into_response(),
        phase => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {phase:?}"),
        )
            .into_response(),
    }
}
