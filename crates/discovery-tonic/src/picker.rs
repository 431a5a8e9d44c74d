//! Pickers: given a call and the usable endpoints, choose one.
//!
//! A [`Picker`] is synchronous and owns no IO: the balancer hands it the
//! candidates (already connected, not ejected, of the request's colour) and
//! reports every finished call through [`Picker::done`]. Per-endpoint state
//! lives in the [`Endpoint`] so that it follows the endpoint across resolver
//! updates and disappears with it.
//!
//! * [`P2c`] (default): power of two choices over EWMA latency and success,
//!   in-flight calls, the server's `cpu_usage` trailer and the weight.
//! * [`SmoothWrr`]: nginx smooth weighted round robin; with
//!   [`SmoothWrr::dynamic`] (the `wrr` default) each weight is scaled once a
//!   second by the endpoint's recent success rate, mean latency and
//!   `cpu_usage`.
//! * [`RoundRobin`], [`Random`].
//!
//! ```
//! use std::sync::Arc;
//! use discovery_tonic::picker::{Endpoint, PickContext, Picker, SmoothWrr};
//!
//! let eps: Vec<Arc<Endpoint>> = [("a", 5), ("b", 1), ("c", 1)]
//!     .into_iter()
//!     .map(|(addr, w)| Arc::new(Endpoint::new(addr, w, None)))
//!     .collect();
//! let wrr = SmoothWrr::new();
//! let ctx = PickContext::now("/helloworld.Greeter/SayHello");
//! let order: String = (0..7)
//!     .map(|_| eps[wrr.pick(&ctx, &eps).unwrap()].addr().to_string())
//!     .collect();
//! assert_eq!(order, "aabacaa");
//! ```

use std::{
    fmt,
    sync::Arc,
    sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;

use crate::pipeline::{SplitMix64, mix};

/// What a picker knows about one endpoint: identity, weight, colour and the
/// statistics pickers keep.
pub struct Endpoint {
    addr: String,
    weight: u32,
    color: Option<String>,
    epoch: Instant,
    p2c: P2cState,
    wrr_current: AtomicI64,
    wrr_effective: AtomicI64,
    /// `f64` bits; 0 until scored.
    wrr_score: AtomicU64,
    wrr_window: Mutex<Window>,
    pub(crate) counters: Counters,
}

/// What the balancer counts per endpoint, for metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) picks: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) inflight: AtomicI64,
}

impl Counters {
    fn copy_from(&self, other: &Counters) {
        for (a, b) in [
            (&self.picks, &other.picks),
            (&self.ejections, &other.ejections),
            (&self.hedges, &other.hedges),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.inflight
            .store(other.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Calls of the last second in 10 buckets of 100 ms: requests, errors and
/// the sum of latencies in 0.1 ms units.
#[derive(Debug, Clone, Default)]
struct Window {
    buckets: [Bucket; WINDOW_BUCKETS as usize],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Bucket number since the endpoint's epoch, +1 (0: never used).
    index: u64,
    requests: u64,
    errors: u64,
    latency: f64,
}

const WINDOW_BUCKETS: u64 = 10;
const BUCKET: Duration = Duration::from_millis(100);

impl Window {
    fn add(&mut self, index: u64, error: bool, latency: f64) {
        let b = &mut self.buckets[(index % WINDOW_BUCKETS) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                ..Bucket::default()
            };
        }
        b.requests += 1;
        b.errors += u64::from(error);
        b.latency += latency;
    }

    /// (requests, errors, latency sum) over the buckets of the last second.
    fn value(&self, index: u64) -> (u64, u64, f64) {
        self.buckets
            .iter()
            .filter(|b| b.index != 0 && b.index + WINDOW_BUCKETS > index && b.index <= index)
            .fold((0, 0, 0.0), |(r, e, l), b| {
                (r + b.requests, e + b.errors, l + b.latency)
            })
    }
}

impl Endpoint {
    /// An endpoint with fresh statistics. A weight of 0 counts as 1.
    pub fn new(addr: impl Into<String>, weight: u32, color: Option<String>) -> Self {
        let epoch = Instant::now();
        Endpoint {
            addr: addr.into(),
            weight: weight.max(1),
            color: color.filter(|c| !c.is_empty()),
            epoch,
            p2c: P2cState::new(epoch),
            wrr_current: AtomicI64::new(0),
            wrr_effective: AtomicI64::new(i64::from(weight.max(1))),
            wrr_score: AtomicU64::new(0),
            wrr_window: Mutex::new(Window::default()),
            counters: Counters::default(),
        }
    }

    /// A copy with another weight and colour that keeps the statistics, for
    /// an instance whose metadata changed.
    pub(crate) fn updated(&self, weight: u32, color: Option<String>) -> Self {
        let next = Endpoint::new(self.addr.clone(), weight, color);
        next.p2c.copy_from(&self.p2c, self.epoch, next.epoch);
        next.wrr_current
            .store(self.wrr_current.load(Ordering::Relaxed), Ordering::Relaxed);
        // A scored endpoint keeps its score under the new weight.
        let score = self.wrr_score();
        if score > 0.0 {
            next.wrr_score.store(score.to_bits(), Ordering::Relaxed);
            next.wrr_effective
                .store(effective(score, next.weight), Ordering::Relaxed);
        }
        // The window's buckets are numbered from the old epoch; both epochs
        // are creation times, so the copy is at most a bucket off.
        let shift = next.epoch.saturating_duration_since(self.epoch).as_nanos() / BUCKET.as_nanos();
        let mut w = self.wrr_window.lock().clone();
        for b in &mut w.buckets {
            b.index = b.index.saturating_sub(shift as u64);
        }
        *next.wrr_window.lock() = w;
        next.counters.copy_from(&self.counters);
        next
    }

    /// The weight `wrr` uses now: the registered one, or with dynamic
    /// weights `max(1, ⌊score × weight⌋)`.
    pub fn effective_weight(&self) -> i64 {
        self.wrr_effective.load(Ordering::Relaxed)
    }

    /// The last dynamic `wrr` score, `√(success × 10⁹ / (latency × cpu))`
    /// (latency in 0.1 ms units); 0 before the first scoring.
    pub fn wrr_score(&self) -> f64 {
        f64::from_bits(self.wrr_score.load(Ordering::Relaxed))
    }

    /// Calls picked for this endpoint so far.
    pub fn picks(&self) -> u64 {
        self.counters.picks.load(Ordering::Relaxed)
    }

    /// Times this endpoint was ejected so far.
    pub fn ejections(&self) -> u64 {
        self.counters.ejections.load(Ordering::Relaxed)
    }

    /// Hedged calls that went here as the second attempt.
    pub fn hedges(&self) -> u64 {
        self.counters.hedges.load(Ordering::Relaxed)
    }

    /// Calls on this endpoint waiting for their response or reading it
    /// (whatever the picker).
    pub fn calls_in_flight(&self) -> i64 {
        self.counters.inflight.load(Ordering::Relaxed)
    }

    fn bucket(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() / BUCKET.as_nanos()) as u64 + 1
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Balancer weight (≥ 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Traffic colour, if any.
    pub fn color(&self) -> Option<&str> {
        self.color.as_deref()
    }

    /// The last `cpu_usage` the server reported (500 until one arrives).
    pub fn cpu(&self) -> u64 {
        self.p2c.cpu.load(Ordering::Relaxed)
    }

    /// Calls in flight through p2c, plus the floor of 1.
    pub fn inflight(&self) -> i64 {
        self.p2c.inflight.load(Ordering::Relaxed)
    }

    /// EWMA of the success rate in per-mille.
    pub fn success(&self) -> u64 {
        self.p2c.ewma.lock().success
    }

    /// EWMA of the call latency in nanoseconds.
    pub fn lag(&self) -> u64 {
        self.p2c.ewma.lock().lag
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        // +1 keeps 0 free to mean "never picked".
        at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("color", &self.color)
            .field("cpu", &self.cpu())
            .field("inflight", &self.inflight())
            .finish_non_exhaustive()
    }
}

/// The call being balanced.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The full method, e.g. `/helloworld.Greeter/SayHello`.
    pub method: &'a str,
    /// The current time (tokio's clock, so tests can pause it).
    pub now: Instant,
}

impl<'a> PickContext<'a> {
    /// A context for `method` at the current time.
    pub fn now(method: &'a str) -> Self {
        PickContext {
            method,
            now: Instant::now(),
        }
    }
}

/// How a picked call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneInfo {
    /// When the pick happened.
    pub start: Instant,
    /// When the call ended (the response body's end).
    pub end: Instant,
    /// The gRPC status code; transport failures are [`Code::Unavailable`].
    pub code: Code,
    /// Whether the call failed below gRPC (connect, reset, timeout).
    pub transport_failure: bool,
    /// The `cpu_usage` trailer, when it parsed to an integer > 0.
    pub cpu_usage: Option<u64>,
}

/// Chooses an endpoint for a call.
pub trait Picker: Send + Sync + 'static {
    /// The index in `candidates` to use, or `None` when it is empty.
    fn pick(&self, ctx: &PickContext<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize>;

    /// Called exactly once for every successful [`Picker::pick`] when the
    /// call ends, however it ends.
    fn done(&self, endpoint: &Endpoint, info: &DoneInfo) {
        let _ = (endpoint, info);
    }
}

/// A lock-free SplitMix64 stream: the state advances with one atomic add.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(AtomicU64::new(mix(nanos ^ std::process::id() as u64)))
    }

    fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(SplitMix64::GAMMA, Ordering::Relaxed)
            .wrapping_add(SplitMix64::GAMMA))
    }

    fn below(&self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

// ---------------------------------------------------------------- p2c

/// p2c decay constant: a sample's weight halves in about 415 ms.
pub const P2C_TAU: Duration = Duration::from_millis(600);
/// A p2c loser not picked for this long is picked once anyway.
pub const P2C_FORCE_GAP: Duration = Duration::from_secs(3);
/// The load used when the computed load is 0.
pub const P2C_PENALTY: u64 = 250_000_000_000;
const INIT_SUCCESS: u64 = 1000;
const INIT_CPU: u64 = 500;

struct P2cState {
    cpu: AtomicU64,
    inflight: AtomicI64,
    /// Nanoseconds since the endpoint's epoch, +1; 0 = never picked.
    last_pick: AtomicU64,
    ewma: Mutex<Ewma>,
}

#[derive(Clone, Copy)]
struct Ewma {
    lag: u64,
    success: u64,
    stamp: Instant,
}

impl P2cState {
    fn new(epoch: Instant) -> Self {
        P2cState {
            cpu: AtomicU64::new(INIT_CPU),
            inflight: AtomicI64::new(1),
            last_pick: AtomicU64::new(0),
            ewma: Mutex::new(Ewma {
                lag: 0,
                success: INIT_SUCCESS,
                stamp: epoch,
            }),
        }
    }

    fn copy_from(&self, other: &P2cState, other_epoch: Instant, epoch: Instant) {
        self.cpu
            .store(other.cpu.load(Ordering::Relaxed), Ordering::Relaxed);
        self.inflight
            .store(other.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
        let last = other.last_pick.load(Ordering::Relaxed);
        if last != 0 {
            let at = other_epoch + Duration::from_nanos(last - 1);
            self.last_pick.store(
                at.saturating_duration_since(epoch).as_nanos() as u64 + 1,
                Ordering::Relaxed,
            );
        }
        *self.ewma.lock() = *other.ewma.lock();
    }
}

/// Power of two choices, exactly as kratos v0.x.
///
/// `load = cpu × (⌊√lag⌋ + 1) × inflight` (or [`P2C_PENALTY`] if 0), and of
/// two random candidates the one with the higher `success × weight / load`
/// wins. A loser not picked for [`P2C_FORCE_GAP`] is picked once instead, so
/// a starved endpoint keeps being measured.
#[derive(Debug)]
pub struct P2c {
    rng: Rng,
}

impl P2c {
    /// A picker with a time-seeded random source.
    pub fn new() -> Self {
        P2c { rng: Rng::seeded() }
    }

    /// A picker with a fixed seed, for reproducible tests.
    pub fn with_seed(seed: u64) -> Self {
        P2c {
            rng: Rng(AtomicU64::new(seed)),
        }
    }

    fn load(e: &Endpoint) -> u64 {
        let lag = e.p2c.ewma.lock().lag;
        let load = e
            .p2c
            .cpu
            .load(Ordering::Relaxed)
            .saturating_mul((lag as f64).sqrt() as u64 + 1)
            .saturating_mul(e.p2c.inflight.load(Ordering::Relaxed).max(0) as u64);
        if load == 0 { P2C_PENALTY } else { load }
    }

    fn valid(e: &Endpoint) -> bool {
        e.success() > 500 && e.cpu() < 900
    }
}

impl Default for P2c {
    fn default() -> Self {
        P2c::new()
    }
}

impl Picker for P2c {
    fn pick(&self, ctx: &PickContext<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        let chosen = match candidates.len() {
            0 => return None,
            1 => 0,
            n => {
                let (mut a, mut b) = (0, 1);
                for _ in 0..3 {
                    a = self.rng.below(n);
                    b = self.rng.below(n - 1);
                    if b >= a {
                        b += 1;
                    }
                    if Self::valid(&candidates[a]) || Self::valid(&candidates[b]) {
                        break;
                    }
                }
                let (ea, eb) = (&candidates[a], &candidates[b]);
                let lhs =
                    u128::from(Self::load(ea)) * u128::from(eb.success()) * u128::from(eb.weight);
                let rhs =
                    u128::from(Self::load(eb)) * u128::from(ea.success()) * u128::from(ea.weight);
                let (winner, loser) = if lhs > rhs { (b, a) } else { (a, b) };
                let le = &candidates[loser];
                let last = le.p2c.last_pick.load(Ordering::Acquire);
                let now = le.nanos_since_epoch(ctx.now);
                let forced = (last == 0
                    || now.saturating_sub(last) > P2C_FORCE_GAP.as_nanos() as u64)
                    && le
                        .p2c
                        .last_pick
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                if forced {
                    loser
                } else {
                    let we = &candidates[winner];
                    we.p2c
                        .last_pick
                        .store(we.nanos_since_epoch(ctx.now), Ordering::Release);
                    winner
                }
            }
        };
        candidates[chosen]
            .p2c
            .inflight
            .fetch_add(1, Ordering::AcqRel);
        Some(chosen)
    }

    fn done(&self, endpoint: &Endpoint, info: &DoneInfo) {
        let s = &endpoint.p2c;
        s.inflight.fetch_sub(1, Ordering::AcqRel);
        let mut e = s.ewma.lock();
        let td = info.end.saturating_duration_since(e.stamp);
        e.stamp = info.end;
        let mut w = (-(td.as_nanos() as f64) / P2C_TAU.as_nanos() as f64).exp();
        let sample = info.end.saturating_duration_since(info.start).as_nanos() as f64;
        if e.lag == 0 {
            w = 0.0;
        }
        e.lag = (e.lag as f64 * w + sample * (1.0 - w)) as u64;
        let ok = !info.transport_failure && matches!(info.code, Code::Ok | Code::Unknown);
        let s_sample = if ok { INIT_SUCCESS as f64 } else { 0.0 };
        e.success = (e.success as f64 * w + s_sample * (1.0 - w)) as u64;
        drop(e);
        if let Some(cpu) = info.cpu_usage.filter(|c| *c > 0) {
            s.cpu.store(cpu, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------- wrr

/// nginx smooth weighted round robin: weights 5, 1, 1 give
/// `a a b a c a a`. Current weights live in the endpoints, so they survive
/// updates of the set and vanish with departed endpoints.
///
/// [`SmoothWrr::new`] uses the registered weights. [`SmoothWrr::dynamic`]
/// scales them, at most once per second, by each endpoint's calls of the
/// last second (10 buckets of 100 ms): success rate `cs = 1 − errors /
/// requests` (an error is a code other than OK and Unknown, or a transport
/// failure; `cs ≤ 0` counts as 0.1, and `cs ≤ 0.2` over at most 5 requests as
/// 0.2), mean latency in 0.1 ms units and the server's `cpu_usage` (500
/// until one arrives): `score = √(cs × 10⁹ / (latency × cpu))`, `effective =
/// max(1, ⌊score × weight⌋)`. Endpoints without calls in the window get the
/// mean score; with fewer than two scored endpoints the weights stay as they
/// are, since one score alone says nothing about the others.
#[derive(Debug, Default)]
pub struct SmoothWrr {
    lock: Mutex<Option<Instant>>,
    dynamic: bool,
}

/// How often dynamic `wrr` weights change at most.
pub const WRR_UPDATE: Duration = Duration::from_secs(1);

fn effective(score: f64, weight: u32) -> i64 {
    ((score * f64::from(weight)).floor() as i64).max(1)
}

impl SmoothWrr {
    /// A picker with the registered (static) weights.
    pub fn new() -> Self {
        SmoothWrr::default()
    }

    /// A picker whose weights follow success rate, latency and CPU.
    pub fn dynamic() -> Self {
        SmoothWrr {
            lock: Mutex::new(None),
            dynamic: true,
        }
    }

    /// Whether weights are adjusted.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    fn update(candidates: &[Arc<Endpoint>], now: Instant) {
        let mut scores = vec![0.0f64; candidates.len()];
        let (mut total, mut count) = (0.0, 0usize);
        for (i, e) in candidates.iter().enumerate() {
            let (requests, errors, latency) = e.wrr_window.lock().value(e.bucket(now));
            if requests == 0 || latency <= 0.0 {
                continue;
            }
            let mut cs = 1.0 - errors as f64 / requests as f64;
            if cs <= 0.0 {
                cs = 0.1;
            } else if cs <= 0.2 && requests <= 5 {
                cs = 0.2;
            }
            let mean = latency / requests as f64;
            let cpu = e.cpu().max(1) as f64;
            scores[i] = (cs * 1e9 / (mean * cpu)).sqrt();
            total += scores[i];
            count += 1;
        }
        if count < 2 {
            return;
        }
        let mean = total / count as f64;
        for (e, score) in candidates.iter().zip(scores) {
            let score = if score > 0.0 { score } else { mean };
            e.wrr_score.store(score.to_bits(), Ordering::Relaxed);
            e.wrr_effective
                .store(effective(score, e.weight), Ordering::Relaxed);
        }
    }
}

impl Picker for SmoothWrr {
    fn pick(&self, ctx: &PickContext<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        let mut updated_at = self.lock.lock();
        if self.dynamic && updated_at.is_none_or(|at| ctx.now >= at + WRR_UPDATE) {
            *updated_at = Some(ctx.now);
            Self::update(candidates, ctx.now);
        }
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, e) in candidates.iter().enumerate() {
            let eff = if self.dynamic {
                e.effective_weight()
            } else {
                i64::from(e.weight)
            };
            let cur = e.wrr_current.fetch_add(eff, Ordering::Relaxed) + eff;
            total += eff;
            if best.is_none_or(|(_, b)| cur > b) {
                best = Some((i, cur));
            }
        }
        let (i, _) = best?;
        candidates[i]
            .wrr_current
            .fetch_sub(total, Ordering::Relaxed);
        Some(i)
    }

    fn done(&self, endpoint: &Endpoint, info: &DoneInfo) {
        if let Some(cpu) = info.cpu_usage.filter(|c| *c > 0) {
            endpoint.p2c.cpu.store(cpu, Ordering::Relaxed);
        }
        if !self.dynamic {
            return;
        }
        let error = info.transport_failure || !matches!(info.code, Code::Ok | Code::Unknown);
        let latency = info.end.saturating_duration_since(info.start).as_nanos() as f64 / 1e5;
        endpoint
            .wrr_window
            .lock()
            .add(endpoint.bucket(info.end), error, latency);
    }
}

// ---------------------------------------------------------------- simple

/// Plain round robin, ignoring weights.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A new picker.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Picker for RoundRobin {
    fn pick(&self, _ctx: &PickContext<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % candidates.len())
    }
}

/// Uniform random choice, ignoring weights.
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// A new picker.
    pub fn new() -> Self {
        Random { rng: Rng::seeded() }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl Picker for Random {
    fn pick(&self, _ctx: &PickContext<'_>, candidates: &[Arc<Endpoint>]) -> Option<usize> {
        (!candidates.is_empty()).then(|| self.rng.below(candidates.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Endpoint::new(format!("e{i}"), *w, None)))
            .collect()
    }

    fn done(
        p: &dyn Picker,
        e: &Endpoint,
        start: Instant,
        end: Instant,
        code: Code,
        cpu: Option<u64>,
    ) {
        p.done(
            e,
            &DoneInfo {
                start,
                end,
                code,
                transport_failure: false,
                cpu_usage: cpu,
            },
        );
    }

    #[test]
    fn wrr_keeps_current_weights_across_a_reorder() {
        let e = eps(&[5, 1, 1]);
        let wrr = SmoothWrr::new();
        let ctx = PickContext::now("/m");
        let first = wrr.pick(&ctx, &e).unwrap();
        assert_eq!(first, 0);
        // The set is rebuilt in another order: the current weights go on
        // (fresh ones would give e0 e0 e2 …). Ties now break towards e2,
        // which comes first.
        let reordered = vec![e[2].clone(), e[1].clone(), e[0].clone()];
        let next: Vec<&str> = (0..6)
            .map(|_| reordered[wrr.pick(&ctx, &reordered).unwrap()].addr())
            .collect();
        assert_eq!(next, ["e0", "e2", "e0", "e1", "e0", "e0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dynamic_wrr_rescales_once_per_second() {
        let e = eps(&[10, 10]);
        let wrr = SmoothWrr::dynamic();
        let feed = |i: usize, n: usize, lat: Duration, code: Code| {
            for _ in 0..n {
                let end = Instant::now();
                done(&wrr, &e[i], end - lat, end, code, None);
            }
        };
        // No samples yet: the first update leaves the weights alone.
        wrr.pick(&PickContext::now("/m"), &e).unwrap();
        assert_eq!([e[0].effective_weight(), e[1].effective_weight()], [10, 10]);
        // e0 answers in 1 ms, e1 in 25 ms.
        tokio::time::advance(Duration::from_millis(500)).await;
        feed(0, 10, Duration::from_millis(1), Code::Ok);
        feed(1, 10, Duration::from_millis(25), Code::Ok);
        tokio::time::advance(Duration::from_millis(499)).await;
        wrr.pick(&PickContext::now("/m"), &e).unwrap();
        assert_eq!(e[0].effective_weight(), 10, "not before a second passed");
        tokio::time::advance(Duration::from_millis(1)).await;
        wrr.pick(&PickContext::now("/m"), &e).unwrap();
        // score = sqrt(1e9 / (latency in 0.1 ms × cpu 500)).
        let s0 = (1e9f64 / (10.0 * 500.0)).sqrt();
        let s1 = (1e9f64 / (250.0 * 500.0)).sqrt();
        assert_eq!(e[0].effective_weight(), (s0 * 10.0).floor() as i64);
        assert_eq!(e[1].effective_weight(), (s1 * 10.0).floor() as i64);
        assert_eq!(e[0].wrr_score(), s0);
        // Samples older than a second are forgotten; e1 now fails every
        // call (cs 0 → 0.1) and reports cpu 1000.
        tokio::time::advance(Duration::from_secs(2)).await;
        feed(0, 10, Duration::from_millis(1), Code::Ok);
        for _ in 0..10 {
            let end = Instant::now();
            done(
                &wrr,
                &e[1],
                end - Duration::from_millis(1),
                end,
                Code::Internal,
                Some(1000),
            );
        }
        wrr.pick(&PickContext::now("/m"), &e).unwrap();
        let s1 = (0.1 * 1e9f64 / (10.0 * 1000.0)).sqrt();
        assert_eq!(e[1].effective_weight(), (s1 * 10.0).floor() as i64);
        assert!(e[0].effective_weight() > 3 * e[1].effective_weight());
        // Even a terrible score keeps an effective weight of at least 1.
        assert_eq!(effective(1e-9, 10), 1);
        // Static wrr ignores all of it.
        let st = SmoothWrr::new();
        let fresh = eps(&[10, 10]);
        for (f, x) in fresh.iter().zip(&e) {
            f.wrr_effective
                .store(x.effective_weight(), Ordering::Relaxed);
        }
        let order: Vec<usize> = (0..4)
            .map(|_| st.pick(&PickContext::now("/m"), &fresh).unwrap())
            .collect();
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 2);
    }

    #[test]
    fn p2c_single_and_empty() {
        let p = P2c::with_seed(1);
        let ctx = PickContext::now("/m");
        assert_eq!(p.pick(&ctx, &[]), None);
        let one = eps(&[10]);
        assert_eq!(p.pick(&ctx, &one), Some(0));
        assert_eq!(one[0].inflight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_done_updates_ewma_as_specified() {
        let p = P2c::with_seed(7);
        let e = Endpoint::new("a", 10, None);
        let t0 = Instant::now();
        // The first sample replaces the initial lag (old lag 0 → w = 0).
        done(
            &p,
            &e,
            t0,
            t0 + Duration::from_millis(4),
            Code::Ok,
            Some(950),
        );
        assert_eq!(e.lag(), 4_000_000);
        assert_eq!(e.success(), 1000);
        assert_eq!(e.cpu(), 950);
        assert_eq!(e.inflight(), 0);
        // 600 ms later a failure weighs 1 − e⁻¹.
        let t1 = t0 + Duration::from_millis(604);
        done(
            &p,
            &e,
            t1 - Duration::from_millis(4),
            t1,
            Code::Unavailable,
            Some(0),
        );
        let w = (-1.0f64).exp();
        assert_eq!(e.success(), (1000.0 * w) as u64);
        assert_eq!(e.lag(), (4e6 * w + 4e6 * (1.0 - w)) as u64);
        assert_eq!(e.cpu(), 950, "cpu_usage 0 is ignored");
        // Business errors (Unknown) count as success.
        let t2 = t1 + Duration::from_secs(60);
        done(&p, &e, t2, t2, Code::Unknown, None);
        assert_eq!(e.success(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_low_load_and_forces_starved_loser() {
        let p = P2c::with_seed(42);
        let e = eps(&[10, 10]);
        // e1 reports high cpu; both have been picked recently.
        e[1].p2c.cpu.store(950, Ordering::Relaxed);
        let ctx = PickContext::now("/m");
        for x in &e {
            x.p2c
                .last_pick
                .store(x.nanos_since_epoch(ctx.now), Ordering::Relaxed);
        }
        let mut hits = [0usize; 2];
        for _ in 0..100 {
            let i = p.pick(&ctx, &e).unwrap();
            hits[i] += 1;
            done(&p, &e[i], ctx.now, ctx.now, Code::Ok, None);
        }
        assert_eq!(hits, [100, 0]);
        // More than 3 s later the loser gets exactly one forced pick.
        tokio::time::advance(Duration::from_millis(3001)).await;
        let ctx = PickContext::now("/m");
        let picks: Vec<usize> = (0..3)
            .map(|_| {
                let i = p.pick(&ctx, &e).unwrap();
                done(&p, &e[i], ctx.now, ctx.now, Code::Ok, None);
                i
            })
            .collect();
        assert_eq!(picks, [1, 0, 0]);
    }

    #[test]
    fn p2c_weight_breaks_equal_load() {
        let p = P2c::with_seed(3);
        let e = eps(&[10, 30]);
        let ctx = PickContext::now("/m");
        for x in &e {
            x.p2c
                .last_pick
                .store(x.nanos_since_epoch(ctx.now), Ordering::Relaxed);
        }
        let i = p.pick(&ctx, &e).unwrap();
        assert_eq!(i, 1);
    }

    #[test]
    fn round_robin_and_random_cover_all() {
        let e = eps(&[1, 1, 1]);
        let ctx = PickContext::now("/m");
        let rr = RoundRobin::new();
        let v: Vec<usize> = (0..4).map(|_| rr.pick(&ctx, &e).unwrap()).collect();
        assert_eq!(v, [0, 1, 2, 0]);
        let r = Random::new();
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[r.pick(&ctx, &e).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(r.pick(&ctx, &[]), None);
    }
}
