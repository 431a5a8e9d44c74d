//! The peer protocol (docs/protocol.md#peer-protocol): the same form POSTs a client sends, with
//! `replication` / `from_zone` set, so that Go original nodes understand us.

use naming::Instance;
use serde::Deserialize;

use crate::{registry::MetadataPatch, replication::Op};

/// How a forwarded write is flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags {
    pub(crate) replication: bool,
    pub(crate) from_zone: bool,
}

/// The url-encoded form of a forwarded write, written field by field.
type Form = form_urlencoded::Serializer<'static, String>;

fn b(v: bool) -> &'static str {
    if v { "true" } else { "false" }
}

fn key_fields(form: &mut Form, i: &Instance, flags: Flags) {
    form.append_pair("region", &i.region);
    form.append_pair("zone", &i.zone);
    form.append_pair("env", &i.env);
    form.append_pair("appid", &i.appid);
    form.append_pair("hostname", &i.hostname);
    form.append_pair("from_zone", b(flags.from_zone));
    form.append_pair("replication", b(flags.replication));
}

/// Path and url-encoded body of one forwarded write.
pub(crate) fn encode(op: &Op, flags: Flags) -> (&'static str, String) {
    let mut form = Form::new(String::with_capacity(256));
    let path = match op {
        Op::Register(i) => {
            register_fields(&mut form, i, flags);
            "/discovery/register"
        }
        Op::Renew(i) => {
            key_fields(&mut form, i, flags);
            form.append_pair("dirty_timestamp", &i.dirty_timestamp.to_string());
            "/discovery/renew"
        }
        Op::Cancel(i, at) => {
            key_fields(&mut form, i, flags);
            form.append_pair("latest_timestamp", &at.to_string());
            "/discovery/cancel"
        }
        Op::Set(s) => {
            form.append_pair("region", "");
            form.append_pair("zone", &s.zone);
            form.append_pair("env", &s.env);
            form.append_pair("appid", &s.appid);
            form.append_pair("from_zone", b(flags.from_zone));
            form.append_pair("replication", b(flags.replication));
            form.append_pair("set_timestamp", &s.set_timestamp.to_string());
            for h in &s.hostnames {
                form.append_pair("hostname", h);
            }
            for st in &s.status {
                form.append_pair("status", &st.as_u32().to_string());
            }
            for m in &s.metadata {
                let text = match m {
                    MetadataPatch::Clear => "null".to_string(),
                    MetadataPatch::Merge(map) => {
                        serde_json::to_string(map).expect("map serializes")
                    }
                };
                form.append_pair("metadata", &text);
            }
            "/discovery/set"
        }
    };
    (path, form.finish())
}

fn register_fields(form: &mut Form, i: &Instance, flags: Flags) {
    key_fields(form, i, flags);
    // One field per address: the Go original's comma-joining corrupted
    // multi-address instances.
    for a in &i.addrs {
        form.append_pair("addrs", a);
    }
    form.append_pair("status", &i.status.as_u32().to_string());
    form.append_pair("version", &i.version);
    form.append_pair(
        "metadata",
        &serde_json::to_string(&i.metadata).expect("map serializes"),
    );
    form.append_pair("reg_timestamp", &i.reg_timestamp.to_string());
    form.append_pair("dirty_timestamp", &i.dirty_timestamp.to_string());
    form.append_pair("latest_timestamp", &i.latest_timestamp.to_string());
}

/// The part of a peer's answer we act on.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer {
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) data: Option<Instance>,
}

/// One write inside a batch: the route and the form it would be sent as.
#[derive(Debug, serde::Serialize, Deserialize)]
pub(crate) struct BatchOp {
    pub(crate) path: String,
    pub(crate) form: String,
}

/// The body of `POST /discovery/replicate`.
#[derive(Debug, serde::Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<BatchOp>,
}

/// Its answer: one per write, in order.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchAnswer {
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) data: Option<Vec<Answer>>,
}

/// The `fetch/all` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct AllAnswer {
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) data: Option<std::collections::BTreeMap<String, Vec<Instance>>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SetRequest;
    use naming::Status;
    use std::collections::BTreeMap;

    #[test]
    fn register_sends_one_field_per_address() {
        let i = Instance {
            zone: "z".into(),
            env: "dev".into(),
            appid: "a".into(),
            hostname: "h".into(),
            addrs: vec!["grpc://x:1".into(), "http://x:2".into()],
            status: Status::Up,
            dirty_timestamp: 7,
            ..Default::default()
        };
        let (path, body) = encode(
            &Op::Register(i.into()),
            Flags {
                replication: true,
                from_zone: false,
            },
        );
        assert_eq!(path, "/discovery/register");
        assert!(
            body.contains("addrs=grpc%3A%2F%2Fx%3A1&addrs=http%3A%2F%2Fx%3A2"),
            "{body}"
        );
        assert!(body.contains("replication=true") && body.contains("from_zone=false"));
        assert!(body.contains("dirty_timestamp=7") && body.contains("metadata=%7B%7D"));
    }

    #[test]
    fn set_round_trips_patches() {
        let s = SetRequest {
            env: "dev".into(),
            appid: "a".into(),
            zone: "z".into(),
            hostnames: vec!["h1".into(), "h2".into()],
            status: vec![],
            metadata: vec![
                MetadataPatch::Clear,
                MetadataPatch::Merge(BTreeMap::from([("k".to_string(), None)])),
            ],
            set_timestamp: 9,
        };
        let (_, body) = encode(
            &Op::Set(s),
            Flags {
                replication: true,
                from_zone: true,
            },
        );
        assert!(
            body.contains("metadata=null&metadata=%7B%22k%22%3Anull%7D"),
            "{body}"
        );
        assert!(body.contains("hostname=h1&hostname=h2"));
    }
}
