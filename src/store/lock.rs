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

/// Creates `path` already locked exclusively: no other process can ever see it unlocked
/// while its creator lives, so a lockable one always belongs to a dead process.
///
/// The file is made anonymous (`O_TMPFILE`), locked, then linked into place. Where the
/// filesystem has no `O_TMPFILE`, it is locked under `<path>.part` and renamed; a process
/// killed in between leaves that `.part` for cleanup's grace period.
pub fn create_locked(path: &Path) -> Result<File> {
    use rustix::fs::{AtFlags, CWD, Mode as Perm, OFlags, linkat, openat};
    let dir = path.parent().unwrap_or(Path::new("."));
    let anon = openat(
        CWD,
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Perm::from_raw_mode(0o644),
    );
    match anon {
        Ok(fd) => {
            let file = File::from(fd);
            flock(&file, FlockOperation::LockExclusive).map_err(|e| StoreError::Io {
                action: "lock",
                path: path.to_owned(),
                source: e.into(),
            })?;
            // Linking an anonymous file by its /proc name needs no privilege, unlike
            // AT_EMPTY_PATH.
            use std::os::fd::AsRawFd;
            let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
            linkat(CWD, proc.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW).map_err(|e| {
                StoreError::Io {
                    action: "create lock file",
                    path: path.to_owned(),
                    source: e.into(),
                }
            })?;
            Ok(file)
        }
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::NOENT)
            if dir.is_dir() =>
        {
            let mut part = path.as_os_str().to_owned();
            part.push(".part");
            let part = std::path::PathBuf::from(part);
            let file = lock(&part, Mode::Exclusive)?;
            std::fs::rename(&part, path).map_err(StoreError::io("rename", &part))?;
            Ok(file)
        }
        Err(e) => Err(StoreError::Io {
            action: "create lock file",
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
