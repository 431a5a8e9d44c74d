//! Running a node: bind, self-register, tick, shut down.
//!
//! ```
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! use discovery_server::{config::Config, server};
//!
//! // Port 0: the OS picks; the bound address is advertised.
//! let node = server::start(Config::default(), Some("127.0.0.1:0".parse()?)).await?;
//! let url = format!("http://{}/discovery/nodes", node.addr());
//! # let _ = url;
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::{net::SocketAddr, sync::Arc};

use naming::{DISCOVERY_APPID, Instance, Status};
use rand::{SeedableRng, rngs::StdRng};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    api::{self, Api},
    clock::Clock,
    cluster::Cluster,
    config::{Config, load_schedulers},
    membership::Members,
    node::{NodeIdentity, Phase},
    registry::{InstanceKey, RegisterOptions, Registry, Renewed},
    replication::{Op, Origin, Replicator},
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is unusable.
    #[error("invalid listen address {addr:?}: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A `[tls]` file is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running node. Dropping the handle shuts the node down gracefully (in
/// the background, on the current tokio runtime), as [`shutdown`] does;
/// without a runtime it stops at once, as [`kill`] does.
///
/// [`shutdown`]: ServerHandle::shutdown
/// [`kill`]: ServerHandle::kill
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    api: Arc<Api>,
    cluster: Arc<Cluster>,
    /// `[tls]` material, reloadable.
    tls: Option<Arc<crate::tls::Tls>>,
    /// The bound `[httpServer] plainAddr`.
    plain_addr: Option<SocketAddr>,
    /// What stopping needs; `None` once stopped.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    serve: JoinHandle<()>,
}

impl Running {
    async fn shutdown(self, api: &Api, cluster: &Cluster, addr: SocketAddr) {
        api.set_phase(Phase::Draining);
        for t in &self.tasks {
            t.abort();
        }
        // Answer held polls and stop accepting first, so that clients move
        // to another node at once; then take our record out and flush.
        let _ = self.shutdown_tx.send(true);
        cancel_self(api, cluster).await;
        save_snapshot(api);
        let drain = api.config.cluster.drain_timeout;
        cluster.drain(drain).await;
        cluster.stop();
        let mut serve = self.serve;
        if tokio::time::timeout(drain, &mut serve).await.is_err() {
            warn!("connections still open after {drain:?}; closing them");
            serve.abort();
        }
        info!(addr = %addr, "stopped");
    }

    fn kill(self, cluster: &Cluster) {
        for t in &self.tasks {
            t.abort();
        }
        cluster.stop();
        let _ = self.shutdown_tx.send(true);
        self.serve.abort();
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound `[httpServer] plainAddr`, when a node with `[tls]` has one.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// Re-reads the `[tls]` files (SIGHUP). New connections, accepted and
    /// dialled, use the new material; on an error the old one stays.
    /// `Ok(false)`: the node has no `[tls]`.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(false);
        };
        tls.reload()?;
        self.cluster.use_tls(tls.client_config());
        Ok(true)
    }

    /// The handlers' state (registry, phase).
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// The registry core.
    pub fn registry(&self) -> &Arc<Registry> {
        self.api.registry()
    }

    /// Membership and replication.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The advertised `host:port`.
    pub fn advertise(&self) -> &str {
        &self.api.node.advertise
    }

    /// Resolves once the node serves reads (start-up sync and init-protect
    /// are over).
    pub async fn wait_ready(&self) {
        while self.api.phase() != Phase::Serving {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Graceful shutdown: stop taking part (cancel our own record only,
    /// replicated), answer held polls with `-304`, flush replication queues,
    /// finish in-flight requests, stop.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(&self.api, &self.cluster, self.addr).await;
        }
    }

    /// Stops abruptly, as a crash would: nothing is cancelled or flushed,
    /// connections are dropped. For tests of failure handling.
    pub fn kill(mut self) {
        if let Some(r) = self.running.take() {
            r.kill(&self.cluster);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (api, cluster, addr) =
                    (Arc::clone(&self.api), Arc::clone(&self.cluster), self.addr);
                rt.spawn(async move { r.shutdown(&api, &cluster, addr).await });
            }
            Err(_) => r.kill(&self.cluster),
        }
    }
}

/// The address clients and peers should use for a node bound to `bound`:
/// `cluster.advertise`, else the bound address, where a wildcard bind is
/// reachable on the host's primary address.
fn advertised(config: &Config, bound: SocketAddr) -> String {
    if let Some(a) = &config.cluster.advertise {
        return a.clone();
    }
    SocketAddr::new(naming::host::advertise_ip(bound.ip()), bound.port()).to_string()
}

fn self_instance(api: &Api) -> Instance {
    let env = &api.config.env;
    Instance {
        region: env.region.clone(),
        zone: env.zone.clone(),
        env: env.deploy_env.clone(),
        appid: DISCOVERY_APPID.to_string(),
        hostname: env.host.clone(),
        addrs: vec![format!(
            "{}://{}",
            if api.config.tls.enabled() {
                "https"
            } else {
                "http"
            },
            api.node.advertise
        )],
        version: env!("CARGO_PKG_VERSION").to_string(),
        // Tells peers of ours that this node takes batched replication.
        metadata: [("replication_batch".to_string(), "1".to_string())].into(),
        status: Status::Up,
        ..Default::default()
    }
}

fn register_self(api: &Api, replicator: &dyn Replicator) {
    let out = api.registry.register(
        self_instance(api),
        RegisterOptions::default(),
        api.clock.now(),
    );
    // Queued for every peer; not waited on: a node's own record needs no
    // acknowledgement (it renews it), and at start-up no peer may be
    // running yet to give one, which would delay the start by
    // `ack_timeout`.
    drop(replicator.replicate(Op::Register(out.instance.into()), Origin::Client));
}

async fn cancel_self(api: &Api, replicator: &dyn Replicator) {
    let key = InstanceKey::of(&self_instance(api));
    let now = api.clock.now();
    if let Some(gone) = api.registry.cancel(&key, now) {
        info!(appid = DISCOVERY_APPID, host = %key.hostname, "cancelled own record");
        replicator
            .replicate(Op::Cancel(gone.into(), now), Origin::Client)
            .await;
    }
}

/// Starts a node. `listen` overrides `httpServer.addr` (port 0 allowed).
pub async fn start(
    mut config: Config,
    listen: Option<SocketAddr>,
) -> Result<ServerHandle, StartError> {
    // Bad `[tls]` files stop the node before it binds anything.
    crate::tls::Tls::load(&config.tls)?;
    let addr = match listen {
        Some(a) => a,
        None => config
            .http_server
            .addr
            .parse()
            .map_err(|e: std::net::AddrParseError| StartError::Address {
                addr: config.http_server.addr.clone(),
                reason: e.to_string(),
            })?,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    if listen.is_some() {
        // `nodes` lists this node by its configured address; it now lives
        // where `listen` put it.
        if let Ok(bound) = listener.local_addr() {
            let configured = config.http_server.addr.clone();
            for n in &mut config.nodes {
                if *n == configured {
                    *n = bound.to_string();
                }
            }
        }
    }
    start_on(config, listener).await
}

/// Starts a node on a bound listener, so that the addresses of a whole
/// topology are known before any node starts.
pub async fn start_on(
    mut config: Config,
    listener: TcpListener,
) -> Result<ServerHandle, StartError> {
    // Identity values left empty take their defaults (the binary has already
    // applied flags and environment variables).
    config.fill_env(&crate::config::EnvFlags::default(), |_| None);
    let tls = crate::tls::Tls::load(&config.tls)?.map(Arc::new);
    let plain = match &config.http_server.plain_addr {
        Some(a) => {
            let addr: SocketAddr =
                a.parse()
                    .map_err(|e: std::net::AddrParseError| StartError::Address {
                        addr: a.clone(),
                        reason: e.to_string(),
                    })?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: a.clone(),
                    source,
                })?;
            warn!(
                plain_addr = %a,
                "[httpServer] plainAddr serves plain HTTP beside HTTPS: tokens and records cross it in clear"
            );
            Some(l)
        }
        None => None,
    };
    let plain_addr = plain.as_ref().and_then(|l| l.local_addr().ok());
    let bound = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.http_server.addr.clone(),
        source,
    })?;
    let advertise = advertised(&config, bound);
    let node = NodeIdentity {
        id: format!("{:016x}", rand::random::<u64>()),
        advertise: advertise.clone(),
    };
    let clock = Clock::with_offset(config.cluster.clock_offset, config.cluster.max_clock_skew);
    let registry = Arc::new(Registry::new(config.registry.params.clone()));
    for (key, s) in &config.schedulers {
        registry.set_scheduler(key, Some(s.clone()), clock.now());
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = Arc::new(config);
    let cluster = Cluster::new(
        Arc::clone(&config),
        Arc::clone(&registry),
        clock.clone(),
        node.clone(),
    );
    if let Some(tls) = &tls {
        cluster.use_tls(tls.client_config());
    }
    let replicator: Arc<dyn Replicator> = cluster.clone();
    let members: Arc<dyn Members> = cluster.clone();
    let api = Arc::new(Api::new(
        registry,
        Arc::clone(&config),
        node,
        clock.clone(),
        shutdown_rx.clone(),
        Arc::clone(&replicator),
        members,
    ));
    let has_peers = !config.nodes.iter().all(|n| *n == advertise) || !config.zones.is_empty();
    api.set_phase(if config.enable_protect {
        Phase::Protected
    } else if has_peers {
        Phase::Syncing
    } else {
        Phase::Serving
    });

    // The listener serves before the sync, so that nodes started together
    // can sync from each other.
    let app = api::router(Arc::clone(&api));
    let serve = tokio::spawn(crate::conn::serve(
        crate::conn::Listeners {
            main: listener,
            tls: tls.clone(),
            plain,
        },
        app,
        crate::conn::ConnLimits::of(&config),
        Arc::clone(&api),
        shutdown_rx.clone(),
    ));
    if !has_peers {
        if let Some(path) = &config.snapshot.path {
            match crate::snapshot::restore(&api.registry, path, clock.now()) {
                Ok(n) => {
                    info!(instances = n, path = %path.display(), "restored the registry snapshot")
                }
                Err(crate::snapshot::SnapshotError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    info!(path = %path.display(), "no snapshot yet");
                }
                Err(e) => warn!("{e}; starting empty"),
            }
        }
    }
    cluster.start();
    // Our own record exists before anyone can learn our address from the
    // log line below.
    register_self(&api, replicator.as_ref());
    info!(
        addr = %bound,
        advertise = %advertise,
        zone = %config.env.zone,
        env = %config.env.deploy_env,
        tls = config.tls.enabled(),
        "discovery listening on {bound}"
    );

    let mut tasks = vec![
        tokio::spawn(evict_loop(Arc::clone(&api))),
        tokio::spawn(self_renew_loop(Arc::clone(&api), Arc::clone(&replicator))),
        tokio::spawn(become_ready(Arc::clone(&api), Arc::clone(&cluster))),
    ];
    if config.snapshot.path.is_some() {
        tasks.push(tokio::spawn(snapshot_loop(Arc::clone(&api))));
    }
    Ok(ServerHandle {
        addr: bound,
        api,
        cluster,
        tls,
        plain_addr,
        running: Some(Running {
            shutdown_tx,
            tasks,
            serve,
        }),
    })
}

fn save_snapshot(api: &Api) {
    if let Some(path) = &api.config.snapshot.path {
        match crate::snapshot::save(&api.registry, path, api.clock.now()) {
            Ok(n) => tracing::debug!(instances = n, "snapshot written"),
            Err(e) => warn!("{e}"),
        }
    }
}

async fn snapshot_loop(api: Arc<Api>) {
    let every = api.config.snapshot.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        // File IO off the runtime's worker threads.
        let a = Arc::clone(&api);
        let _ = tokio::task::spawn_blocking(move || save_snapshot(&a)).await;
    }
}

/// Start-up sync, then init-protect, then SERVING (docs/protocol.md#start-up-and-phases).
async fn become_ready(api: Arc<Api>, cluster: Arc<Cluster>) {
    let started = tokio::time::Instant::now();
    let synced = cluster.sync().await;
    if api.config.enable_protect && !synced {
        let period = api.config.registry.init_protect_period;
        warn!(
            ?period,
            "init-protect: no peer synced us; reads answer -500 until the period ends"
        );
        tokio::time::sleep_until(started + period).await;
    }
    if matches!(api.phase(), Phase::Syncing | Phase::Protected) {
        api.set_phase(Phase::Serving);
        info!(synced, "serving reads");
    }
}

async fn evict_loop(api: Arc<Api>) {
    let every = api.config.registry.params.evict_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = StdRng::from_os_rng();
    let mut was_protected = false;
    loop {
        tick.tick().await;
        let report = api.registry.tick(api.clock.now(), &mut rng);
        let g = report.guard;
        if g.protected != was_protected {
            if g.protected {
                warn!(
                    renews = g.renews,
                    threshold = g.threshold,
                    expected = g.expected,
                    "protect mode on: renews below threshold, lease expiry suspended"
                );
            } else {
                info!(
                    renews = g.renews,
                    threshold = g.threshold,
                    "protect mode off"
                );
            }
            was_protected = g.protected;
        }
        if !report.evicted.is_empty() {
            api.metrics().evictions.inc_by(report.evicted.len() as u64);
            info!(
                evicted = report.evicted.len(),
                candidates = report.candidates,
                "evicted instances whose lease expired"
            );
        }
    }
}

async fn self_renew_loop(api: Arc<Api>, replicator: Arc<dyn Replicator>) {
    let every = api.config.registry.params.renew_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let key = InstanceKey::of(&self_instance(&api));
    loop {
        tick.tick().await;
        match api.registry.renew(&key, None, api.clock.now()) {
            Renewed::NotFound => {
                warn!("own record was gone; registering again");
                register_self(&api, replicator.as_ref());
            }
            Renewed::Ok(i) | Renewed::PeerNewer(i) | Renewed::PeerOlder(i) => {
                replicator
                    .replicate(Op::Renew(i.into()), Origin::Client)
                    .await;
            }
        }
    }
}

/// Reloads scheduler files (SIGHUP), bumping the apps whose scheduler
/// changed.
pub fn reload_schedulers(api: &Api) {
    let Some(dir) = api.config.scheduler_dir.as_deref() else {
        info!("no config directory; no schedulers to reload");
        return;
    };
    let (fresh, errors) = load_schedulers(dir);
    for e in errors {
        warn!("{e}");
    }
    let now = api.clock.now();
    for key in api.registry.scheduled_apps() {
        if !fresh.contains_key(&key) {
            api.registry.set_scheduler(&key, None, now);
        }
    }
    let n = fresh.len();
    for (key, s) in fresh {
        api.registry.set_scheduler(&key, Some(s), now);
    }
    info!(schedulers = n, "schedulers reloaded");
}
