//! The bench harness starts its children through testkit's launcher: the
//! ceiling server comes up, has a resident size and a CPU time, and goes
//! away on kill.

use loadgen::proc::{CpuTime as _, Rss as _, free_addr, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_starts_reports_rss_and_dies() {
    let addr = free_addr().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.args([
        "ceiling",
        "--listen",
        &addr.to_string(),
        "--body-bytes",
        "64",
    ]);
    let mut c = spawn(cmd, addr, "ceiling", "/").await.unwrap();
    assert!(c.rss().unwrap() > 0);
    // Readable while it runs (it may not have used a whole tick yet).
    c.cpu_time().unwrap();
    testkit::signal::send(c.id().unwrap(), "TERM").unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(c.rss().is_err(), "gone");
    assert!(c.cpu_time().is_err(), "gone");
}
