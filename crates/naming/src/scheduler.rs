use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Zone scheduling weights: client zone → destination zone → weight.
///
/// The server emits the object form that the kratos SDK reads:
///
/// ```
/// let s = naming::Scheduler::from_json(
///     r#"{"clients":{"sh001":{"zones":{"sh001":{"weight":3},"sh002":{"weight":1}}}},"remark":""}"#,
/// ).unwrap();
/// assert_eq!(s.weight("sh001", "sh002"), Some(1));
/// // The array form of the Go original's own SDK is read too.
/// let a = naming::Scheduler::from_json(r#"[{"src":"sh001","dst":{"sh001":3,"sh002":1}}]"#).unwrap();
/// assert_eq!(a.clients, s.clients);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scheduler {
    /// Client zone → strategy.
    #[serde(default)]
    pub clients: BTreeMap<String, ZoneStrategy>,
    /// Free text kept from the scheduler file.
    #[serde(default)]
    pub remark: String,
}

/// Destination weights for the clients of one zone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZoneStrategy {
    /// Destination zone → weight.
    #[serde(default)]
    pub zones: BTreeMap<String, ZoneWeight>,
}

/// The weight of one destination zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZoneWeight {
    /// Relative weight; ≤ 0 means the zone gets no traffic.
    #[serde(default)]
    pub weight: i64,
}

#[derive(Deserialize)]
struct ArrayEntry {
    src: String,
    #[serde(default)]
    dst: BTreeMap<String, i64>,
}

impl Scheduler {
    /// Parses either the object form or the array form
    /// `[{"src":"sh001","dst":{"sh001":3}}]`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        Self::from_value(v)
    }

    /// Like [`Scheduler::from_json`], from a decoded value.
    pub fn from_value(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        if v.is_array() {
            let entries: Vec<ArrayEntry> = serde_json::from_value(v)?;
            let mut clients = BTreeMap::new();
            for e in entries {
                let zones = e
                    .dst
                    .into_iter()
                    .map(|(z, weight)| (z, ZoneWeight { weight }))
                    .collect();
                clients.insert(e.src, ZoneStrategy { zones });
            }
            Ok(Scheduler {
                clients,
                remark: String::new(),
            })
        } else {
            serde_json::from_value(v)
        }
    }

    /// The weight of `dst` for clients in `src`, if listed.
    pub fn weight(&self, src: &str, dst: &str) -> Option<i64> {
        Some(self.clients.get(src)?.zones.get(dst)?.weight)
    }

    /// Decodes a scheduler, treating `null` or anything undecodable as absent:
    /// a bad scheduler must never fail a whole poll answer.
    pub(crate) fn deserialize_lenient<'de, D>(d: D) -> Result<Option<Self>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(v.and_then(|v| Self::from_value(v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstancesInfo;

    #[test]
    fn undecodable_scheduler_is_absent() {
        let info: InstancesInfo =
            serde_json::from_str(r#"{"instances":{},"scheduler":"garbage","latest_timestamp":3}"#)
                .unwrap();
        assert_eq!(info.scheduler, None);
        assert_eq!(info.latest_timestamp, 3);
    }

    #[test]
    fn object_form_serializes_as_the_server_emits_it() {
        let s = Scheduler::from_json(r#"[{"src":"sh001","dst":{"sh002":1}}]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"clients":{"sh001":{"zones":{"sh002":{"weight":1}}}},"remark":""}"#
        );
    }
}
