//! Garbage collection: delete every entry that no root reaches.
//!
//! Roots are pins (`store pin`) and files registered with `store add-root` (lockfiles):
//! every entry whose 64-hex-digit digest appears anywhere in a registered file is a
//! root, so any format that records digests (lockfiles, build records) roots what it
//! names without the store having to parse it. What those lockfiles produced is rooted
//! too: an `output` or `toolchain` entry all of whose references are pinned by registered
//! files. References in metadata are followed.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::local::LocalStore;
use super::{Kind, Result, Store, StoreError};
use crate::digest::Digest;

/// A file registered as a gc root.
#[derive(Debug, Clone, Serialize)]
pub struct RootFile {
    pub path: PathBuf,
    /// False when the file no longer exists; it then roots nothing.
    pub exists: bool,
}

/// What a gc run deleted (or would delete, with `dry_run`).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub deleted: Vec<(Digest, String)>,
    pub freed_bytes: u64,
    pub kept: usize,
    pub missing_roots: Vec<PathBuf>,
}

impl LocalStore {
    fn pin_path(&self, digest: &Digest) -> PathBuf {
        self.entries_dir().join(".pins").join(digest.to_hex())
    }

    fn root_record(&self, file: &Path) -> PathBuf {
        let key = Digest::of(file.as_os_str().as_encoded_bytes());
        self.entries_dir().join(".roots").join(key.to_hex())
    }

    /// Keeps an entry alive across gc.
    pub fn pin(&self, digest: &Digest) -> Result<()> {
        let p = self.pin_path(digest);
        fs::write(&p, b"").map_err(StoreError::io("write pin", &p))
    }

    /// Returns whether the entry was pinned.
    pub fn unpin(&self, digest: &Digest) -> Result<bool> {
        let p = self.pin_path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove pin", &p)(e)),
        }
    }

    pub fn pins(&self) -> Result<Vec<Digest>> {
        let dir = self.entries_dir().join(".pins");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::io("read directory", &dir))? {
            let item = item.map_err(StoreError::io("read directory", &dir))?;
            if let Ok(d) = Digest::parse(&item.file_name().to_string_lossy()) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Registers `file` (made absolute) as a gc root.
    pub fn add_root(&self, file: &Path) -> Result<PathBuf> {
        let abs = std::path::absolute(file).map_err(StoreError::io("resolve", file))?;
        if !abs.is_file() {
            return Err(StoreError::Io {
                action: "register as a gc root",
                path: abs,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a file"),
            });
        }
        let rec = self.root_record(&abs);
        fs::write(&rec, abs.as_os_str().as_encoded_bytes())
            .map_err(StoreError::io("write root record", &rec))?;
        Ok(abs)
    }

    /// Unregisters a root file; returns whether it was registered.
    pub fn remove_root(&self, file: &Path) -> Result<bool> {
        let abs = std::path::absolute(file).map_err(StoreError::io("resolve", file))?;
        let rec = self.root_record(&abs);
        match fs::remove_file(&rec) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove root record", &rec)(e)),
        }
    }

    pub fn root_files(&self) -> Result<Vec<RootFile>> {
        let dir = self.entries_dir().join(".roots");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::io("read directory", &dir))? {
            let item = item.map_err(StoreError::io("read directory", &dir))?;
            let raw =
                fs::read(item.path()).map_err(StoreError::io("read root record", &item.path()))?;
            let path = PathBuf::from(String::from_utf8_lossy(&raw).into_owned());
            out.push(RootFile {
                exists: path.is_file(),
                path,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Deletes every entry not reachable from a root. Needs a store opened with
    /// [`LocalStore::open_exclusive`], so no other process is adding meanwhile.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run,
            ..Default::default()
        };
        let all = self.all_digests()?;
        let present: HashMap<Digest, PathBuf> = all.iter().cloned().collect();
        let mut locked: Vec<Digest> = Vec::new();
        for rf in self.root_files()? {
            if !rf.exists {
                report.missing_roots.push(rf.path);
                continue;
            }
            let text = fs::read(&rf.path).map_err(StoreError::io("read gc root", &rf.path))?;
            locked.extend(
                digests_in(&text)
                    .into_iter()
                    .filter(|d| present.contains_key(d)),
            );
        }
        let locked_set: BTreeSet<Digest> = locked.iter().copied().collect();
        // What registered lockfiles produced is rooted with them: a build output or a
        // toolchain image whose inputs are all pinned by registered lockfiles.
        let mut roots: Vec<Digest> = self.pins()?;
        roots.extend(locked);
        for (digest, _) in &all {
            if let Ok(meta) = self.read_meta(digest)
                && matches!(meta.kind, Kind::Output | Kind::Toolchain)
                && !meta.references.is_empty()
                && meta.references.iter().all(|r| locked_set.contains(r))
            {
                roots.push(*digest);
            }
        }
        let mut live = BTreeSet::new();
        while let Some(d) = roots.pop() {
            if !present.contains_key(&d) || !live.insert(d) {
                continue;
            }
            if let Ok(meta) = self.read_meta(&d) {
                roots.extend(meta.references);
            }
        }
        for (digest, path) in &all {
            if live.contains(digest) {
                report.kept += 1;
                continue;
            }
            let (name, size) = match self.read_meta(digest) {
                Ok(m) => (m.name, m.size),
                Err(_) => (
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    0,
                ),
            };
            if !dry_run {
                self.remove(digest)?;
            }
            report.freed_bytes += size;
            report.deleted.push((*digest, name));
        }
        if !dry_run {
            self.remove_orphan_meta()?;
        }
        Ok(report)
    }
}

/// Every run of exactly 64 hex digits in `text`, as digests.
pub fn digests_in(text: &[u8]) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_hexdigit() {
            let start = i;
            while i < text.len() && text[i].is_ascii_hexdigit() {
                i += 1;
            }
            if i - start == 64
                && let Ok(s) = std::str::from_utf8(&text[start..i])
                && let Ok(d) = Digest::parse(&s.to_ascii_lowercase())
            {
                out.push(d);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_digests_in_text() {
        let d = Digest::of(b"x");
        let text = format!("a = \"blake3:{}\"\nb = \"{}0\"\n", d.to_hex(), d.to_hex());
        assert_eq!(digests_in(text.as_bytes()), vec![d]);
    }
}
