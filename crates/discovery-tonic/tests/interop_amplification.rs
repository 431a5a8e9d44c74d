//! HPACK amplification against a tonic server behind the interop shim:
//! 300 connections each put a 4 KB entry in their dynamic table, then send
//! 8 KiB of HEADERS frames that each reference it 64 times (258 KB decoded
//! per 64-byte frame). Each connection is closed with GOAWAY
//! ENHANCE_YOUR_CALM, and the process (server and clients) grows by at
//! most 16 MiB. Its own test binary: the RSS it measures is this test's.

mod rawh2;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rawh2::*;

const CONNECTIONS: usize = 300;
const LIMIT: usize = 16 << 20;
/// Most of that is 300 open connections, each of which served a request;
/// the attack itself, which the shim must absorb, gets a quarter.
const ATTACK_LIMIT: usize = 4 << 20;

/// Resident set size of this process, from /proc/self/statm.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// One connection's table fill: a request h2 serves, with the entry.
async fn filled(addr: std::net::SocketAddr) -> Conn {
    let mut c = Conn::open(addr).await;
    let mut fill = request_block(&mut c.encoder, b"demo.service?subset=50");
    literal(&mut fill, 0x40, b"x-fill", &[b'a'; 4000]);
    c.call(1, &fill).await;
    let o = c.outcome(1).await;
    assert_eq!(o.message.as_deref(), Some("Hello go"), "{o:?}");
    // The attack needs no more encoding: the client's copy of the entry
    // would count against the server's budget, as would its read buffer.
    c.encoder = loona_hpack::Encoder::new();
    c.shrink();
    c
}

/// 8 KiB of 64-byte blocks, each 64 references to the newest entry.
fn attack() -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = 3;
    while out.len() < 8 * 1024 {
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &[0xbe; 64],
        ));
        stream += 2;
    }
    out
}

async fn attacked(mut c: Conn) -> Outcome {
    c.send(&attack()).await;
    c.outcome(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplification_over_300_connections_stays_within_16_mib() {
    let addr = greeter(true).await;
    // Warm-up: runtime threads, allocator arenas, tonic's first service.
    let o = attacked(filled(addr).await).await;
    assert_eq!(o.summary(), "GOAWAY 0xb \"header_list_way_too_large\"");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss();

    let peak = Arc::new(AtomicUsize::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        conns.push(filled(addr).await);
    }
    let filled_rss = rss();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(attacked(c)))
        .collect();
    for t in tasks {
        let o = t.await.unwrap();
        assert_eq!(o.summary(), "GOAWAY 0xb \"header_list_way_too_large\"");
    }
    peak.fetch_max(rss(), Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS {:.1} MiB before, {:.1} MiB with {CONNECTIONS} connections open and filled, \
         {:.1} MiB at the peak of the attack: grew by {:.1} MiB",
        mib(before),
        mib(filled_rss),
        mib(before + grown),
        mib(grown)
    );
    assert!(grown <= LIMIT, "RSS grew by {grown} bytes");
    let attack = (before + grown).saturating_sub(filled_rss);
    assert!(attack <= ATTACK_LIMIT, "the attack added {attack} bytes");
}
