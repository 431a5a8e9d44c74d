//! Requests a server never processed are sent again, whatever the method.
//!
//! HTTP/2 tells a client which requests were never processed: a stream
//! reset with `REFUSED_STREAM`, and a stream whose id is above the last
//! stream id of the server's GOAWAY (RFC 9113, 8.7 and 6.8). Those are
//! retried on another endpoint even for methods not marked idempotent; a
//! stream reset with any other code may have been processed and is not.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig};
use support::{Behaviour, GracefulServer, TestServer, ep, eventually, fake, found, hello};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

/// How the scripted server answers every request but a connection's first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `RST_STREAM(REFUSED_STREAM)`.
    Refuse,
    /// `GOAWAY` whose last stream id is below the request's.
    GoAway,
    /// `RST_STREAM(INTERNAL_ERROR)`: the request may have been processed.
    Reset,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;
const INTERNAL_ERROR: u32 = 0x2;

/// An HTTP/2 server written frame by frame, so that it can answer what a
/// real server only does in a race: it answers a connection's first request
/// (the balancer's check that a new connection serves) with `200`, and
/// every later one as `answer` says.
struct Scripted {
    addr: std::net::SocketAddr,
    /// Requests answered with `answer`.
    turned_away: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let turned_away = Arc::new(AtomicUsize::new(0));
        let count = turned_away.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, answer, count.clone()));
            }
        });
        Scripted {
            addr,
            turned_away,
            task,
        }
    }

    fn turned_away(&self) -> usize {
        self.turned_away.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

async fn serve(mut conn: TcpStream, answer: Answer, turned_away: Arc<AtomicUsize>) {
    let mut preface = [0u8; 24];
    if conn.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    if conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).await.is_err() {
            return;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(PING, ACK, 0, &payload),
            // `:status: 200` is entry 8 of HPACK's static table.
            HEADERS if stream == 1 => frame(HEADERS, END_STREAM | END_HEADERS, 1, &[0x88]),
            HEADERS => {
                turned_away.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Answer::Refuse => frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes()),
                    Answer::Reset => frame(RST_STREAM, 0, stream, &INTERNAL_ERROR.to_be_bytes()),
                    Answer::GoAway => {
                        // Last stream id: the connection's first request,
                        // below this one; error code NO_ERROR.
                        let mut p = 1u32.to_be_bytes().to_vec();
                        p.extend(0u32.to_be_bytes());
                        frame(GOAWAY, 0, 0, &p)
                    }
                }
            }
            _ => continue,
        };
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Sequential calls of a method not marked idempotent, alternating between
/// the scripted server and a real one, until the scripted one has turned
/// away 3 requests; the failures.
async fn calls_against(answer: Answer) -> (Vec<tonic::Status>, usize, Balanced) {
    let scripted = Scripted::start(answer).await;
    let real = TestServer::start(Behaviour::default());
    let (resolver, _tx) = fake(found(&[ep(scripted.addr), ep(real.addr)]));
    let config = ClientConfig::default()
        .balancer(BalancerKind::RoundRobin)
        .timeout(Duration::from_secs(2));
    assert!(!config.is_idempotent("/helloworld.Greeter/SayHello"));
    let channel = Balanced::new(resolver, &config).unwrap();
    support::wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    let mut failed = Vec::new();
    let mut calls = 0;
    let t = Instant::now();
    while scripted.turned_away() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the scripted server got {} requests in {calls} calls",
            scripted.turned_away()
        );
        calls += 1;
        if let Err(s) = client.say_hello(hello()).await {
            failed.push(s);
        }
    }
    assert_eq!(real.hits() + failed.len(), calls, "every call ended once");
    (failed, calls, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_for_any_method() {
    let (failed, calls, channel) = calls_against(Answer::Refuse).await;
    println!(
        "REFUSED_STREAM: {calls} calls, {} failed, retried {}",
        failed.len(),
        channel.pool().retried_calls
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(channel.pool().retried_calls >= 3, "{:?}", channel.pool());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_goaway_last_stream_id_are_retried_for_any_method() {
    let (failed, calls, channel) = calls_against(Answer::GoAway).await;
    println!(
        "GOAWAY below the stream: {calls} calls, {} failed, retried {}",
        failed.len(),
        channel.pool().retried_calls
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(channel.pool().retried_calls >= 3, "{:?}", channel.pool());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_resets_are_not_retried_for_methods_not_idempotent() {
    // The server may have acted on the request before the reset.
    let (failed, _calls, channel) = calls_against(Answer::Reset).await;
    assert_eq!(failed.len(), 3, "{failed:?}");
    for s in &failed {
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    }
    assert_eq!(channel.pool().retried_calls, 0);
}

/// Callers of a method not marked idempotent while one of two servers stops
/// gracefully, still listed by the registry (a deregistration that has not
/// reached the client yet, or a server stopped without one).
async fn graceful_stop_under_load(kind: BalancerKind) {
    let mut victim = GracefulServer::start(Duration::from_millis(5));
    let other = TestServer::start(Behaviour::default());
    let (resolver, _tx) = fake(found(&[ep(victim.addr), ep(other.addr)]));
    let config = ClientConfig::default()
        .balancer(kind)
        .timeout(Duration::from_secs(2));
    let channel = Balanced::new(resolver, &config).unwrap();
    support::wait_ready(&channel, 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, failed, ok) = (stop.clone(), failed.clone(), ok.clone());
        let mut client = GreeterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.say_hello(hello()).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => failed
                        .lock()
                        .push(format!("{:?} {}", s.code(), s.message())),
                }
                // Fixed: paces the load.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    eventually(Duration::from_secs(20), "the victim takes calls", || {
        victim.hits() >= 50
    })
    .await;
    victim.stop();
    let drained = victim.stopped(Duration::from_secs(10)).await;
    let at_stop = other.hits();
    eventually(
        Duration::from_secs(20),
        "the other server serves 300 calls after the stop",
        || other.hits() >= at_stop + 300,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().clone();
    let pool = channel.pool();
    println!(
        "{kind:?}, graceful stop of 1 of 2 servers: {} calls, {} failed; drained in {drained:?}; \
         retried {}",
        ok.load(Ordering::Relaxed) + failed.len(),
        failed.len(),
        pool.retried_calls
    );
    assert!(failed.is_empty(), "failed calls: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_graceful_stop_fails_no_call_of_any_method() {
    graceful_stop_under_load(BalancerKind::P2c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_graceful_stop_fails_no_call_of_any_method() {
    graceful_stop_under_load(BalancerKind::Wrr).await;
}
