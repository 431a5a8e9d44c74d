//! The read routes: fetch, fetchs, fetch/all and nodes.

use std::collections::BTreeMap;

use axum::extract::State;
use bytes::Bytes;

use super::{Api, Bound, Caller, Shared};
use crate::{
    params::Params,
    registry::Fetched,
    reply::{NOT_FOUND, Reply},
};

/// `GET /discovery/fetch/all`: everything, for a peer's start-up sync;
/// answered while syncing too.
pub(super) async fn fetch_all(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<axum::response::Response, Reply> {
    if let Some(r) = api.gate(true) {
        return Err(r);
    }
    api.authorize(crate::auth::Need::PeerRead, &caller, &p)?;
    let slot = api.dump_slot()?;
    Ok(Api::holding(Reply::ok().json(&api.registry.all()), slot))
}

/// `zone` and the required `status` bitmask of the fetch routes.
fn fetch_scope(p: &Params) -> Result<(Option<&str>, u32), Reply> {
    let zone = Some(p.str("zone")).filter(|z| !z.is_empty());
    match p.u32("status")? {
        0 => Err(Reply::bad_param("status", "required")),
        s => Ok((zone, s)),
    }
}

/// `GET /discovery/fetch`: one app's instances.
pub(super) async fn fetch(State(api): Shared, Bound(p): Bound) -> Result<Reply, Reply> {
    let env = p.required("env")?;
    let appid = p.required("appid")?;
    // The nodes' own records are always right, so they are served while
    // syncing too: a peer verifying this node's record asks for them.
    if appid != naming::DISCOVERY_APPID {
        if let Some(r) = api.gate(false) {
            return Err(r);
        }
    }
    let (zone, status) = fetch_scope(&p)?;
    let reply = match api.registry.fetch(env, appid, zone, status) {
        Fetched::Found(json) => Reply::ok().data(json),
        Fetched::Unknown => Reply::code(NOT_FOUND).null(),
        Fetched::ZoneAbsent { latest_timestamp } => Reply::code(NOT_FOUND).data(Bytes::from(
            format!(r#"{{"instances":{{}},"latest_timestamp":{latest_timestamp}}}"#),
        )),
    };
    Ok(reply)
}

/// `GET /discovery/fetchs`: several apps' instances.
pub(super) async fn fetchs(State(api): Shared, Bound(p): Bound) -> Result<Reply, Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    let env = p.required("env")?;
    let appids = p.list("appid");
    if appids.is_empty() {
        return Err(Reply::bad_param("appid", "required"));
    }
    api.check_appids(&appids)?;
    let (zone, status) = fetch_scope(&p)?;
    let mut found = BTreeMap::new();
    for appid in appids {
        if let Fetched::Found(json) = api.registry.fetch(env, appid, zone, status) {
            found.insert(appid, json);
        }
    }
    let mut buf = Vec::with_capacity(found.values().map(Bytes::len).sum::<usize>() + 64);
    buf.push(b'{');
    for (i, (appid, json)) in found.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, appid).expect("writing to memory");
        buf.push(b':');
        buf.extend_from_slice(json);
    }
    buf.push(b'}');
    Ok(Reply::ok().data(Bytes::from(buf)))
}

/// `GET /discovery/nodes`: this zone's nodes and their status.
pub(super) async fn nodes(State(api): Shared) -> Result<Reply, Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    Ok(Reply::ok().json(&api.members.nodes()))
}
