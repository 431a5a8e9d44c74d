//! The contracts between the discovery SDK, resolvers and balancers.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use tokio::sync::watch;

use crate::{Error, Instance, InstancesInfo};

/// A boxed, sendable future, so that the traits stay object safe
/// (`Arc<dyn Registry>`, `Box<dyn Resolver>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something instances can be registered with.
///
/// ```
/// use naming::{BoxFuture, Deregister, Error, Instance, Registration, Registry};
///
/// /// A registry that only prints what it is told.
/// struct Printer;
/// struct Handle(String);
///
/// impl Deregister for Handle {
///     fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
///         Box::pin(async move {
///             println!("cancel {}", self.0);
///             Ok(())
///         })
///     }
///     fn abandon(self: Box<Self>) {
///         println!("dropped {}", self.0);
///     }
/// }
///
/// impl Registry for Printer {
///     fn register(&self, ins: Instance) -> BoxFuture<'_, Result<Registration, Error>> {
///         Box::pin(async move { Ok(Registration::new(ins.appid.clone(), Handle(ins.appid))) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let reg = Printer.register(Instance { appid: "demo.svc".into(), ..Default::default() }).await?;
/// assert_eq!(reg.appid(), "demo.svc");
/// reg.cancel().await?;
/// # Ok(()) }
/// ```
pub trait Registry: Send + Sync {
    /// Registers `instance`; resolves once the registry acknowledged it. The
    /// returned guard keeps the registration alive (renewing it) until it is
    /// cancelled or dropped.
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Registration, Error>>;
}

/// What a [`Registration`] calls to end itself; implemented by registries.
pub trait Deregister: Send + 'static {
    /// Stops renewing, deregisters and waits for the acknowledgement, within
    /// the implementation's documented bound.
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;

    /// Called when the guard is dropped without [`Registration::cancel`]:
    /// stop renewing and deregister in the background. Must not block.
    fn abandon(self: Box<Self>);
}

/// A live registration. Cancel it with [`Registration::cancel`]; dropping it
/// stops renewing and deregisters in the background, best effort.
pub struct Registration {
    appid: String,
    inner: Option<Box<dyn Deregister>>,
}

impl Registration {
    /// Wraps a registry's handle.
    pub fn new(appid: impl Into<String>, inner: impl Deregister) -> Self {
        Registration {
            appid: appid.into(),
            inner: Some(Box::new(inner)),
        }
    }

    /// The registered appid.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// Stops renewing and deregisters, waiting for the acknowledgement.
    pub async fn cancel(mut self) -> Result<(), Error> {
        match self.inner.take() {
            Some(inner) => inner.deregister().await,
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.abandon();
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// The state of one watched app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resolution {
    /// Nothing is known yet.
    #[default]
    Pending,
    /// The registry's latest answer (it may hold zero instances).
    Found(Arc<InstancesInfo>),
    /// The registry does not know the app in this env.
    NotFound {
        /// The appid.
        appid: String,
        /// The env it was looked up in; shown so that a mismatch is visible.
        env: String,
    },
}

impl Resolution {
    /// The instances, when found.
    pub fn found(&self) -> Option<&Arc<InstancesInfo>> {
        match self {
            Resolution::Found(info) => Some(info),
            _ => None,
        }
    }
}

/// A watch on one appid with one set of options.
///
/// ```
/// use std::sync::Arc;
/// use naming::{InstancesInfo, Resolution, Resolver};
/// use tokio::sync::watch;
///
/// /// A resolver whose answer never changes.
/// struct Fixed(watch::Sender<Resolution>);
///
/// impl Resolver for Fixed {
///     fn appid(&self) -> &str { "demo.svc" }
///     fn watch(&self) -> watch::Receiver<Resolution> { self.0.subscribe() }
///     fn close(&self) {}
/// }
///
/// let (tx, _) = watch::channel(Resolution::Found(Arc::new(InstancesInfo::default())));
/// let r = Fixed(tx);
/// assert!(r.fetch().is_some());
/// ```
pub trait Resolver: Send + Sync {
    /// The watched appid.
    fn appid(&self) -> &str;

    /// A coalescing view of the app: a slow consumer sees the latest state and
    /// never stalls the producer.
    fn watch(&self) -> watch::Receiver<Resolution>;

    /// The latest snapshot, if the app was found.
    fn fetch(&self) -> Option<Arc<InstancesInfo>> {
        self.watch().borrow().found().cloned()
    }

    /// Stops watching. Dropping the resolver does the same.
    fn close(&self);
}

/// Options of one resolver: the resolution pipeline's filter, zone and subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Keep instances having an address with this scheme (`grpc`, `http`).
    pub scheme: String,
    /// Keep instances whose `cluster` metadata is listed; empty keeps all.
    pub clusters: Vec<String>,
    /// The caller's zone; `None` uses the client's configured zone.
    pub client_zone: Option<String>,
    /// Deterministic subset size per zone; 0 keeps all.
    pub subset: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            scheme: "grpc".to_string(),
            clusters: Vec::new(),
            client_zone: None,
            subset: 50,
        }
    }
}

/// Builds resolvers for one target scheme (`discovery`, `direct`).
pub trait Builder: Send + Sync {
    /// The scheme this builder serves.
    fn scheme(&self) -> &str;

    /// A resolver for `appid`.
    fn build(&self, appid: &str, options: BuildOptions) -> Result<Box<dyn Resolver>, Error>;
}
