//! The bookkeeping around every request: the route's metrics, the node's
//! id header on every answer, and peers heard from.
//!
//! A plain tower layer rather than `axum::middleware::from_fn`, which
//! boxes a future and clones the inner service for every request.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, extract::MatchedPath, response::Response};
use http::Request;
use tokio::time::Instant;

use super::Api;
use crate::node::{NODE_ADDR_HEADER, NODE_ID_HEADER};

/// Wraps each route's service in [`Observed`].
#[derive(Clone)]
pub(super) struct Observe(pub(super) Arc<Api>);

impl<S> tower::Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            api: Arc::clone(&self.0),
        }
    }
}

/// A route's service, observed.
#[derive(Clone)]
pub(super) struct Observed<S> {
    inner: S,
    api: Arc<Api>,
}

impl<S> tower::Service<Request<Body>> for Observed<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let route = crate::metrics::route_index(
            req.extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str),
        );
        if let Some(addr) = req
            .headers()
            .get(NODE_ADDR_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            self.api.members.heard_from(addr);
        }
        ObservedFuture {
            inner: self.inner.call(req),
            api: Arc::clone(&self.api),
            route,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's answer, stamped and counted when it is ready.
    pub(super) struct ObservedFuture<F> {
        #[pin]
        inner: F,
        api: Arc<Api>,
        route: usize,
        start: Instant,
    }
}

impl<F> Future for ObservedFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.poll(cx));
        let api = &**this.api;
        res.headers_mut()
            .insert(NODE_ID_HEADER, api.node_header.clone());
        let seconds = this.start.elapsed().as_secs_f64();
        // The envelope's code when there is one (every discovery answer is
        // HTTP 200), else the HTTP status.
        match res
            .headers()
            .get("kratos-status-code")
            .and_then(|v| v.to_str().ok())
        {
            Some(code) => api.metrics.request(*this.route, code, seconds),
            None => api
                .metrics
                .request(*this.route, res.status().as_str(), seconds),
        }
        Poll::Ready(Ok(res))
    }
}
