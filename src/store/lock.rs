//! Advisory file locks (flock). The kernel drops them when their holder dies, which is
//! what lets a later run tell abandoned staging directories from live ones.

use std::fs::File;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use super::{Result, StoreError};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Opens (creating) `path` and locks it, waiting for other holders.
pub fn lock(path: &Path, mode: Mode) -> Result<File> {
    let file = open(path)?;
    let op = match mode {
        Mode::Shared => FlockOperation::LockShared,
        Mode::Exclusive => FlockOperation::LockExclusive,
    };
    flock(&file, op).map_err(|e| StoreError::Io {
        action: "lock",
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(file)
}

/// Locks an open file exclusively without waiting; `Ok(false)` when someone holds it.
pub fn try_exclusive(file: &File, path: &Path) -> Result<bool> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(StoreError::Io {
            action: "lock",
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

fn open(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StoreError::io("open lock file", path))
}
