//! Configuration: the Go original's TOML, accepted unchanged, plus our
//! `[registry]`, `[cluster]` and `[limits]` tables (spec §8).
//!
//! Keys are case-insensitive (`DeployEnv` = `deployenv`), durations use Go
//! syntax (`"40s"`, `"1m30s"`), unknown keys are reported and ignored, and
//! invalid values refuse to start with an error naming the key.
//!
//! ```
//! use discovery_server::config::Config;
//!
//! let (cfg, warnings) = Config::parse(r#"
//!     nodes = ["127.0.0.1:7171"]
//!     [env]
//!     DeployEnv = "dev"
//!     [httpServer]
//!     addr = "127.0.0.1:7171"
//!     timeout = "40s"
//!     [registry]
//!     lease = "3s"
//!     evict_interval = "1s"
//! "#).unwrap();
//! assert!(warnings.is_empty());
//! assert_eq!(cfg.registry.params.lease.as_secs(), 3);
//! assert_eq!(cfg.env.deploy_env, "dev");
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use naming::Scheduler;
use serde::{Deserialize, Deserializer};

use crate::registry::{AppKey, RegistryParams};

/// The embedded default: a one-node cluster on 127.0.0.1:7171.
pub const DEFAULT_TOML: &str = r#"nodes = ["127.0.0.1:7171"]
enableprotect = false
[httpServer]
addr = "127.0.0.1:7171"
timeout = "40s"
[httpClient]
dial = "1s"
keepAlive = "120s"
timeout = "40s"
[log]
stdout = true
"#;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or a value has the wrong type.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid {
        /// The key, as `table.key`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Node identity (`[env]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Env {
    /// Region.
    pub region: String,
    /// Zone of this node.
    pub zone: String,
    /// Hostname of this node.
    pub host: String,
    /// Deploy env of this node (`DeployEnv`); the cluster's own records
    /// live in it.
    pub deploy_env: String,
}

/// `[httpServer]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServer {
    /// Listen (and, without `cluster.advertise`, advertised) address.
    pub addr: String,
    /// Request deadline.
    pub timeout: Duration,
    /// Read timeout; `None` (unset or 0) = `timeout`, see
    /// [`HttpServer::read_deadline`].
    pub read_timeout: Option<Duration>,
    /// Write timeout; caps the poll hold at `write_timeout − 1 s`.
    pub write_timeout: Option<Duration>,
}

impl HttpServer {
    /// How long a client may take to send a request's head, and then its
    /// body: `readTimeout`, or the request deadline `timeout` when
    /// `readTimeout` is unset, so that no connection is ever unbounded.
    /// Idle keep-alive connections are closed after it too.
    pub fn read_deadline(&self) -> Duration {
        self.read_timeout.unwrap_or(self.timeout)
    }
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer {
            addr: "127.0.0.1:7171".into(),
            timeout: Duration::from_secs(40),
            read_timeout: None,
            write_timeout: None,
        }
    }
}

/// `[httpClient]`: how this node talks to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClient {
    /// Connect timeout.
    pub dial: Duration,
    /// TCP keepalive.
    pub keep_alive: Duration,
    /// Request timeout.
    pub timeout: Duration,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            dial: Duration::from_secs(1),
            keep_alive: Duration::from_secs(120),
            timeout: Duration::from_secs(40),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// Log to stdout.
    pub stdout: bool,
    /// Also log to files in this directory.
    pub dir: Option<PathBuf>,
    /// Verbosity; > 0 enables debug logs.
    pub v: i32,
    /// JSON lines instead of text.
    pub json: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            stdout: true,
            dir: None,
            v: 0,
            json: false,
        }
    }
}

/// `[registry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// Lease, eviction and protection.
    pub params: RegistryParams,
    /// Longest long-poll hold.
    pub poll_hold: Duration,
    /// How long `enableprotect` keeps reads gated without a peer answer.
    pub init_protect_period: Duration,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            params: RegistryParams::default(),
            poll_hold: Duration::from_secs(30),
            init_protect_period: Duration::from_secs(60),
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Address peers and clients use to reach this node.
    pub advertise: Option<String>,
    /// Longest start-up sync.
    pub sync_timeout: Duration,
    /// First replication retry delay.
    pub retry_initial: Duration,
    /// Largest replication retry delay.
    pub retry_max: Duration,
    /// Queued operations per peer.
    pub queue_capacity: usize,
    /// How long a write waits for one same-zone acknowledgement.
    pub ack_timeout: Duration,
    /// Idle peers are probed this often.
    pub probe_interval: Duration,
    /// Consecutive failures that mark a peer Lost.
    pub lost_after: u32,
    /// Longest wait for queues on shutdown.
    pub drain_timeout: Duration,
    /// A peer unreachable this long is dead: its queue is dropped (counted)
    /// and it is only probed, every `retry_max`, until it answers again.
    pub dead_after: Duration,
    /// How far ahead of our wall time a peer's timestamp is still followed
    /// by our hybrid logical clock (see [`crate::clock`]).
    pub max_clock_skew: Duration,
    /// Added to this node's wall clock, in nanoseconds: simulates a host
    /// whose clock is off, for fault-injection tests. Leave unset.
    pub clock_offset: i64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            advertise: None,
            sync_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            queue_capacity: 10_000,
            ack_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(5),
            lost_after: 3,
            drain_timeout: Duration::from_secs(5),
            dead_after: Duration::from_secs(10 * 60),
            max_clock_skew: crate::clock::DEFAULT_MAX_SKEW,
            clock_offset: 0,
        }
    }
}

/// `[limits]` (see docs/protocol.md#limits-table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request body size.
    pub max_body_bytes: usize,
    /// Length of key fields, region and version.
    pub max_field_len: usize,
    /// Addresses per instance.
    pub max_addrs: usize,
    /// Metadata JSON text size.
    pub max_metadata_bytes: usize,
    /// Metadata keys.
    pub max_metadata_keys: usize,
    /// Appids per fetchs/polls request.
    pub max_appids_per_poll: usize,
    /// Parked long polls per node.
    pub max_pollers: usize,
    /// Instances per node.
    pub max_instances: usize,
    /// Remembered cancels (tombstones); the oldest are forgotten first.
    pub max_tombstones: usize,
    /// Peers learned from `infra.discovery` records, verified or not.
    pub max_peers: usize,
    /// Open client connections; more are answered 503 and closed at once
    /// (also kept below the process's open-file limit).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_field_len: 256,
            max_addrs: 16,
            max_metadata_bytes: 4096,
            max_metadata_keys: 64,
            max_appids_per_poll: 512,
            max_pollers: 50_000,
            max_instances: 1_000_000,
            max_tombstones: 100_000,
            max_peers: 64,
            max_connections: 50_000,
        }
    }
}

/// `[snapshot]`: optional persistence for a lone node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// File to write; `None` disables snapshots.
    pub path: Option<PathBuf>,
    /// How often to write it.
    pub interval: Duration,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            path: None,
            interval: Duration::from_secs(30),
        }
    }
}

/// The whole configuration of one node. Every table's defaults are its
/// `Default` impl; the parser falls back to them key by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Static same-zone nodes, self included.
    pub nodes: Vec<String>,
    /// Static nodes of other zones.
    pub zones: BTreeMap<String, Vec<String>>,
    /// Start in init-protect (spec §5.4).
    pub enable_protect: bool,
    /// Node identity.
    pub env: Env,
    /// HTTP server.
    pub http_server: HttpServer,
    /// Peer HTTP client.
    pub http_client: HttpClient,
    /// Logging.
    pub log: Log,
    /// Registry timings.
    pub registry: Registry,
    /// Cluster settings.
    pub cluster: Cluster,
    /// Input limits.
    pub limits: Limits,
    /// Registry snapshot.
    pub snapshot: Snapshot,
    /// Tokens (off by default).
    pub auth: crate::auth::Auth,
    /// Schedulers loaded from the config directory.
    pub schedulers: BTreeMap<AppKey, Scheduler>,
    /// The directory scheduler files come from (SIGHUP reloads it).
    pub scheduler_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_TOML)
            .expect("the embedded default config is valid")
            .0
    }
}

/// A Go-syntax duration (`"40s"`, `"1m30s"`); see [`naming::parse_go_duration`].
pub use naming::parse_go_duration;

#[derive(Debug, Clone, Copy)]
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_go_duration(&s)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    nodes: Vec<String>,
    zones: BTreeMap<String, Vec<String>>,
    enableprotect: bool,
    env: RawEnv,
    httpserver: RawHttpServer,
    httpclient: RawHttpClient,
    log: RawLog,
    registry: RawRegistry,
    cluster: RawCluster,
    limits: RawLimits,
    snapshot: RawSnapshot,
    auth: RawAuth,
    scheduler: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAuth {
    write_token: Option<String>,
    admin_token: Option<String>,
    peer_token: Option<String>,
    trusted_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSnapshot {
    path: Option<String>,
    interval: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEnv {
    region: String,
    zone: String,
    host: String,
    deployenv: String,
    /// The Go original's sample places `nodes` after `[env]`.
    nodes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHttpServer {
    addr: Option<String>,
    network: Option<String>,
    timeout: Option<GoDuration>,
    readtimeout: Option<GoDuration>,
    writetimeout: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHttpClient {
    dial: Option<GoDuration>,
    keepalive: Option<GoDuration>,
    timeout: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLog {
    stdout: Option<bool>,
    dir: Option<String>,
    v: Option<i32>,
    json: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRegistry {
    lease: Option<GoDuration>,
    evict_interval: Option<GoDuration>,
    renew_interval: Option<GoDuration>,
    evict_ceiling: Option<GoDuration>,
    renew_threshold: Option<f64>,
    max_evict_fraction: Option<f64>,
    expected_reset_interval: Option<GoDuration>,
    self_preservation: Option<bool>,
    init_protect_period: Option<GoDuration>,
    poll_hold: Option<GoDuration>,
    tombstone_retention: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCluster {
    advertise: Option<String>,
    sync_timeout: Option<GoDuration>,
    retry_initial: Option<GoDuration>,
    retry_max: Option<GoDuration>,
    queue_capacity: Option<usize>,
    ack_timeout: Option<GoDuration>,
    probe_interval: Option<GoDuration>,
    lost_after: Option<u32>,
    drain_timeout: Option<GoDuration>,
    dead_after: Option<GoDuration>,
    max_clock_skew: Option<GoDuration>,
    clock_offset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLimits {
    max_body_bytes: Option<usize>,
    max_field_len: Option<usize>,
    max_addrs: Option<usize>,
    max_metadata_bytes: Option<usize>,
    max_metadata_keys: Option<usize>,
    max_appids_per_poll: Option<usize>,
    max_pollers: Option<usize>,
    max_instances: Option<usize>,
    max_tombstones: Option<usize>,
    max_peers: Option<usize>,
    max_connections: Option<usize>,
}

/// Keys the Go original's files carry that we accept without using.
fn known_ignored(path: &str) -> bool {
    ["scheduler", "httpclient.", "log.", "httpserver.network"]
        .iter()
        .any(|p| path.starts_with(p))
}

fn lowercase_keys(v: toml::Value) -> toml::Value {
    match v {
        toml::Value::Table(t) => toml::Value::Table(
            t.into_iter()
                .map(|(k, v)| {
                    // Zone names and other map keys keep their case; only
                    // the keys of tables we define are case-insensitive.
                    let v = if k.eq_ignore_ascii_case("zones") {
                        v
                    } else {
                        lowercase_keys(v)
                    };
                    (k.to_ascii_lowercase(), v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// A positive duration, or the key named in the error.
fn positive(key: &str, v: Option<GoDuration>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(GoDuration(d)) if d.is_zero() => Err(invalid(key, "must be greater than zero")),
        Some(GoDuration(d)) => Ok(d),
    }
}

fn ratio(key: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(r) if r > 0.0 && r < 1.0 => Ok(r),
        Some(r) => Err(invalid(key, format!("{r} is not in (0, 1)"))),
    }
}

fn nonzero(key: &str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "must be greater than zero")),
        v => Ok(v.unwrap_or(default)),
    }
}

impl Config {
    /// Parses TOML text; returns the config and warnings about unknown keys.
    pub fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let value = lowercase_keys(value);
        let mut warnings = Vec::new();
        let raw: Raw = serde_ignored::deserialize(value, |path| {
            let p = path.to_string();
            if !known_ignored(&p) {
                warnings.push(format!("unknown config key `{p}` ignored"));
            }
        })
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let _ = raw.scheduler;
        let _ = raw.httpserver.network;
        let mut raw = raw;
        if let Some(nodes) = raw.env.nodes.take() {
            if raw.nodes.is_empty() {
                raw.nodes = nodes;
            }
        }
        Ok((Self::from_raw(raw)?, warnings))
    }

    fn from_raw(raw: Raw) -> Result<Config, ConfigError> {
        let (dr, dc, dh, dhc, dl, ds) = (
            Registry::default(),
            Cluster::default(),
            HttpServer::default(),
            HttpClient::default(),
            Log::default(),
            Snapshot::default(),
        );
        let defaults = &dr.params;
        let r = raw.registry;
        let params = RegistryParams {
            lease: positive("registry.lease", r.lease, defaults.lease)?,
            evict_interval: positive(
                "registry.evict_interval",
                r.evict_interval,
                defaults.evict_interval,
            )?,
            renew_interval: positive(
                "registry.renew_interval",
                r.renew_interval,
                defaults.renew_interval,
            )?,
            evict_ceiling: positive(
                "registry.evict_ceiling",
                r.evict_ceiling,
                defaults.evict_ceiling,
            )?,
            renew_threshold: ratio(
                "registry.renew_threshold",
                r.renew_threshold,
                defaults.renew_threshold,
            )?,
            max_evict_fraction: ratio(
                "registry.max_evict_fraction",
                r.max_evict_fraction,
                defaults.max_evict_fraction,
            )?,
            expected_reset_interval: positive(
                "registry.expected_reset_interval",
                r.expected_reset_interval,
                defaults.expected_reset_interval,
            )?,
            self_preservation: r.self_preservation.unwrap_or(true),
            // Set from `[limits]` below.
            max_tombstones: defaults.max_tombstones,
            tombstone_retention: positive(
                "registry.tombstone_retention",
                r.tombstone_retention,
                defaults.tombstone_retention,
            )?,
        };
        let registry = Registry {
            params,
            poll_hold: positive("registry.poll_hold", r.poll_hold, dr.poll_hold)?,
            init_protect_period: positive(
                "registry.init_protect_period",
                r.init_protect_period,
                dr.init_protect_period,
            )?,
        };

        let c = raw.cluster;
        let cluster = Cluster {
            advertise: c.advertise.filter(|a| !a.is_empty()),
            sync_timeout: positive("cluster.sync_timeout", c.sync_timeout, dc.sync_timeout)?,
            retry_initial: positive("cluster.retry_initial", c.retry_initial, dc.retry_initial)?,
            retry_max: positive("cluster.retry_max", c.retry_max, dc.retry_max)?,
            queue_capacity: nonzero(
                "cluster.queue_capacity",
                c.queue_capacity,
                dc.queue_capacity,
            )?,
            ack_timeout: positive("cluster.ack_timeout", c.ack_timeout, dc.ack_timeout)?,
            probe_interval: positive(
                "cluster.probe_interval",
                c.probe_interval,
                dc.probe_interval,
            )?,
            lost_after: match c.lost_after {
                Some(0) => return Err(invalid("cluster.lost_after", "must be greater than zero")),
                v => v.unwrap_or(dc.lost_after),
            },
            drain_timeout: positive("cluster.drain_timeout", c.drain_timeout, dc.drain_timeout)?,
            dead_after: positive("cluster.dead_after", c.dead_after, dc.dead_after)?,
            max_clock_skew: positive(
                "cluster.max_clock_skew",
                c.max_clock_skew,
                dc.max_clock_skew,
            )?,
            clock_offset: match c.clock_offset.as_deref().map(str::trim) {
                None | Some("") => 0,
                Some(text) => {
                    let (sign, abs) = match text.strip_prefix('-') {
                        Some(rest) => (-1, rest),
                        None => (1, text),
                    };
                    let d = naming::parse_go_duration(abs)
                        .map_err(|e| invalid("cluster.clock_offset", e))?;
                    sign * i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
                }
            },
        };

        let d = Limits::default();
        let l = raw.limits;
        let limits = Limits {
            max_body_bytes: nonzero("limits.max_body_bytes", l.max_body_bytes, d.max_body_bytes)?,
            max_field_len: nonzero("limits.max_field_len", l.max_field_len, d.max_field_len)?,
            max_addrs: nonzero("limits.max_addrs", l.max_addrs, d.max_addrs)?,
            max_metadata_bytes: nonzero(
                "limits.max_metadata_bytes",
                l.max_metadata_bytes,
                d.max_metadata_bytes,
            )?,
            max_metadata_keys: nonzero(
                "limits.max_metadata_keys",
                l.max_metadata_keys,
                d.max_metadata_keys,
            )?,
            max_appids_per_poll: nonzero(
                "limits.max_appids_per_poll",
                l.max_appids_per_poll,
                d.max_appids_per_poll,
            )?,
            max_pollers: nonzero("limits.max_pollers", l.max_pollers, d.max_pollers)?,
            max_instances: nonzero("limits.max_instances", l.max_instances, d.max_instances)?,
            max_tombstones: nonzero("limits.max_tombstones", l.max_tombstones, d.max_tombstones)?,
            max_peers: nonzero("limits.max_peers", l.max_peers, d.max_peers)?,
            max_connections: nonzero(
                "limits.max_connections",
                l.max_connections,
                d.max_connections,
            )?,
        };

        let hs = raw.httpserver;
        let optional = |d: Option<GoDuration>| d.map(|d| d.0).filter(|d| !d.is_zero());
        let http_server = HttpServer {
            addr: hs.addr.filter(|a| !a.is_empty()).unwrap_or(dh.addr),
            timeout: positive("httpServer.timeout", hs.timeout, dh.timeout)?,
            read_timeout: optional(hs.readtimeout),
            write_timeout: optional(hs.writetimeout),
        };
        let hc = raw.httpclient;
        let http_client = HttpClient {
            dial: positive("httpClient.dial", hc.dial, dhc.dial)?,
            keep_alive: hc.keepalive.map_or(dhc.keep_alive, |d| d.0),
            timeout: positive("httpClient.timeout", hc.timeout, dhc.timeout)?,
        };
        let log = Log {
            stdout: raw.log.stdout.unwrap_or(dl.stdout),
            dir: raw.log.dir.filter(|d| !d.is_empty()).map(PathBuf::from),
            v: raw.log.v.unwrap_or(dl.v),
            json: raw.log.json.unwrap_or(dl.json),
        };
        let mut registry = registry;
        registry.params.max_tombstones = limits.max_tombstones;
        Ok(Config {
            nodes: raw.nodes,
            zones: raw.zones,
            enable_protect: raw.enableprotect,
            env: Env {
                region: raw.env.region,
                zone: raw.env.zone,
                host: raw.env.host,
                deploy_env: raw.env.deployenv,
            },
            http_server,
            http_client,
            log,
            registry,
            cluster,
            limits,
            snapshot: Snapshot {
                path: raw
                    .snapshot
                    .path
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from),
                interval: positive("snapshot.interval", raw.snapshot.interval, ds.interval)?,
            },
            auth: {
                let secret =
                    |v: Option<String>| v.filter(|t| !t.is_empty()).map(crate::auth::Secret::new);
                let mut trusted = Vec::new();
                for c in &raw.auth.trusted_cidrs {
                    let net = c
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            invalid("auth.trusted_cidrs", format!("{c:?} is not a CIDR"))
                        })?;
                    trusted.push(net);
                }
                crate::auth::Auth {
                    write_token: secret(raw.auth.write_token),
                    admin_token: secret(raw.auth.admin_token),
                    peer_token: secret(raw.auth.peer_token),
                    trusted_cidrs: trusted,
                }
            },
            schedulers: BTreeMap::new(),
            scheduler_dir: None,
        })
    }

    /// Loads `-conf`: a directory (its `discovery.toml` and scheduler
    /// `*.json` files) or a single file. Returns warnings to log.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            let file = path.join("discovery.toml");
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
                path: file.clone(),
                source,
            })?;
            let (mut cfg, mut warnings) = Config::parse(&text)?;
            let (schedulers, errors) = load_schedulers(path);
            warnings.extend(errors);
            cfg.schedulers = schedulers;
            cfg.scheduler_dir = Some(path.to_path_buf());
            Ok((cfg, warnings))
        } else {
            let text = std::fs::read_to_string(path).map_err(io)?;
            Config::parse(&text)
        }
    }

    /// Fills empty `[env]` values: flag, then environment variable, then
    /// default (spec §8.1). `lookup` reads the environment.
    pub fn fill_env(&mut self, flags: &EnvFlags, lookup: impl Fn(&str) -> Option<String>) {
        let pick = |current: &mut String,
                    flag: &Option<String>,
                    var: &str,
                    default: &dyn Fn() -> String| {
            if current.is_empty() {
                *current = flag
                    .clone()
                    .filter(|f| !f.is_empty())
                    .or_else(|| lookup(var).filter(|v| !v.is_empty()))
                    .unwrap_or_else(default);
            }
        };
        pick(&mut self.env.region, &flags.region, "REGION", &|| {
            "region01".into()
        });
        pick(&mut self.env.zone, &flags.zone, "ZONE", &|| "zone01".into());
        pick(
            &mut self.env.deploy_env,
            &flags.deploy_env,
            "DEPLOY_ENV",
            &|| "dev".into(),
        );
        pick(&mut self.env.host, &None, "HOSTNAME", &os_hostname);
    }
}

/// `[env]` values given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFlags {
    /// `-region`.
    pub region: Option<String>,
    /// `-zone`.
    pub zone: Option<String>,
    /// `-deploy.env`.
    pub deploy_env: Option<String>,
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[derive(Deserialize)]
struct SchedulerFile {
    app_id: String,
    env: String,
    #[serde(default)]
    clients: serde_json::Value,
    #[serde(default)]
    remark: String,
}

/// Reads every non-hidden `*.json` file of `dir` as a scheduler. A bad file
/// is skipped with an error naming it; the others still load.
pub fn load_schedulers(dir: &Path) -> (BTreeMap<AppKey, Scheduler>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return (out, vec![format!("cannot read {}: {e}", dir.display())]),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    files.sort();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<SchedulerFile>(&t).map_err(|e| e.to_string()))
            .and_then(|f| {
                let mut s = if f.clients.is_array() {
                    Scheduler::from_value(f.clients)
                } else {
                    Scheduler::from_value(serde_json::json!({ "clients": f.clients }))
                }
                .map_err(|e| e.to_string())?;
                s.remark = f.remark;
                Ok((AppKey::new(f.env, f.app_id), s))
            });
        match parsed {
            Ok((k, s)) => {
                out.insert(k, s);
            }
            Err(e) => errors.push(format!("scheduler file {} skipped: {e}", file.display())),
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go original's `cmd/discovery/discovery-example.toml`.
    const GO_SAMPLE: &str = include_str!("../../../configs/discovery-example.toml");

    #[test]
    fn go_sample_loads_unchanged() {
        let (cfg, warnings) = Config::parse(GO_SAMPLE).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.env.zone, "sh001");
        assert_eq!(cfg.env.host, "test1");
        assert_eq!(cfg.env.deploy_env, "dev");
        assert_eq!(cfg.http_server.addr, "127.0.0.1:7171");
        assert_eq!(cfg.http_server.timeout, Duration::from_secs(40));
        assert_eq!(cfg.nodes, ["127.0.0.1:7171"]);
    }

    /// Every shipped config loads without a warning.
    #[test]
    fn shipped_configs_load_cleanly() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "toml") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs"),
            &mut files,
        );
        assert!(files.len() >= 8, "{files:?}");
        for f in files {
            let (_, warnings) = Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(warnings.is_empty(), "{}: {warnings:?}", f.display());
        }
    }

    #[test]
    fn embedded_default_is_a_lone_node() {
        let cfg = Config::default();
        assert_eq!(cfg.http_server.addr, "127.0.0.1:7171");
        assert_eq!(cfg.registry.params, RegistryParams::default());
        assert_eq!(cfg.registry.poll_hold, Duration::from_secs(30));
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_warn() {
        let (cfg, warnings) = Config::parse(
            "NODES = [\"a:1\"]\nbogus = 1\n[ENV]\ndeployENV = \"uat\"\n[zones]\nSH002 = [\"b:2\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.env.deploy_env, "uat");
        assert_eq!(cfg.nodes, ["a:1"]);
        assert_eq!(cfg.zones["SH002"], ["b:2"]);
        assert_eq!(warnings, ["unknown config key `bogus` ignored"]);
    }

    #[test]
    fn read_deadline_is_read_timeout_or_else_timeout() {
        let (c, _) =
            Config::parse("[httpServer]\ntimeout = \"40s\"\nreadTimeout = \"2s\"\n").unwrap();
        assert_eq!(c.http_server.read_deadline(), Duration::from_secs(2));
        for text in [
            "timeout = \"7s\"\n",
            "timeout = \"7s\"\nreadTimeout = \"0s\"\n",
        ] {
            let (c, _) = Config::parse(&format!("[httpServer]\n{text}")).unwrap();
            assert_eq!(c.http_server.read_deadline(), Duration::from_secs(7));
        }
        assert_eq!(Config::default().limits.max_connections, 50_000);
        let err = Config::parse("[limits]\nmax_connections = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_connections"), "{err}");
    }

    #[test]
    fn zero_timeout_refuses_naming_the_key() {
        let err = Config::parse("[httpServer]\ntimeout = \"0s\"\n").unwrap_err();
        assert!(err.to_string().contains("httpServer.timeout"), "{err}");
        let err = Config::parse("[registry]\nrenew_threshold = 1.5\n").unwrap_err();
        assert!(
            err.to_string().contains("registry.renew_threshold"),
            "{err}"
        );
        let err = Config::parse("[registry]\nlease = \"3 apples\"\n").unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
    }

    #[test]
    fn our_tables_parse() {
        let (cfg, _) = Config::parse(
            "[registry]\nlease = \"3s\"\nevict_interval = \"1s\"\nrenew_interval=\"500ms\"\npoll_hold=\"1s\"\nself_preservation=false\n[cluster]\nadvertise=\"10.0.0.1:7171\"\n[limits]\nmax_addrs=2\n",
        )
        .unwrap();
        assert_eq!(cfg.registry.params.renews_per_tick(), 2);
        assert!(!cfg.registry.params.self_preservation);
        assert_eq!(cfg.registry.poll_hold, Duration::from_secs(1));
        assert_eq!(cfg.cluster.advertise.as_deref(), Some("10.0.0.1:7171"));
        assert_eq!(cfg.limits.max_addrs, 2);
    }

    #[test]
    fn empty_env_values_fall_back_to_flags_then_vars_then_defaults() {
        let mut cfg = Config::default();
        let flags = EnvFlags {
            zone: Some("flagzone".into()),
            ..Default::default()
        };
        cfg.fill_env(&flags, |k| match k {
            "ZONE" => Some("varzone".into()),
            "REGION" => Some("varregion".into()),
            "HOSTNAME" => Some("box1".into()),
            _ => None,
        });
        assert_eq!(cfg.env.zone, "flagzone");
        assert_eq!(cfg.env.region, "varregion");
        assert_eq!(cfg.env.deploy_env, "dev");
        assert_eq!(cfg.env.host, "box1");
    }

    #[test]
    fn bad_scheduler_file_is_skipped_and_named() {
        let dir = std::env::temp_dir().join(format!("sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.json"),
            r#"{"app_id":"demo.svc","env":"dev","clients":{"sh001":{"zones":{"sh001":{"weight":3}}}},"remark":"r"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("b.json"), "{nope").unwrap();
        std::fs::write(dir.join(".hidden.json"), "{nope").unwrap();
        std::fs::write(
            dir.join("c.json"),
            r#"{"app_id":"other","env":"dev","clients":[{"src":"sh001","dst":{"sh002":1}}]}"#,
        )
        .unwrap();
        let (s, errors) = load_schedulers(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[&AppKey::new("dev", "demo.svc")].weight("sh001", "sh001"),
            Some(3)
        );
        assert_eq!(s[&AppKey::new("dev", "demo.svc")].remark, "r");
        assert_eq!(
            s[&AppKey::new("dev", "other")].weight("sh001", "sh002"),
            Some(1)
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("b.json"));
    }
}
