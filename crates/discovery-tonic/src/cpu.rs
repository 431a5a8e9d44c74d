//! Server side: the `cpu_usage` trailer that p2c clients balance on.
//!
//! [`CpuLayer`] samples CPU use every 500 ms and adds the trailer
//! `cpu_usage: <per-mille>` to every response (into the headers of
//! trailers-only responses). The value is the share of the container's CPU
//! quota used during the last interval, from cgroup v2 (`cpu.stat`,
//! `cpu.max`), else cgroup v1 (`cpuacct.usage`, `cpu.cfs_quota_us`), else
//! `/proc/self/stat` over all CPUs. Zero is never published, and nothing is
//! until a first interval has been measured.
//!
//! ```no_run
//! use demo_proto::helloworld::greeter_server::{Greeter, GreeterServer};
//! use discovery_tonic::CpuLayer;
//!
//! # async fn run(svc: impl Greeter) -> Result<(), Box<dyn std::error::Error>> {
//! tonic::transport::Server::builder()
//!     .layer(CpuLayer::new())
//!     .add_service(GreeterServer::new(svc))
//!     .serve("127.0.0.1:9000".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    fmt, fs,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::balance::CPU_USAGE;

/// How often the sampler measures.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// The latest published per-mille value; 0 = none yet.
#[derive(Debug, Default)]
struct Usage(AtomicU64);

/// A tower layer adding the `cpu_usage` trailer; see the [module docs](self).
#[derive(Clone)]
pub struct CpuLayer {
    usage: Arc<Usage>,
}

impl CpuLayer {
    /// Starts a sampler thread, which ends within one interval after the
    /// last clone of this layer and its services is dropped.
    pub fn new() -> Self {
        let usage = Arc::new(Usage::default());
        let weak = Arc::downgrade(&usage);
        let spawned = std::thread::Builder::new()
            .name("cpu-usage".to_string())
            .spawn(move || sample_loop(weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the cpu_usage sampler; no trailer will be sent");
        }
        CpuLayer { usage }
    }

    /// A layer that always reports `per_mille` (clamped to ≥ 1), for tests
    /// and load simulations.
    pub fn fixed(per_mille: u64) -> Self {
        CpuLayer {
            usage: Arc::new(Usage(AtomicU64::new(per_mille.max(1)))),
        }
    }

    /// The value currently published, if any.
    pub fn current(&self) -> Option<u64> {
        Some(self.usage.0.load(Ordering::Relaxed)).filter(|v| *v > 0)
    }
}

impl Default for CpuLayer {
    fn default() -> Self {
        CpuLayer::new()
    }
}

impl fmt::Debug for CpuLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuLayer")
            .field("cpu_usage", &self.current())
            .finish()
    }
}

impl<S> Layer<S> for CpuLayer {
    type Service = CpuService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CpuService {
            inner,
            usage: self.usage.clone(),
        }
    }
}

/// The service made by [`CpuLayer`].
#[derive(Clone)]
pub struct CpuService<S> {
    inner: S,
    usage: Arc<Usage>,
}

impl<S: fmt::Debug> fmt::Debug for CpuService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CpuService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<CpuBody<ResB>>;
    type Error = S::Error;
    type Future = CpuFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        CpuFuture {
            inner: self.inner.call(req),
            usage: self.usage.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`CpuService`].
    pub struct CpuFuture<F> {
        #[pin]
        inner: F,
        usage: Arc<Usage>,
    }
}

impl<F: fmt::Debug> fmt::Debug for CpuFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CpuFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CpuBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => return Poll::Pending,
        };
        let value = match this.usage.0.load(Ordering::Relaxed) {
            0 => None,
            v => Some(HeaderValue::from(v)),
        };
        let (mut parts, inner) = resp.into_parts();
        // A trailers-only response carries its status in the headers; so
        // does its cpu_usage then.
        let cpu = match value {
            Some(v) if parts.headers.contains_key("grpc-status") => {
                parts.headers.insert(CPU_USAGE, v);
                None
            }
            other => other,
        };
        Poll::Ready(Ok(Response::from_parts(parts, CpuBody { inner, cpu })))
    }
}

pin_project! {
    /// A response body whose trailers get `cpu_usage`.
    pub struct CpuBody<B> {
        #[pin]
        inner: B,
        cpu: Option<HeaderValue>,
    }
}

impl<B> fmt::Debug for CpuBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBody")
            .field("cpu", &self.cpu)
            .finish_non_exhaustive()
    }
}

impl<B: HttpBody> HttpBody for CpuBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    if let Some(v) = this.cpu.take() {
                        trailers.insert(CPU_USAGE, v);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- sampling

/// Where CPU time is read from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// cgroup v2: `usage_usec` of `cpu.stat`; quota from `cpu.max`.
    CgroupV2 { dir: PathBuf },
    /// cgroup v1: `cpuacct.usage` (ns); quota from `cpu.cfs_*`.
    CgroupV1 { cpuacct: PathBuf, cpu: PathBuf },
    /// `/proc/self/stat` utime + stime, in USER_HZ (100) ticks.
    Proc,
}

impl Source {
    fn detect() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if root.join("cgroup.controllers").exists() {
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .trim_start_matches('/');
            let dir = [root.join(rel), root.to_path_buf()]
                .into_iter()
                .find(|d| d.join("cpu.stat").exists());
            if let Some(dir) = dir {
                return Source::CgroupV2 { dir };
            }
        }
        let v1 = |ctrl: &str, file: &str| -> Option<PathBuf> {
            let rel = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == ctrl)
                    .then(|| path.trim_start_matches('/').to_string())
            })?;
            // Inside a container the listed path often does not exist: its
            // cgroup is mounted at the controller's root.
            let ctrl_root = [root.join(ctrl), root.join("cpu,cpuacct")]
                .into_iter()
                .find(|d| d.exists())?;
            [ctrl_root.join(&rel), ctrl_root]
                .into_iter()
                .find(|d| d.join(file).exists())
        };
        if let Some(cpuacct) = v1("cpuacct", "cpuacct.usage") {
            let cpu = v1("cpu", "cpu.cfs_quota_us").unwrap_or_else(|| cpuacct.clone());
            return Source::CgroupV1 { cpuacct, cpu };
        }
        Source::Proc
    }

    /// Cumulative CPU time used.
    fn used(&self) -> Option<Duration> {
        match self {
            Source::CgroupV2 { dir } => {
                let stat = fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let usec = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Duration::from_micros(usec))
            }
            Source::CgroupV1 { cpuacct, .. } => {
                let ns = read_trimmed(&cpuacct.join("cpuacct.usage"))?.parse().ok()?;
                Some(Duration::from_nanos(ns))
            }
            Source::Proc => {
                let stat = fs::read_to_string("/proc/self/stat").ok()?;
                // The command name may contain spaces: fields start after ')'.
                let rest = &stat[stat.rfind(')')? + 2..];
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 of the whole line,
                // 11 and 12 after the name.
                let ticks: u64 =
                    fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                Some(Duration::from_millis(ticks * 10))
            }
        }
    }

    /// The CPUs the quota allows (all CPUs when unlimited).
    fn cpus(&self) -> f64 {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let quota = match self {
            Source::CgroupV2 { dir } => read_trimmed(&dir.join("cpu.max")).and_then(|s| {
                let mut it = s.split_whitespace();
                let q: f64 = it.next()?.parse().ok()?;
                let p: f64 = it.next()?.parse().ok()?;
                Some(q / p)
            }),
            Source::CgroupV1 { cpu, .. } => {
                let q: f64 = read_trimmed(&cpu.join("cpu.cfs_quota_us"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1.0);
                let p: f64 = read_trimmed(&cpu.join("cpu.cfs_period_us"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                (q > 0.0 && p > 0.0).then(|| q / p)
            }
            Source::Proc => None,
        };
        quota
            .filter(|q| *q > 0.0)
            .unwrap_or(all)
            .min(all)
            .max(0.001)
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    Some(fs::read_to_string(path).ok()?.trim().to_string())
}

/// Per-mille of `cpus` used by `used` CPU time over `elapsed`, at least 1.
fn per_mille(used: Duration, elapsed: Duration, cpus: f64) -> u64 {
    if elapsed.is_zero() {
        return 1;
    }
    let v = used.as_secs_f64() / (elapsed.as_secs_f64() * cpus) * 1000.0;
    (v.round() as u64).max(1)
}

fn sample_loop(usage: Weak<Usage>) {
    let source = Source::detect();
    let cpus = source.cpus();
    tracing::debug!(?source, cpus, "cpu_usage sampler started");
    let mut last = source.used().map(|u| (Instant::now(), u));
    loop {
        std::thread::sleep(SAMPLE_INTERVAL);
        let Some(usage) = usage.upgrade() else { return };
        let now = Instant::now();
        let Some(used) = source.used() else { continue };
        if let Some((then, before)) = last {
            let v = per_mille(used.saturating_sub(before), now - then, cpus);
            usage.0.store(v, Ordering::Relaxed);
        }
        last = Some((now, used));
    }
}

/// Reads the trailer a response carries (for clients and tests).
pub fn cpu_usage_of(headers: &HeaderMap) -> Option<u64> {
    headers.get(CPU_USAGE)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_mille_is_never_zero_and_scales_with_quota() {
        assert_eq!(
            per_mille(Duration::ZERO, Duration::from_millis(500), 2.0),
            1
        );
        assert_eq!(
            per_mille(Duration::from_millis(500), Duration::from_millis(500), 2.0),
            500
        );
        assert_eq!(
            per_mille(Duration::from_millis(500), Duration::from_millis(500), 0.5),
            2000
        );
    }

    #[test]
    fn this_machine_has_a_readable_source() {
        let source = Source::detect();
        let a = source.used().expect("cpu time readable");
        // Burn a little CPU so that the counter moves.
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        std::thread::sleep(Duration::from_millis(20));
        let b = source.used().unwrap();
        assert!(b >= a, "{source:?}: {a:?} then {b:?}");
        assert!(source.cpus() > 0.0);
    }
}
