//! The write routes: register, renew, cancel, set, and batches of
//! replicated writes (`POST /discovery/replicate`, between our nodes).
//! Each route's `*_apply` works on bound, authorized parameters, so that a
//! batch applies its writes exactly as the single routes do.

use std::collections::BTreeMap;

use axum::{body::Body, extract::State};
use bytes::Bytes;
use http::Request;
use naming::{Instance, Status};

use super::{
    Api, Bound, Caller, Shared, check_reserved, is_peer, observe_peer_clock, origin, write_need,
};
use crate::{
    auth::Grant,
    membership::{Proof, Vetted},
    params::Params,
    registry::{MetadataPatch, RegisterOptions, Renewed, SetError, SetRequest},
    replication::Op,
    reply::{BAD_REQUEST, CONFLICT, NOT_FOUND, Reply},
};

/// Decodes register/set metadata values: strings as they are, `null` as
/// `""` (register) or removal (set), anything else as compact JSON text.
fn metadata_value(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub(super) async fn register(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<Reply, Reply> {
    api.authorize(write_need(&p), &caller, &p)?;
    register_apply(&api, &p).await
}

/// `register` on bound, authorized parameters (also used for batches).
async fn register_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p)?;
    let key = api.instance_key(p)?;
    check_reserved(p, &key.appid)?;
    let status = match p.u32("status")? {
        0 => return Err(Reply::bad_param("status", "required")),
        s @ (1 | 2) => Status::from(s),
        s => {
            return Err(Reply::bad_param(
                "status",
                format!("{s} is not 1 (UP) or 2 (waiting)"),
            ));
        }
    };
    let peer = is_peer(p);
    let mut addrs: Vec<String> = p.list("addrs").into_iter().map(str::to_string).collect();
    if peer && addrs.len() == 1 && addrs[0].contains(',') {
        // The Go original's peers comma-join the addresses of an instance.
        addrs = addrs[0]
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
    }
    if addrs.is_empty() {
        return Err(Reply::bad_param("addrs", "required"));
    }
    let limits = &api.config.limits;
    if addrs.len() > limits.max_addrs {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "{} addrs exceed limits.max_addrs ({})",
                addrs.len(),
                limits.max_addrs
            ),
        ));
    }
    for a in &addrs {
        api.check_len("addrs", a)?;
        if !valid_addr(a) {
            return Err(Reply::bad_param(
                "addrs",
                format!("{a:?} contains control characters"),
            ));
        }
    }
    let region = p.str("region");
    let version = p.str("version");
    api.check_len("region", region)?;
    api.check_len("version", version)?;
    let metadata = parse_register_metadata(api, p.str("metadata"))?;
    let dirty_timestamp = p.i64("dirty_timestamp")?;
    let reg_timestamp = p.i64("reg_timestamp")?;
    p.i64("latest_timestamp")?;

    if api.registry.len() >= limits.max_instances && api.registry.get(&key).is_none() {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "registry is full: limits.max_instances ({})",
                limits.max_instances
            ),
        ));
    }
    let ins = Instance {
        region: region.to_string(),
        zone: key.zone,
        env: key.env,
        appid: key.appid,
        hostname: key.hostname,
        addrs,
        version: version.to_string(),
        metadata,
        status,
        ..Default::default()
    };
    let opts = RegisterOptions {
        dirty_timestamp: dirty_timestamp.max(0),
        reg_timestamp: if peer { reg_timestamp.max(0) } else { 0 },
        peer,
    };
    if ins.appid == naming::DISCOVERY_APPID {
        let proof = if p.signed {
            Proof::Signed
        } else if p.certified {
            Proof::Certificate
        } else {
            Proof::None
        };
        if let Vetted::Refused(why) = api.members.vet(&ins, proof) {
            api.metrics.peer_record_refused();
            return Err(Reply::message(BAD_REQUEST, why));
        }
    }
    let out = api.registry.register(ins, opts, api.clock.now());
    let i = &out.instance;
    tracing::info!(
        appid = %i.appid, env = %i.env, zone = %i.zone, hostname = %i.hostname,
        addrs = ?i.addrs, new = out.is_new, applied = out.applied, peer,
        "register"
    );
    if let Some(origin) = origin(p) {
        api.replicator
            .replicate(Op::Register(out.instance.into()), origin)
            .await;
    }
    Ok(Reply::ok())
}

/// A client's address is opaque, as the Go original keeps it: any
/// `scheme://rest` (port optional, `unix://` included, commas kept), so
/// only text that would corrupt logs or answers is refused.
fn valid_addr(a: &str) -> bool {
    !a.is_empty() && !a.chars().any(char::is_control)
}

fn parse_register_metadata(api: &Api, text: &str) -> Result<BTreeMap<String, String>, Reply> {
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let limits = &api.config.limits;
    if text.len() > limits.max_metadata_bytes {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "metadata exceeds limits.max_metadata_bytes ({})",
                limits.max_metadata_bytes
            ),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Reply::code(BAD_REQUEST))?;
    let map = match value {
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        serde_json::Value::Object(m) => m,
        _ => return Err(Reply::bad_param("metadata", "not a JSON object")),
    };
    if map.len() > limits.max_metadata_keys {
        return Err(Reply::message(
            BAD_REQUEST,
            format!(
                "metadata exceeds limits.max_metadata_keys ({})",
                limits.max_metadata_keys
            ),
        ));
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, metadata_value(v).unwrap_or_default()))
        .collect())
}

pub(super) async fn renew(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<Reply, Reply> {
    api.authorize(write_need(&p), &caller, &p)?;
    renew_apply(&api, &p).await
}

/// `renew` on bound, authorized parameters (also used for batches).
async fn renew_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p)?;
    let key = api.instance_key(p)?;
    check_reserved(p, &key.appid)?;
    if key.appid == naming::DISCOVERY_APPID && is_peer(p) {
        // A node renewing its record is alive: flush our queue to it.
        if let Some(record) = api.registry.get(&key) {
            for a in record
                .addrs
                .iter()
                .filter_map(|a| crate::membership::canonical(a))
            {
                api.members.heard_from(&a);
            }
        }
    }
    let dirty = p.i64("dirty_timestamp")?;
    let peer_dirty = is_peer(p).then_some(dirty);
    let out = api.registry.renew(&key, peer_dirty, api.clock.now());
    tracing::debug!(appid = %key.appid, hostname = %key.hostname, found = out.is_found(), "renew");
    let reply = match &out {
        Renewed::NotFound => return Ok(Reply::code(NOT_FOUND).null()),
        Renewed::Ok(i) => Reply::ok().json(i),
        Renewed::PeerNewer(i) => Reply::code(NOT_FOUND).json(i),
        Renewed::PeerOlder(i) => Reply::code(CONFLICT).json(i),
    };
    if let (Some(origin), Renewed::Ok(i) | Renewed::PeerNewer(i) | Renewed::PeerOlder(i)) =
        (origin(p), out)
    {
        api.replicator.replicate(Op::Renew(i.into()), origin).await;
    }
    Ok(reply)
}

pub(super) async fn cancel(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<Reply, Reply> {
    let grant = api.authorize(write_need(&p), &caller, &p)?;
    if api.audited(&caller, &p) {
        audit_cancel(&api, &caller, grant, &p);
    }
    cancel_apply(&api, &p).await
}

/// A cancel from an address that is not one of the instance's own is an
/// act on another process's registration: logged with who did it.
fn audit_cancel(api: &Api, caller: &Caller, grant: Grant, p: &Params) {
    let Ok(key) = api.instance_key(p) else {
        return;
    };
    let Some(ins) = api.registry.get(&key) else {
        return;
    };
    let own = caller.ip.is_some_and(|ip| {
        ins.addrs
            .iter()
            .any(|a| naming::addr::Addr::parse(a).is_ok_and(|a| a.ip() == Some(ip)))
    });
    if !own {
        api.metrics.admin_write("/discovery/cancel");
        tracing::info!(
            target: "discovery::audit",
            route = "/discovery/cancel",
            caller = ?caller.ip,
            credential = grant.name(),
            appid = ?key.appid, env = ?key.env, zone = ?key.zone, hostname = ?key.hostname,
            "cancel of an instance from an address that is not its own"
        );
    }
}

/// `cancel` on bound, authorized parameters (also used for batches).
async fn cancel_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p)?;
    let key = api.instance_key(p)?;
    check_reserved(p, &key.appid)?;
    let cancelled_at = p.i64("latest_timestamp")?;
    let now = api.clock.now();
    let at = if is_peer(p) && cancelled_at > 0 {
        cancelled_at
    } else {
        now
    };
    // A node still in its start-up sync does not know yet what its peers
    // hold: a client's cancel of a key it lacks is remembered and passed
    // on (bounded by `max_tombstones`), instead of a -404 that would leave
    // the instance alive on the peers.
    let syncing = !is_peer(p) && api.phase() == crate::node::Phase::Syncing;
    let Some(gone) = api.registry.cancel_at(&key, now, at, is_peer(p) || syncing) else {
        if !syncing {
            return Ok(Reply::code(NOT_FOUND));
        }
        tracing::info!(appid = %key.appid, hostname = %key.hostname, "cancel while syncing: remembered and passed on");
        let gone = Instance {
            env: key.env,
            appid: key.appid,
            zone: key.zone,
            hostname: key.hostname,
            ..Default::default()
        };
        if let Some(origin) = origin(p) {
            api.replicator
                .replicate(Op::Cancel(gone.into(), now), origin)
                .await;
        }
        return Ok(Reply::ok());
    };
    tracing::info!(appid = %key.appid, env = %key.env, zone = %key.zone, hostname = %key.hostname, "cancel");
    if let Some(origin) = origin(p) {
        api.replicator
            .replicate(Op::Cancel(gone.into(), now), origin)
            .await;
    }
    Ok(Reply::ok())
}

pub(super) async fn set(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<Reply, Reply> {
    let grant = api.authorize(set_need(&p), &caller, &p)?;
    audit_set(&api, &caller, grant, &p);
    set_apply(&api, &p).await
}

/// A `set` changes other processes' instances: logged with who did it,
/// unless a peer passes it on (see [`Api::audited`]).
fn audit_set(api: &Api, caller: &Caller, grant: Grant, p: &Params) {
    if !api.audited(caller, p) {
        return;
    }
    api.metrics.admin_write("/discovery/set");
    tracing::info!(
        target: "discovery::audit",
        route = "/discovery/set",
        caller = ?caller.ip,
        credential = grant.name(),
        appid = ?p.str("appid"), env = ?p.str("env"), zone = ?p.str("zone"),
        hostnames = ?p.list("hostname"),
        "set"
    );
}

/// Changing another process's instances is an operator's act: the admin
/// token, or the peer token for a replicated set.
fn set_need(p: &Params) -> crate::auth::Need {
    if is_peer(p) {
        crate::auth::Need::PeerAdmin
    } else {
        crate::auth::Need::Admin
    }
}

/// `set` on bound, authorized parameters (also used for batches).
async fn set_apply(api: &Api, p: &Params) -> Result<Reply, Reply> {
    observe_peer_clock(api, p)?;
    let zone = api.key_field(p, "zone")?;
    let env = api.key_field(p, "env")?;
    let appid = api.key_field(p, "appid")?;
    check_reserved(p, appid)?;
    let hostnames = p.list("hostname");
    if hostnames.is_empty() {
        return Err(Reply::bad_param("hostname", "required"));
    }
    let status = p
        .i64_list("status")?
        .into_iter()
        .map(|s| match s {
            1 | 2 => Ok(Status::from(s as u32)),
            s => Err(Reply::bad_param(
                "status",
                format!("{s} is not 1 (UP) or 2 (waiting)"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = p
        .list("metadata")
        .into_iter()
        .map(parse_set_metadata)
        .collect::<Result<Vec<_>, _>>()?;
    let set_timestamp = p.i64("set_timestamp")?;
    let now = api.clock.now();
    let mut req = SetRequest {
        env: env.to_string(),
        appid: appid.to_string(),
        zone: zone.to_string(),
        hostnames: hostnames.into_iter().map(str::to_string).collect(),
        status,
        metadata,
        set_timestamp: if set_timestamp == 0 {
            now
        } else {
            set_timestamp
        },
    };
    match api.registry.set(&req, now) {
        Ok(()) => {}
        Err(SetError::NotFound(h)) => {
            return Err(Reply::bad_param("hostname", format!("{h} not found")));
        }
        Err(SetError::LengthMismatch(name)) => {
            return Err(Reply::bad_param(
                name,
                "count does not match hostname count",
            ));
        }
    }
    if let Some(origin) = origin(p) {
        req.set_timestamp = req.set_timestamp.max(1);
        api.replicator.replicate(Op::Set(req), origin).await;
    }
    Ok(Reply::ok())
}

/// A batch of writes from a node of ours.
#[derive(serde::Deserialize)]
struct Batch {
    ops: Vec<BatchOp>,
}

#[derive(serde::Deserialize)]
struct BatchOp {
    path: String,
    form: String,
}

/// `POST /discovery/replicate` (ours): several replicated writes in one
/// request, applied in order, each answered as its own route would. Only
/// peer-originated writes are taken.
pub(super) async fn replicate(
    State(api): Shared,
    caller: Caller,
    req: Request<Body>,
) -> Result<Reply, Reply> {
    let api = &*api;
    let (parts, body) = req.into_parts();
    let body = crate::params::read_body(body, api.config.limits.max_body_bytes).await?;
    let whole = api.raw_proofs(&parts, &body)?;
    api.authorize(crate::auth::Need::PeerWrite, &caller, &whole)?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| Reply::bad_param("ops", format!("not a batch: {e}")))?;
    let mut out = Vec::with_capacity(64 * batch.ops.len() + 2);
    out.push(b'[');
    for (i, op) in batch.ops.iter().enumerate() {
        let mut p = Params::from_query(&op.form);
        // The batch's signature (and connection) covers every write in it.
        p.signed = whole.signed;
        p.certified = whole.certified;
        let result = if !is_peer(&p) {
            Err(Reply::bad_param(
                "replication",
                "a batch carries replicated writes only",
            ))
        } else {
            match op.path.as_str() {
                "/discovery/register" => register_apply(api, &p).await,
                "/discovery/renew" => renew_apply(api, &p).await,
                "/discovery/cancel" => cancel_apply(api, &p).await,
                "/discovery/set" => match api.authorize(set_need(&p), &caller, &p) {
                    Ok(grant) => {
                        audit_set(api, &caller, grant, &p);
                        set_apply(api, &p).await
                    }
                    Err(e) => Err(e),
                },
                other => Err(Reply::bad_param(
                    "path",
                    format!("{other:?} cannot be batched"),
                )),
            }
        };
        let reply = result.unwrap_or_else(|e| e);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"code\":{}", reply.code_of()).as_bytes());
        if let Some(data) = reply.data_of() {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(Reply::ok().data(Bytes::from(out)))
}

fn parse_set_metadata(text: &str) -> Result<MetadataPatch, Reply> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Reply::code(BAD_REQUEST))?;
    match value {
        serde_json::Value::Null => Ok(MetadataPatch::Clear),
        serde_json::Value::Object(m) => Ok(MetadataPatch::Merge(
            m.into_iter().map(|(k, v)| (k, metadata_value(v))).collect(),
        )),
        _ => Err(Reply::bad_param("metadata", "not a JSON object or null")),
    }
}
