//! A kratos v2-style facade over the same client, for users who
//! know `registry.Registrar` / `registry.Discovery` / `registry.Watcher`.
//!
//! | kratos v2 | here |
//! |---|---|
//! | `ServiceInstance.id` / `name` / `version` | hostname / appid / version |
//! | `.endpoints` (`grpc://h:p?isSecure=false`) | addrs; the query is dropped on register, added on read |
//! | `.metadata` | metadata, plus `region`, `zone`, `env`, `hostname` on read |
//! | `Registrar.register` / `deregister` | register / cancel, kept by (name, id) |
//! | `Discovery.get_service` | an immediate `fetchs` |
//! | `Discovery.watch` → `Watcher{next, stop}` | a [`Watch`]; `next` yields the first non-empty list, then each change |
//!
//! ```no_run
//! use discovery_client::{Config, Discovery, v2::{Registry, ServiceInstance}};
//!
//! # async fn run() -> Result<(), naming::Error> {
//! let registry = Registry::new(Discovery::new(Config::from_env())?);
//! let me = ServiceInstance {
//!     name: "demo.service".into(),
//!     endpoints: vec!["grpc://127.0.0.1:9000?isSecure=false".into()],
//!     ..Default::default()
//! };
//! registry.register(&me).await?;
//! let mut watcher = registry.watch("demo.service")?;
//! let first = watcher.next().await?;
//! println!("{first:?}");
//! registry.deregister(&me).await?;
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use naming::{Elapsed, Error, Instance, Registration, Registry as _, Resolution};
use tokio::sync::watch;

use crate::{Discovery, Watch};

/// Bound of register and deregister, as in kratos v2's lifecycle.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A service instance as kratos v2 describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInstance {
    /// Unique id: the hostname. Empty on register means the client's.
    pub id: String,
    /// Service name: the appid.
    pub name: String,
    /// Build version.
    pub version: String,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// `scheme://host:port[?query]` endpoints.
    pub endpoints: Vec<String>,
}

impl ServiceInstance {
    /// The v2 view of a registry instance.
    pub fn from_instance(ins: &Instance) -> Self {
        let mut metadata = ins.metadata.clone();
        for (k, v) in [
            ("region", &ins.region),
            ("zone", &ins.zone),
            ("env", &ins.env),
            ("hostname", &ins.hostname),
        ] {
            metadata.insert(k.to_string(), v.clone());
        }
        ServiceInstance {
            id: ins.hostname.clone(),
            name: ins.appid.clone(),
            version: ins.version.clone(),
            metadata,
            endpoints: ins
                .addrs
                .iter()
                .map(|a| {
                    if a.contains('?') {
                        a.clone()
                    } else {
                        format!("{a}?isSecure=false")
                    }
                })
                .collect(),
        }
    }

    /// The registry instance to register (identity fields come from the
    /// client's config; the endpoints' queries are dropped, as they mean
    /// nothing to routing).
    pub fn to_instance(&self) -> Instance {
        Instance {
            appid: self.name.clone(),
            hostname: self.id.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            addrs: self
                .endpoints
                .iter()
                .map(|e| e.split_once('?').map_or(e.as_str(), |(a, _)| a).to_string())
                .collect(),
            ..Default::default()
        }
    }
}

/// Registrar and discovery in one, like kratos v2's discovery plug-in.
#[derive(Debug)]
pub struct Registry {
    discovery: Discovery,
    registrations: tokio::sync::Mutex<HashMap<(String, String), Registration>>,
}

impl Registry {
    /// Wraps a client.
    pub fn new(discovery: Discovery) -> Self {
        Registry {
            discovery,
            registrations: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The underlying client.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    fn key(&self, si: &ServiceInstance) -> (String, String) {
        let id = if si.id.is_empty() {
            self.discovery.config().hostname.clone()
        } else {
            si.id.clone()
        };
        (si.name.clone(), id)
    }

    /// Registers `si` (bounded by 10 s) and renews it until deregistered.
    pub async fn register(&self, si: &ServiceInstance) -> Result<(), Error> {
        let reg =
            tokio::time::timeout(LIFECYCLE_TIMEOUT, self.discovery.register(si.to_instance()))
                .await
                .map_err(|_| Error::Timeout(Elapsed(LIFECYCLE_TIMEOUT)))??;
        self.registrations.lock().await.insert(self.key(si), reg);
        Ok(())
    }

    /// Deregisters `si`; unknown instances are a no-op.
    pub async fn deregister(&self, si: &ServiceInstance) -> Result<(), Error> {
        let reg = self.registrations.lock().await.remove(&self.key(si));
        match reg {
            Some(reg) => tokio::time::timeout(LIFECYCLE_TIMEOUT, reg.cancel())
                .await
                .map_err(|_| Error::Timeout(Elapsed(LIFECYCLE_TIMEOUT)))?,
            None => Ok(()),
        }
    }

    /// The UP instances of `name`, fetched now. An unknown name is
    /// [`Error::NotFound`].
    pub async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>, Error> {
        match self.discovery.fetch(name).await? {
            Some(info) => Ok(info.iter().map(ServiceInstance::from_instance).collect()),
            None => Err(Error::NotFound {
                appid: name.to_string(),
                env: self.discovery.config().env.clone(),
            }),
        }
    }

    /// Watches `name`.
    pub fn watch(&self, name: &str) -> Result<Watcher, Error> {
        let watch = self.discovery.watch(name)?;
        let rx = watch.subscribe();
        Ok(Watcher {
            _watch: watch,
            rx,
            first: true,
        })
    }
}

/// A v2 watcher: [`Watcher::next`] yields the first non-empty list, then
/// each change (possibly empty).
#[derive(Debug)]
pub struct Watcher {
    _watch: Watch,
    rx: watch::Receiver<Resolution>,
    first: bool,
}

impl Watcher {
    /// The next list of instances. Fails with [`Error::Closed`] once the
    /// client is closed.
    pub async fn next(&mut self) -> Result<Vec<ServiceInstance>, Error> {
        if self.first {
            let r = self
                .rx
                .wait_for(|r| r.found().is_some_and(|i| !i.is_empty()))
                .await
                .map_err(|_| Error::Closed)?
                .clone();
            self.first = false;
            return Ok(list(&r));
        }
        self.rx.changed().await.map_err(|_| Error::Closed)?;
        Ok(list(&self.rx.borrow_and_update()))
    }

    /// Stops watching (same as dropping).
    pub fn stop(self) {}
}

fn list(r: &Resolution) -> Vec<ServiceInstance> {
    r.found()
        .map(|i| i.iter().map(ServiceInstance::from_instance).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_metadata_map_both_ways() {
        let ins = Instance {
            region: "r".into(),
            zone: "z".into(),
            env: "dev".into(),
            appid: "demo".into(),
            hostname: "h1".into(),
            addrs: vec!["grpc://127.0.0.1:9000".into()],
            version: "v1".into(),
            metadata: BTreeMap::from([
                ("zone".into(), "stale".into()),
                ("weight".into(), "5".into()),
            ]),
            ..Default::default()
        };
        let si = ServiceInstance::from_instance(&ins);
        assert_eq!(si.id, "h1");
        assert_eq!(si.name, "demo");
        assert_eq!(si.endpoints, ["grpc://127.0.0.1:9000?isSecure=false"]);
        assert_eq!(si.metadata["zone"], "z", "instance values win");
        assert_eq!(si.metadata["weight"], "5");
        let back = si.to_instance();
        assert_eq!(back.addrs, ins.addrs);
        assert_eq!(back.appid, "demo");
    }
}
