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
    let (root, apps) = api.registry.digests();
    let root_hex = format!("{root:016x}");
    let same = p.str("root") == root_hex;
    let answer = Digest {
        root: root_hex,
        apps: if same {
            Vec::new()
        } else {
            apps.into_iter()
                .map(|(k, d)| (k.env, k.appid, format!("{d:016x}")))
                .collect()
        },
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
) -> Result<Reply, Reply> {
    if let Some(r) = api.gate(true) {
        return Err(r);
    }
    let (parts, body) = req.into_parts();
    let body = crate::params::read_body(body, api.config.limits.max_body_bytes).await?;
    let mut whole = crate::params::Params::default();
    whole.signed = api.verify_signature(&parts, &body)?;
    api.authorize(Need::PeerRead, &caller, &whole)?;
    let asked: AppsRequest = serde_json::from_slice(&body)
        .map_err(|e| Reply::bad_param("apps", format!("not a list of apps: {e}")))?;
    if asked.apps.len() > MAX_APPS_PER_PULL {
        return Err(Reply::message(
            BAD_REQUEST,
            format!("at most {MAX_APPS_PER_PULL} apps per request"),
        ));
    }
    let mut out = AppsState::default();
    for (env, appid) in asked.apps {
        let key = AppKey::new(&env, &appid);
        out.instances.extend(api.registry.instances(&key));
        out.cancels.extend(
            api.registry
                .cancels_of(&key)
                .into_iter()
                .map(|(k, at)| (k.env, k.appid, k.zone, k.hostname, at)),
        );
    }
    Ok(Reply::ok().json(&out))
}
