//! Shared fixtures: real Greeter servers on loopback, each on its own tokio
//! runtime so that a test can kill one (listener and connections at once),
//! and an in-process resolver the test pushes snapshots into.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use demo_proto::helloworld::{
    HelloReply, HelloRequest,
    greeter_server::{Greeter, GreeterServer},
};
use discovery_tonic::CpuLayer;
use naming::{Instance, InstancesInfo, Resolution, Resolver, Status as InsStatus};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

pub const APPID: &str = "demo.service";

/// How a test server behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Added to every call.
    pub delay: Duration,
    /// `cpu_usage` trailer to send: `Some(v)` fixed, `None` no layer.
    pub cpu: Option<u64>,
    /// Use the real sampler instead of a fixed value.
    pub real_cpu: bool,
}

/// What a running server does, changeable while it runs.
#[derive(Default)]
pub struct Control {
    /// Extra delay per call, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Answer every call with `Internal`.
    pub fail: AtomicBool,
}

impl Control {
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_fail(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }
}

struct Hello {
    name: String,
    hits: Arc<AtomicUsize>,
    delay: Duration,
    control: Arc<Control>,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            // Fixed: the server's configured latency.
            tokio::time::sleep(self.delay).await;
        }
        let extra = self.control.delay_ms.load(Ordering::SeqCst);
        if extra > 0 {
            // Fixed: latency added by the test while the server runs.
            tokio::time::sleep(Duration::from_millis(extra)).await;
        }
        if self.control.fail.load(Ordering::SeqCst) {
            return Err(Status::internal("failing on purpose"));
        }
        let mut resp = Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        });
        resp.metadata_mut()
            .insert("x-served-by", self.name.parse().unwrap());
        Ok(resp)
    }
}

/// A Greeter server on its own runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub control: Arc<Control>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn start(b: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), b)
    }

    /// Starts on `addr` (port 0 picks one), e.g. to restart a killed server.
    pub fn start_on(addr: SocketAddr, b: Behaviour) -> Self {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        Self::serve(vec![listener], addr, b)
    }

    /// One server accepting on every listener (for the 1025-endpoint test).
    pub fn serve(listeners: Vec<std::net::TcpListener>, addr: SocketAddr, b: Behaviour) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let control = Arc::new(Control::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let svc = GreeterServer::new(Hello {
            name: addr.to_string(),
            hits: hits.clone(),
            delay: b.delay,
            control: control.clone(),
        });
        rt.spawn(async move {
            let incoming = listeners
                .into_iter()
                .map(|l| TcpListenerStream::new(tokio::net::TcpListener::from_std(l).unwrap()));
            let incoming = futures_merge(incoming.collect());
            let layer = match (b.cpu, b.real_cpu) {
                (_, true) => Some(CpuLayer::new()),
                (Some(v), false) => Some(CpuLayer::fixed(v)),
                (None, false) => None,
            };
            let result = match layer {
                Some(layer) => {
                    tonic::transport::Server::builder()
                        .layer(layer)
                        .add_service(svc)
                        .serve_with_incoming(incoming)
                        .await
                }
                None => {
                    tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming(incoming)
                        .await
                }
            };
            if let Err(e) = result {
                eprintln!("test server {addr} stopped: {e}");
            }
        });
        TestServer {
            addr,
            hits,
            control,
            rt: Some(rt),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Kills the server: its runtime stops, dropping the listener and every
    /// connection without a goodbye.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A Greeter server on its own runtime that stops gracefully, as a tonic
/// server does on SIGTERM: GOAWAY on every connection, the calls in flight
/// finish, then the connections close.
pub struct GracefulServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl GracefulServer {
    /// Serves with `delay` added to every call, so that calls are in flight
    /// when the stop begins.
    pub fn start(delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let svc = GreeterServer::new(Hello {
            name: addr.to_string(),
            hits: hits.clone(),
            delay,
            control: Arc::new(Control::default()),
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let result = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = result {
                eprintln!("graceful server {addr} failed: {e}");
            }
            let _ = stopped_tx.send(());
        });
        GracefulServer {
            addr,
            hits,
            stop: Some(stop),
            stopped: Some(stopped),
            rt: Some(rt),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Begins the graceful stop.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until every connection has closed and the server returned, at
    /// most `within`; how long that took.
    pub async fn stopped(&mut self, within: Duration) -> Duration {
        let t = tokio::time::Instant::now();
        let rx = self.stopped.take().expect("stopped() once");
        tokio::time::timeout(within, rx)
            .await
            .expect("the graceful stop did not finish in time")
            .expect("the server task ended");
        t.elapsed()
    }
}

impl Drop for GracefulServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Merges listener streams without pulling in futures-util.
fn futures_merge(
    streams: Vec<TcpListenerStream>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    for mut s in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(conn) = s.next().await {
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A resolver whose snapshots the test pushes.
pub struct FakeResolver {
    appid: String,
    tx: Arc<watch::Sender<Resolution>>,
}

impl Resolver for FakeResolver {
    fn appid(&self) -> &str {
        &self.appid
    }

    fn watch(&self) -> watch::Receiver<Resolution> {
        self.tx.subscribe()
    }

    fn close(&self) {}
}

/// A fake resolver for [`APPID`] and the handle to push updates with.
pub fn fake(initial: Resolution) -> (Box<dyn Resolver>, Arc<watch::Sender<Resolution>>) {
    let (tx, _) = watch::channel(initial);
    let tx = Arc::new(tx);
    (
        Box::new(FakeResolver {
            appid: APPID.to_string(),
            tx: tx.clone(),
        }),
        tx,
    )
}

/// One backend of a snapshot.
#[derive(Clone)]
pub struct Ep {
    pub addr: SocketAddr,
    pub weight: u32,
    pub color: &'static str,
}

pub fn ep(addr: SocketAddr) -> Ep {
    Ep {
        addr,
        weight: 10,
        color: "",
    }
}

/// A `Found` snapshot of `eps`, all in zone `sh001`.
pub fn found(eps: &[Ep]) -> Resolution {
    let list = eps
        .iter()
        .map(|e| {
            let mut metadata = BTreeMap::new();
            metadata.insert("weight".to_string(), e.weight.to_string());
            if !e.color.is_empty() {
                metadata.insert("color".to_string(), e.color.to_string());
            }
            Instance {
                zone: "sh001".into(),
                env: "dev".into(),
                appid: APPID.into(),
                hostname: e.addr.to_string(),
                addrs: vec![format!("grpc://{}", e.addr)],
                metadata,
                status: InsStatus::Up,
                ..Default::default()
            }
        })
        .collect();
    Resolution::Found(Arc::new(InstancesInfo {
        instances: BTreeMap::from([("sh001".to_string(), list)]),
        scheduler: None,
        latest_timestamp: 1,
    }))
}

/// A `Found` snapshot with one list per zone: `(zone, endpoints)`, as the
/// registry answers for a client of any zone.
pub fn found_in(zones: &[(&str, &[Ep])]) -> Resolution {
    let mut instances = BTreeMap::new();
    for (zone, eps) in zones {
        let Resolution::Found(info) = found(eps) else {
            unreachable!("found() builds Found")
        };
        let mut list = info.instances["sh001"].clone();
        for ins in &mut list {
            ins.zone = zone.to_string();
        }
        instances.insert(zone.to_string(), list);
    }
    Resolution::Found(Arc::new(InstancesInfo {
        instances,
        scheduler: None,
        latest_timestamp: 1,
    }))
}

/// An address nothing listens on (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Polls `cond` every 5 ms until it holds; fails the test with `what` after
/// `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = tokio::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` endpoints are connected.
pub async fn wait_ready(ch: &discovery_tonic::Balanced, n: usize) {
    let t = tokio::time::Instant::now();
    while ch.ready_endpoints().len() < n {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "only {} of {n} endpoints connected",
            ch.ready_endpoints().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn hello() -> HelloRequest {
    HelloRequest {
        name: "kratos".into(),
    }
}

/// A TCP proxy in front of a server that can be frozen: connections stay
/// open and new ones are accepted, but no byte moves either way, as with a
/// SIGSTOPped process or a blackholed address.
pub struct Freezer {
    pub addr: SocketAddr,
    frozen: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Freezer {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let frozen = Arc::new(frozen);
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::spawn(pump(dr, uw, f.subscribe()));
                    pump(ur, dw, f.subscribe()).await;
                });
            }
        });
        Freezer { addr, frozen, task }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while not frozen; while frozen, holds both open
/// and moves nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow_and_update() {
            // Never read nor write again: the peer sees silence.
            std::future::pending::<()>().await;
        }
        tokio::select! {
            n = from.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if *frozen.borrow() {
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = frozen.changed() => {}
        }
    }
}
