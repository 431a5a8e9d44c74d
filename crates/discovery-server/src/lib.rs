//! A service registry that speaks the HTTP API of bilibili/discovery.
//!
//! The crate is layered so that data flows one way:
//! request → [`api`] handler → [`registry`] core → (wake pollers, replicate).
//!
//! * [`registry`]: the sans-IO core (instances, counters, lease, eviction,
//!   protection), every method taking `now`;
//! * [`api`]: the axum router, byte-compatible with the Go original;
//! * [`config`]: the Go original's TOML, plus our tables;
//! * [`server`]: binds, self-registers, runs the tickers, shuts down;
//! * [`cluster`] with [`replication`] and [`membership`]: peers, their
//!   queues, start-up sync, peer records; [`clock`] and [`node`]: the
//!   node's hybrid clock, identity and phase.
//!
//! A node in this process, on a free port, answering the Go original's
//! routes:
//!
//! ```
//! use discovery_server::{config::Config, server};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = server::start(Config::default(), Some("127.0.0.1:0".parse()?)).await?;
//! node.wait_ready().await;
//! let http = reqwest::Client::new();
//! let base = format!("http://{}/discovery", node.addr());
//! let answer: serde_json::Value = http
//!     .post(format!("{base}/register"))
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("zone=sh001&env=dev&appid=demo.service&hostname=h1&status=1&addrs=grpc://10.0.0.1:9000")
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(answer["code"], 0);
//! let fetched: serde_json::Value = http
//!     .get(format!("{base}/fetch?env=dev&appid=demo.service&status=1"))
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(fetched["data"]["instances"]["sh001"][0]["hostname"], "h1");
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod tls;

pub mod replication;

mod conn;
mod params;
mod reply;
