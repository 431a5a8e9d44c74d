//! Routes for operators: the web console, `/status`, `/metrics`,
//! `/healthz` and `/readyz`.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use http::StatusCode;

use super::Shared;
use crate::node::Phase;

/// `GET /`: the web console, compiled into the binary.
pub(super) async fn console() -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../console/index.html"),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub(super) async fn metrics(State(api): Shared) -> Response {
    let text = api.metrics.render(
        &api.registry,
        api.members.as_ref(),
        &api.clock,
        api.peer_nonces(),
    );
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /status`: this node's phase, protection and replication state.
pub(super) async fn status(State(api): Shared) -> Response {
    let body = serde_json::json!({
        "node": {
            "id": api.node.id,
            "addr": api.node.advertise,
            "zone": api.config.env.zone,
            "env": api.config.env.deploy_env,
            "phase": format!("{:?}", api.phase()),
        },
        "registry": {
            "instances": api.registry.len(),
            "apps": api.registry.apps(),
            "parked_polls": api.registry.parked_polls(),
        },
        "protection": api.registry.guard_state(),
        "nodes": api.members.nodes(),
        "peers": api.members.peers(),
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).expect("serializing to memory"),
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, "ok").into_response()
}

pub(super) async fn readyz(State(api): Shared) -> Response {
    match api.phase() {
        Phase::Serving => (StatusCode::OK, "ready").into_response(),
        phase => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {phase:?}"),
        )
            .into_response(),
    }
}
