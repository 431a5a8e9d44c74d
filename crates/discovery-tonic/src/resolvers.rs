//! The explicit map from target scheme to resolver builder, and the
//! `direct` builder that needs no registry.
//!
//! There is no hidden global: whoever builds a client hands a [`Resolvers`]
//! over. The `discovery` scheme is registered by the SDK crate
//! (`discovery-client`), which implements [`naming::Builder`]; this crate only
//! knows the trait. An unknown scheme is an error at build time, never a
//! fallback to dialling the target text.
//!
//! ```
//! use discovery_tonic::{Resolvers, Target};
//!
//! let resolvers = Resolvers::new(); // knows `direct`
//! let target: Target = "direct://default/127.0.0.1:9000,127.0.0.1:9001".parse().unwrap();
//! let resolver = resolvers.build(&target).unwrap();
//! let info = resolver.fetch().unwrap();
//! assert_eq!(info.len(), 2);
//!
//! let unknown: Target = "discovery://default/demo.service".parse().unwrap();
//! assert!(resolvers.build(&unknown).is_err());
//! ```

use std::{collections::BTreeMap, fmt, sync::Arc};

use naming::{BuildOptions, Builder, Error, Instance, InstancesInfo, Resolution, Resolver, Status};
use tokio::sync::watch;

use crate::Target;

/// Resolver builders by scheme.
#[derive(Clone)]
pub struct Resolvers {
    builders: BTreeMap<String, Arc<dyn Builder>>,
}

impl Resolvers {
    /// A map holding the [`DirectBuilder`].
    pub fn new() -> Self {
        Resolvers::empty().with(Arc::new(DirectBuilder))
    }

    /// A map holding nothing.
    pub fn empty() -> Self {
        Resolvers {
            builders: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the builder of `builder.scheme()`.
    pub fn with(mut self, builder: Arc<dyn Builder>) -> Self {
        self.insert(builder);
        self
    }

    /// Adds (or replaces) the builder of `builder.scheme()`.
    pub fn insert(&mut self, builder: Arc<dyn Builder>) {
        self.builders.insert(builder.scheme().to_string(), builder);
    }

    /// The builder of `scheme`.
    pub fn get(&self, scheme: &str) -> Option<&Arc<dyn Builder>> {
        self.builders.get(scheme)
    }

    /// Builds a resolver for `target` with the builder of its scheme.
    pub fn build(&self, target: &Target) -> Result<Box<dyn Resolver>, Error> {
        let builder = self
            .get(&target.scheme)
            .ok_or_else(|| Error::InvalidTarget {
                target: target.to_string(),
                reason: format!(
                    "no resolver for scheme {:?} (known: {})",
                    target.scheme,
                    self.builders.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
        builder.build(&target.endpoint, target.build_options())
    }
}

impl Default for Resolvers {
    fn default() -> Self {
        Resolvers::new()
    }
}

impl fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.builders.keys()).finish()
    }
}

/// Builds resolvers for `direct://<any>/host:port,host:port`: one immediate
/// snapshot, weight 10, no colour, in the client zone, no registry traffic.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectBuilder;

/// The `appid` reported by direct resolvers.
pub const DIRECT_APPID: &str = "direct";

impl Builder for DirectBuilder {
    fn scheme(&self) -> &str {
        "direct"
    }

    fn build(&self, endpoint: &str, options: BuildOptions) -> Result<Box<dyn Resolver>, Error> {
        let invalid = |reason: String| Error::InvalidTarget {
            target: format!("direct:///{endpoint}"),
            reason,
        };
        let zone = options.client_zone.unwrap_or_default();
        let mut list: Vec<Instance> = Vec::new();
        for addr in endpoint.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("{addr:?} is not host:port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid(format!("{addr:?} is not host:port")));
            }
            if list.iter().any(|i| i.hostname == addr) {
                continue;
            }
            list.push(Instance {
                zone: zone.clone(),
                appid: DIRECT_APPID.to_string(),
                hostname: addr.to_string(),
                addrs: vec![format!("grpc://{addr}")],
                status: Status::Up,
                ..Default::default()
            });
        }
        if list.is_empty() {
            return Err(invalid("no address".to_string()));
        }
        let info = InstancesInfo {
            instances: BTreeMap::from([(zone, list)]),
            scheduler: None,
            latest_timestamp: 0,
        };
        let (tx, _) = watch::channel(Resolution::Found(Arc::new(info)));
        Ok(Box::new(DirectResolver { tx }))
    }
}

/// The resolver of a `direct://` target; its snapshot never changes.
#[derive(Debug)]
pub struct DirectResolver {
    tx: watch::Sender<Resolution>,
}

impl Resolver for DirectResolver {
    fn appid(&self) -> &str {
        DIRECT_APPID
    }

    fn watch(&self) -> watch::Receiver<Resolution> {
        self.tx.subscribe()
    }

    fn close(&self) {}
}
