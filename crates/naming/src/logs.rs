//! One log set-up for the binaries (feature `logs`): `RUST_LOG` when set,
//! else a default filter; text (coloured on a terminal) or JSON lines; no
//! target column.
//!
//! ```
//! // In a binary's `main`:
//! naming::logs::init("info", false);
//! tracing::info!("started");
//! ```

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber: `RUST_LOG`, else `default_filter`
/// (`"info"`, `"debug"`…); JSON lines when `json`. Panics when a global
/// subscriber is already installed.
pub fn init(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
