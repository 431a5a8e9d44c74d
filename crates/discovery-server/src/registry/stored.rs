//! How the registry keeps an instance in memory.
//!
//! A registry of a million instances is mostly small strings: a zone, an
//! address, a version, a `weight` of `"10"`. Kept as a [`naming::Instance`]
//! each would be its own heap block, and an empty-but-one metadata
//! `BTreeMap` a 544-byte node. So the stored form:
//!
//! * leaves out what the maps around it already say: env and appid (the
//!   app's key), zone and hostname (the keys of the zone and host maps);
//! * keeps strings of up to 24 bytes inline ([`CompactString`]), which
//!   covers nearly every address, version, region and metadata pair;
//! * keeps metadata as a sorted slice, one block for all its pairs.
//!
//! Answers are serialized from it with the same fields in the same order
//! as [`naming::Instance`], byte for byte.

use std::collections::BTreeMap;

use compact_str::CompactString;
use naming::{Instance, Status};
use serde::{Serialize, Serializer, ser::SerializeStruct};
use smallvec::SmallVec;

use super::AppKey;

/// One instance, without the parts its place in the registry implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) region: CompactString,
    /// Almost always one address: kept inline.
    pub(crate) addrs: SmallVec<[CompactString; 1]>,
    pub(crate) version: CompactString,
    /// Sorted by key, keys unique.
    pub(crate) metadata: Box<[(CompactString, CompactString)]>,
    pub(crate) status: Status,
    pub(crate) reg_timestamp: i64,
    pub(crate) up_timestamp: i64,
    pub(crate) renew_timestamp: i64,
    pub(crate) dirty_timestamp: i64,
    pub(crate) latest_timestamp: i64,
}

impl Stored {
    /// The stored form of `ins`; its key fields are the caller's to keep.
    pub(crate) fn of(ins: &Instance) -> Self {
        Stored {
            region: ins.region.as_str().into(),
            addrs: ins.addrs.iter().map(|a| a.as_str().into()).collect(),
            version: ins.version.as_str().into(),
            metadata: metadata_of(&ins.metadata),
            status: ins.status,
            reg_timestamp: ins.reg_timestamp,
            up_timestamp: ins.up_timestamp,
            renew_timestamp: ins.renew_timestamp,
            dirty_timestamp: ins.dirty_timestamp,
            latest_timestamp: ins.latest_timestamp,
        }
    }

    /// The whole instance, keys put back.
    pub(crate) fn instance(&self, app: &AppKey, zone: &str, hostname: &str) -> Instance {
        Instance {
            region: self.region.to_string(),
            zone: zone.to_string(),
            env: app.env.clone(),
            appid: app.appid.clone(),
            hostname: hostname.to_string(),
            addrs: self.addrs.iter().map(ToString::to_string).collect(),
            version: self.version.to_string(),
            metadata: self.metadata_map(),
            status: self.status,
            reg_timestamp: self.reg_timestamp,
            up_timestamp: self.up_timestamp,
            renew_timestamp: self.renew_timestamp,
            dirty_timestamp: self.dirty_timestamp,
            latest_timestamp: self.latest_timestamp,
        }
    }

    /// The metadata as a map, for changes.
    pub(crate) fn metadata_map(&self) -> BTreeMap<String, String> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Replaces the metadata.
    pub(crate) fn set_metadata(&mut self, map: &BTreeMap<String, String>) {
        self.metadata = metadata_of(map);
    }

    /// Serializes as the [`naming::Instance`] it stands for.
    pub(crate) fn view<'a>(
        &'a self,
        app: &'a AppKey,
        zone: &'a str,
        hostname: &'a str,
    ) -> StoredView<'a> {
        StoredView {
            stored: self,
            app,
            zone,
            hostname,
        }
    }
}

fn metadata_of(map: &BTreeMap<String, String>) -> Box<[(CompactString, CompactString)]> {
    // A BTreeMap iterates in key order: the slice comes out sorted.
    map.iter()
        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
        .collect()
}

/// A stored instance with its keys, serializable.
pub(crate) struct StoredView<'a> {
    stored: &'a Stored,
    app: &'a AppKey,
    zone: &'a str,
    hostname: &'a str,
}

impl Serialize for StoredView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Metadata<'a>(&'a [(CompactString, CompactString)]);
        impl Serialize for Metadata<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        }
        let i = self.stored;
        let mut st = s.serialize_struct("Instance", 14)?;
        st.serialize_field("region", i.region.as_str())?;
        st.serialize_field("zone", self.zone)?;
        st.serialize_field("env", &self.app.env)?;
        st.serialize_field("appid", &self.app.appid)?;
        st.serialize_field("hostname", self.hostname)?;
        st.serialize_field("addrs", &i.addrs[..])?;
        st.serialize_field("version", i.version.as_str())?;
        st.serialize_field("metadata", &Metadata(&i.metadata))?;
        st.serialize_field("status", &i.status)?;
        st.serialize_field("reg_timestamp", &i.reg_timestamp)?;
        st.serialize_field("up_timestamp", &i.up_timestamp)?;
        st.serialize_field("renew_timestamp", &i.renew_timestamp)?;
        st.serialize_field("dirty_timestamp", &i.dirty_timestamp)?;
        st.serialize_field("latest_timestamp", &i.latest_timestamp)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_instance_it_stands_for() {
        let mut ins = Instance {
            region: "sh".into(),
            zone: "sh001".into(),
            env: "prod".into(),
            appid: "demo.svc".into(),
            hostname: "host-\"1\"".into(),
            addrs: vec![
                "grpc://10.0.0.1:9000".into(),
                "http://a-rather-long-host-name.example.com:8000".into(),
            ],
            version: "v1.2.3".into(),
            status: Status::Waiting,
            reg_timestamp: 1,
            up_timestamp: 2,
            renew_timestamp: 3,
            dirty_timestamp: 4,
            latest_timestamp: 5,
            ..Default::default()
        };
        ins.metadata.insert("weight".into(), "10".into());
        ins.metadata.insert("color".into(), "</red&>".into());
        let stored = Stored::of(&ins);
        let app = AppKey::new("prod", "demo.svc");
        assert_eq!(
            serde_json::to_string(&stored.view(&app, "sh001", "host-\"1\"")).unwrap(),
            serde_json::to_string(&ins).unwrap()
        );
        assert_eq!(stored.instance(&app, "sh001", "host-\"1\""), ins);
        assert_eq!(stored.metadata_map(), ins.metadata);
    }
}
