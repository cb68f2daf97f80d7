//! Walking a tree on disk into its canonical [`Node`], hashing every file once, in
//! parallel, and optionally copying it into a staging directory in the same pass.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Result, StoreError};
use crate::digest::Digest;
use crate::progress::Progress;
use crate::tree::Node;

/// Mode bits that make a file "executable" in the canonical form.
pub const EXEC_BITS: u32 = 0o111;
const BUF_LEN: usize = 1 << 20;

/// What the walk found, before file contents are read.
enum Plan {
    File { job: usize },
    Symlink { target: Vec<u8> },
    Dir(BTreeMap<Vec<u8>, Plan>),
}

struct FileJob {
    src: PathBuf,
    rel: PathBuf,
    size: u64,
    executable: bool,
}

struct Walk {
    jobs: Vec<FileJob>,
    total: u64,
}

impl Walk {
    fn visit(&mut self, src: &Path, rel: &Path, meta: &fs::Metadata) -> Result<Plan> {
        let ft = meta.file_type();
        if ft.is_file() {
            self.total += meta.len();
            self.jobs.push(FileJob {
                src: src.to_owned(),
                rel: rel.to_owned(),
                size: meta.len(),
                executable: meta.permissions().mode() & EXEC_BITS != 0,
            });
            Ok(Plan::File {
                job: self.jobs.len() - 1,
            })
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(StoreError::io("read symlink", src))?;
            Ok(Plan::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            })
        } else if ft.is_dir() {
            let mut children = BTreeMap::new();
            let rd = fs::read_dir(src).map_err(StoreError::io("read directory", src))?;
            for item in rd {
                let item = item.map_err(StoreError::io("read directory", src))?;
                let path = item.path();
                let meta = fs::symlink_metadata(&path).map_err(StoreError::io("stat", &path))?;
                let name = item.file_name().as_bytes().to_vec();
                let plan = self.visit(&path, &rel.join(item.file_name()), &meta)?;
                children.insert(name, plan);
            }
            Ok(Plan::Dir(children))
        } else {
            Err(StoreError::UnsupportedFileType {
                path: src.to_owned(),
                what: file_type_name(&ft),
            })
        }
    }
}

fn file_type_name(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device node"
    } else {
        "an unknown file type"
    }
}

/// Hashes the tree at `src` without copying it. A top-level symlink is hashed as a
/// symlink (as entries store it); callers who want its target resolve it first.
pub fn hash_path(src: &Path, progress: &dyn Progress) -> Result<Node> {
    walk(src, None, progress)
}

/// Resolves `src` if it is itself a symlink: `store add link` adds what the link names.
pub(crate) fn follow_top(src: &Path) -> Result<PathBuf> {
    let meta = fs::symlink_metadata(src).map_err(StoreError::io("stat", src))?;
    if meta.file_type().is_symlink() {
        fs::canonicalize(src).map_err(StoreError::io("resolve symlink", src))
    } else {
        Ok(src.to_owned())
    }
}

/// Copies the tree at `src` to `dest` (which must not exist), hashing as it copies,
/// leaving every file and every directory but `dest` itself read-only.
pub(crate) fn copy_path(src: &Path, dest: &Path, progress: &dyn Progress) -> Result<Node> {
    walk(src, Some(dest), progress)
}

fn walk(src: &Path, dest: Option<&Path>, progress: &dyn Progress) -> Result<Node> {
    let meta = fs::symlink_metadata(src).map_err(StoreError::io("stat", src))?;
    let mut w = Walk {
        jobs: Vec::new(),
        total: 0,
    };
    let plan = w.visit(src, Path::new(""), &meta)?;
    if let Some(dest) = dest {
        create_skeleton(&plan, dest)?;
    }
    progress.start(
        if dest.is_some() { "copying" } else { "hashing" },
        Some(w.total),
    );
    let digests: Vec<Digest> = w
        .jobs
        .par_iter()
        .map(|job| {
            let out = dest.map(|d| {
                if job.rel.as_os_str().is_empty() {
                    d.to_owned()
                } else {
                    d.join(&job.rel)
                }
            });
            let d = hash_file(&job.src, out.as_deref(), job.size, job.executable)?;
            progress.advance(job.size);
            Ok(d)
        })
        .collect::<Result<_>>()?;
    progress.finish();
    if let Some(dest) = dest {
        seal_dirs(&plan, dest, true)?;
    }
    Ok(to_node(plan, &w.jobs, &digests))
}

fn create_skeleton(plan: &Plan, dest: &Path) -> Result<()> {
    match plan {
        Plan::File { .. } => Ok(()),
        Plan::Symlink { target } => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), dest)
                .map_err(StoreError::io("create symlink", dest))
        }
        Plan::Dir(children) => {
            fs::create_dir(dest).map_err(StoreError::io("create directory", dest))?;
            for (name, child) in children {
                create_skeleton(child, &dest.join(std::ffi::OsStr::from_bytes(name)))?;
            }
            Ok(())
        }
    }
}

/// Makes directories read-only bottom-up; the top one stays writable when `skip_top` so
/// it can still be renamed into place across directories.
fn seal_dirs(plan: &Plan, dest: &Path, skip_top: bool) -> Result<()> {
    if let Plan::Dir(children) = plan {
        for (name, child) in children {
            seal_dirs(child, &dest.join(std::ffi::OsStr::from_bytes(name)), false)?;
        }
        if !skip_top {
            fs::set_permissions(dest, Permissions::from_mode(0o555))
                .map_err(StoreError::io("make read-only", dest))?;
        }
    }
    Ok(())
}

fn to_node(plan: Plan, jobs: &[FileJob], digests: &[Digest]) -> Node {
    match plan {
        Plan::File { job } => Node::File {
            executable: jobs[job].executable,
            size: jobs[job].size,
            contents: digests[job],
        },
        Plan::Symlink { target } => Node::Symlink { target },
        Plan::Dir(children) => Node::Directory(
            children
                .into_iter()
                .map(|(k, v)| (k, to_node(v, jobs, digests)))
                .collect(),
        ),
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; BUF_LEN]);
}

/// Reads `src` once, hashing it and (if `dest` is given) writing a read-only copy.
/// Fails if the file is not exactly `size` bytes long by the time it has been read.
pub(crate) fn hash_file(
    src: &Path,
    dest: Option<&Path>,
    size: u64,
    executable: bool,
) -> Result<Digest> {
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(src)
        .map_err(StoreError::io("open", src))?;
    let mut output = match dest {
        Some(d) => Some(create_file(d, executable)?),
        None => None,
    };
    let (digest, n) = BUF.with_borrow_mut(|buf| {
        stream(
            &mut input,
            src,
            output.as_mut().map(|o| (o, dest.unwrap())),
            buf,
        )
    })?;
    if n != size {
        return Err(StoreError::ChangedWhileAdding {
            path: src.to_owned(),
        });
    }
    if let (Some(out), Some(d)) = (output, dest) {
        seal_file(&out, d, executable)?;
    }
    Ok(digest)
}

/// Creates a new file for staging (never following or replacing anything).
pub(crate) fn create_file(path: &Path, _executable: bool) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(StoreError::io("create", path))
}

/// Makes a staged file read-only (keeping the executable bit canonical).
pub(crate) fn seal_file(file: &File, path: &Path, executable: bool) -> Result<()> {
    let mode = if executable { 0o555 } else { 0o444 };
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(StoreError::io("make read-only", path))
}

/// Copies `input` to `output` (if any) while hashing; returns the digest and byte count.
pub(crate) fn stream(
    input: &mut dyn Read,
    src: &Path,
    mut output: Option<(&mut File, &Path)>,
    buf: &mut [u8],
) -> Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match input.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io("read", src)(e)),
        };
        hasher.update(&buf[..n]);
        if let Some((out, dest)) = output.as_mut() {
            out.write_all(&buf[..n])
                .map_err(StoreError::io("write", dest))?;
        }
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// Deletes a tree the store made read-only, restoring write permission as it goes.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("stat", path)(e)),
    };
    if meta.is_dir() {
        fs::set_permissions(path, Permissions::from_mode(0o755))
            .map_err(StoreError::io("make writable", path))?;
        for item in fs::read_dir(path).map_err(StoreError::io("read directory", path))? {
            let item = item.map_err(StoreError::io("read directory", path))?;
            remove_tree(&item.path())?;
        }
        fs::remove_dir(path).map_err(StoreError::io("remove directory", path))
    } else {
        fs::remove_file(path).map_err(StoreError::io("remove", path))
    }
}
