//! The ceiling: a minimal hyper HTTP/1.1 server that answers every request
//! with one fixed JSON body, the most any HTTP server can do on this machine
//! for an answer of that size. Benchmarks report their figures as ratios to
//! it, measured in the same run, because the machines are shared and noisy.
//!
//! For the long-poll wake-up it also parks: `GET /discovery/poll…` waits
//! until a `POST /discovery/register` arrives, which answers every parked
//! request at once; `GET /status` reports how many are parked in the shape
//! the discovery server uses. So the wake-up of N pollers has a ceiling too:
//! what N connections cost on this machine with no registry at all.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! loadgen::ceiling::serve(listener, loadgen::ceiling::fixed_body(8192)).await;
//! # Ok(()) }
//! ```

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Notify};

use crate::client::CODE_HEADER;

const HEAD: &str = r#"{"code":0,"message":"0","ttl":1,"data":{"pad":""#;
const TAIL: &str = r#""}}"#;

/// A discovery-shaped JSON answer of exactly `len` bytes (or the shortest
/// such answer when `len` is smaller).
pub fn fixed_body(len: usize) -> Bytes {
    let pad = len.saturating_sub(HEAD.len() + TAIL.len());
    let mut s = String::with_capacity(HEAD.len() + pad + TAIL.len());
    s.push_str(HEAD);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(TAIL);
    Bytes::from(s)
}

/// Parked requests and their wake-up.
#[derive(Debug, Default)]
struct Park {
    parked: AtomicUsize,
    wake: Notify,
}

fn respond(body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(CODE_HEADER, HeaderValue::from_static("0"));
    res
}

async fn answer(req: Request<Incoming>, body: Bytes, park: Arc<Park>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path.starts_with("/discovery/poll") {
        let woken = park.wake.notified();
        park.parked.fetch_add(1, Ordering::Relaxed);
        woken.await;
        park.parked.fetch_sub(1, Ordering::Relaxed);
    } else if path == "/discovery/register" {
        park.wake.notify_waiters();
    } else if path == "/status" {
        let n = park.parked.load(Ordering::Relaxed);
        return respond(Bytes::from(format!(
            r#"{{"registry":{{"parked_polls":{n}}}}}"#
        )));
    }
    respond(body)
}

/// Serves `body` to every request on every connection, forever.
pub async fn serve(listener: TcpListener, body: Bytes) {
    let park = Arc::new(Park::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (body, park) = (body.clone(), Arc::clone(&park));
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (body, park) = (body.clone(), Arc::clone(&park));
                async move { Ok::<_, Infallible>(answer(req, body, park).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_body_has_the_size_and_is_json() {
        for len in [0, 60, 400, 8192, 33_000] {
            let b = fixed_body(len);
            assert_eq!(b.len(), len.max(HEAD.len() + TAIL.len()));
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["code"], 0);
        }
    }
}
