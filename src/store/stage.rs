//! Staging: where an entry is written before it is published.
//!
//! Each staging directory `.tmp/<id>/` is guarded by `.tmp/<id>.lock`, flocked by the
//! process writing it for as long as it lives. The lock file appears already locked (see
//! [`lock::create_locked`]), so any `<id>.lock` a later run can lock belongs to a dead
//! process, and its directory is debris to delete.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::lock;
use super::walk::{create_file, remove_tree, seal_file, stream};
use super::{Result, StoreError};
use crate::tree::Node;

/// How old an unrenamed `*.lock.part` must be before cleanup deletes it.
const PART_GRACE: Duration = Duration::from_secs(600);

/// A staging directory owned by this process; deleted (with everything left in it) on drop.
pub(crate) struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Staging {
    /// Creates `.tmp/<id>/` under `tmp`, locked.
    pub fn new(tmp: &Path) -> Result<Self> {
        let id = format!("{}-{}", std::process::id(), hex::encode(rand_bytes()));
        let lock_path = tmp.join(format!("{id}.lock"));
        let file = lock::create_locked(&lock_path)?;
        let dir = tmp.join(&id);
        fs::create_dir(&dir).map_err(StoreError::io("create staging directory", &dir))?;
        Ok(Staging {
            dir,
            lock_path,
            _lock: file,
        })
    }

    /// Where the entry itself is staged.
    pub fn item(&self) -> PathBuf {
        self.dir.join("entry")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: whatever is left is collected by the next run's cleanup.
        let _ = remove_tree(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn rand_bytes() -> [u8; 8] {
    // Uniqueness, not secrecy: pid + time + a per-process counter, hashed.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// Deletes staging debris left by dead processes. Returns how many were removed.
pub(crate) fn clean(tmp: &Path) -> Result<usize> {
    let mut removed = 0;
    let rd = match fs::read_dir(tmp) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("read directory", tmp)(e)),
    };
    let mut names = Vec::new();
    for item in rd {
        let item = item.map_err(StoreError::io("read directory", tmp))?;
        names.push(item.file_name());
    }
    for name in &names {
        let path = tmp.join(name);
        let s = name.to_string_lossy();
        if let Some(id) = s.strip_suffix(".lock") {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if lock::try_exclusive(&file, &path)? {
                remove_tree(&tmp.join(id))?;
                let _ = fs::remove_file(&path);
                removed += 1;
            }
        } else if s.ends_with(".lock.part") {
            let old = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > PART_GRACE)
                .unwrap_or(false);
            if old {
                let _ = fs::remove_file(&path);
            }
        } else {
            // A directory whose lock file is gone: its owner died mid-cleanup.
            let lock_name = format!("{s}.lock");
            if !names.iter().any(|n| n.as_bytes() == lock_name.as_bytes()) {
                remove_tree(&path)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Builds an entry from a stream of members (an archive being unpacked, an export being
/// imported), hashing each file as it is written.
///
/// It keeps the tree it has written in memory, so a member can never be written through
/// a symlink or into a file an earlier member created: paths are checked against the
/// tree, not the filesystem.
pub struct TreeWriter {
    root: PathBuf,
    tree: Node,
    buf: Vec<u8>,
}

impl TreeWriter {
    /// Starts an empty directory tree at `root` (which must not exist).
    pub(crate) fn new(root: PathBuf) -> Result<Self> {
        fs::create_dir(&root).map_err(StoreError::io("create directory", &root))?;
        Ok(TreeWriter {
            root,
            tree: Node::empty_dir(),
            buf: vec![0; 1 << 20],
        })
    }

    /// Checks one path component from untrusted input.
    fn check_component(c: &[u8]) -> Result<()> {
        if c.is_empty() || c == b"." || c == b".." || c.contains(&b'/') || c.contains(&0) {
            return Err(StoreError::MalformedTree {
                reason: format!(
                    "path component `{}` is not allowed",
                    String::from_utf8_lossy(c)
                ),
            });
        }
        Ok(())
    }

    /// Walks to the directory that will hold `path`'s last component, creating missing
    /// parents, and returns it with the on-disk parent path.
    fn parent_of<'a>(
        tree: &'a mut Node,
        root: &Path,
        path: &[Vec<u8>],
    ) -> Result<(&'a mut BTreeMap<Vec<u8>, Node>, PathBuf)> {
        let mut node = tree;
        let mut disk = root.to_owned();
        for c in &path[..path.len() - 1] {
            Self::check_component(c)?;
            disk.push(OsStr::from_bytes(c));
            let Node::Directory(children) = node else {
                unreachable!()
            };
            if !children.contains_key(c) {
                fs::create_dir(&disk).map_err(StoreError::io("create directory", &disk))?;
                children.insert(c.clone(), Node::empty_dir());
            }
            node = children.get_mut(c).expect("inserted above");
            if !matches!(node, Node::Directory(_)) {
                return Err(StoreError::MalformedTree {
                    reason: format!(
                        "`{}` is used as a directory but is not one",
                        display_path(path)
                    ),
                });
            }
        }
        let Node::Directory(children) = node else {
            unreachable!()
        };
        let last = path.last().expect("non-empty");
        Self::check_component(last)?;
        if children.contains_key(last) {
            return Err(StoreError::MalformedTree {
                reason: format!("`{}` appears twice", display_path(path)),
            });
        }
        disk.push(OsStr::from_bytes(last));
        Ok((children, disk))
    }

    /// Adds a directory (and any missing parents). Adding an existing directory is allowed.
    pub fn add_dir(&mut self, path: &[Vec<u8>]) -> Result<()> {
        if path.is_empty() {
            return Ok(());
        }
        let mut node = &mut self.tree;
        let mut disk = self.root.clone();
        for c in path {
            Self::check_component(c)?;
            disk.push(OsStr::from_bytes(c));
            let Node::Directory(children) = node else {
                unreachable!()
            };
            if !children.contains_key(c) {
                fs::create_dir(&disk).map_err(StoreError::io("create directory", &disk))?;
                children.insert(c.clone(), Node::empty_dir());
            }
            node = children.get_mut(c).expect("inserted above");
            if !matches!(node, Node::Directory(_)) {
                return Err(StoreError::MalformedTree {
                    reason: format!("`{}` is not a directory", display_path(path)),
                });
            }
        }
        Ok(())
    }

    /// Adds a file with the bytes of `reader`; returns its size.
    pub fn add_file(
        &mut self,
        path: &[Vec<u8>],
        executable: bool,
        reader: &mut dyn Read,
    ) -> Result<u64> {
        if path.is_empty() {
            return Err(StoreError::MalformedTree {
                reason: "a file cannot be the root of a directory tree".into(),
            });
        }
        let (children, disk) = Self::parent_of(&mut self.tree, &self.root, path)?;
        let mut out = create_file(&disk, executable)?;
        let (digest, size) = stream(reader, &disk, Some((&mut out, &disk)), &mut self.buf)?;
        seal_file(&out, &disk, executable)?;
        children.insert(
            path.last().expect("non-empty").clone(),
            Node::File {
                executable,
                size,
                contents: digest,
            },
        );
        Ok(size)
    }

    /// Adds a symlink. Its target is data; it is never followed.
    pub fn add_symlink(&mut self, path: &[Vec<u8>], target: &[u8]) -> Result<()> {
        if path.is_empty() {
            return Err(StoreError::MalformedTree {
                reason: "a symlink cannot be the root of a directory tree".into(),
            });
        }
        let (children, disk) = Self::parent_of(&mut self.tree, &self.root, path)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &disk)
            .map_err(StoreError::io("create symlink", &disk))?;
        children.insert(
            path.last().expect("non-empty").clone(),
            Node::Symlink {
                target: target.to_vec(),
            },
        );
        Ok(())
    }

    /// Looks up a node already written (used to resolve hard links).
    pub fn get(&self, path: &[Vec<u8>]) -> Option<&Node> {
        let mut node = &self.tree;
        for c in path {
            let Node::Directory(children) = node else {
                return None;
            };
            node = children.get(c)?;
        }
        Some(node)
    }

    /// Where `path` was written on disk.
    pub fn disk_path(&self, path: &[Vec<u8>]) -> PathBuf {
        let mut p = self.root.clone();
        for c in path {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// Makes every directory but the root read-only and returns the tree.
    pub fn finish(self) -> Result<Node> {
        seal(&self.tree, &self.root, true)?;
        Ok(self.tree)
    }
}

fn seal(node: &Node, disk: &Path, top: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Node::Directory(children) = node {
        for (name, child) in children {
            seal(child, &disk.join(OsStr::from_bytes(name)), false)?;
        }
        if !top {
            fs::set_permissions(disk, fs::Permissions::from_mode(0o555))
                .map_err(StoreError::io("make read-only", disk))?;
        }
    }
    Ok(())
}

/// Writes a single-file entry from a stream at `dest`; returns its node.
pub(crate) fn write_file(dest: &Path, reader: &mut dyn Read, executable: bool) -> Result<Node> {
    let mut out = create_file(dest, executable)?;
    let mut buf = vec![0; 1 << 20];
    let (digest, size) = stream(reader, dest, Some((&mut out, dest)), &mut buf)?;
    seal_file(&out, dest, executable)?;
    Ok(Node::File {
        executable,
        size,
        contents: digest,
    })
}

fn display_path(path: &[Vec<u8>]) -> String {
    path.iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// A directory tree being built in the staging area (unpacked archives, build outputs).
/// Dropping it without [`crate::store::LocalStore::commit_tree`] deletes it.
pub struct StagedTree {
    pub(crate) staging: Staging,
    /// Adds members; paths are checked against what was written so far.
    pub writer: TreeWriter,
}

/// One file being written in the staging area, hashed as it is written (downloads).
/// Dropping it without [`crate::store::LocalStore::commit_file`] deletes it.
pub struct StagedFile {
    pub(crate) staging: Staging,
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) hasher: blake3::Hasher,
    pub(crate) written: u64,
}

impl StagedFile {
    /// Bytes written so far (where a resumed download continues).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Discards everything written (a server that cannot resume sends it all again).
    pub fn reset(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.set_len(0)?;
        self.file.seek(std::io::SeekFrom::Start(0))?;
        self.hasher.reset();
        self.written = 0;
        Ok(())
    }

    /// Where the bytes are being written (to read back a small file, e.g. an index).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::io::Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
