//! An optional registry snapshot, so that a single-node deployment keeps its
//! registry across restarts (`[snapshot] path = "…"`).
//!
//! The file is written atomically (a temporary file, flushed, then renamed)
//! periodically and on graceful shutdown. A lone node loads it at start,
//! giving every instance a fresh lease: the clients that are still alive
//! renew it, the others expire as usual. A corrupt or truncated file is
//! reported and ignored.
//!
//! ```
//! use discovery_server::{registry::{Registry, RegistryParams}, snapshot};
//!
//! let dir = std::env::temp_dir().join(format!("snap-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("registry.json");
//! let reg = Registry::new(RegistryParams::default());
//! snapshot::save(&reg, &path, 1).unwrap();
//! assert_eq!(snapshot::load(&path).unwrap().len(), 0);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use naming::{DISCOVERY_APPID, Instance};
use serde::{Deserialize, Serialize};

use crate::registry::Registry;

/// Why a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a snapshot (corrupt, truncated, another format).
    #[error("snapshot {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    saved_at: i64,
    instances: Vec<Instance>,
}

/// Writes every instance to `path`, atomically.
pub fn save(registry: &Registry, path: &Path, now: i64) -> Result<usize, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let instances: Vec<Instance> = registry.all().into_values().flatten().collect();
    let n = instances.len();
    let body = serde_json::to_vec(&File {
        version: 1,
        saved_at: now,
        instances,
    })
    .expect("serializing to memory");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(n)
}

/// Reads a snapshot; the nodes' own `infra.discovery` records are left out
/// (a node registers itself afresh).
pub fn load(path: &Path) -> Result<Vec<Instance>, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.version != 1 {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("unknown version {}", file.version),
        });
    }
    Ok(file
        .instances
        .into_iter()
        .filter(|i| i.appid != DISCOVERY_APPID)
        .collect())
}

/// Loads `path` into `registry` with fresh leases; returns how many
/// instances were restored.
pub fn restore(registry: &Registry, path: &Path, now: i64) -> Result<usize, SnapshotError> {
    let list = load(path)?;
    let n = list.len();
    for mut ins in list {
        ins.renew_timestamp = now;
        registry.merge(ins, now);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegisterOptions, RegistryParams};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("r.json")
    }

    #[test]
    fn round_trip_gives_fresh_leases_and_skips_node_records() {
        let reg = Registry::new(RegistryParams::default());
        let ins = |appid: &str, host: &str| Instance {
            env: "dev".into(),
            appid: appid.into(),
            zone: "z".into(),
            hostname: host.into(),
            addrs: vec!["grpc://a:1".into(), "http://a:2".into()],
            ..Default::default()
        };
        reg.register(ins("a", "h1"), RegisterOptions::default(), 100);
        reg.register(
            ins(DISCOVERY_APPID, "node"),
            RegisterOptions::default(),
            100,
        );
        let path = tmp("rt");
        assert_eq!(save(&reg, &path, 200).unwrap(), 2);
        let back = Registry::new(RegistryParams::default());
        assert_eq!(restore(&back, &path, 5_000).unwrap(), 1);
        let got = back.all()["a"][0].clone();
        assert_eq!(got.renew_timestamp, 5_000);
        assert_eq!(got.dirty_timestamp, 100, "data version kept");
        assert_eq!(got.addrs.len(), 2);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors_not_panics() {
        let path = tmp("bad");
        std::fs::write(
            &path,
            b"{\"version\":1,\"saved_at\":1,\"instances\":[{\"appid\":",
        )
        .unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Corrupt { .. })));
        std::fs::write(&path, b"\x00\x01garbage").unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Corrupt { .. })));
        std::fs::write(&path, b"{\"version\":9,\"saved_at\":1,\"instances\":[]}").unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Corrupt { .. })));
        assert!(matches!(
            load(&path.with_extension("none")),
            Err(SnapshotError::Io { .. })
        ));
    }
}
