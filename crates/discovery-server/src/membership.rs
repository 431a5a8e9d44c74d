//! The seam between the API and whatever knows the cluster: the answer of
//! `/discovery/nodes`, the replication targets' state, signs of life from
//! peers, and the vetting of `infra.discovery` records (see
//! docs/cluster.md#who-is-a-peer). A node with peers
//! uses [`crate::cluster::Cluster`]; a router without one uses
//! [`StaticMembers`].

use naming::Instance;

/// One entry of `/discovery/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// `host:port`.
    pub addr: String,
    /// 0 = UP, 1 = Lost.
    pub status: u8,
    /// The node's zone.
    pub zone: String,
}

/// Source of `/discovery/nodes`.
pub trait Members: Send + Sync + 'static {
    /// Local-zone nodes and self, sorted by address.
    fn nodes(&self) -> Vec<NodeStatus>;

    /// Replication targets and their queues.
    fn peers(&self) -> Vec<PeerReport> {
        Vec::new()
    }

    /// A request from the node at `addr` reached us.
    fn heard_from(&self, _addr: &str) {}

    /// Decides whether an `infra.discovery` record may be stored (see
    /// [`PeerRule`]).
    fn vet(&self, ins: &Instance, proof: Proof) -> Vetted;

    /// Whether `ip` is the host of a configured peer.
    fn is_peer_ip(&self, _ip: std::net::IpAddr) -> bool {
        false
    }

    /// Anti-entropy counters since start.
    fn anti_entropy(&self) -> EntropyReport {
        EntropyReport::default()
    }
}

/// Anti-entropy counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntropyReport {
    /// Comparisons made with peers.
    pub rounds: u64,
    /// Instances and cancels applied from peers.
    pub repairs: u64,
    /// Answer bytes received.
    pub bytes: u64,
}

/// Replication state of one target, for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerReport {
    /// Address, or `zone:<name>` for another zone.
    pub name: String,
    /// Whether acks from this target count (same zone).
    pub same_zone: bool,
    /// 0 = UP, 1 = Lost.
    pub status: u8,
    /// Writes waiting.
    pub queued: usize,
    /// Writes delivered.
    pub sent: u64,
    /// Writes dropped on overflow.
    pub dropped: u64,
    /// Writes the target refused (`-400`).
    pub rejected: u64,
    /// Failed attempts, retries included.
    pub failures: u64,
    /// Wall-clock ns of the last successful exchange (0 = never).
    pub last_success: i64,
    /// Unreachable for `cluster.dead_after`: nothing queued, only probed.
    pub dead: bool,
    /// Catch-ups after being dead, and how long the last one took.
    pub catch_ups: u64,
    /// Duration of the last catch-up, in milliseconds.
    pub last_catch_up_ms: u64,
}

/// What to do with an `infra.discovery` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vetted {
    /// Store it as usual.
    Admit,
    /// Refused, with the reason for the `-400`.
    Refused(String),
}

/// What vouches for an `infra.discovery` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Nothing: a write marked `replication`/`from_zone`, which any
    /// process can send.
    None,
    /// The write carried a valid signature with the cluster secret.
    Signed,
    /// This node pulled it from a peer it chose (start-up sync, a peer's
    /// `-409` answer): it holds only records that peer admitted.
    Pulled,
    /// The write came over a TLS connection whose client certificate
    /// verified against `[tls] ca`: the writer is a node of the cluster.
    Certificate,
}

/// Who may be a peer (docs/cluster.md#who-is-a-peer). The registry's
/// `infra.discovery` records are the cluster's membership, and every SDK
/// takes its node list from them, so a record is stored only when:
///
/// * every address of it is this node's or in the static `nodes` and
///   `[zones]` lists, in the zone the record names (how Go nodes of a
///   mixed cluster are configured); or
/// * `[auth] peer_token` is set and the record was written with a valid
///   signature, or pulled from a peer that admitted it; or
/// * `[tls] client_auth` asks for certificates and the record was written
///   by a client whose certificate verified against `ca`, or pulled from a
///   peer (reached over HTTPS and verified against `ca`).
///
/// Anything else is refused with a message that names the fix; no request
/// is ever sent to a record's address to "check" it, since any process can
/// answer like a node.
#[derive(Debug)]
pub struct PeerRule {
    own: String,
    own_zone: String,
    /// Configured address → the zone the config puts it in.
    statics: std::collections::HashMap<String, String>,
    secret: bool,
    /// Client certificates are verified against `[tls] ca`.
    certificates: bool,
    max_peers: usize,
    /// Addresses already logged as refused, so that a flood logs each once
    /// (bounded: forgotten wholesale past [`MAX_LOGGED`]).
    logged: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Refused addresses remembered for log de-duplication.
const MAX_LOGGED: usize = 1024;

impl PeerRule {
    /// The rule of a node advertising `own` with `config`'s static lists.
    pub fn new(own: &str, config: &crate::config::Config) -> Self {
        let own_zone = config.env.zone.clone();
        let mut statics = std::collections::HashMap::new();
        for (zone, list) in &config.zones {
            for a in list {
                statics.insert(a.clone(), zone.clone());
            }
        }
        for a in &config.nodes {
            statics.insert(a.clone(), own_zone.clone());
        }
        PeerRule {
            own: canonical(own).unwrap_or_else(|| own.to_string()),
            own_zone,
            statics,
            secret: config.auth.peer_token.is_some(),
            certificates: config.tls.enabled()
                && config.tls.client_auth != crate::config::ClientAuth::None,
            max_peers: config.limits.max_peers,
            logged: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Whether `ip` is the host of a configured peer (written as an IP).
    pub fn is_peer_ip(&self, ip: std::net::IpAddr) -> bool {
        self.statics
            .keys()
            .any(|a| naming::addr::PeerAddr::parse(a).is_ok_and(|p| p.ip() == Some(ip)))
    }

    /// Whether `addr` (canonical `host:port`) is this node or configured.
    pub fn is_static(&self, addr: &str) -> bool {
        addr == self.own || self.statics.contains_key(addr)
    }

    /// Whether `addr` is this node or configured, in `zone`: a configured
    /// address in another zone's record would make a node of one zone a
    /// peer of another.
    fn is_static_in(&self, addr: &str, zone: &str) -> bool {
        if addr == self.own {
            return zone == self.own_zone;
        }
        self.statics.get(addr).is_some_and(|z| z == zone)
    }

    /// Decides about `ins`; `learned` counts the admitted peers beyond the
    /// static lists, bounded by `limits.max_peers`.
    pub fn vet(&self, ins: &Instance, proof: Proof, learned: usize) -> Vetted {
        let mut addrs = Vec::with_capacity(ins.addrs.len());
        for a in &ins.addrs {
            match naming::addr::PeerAddr::parse(a) {
                Ok(p) => addrs.push(p.to_string()),
                Err(e) => {
                    return Vetted::Refused(format!(
                        "an {} record's addresses must be http(s)://host:port: {e}",
                        naming::DISCOVERY_APPID
                    ));
                }
            }
        }
        if addrs.is_empty() {
            return Vetted::Refused(format!(
                "an {} record needs an http://host:port address",
                naming::DISCOVERY_APPID
            ));
        }
        let unknown: Vec<&String> = addrs
            .iter()
            .filter(|a| !self.is_static_in(a, &ins.zone))
            .collect();
        if unknown.is_empty() {
            return Vetted::Admit;
        }
        let vouched = (self.secret && matches!(proof, Proof::Signed | Proof::Pulled))
            || (self.certificates && matches!(proof, Proof::Certificate | Proof::Pulled));
        if vouched && learned < self.max_peers {
            return Vetted::Admit;
        }
        let why = if vouched {
            format!(
                "too many discovery peers beyond the static lists: limits.max_peers ({})",
                self.max_peers
            )
        } else {
            format!(
                "{} is not a configured peer of zone {:?}: list it in `nodes` (or `[zones]`), \
                 set `[auth] peer_token` on every node, \
                 or give every node a certificate signed by `[tls] ca`",
                unknown[0], ins.zone
            )
        };
        let mut logged = self.logged.lock();
        if logged.len() >= MAX_LOGGED {
            logged.clear();
        }
        if logged.insert(unknown[0].clone()) {
            tracing::warn!(hostname = ?ins.hostname, zone = ?ins.zone, "peer record refused: {why:?}");
        }
        Vetted::Refused(why)
    }
}

/// `host:port` of a node address, or `None` when it is not one.
pub(crate) fn canonical(addr: &str) -> Option<String> {
    naming::addr::PeerAddr::parse(addr)
        .ok()
        .map(|a| a.to_string())
}

/// `/discovery/nodes` of a node without cluster membership: itself and the
/// static same-zone nodes of its config.
#[derive(Debug)]
pub struct StaticMembers {
    /// This node's advertised address.
    pub own: String,
    /// Its zone.
    pub zone: String,
    /// The static same-zone nodes of its config.
    pub nodes: Vec<String>,
    /// Who may be a peer.
    pub rule: PeerRule,
}

impl Members for StaticMembers {
    fn nodes(&self) -> Vec<NodeStatus> {
        let mut addrs: Vec<&String> = self.nodes.iter().chain([&self.own]).collect();
        addrs.sort();
        addrs.dedup();
        addrs
            .into_iter()
            .map(|addr| NodeStatus {
                addr: addr.clone(),
                status: 0,
                zone: self.zone.clone(),
            })
            .collect()
    }

    fn vet(&self, ins: &Instance, proof: Proof) -> Vetted {
        // Without a cluster nothing is learned: only the bound applies.
        self.rule.vet(ins, proof, 0)
    }

    fn is_peer_ip(&self, ip: std::net::IpAddr) -> bool {
        self.rule.is_peer_ip(ip)
    }
}
