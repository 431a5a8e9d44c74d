//! The anti-entropy routes, spoken between our nodes only
//! (docs/cluster.md#anti-entropy): a digest of the registry per app, and
//! the state of the apps whose digests differ.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{Bound, Caller, Shared};
use crate::{
    auth::Need,
    registry::AppKey,
    reply::{BAD_REQUEST, Reply},
};

/// Most apps one `/discovery/apps` request asks for.
pub(crate) const MAX_APPS_PER_PULL: usize = 256;

/// `GET /discovery/digest[?root=<hex>]`: the root digest, and the per-app
/// digests unless the caller's root (`root`) already equals ours.
pub(super) async fn digest(
    State(api): Shared,
    caller: Caller,
    Bound(p): Bound,
) -> Result<Reply, Reply> {
    if let Some(r) = api.gate(true) {
        return Err(r);
    }
    api.authorize(Need::PeerRead, &caller, &p)?;
    let root = api.registry.root_digest();
    let root_hex = format!("{root:016x}");
    let apps = if p.str("root") == root_hex {
        Vec::new()
    } else {
        let (_, apps) = api.registry.digests();
        apps.into_iter()
            .map(|(k, d)| (k.env, k.appid, format!("{d:016x}")))
            .collect()
    };
    let answer = Digest {
        root: root_hex,
        apps,
    };
    Ok(Reply::ok().json(&answer))
}

/// The answer of `/discovery/digest`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Digest {
    /// The registry's root digest, 16 hex digits.
    pub(crate) root: String,
    /// (env, appid, digest) of every non-empty app; empty when the roots
    /// are equal.
    #[serde(default)]
    pub(crate) apps: Vec<(String, String, String)>,
}

/// The body of `/discovery/apps`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AppsRequest {
    /// (env, appid) pairs.
    pub(crate) apps: Vec<(String, String)>,
}

/// The answer of `/discovery/apps`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct AppsState {
    /// Every instance of the apps asked for.
    pub(crate) instances: Vec<naming::Instance>,
    /// Their remembered cancels: (env, appid, zone, hostname, when).
    pub(crate) cancels: Vec<(String, String, String, String, i64)>,
}

/// `POST /discovery/apps` (JSON body [`AppsRequest`]): the instances and
/// remembered cancels of up to [`MAX_APPS_PER_PULL`] apps.
pub(super) async fn apps(
    State(api): Shared,
    caller: Caller,
    req: axum::extract::Request,
) -> Result<axum::response::Response, Reply> {
    if let Some(r) = api.gate(true) {
        return Err(r);
    }
    let (parts, body) = req.into_parts();
    let body = crate::params::read_body(body, api.config.limits.max_body_bytes).await?;
    let whole = api.raw_proofs(&parts, &body)?;
    api.authorize(Need::PeerRead, &caller, &whole)?;
    let asked: AppsRequest = serde_json::from_slice(&body)
        .map_err(|e| Reply::bad_param("apps", format!("not a list of apps: {e}")))?;
    if asked.apps.len() > MAX_APPS_PER_PULL {
        return Err(Reply::message(
            BAD_REQUEST,
            format!("at most {MAX_APPS_PER_PULL} apps per request"),
        ));
    }
    let slot = api.dump_slot()?;
    let mut out = AppsState::default();
    let now = api.clock.now();
    let lease = crate::registry::nanos(api.registry.params().lease);
    let keys: std::collections::HashSet<AppKey> = asked
        .apps
        .iter()
        .map(|(env, appid)| AppKey::new(env, appid))
        .collect();
    for key in &keys {
        // A copy whose lease ran out is on its way out: never spread it.
        out.instances.extend(
            api.registry
                .instances(key)
                .into_iter()
                .filter(|i| now - i.renew_timestamp <= lease),
        );
    }
    out.cancels = api
        .registry
        .cancels_of(&keys)
        .into_iter()
        .map(|(k, at)| (k.env, k.appid, k.zone, k.hostname, at))
        .collect();
    Ok(super::Api::holding(Reply::ok().json(&out), slot))
}
