//! SDK settings: who we are (region, zone, env, hostname, colour,
//! appid), where the registry is (nodes) and the SDK's timings.
//!
//! Precedence is code > flag > environment variable > default. Code and
//! flags both go through the builder's setters; whatever was not set falls
//! back to the environment, read through an injectable lookup so tests never
//! touch the process environment. The variables and their defaults are
//! [`naming::env`]'s; the hostname's fallback is [`naming::host::hostname`].
//!
//! ```
//! use discovery_client::Config;
//!
//! let config = Config::builder()
//!     .zone("sh001")
//!     .build_with(|var| match var {
//!         "DISCOVERY_NODES" => Some(" 127.0.0.1:7171, http://127.0.0.2:7171,".to_string()),
//!         "ZONE" => Some("ignored: code wins".to_string()),
//!         "HOSTNAME" => Some("demo-1".to_string()),
//!         _ => None,
//!     });
//! assert_eq!(config.nodes, ["127.0.0.1:7171", "127.0.0.2:7171"]);
//! assert!(!config.https);
//! assert_eq!(config.zone, "sh001");
//! assert_eq!(config.region, "region01");
//! assert_eq!(config.env, "dev");
//! assert_eq!(config.hostname, "demo-1");
//! ```

use std::{path::PathBuf, time::Duration};

use naming::env;

/// Resolved SDK settings. Build one with [`Config::builder`]; the timing
/// fields are public so tests and tools can shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Seed nodes, `host:port`, without scheme.
    pub nodes: Vec<String>,
    /// Every node is reached over HTTPS: set when a configured node is
    /// written `https://`. The SDK then never sends plain HTTP, to the
    /// seeds or to the nodes self-discovery finds.
    pub https: bool,
    /// PEM bundle verifying the nodes' certificates (`DISCOVERY_CA`);
    /// without it, the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate shown to the nodes (`DISCOVERY_CERT`), for
    /// nodes with `client_auth`; needs [`Config::key`].
    pub cert: Option<PathBuf>,
    /// PEM private key of [`Config::cert`] (`DISCOVERY_KEY`).
    pub key: Option<PathBuf>,
    /// Region of this process.
    pub region: String,
    /// Zone of this process.
    pub zone: String,
    /// Deploy env of this process.
    pub env: String,
    /// Hostname: identity of our instances. Long polls send it with a
    /// per-client suffix ([`crate::Discovery::poll_identity`]).
    pub hostname: String,
    /// Traffic colour; empty when uncoloured.
    pub color: String,
    /// The process's own appid; empty when unknown.
    pub appid: String,
    /// TCP connect timeout (3 s).
    pub connect_timeout: Duration,
    /// Timeout of every call but `polls` (10 s).
    pub request_timeout: Duration,
    /// Timeout of a steady `polls` request (40 s); it must exceed the
    /// server's 30 s hold.
    pub poll_timeout: Duration,
    /// Timeout of the first poll after a (re)start or node switch (3 s),
    /// sent with a 2 s `x1-bmspy-timeout` so that a parked poll never delays
    /// the first answers (docs/protocol.md#deadline-header-and-hold).
    pub first_poll_timeout: Duration,
    /// Renew period of registrations (30 s).
    pub renew_interval: Duration,
    /// Bound of a cancel over node retries (5 s).
    pub cancel_timeout: Duration,
    /// The poll loop moves to the next node this often, even without errors
    /// (30 min).
    pub node_rotation: Duration,
    /// First delay after a poll failure (1 s); doubles per failure.
    pub backoff_base: Duration,
    /// Longest delay between failing polls (10 s).
    pub backoff_max: Duration,
    /// Minimum time between two poll starts when an answer changed nothing
    /// and came back quickly (1 s).
    pub poll_spacing: Duration,
    /// Whether the node list follows the registry's own `infra.discovery`
    /// records (on by default; tests with unrelated servers turn it off).
    pub self_discovery: bool,
}

impl Config {
    /// A builder; unset values come from the environment, then defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Everything from the process environment and defaults.
    pub fn from_env() -> Config {
        Config::builder().build()
    }
}

/// Sets values in code (or from parsed flags); see [`Config`].
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    nodes: Option<Vec<String>>,
    https: bool,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    region: Option<String>,
    zone: Option<String>,
    env: Option<String>,
    hostname: Option<String>,
    color: Option<String>,
    appid: Option<String>,
}

impl ConfigBuilder {
    /// Seed nodes (`host:port`, a leading `http://` is stripped; an
    /// `https://` one turns HTTPS on, see [`Config::https`]). An empty list
    /// counts as unset, so the environment still applies.
    pub fn nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        let mut https = false;
        for n in nodes {
            https |= has_https(n.as_ref());
            list.extend(parse_nodes(n.as_ref()));
        }
        self.https = https;
        self.nodes = (!list.is_empty()).then_some(list);
        self
    }

    /// The PEM bundle verifying `https://` nodes.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = non_empty_path(path.into());
        self
    }

    /// The PEM client certificate shown to `https://` nodes.
    pub fn cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.cert = non_empty_path(path.into());
        self
    }

    /// The PEM private key of the client certificate.
    pub fn key(mut self, path: impl Into<PathBuf>) -> Self {
        self.key = non_empty_path(path.into());
        self
    }

    /// Region.
    pub fn region(mut self, v: impl Into<String>) -> Self {
        self.region = non_empty(v.into());
        self
    }

    /// Zone.
    pub fn zone(mut self, v: impl Into<String>) -> Self {
        self.zone = non_empty(v.into());
        self
    }

    /// Deploy env.
    pub fn env(mut self, v: impl Into<String>) -> Self {
        self.env = non_empty(v.into());
        self
    }

    /// Hostname.
    pub fn hostname(mut self, v: impl Into<String>) -> Self {
        self.hostname = non_empty(v.into());
        self
    }

    /// Traffic colour.
    pub fn color(mut self, v: impl Into<String>) -> Self {
        self.color = non_empty(v.into());
        self
    }

    /// Own appid.
    pub fn appid(mut self, v: impl Into<String>) -> Self {
        self.appid = non_empty(v.into());
        self
    }

    /// Resolves against the process environment.
    pub fn build(self) -> Config {
        self.build_with(|var| std::env::var(var).ok())
    }

    /// Resolves against `lookup` (an environment reader).
    pub fn build_with(self, lookup: impl Fn(&str) -> Option<String>) -> Config {
        let var = |name: &str| lookup(name).and_then(non_empty);
        let pick = |set: Option<String>, name: &str, default: &dyn Fn() -> String| {
            set.or_else(|| var(name)).unwrap_or_else(default)
        };
        let (nodes, https) = match self.nodes {
            Some(n) => (n, self.https),
            None => match var(env::NODES) {
                Some(v) => (parse_nodes(&v), has_https(&v)),
                None => (Vec::new(), false),
            },
        };
        let file = |set: Option<PathBuf>, name: &str| set.or_else(|| var(name).map(PathBuf::from));
        Config {
            nodes,
            https,
            ca: file(self.ca, env::CA),
            cert: file(self.cert, env::CERT),
            key: file(self.key, env::KEY),
            region: pick(self.region, env::REGION, &|| env::DEFAULT_REGION.into()),
            zone: pick(self.zone, env::ZONE, &|| env::DEFAULT_ZONE.into()),
            env: pick(self.env, env::DEPLOY_ENV, &|| {
                env::DEFAULT_DEPLOY_ENV.into()
            }),
            hostname: pick(self.hostname, env::HOSTNAME, &naming::host::hostname),
            color: pick(self.color, env::COLOR, &String::new),
            appid: pick(self.appid, env::APPID, &String::new),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(40),
            first_poll_timeout: Duration::from_secs(3),
            renew_interval: Duration::from_secs(30),
            cancel_timeout: Duration::from_secs(5),
            node_rotation: Duration::from_secs(30 * 60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            poll_spacing: Duration::from_secs(1),
            self_discovery: true,
        }
    }
}

/// The SDK's command-line flags, to flatten into a binary's
/// clap parser. Flags beat environment variables, which beat defaults;
/// they are applied before the environment is read (the original read the
/// environment first, so its flags never worked).
///
/// ```
/// use clap::Parser;
/// use discovery_client::config::Flags;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     sdk: Flags,
/// }
///
/// let cli = Cli::parse_from(["demo", "--discovery-nodes", "a:7171,b:7171", "--zone", "sh001"]);
/// let config = cli.sdk.builder().build_with(|var| (var == "ZONE").then(|| "env-zone".into()));
/// assert_eq!(config.nodes, ["a:7171", "b:7171"]);
/// assert_eq!(config.zone, "sh001");
/// ```
#[cfg(feature = "cli")]
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
// This doc comment is for Rust readers, not a binary's `--help`.
#[command(about = None, long_about = None)]
pub struct Flags {
    /// Discovery nodes, comma-separated `host:port` [env: DISCOVERY_NODES]
    #[arg(long = "discovery-nodes", value_name = "HOST:PORT,...", global = true)]
    pub discovery_nodes: Option<String>,
    /// Region [env: REGION; default: region01]
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Zone [env: ZONE; default: zone01]
    #[arg(long, global = true)]
    pub zone: Option<String>,
    /// Deploy env [env: DEPLOY_ENV; default: dev]
    #[arg(long = "deploy-env", global = true)]
    pub deploy_env: Option<String>,
    /// Hostname, the identity of instances and polls [env: HOSTNAME; default: OS hostname]
    #[arg(long, global = true)]
    pub hostname: Option<String>,
    /// Traffic colour [env: DEPLOY_COLOR]
    #[arg(long = "deploy-color", global = true)]
    pub deploy_color: Option<String>,
    /// Own appid [env: APP_ID]
    #[arg(long, global = true)]
    pub appid: Option<String>,
    /// PEM bundle verifying https:// nodes [env: DISCOVERY_CA; default: the system's roots]
    #[arg(long, value_name = "PEM", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for https:// nodes [env: DISCOVERY_CERT]
    #[arg(long, value_name = "PEM", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert [env: DISCOVERY_KEY]
    #[arg(long, value_name = "PEM", global = true)]
    pub key: Option<PathBuf>,
}

#[cfg(feature = "cli")]
impl Flags {
    /// A builder holding the given flags; unset values still fall back to
    /// the environment and defaults.
    pub fn builder(&self) -> ConfigBuilder {
        let mut b = Config::builder();
        if let Some(n) = &self.discovery_nodes {
            b = b.nodes([n]);
        }
        for (path, set) in [
            (
                &self.ca,
                ConfigBuilder::ca as fn(ConfigBuilder, PathBuf) -> ConfigBuilder,
            ),
            (&self.cert, ConfigBuilder::cert),
            (&self.key, ConfigBuilder::key),
        ] {
            if let Some(p) = path {
                b = set(b, p.clone());
            }
        }
        let set = |v: &Option<String>| v.clone().unwrap_or_default();
        b.region(set(&self.region))
            .zone(set(&self.zone))
            .env(set(&self.deploy_env))
            .hostname(set(&self.hostname))
            .color(set(&self.deploy_color))
            .appid(set(&self.appid))
    }
}

/// Splits a `DISCOVERY_NODES`-style list into canonical `host:port` node
/// addresses: items trimmed, empties dropped, each parsed by
/// [`naming::addr::PeerAddr`] (`http://` optional, any case; a path, query
/// or user info is refused). Entries that are not node addresses are left
/// out with a warning.
///
/// ```
/// assert_eq!(
///     discovery_client::config::parse_nodes(" a:7171, HTTP://B:7171/,c:7171/x"),
///     ["a:7171", "b:7171"],
/// );
/// ```
pub fn parse_nodes(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|n| match naming::addr::PeerAddr::parse(n) {
            Ok(a) => Some(a.to_string()),
            Err(e) => {
                tracing::warn!("discovery node list: {e}; ignored");
                None
            }
        })
        .collect()
}

/// Whether a `DISCOVERY_NODES`-style list names a node `https://`.
fn has_https(text: &str) -> bool {
    text.split(',')
        .any(|n| naming::addr::Addr::parse(n.trim()).is_ok_and(|a| a.has_scheme("https")))
}

fn non_empty_path(p: PathBuf) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then_some(p)
}

fn non_empty(v: String) -> Option<String> {
    let v = v.trim().to_string();
    (!v.is_empty()).then_some(v)
}
