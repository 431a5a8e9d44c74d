//! Configuration: the Go original's TOML, accepted unchanged, plus our
//! `[registry]`, `[cluster]` and `[limits]` tables (docs/protocol.md#configuration).
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
use serde::Deserialize;

use crate::registry::{AppKey, RegistryParams};

mod parse;

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
    /// `plainAddr`: a plain-HTTP listener kept beside the HTTPS one of a
    /// node with `[tls]`, for SDKs that cannot speak TLS. Off by default.
    pub plain_addr: Option<String>,
}

impl HttpServer {
    /// How long a client may take to send a request's head, and then its
    /// body: `readTimeout`, or the request deadline `timeout` when
    /// `readTimeout` is unset, so that no connection is ever unbounded.
    /// Idle keep-alive connections are closed after it too.
    pub fn read_deadline(&self) -> Duration {
        self.read_timeout.unwrap_or(self.timeout)
    }

    /// How long writing an answer may make no progress before the
    /// connection is closed (a client that stopped reading): `writeTimeout`,
    /// else `timeout`.
    pub fn write_deadline(&self) -> Duration {
        self.write_timeout.unwrap_or(self.timeout)
    }
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer {
            addr: "127.0.0.1:7171".into(),
            timeout: Duration::from_secs(40),
            read_timeout: None,
            write_timeout: None,
            plain_addr: None,
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

/// Whether a client must present a certificate (`[tls] client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and, when presented, must verify
    /// against `ca`; clients without one are still served.
    Optional,
    /// Only clients with a certificate that verifies against `ca` are
    /// served.
    Required,
}

/// `[tls]`: HTTPS for clients and peers (docs/tls.md). Paths are relative
/// to the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM bundle verifying peers, and clients when `client_auth` asks.
    pub ca: Option<PathBuf>,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
}

impl Tls {
    /// Whether `[httpServer] addr` serves HTTPS (and peers are reached
    /// over HTTPS).
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
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
    /// How long a write waits for the acknowledgements of the same-zone
    /// peers that answer.
    pub ack_timeout: Duration,
    /// Idle peers are probed this often.
    pub probe_interval: Duration,
    /// How often each node compares its registry with each same-zone peer
    /// of ours and pulls what differs (anti-entropy); zero turns it off.
    pub anti_entropy_interval: Duration,
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
            anti_entropy_interval: Duration::from_secs(1),
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
    /// Peers admitted from signed `infra.discovery` records, beyond the
    /// static lists.
    pub max_peers: usize,
    /// Open client connections; more are answered 503 and closed at once
    /// (also kept below the process's open-file limit).
    pub max_connections: usize,
    /// Open client connections from one IP address, so that one host
    /// cannot take every slot.
    pub max_connections_per_ip: usize,
    /// Largest answer body a node reads from a peer (`fetch/all` included);
    /// a longer one fails the exchange.
    pub max_peer_answer_bytes: usize,
    /// Signature nonces remembered for the replay check (see
    /// [`crate::auth::sign`]); past it, signed requests are refused until
    /// old nonces expire.
    pub max_peer_nonces: usize,
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
            max_connections_per_ip: 4096,
            max_peer_answer_bytes: 512 << 20,
            max_peer_nonces: 1 << 18,
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
    /// Start in init-protect (docs/protocol.md#init-protect).
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
    /// HTTPS (off by default).
    pub tls: Tls,
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

impl Config {
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
    /// default (docs/protocol.md#command-line-and-environment). `lookup` reads the environment.
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
        use naming::env;
        pick(&mut self.env.region, &flags.region, env::REGION, &|| {
            env::DEFAULT_REGION.into()
        });
        pick(&mut self.env.zone, &flags.zone, env::ZONE, &|| {
            env::DEFAULT_ZONE.into()
        });
        pick(
            &mut self.env.deploy_env,
            &flags.deploy_env,
            env::DEPLOY_ENV,
            &|| env::DEFAULT_DEPLOY_ENV.into(),
        );
        pick(
            &mut self.env.host,
            &None,
            env::HOSTNAME,
            &naming::host::hostname,
        );
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
mod tests;
