//! The environment variables of the stack, one name each.
//!
//! | constant | variable | meaning | default when unset |
//! | --- | --- | --- | --- |
//! | [`NODES`] | `DISCOVERY_NODES` | comma-separated `host:port` registry nodes (an `http://` prefix is dropped; `https://` makes the SDK use HTTPS for every node) | none: the SDK refuses to start |
//! | [`CA`] | `DISCOVERY_CA` | PEM bundle verifying `https://` nodes | the system's roots |
//! | [`CERT`] | `DISCOVERY_CERT` | PEM client certificate presented to `https://` nodes (with [`KEY`]) | none |
//! | [`KEY`] | `DISCOVERY_KEY` | PEM private key of [`CERT`] | none |
//! | [`REGION`] | `REGION` | region of this process | `region01` ([`DEFAULT_REGION`]) |
//! | [`ZONE`] | `ZONE` | zone of this process | `zone01` ([`DEFAULT_ZONE`]) |
//! | [`DEPLOY_ENV`] | `DEPLOY_ENV` | deploy env (`dev`, `uat`, `prod`…) | `dev` ([`DEFAULT_DEPLOY_ENV`]) |
//! | [`HOSTNAME`] | `HOSTNAME` | instance identity; equal hostnames overwrite each other's registrations | [`crate::host::hostname`] |
//! | [`COLOR`] | `DEPLOY_COLOR` | traffic colour | empty: uncoloured |
//! | [`APPID`] | `APP_ID` | the process's own appid | empty (the demos: `demo.service`, `demo.client`) |
//! | [`GRPC_ADDR`] | `GRPC_ADDR` | `demo-server`'s gRPC listen address | `0.0.0.0:9000` |
//! | [`GRPC_TLS_CERT`], [`GRPC_TLS_KEY`] | `GRPC_TLS_CERT`, `GRPC_TLS_KEY` | `demo-server`'s PEM certificate and key: it serves TLS and registers `grpcs://` | unset: plain gRPC |
//! | [`GRPC_TLS_CA`] | `GRPC_TLS_CA` | PEM bundle `demo-client` verifies `grpcs://` endpoints with | unset: `grpcs://` endpoints are skipped |
//! | [`ADVERTISE_IP`] | `ADVERTISE_IP` | `demo-server`'s registered IP | the listen IP, else [`crate::host::primary_ip`] |
//! | [`HTTP_ADDR`] | `HTTP_ADDR` | `demo-client`'s HTTP listen address | `0.0.0.0:8000` |
//! | [`DEMO_TARGET`] | `DEMO_TARGET` | `demo-client`'s gRPC target | `discovery://default/demo.service` |
//! | [`DEMO_BALANCER`] | `DEMO_BALANCER` | `demo-client`'s picker (`p2c`, `wrr`, `round_robin`, `random`) | `p2c` |
//!
//! [`IDENTITY`] lists them all, for tests that start children with a clean
//! identity:
//!
//! ```
//! let mut cmd = std::process::Command::new("true");
//! for var in naming::env::IDENTITY {
//!     cmd.env_remove(var);
//! }
//! cmd.env(naming::env::NODES, "127.0.0.1:7171");
//! assert!(naming::env::IDENTITY.contains(&"DISCOVERY_NODES"));
//! ```

/// `DISCOVERY_NODES`: the registry nodes, comma-separated `host:port`.
pub const NODES: &str = "DISCOVERY_NODES";
/// `DISCOVERY_CA`: the PEM bundle that verifies `https://` nodes.
pub const CA: &str = "DISCOVERY_CA";
/// `DISCOVERY_CERT`: the PEM client certificate shown to `https://` nodes.
pub const CERT: &str = "DISCOVERY_CERT";
/// `DISCOVERY_KEY`: the PEM private key of [`CERT`].
pub const KEY: &str = "DISCOVERY_KEY";
/// `GRPC_TLS_CERT`: `demo-server`'s PEM certificate chain; with
/// [`GRPC_TLS_KEY`] it serves TLS and registers `grpcs://`.
pub const GRPC_TLS_CERT: &str = "GRPC_TLS_CERT";
/// `GRPC_TLS_KEY`: `demo-server`'s PEM private key.
pub const GRPC_TLS_KEY: &str = "GRPC_TLS_KEY";
/// `GRPC_TLS_CA`: the PEM bundle `demo-client` verifies `grpcs://`
/// endpoints with.
pub const GRPC_TLS_CA: &str = "GRPC_TLS_CA";
/// `REGION`: region of this process.
pub const REGION: &str = "REGION";
/// `ZONE`: zone of this process.
pub const ZONE: &str = "ZONE";
/// `DEPLOY_ENV`: deploy env of this process.
pub const DEPLOY_ENV: &str = "DEPLOY_ENV";
/// `HOSTNAME`: instance identity.
pub const HOSTNAME: &str = "HOSTNAME";
/// `DEPLOY_COLOR`: traffic colour.
pub const COLOR: &str = "DEPLOY_COLOR";
/// `APP_ID`: the process's own appid.
pub const APPID: &str = "APP_ID";
/// `GRPC_ADDR`: `demo-server`'s gRPC listen address.
pub const GRPC_ADDR: &str = "GRPC_ADDR";
/// `ADVERTISE_IP`: `demo-server`'s registered IP.
pub const ADVERTISE_IP: &str = "ADVERTISE_IP";
/// `HTTP_ADDR`: `demo-client`'s HTTP listen address.
pub const HTTP_ADDR: &str = "HTTP_ADDR";
/// `DEMO_TARGET`: `demo-client`'s gRPC target.
pub const DEMO_TARGET: &str = "DEMO_TARGET";
/// `DEMO_BALANCER`: `demo-client`'s picker.
pub const DEMO_BALANCER: &str = "DEMO_BALANCER";

/// Default of [`REGION`].
pub const DEFAULT_REGION: &str = "region01";
/// Default of [`ZONE`].
pub const DEFAULT_ZONE: &str = "zone01";
/// Default of [`DEPLOY_ENV`].
pub const DEFAULT_DEPLOY_ENV: &str = "dev";

/// Every variable above but [`HOSTNAME`] (which a shell always sets).
pub const IDENTITY: [&str; 17] = [
    NODES,
    CA,
    CERT,
    KEY,
    REGION,
    ZONE,
    DEPLOY_ENV,
    COLOR,
    APPID,
    GRPC_ADDR,
    GRPC_TLS_CERT,
    GRPC_TLS_KEY,
    GRPC_TLS_CA,
    ADVERTISE_IP,
    HTTP_ADDR,
    DEMO_TARGET,
    DEMO_BALANCER,
];
