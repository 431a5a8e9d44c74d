//! Ownership of background work: after `close` and dropping the handles, no
//! task and no socket of the SDK is left (issue #5). Alone in its binary so
//! that other tests' tasks and sockets do not blur the counts.

mod common;

use std::time::Duration;

use common::{addr_of, client, eventually, instance, put, server};
use naming::{Registry, Resolver};

/// The tests of this file count process-wide sockets: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The alive tasks and open sockets once the server's start-up is over:
/// the same counts on 20 reads in a row, 5 ms apart.
async fn settled() -> (usize, usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let (mut last, mut same) = ((0, 0), 0);
    testkit::wait_until(
        Duration::from_secs(5),
        "task and socket counts settle",
        async || {
            let now = (metrics.num_alive_tasks(), sockets());
            same = if now == last { same + 1 } else { 0 };
            last = now;
            same >= 20
        },
    )
    .await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_no_task_or_socket() {
    let _serial = SERIAL.lock().await;
    let s = server("poll_hold = \"30s\"").await;
    put(&s, "demo.svc", "p1", 9000);
    let (tasks0, sockets0) = settled().await;
    let metrics = tokio::runtime::Handle::current().metrics();

    let d = client(&[addr_of(&s)]);
    let reg = d.register(instance("mine.svc", 9001)).await.unwrap();
    let w = d.watch("demo.svc").unwrap();
    assert!(
        w.resolved(Duration::from_secs(2))
            .await
            .expect("resolved")
            .found()
            .is_some()
    );
    let ghost = d.watch("ghost.svc").unwrap();
    ghost
        .resolved(Duration::from_secs(2))
        .await
        .expect("resolved");
    let busy = (metrics.num_alive_tasks(), sockets());
    println!("baseline tasks/sockets {tasks0}/{sockets0}, in use {busy:?}");
    assert!(
        busy.0 > tasks0 && busy.1 > sockets0,
        "the SDK should be doing something"
    );

    d.close().await.unwrap();
    // Still-held handles are inert and hold no socket.
    let rx = w.watch();
    eventually(
        Duration::from_secs(3),
        "tasks and sockets released while handles live",
        || metrics.num_alive_tasks() == tasks0 && sockets() == sockets0,
    )
    .await;
    assert!(rx.has_changed().is_err(), "watch closed with the client");
    reg.cancel().await.unwrap();
    drop((w, ghost, d));
    eventually(
        Duration::from_secs(3),
        "tasks and sockets released after the last handle",
        || (metrics.num_alive_tasks(), sockets()) == (tasks0, sockets0),
    )
    .await;
    s.shutdown().await;
}

/// Dropping every handle without `close` stops the poll loop too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_poll_loop() {
    let _serial = SERIAL.lock().await;
    let s = server("poll_hold = \"30s\"").await;
    let (tasks0, _) = settled().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let d = client(&[addr_of(&s)]);
    let w = d.watch("demo.svc").unwrap();
    w.resolved(Duration::from_secs(2)).await.expect("resolved");
    eventually(Duration::from_secs(2), "poll parked", || {
        s.registry().parked_polls() == 1
    })
    .await;
    drop(d);
    // The watch keeps the loop alive…
    assert_eq!(s.registry().parked_polls(), 1);
    drop(w);
    // …until it goes too: the parked poll is abandoned and the server drops
    // its waiter.
    eventually(Duration::from_secs(3), "loop stopped", || {
        s.registry().parked_polls() == 0 && metrics.num_alive_tasks() == tasks0
    })
    .await;
    s.shutdown().await;
}
