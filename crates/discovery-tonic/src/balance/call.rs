//! The call path: pick an endpoint, send with a deadline, hedge or retry
//! idempotent calls, send any call again that a server refused unprocessed,
//! and eject endpoints whose transport failed.

use super::*;

/// Retries of a call after transport failures (idempotent calls) or
/// refusals (any call), each on an endpoint not tried yet.
const MAX_RETRIES: usize = 2;

impl Shared {
    pub(super) async fn dispatch(
        self: Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<ResponseBody>, Status> {
        let start = Instant::now();
        let method = req.uri().path().to_string();
        let mut timeout = self.config.timeout_for(&method);
        if let Some(t) = req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout) {
            timeout = timeout.min(t);
        }
        let headers = req.headers_mut();
        headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(timeout));
        if !self.config.caller.is_empty() && !headers.contains_key(CALLER) {
            if let Ok(v) = HeaderValue::from_str(&self.config.caller) {
                headers.insert(CALLER, v);
            }
        }
        let color = match headers.get(COLOR).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => Some(c.to_string()),
            _ if !self.config.color.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(&self.config.color) {
                    headers.insert(COLOR, v);
                }
                Some(self.config.color.clone())
            }
            _ => None,
        };
        let deadline = start + timeout;
        let send = self
            .clone()
            .send(req, &method, color.as_deref(), start, deadline);
        match tokio::time::timeout_at(deadline, send).await {
            Ok(result) => result,
            Err(_) => Err(self.deadline_exceeded(&method, timeout)),
        }
    }

    pub(super) fn deadline_exceeded(&self, method: &str, timeout: Duration) -> Status {
        Status::deadline_exceeded(format!(
            "{}: {method} exceeded its {timeout:?} deadline",
            self.appid
        ))
    }

    pub(super) async fn send(
        self: Arc<Self>,
        req: Request<Body>,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Status> {
        if self.config.is_idempotent(method) {
            return self.send_hedged(req, method, color, start, deadline).await;
        }
        let backend = self
            .pick_or_wait(method, color, start, deadline, &[])
            .await?;
        // Never sent twice unless a server said it did not process it (a
        // refused stream, a GOAWAY below it, a closed connection): then it
        // goes to another endpoint, its body replayed from the start.
        let (parts, body) = req.into_parts();
        let again = {
            let (method, uri, version, headers) = (
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            );
            move |body: Body| {
                let mut r = Request::new(body);
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.version_mut() = version;
                *r.headers_mut() = headers.clone();
                r
            }
        };
        let replay = Replay::new(body);
        let mut tried = vec![backend.endpoint.addr().to_string()];
        let first = Request::from_parts(parts, replay.first());
        let mut r = self
            .clone()
            .send_to(backend, first, method, start, deadline)
            .await;
        for _ in 0..MAX_RETRIES {
            if !matches!(&r, Err(failed) if failed.unsent) {
                break;
            }
            let Some(next) = self.pick_now(method, color, &tried) else {
                break;
            };
            let Some(body) = replay.again() else {
                break;
            };
            self.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                refused = tried.last().map(String::as_str),
                retry = next.endpoint.addr(),
                "request refused unprocessed; sent to another endpoint"
            );
            tried.push(next.endpoint.addr().to_string());
            r = self
                .clone()
                .send_to(next, again(body), method, start, deadline)
                .await;
        }
        r.map_err(|f| f.status)
    }

    /// An idempotent call: its body is buffered so that it can be sent
    /// again, to a second endpoint when the first has not answered after
    /// `hedge_percent` of the deadline, or to another one at once after a
    /// transport failure. The first response wins; the other attempt is
    /// cancelled.
    pub(super) async fn send_hedged(
        self: Arc<Self>,
        req: Request<Body>,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Status> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(status) => return Err(status),
        };
        let make = || {
            let mut r = Request::new(Body::new(Full::new(body.clone())));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let first = self
            .pick_or_wait(method, color, start, deadline, &[])
            .await?;
        let tried = [first.endpoint.addr().to_string()];
        let a = self.clone().send_to(first, make(), method, start, deadline);
        tokio::pin!(a);
        let pct = self.config.hedge_percent.min(100);
        let hedge_at = (pct > 0).then(|| start + (deadline - start) * pct / 100);
        let timer = async move {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut a => {
                // Endpoints often fail together (a zone drained, a rack
                // lost): each transport failure moves on to an endpoint not
                // tried yet, a bounded number of times.
                let mut tried = tried.to_vec();
                let mut r = r;
                for _ in 0..MAX_RETRIES {
                    if !matches!(&r, Err(failed) if failed.retry) {
                        break;
                    }
                    let Some(next) = self.pick_now(method, color, &tried) else {
                        break;
                    };
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        failed = tried.last().map(String::as_str),
                        retry = next.endpoint.addr(),
                        "idempotent call retried on another endpoint"
                    );
                    tried.push(next.endpoint.addr().to_string());
                    r = self.clone().send_to(next, make(), method, start, deadline).await;
                }
                r.map_err(|f| f.status)
            },
            () = timer => {
                let Some(second) = self.pick_now(method, color, &tried) else {
                    return a.await.map_err(|f| f.status);
                };
                self.hedged.fetch_add(1, Ordering::Relaxed);
                second.endpoint.counters.hedges.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    silent = tried[0],
                    hedge = second.endpoint.addr(),
                    "no response yet; hedging on another endpoint"
                );
                let b = self.clone().send_to(second, make(), method, start, deadline);
                tokio::pin!(b);
                tokio::select! {
                    r = &mut a => match r {
                        Ok(resp) => Ok(resp),
                        Err(_) => b.await.map_err(|f| f.status),
                    },
                    r = &mut b => match r {
                        Ok(resp) => Ok(resp),
                        Err(_) => a.await.map_err(|f| f.status),
                    },
                }
            }
        }
    }

    /// A pick from the current set without waiting, avoiding `exclude`.
    pub(super) fn pick_now(
        &self,
        method: &str,
        color: Option<&str>,
        exclude: &[String],
    ) -> Option<Arc<Backend>> {
        let snap = self.state.borrow().clone();
        self.pick(&snap, method, color, exclude).ok()
    }

    /// One attempt on `backend`.
    pub(super) async fn send_to(
        self: Arc<Self>,
        backend: Arc<Backend>,
        req: Request<Body>,
        method: &str,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Failed> {
        backend
            .endpoint
            .counters
            .inflight
            .fetch_add(1, Ordering::Relaxed);
        let mut guard = DoneGuard {
            picker: self.picker.clone(),
            backend: backend.clone(),
            start: Instant::now(),
            deadline,
            finished: false,
        };
        let Some(channel) = backend.channel.lock().clone() else {
            guard.finish(Code::Unavailable, true, None);
            return Err(Failed::unsent(Status::unavailable(format!(
                "{}: {} is not connected",
                self.appid,
                backend.endpoint.addr()
            ))));
        };
        match channel.oneshot(req).await {
            Err(e) if is_timeout(&e) => {
                // The channel enforces `grpc-timeout` too and may fire in the
                // same timer tick as our own deadline: not a transport failure.
                guard.finish(Code::DeadlineExceeded, false, None);
                Err(Failed::fatal(
                    self.deadline_exceeded(method, deadline - start),
                ))
            }
            Err(e) => {
                backend.transport_failed();
                guard.finish(Code::Unavailable, true, None);
                let status = Status::unavailable(format!(
                    "{}: {}: {}",
                    self.appid,
                    backend.endpoint.addr(),
                    error_chain(&e)
                ));
                Err(if never_processed(&e) {
                    Failed::unsent(status)
                } else {
                    Failed::retry(status)
                })
            }
            Ok(mut resp) => {
                backend.call_succeeded();
                resp.extensions_mut().insert(ServedBy {
                    addr: backend.endpoint.addr().to_string(),
                    hostname: backend.hostname.clone(),
                });
                let header_code = resp
                    .headers()
                    .get(GRPC_STATUS)
                    .map(|v| Code::from_bytes(v.as_bytes()));
                if header_code == Some(Code::Cancelled) && Instant::now() >= deadline {
                    // A tonic server answers its own expiry of our deadline
                    // with `Cancelled`; the caller asked for a deadline.
                    guard.finish(Code::DeadlineExceeded, false, None);
                    return Err(Failed::fatal(
                        self.deadline_exceeded(method, deadline - start),
                    ));
                }
                let header_cpu = parse_cpu(resp.headers());
                Ok(resp.map(|inner| ResponseBody {
                    inner,
                    guard: Some(guard),
                    header_code,
                    header_cpu,
                    deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                    expired: false,
                }))
            }
        }
    }

    pub(super) async fn pick_or_wait(
        &self,
        method: &str,
        color: Option<&str>,
        start: Instant,
        deadline: Instant,
        exclude: &[String],
    ) -> Result<Arc<Backend>, Status> {
        let mut rx = self.state.subscribe();
        let grace_end = (start + self.config.startup_grace).min(deadline);
        loop {
            let snap = rx.borrow_and_update().clone();
            // Within the start-up grace, a client zone still dialing its
            // first connections is waited for rather than left for another
            // zone that happened to connect first.
            let local_first = Instant::now() < grace_end;
            let why = match self.pick_tier(&snap, method, color, exclude, local_first) {
                Ok(b) => return Ok(b),
                Err(why) => why,
            };
            let may_wait = snap.phase == Phase::Pending || snap.first_connects > 0;
            if !may_wait || Instant::now() >= grace_end {
                return Err(self.unavailable(&snap, why));
            }
            if !matches!(
                tokio::time::timeout_at(grace_end, rx.changed()).await,
                Ok(Ok(()))
            ) {
                let snap = rx.borrow().clone();
                let why = self.pick(&snap, method, color, exclude).err().flatten();
                let status = self.unavailable(&snap, why);
                if Instant::now() >= deadline {
                    // The deadline, not the grace, ended the wait.
                    return Err(Status::deadline_exceeded(format!(
                        "deadline exceeded while waiting for an endpoint: {}",
                        status.message()
                    )));
                }
                return Err(status);
            }
        }
    }

    /// Picks among the snapshot's usable endpoints other than `exclude`.
    /// `Err(Some(reason))` when endpoints exist but none suits the request.
    pub(super) fn pick(
        &self,
        snap: &Snapshot,
        method: &str,
        color: Option<&str>,
        exclude: &[String],
    ) -> Result<Arc<Backend>, Option<String>> {
        self.pick_tier(snap, method, color, exclude, false)
    }

    /// [`Self::pick`]; with `local_first`, no other zone is picked while an
    /// endpoint of the client's zone is still on its first dial.
    fn pick_tier(
        &self,
        snap: &Snapshot,
        method: &str,
        color: Option<&str>,
        exclude: &[String],
        local_first: bool,
    ) -> Result<Arc<Backend>, Option<String>> {
        let ready: Vec<&Arc<Backend>> = snap
            .ready
            .iter()
            .filter(|b| !exclude.iter().any(|x| x == b.endpoint.addr()))
            .collect();
        if ready.is_empty() {
            return Err(None);
        }
        let healthy = |fallback: bool| -> Vec<&Arc<Backend>> {
            ready
                .iter()
                .copied()
                .filter(|b| b.fallback == fallback && !b.ejected.load(Ordering::Relaxed))
                .collect()
        };
        // The client's zone while one of its endpoints is healthy, else the
        // other zones: a zone whose every endpoint failed its dial or lost
        // its connection is left at once, not when the registry drops it
        // (a lease, up to 90 s after a crash). Every endpoint ejected: pick
        // among all of them rather than none ("panic mode"); the ejection
        // may be stale.
        let local = healthy(false);
        if local.is_empty()
            && local_first
            && snap
                .all
                .iter()
                .any(|b| !b.fallback && !b.first_attempt_done.load(Ordering::Acquire))
        {
            return Err(None);
        }
        let tiers = [local, healthy(true)];
        let tiers: Vec<Vec<&Arc<Backend>>> = if tiers.iter().all(Vec::is_empty) {
            vec![ready]
        } else {
            tiers.into_iter().filter(|t| !t.is_empty()).collect()
        };
        // Colour routing within a tier; a tier without a usable colour
        // gives way to the next.
        let group = tiers
            .into_iter()
            .map(|pool| {
                let coloured: Vec<&Arc<Backend>> = match color {
                    Some(c) => pool
                        .iter()
                        .copied()
                        .filter(|b| b.endpoint.color() == Some(c))
                        .collect(),
                    None => Vec::new(),
                };
                if coloured.is_empty() {
                    pool.into_iter()
                        .filter(|b| b.endpoint.color().is_none())
                        .collect()
                } else {
                    coloured
                }
            })
            .find(|group: &Vec<&Arc<Backend>>| !group.is_empty())
            .unwrap_or_default();
        if group.is_empty() {
            return Err(Some(format!(
                "no uncoloured endpoint among {} connected",
                snap.ready.len()
            )));
        }
        let candidates: Vec<Arc<Endpoint>> = group.iter().map(|b| b.endpoint.clone()).collect();
        let ctx = PickContext {
            method,
            now: Instant::now(),
        };
        match self.picker.pick(&ctx, &candidates) {
            Some(i) if i < group.len() => {
                group[i]
                    .endpoint
                    .counters
                    .picks
                    .fetch_add(1, Ordering::Relaxed);
                Ok(group[i].clone())
            }
            _ => Err(Some("the picker chose no endpoint".to_string())),
        }
    }

    pub(super) fn unavailable(&self, snap: &Snapshot, why: Option<String>) -> Status {
        let (env, reason) = match &snap.phase {
            Phase::NotFound { env } => (env.as_str(), "not registered".to_string()),
            Phase::Pending => (self.config.env.as_str(), "resolution pending".to_string()),
            Phase::Found => {
                let reason = match why {
                    Some(why) => why,
                    None if snap.known == 0 => "no instances".to_string(),
                    None if snap.first_connects > 0 => {
                        format!("connecting to {} endpoints", snap.known)
                    }
                    None => format!("{} endpoints unreachable", snap.known),
                };
                (self.config.env.as_str(), reason)
            }
        };
        Status::unavailable(format!(
            "no instances of {} in env {env} ({reason})",
            self.appid
        ))
    }
}
