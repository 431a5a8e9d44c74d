//! The shared vocabulary of the discovery stack: what an [`Instance`] is, how
//! a registry answers ([`InstancesInfo`], [`Scheduler`]), and the traits that
//! registries ([`Registry`]) and resolvers ([`Resolver`], [`Builder`])
//! implement.
//!
//! The same small things every crate needs are said here once: the answer
//! [`code`]s, the [`env`](mod@env) variable names, the [`host`]'s name and address,
//! retry [`backoff`], and (features `logs`, `signals`) the binaries' log
//! set-up and shutdown signals.
//!
//! Apart from [`host`]'s lookups (and the `signals` feature's handlers),
//! this crate does no IO. The JSON produced
//! and accepted by its types is the wire format of bilibili/discovery, byte
//! for byte.
//!
//! ```
//! use naming::{Instance, Status};
//!
//! let json = r#"{"region":"sh","zone":"sh001","env":"dev","appid":"demo.svc",
//!     "hostname":"h1","addrs":["grpc://10.0.0.1:9000"],"version":"v1",
//!     "metadata":{"weight":"20"},"status":1,"reg_timestamp":1,
//!     "up_timestamp":1,"renew_timestamp":1,"dirty_timestamp":1,
//!     "latest_timestamp":1}"#;
//! let ins: Instance = serde_json::from_str(json).unwrap();
//! assert_eq!(ins.status, Status::Up);
//! assert_eq!(ins.weight(), 20);
//! assert_eq!(ins.grpc_addr(), Some("10.0.0.1:9000"));
//! ```

pub mod addr;
pub mod backoff;
pub mod code;
mod duration;
pub mod env;
mod error;
pub mod host;
mod instance;
#[cfg(feature = "logs")]
pub mod logs;
mod scheduler;
#[cfg(feature = "signals")]
pub mod signals;
mod traits;

pub use duration::parse_go_duration;
pub use error::{Elapsed, Error};
pub use instance::{Instance, InstancesInfo, Status, metadata};
pub use scheduler::{Scheduler, ZoneStrategy, ZoneWeight};
pub use traits::{
    BoxFuture, BuildOptions, Builder, Deregister, Registration, Registry, Resolution, Resolver,
};

/// The appid under which every discovery node registers itself.
pub const DISCOVERY_APPID: &str = "infra.discovery";

/// Balancer weight used when an instance has no usable `weight` metadata.
pub const DEFAULT_WEIGHT: u32 = 10;
