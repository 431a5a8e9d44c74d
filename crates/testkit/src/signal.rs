//! Signals to child processes by their `kill -s` names, sent with the
//! `kill(2)` system call (through `rustix`) rather than by spawning the
//! `kill` command.
//!
//! ```
//! let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
//! testkit::signal::send(child.id(), "TERM").unwrap();
//! let status = child.wait().unwrap();
//! assert!(!status.success());
//! assert!(testkit::signal::send(child.id(), "NOPE").is_err());
//! ```

use std::io;

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// The signal named `name`: `TERM`, `INT`, `KILL`, `HUP`, `QUIT`, `USR1`,
/// `USR2`, `STOP` or `CONT`, with or without a `SIG` prefix.
pub fn by_name(name: &str) -> io::Result<Signal> {
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    Ok(match bare {
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "KILL" => Signal::KILL,
        "HUP" => Signal::HUP,
        "QUIT" => Signal::QUIT,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown signal {name:?}"),
            ));
        }
    })
}

/// Sends signal `name` ([`by_name`]) to process `pid`.
pub fn send(pid: u32, name: &str) -> io::Result<()> {
    kill_process(pid_of(pid)?, by_name(name)?).map_err(io::Error::from)
}

/// Sends signal `name` ([`by_name`]) to every process of group `pgid`
/// (`kill -s NAME -- -PGID`).
pub fn send_group(pgid: u32, name: &str) -> io::Result<()> {
    kill_process_group(pid_of(pgid)?, by_name(name)?).map_err(io::Error::from)
}

fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))
}
