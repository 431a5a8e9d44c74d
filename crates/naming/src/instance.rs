use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{DEFAULT_WEIGHT, Scheduler};

/// Well-known metadata keys.
pub mod metadata {
    /// Integer balancer weight; missing, unparsable or ≤ 0 means
    /// [`DEFAULT_WEIGHT`](crate::DEFAULT_WEIGHT).
    pub const WEIGHT: &str = "weight";
    /// Label matched by the `cluster=` target filter.
    pub const CLUSTER: &str = "cluster";
    /// Informational copy of the zone.
    pub const ZONE: &str = "zone";
    /// Traffic colour; empty means uncoloured.
    pub const COLOR: &str = "color";
}

/// Whether an instance should receive traffic.
///
/// On the wire this is an integer: `1` UP, `2` waiting. Other values are kept
/// as they are so that a decoder never fails on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u32", into = "u32")]
pub enum Status {
    /// `1`: receives traffic.
    #[default]
    Up,
    /// `2`: registered but receives no traffic.
    Waiting,
    /// Any other value.
    Other(u32),
}

impl Status {
    /// The wire value.
    pub const fn as_u32(self) -> u32 {
        match self {
            Status::Up => 1,
            Status::Waiting => 2,
            Status::Other(v) => v,
        }
    }

    /// Whether the status matches a `status` bitmask of the fetch routes
    /// (1 = UP, 2 = waiting, 3 = both).
    pub const fn matches(self, mask: u32) -> bool {
        self.as_u32() & mask != 0
    }
}

impl From<u32> for Status {
    fn from(v: u32) -> Self {
        match v {
            1 => Status::Up,
            2 => Status::Waiting,
            v => Status::Other(v),
        }
    }
}

impl From<Status> for u32 {
    fn from(s: Status) -> u32 {
        s.as_u32()
    }
}

/// One registered copy of a service, keyed by (env, appid, zone, hostname).
///
/// Field order is the wire order. Timestamps are nanoseconds since the Unix
/// epoch, local to the discovery node that produced them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Instance {
    /// Region.
    pub region: String,
    /// Zone (data centre).
    pub zone: String,
    /// Deploy env: `dev`, `fat`, `uat`, `pre`, `prod`, …
    pub env: String,
    /// Service name, e.g. `demo.service`.
    pub appid: String,
    /// Identity inside (env, appid, zone).
    pub hostname: String,
    /// `scheme://host:port` addresses.
    pub addrs: Vec<String>,
    /// Build version.
    pub version: String,
    /// String metadata; keys come out sorted. `null` decodes as empty.
    #[serde(deserialize_with = "metadata_de")]
    pub metadata: BTreeMap<String, String>,
    /// Traffic status.
    pub status: Status,
    /// When this copy was created.
    pub reg_timestamp: i64,
    /// When the status last became UP.
    pub up_timestamp: i64,
    /// Last renew or register; drives eviction.
    pub renew_timestamp: i64,
    /// Data version used to arbitrate between copies.
    pub dirty_timestamp: i64,
    /// Last change.
    pub latest_timestamp: i64,
}

impl Instance {
    /// The balancer weight from `metadata.weight`, or
    /// [`DEFAULT_WEIGHT`] when it is missing, unparsable or ≤ 0.
    ///
    /// ```
    /// let mut ins = naming::Instance::default();
    /// assert_eq!(ins.weight(), 10);
    /// ins.metadata.insert("weight".into(), "-3".into());
    /// assert_eq!(ins.weight(), 10);
    /// ins.metadata.insert("weight".into(), "25".into());
    /// assert_eq!(ins.weight(), 25);
    /// ```
    pub fn weight(&self) -> u32 {
        self.metadata
            .get(metadata::WEIGHT)
            .and_then(|w| w.trim().parse::<i64>().ok())
            .filter(|w| *w > 0)
            .map_or(DEFAULT_WEIGHT, |w| u32::try_from(w).unwrap_or(u32::MAX))
    }

    /// The `cluster` metadata value, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.metadata
            .get(metadata::CLUSTER)
            .map(String::as_str)
            .filter(|c| !c.is_empty())
    }

    /// The traffic colour, if any.
    pub fn color(&self) -> Option<&str> {
        self.metadata
            .get(metadata::COLOR)
            .map(String::as_str)
            .filter(|c| !c.is_empty())
    }

    /// The `host:port` of the last address with the given scheme (compared
    /// ignoring case, as Go's URL parser does; see [`crate::addr::Addr`]).
    ///
    /// ```
    /// let ins = naming::Instance {
    ///     addrs: vec!["http://h:8000".into(), "grpc://h:9000".into()],
    ///     ..Default::default()
    /// };
    /// assert_eq!(ins.addr("http"), Some("h:8000"));
    /// assert_eq!(ins.addr("zk"), None);
    /// ```
    pub fn addr(&self, scheme: &str) -> Option<&str> {
        self.addrs.iter().rev().find_map(|a| {
            let a = crate::addr::Addr::parse(a).ok()?;
            a.has_scheme(scheme).then_some(a.authority())
        })
    }

    /// The `host:port` of the last `grpc://` address.
    pub fn grpc_addr(&self) -> Option<&str> {
        self.addr("grpc")
    }
}

/// Every instance of one app, by zone, as the fetch and poll routes answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InstancesInfo {
    /// Zone → instances, zones sorted, instances by hostname.
    #[serde(default, deserialize_with = "null_default")]
    pub instances: BTreeMap<String, Vec<Instance>>,
    /// Zone scheduling weights, when the server has a scheduler for the app.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Scheduler::deserialize_lenient"
    )]
    pub scheduler: Option<Scheduler>,
    /// The app's change counter on the answering node.
    #[serde(default)]
    pub latest_timestamp: i64,
}

impl InstancesInfo {
    /// Number of instances over all zones.
    pub fn len(&self) -> usize {
        self.instances.values().map(Vec::len).sum()
    }

    /// Whether no zone holds an instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every instance, zone by zone.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().flatten()
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accepts `null`, and non-string values as their compact JSON text, so that a
/// registry written by anything else still decodes.
fn metadata_de<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE: &str = r#"{"region":"sh","zone":"sh001","env":"dev","appid":"demo.svc","hostname":"h1","addrs":["grpc://10.0.0.1:9000"],"version":"v1","metadata":{"weight":"10"},"status":1,"reg_timestamp":1700000000000000000,"up_timestamp":1700000000000000000,"renew_timestamp":1700000000000000000,"dirty_timestamp":1700000000000000000,"latest_timestamp":1700000000000000000}"#;

    #[test]
    fn instance_round_trips_byte_for_byte() {
        let ins: Instance = serde_json::from_str(WIRE).unwrap();
        assert_eq!(serde_json::to_string(&ins).unwrap(), WIRE);
    }

    #[test]
    fn timestamps_beyond_2_pow_53_are_exact() {
        let json = WIRE.replace("1700000000000000000,\"dirty", "9007199254740993,\"dirty");
        let ins: Instance = serde_json::from_str(&json).unwrap();
        assert_eq!(ins.renew_timestamp, 9_007_199_254_740_993);
        assert!(
            serde_json::to_string(&ins)
                .unwrap()
                .contains("9007199254740993")
        );
    }

    #[test]
    fn null_metadata_and_unknown_fields_decode() {
        let ins: Instance =
            serde_json::from_str(r#"{"appid":"a","metadata":null,"extra":[1,2],"status":2}"#)
                .unwrap();
        assert!(ins.metadata.is_empty());
        assert_eq!(ins.status, Status::Waiting);
        assert_eq!(ins.zone, "");
    }

    #[test]
    fn non_string_metadata_becomes_json_text() {
        let ins: Instance =
            serde_json::from_str(r#"{"metadata":{"weight":10,"a":null,"b":true}}"#).unwrap();
        assert_eq!(ins.metadata["weight"], "10");
        assert_eq!(ins.metadata["a"], "");
        assert_eq!(ins.metadata["b"], "true");
    }

    #[test]
    fn weight_falls_back_to_ten() {
        for w in ["", "0", "-3", "x"] {
            let mut ins = Instance::default();
            ins.metadata.insert(metadata::WEIGHT.into(), w.into());
            assert_eq!(ins.weight(), DEFAULT_WEIGHT, "weight {w:?}");
        }
    }

    #[test]
    fn instances_info_omits_absent_scheduler() {
        let info = InstancesInfo {
            instances: BTreeMap::from([("sh001".to_string(), vec![])]),
            scheduler: None,
            latest_timestamp: 5,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"instances":{"sh001":[]},"latest_timestamp":5}"#
        );
        let back: InstancesInfo =
            serde_json::from_str(r#"{"instances":null,"scheduler":null,"latest_timestamp":5}"#)
                .unwrap();
        assert!(back.instances.is_empty());
    }

    #[test]
    fn status_other_values_survive() {
        let s: Status = serde_json::from_str("7").unwrap();
        assert_eq!(s, Status::Other(7));
        assert!(Status::Up.matches(3) && Status::Waiting.matches(3));
        assert!(!Status::Waiting.matches(1) && !Status::Up.matches(4));
    }
}
