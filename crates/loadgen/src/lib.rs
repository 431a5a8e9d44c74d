//! A load generator for the discovery server, and the `bench` harness that
//! `cargo xtask bench` runs (issue 8).
//!
//! * [`client`]: one keep-alive hyper connection per worker, [`client::drive`]
//!   to run N of them for a count or a duration;
//! * [`stats`]: HDR histograms → ops/s, p50, p99, max;
//! * [`ceiling`]: a minimal hyper server answering a fixed body, the
//!   reference every figure is divided by;
//! * [`proc`]: servers as child processes, their RSS, the open-file limit;
//! * [`scenarios`]: register, renew, fetch, poll wake-up, memory, cluster;
//! * [`report`]: the table and the JSON file;
//! * [`args`]: the command line and the sizes of each mode.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use loadgen::client::{Plan, Req, drive};
//!
//! let s = drive("127.0.0.1:7171".parse()?, 64, Plan::timed(std::time::Duration::from_secs(5)), |_| {
//!     Req::get("/discovery/fetch?env=dev&appid=demo&status=1")
//! })
//! .await?;
//! println!("{:.0}/s p99 {:.2} ms", s.ops_per_s, s.p99_ms);
//! # Ok(()) }
//! ```

pub mod args;
pub mod ceiling;
pub mod client;
pub mod proc;
pub mod report;
pub mod scenarios;
pub mod stats;
