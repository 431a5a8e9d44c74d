//! The binaries' shutdown signals (feature `signals`).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! // Handlers first, so that a signal during start-up is not lost.
//! let stop = naming::signals::shutdown()?;
//! // … start serving …
//! let name = stop.await;
//! println!("{name}: stopping");
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGTERM and SIGINT handlers now; the returned future
/// resolves with the first signal's name (`"SIGTERM"` or `"SIGINT"`).
///
/// # Errors
/// When a handler cannot be installed.
pub fn shutdown() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
