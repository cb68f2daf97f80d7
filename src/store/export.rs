//! `store export` / `store import`: one entry and its metadata as one `.tar.zst` stream,
//! the unit the binary cache moves.
//!
//! The tar holds, in this order: `dockerbuild-export.json` ([`ExportHeader`]), then the
//! entry as `entry` (a file or symlink) or `entry/` and its members in canonical
//! (bytewise) order. Every header has mtime 0, uid/gid 0 and mode 0644/0755, so the same
//! entry always exports to the same bytes.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::meta::{EntryMeta, FORMAT_VERSION, validate_name};
use super::stage::{TreeWriter, write_file};
use super::walk::EXEC_BITS;
use super::{Entry, Result, StoreError};
use crate::progress::Progress;
use crate::tree::Node;

/// Name of the first member of an export stream.
pub const EXPORT_HEADER_NAME: &str = "dockerbuild-export.json";
const MAX_HEADER: u64 = 1 << 20;
const ZSTD_LEVEL: i32 = 3;

/// The first member of an export stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: u32,
    pub meta: EntryMeta,
}

fn tar_err(action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    StoreError::io(action, Path::new("<export stream>"))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `entry` as an export stream, re-hashing it on the way: a corrupt entry is
/// refused rather than shipped.
pub fn write(entry: &Entry, out: &mut dyn Write) -> Result<()> {
    let enc = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(tar_err("start compression of"))?;
    let mut tar = tar::Builder::new(enc);
    let head = ExportHeader {
        format: FORMAT_VERSION,
        meta: entry.meta.clone(),
    };
    let json = serde_json::to_vec_pretty(&head).expect("header serializes");
    let mut h = header(tar::EntryType::Regular, 0o644, json.len() as u64);
    tar.append_data(&mut h, EXPORT_HEADER_NAME, json.as_slice())
        .map_err(tar_err("write"))?;
    let node = write_node(&mut tar, &entry.path, b"entry".to_vec())?;
    let actual = node.entry_digest(&entry.meta.name);
    if actual != entry.meta.digest {
        return Err(StoreError::Corrupt {
            digest: entry.meta.digest,
            reason: format!("its contents hash to {actual}; it was not exported"),
        });
    }
    let enc = tar.into_inner().map_err(tar_err("finish"))?;
    enc.finish().map_err(tar_err("finish compression of"))?;
    Ok(())
}

fn write_node<W: Write>(tar: &mut tar::Builder<W>, disk: &Path, name: Vec<u8>) -> Result<Node> {
    let meta = fs::symlink_metadata(disk).map_err(StoreError::io("stat", disk))?;
    let ft = meta.file_type();
    let tar_path = OsStr::from_bytes(&name);
    if ft.is_file() {
        let executable =
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & EXEC_BITS != 0;
        let mut h = header(
            tar::EntryType::Regular,
            if executable { 0o755 } else { 0o644 },
            meta.len(),
        );
        let mut f = fs::File::open(disk).map_err(StoreError::io("open", disk))?;
        let mut hashing = HashingReader {
            inner: &mut f,
            hasher: blake3::Hasher::new(),
            n: 0,
        };
        tar.append_data(&mut h, tar_path, &mut hashing)
            .map_err(StoreError::io("export", disk))?;
        if hashing.n != meta.len() {
            return Err(StoreError::ChangedWhileAdding {
                path: disk.to_owned(),
            });
        }
        Ok(Node::File {
            executable,
            size: meta.len(),
            contents: hashing.hasher.finalize().into(),
        })
    } else if ft.is_symlink() {
        let target = fs::read_link(disk).map_err(StoreError::io("read symlink", disk))?;
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, tar_path, &target)
            .map_err(StoreError::io("export", disk))?;
        Ok(Node::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        })
    } else if ft.is_dir() {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        let mut dir_name = name.clone();
        dir_name.push(b'/');
        tar.append_data(&mut h, OsStr::from_bytes(&dir_name), std::io::empty())
            .map_err(StoreError::io("export", disk))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for item in fs::read_dir(disk).map_err(StoreError::io("read directory", disk))? {
            let item = item.map_err(StoreError::io("read directory", disk))?;
            names.push(item.file_name().as_bytes().to_vec());
        }
        names.sort();
        let mut children = std::collections::BTreeMap::new();
        for child in names {
            let mut child_path = dir_name.clone();
            child_path.extend_from_slice(&child);
            let node = write_node(tar, &disk.join(OsStr::from_bytes(&child)), child_path)?;
            children.insert(child, node);
        }
        Ok(Node::Directory(children))
    } else {
        Err(StoreError::UnsupportedFileType {
            path: disk.to_owned(),
            what: "a special file",
        })
    }
}

struct HashingReader<'a, R> {
    inner: &'a mut R,
    hasher: blake3::Hasher,
    n: u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn malformed(reason: impl Into<String>) -> StoreError {
    StoreError::MalformedExport {
        reason: reason.into(),
    }
}

/// Reads an export stream into `dest` (which must not exist), checking every member, and
/// returns the claimed metadata with the tree actually written. The caller publishes it
/// only if the tree hashes to the claimed digest — checked here too.
pub fn read(
    input: &mut dyn Read,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<(EntryMeta, Node)> {
    let dec = zstd::Decoder::new(input).map_err(tar_err("start decompression of"))?;
    let mut archive = tar::Archive::new(dec);
    let mut members = archive.entries().map_err(tar_err("read"))?;

    let first = members
        .next()
        .ok_or_else(|| malformed("it is empty"))?
        .map_err(|e| malformed(format!("it is not a zstd-compressed tar ({e})")))?;
    if first.path_bytes().as_ref() != EXPORT_HEADER_NAME.as_bytes() {
        return Err(malformed(format!(
            "its first member must be `{EXPORT_HEADER_NAME}`"
        )));
    }
    let mut json = Vec::new();
    first
        .take(MAX_HEADER)
        .read_to_end(&mut json)
        .map_err(tar_err("read"))?;
    let head: ExportHeader = serde_json::from_slice(&json)
        .map_err(|e| malformed(format!("`{EXPORT_HEADER_NAME}` is invalid: {e}")))?;
    if head.format != FORMAT_VERSION {
        return Err(malformed(format!(
            "format {} is not supported (this dockerbuild reads {FORMAT_VERSION})",
            head.format
        )));
    }
    validate_name(&head.meta.name)?;
    progress.start("importing", Some(head.meta.size));

    let mut root: Option<Node> = None;
    let mut writer: Option<TreeWriter> = None;
    for member in members {
        let mut member = member.map_err(|e| malformed(format!("a member is unreadable ({e})")))?;
        let raw = member.path_bytes().into_owned();
        let kind = member.header().entry_type();
        let trimmed = raw.strip_suffix(b"/").unwrap_or(&raw);
        let mut parts = trimmed.split(|b| *b == b'/');
        if parts.next() != Some(b"entry".as_slice()) {
            return Err(malformed(format!(
                "member `{}` is outside `entry/`",
                String::from_utf8_lossy(&raw)
            )));
        }
        let rel: Vec<Vec<u8>> = parts.map(<[u8]>::to_vec).collect();
        if rel.is_empty() {
            if root.is_some() || writer.is_some() {
                return Err(malformed("`entry` appears twice"));
            }
            match kind {
                tar::EntryType::Regular => {
                    let exec = member.header().mode().unwrap_or(0) & EXEC_BITS != 0;
                    let node = write_file(dest, &mut member, exec)?;
                    progress.advance(node.content_size());
                    root = Some(node);
                }
                tar::EntryType::Symlink => {
                    let target = member
                        .link_name_bytes()
                        .ok_or_else(|| malformed("a symlink has no target"))?
                        .into_owned();
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), dest)
                        .map_err(StoreError::io("create symlink", dest))?;
                    root = Some(Node::Symlink { target });
                }
                tar::EntryType::Directory => writer = Some(TreeWriter::new(dest.to_owned())?),
                other => return Err(malformed(format!("`entry` has unsupported type {other:?}"))),
            }
            continue;
        }
        let w = writer
            .as_mut()
            .ok_or_else(|| malformed("members follow a root that is not a directory"))?;
        match kind {
            tar::EntryType::Regular => {
                let exec = member.header().mode().unwrap_or(0) & EXEC_BITS != 0;
                let n = w.add_file(&rel, exec, &mut member)?;
                progress.advance(n);
            }
            tar::EntryType::Directory => w.add_dir(&rel)?,
            tar::EntryType::Symlink => {
                let target = member
                    .link_name_bytes()
                    .ok_or_else(|| malformed("a symlink has no target"))?
                    .into_owned();
                w.add_symlink(&rel, &target)?;
            }
            other => {
                return Err(malformed(format!(
                    "member `{}` has unsupported type {other:?}",
                    String::from_utf8_lossy(&raw)
                )));
            }
        }
    }
    progress.finish();
    let node = match (root, writer) {
        (Some(n), None) => n,
        (None, Some(w)) => w.finish()?,
        _ => return Err(malformed("it has no `entry` member")),
    };
    let actual = node.entry_digest(&head.meta.name);
    if actual != head.meta.digest {
        return Err(StoreError::DigestMismatch {
            subject: format!("import of `{}`", head.meta.name),
            expected: head.meta.digest,
            actual,
        });
    }
    Ok((head.meta, node))
}
