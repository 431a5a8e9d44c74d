//! kratos-style service discovery for tonic clients and servers.
//!
//! * [`Target`], parsing `discovery://default/<appid>?subset=50&cluster=a&zone=z`
//!   and `direct://default/host:port,host:port`.
//! * [`pipeline`], the filter, zone scheduling and deterministic subsetting
//!   as pure functions.
//! * [`Resolvers`], the scheme → [`naming::Builder`] map; `direct` is built
//!   in, `discovery` comes from the SDK crate.
//! * [`Balanced`], a cloneable tower service over one tonic channel per
//!   endpoint, with [`picker`]s (p2c, smooth WRR), ejection with backoff
//!   ([`health`]) on failed calls and on lost connections (HTTP/2 keepalive
//!   notices silent peers), hedging and retries of idempotent methods,
//!   retries of any request a server refused unprocessed, failover to other
//!   zones while the client's has no healthy endpoint, colour routing,
//!   fail-fast on empty sets and per-RPC deadlines.
//!   [`Balanced::pool`] shows every endpoint's state.
//!   `GreeterClient::new(balanced)` just works.
//! * [`CpuLayer`], the server-side `cpu_usage` trailer p2c balances on.
//! * [`interop`], serving gRPC-Go and kratos callers whose `:authority`
//!   carries a query (`<appid>?subset=50`).
//! * [`ClientConfig`], the kratos client settings with their defaults.
//!
//! ```
//! use discovery_tonic::{Balanced, ClientConfig, Resolvers};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = ClientConfig::default(); // p2c, 250 ms per RPC, subset 50
//! let channel = Balanced::from_target("direct://default/127.0.0.1:1", &Resolvers::new(), &config)
//!     .unwrap();
//! // Usable as `GreeterClient::new(channel)`; nothing listens here, so a
//! // call would fail fast with `Unavailable`.
//! assert_eq!(channel.appid(), "direct");
//! # }
//! ```

pub mod balance;
pub mod config;
pub mod cpu;
pub mod health;
pub mod interop;
pub mod picker;
pub mod pipeline;
pub mod resolvers;
pub mod target;
pub mod tls;

pub use balance::{BackendState, Balanced, PoolState, ResponseBody, ServedBy};
pub use config::{BalancerKind, ClientConfig};
pub use cpu::CpuLayer;
pub use resolvers::{DirectBuilder, DirectResolver, Resolvers};
pub use target::Target;
