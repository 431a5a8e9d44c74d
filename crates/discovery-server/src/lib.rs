//! A service registry that speaks the HTTP API of bilibili/discovery.
//!
//! The crate is layered so that data flows one way:
//! request → [`api`] handler → [`registry`] core → (wake pollers, replicate).
//!
//! * [`registry`]: the sans-IO core (instances, counters, lease, eviction,
//!   protection), every method taking `now`;
//! * [`api`]: the axum router, byte-compatible with the Go original;
//! * [`config`]: the Go original's TOML, plus our tables;
//! * [`server`]: binds, self-registers, runs the tickers, shuts down.

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

pub mod replication;

mod conn;
mod params;
mod reply;
