//! Shared helpers of the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::{Router, body::Body};
use discovery_server::{
    api::{self, Api},
    config::Config,
};
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A router over a fresh registry, driven without sockets.
pub struct Harness {
    pub router: Router,
    pub api: Arc<Api>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn code(&self) -> i64 {
        self.json()["code"].as_i64().expect("code")
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with(Config::default())
    }

    pub fn with(config: Config) -> Self {
        let api = Api::detached(config);
        Harness {
            router: api::router(Arc::clone(&api)),
            api,
        }
    }

    pub fn from_toml(text: &str) -> Self {
        Self::with(Config::parse(text).unwrap().0)
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    pub async fn post(&self, path: &str, form: &str) -> Resp {
        self.send(
            Request::post(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(form.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    /// Registers `demo.svc` host `host` in `zone`, env dev, status UP.
    pub async fn register(&self, zone: &str, host: &str, extra: &str) -> Resp {
        let r = self
            .post(
                "/discovery/register",
                &format!("zone={zone}&env=dev&appid=demo.svc&hostname={host}&status=1&addrs=grpc://{host}:9000&region=sh&version=v1{extra}"),
            )
            .await;
        assert_eq!(r.code(), 0, "{}", r.body);
        r
    }

    pub async fn fetch(&self, query: &str) -> Resp {
        self.get(&format!("/discovery/fetch?env=dev&appid=demo.svc&{query}"))
            .await
    }

    /// The app's `latest_timestamp` as fetched.
    pub async fn latest(&self) -> i64 {
        self.fetch("status=3").await.json()["data"]["latest_timestamp"]
            .as_i64()
            .unwrap()
    }
}

pub const SHORT: &str = r#"
[registry]
lease = "1s"
evict_interval = "500ms"
renew_interval = "250ms"
poll_hold = "1s"
"#;
