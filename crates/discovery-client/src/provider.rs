//! The provider side (docs/protocol.md#routes): register, renew, set, cancel.
//!
//! [`Discovery`] implements [`naming::Registry`]. A registration is a
//! [`naming::Registration`] guard owning a renew task:
//!
//! * the task renews every `renew_interval` (30 s); a `-404` (instance
//!   evicted, node restarted) registers again at once; a transport failure
//!   switches node and retries once at once; other codes wait for the next
//!   tick;
//! * [`Registration::cancel`](naming::Registration::cancel) stops the task
//!   first (so a late renew cannot re-register), then cancels, retrying over
//!   the nodes for at most `cancel_timeout` (5 s); `-404` counts as success;
//! * dropping the guard without `cancel` stops the task and spawns the same
//!   bounded cancel in the background; [`Discovery::close`] waits for such
//!   cancels, so a process that drops its guards and then closes the client
//!   leaves nothing registered. If no tokio runtime is left to run it, the
//!   server's lease removes the instance 90–150 s later;
//! * a registration ended by drop or [`Discovery::close`] logs one line
//!   saying whether the cancel was answered and how long it took (an
//!   explicit `cancel` returns that to its caller, and logs only failures);
//! * one registration per appid per client: a second one fails with
//!   [`Error::Duplicate`] until the first is cancelled or dropped.
//!
//! ```no_run
//! use discovery_client::{Config, Discovery, SetRequest};
//! use naming::{Instance, Registry, Status};
//!
//! # async fn run() -> Result<(), naming::Error> {
//! let discovery = Discovery::new(Config::from_env())?;
//! let reg = discovery
//!     .register(Instance {
//!         appid: "demo.service".into(),
//!         addrs: vec!["grpc://10.0.0.1:9000".into(), "http://10.0.0.1:8000".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! // Take it out of traffic without deregistering.
//! discovery.set("demo.service", SetRequest { status: Some(Status::Waiting), metadata: None }).await?;
//! reg.cancel().await?;
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use naming::{
    BoxFuture, Deregister, Elapsed, Error, Instance, Registration, Registry, Status, code::Code,
};
use tokio::{task::JoinHandle, time::MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::{
    Core, Discovery,
    transport::{Call, CallError, Envelope},
};

/// Pause between cancel attempts while nodes refuse connections, so a dead
/// cluster is not hammered during `cancel_timeout`.
const CANCEL_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A live registration as the client keeps it.
#[derive(Debug)]
pub(crate) struct RegEntry {
    /// Tells this registration from a later one of the same appid.
    id: u64,
    /// The instance as sent (identity fields filled from the config).
    instance: Instance,
    /// The renew task; `None` while the first register is in flight.
    renew: Option<JoinHandle<()>>,
}

/// Changes for [`Discovery::set`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// New traffic status (UP or waiting).
    pub status: Option<Status>,
    /// Metadata merged key by key into the stored metadata.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Registry for Discovery {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Registration, Error>> {
        Box::pin(register(Arc::clone(self.core()), instance))
    }
}

impl Discovery {
    /// Changes status and/or metadata of the instance (`appid`, this
    /// client's hostname) with `POST /discovery/set`. When this client
    /// registered it, later re-registrations keep the change. Setting an
    /// instance the server does not hold is refused (`Server { code: -400 }`).
    pub async fn set(&self, appid: &str, req: SetRequest) -> Result<(), Error> {
        let core = self.core();
        core.check_open()?;
        let registered = core
            .registrations
            .lock()
            .get(appid)
            .map(|e| e.instance.clone());
        let mut ins = match registered {
            Some(ins) => ins,
            None => complete_identity(core, appid)?,
        };
        let mut call = identity(
            Call::post("/discovery/set", core.config.request_timeout),
            &ins,
        );
        if let Some(status) = req.status {
            check_status(status)?;
            call = call.param("status", status.as_u32().to_string());
            ins.status = status;
        }
        if let Some(md) = &req.metadata {
            call = call.param("metadata", metadata_text(md));
            ins.metadata.extend(md.clone());
        }
        let env = with_failover(core, &call).await?;
        if env.code != Code::Ok {
            return Err(env.server_error());
        }
        if let Some(e) = core.registrations.lock().get_mut(appid) {
            e.instance = ins;
        }
        Ok(())
    }
}

fn check_status(status: Status) -> Result<(), Error> {
    match status {
        Status::Up | Status::Waiting => Ok(()),
        Status::Other(v) => Err(Error::InvalidConfig(format!(
            "status must be 1 (UP) or 2 (waiting), not {v}"
        ))),
    }
}

/// Fills region, zone, env and hostname from the config; a differing
/// non-empty value is a configuration error.
fn complete(core: &Core, mut ins: Instance) -> Result<Instance, Error> {
    let c = &core.config;
    for (name, field, configured) in [
        ("region", &mut ins.region, &c.region),
        ("zone", &mut ins.zone, &c.zone),
        ("env", &mut ins.env, &c.env),
        ("hostname", &mut ins.hostname, &c.hostname),
    ] {
        if !field.is_empty() && field != configured {
            return Err(Error::InvalidConfig(format!(
                "instance {name} {field:?} differs from the client's {configured:?}"
            )));
        }
        field.clone_from(configured);
    }
    if ins.appid.is_empty() {
        return Err(Error::InvalidConfig("instance appid is empty".into()));
    }
    ins.addrs.retain(|a| !a.trim().is_empty());
    if ins.addrs.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "instance of {} has no addrs",
            ins.appid
        )));
    }
    // `Status::Other(0)` is the only way to say "unset" besides the default
    // (UP); the server rejects 0.
    if ins.status == Status::Other(0) {
        ins.status = Status::Up;
    }
    check_status(ins.status)?;
    Ok(ins)
}

/// The key of an instance of `appid` registered by someone with our
/// identity (e.g. `discoveryctl set` acting for a server).
fn complete_identity(core: &Core, appid: &str) -> Result<Instance, Error> {
    if appid.is_empty() {
        return Err(Error::InvalidConfig("appid is empty".into()));
    }
    let c = &core.config;
    Ok(Instance {
        region: c.region.clone(),
        zone: c.zone.clone(),
        env: c.env.clone(),
        appid: appid.to_string(),
        hostname: c.hostname.clone(),
        ..Default::default()
    })
}

/// The key fields every provider call carries.
fn identity<'a>(call: Call<'a>, ins: &Instance) -> Call<'a> {
    call.param("region", &ins.region)
        .param("zone", &ins.zone)
        .param("env", &ins.env)
        .param("appid", &ins.appid)
        .param("hostname", &ins.hostname)
}

fn metadata_text(md: &BTreeMap<String, String>) -> String {
    if md.is_empty() {
        String::new()
    } else {
        serde_json::to_string(md).unwrap_or_default()
    }
}

fn register_call(core: &Core, ins: &Instance) -> Call<'static> {
    let mut call = identity(
        Call::post("/discovery/register", core.config.request_timeout),
        ins,
    )
    .param("version", &ins.version)
    .param("status", ins.status.as_u32().to_string())
    .param("metadata", metadata_text(&ins.metadata));
    // One field per address: a comma-joined value would be one corrupt
    // address on the server.
    for a in &ins.addrs {
        call = call.param("addrs", a);
    }
    call
}

/// One call on the current node; on a transport failure (which switched the
/// node) one more on the next node.
async fn with_failover(core: &Core, call: &Call<'_>) -> Result<Envelope, Error> {
    match core.transport.call_current(call).await {
        Ok((env, _)) => Ok(env),
        Err(CallError::Closed) => Err(Error::Closed),
        Err(CallError::Transport(first)) => {
            debug!(error = %first, "retrying on the next node");
            Ok(core.transport.call_current(call).await?.0)
        }
    }
}

async fn send_register(core: &Core, ins: &Instance) -> Result<(), Error> {
    let env = with_failover(core, &register_call(core, ins)).await?;
    if env.code == Code::Ok {
        Ok(())
    } else {
        Err(env.server_error())
    }
}

async fn register(core: Arc<Core>, instance: Instance) -> Result<Registration, Error> {
    core.check_open()?;
    let ins = complete(&core, instance)?;
    let appid = ins.appid.clone();
    let id = rand::random::<u64>();
    {
        let mut regs = core.registrations.lock();
        if regs.contains_key(&appid) {
            return Err(Error::Duplicate(appid));
        }
        regs.insert(
            appid.clone(),
            RegEntry {
                id,
                instance: ins.clone(),
                renew: None,
            },
        );
    }
    if let Err(e) = send_register(&core, &ins).await {
        remove_entry(&core, &appid, id);
        return Err(e);
    }
    info!(appid = %appid, hostname = %ins.hostname, addrs = ?ins.addrs, "registered");
    let ops = RenewOps {
        core: Arc::clone(&core),
        appid: appid.clone(),
        id,
    };
    let task = tokio::spawn(renew_loop(core.config.renew_interval, ops));
    {
        let mut regs = core.registrations.lock();
        match regs.get_mut(&appid) {
            Some(e) if e.id == id && !core.closed.load(std::sync::atomic::Ordering::Acquire) => {
                e.renew = Some(task);
            }
            // Closed while the register was in flight: close() already took
            // the entry (and cancelled it), so renewing would resurrect it.
            _ => {
                task.abort();
                return Err(Error::Closed);
            }
        }
    }
    Ok(Registration::new(appid.clone(), Handle { core, appid, id }))
}

fn remove_entry(core: &Core, appid: &str, id: u64) -> Option<RegEntry> {
    let mut regs = core.registrations.lock();
    if regs.get(appid).is_some_and(|e| e.id == id) {
        regs.remove(appid)
    } else {
        None
    }
}

/// Why a registration ends; named in its one log line.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Cancel,
    Dropped,
    Closed,
}

/// [`cancel_bounded`], then the one log line of the registration's end.
async fn cancel_logged(core: &Core, ins: &Instance, ending: Ending) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let result = cancel_bounded(core, ins).await;
    let ms = started.elapsed().as_millis();
    let (appid, hostname) = (&ins.appid, &ins.hostname);
    let how = match ending {
        Ending::Cancel => "cancel()",
        Ending::Dropped => "registration dropped without cancel()",
        Ending::Closed => "client closed",
    };
    match &result {
        // The caller of `cancel()` has the result to report; the other
        // endings have nobody else to say so.
        Ok(node) if matches!(ending, Ending::Cancel) => {
            debug!(%appid, %hostname, node, ms, "{how}: cancelled");
        }
        Ok(node) => info!(%appid, %hostname, node, ms, "{how}: cancelled"),
        Err(e) => warn!(
            %appid, %hostname, ms, error = %e,
            "{how}: cancel failed; the registry evicts the instance when its lease expires"
        ),
    }
    result.map(drop)
}

/// Sends cancel, retrying over the nodes for at most `cancel_timeout`.
/// `-404` (already gone) is success. Returns the node that answered.
async fn cancel_bounded(core: &Core, ins: &Instance) -> Result<String, Error> {
    let bound = core.config.cancel_timeout;
    let deadline = tokio::time::Instant::now() + bound;
    let attempt = async {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let call = identity(
                Call::post("/discovery/cancel", core.config.request_timeout.min(left)),
                ins,
            );
            match core.transport.call_current(&call).await {
                Ok((env, node)) if env.code == Code::Ok || env.code == Code::NotFound => {
                    return Ok(node);
                }
                Ok((env, _)) => return Err(env.server_error()),
                Err(CallError::Closed) => return Err(Error::Closed),
                Err(CallError::Transport(e)) => {
                    debug!(appid = %ins.appid, error = %e, "cancel failed; trying the next node");
                    tokio::time::sleep(CANCEL_RETRY_PAUSE).await;
                }
            }
        }
    };
    tokio::time::timeout(bound, attempt)
        .await
        .unwrap_or(Err(Error::Timeout(Elapsed(bound))))
}

/// Stops the renew task and waits until it is gone.
async fn stop_renew(entry: &mut RegEntry) {
    if let Some(task) = entry.renew.take() {
        task.abort();
        let _ = task.await;
    }
}

/// Cancels every registration of a closing client, concurrently.
pub(crate) async fn cancel_all(core: &Arc<Core>) -> Result<(), Error> {
    let entries: Vec<RegEntry> = core.registrations.lock().drain().map(|(_, e)| e).collect();
    let mut set = tokio::task::JoinSet::new();
    for mut e in entries {
        let core = Arc::clone(core);
        set.spawn(async move {
            stop_renew(&mut e).await;
            cancel_logged(&core, &e.instance, Ending::Closed).await
        });
    }
    let mut first = Ok(());
    while let Some(r) = set.join_next().await {
        let r = r.unwrap_or_else(|e| Err(Error::Transport(format!("cancel task: {e}"))));
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// The [`Deregister`] behind a [`Registration`].
struct Handle {
    core: Arc<Core>,
    appid: String,
    id: u64,
}

impl Deregister for Handle {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            // Stop renewing first, but keep the appid reserved until the
            // cancel is answered, so a new register cannot race it.
            let taken = {
                let mut regs = self.core.registrations.lock();
                match regs.get_mut(&self.appid) {
                    Some(e) if e.id == self.id => Some((e.renew.take(), e.instance.clone())),
                    _ => None,
                }
            };
            // Already cancelled by `Discovery::close`.
            let Some((renew, ins)) = taken else {
                return Ok(());
            };
            if let Some(task) = renew {
                task.abort();
                let _ = task.await;
            }
            let result = cancel_logged(&self.core, &ins, Ending::Cancel).await;
            remove_entry(&self.core, &self.appid, self.id);
            result
        })
    }

    fn abandon(self: Box<Self>) {
        let Some(mut entry) = remove_entry(&self.core, &self.appid, self.id) else {
            return;
        };
        if let Some(task) = entry.renew.take() {
            task.abort();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let core = Arc::clone(&self.core);
                let cancel = async move {
                    let _ = cancel_logged(&core, &entry.instance, Ending::Dropped).await;
                };
                let mut pending = self.core.abandoned.lock();
                // Reap finished cancels so the set does not grow.
                while pending.try_join_next().is_some() {}
                pending.spawn_on(cancel, &rt);
            }
            Err(_) => warn!(
                appid = %self.appid,
                "registration dropped outside a tokio runtime; the lease will expire"
            ),
        }
    }
}

/// What one renew produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewed {
    /// `0`.
    Ok,
    /// `-404`: the server does not know the instance.
    NotFound,
    /// Another code.
    Code(i64),
    /// Transport failure (the current node has been switched).
    Transport,
}

/// The IO the renew loop needs; the loop itself is pure timing logic,
/// tested on a paused clock.
pub(crate) trait RenewIo {
    fn renew(&self) -> impl Future<Output = Renewed> + Send;
    fn register(&self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Renews every `period`; `-404` → register at once; a transport failure →
/// one immediate retry (on the next node).
pub(crate) async fn renew_loop(period: Duration, io: impl RenewIo) {
    let start = tokio::time::Instant::now() + period;
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut outcome = io.renew().await;
        if outcome == Renewed::Transport {
            outcome = io.renew().await;
        }
        match outcome {
            Renewed::Ok => {}
            Renewed::NotFound => {
                info!("renew answered -404 (evicted or node restarted); registering again");
                if let Err(e) = io.register().await {
                    warn!(error = %e, "register after -404 failed; retrying at the next tick");
                }
            }
            Renewed::Code(c) => warn!(code = c, "renew refused; retrying at the next tick"),
            Renewed::Transport => warn!("renew failed on two nodes; retrying at the next tick"),
        }
    }
}

struct RenewOps {
    core: Arc<Core>,
    appid: String,
    id: u64,
}

impl RenewOps {
    fn instance(&self) -> Option<Instance> {
        self.core
            .registrations
            .lock()
            .get(&self.appid)
            .filter(|e| e.id == self.id)
            .map(|e| e.instance.clone())
    }
}

impl RenewIo for RenewOps {
    async fn renew(&self) -> Renewed {
        let Some(ins) = self.instance() else {
            return Renewed::Ok;
        };
        let call = identity(
            Call::post("/discovery/renew", self.core.config.request_timeout),
            &ins,
        );
        match self.core.transport.call_current(&call).await {
            Ok((env, _)) if env.code == Code::Ok => Renewed::Ok,
            Ok((env, _)) if env.code == Code::NotFound => Renewed::NotFound,
            Ok((env, _)) => Renewed::Code(env.code),
            Err(_) => Renewed::Transport,
        }
    }

    async fn register(&self) -> Result<(), Error> {
        match self.instance() {
            Some(ins) => send_register(&self.core, &ins).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// What happened when, since the script started.
    type Log = Arc<Mutex<Vec<(&'static str, Duration)>>>;

    /// Records when renews and registers happen; answers from a script.
    struct Script {
        start: Instant,
        answers: Mutex<Vec<Renewed>>,
        log: Log,
    }

    impl RenewIo for Script {
        async fn renew(&self) -> Renewed {
            self.log
                .lock()
                .unwrap()
                .push(("renew", self.start.elapsed()));
            let mut a = self.answers.lock().unwrap();
            if a.is_empty() {
                Renewed::Ok
            } else {
                a.remove(0)
            }
        }
        async fn register(&self) -> Result<(), Error> {
            self.log
                .lock()
                .unwrap()
                .push(("register", self.start.elapsed()));
            Ok(())
        }
    }

    fn script(answers: Vec<Renewed>) -> (Script, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let s = Script {
            start: Instant::now(),
            answers: Mutex::new(answers),
            log: Arc::clone(&log),
        };
        (s, log)
    }

    /// Renews every 30 s.
    #[tokio::test(start_paused = true)]
    async fn renews_every_thirty_seconds() {
        let (s, log) = script(vec![]);
        let task = tokio::spawn(renew_loop(Duration::from_secs(30), s));
        tokio::time::sleep(Duration::from_secs(95)).await;
        task.abort();
        let log = log.lock().unwrap().clone();
        let times: Vec<u64> = log.iter().map(|(_, t)| t.as_secs()).collect();
        assert_eq!(times, [30, 60, 90]);
        assert!(log.iter().all(|(what, _)| *what == "renew"));
    }

    /// `-404` → register at once.
    #[tokio::test(start_paused = true)]
    async fn not_found_registers_at_once() {
        let (s, log) = script(vec![Renewed::NotFound]);
        let task = tokio::spawn(renew_loop(Duration::from_secs(30), s));
        tokio::time::sleep(Duration::from_secs(31)).await;
        task.abort();
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                ("renew", Duration::from_secs(30)),
                ("register", Duration::from_secs(30))
            ]
        );
    }

    /// A transport failure is retried at once (the transport
    /// already moved to the next node), and a `-404` there registers.
    #[tokio::test(start_paused = true)]
    async fn transport_failure_retries_at_once() {
        let (s, log) = script(vec![
            Renewed::Transport,
            Renewed::NotFound,
            Renewed::Code(-500),
        ]);
        let task = tokio::spawn(renew_loop(Duration::from_secs(30), s));
        tokio::time::sleep(Duration::from_secs(61)).await;
        task.abort();
        let log = log.lock().unwrap().clone();
        let t30 = Duration::from_secs(30);
        let t60 = Duration::from_secs(60);
        // A -500 waits for the next tick: no retry, no register.
        assert_eq!(
            log,
            [
                ("renew", t30),
                ("renew", t30),
                ("register", t30),
                ("renew", t60)
            ]
        );
    }
}
