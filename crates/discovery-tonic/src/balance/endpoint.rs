//! One endpoint of the pool: its channel, connection tracking (a lost
//! connection ejects the endpoint at once), ejection and re-admission
//! probes, and the dial loop.

use super::*;

pub(super) struct Backend {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) hostname: String,
    /// Of another zone than the client's: picked only while no endpoint of
    /// the client's zone is healthy.
    pub(super) fallback: bool,
    pub(super) channel: Mutex<Option<Channel>>,
    pub(super) ejected: AtomicBool,
    pub(super) health: Mutex<Health>,
    pub(super) target: tonic::transport::Endpoint,
    /// Set for a `grpcs://` endpoint: connections are TLS with this.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) connect_timeout: Duration,
    pub(super) first_attempt_done: AtomicBool,
    /// The dial whose channel is in use; connections of older dials may end
    /// without consequence.
    pub(super) generation: AtomicU64,
    pub(super) lost: mpsc::UnboundedSender<Lost>,
}

#[derive(Default)]
pub(super) struct Health {
    pub(super) ejection: Ejection,
    pub(super) probing: bool,
}

impl Backend {
    // One constructor for every field a backend starts with; a builder
    // would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        addr: &str,
        weight: u32,
        color: Option<String>,
        hostname: String,
        fallback: bool,
        config: &ClientConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        lost: mpsc::UnboundedSender<Lost>,
    ) -> Option<Self> {
        let target = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tracing::warn!(addr, error = %e, "unusable endpoint address"))
            .ok()?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .keep_alive_while_idle(config.keepalive_while_idle);
        Some(Backend {
            endpoint: Arc::new(Endpoint::new(addr, weight, color)),
            hostname,
            fallback,
            channel: Mutex::new(None),
            ejected: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            target,
            tls,
            connect_timeout: config.connect_timeout,
            first_attempt_done: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            lost,
        })
    }

    /// The same connection and health under new metadata.
    pub(super) fn updated(
        &self,
        weight: u32,
        color: Option<String>,
        hostname: String,
        fallback: bool,
    ) -> Self {
        let h = self.health.lock();
        Backend {
            endpoint: Arc::new(self.endpoint.updated(weight, color)),
            hostname,
            fallback,
            channel: Mutex::new(self.channel.lock().clone()),
            ejected: AtomicBool::new(h.ejection.is_ejected()),
            health: Mutex::new(Health {
                ejection: h.ejection.clone(),
                probing: false,
            }),
            target: self.target.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            first_attempt_done: AtomicBool::new(self.first_attempt_done.load(Ordering::Relaxed)),
            generation: AtomicU64::new(self.generation.load(Ordering::Relaxed)),
            lost: self.lost.clone(),
        }
    }

    pub(super) fn call_succeeded(&self) {
        if self.ejected.load(Ordering::Relaxed) || self.health.lock().ejection.failures() > 0 {
            let mut h = self.health.lock();
            h.ejection.succeed();
            self.ejected.store(false, Ordering::Relaxed);
        }
    }

    pub(super) fn transport_failed(self: &Arc<Self>) {
        self.eject("transport failure");
    }

    pub(super) fn eject(self: &Arc<Self>, why: &str) {
        self.eject_for(why, false);
    }

    /// Ejects; with `redial`, the first failure after healthy calls is
    /// probed at once instead of after its ejection.
    fn eject_for(self: &Arc<Self>, why: &str, redial: bool) {
        let mut h = self.health.lock();
        let now = Instant::now();
        let mut d = h.ejection.fail(now);
        if redial && h.ejection.failures() == 1 {
            d = h.ejection.probe_at(now);
        }
        if !self.ejected.swap(true, Ordering::Relaxed) {
            self.endpoint
                .counters
                .ejections
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            addr = self.endpoint.addr(),
            failures = h.ejection.failures(),
            ejected_for = ?d,
            "endpoint ejected: {why}"
        );
        if !h.probing {
            h.probing = true;
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }

    /// A new connection that has answered a request, within the connect
    /// timeout. A peer that accepts connections but never answers (a frozen
    /// process, a blackholed address behind a proxy) fails here rather than
    /// being re-admitted.
    pub(super) async fn dial(&self) -> Result<(Channel, u64), String> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let addr: Arc<str> = Arc::from(self.endpoint.addr());
        let lost = self.lost.clone();
        let tls = match &self.tls {
            None => None,
            Some(config) => {
                let host = addr.rsplit_once(':').map_or(&*addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(Arc::clone(config)), name))
            }
        };
        let dialled = AtomicBool::new(false);
        let connector = tower::service_fn(move |_: http::Uri| {
            let addr = addr.clone();
            let lost = lost.clone();
            let tls = tls.clone();
            // One connection per channel: once it ends, tonic would
            // reconnect on the next call and send it unchecked, to a server
            // that may be draining (its listener still accepts until the
            // drain ends, then resets what it never served) or frozen. The
            // call fails instead as never sent, and goes elsewhere; the
            // probe dials anew and checks that the new connection answers.
            let again = dialled.swap(true, Ordering::Relaxed);
            async move {
                if again {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        format!("the connection to {addr} ended; the balancer dials anew"),
                    ));
                }
                let tcp = TcpStream::connect(&*addr).await?;
                tcp.set_nodelay(true)?;
                let io = match tls {
                    None => Io::Plain(tcp),
                    Some((connector, name)) => {
                        Io::Tls(Box::new(connector.connect(name, tcp).await?))
                    }
                };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Tracked {
                    io,
                    _hook: LostHook {
                        lost,
                        addr,
                        generation,
                    },
                }))
            }
        });
        let attempt = async {
            let channel = self
                .target
                .connect_with_connector(connector)
                .await
                .map_err(|e| error_chain(&e))?;
            answers(&channel, self.endpoint.addr()).await?;
            Ok::<_, String>(channel)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(ch)) => Ok((ch, generation)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "no connection answering within {:?}",
                self.connect_timeout
            )),
        }
    }

    /// Puts a dialled channel in use.
    pub(super) fn install(&self, channel: Channel, generation: u64) {
        let mut slot = self.channel.lock();
        self.generation.store(generation, Ordering::Relaxed);
        *slot = Some(channel);
    }
}

/// Sends one gRPC request on a fresh channel; any HTTP response, even
/// `Unimplemented`, shows that the peer is alive and serving.
pub(super) async fn answers(channel: &Channel, addr: &str) -> Result<(), String> {
    let mut req = Request::new(Body::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{addr}/grpc.health.v1.Health/Check")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    match channel.clone().oneshot(req).await {
        Ok(_) => Ok(()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// A connection's socket; dropping it (the connection ended: keepalive
/// timeout, reset, GOAWAY, EOF) tells the updater.
pub(super) struct Tracked {
    pub(super) io: Io,
    pub(super) _hook: LostHook,
}

/// A `grpc://` connection, or a `grpcs://` one.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Forwards an IO call to the stream inside [`Io`].
macro_rules! either {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either!(self, s => s.is_write_vectored())
    }
}

pub(super) struct LostHook {
    pub(super) lost: mpsc::UnboundedSender<Lost>,
    pub(super) addr: Arc<str>,
    pub(super) generation: u64,
}

impl Drop for LostHook {
    fn drop(&mut self) {
        let _ = self.lost.send(Lost {
            addr: self.addr.clone(),
            generation: self.generation,
        });
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why an attempt failed, and whether another endpoint may be tried.
pub(super) struct Failed {
    pub(super) status: Status,
    /// A transport failure: an idempotent call may be sent again.
    pub(super) retry: bool,
    /// The server never processed the request: any call may be sent again.
    pub(super) unsent: bool,
}

impl Failed {
    pub(super) fn retry(status: Status) -> Self {
        Failed {
            status,
            retry: true,
            unsent: false,
        }
    }

    pub(super) fn unsent(status: Status) -> Self {
        Failed {
            status,
            retry: true,
            unsent: true,
        }
    }

    pub(super) fn fatal(status: Status) -> Self {
        Failed {
            status,
            retry: false,
            unsent: false,
        }
    }
}

impl Backend {
    /// The connection of the channel in use ended: eject at once, so that
    /// no caller picks it while the probe reconnects. The channel does not
    /// reconnect by itself; after healthy calls (a server closing idle or
    /// old connections) the probe dials at once.
    pub(super) fn connection_lost(self: &Arc<Self>, generation: u64) {
        if self.generation.load(Ordering::Relaxed) != generation
            || self.ejected.load(Ordering::Relaxed)
        {
            return;
        }
        self.eject_for("connection lost", true);
    }
}

/// Re-admits an ejected endpoint once a fresh connection succeeds after its
/// ejection; each failed probe ejects it for longer.
pub(super) async fn probe(backend: Weak<Backend>) {
    loop {
        let until = {
            let Some(b) = backend.upgrade() else { return };
            let mut h = b.health.lock();
            match h.ejection.until() {
                Some(until) => until,
                None => {
                    // A call succeeded meanwhile (panic mode): nothing to do.
                    h.probing = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(until).await;
        let Some(b) = backend.upgrade() else { return };
        if b.health
            .lock()
            .ejection
            .until()
            .is_some_and(|u| u > Instant::now())
        {
            continue; // extended by a failure in panic mode
        }
        let result = b.dial().await;
        let mut h = b.health.lock();
        match result {
            Ok((channel, generation)) => {
                b.install(channel, generation);
                h.ejection.readmit();
                h.probing = false;
                b.ejected.store(false, Ordering::Relaxed);
                tracing::info!(addr = b.endpoint.addr(), "endpoint re-admitted");
                return;
            }
            Err(error) => {
                let d = h.ejection.fail(Instant::now());
                tracing::debug!(addr = b.endpoint.addr(), %error, ejected_for = ?d, "probe failed");
            }
        }
    }
}

/// Connects a new endpoint, retrying with jittered exponential backoff until
/// it succeeds or the endpoint leaves the set.
pub(super) async fn connect_loop(backend: Weak<Backend>, shared: Weak<Shared>) {
    let mut backoff = EJECT_MIN;
    loop {
        let Some(b) = backend.upgrade() else { return };
        let result = b.dial().await;
        let first = !b.first_attempt_done.swap(true, Ordering::AcqRel);
        let connected = match result {
            Ok((channel, generation)) => {
                b.install(channel, generation);
                true
            }
            Err(error) => {
                tracing::debug!(addr = b.endpoint.addr(), %error, ?backoff, "connect failed");
                false
            }
        };
        if connected || first {
            match shared.upgrade() {
                Some(s) => s.republish.notify_one(),
                None => return,
            }
        }
        if connected {
            return;
        }
        drop(b);
        tokio::time::sleep(naming::backoff::jitter(backoff)).await;
        backoff = (backoff * 2).min(EJECT_MAX);
    }
}
