//! Client configuration, mirroring the kratos v0.x gRPC client config.
//!
//! | Setting | Default | Meaning |
//! |---|---|---|
//! | `dial` | 10 s | bound of [`Balanced::connect`](crate::Balanced::connect); building never blocks |
//! | `timeout` | 250 ms | per-RPC deadline unless the caller's or a per-method one is shorter |
//! | `subset` | 50 | added to the target when it has none |
//! | `zone`, `clusters` | none | added to the target as `zone=`, `cluster=` |
//! | `keepalive_interval` / `keepalive_timeout` | 1 s / 1 s | HTTP/2 keepalive; pings while idle; a connection whose ping goes unanswered is closed and its endpoint ejected |
//! | `connect_timeout` | 1 s | bound of one connection attempt (TCP connect plus a first answered request) |
//! | `balancer` | `p2c` | `p2c`, `wrr`, `round_robin` or `random` |
//! | `static_weights` | false | `wrr` uses the registered weights as they are instead of adjusting them every second |
//! | `idempotent_methods` | none | full methods (or `*`) that may be hedged or retried on another endpoint |
//! | `hedge_percent` | 30 | an idempotent call with no response after this share of its deadline is sent to a second endpoint too |
//! | `client_id` | `$HOSTNAME` | subset key; pass the SDK's hostname |
//!
//! ```
//! use std::time::Duration;
//! use discovery_tonic::{BalancerKind, ClientConfig};
//!
//! let cfg: ClientConfig = toml::from_str(r#"
//!     dial = "10s"
//!     timeout = "250ms"
//!     subset = 50
//!     zone = "sh001"
//!     clusters = ["c1"]
//!     balancer = "wrr"
//!     idempotent_methods = ["/helloworld.Greeter/SayHello"]
//!     [method_timeouts]
//!     "/helloworld.Greeter/SayHello" = "1s"
//! "#).unwrap();
//! assert_eq!(cfg.timeout, Duration::from_millis(250));
//! assert_eq!(cfg.balancer, BalancerKind::Wrr);
//!
//! let same = ClientConfig::default().zone("sh001").cluster("c1").balancer(BalancerKind::Wrr)
//!     .method_timeout("/helloworld.Greeter/SayHello", Duration::from_secs(1))
//!     .idempotent("/helloworld.Greeter/SayHello");
//! assert_eq!(cfg, same);
//! assert!(cfg.is_idempotent("/helloworld.Greeter/SayHello"));
//! assert!(!cfg.is_idempotent("/helloworld.Greeter/Other"));
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::picker::{P2c, Picker, Random, RoundRobin, SmoothWrr};

/// Which picker a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Power of two choices.
    #[default]
    P2c,
    /// Smooth weighted round robin.
    Wrr,
    /// Round robin ignoring weights.
    RoundRobin,
    /// Uniform random.
    Random,
}

impl BalancerKind {
    /// A fresh picker of this kind (`wrr` with dynamic weights).
    pub fn picker(self) -> Arc<dyn Picker> {
        match self {
            BalancerKind::P2c => Arc::new(P2c::new()),
            BalancerKind::Wrr => Arc::new(SmoothWrr::dynamic()),
            BalancerKind::RoundRobin => Arc::new(RoundRobin::new()),
            BalancerKind::Random => Arc::new(Random::new()),
        }
    }
}

/// An unknown balancer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balancer {0:?}: expected p2c, wrr, round_robin or random")]
pub struct UnknownBalancer(pub String);

impl FromStr for BalancerKind {
    type Err = UnknownBalancer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "p2c" => Ok(BalancerKind::P2c),
            "wrr" => Ok(BalancerKind::Wrr),
            "round_robin" | "rr" => Ok(BalancerKind::RoundRobin),
            "random" => Ok(BalancerKind::Random),
            _ => Err(UnknownBalancer(s.to_string())),
        }
    }
}

/// Settings of a balanced client; see the [module docs](self) for defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Bound of [`Balanced::connect`](crate::Balanced::connect).
    #[serde(deserialize_with = "de_duration")]
    pub dial: Duration,
    /// Default per-RPC deadline.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Per-method deadlines, keyed by full method (`/pkg.Service/Method`).
    #[serde(deserialize_with = "de_durations")]
    pub method_timeouts: BTreeMap<String, Duration>,
    /// Subset size added to targets that have none; 0 disables.
    pub subset: usize,
    /// Client zone, added to targets as `zone=`.
    pub zone: Option<String>,
    /// Clusters, added to targets as `cluster=`.
    pub clusters: Vec<String>,
    /// HTTP/2 keepalive ping interval.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_timeout: Duration,
    /// Whether to ping idle connections (the original's inverted
    /// `PermitWithoutStream = false` meant yes).
    pub keepalive_while_idle: bool,
    /// Bound of one connection attempt to an endpoint.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// How long a call waits for a first endpoint while resolution is pending
    /// or first connections run (never past its deadline).
    #[serde(deserialize_with = "de_duration")]
    pub startup_grace: Duration,
    /// The picker.
    pub balancer: BalancerKind,
    /// `wrr` only: keep the registered weights instead of adjusting them to
    /// each endpoint's success rate, latency and `cpu_usage`.
    pub static_weights: bool,
    /// Full methods (`/pkg.Service/Method`, or `*` for all) that are safe to
    /// send twice: their calls are hedged after `hedge_percent` of the
    /// deadline without a response, and retried on another endpoint after a
    /// transport failure. Their request bodies are buffered, so list unary
    /// methods only. Calls of other methods are sent again only when the
    /// server refused them unprocessed.
    pub idempotent_methods: BTreeSet<String>,
    /// Percent of an idempotent call's deadline after which, with no
    /// response yet, a second endpoint is asked too; the first answer wins.
    /// 0 disables hedging (transport failures are still retried).
    pub hedge_percent: u32,
    /// Deploy env, shown in "no instances" errors.
    pub env: String,
    /// Own appid, sent as `caller` metadata when not empty.
    pub caller: String,
    /// Own colour (`DEPLOY_COLOR`): requests without `color` metadata use it.
    pub color: String,
    /// The subset key: the SDK's hostname. Defaults to `$HOSTNAME`, else the
    /// kernel's hostname, so that clients on different hosts get different
    /// subsets even when nobody sets it.
    pub client_id: String,
    /// PEM bundle verifying the certificates of `grpcs://` endpoints
    /// (docs/tls.md#grpc). Without it, `grpcs://` endpoints are skipped.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate shown to `grpcs://` endpoints that ask for
    /// one; needs `key`.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            dial: Duration::from_secs(10),
            timeout: Duration::from_millis(250),
            method_timeouts: BTreeMap::new(),
            subset: crate::target::DEFAULT_SUBSET,
            zone: None,
            clusters: Vec::new(),
            // Short, so that a peer that vanished without a reset (a killed
            // container, a partition) is noticed within about two seconds
            // even between calls.
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            keepalive_while_idle: true,
            connect_timeout: Duration::from_secs(1),
            startup_grace: Duration::from_secs(1),
            balancer: BalancerKind::P2c,
            static_weights: false,
            idempotent_methods: BTreeSet::new(),
            hedge_percent: 30,
            env: "dev".to_string(),
            caller: String::new(),
            color: String::new(),
            client_id: default_client_id(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

fn default_client_id() -> String {
    std::env::var(naming::env::HOSTNAME)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(naming::host::hostname)
}

impl ClientConfig {
    /// Sets `dial`.
    pub fn dial(mut self, d: Duration) -> Self {
        self.dial = d;
        self
    }

    /// Sets the default per-RPC `timeout`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets the deadline of one full method.
    pub fn method_timeout(mut self, method: impl Into<String>, d: Duration) -> Self {
        self.method_timeouts.insert(method.into(), d);
        self
    }

    /// Sets `subset`.
    pub fn subset(mut self, n: usize) -> Self {
        self.subset = n;
        self
    }

    /// Sets the client zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Adds a cluster.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.clusters.push(cluster.into());
        self
    }

    /// Sets the HTTP/2 keepalive interval and timeout.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Sets the CA bundle that verifies `grpcs://` endpoints.
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Sets the client certificate and key shown to `grpcs://` endpoints.
    pub fn identity(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Sets the connect timeout of one attempt.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the startup grace.
    pub fn startup_grace(mut self, d: Duration) -> Self {
        self.startup_grace = d;
        self
    }

    /// Sets the picker.
    pub fn balancer(mut self, kind: BalancerKind) -> Self {
        self.balancer = kind;
        self
    }

    /// `wrr` only: use the registered weights as they are.
    pub fn static_weights(mut self, on: bool) -> Self {
        self.static_weights = on;
        self
    }

    /// Marks a full method (or `*`, every method) as idempotent: hedged and
    /// retried on another endpoint.
    pub fn idempotent(mut self, method: impl Into<String>) -> Self {
        self.idempotent_methods.insert(method.into());
        self
    }

    /// Sets the share of the deadline after which an idempotent call is
    /// hedged (0 disables hedging).
    pub fn hedge_percent(mut self, percent: u32) -> Self {
        self.hedge_percent = percent.min(100);
        self
    }

    /// Whether calls of `method` may be sent twice.
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.idempotent_methods.contains(method) || self.idempotent_methods.contains("*")
    }

    /// The picker `balancer` and `static_weights` name.
    pub fn picker(&self) -> Arc<dyn Picker> {
        match (self.balancer, self.static_weights) {
            (BalancerKind::Wrr, true) => Arc::new(SmoothWrr::new()),
            (kind, _) => kind.picker(),
        }
    }

    /// Sets the env shown in errors.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Sets the `caller` metadata (own appid).
    pub fn caller(mut self, appid: impl Into<String>) -> Self {
        self.caller = appid.into();
        self
    }

    /// Sets the default request colour.
    pub fn color(mut self, color: impl Into<String>) -> Self {
        self.color = color.into();
        self
    }

    /// Sets the subset key (the SDK's hostname).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// The deadline of a call to `method` when the caller set none.
    pub fn timeout_for(&self, method: &str) -> Duration {
        self.method_timeouts
            .get(method)
            .copied()
            .unwrap_or(self.timeout)
    }
}

/// A duration that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a Go duration such as \"250ms\" or \"1m30s\" (units ns, us, ms, s, m, h)"
)]
pub struct InvalidDuration(pub String);

/// Parses a Go-syntax duration (`"250ms"`, `"10s"`, `"1m30s"`), as the
/// kratos client config writes them.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(discovery_tonic::config::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(discovery_tonic::config::parse_duration("250").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    naming::parse_go_duration(s).map_err(|_| InvalidDuration(s.to_string()))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| Ok((k, parse_duration(&v).map_err(serde::de::Error::custom)?)))
        .collect()
}
