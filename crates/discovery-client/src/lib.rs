//! HTTP SDK for a bilibili/discovery-compatible registry: register, renew and
//! cancel instances, watch apps, follow the registry's own node list.
//!
//! One [`Discovery`] per process: it implements [`naming::Registry`] (the
//! provider side, [`provider`]), and [`naming::Builder`] for the `discovery`
//! scheme (the consumer side, [`consumer`]). Every watched appid shares one
//! long-poll loop, and the first resolve of an app takes one round trip, not
//! a long-poll hold.
//!
//! ```
//! use discovery_client::{Config, Discovery};
//! use naming::{Instance, Registry};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A discovery node in this process, on a free port.
//! # let node = discovery_server::server::start(
//! #     discovery_server::config::Config::default(),
//! #     Some("127.0.0.1:0".parse()?),
//! # ).await?;
//! # node.wait_ready().await;
//! # let addr = node.addr().to_string();
//! // DISCOVERY_NODES, ZONE, DEPLOY_ENV, HOSTNAME… fill what code leaves unset.
//! let discovery = Discovery::new(Config::builder().nodes([addr.as_str()]).build())?;
//!
//! // Provider: registered until cancelled; renewed every 30 s meanwhile.
//! let registration = discovery
//!     .register(Instance {
//!         appid: "demo.service".into(),
//!         addrs: vec!["grpc://127.0.0.1:9000".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! // Consumer: a coalescing watch of the app; the first answer takes one
//! // round trip, not a long-poll hold.
//! let watch = discovery.watch("demo.service")?;
//! let first = watch.resolved(std::time::Duration::from_secs(5)).await?;
//! assert!(format!("{first:?}").contains("grpc://127.0.0.1:9000"), "{first:?}");
//!
//! registration.cancel().await?;
//! discovery.close().await?;
//! # node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] (settings, their environment fallbacks and clap
//! flags), [`provider`], [`consumer`], [`backoff`], and [`v2`], a kratos
//! v2-style facade. The `discoveryctl` binary (register, fetch, watch, set,
//! nodes) and `examples/register.rs`, `examples/watch.rs` show the SDK in
//! use.

pub use naming::backoff; // moved to `naming`; the path stays
pub mod config;
pub mod consumer;
pub mod provider;
mod transport;
pub mod v2;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use naming::Error;
use parking_lot::Mutex;
use tokio::task::{JoinHandle, JoinSet};

pub use config::{Config, ConfigBuilder};
pub use consumer::Watch;
pub use provider::SetRequest;

use crate::{consumer::Apps, provider::RegEntry, transport::Transport};

/// State shared by the handles and the background tasks.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) transport: Transport,
    pub(crate) closed: AtomicBool,
    /// Live registrations by appid.
    pub(crate) registrations: Mutex<HashMap<String, RegEntry>>,
    /// Watched apps and the poll set.
    pub(crate) apps: Apps,
    /// The `hostname` of this client's polls: the configured hostname plus
    /// a per-client suffix (see [`Discovery::poll_identity`]).
    pub(crate) poll_identity: String,
    /// Background cancels of registrations dropped without `cancel`;
    /// [`Discovery::close`] waits for them.
    pub(crate) abandoned: Mutex<JoinSet<()>>,
}

impl Core {
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

/// Owner of the poll loop; dropped with the last [`Discovery`] clone or
/// resolver.
#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    poll_loop: Mutex<Option<JoinHandle<()>>>,
    /// Short-lived `fetchs` tasks of new watches.
    fetches: Mutex<JoinSet<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.poll_loop.lock().take() {
            task.abort();
        }
        self.fetches.lock().abort_all();
    }
}

/// The SDK client: a cheap, cloneable handle. See the [crate docs](crate).
///
/// The poll loop runs while any clone, [`Watch`] or resolver built from it
/// lives, and stops on [`Discovery::close`]. Registrations are independent
/// guards: they keep renewing until cancelled or dropped, even after every
/// `Discovery` clone is gone.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl Discovery {
    /// Starts a client on the configured seed nodes. Does no IO: the poll
    /// loop (which also learns the registry's node list) starts in the
    /// background. Must be called within a tokio runtime.
    ///
    /// Fails with [`Error::NoNodes`] when no node is configured, naming
    /// `DISCOVERY_NODES` and showing the resolved identity.
    pub fn new(config: Config) -> Result<Discovery, Error> {
        if config.nodes.is_empty() {
            return Err(Error::NoNodes {
                region: config.region,
                zone: config.zone,
                env: config.env,
                hostname: config.hostname,
            });
        }
        for (name, d) in [
            ("renew_interval", config.renew_interval),
            ("request_timeout", config.request_timeout),
            ("poll_timeout", config.poll_timeout),
            ("first_poll_timeout", config.first_poll_timeout),
            ("node_rotation", config.node_rotation),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidConfig(format!(
                    "{name} must be greater than zero"
                )));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidConfig("Discovery::new must be called within a tokio runtime".into())
        })?;
        let poll_identity = format!("{}#{:08x}", config.hostname, rand::random::<u32>());
        let core = Arc::new(Core {
            transport: Transport::new(&config)?,
            apps: Apps::new(&config),
            config,
            closed: AtomicBool::new(false),
            registrations: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(JoinSet::new()),
            poll_identity,
        });
        let poll_loop = runtime.spawn(consumer::poll_loop(Arc::clone(&core)));
        Ok(Discovery {
            inner: Arc::new(Inner {
                core,
                poll_loop: Mutex::new(Some(poll_loop)),
                fetches: Mutex::new(JoinSet::new()),
            }),
        })
    }

    /// The resolved settings.
    pub fn config(&self) -> &Config {
        &self.core().config
    }

    /// The `hostname` this client's long polls carry: the configured
    /// hostname with a suffix unique to this client, e.g. `web-1#9f3a0c21`.
    /// Registrations, renews and cancels carry the configured hostname.
    ///
    /// A Go discovery server keeps one waiter per (appid, poll hostname),
    /// shared by every poll with that hostname: a change wakes as many polls
    /// as share it, whichever they are, so a client watching other apps can
    /// take the wake-up of one that watches this app, which then waits for
    /// the 30 s hold to end. Several clients in one process share the
    /// process's hostname; the suffix gives each its own waiters.
    pub fn poll_identity(&self) -> &str {
        &self.core().poll_identity
    }

    /// The node list in use (seeds, or what self-discovery found).
    pub fn nodes(&self) -> Vec<String> {
        self.core().transport.nodes()
    }

    /// The node the next call goes to.
    pub fn current_node(&self) -> String {
        self.core().transport.current().0
    }

    /// Waits until the registry's node list was learned once (or found
    /// empty), at most `timeout` (3 s by default). Returns whether it was;
    /// on `false` the SDK goes on with the seeds. Never required.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx = self.core().apps.nodes_ready();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            tracing::warn!(
                ?timeout,
                nodes = ?self.nodes(),
                "discovery node list not learned in time; using the seeds"
            );
        }
        ok
    }

    /// Cancels every registration (each bounded by `cancel_timeout`, all at
    /// once), waits for the background cancels of dropped registrations,
    /// stops the poll loop and drops the connection pool. Later calls
    /// fail with [`Error::Closed`]; cancelling a registration afterwards is a
    /// no-op. Returns the first cancel error, if any.
    pub async fn close(&self) -> Result<(), Error> {
        let core = Arc::clone(self.core());
        if core.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let task = self.inner.poll_loop.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let mut fetches = std::mem::take(&mut *self.inner.fetches.lock());
        fetches.shutdown().await;
        let result = provider::cancel_all(&core).await;
        let mut dropped = std::mem::take(&mut *core.abandoned.lock());
        while dropped.join_next().await.is_some() {}
        core.apps.close();
        core.transport.close();
        result
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    pub(crate) fn spawn_fetch(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.inner.fetches.lock();
        // Reap finished fetches so the set does not grow with every watch.
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }
}
