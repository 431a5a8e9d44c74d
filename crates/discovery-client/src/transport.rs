//! The node list with its shared current-node index, and HTTP
//! calls decoded into the registry's `{code,message,ttl,data}` envelope
//! (docs/protocol.md#envelope).
//!
//! Every call of the SDK, whichever task makes it, goes through
//! [`Transport::call`], so a transport failure anywhere moves everybody to
//! the next node.

use std::time::Duration;

use naming::Error;
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{debug, warn};

use crate::Config;

/// The request header through which the server learns our deadline.
pub(crate) const TIMEOUT_HEADER: &str = "x1-bmspy-timeout";

/// HTTP method of a registry route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Parameters in the query.
    Get,
    /// Parameters in a form body.
    Post,
}

/// Why a call produced no envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// Connect error, timeout, HTTP status ≥ 400 or undecodable body; the
    /// current node has been advanced.
    Transport(String),
    /// The SDK was closed.
    Closed,
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Transport(m) => Error::Transport(m),
            CallError::Closed => Error::Closed,
        }
    }
}

/// A decoded answer. `data` and `error` stay raw JSON until the caller knows
/// what shape to expect; a non-zero code may come with any `data`.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) data: serde_json::Value,
    #[serde(default)]
    pub(crate) error: serde_json::Value,
    /// The answer came from one of our nodes (it carries their id header),
    /// not from a Go original.
    #[serde(skip)]
    pub(crate) ours: bool,
}

impl Envelope {
    /// `data` decoded as `T`; a null or absent `data` decodes as `T`'s
    /// default.
    pub(crate) fn data<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        if self.data.is_null() {
            return Ok(T::default());
        }
        T::deserialize(&self.data).map_err(|e| format!("undecodable data: {e}"))
    }

    /// The envelope as an error value.
    pub(crate) fn server_error(&self) -> Error {
        Error::Server {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// One HTTP call: route, parameters (lists as repeated keys), timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    pub(crate) path: &'a str,
    pub(crate) params: Vec<(&'static str, String)>,
    /// Client-side bound of the whole request.
    pub(crate) timeout: Duration,
    /// What `x1-bmspy-timeout` announces; the request's own timeout unless a
    /// shorter server hold is wanted.
    pub(crate) header_ms: Option<u64>,
}

impl<'a> Call<'a> {
    pub(crate) fn get(path: &'a str, timeout: Duration) -> Self {
        Call {
            method: Method::Get,
            path,
            params: Vec::new(),
            timeout,
            header_ms: None,
        }
    }

    pub(crate) fn post(path: &'a str, timeout: Duration) -> Self {
        Call {
            method: Method::Post,
            ..Call::get(path, timeout)
        }
    }

    pub(crate) fn param(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.params.push((key, value.into()));
        self
    }
}

#[derive(Debug)]
struct Nodes {
    /// The list in use: the seeds, or what self-discovery found.
    list: Vec<String>,
    /// The configured nodes, kept to fall back on.
    seeds: Vec<String>,
    current: usize,
    /// Transport failures in a row, over all calls.
    failures: usize,
    /// Bumped on every change of the current node; lets the poll loop see a
    /// switch even when it lands on the same address again.
    epoch: u64,
}

/// The HTTP client and the node list.
#[derive(Debug)]
pub(crate) struct Transport {
    /// `None` once closed, which drops the connection pool.
    http: Mutex<Option<reqwest::Client>>,
    nodes: Mutex<Nodes>,
    /// `https` or `http`, for every node.
    scheme: &'static str,
}

impl Transport {
    pub(crate) fn new(config: &Config) -> Result<Self, Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_keepalive(Duration::from_secs(40))
            .tcp_nodelay(true)
            .no_proxy();
        let http = tls(builder, config)?
            .build()
            .map_err(|e| Error::InvalidConfig(format!("http client: {e}")))?;
        let seeds = config.nodes.clone();
        let current = rand::random_range(0..seeds.len().max(1));
        Ok(Transport {
            http: Mutex::new(Some(http)),
            nodes: Mutex::new(Nodes {
                list: seeds.clone(),
                seeds,
                current,
                failures: 0,
                epoch: 0,
            }),
            scheme: if config.https { "https" } else { "http" },
        })
    }

    /// The current node and its epoch.
    pub(crate) fn current(&self) -> (String, u64) {
        let n = self.nodes.lock();
        (n.list[n.current % n.list.len()].clone(), n.epoch)
    }

    /// The node list in use.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.nodes.lock().list.clone()
    }

    /// Moves to the next node after a transport failure on `node`. A failure
    /// on a node that is no longer current moves nothing, so that two calls
    /// failing on the same node skip one node, not two.
    pub(crate) fn failed(&self, node: &str) {
        let mut n = self.nodes.lock();
        if n.list[n.current % n.list.len()] != node {
            return;
        }
        n.failures += 1;
        if n.failures >= n.list.len() && n.list != n.seeds {
            warn!(
                failures = n.failures,
                seeds = ?n.seeds,
                "every discovered node failed; retrying the configured seeds"
            );
            n.list = n.seeds.clone();
            n.current = rand::random_range(0..n.list.len());
            n.failures = 0;
        } else {
            n.current = (n.current + 1) % n.list.len();
        }
        n.epoch += 1;
        debug!(node = %n.list[n.current], "switched discovery node");
    }

    /// A decoded answer arrived: the failure streak is over.
    pub(crate) fn succeeded(&self) {
        self.nodes.lock().failures = 0;
    }

    /// Moves to the next node without a failure (periodic rotation).
    pub(crate) fn rotate(&self) {
        let mut n = self.nodes.lock();
        if n.list.len() > 1 {
            n.current = (n.current + 1) % n.list.len();
            n.epoch += 1;
        }
    }

    /// Replaces the list with what self-discovery found. The current node
    /// stays current when it is still listed, so a steady cluster causes no
    /// switch (and no timestamp reset). Returns whether the list changed.
    pub(crate) fn replace(&self, mut found: Vec<String>) -> bool {
        found.sort();
        found.dedup();
        if found.is_empty() {
            return false;
        }
        let mut n = self.nodes.lock();
        let mut old = n.list.clone();
        old.sort();
        if old == found {
            return false;
        }
        let current = n.list[n.current % n.list.len()].clone();
        found.shuffle(&mut rand::rng());
        match found.iter().position(|a| *a == current) {
            Some(i) => n.current = i,
            None => {
                n.current = rand::random_range(0..found.len());
                n.epoch += 1;
            }
        }
        debug!(nodes = ?found, "discovery nodes updated");
        n.list = found;
        true
    }

    /// Drops the connection pool; later calls fail with `Closed`.
    pub(crate) fn close(&self) {
        self.http.lock().take();
    }

    /// One call on the current node.
    pub(crate) async fn call_current(
        &self,
        call: &Call<'_>,
    ) -> Result<(Envelope, String), CallError> {
        let (node, _) = self.current();
        let env = self.call(&node, call).await?;
        Ok((env, node))
    }

    /// One call on `node`. A transport failure advances the current node.
    pub(crate) async fn call(&self, node: &str, call: &Call<'_>) -> Result<Envelope, CallError> {
        let http = self.http.lock().clone().ok_or(CallError::Closed)?;
        let url = format!("{}://{node}{}", self.scheme, call.path);
        let header_ms = call
            .header_ms
            .unwrap_or_else(|| u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX));
        let req = match call.method {
            Method::Get => http.get(url).query(&call.params),
            Method::Post => http.post(url).form(&call.params),
        }
        .timeout(call.timeout)
        .header(TIMEOUT_HEADER, header_ms.to_string());
        match send(req).await {
            Ok(env) => {
                self.succeeded();
                Ok(env)
            }
            Err(e) => {
                debug!(node, path = call.path, error = %e, "discovery call failed");
                self.failed(node);
                Err(CallError::Transport(format!("{node}{}: {e}", call.path)))
            }
        }
    }
}

/// HTTPS settings of the client. With [`Config::https`] every request is
/// HTTPS (reqwest refuses an `http://` URL), verified with the CA file
/// (else the system's roots); the TLS files are read once, here.
fn tls(builder: reqwest::ClientBuilder, config: &Config) -> Result<reqwest::ClientBuilder, Error> {
    if !config.https {
        return Ok(builder);
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::InvalidConfig(format!("{what} {}: {e}", path.display())))
    };
    let mut builder = builder.use_rustls_tls().https_only(true);
    if let Some(ca) = &config.ca {
        let pem = read(naming::env::CA, ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::InvalidConfig(format!("{} {}: {e}", naming::env::CA, ca.display()))
        })?;
        if certs.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "{} {}: holds no PEM certificate",
                naming::env::CA,
                ca.display()
            )));
        }
        // Only the configured authority: a registry's CA is usually
        // private, and a public one must not vouch for it.
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(naming::env::CERT, cert)?;
            pem.push(b'\n');
            pem.extend(read(naming::env::KEY, key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::InvalidConfig(format!(
                    "{} {} with {} {}: {e}",
                    naming::env::CERT,
                    cert.display(),
                    naming::env::KEY,
                    key.display()
                ))
            })?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::InvalidConfig(format!(
                "{} needs {}",
                naming::env::CERT,
                naming::env::KEY
            )));
        }
        (None, Some(_)) => {
            return Err(Error::InvalidConfig(format!(
                "{} needs {}",
                naming::env::KEY,
                naming::env::CERT
            )));
        }
    }
    Ok(builder)
}

async fn send(req: reqwest::RequestBuilder) -> Result<Envelope, String> {
    let resp = req.send().await.map_err(|e| describe(&e))?;
    let status = resp.status();
    if status.as_u16() >= 400 {
        return Err(format!("HTTP {status}"));
    }
    let ours = resp.headers().contains_key(OUR_NODE_HEADER);
    let body = resp.bytes().await.map_err(|e| describe(&e))?;
    let mut env: Envelope =
        serde_json::from_slice(&body).map_err(|e| format!("undecodable answer: {e}"))?;
    env.ours = ours;
    Ok(env)
}

/// The header our nodes stamp on every answer (their id).
const OUR_NODE_HEADER: &str = "x-discovery-node-id";

/// reqwest's top-level message hides the cause ("error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(nodes: &[&str]) -> Transport {
        let config = Config::builder()
            .nodes(nodes)
            .hostname("h")
            .build_with(|_| None);
        Transport::new(&config).unwrap()
    }

    #[test]
    fn failures_advance_once_per_node() {
        let t = transport(&["a:1", "b:1", "c:1"]);
        let (first, e0) = t.current();
        t.failed(&first);
        let (second, e1) = t.current();
        assert_ne!(first, second);
        assert!(e1 > e0);
        // A late failure of the old node does not skip the new one.
        t.failed(&first);
        assert_eq!(t.current().0, second);
    }

    #[test]
    fn discovered_list_falls_back_to_seeds_after_as_many_failures() {
        let t = transport(&["seed:1"]);
        assert!(t.replace(vec!["x:1".into(), "y:1".into()]));
        assert!(!t.replace(vec!["y:1".into(), "x:1".into()]), "same set");
        for _ in 0..2 {
            let (n, _) = t.current();
            assert_ne!(n, "seed:1");
            t.failed(&n);
        }
        assert_eq!(t.current().0, "seed:1");
        assert_eq!(t.nodes(), ["seed:1"]);
    }

    #[test]
    fn replace_keeps_the_current_node_and_ignores_empty_results() {
        let t = transport(&["a:1", "b:1"]);
        let (cur, epoch) = t.current();
        assert!(!t.replace(Vec::new()));
        assert!(t.replace(vec![cur.clone(), "c:1".into()]));
        assert_eq!(t.current(), (cur.clone(), epoch));
        let mut nodes = t.nodes();
        nodes.sort();
        let mut want = vec![cur, "c:1".to_string()];
        want.sort();
        assert_eq!(nodes, want);
    }
}
