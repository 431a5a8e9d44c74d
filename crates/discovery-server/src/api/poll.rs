//! The long polls: `poll` (one app) and `polls` (several), held until a
//! subscribed app changes, the hold ends (`-304`), or the node shuts down.

use std::collections::{BTreeMap, HashSet};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use http::HeaderMap;

use super::{Api, Bound, Shared};
use crate::{
    params::Params,
    registry::{AppKey, PollState},
    reply::{self, BAD_REQUEST, NOT_MODIFIED, Reply},
};

/// What a long poll is about: its apps, their timestamps, its zone.
struct Watch<'p> {
    env: &'p str,
    zone: Option<&'p str>,
    apps: Vec<(&'p str, i64)>,
}

impl Watch<'_> {
    fn classify(&self, api: &Api) -> Vec<PollState> {
        let now = api.clock.now();
        self.apps
            .iter()
            .map(|(appid, since)| {
                api.registry
                    .poll_state(&AppKey::new(self.env, *appid), self.zone, *since, now)
            })
            .collect()
    }
}

/// Waits for the first change of any subscribed app.
async fn any_change(subs: &mut [crate::registry::Subscription]) {
    let futs: Vec<_> = subs.iter_mut().map(|s| Box::pin(s.changed())).collect();
    futures_util::future::select_all(futs).await;
}

/// Counts a held poll answered because of a change, and how long after it.
fn woken(api: &Api, subs: &[crate::registry::Subscription]) {
    api.metrics.wakeups.inc();
    if let Some(at) = subs.iter().filter_map(|s| s.last_change()).max() {
        api.metrics
            .wakeup_latency
            .observe(at.elapsed().as_secs_f64());
    }
}

/// What both long polls start with: reads served, `env`, `hostname`, at
/// least one `appid`, and the `latest_timestamp` list.
fn poll_params<'p>(api: &Api, p: &'p Params) -> Result<(&'p str, Vec<&'p str>, Vec<i64>), Reply> {
    if let Some(r) = api.gate(false) {
        return Err(r);
    }
    let env = p.required("env")?;
    p.required("hostname")?;
    let appids = p.list("appid");
    if appids.is_empty() {
        return Err(Reply::bad_param("appid", "required"));
    }
    let stamps = p.i64_list("latest_timestamp")?;
    Ok((env, appids, stamps))
}

/// `GET /discovery/poll`: one app, answered at once when newer, else
/// held (see docs/protocol.md#long-poll).
pub(super) async fn poll(
    State(api): Shared,
    headers: HeaderMap,
    Bound(p): Bound,
) -> Result<Response, Reply> {
    // Read what the headers say before parking: a held request keeps
    // nothing it no longer needs.
    let (api, hold) = (&*api, api.hold(&headers));
    drop(headers);
    let (env, appids, stamps) = poll_params(api, &p)?;
    let appid = appids[0];
    let since = if stamps.len() == appids.len() {
        stamps[0]
    } else {
        0
    };
    let watch = Watch {
        env,
        zone: Some(p.str("zone")).filter(|z| !z.is_empty()),
        apps: vec![(appid, since)],
    };
    let mut subs = [api.registry.watchers().subscribe(AppKey::new(env, appid))];
    let answer = |state: PollState| match state {
        PollState::Missing => Some(reply::poll_miss(appid)),
        PollState::Newer(json) | PollState::NewerEmpty(json) => {
            Some(Reply::ok().data(json).into_response())
        }
        PollState::Current => None,
    };
    let first = watch.classify(api).pop().unwrap_or(PollState::Missing);
    if let Some(r) = answer(first) {
        return Ok(r);
    }
    hold_until(
        api,
        hold,
        &mut subs,
        || answer(watch.classify(api).pop().unwrap_or(PollState::Missing)),
        || Reply::code(NOT_MODIFIED).into_response(),
    )
    .await
}

/// `GET /discovery/polls`: several apps, held until one of them changes
/// (see docs/protocol.md#long-poll).
pub(super) async fn polls(
    State(api): Shared,
    headers: HeaderMap,
    Bound(p): Bound,
) -> Result<Response, Reply> {
    // Read what the headers say before parking: a held request keeps
    // nothing it no longer needs.
    let (api, hold) = (&*api, api.hold(&headers));
    drop(headers);
    let (env, appids, stamps) = poll_params(api, &p)?;
    api.check_appids(&appids)?;
    if stamps.len() != appids.len() {
        return Err(Reply::code(BAD_REQUEST));
    }
    let watch = Watch {
        env,
        zone: Some(p.str("zone")).filter(|z| !z.is_empty()),
        apps: appids.iter().copied().zip(stamps).collect(),
    };
    let mut seen = HashSet::new();
    let mut subs: Vec<_> = appids
        .iter()
        .filter(|a| seen.insert(**a))
        .map(|a| api.registry.watchers().subscribe(AppKey::new(env, *a)))
        .collect();

    let first = watch.classify(api);
    if first.iter().any(|s| matches!(s, PollState::Newer(_))) {
        return Ok(polls_answer(&watch, &first));
    }
    let missing_at_start: Vec<bool> = first.iter().map(|s| *s == PollState::Missing).collect();
    let newer = |states: &[PollState]| states.iter().any(PollState::is_newer);
    hold_until(
        api,
        hold,
        &mut subs,
        || {
            let states = watch.classify(api);
            let newly_missing = states
                .iter()
                .zip(&missing_at_start)
                .any(|(s, was)| *s == PollState::Missing && !was);
            (newer(&states) || newly_missing).then(|| polls_answer(&watch, &states))
        },
        || {
            let states = watch.classify(api);
            if newer(&states) {
                polls_answer(&watch, &states)
            } else {
                Reply::code(NOT_MODIFIED).into_response()
            }
        },
    )
    .await
}

/// Holds a long poll: parks the request, re-decides on every
/// change of a subscribed app (`on_change` answering ends the hold), answers
/// with `on_expiry` when the hold ends, and with `-304` on shutdown.
async fn hold_until(
    api: &Api,
    hold: std::time::Duration,
    subs: &mut [crate::registry::Subscription],
    mut on_change: impl FnMut() -> Option<Response>,
    on_expiry: impl FnOnce() -> Response,
) -> Result<Response, Reply> {
    api.check_pollers()?;
    let _parked = api.registry.watchers().park();
    let hold = tokio::time::sleep(hold);
    tokio::pin!(hold);
    loop {
        tokio::select! {
            () = any_change(subs) => {
                if let Some(r) = on_change() {
                    woken(api, subs);
                    return Ok(r);
                }
            }
            () = &mut hold => return Ok(on_expiry()),
            () = api.shutting_down() => return Ok(Reply::code(NOT_MODIFIED).into_response()),
        }
    }
}

fn polls_answer(watch: &Watch<'_>, states: &[PollState]) -> Response {
    let mut data = BTreeMap::new();
    let mut missing = Vec::new();
    for ((appid, _), state) in watch.apps.iter().zip(states) {
        match state {
            PollState::Newer(json) | PollState::NewerEmpty(json) => {
                data.insert(*appid, json);
            }
            PollState::Missing if !missing.contains(appid) => missing.push(*appid),
            PollState::Missing | PollState::Current => {}
        }
    }
    reply::polls_map(data, &missing)
}
