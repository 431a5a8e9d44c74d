//! Reading the TOML: the Go original's keys (case-insensitive, Go
//! durations) and our tables, into mirror structs of optional values, then
//! into [`Config`] with each table's `Default` filling what is unset.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer};

use super::*;

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
    tls: RawTls,
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
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
    client_auth: Option<String>,
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
    plainaddr: Option<String>,
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
    anti_entropy_interval: Option<GoDuration>,
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
    max_connections_per_ip: Option<usize>,
    max_peer_answer_bytes: Option<usize>,
    max_peer_nonces: Option<usize>,
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
            advertise: c
                .advertise
                .filter(|a| !a.is_empty())
                .map(|a| {
                    naming::addr::PeerAddr::parse(&a)
                        .map(|p| p.to_string())
                        .map_err(|e| invalid("cluster.advertise", e.to_string()))
                })
                .transpose()?,
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
            anti_entropy_interval: c
                .anti_entropy_interval
                .map_or(dc.anti_entropy_interval, |d| d.0),
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
            max_connections_per_ip: nonzero(
                "limits.max_connections_per_ip",
                l.max_connections_per_ip,
                d.max_connections_per_ip,
            )?,
            max_peer_answer_bytes: nonzero(
                "limits.max_peer_answer_bytes",
                l.max_peer_answer_bytes,
                d.max_peer_answer_bytes,
            )?,
            max_peer_nonces: nonzero(
                "limits.max_peer_nonces",
                l.max_peer_nonces,
                d.max_peer_nonces,
            )?,
        };

        let hs = raw.httpserver;
        let optional = |d: Option<GoDuration>| d.map(|d| d.0).filter(|d| !d.is_zero());
        let http_server = HttpServer {
            addr: hs.addr.filter(|a| !a.is_empty()).unwrap_or(dh.addr),
            timeout: positive("httpServer.timeout", hs.timeout, dh.timeout)?,
            read_timeout: optional(hs.readtimeout),
            write_timeout: optional(hs.writetimeout),
            plain_addr: hs.plainaddr.filter(|a| !a.is_empty()),
        };
        let tls = tls_table(raw.tls)?;
        if http_server.plain_addr.is_some() && !tls.enabled() {
            return Err(invalid(
                "httpServer.plainAddr",
                "only with [tls] cert and key: addr already serves plain HTTP",
            ));
        }
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
        let peer = |field: &str, a: &String| {
            naming::addr::PeerAddr::parse(a)
                .map(|p| p.to_string())
                .map_err(|e| invalid(field, e.to_string()))
        };
        let nodes = raw
            .nodes
            .iter()
            .map(|a| peer("nodes", a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut zones = BTreeMap::new();
        for (zone, list) in &raw.zones {
            let list = list
                .iter()
                .map(|a| peer("zones", a))
                .collect::<Result<Vec<_>, _>>()?;
            zones.insert(zone.clone(), list);
        }
        Ok(Config {
            nodes,
            zones,
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
            tls,
            schedulers: BTreeMap::new(),
            scheduler_dir: None,
        })
    }
}

/// `[tls]`: both of `cert` and `key` or neither; `ca` whenever TLS is on
/// (it verifies the peers) and whenever clients must present certificates.
fn tls_table(raw: RawTls) -> Result<Tls, ConfigError> {
    let path = |v: Option<String>| v.filter(|p| !p.is_empty()).map(PathBuf::from);
    let client_auth = match raw.client_auth.as_deref().map(str::to_ascii_lowercase) {
        None => ClientAuth::None,
        Some(v) => match v.as_str() {
            "" | "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => {
                return Err(invalid(
                    "tls.client_auth",
                    format!("{other:?} is not one of none, optional, required"),
                ));
            }
        },
    };
    let tls = Tls {
        cert: path(raw.cert),
        key: path(raw.key),
        ca: path(raw.ca),
        client_auth,
    };
    match (&tls.cert, &tls.key) {
        (Some(_), None) => return Err(invalid("tls.key", "needed with tls.cert")),
        (None, Some(_)) => return Err(invalid("tls.cert", "needed with tls.key")),
        _ => {}
    }
    if tls.enabled() && tls.ca.is_none() {
        return Err(invalid(
            "tls.ca",
            "needed with tls.cert: it verifies the peers this node calls",
        ));
    }
    if !tls.enabled() && (tls.ca.is_some() || client_auth != ClientAuth::None) {
        return Err(invalid(
            "tls.cert",
            "tls.ca and tls.client_auth need tls.cert and tls.key",
        ));
    }
    Ok(tls)
}
