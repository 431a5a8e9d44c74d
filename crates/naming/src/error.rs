use std::fmt;

/// Errors shared by every implementation of the naming traits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No discovery node is configured.
    #[error(
        "no discovery nodes configured: set DISCOVERY_NODES (e.g. 127.0.0.1:7171) \
         [region={region} zone={zone} env={env} hostname={hostname}]"
    )]
    NoNodes {
        /// Resolved region.
        region: String,
        /// Resolved zone.
        zone: String,
        /// Resolved deploy env.
        env: String,
        /// Resolved hostname.
        hostname: String,
    },
    /// A configuration value is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A target such as `discovery://default/<appid>` cannot be parsed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The text that was parsed.
        target: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The registry could not be reached or answered something undecodable.
    #[error("transport: {0}")]
    Transport(String),
    /// The registry answered with a non-zero code.
    #[error("discovery server answered code {code}: {message}")]
    Server {
        /// The envelope's `code`.
        code: i64,
        /// The envelope's `message`.
        message: String,
    },
    /// The appid has no instances in this env.
    #[error("{appid} not found in env {env}")]
    NotFound {
        /// The appid asked for.
        appid: String,
        /// The env it was asked in.
        env: String,
    },
    /// The appid is already registered through this client.
    #[error("{0} is already registered by this client")]
    Duplicate(String),
    /// An operation did not finish within its bound.
    #[error("timed out after {0}")]
    Timeout(Elapsed),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// A duration shown in error messages (`"5s"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub std::time::Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
