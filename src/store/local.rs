//! The store on this machine's filesystem (layout drawn in `store/mod.rs`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, renameat_with};
use tracing::{debug, instrument};

use super::lock::{self, Mode};
use super::meta::{EntryMeta, FORMAT_VERSION, NewEntry, validate_name};
use super::stage::{self, StagedFile, StagedTree, Staging, TreeWriter};
use super::walk::{copy_path, create_file, follow_top, hash_path, remove_tree, seal_file};
use super::{Entry, Result, Store, StoreError, Verification, export};
use crate::digest::Digest;
use crate::progress::Progress;
use crate::tree::Node;

/// A store in a local directory. Holds the store lock (shared, or exclusive for gc) for
/// as long as it is open.
pub struct LocalStore {
    root: PathBuf,
    dir: PathBuf,
    _lock: File,
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root` for normal work, and removes
    /// staging debris left by dead processes.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, Mode::Shared)
    }

    /// Opens the store with an exclusive lock, waiting for all other users (gc does this).
    pub fn open_exclusive(root: &Path) -> Result<Self> {
        Self::open_with(root, Mode::Exclusive)
    }

    fn open_with(root: &Path, mode: Mode) -> Result<Self> {
        check_no_newer_format(root)?;
        let dir = root.join(format!("v{FORMAT_VERSION}"));
        for sub in [".tmp", ".meta", ".pins", ".roots", ".keys", ".uploads"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io("create store directory", &p))?;
        }
        // Absolute, because entry paths are handed to Docker as bind mounts.
        let dir =
            fs::canonicalize(&dir).map_err(StoreError::io("resolve store directory", &dir))?;
        let lock = lock::lock(&dir.join(".lock"), mode)?;
        let store = LocalStore {
            root: root.to_owned(),
            dir,
            _lock: lock,
        };
        let cleaned = stage::clean(&store.tmp_dir())?;
        if cleaned > 0 {
            debug!(cleaned, "removed staging debris from interrupted runs");
        }
        Ok(store)
    }

    /// The directory the user named (`--store`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<store>/v1`, where entries live.
    pub fn entries_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.dir.join(".tmp")
    }

    pub(crate) fn meta_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(".meta")
            .join(format!("{}.json", digest.to_hex()))
    }

    /// Where an entry with this address and name lives (whether or not it exists).
    pub fn entry_path(&self, digest: &Digest, name: &str) -> PathBuf {
        self.dir.join(format!("{}-{name}", digest.to_hex()))
    }

    pub(crate) fn staging(&self) -> Result<Staging> {
        Staging::new(&self.tmp_dir())
    }

    /// Finds the on-disk entry for a digest by scanning names (`<hex>-<name>`).
    fn locate(&self, digest: &Digest) -> Result<Option<PathBuf>> {
        // The metadata names the entry; fall back to a scan if it is missing.
        if let Ok(meta) = self.read_meta(digest) {
            let p = self.entry_path(digest, &meta.name);
            if fs::symlink_metadata(&p).is_ok() {
                return Ok(Some(p));
            }
        }
        let prefix = format!("{}-", digest.to_hex());
        for (name, path) in self.raw_entries()? {
            if name.starts_with(&prefix) {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    /// Every `<hex>-<name>` in the entries directory, as (file name, path).
    fn raw_entries(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(StoreError::io("read directory", &self.dir))? {
            let item = item.map_err(StoreError::io("read directory", &self.dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if parse_entry_name(&name).is_some() {
                out.push((name, item.path()));
            }
        }
        Ok(out)
    }

    pub(crate) fn read_meta(&self, digest: &Digest) -> Result<EntryMeta> {
        let path = self.meta_path(digest);
        let bytes = fs::read(&path).map_err(StoreError::io("read metadata", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::ParseMeta { path, source })
    }

    /// Publishes a staged entry: metadata first (invisible on its own), one sync of the
    /// filesystem, then one rename makes the entry visible. Losing a race to another
    /// process publishing the same entry is success.
    #[instrument(skip_all, fields(name = %new.name))]
    pub(crate) fn publish(&self, staging: Staging, node: Node, new: &NewEntry) -> Result<Entry> {
        let digest = node.entry_digest(&new.name);
        let final_path = self.entry_path(&digest, &new.name);
        if let Some(existing) = self.get(&digest)? {
            debug!(%digest, "entry already present");
            return Ok(existing);
        }
        let mut references = new.references.clone();
        references.sort();
        references.dedup();
        let meta = EntryMeta {
            format: FORMAT_VERSION,
            digest,
            name: new.name.clone(),
            kind: new.kind,
            version: new.version.clone(),
            origin: new.origin.clone(),
            references,
            size: node.content_size(),
            nodes: node.count(),
            build: new.build.clone(),
        };
        let meta_tmp = staging.dir().join("meta.json");
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        fs::write(&meta_tmp, json).map_err(StoreError::io("write metadata", &meta_tmp))?;
        sync_filesystem(staging.dir())?;
        let meta_path = self.meta_path(&digest);
        fs::rename(&meta_tmp, &meta_path)
            .map_err(StoreError::io("publish metadata", &meta_path))?;
        // The metadata must be durable before the entry can be seen.
        fsync_dir(&self.dir.join(".meta"))?;
        let item = staging.item();
        match renameat_with(CWD, &item, CWD, &final_path, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                debug!(%digest, "another process published the entry first");
                return self.get(&digest)?.ok_or(StoreError::NotFound {
                    query: digest.to_string(),
                });
            }
            Err(e) => {
                return Err(StoreError::Io {
                    action: "publish entry",
                    path: final_path,
                    source: e.into(),
                });
            }
        }
        fsync_dir(&self.dir)?;
        if matches!(node, Node::Directory(_)) {
            fs::set_permissions(&final_path, fs::Permissions::from_mode(0o555))
                .map_err(StoreError::io("make read-only", &final_path))?;
        }
        debug!(%digest, path = %final_path.display(), "published");
        Ok(Entry {
            meta,
            path: final_path,
        })
    }

    /// Records that the build (or image generation) with `key` produced the entry
    /// `digest`. Several keys may produce the same contents; the entry's own metadata
    /// keeps the first one, this index keeps them all.
    pub fn bind_key(&self, key: &Digest, digest: &Digest) -> Result<()> {
        let dir = self.dir.join(".keys");
        let path = dir.join(key.to_hex());
        let tmp = self.tmp_dir().join(format!("key-{}", key.to_hex()));
        fs::write(&tmp, digest.to_string()).map_err(StoreError::io("write key record", &tmp))?;
        fs::rename(&tmp, &path).map_err(StoreError::io("publish key record", &path))
    }

    /// Notes that binary cache `cache` (its URL) holds the claim for `key`.
    pub fn record_upload(&self, cache: &str, key: &Digest) -> Result<()> {
        let dir = self.uploads_dir(cache);
        fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        let path = dir.join(key.to_hex());
        File::create(&path).map_err(StoreError::io("write upload record", &path))?;
        Ok(())
    }

    /// Every key this store has an entry for (`.keys/`) that binary cache `cache` is not
    /// recorded as holding: what was built or fetched here but never uploaded there.
    pub fn never_uploaded(&self, cache: &str) -> Result<Vec<(Digest, Entry)>> {
        let dir = self.dir.join(".keys");
        let uploaded = self.uploads_dir(cache);
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::io("read directory", &dir))? {
            let item = item.map_err(StoreError::io("read directory", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if uploaded.join(&name).exists() {
                continue;
            }
            let Ok(key) = format!("blake3:{name}").parse::<Digest>() else {
                continue;
            };
            if let Some(e) = self.resolve_key(&key)? {
                out.push((key, e));
            }
        }
        out.sort_by(|a, b| a.1.meta.name.cmp(&b.1.meta.name));
        Ok(out)
    }

    /// Whether binary cache `cache` is recorded as holding the claim for `key`.
    pub fn is_uploaded(&self, cache: &str, key: &Digest) -> bool {
        self.uploads_dir(cache).join(key.to_hex()).exists()
    }

    fn uploads_dir(&self, cache: &str) -> PathBuf {
        self.dir
            .join(".uploads")
            .join(Digest::of(cache.as_bytes()).to_hex())
    }

    /// Every key recorded as having produced entry `digest`.
    pub fn keys_for(&self, digest: &Digest) -> Result<Vec<Digest>> {
        let dir = self.dir.join(".keys");
        let want = digest.to_string();
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::io("read directory", &dir))? {
            let item = item.map_err(StoreError::io("read directory", &dir))?;
            let Ok(text) = fs::read_to_string(item.path()) else {
                continue;
            };
            if text.trim() == want
                && let Ok(k) = format!("blake3:{}", item.file_name().to_string_lossy()).parse()
            {
                out.push(k);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Waits until no other process is producing `key`, and holds that claim until the
    /// returned file is dropped, so two processes on one store never build the same thing
    /// at once (the second finds the first's output with [`LocalStore::resolve_key`]).
    pub fn lock_key(&self, key: &Digest) -> Result<File> {
        let path = self.tmp_dir().join(format!("build-{}.lock", key.to_hex()));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("create build lock", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| StoreError::io("lock", &path)(e.into()))?;
        Ok(file)
    }

    /// The entry a key produced, if it is still in the store.
    pub fn resolve_key(&self, key: &Digest) -> Result<Option<Entry>> {
        let path = self.dir.join(".keys").join(key.to_hex());
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read key record", &path)(e)),
        };
        match Digest::parse(text.trim()) {
            Ok(d) => self.get(&d),
            Err(_) => Ok(None),
        }
    }

    /// Starts a directory tree in the staging area.
    /// Imports an export stream that must be entry `expected` (from a cache): anything
    /// else, even a valid entry, is refused before it is published.
    pub fn import_expecting(
        &self,
        input: &mut dyn Read,
        expected: &Digest,
        progress: &dyn Progress,
    ) -> Result<Entry> {
        self.import_checked(input, Some(expected), progress)
    }

    fn import_checked(
        &self,
        input: &mut dyn Read,
        expected: Option<&Digest>,
        progress: &dyn Progress,
    ) -> Result<Entry> {
        let staging = self.staging()?;
        let (meta, node) = export::read(input, &staging.item(), progress)?;
        if let Some(expected) = expected
            && meta.digest != *expected
        {
            return Err(StoreError::DigestMismatch {
                subject: format!("import of `{}`", meta.name),
                expected: *expected,
                actual: meta.digest,
            });
        }
        let new = NewEntry {
            name: meta.name.clone(),
            kind: meta.kind,
            version: meta.version.clone(),
            origin: meta.origin.clone(),
            references: meta.references.clone(),
            build: meta.build.clone(),
        };
        self.publish(staging, node, &new)
    }

    pub fn stage_tree(&self) -> Result<StagedTree> {
        let staging = self.staging()?;
        let writer = TreeWriter::new(staging.item())?;
        Ok(StagedTree { staging, writer })
    }

    /// Publishes a tree built with [`LocalStore::stage_tree`].
    pub fn commit_tree(&self, tree: StagedTree, new: &NewEntry) -> Result<Entry> {
        validate_name(&new.name)?;
        let node = tree.writer.finish()?;
        self.publish(tree.staging, node, new)
    }

    /// Starts a single file in the staging area.
    pub fn stage_file(&self) -> Result<StagedFile> {
        let staging = self.staging()?;
        let path = staging.item();
        let file = create_file(&path, false)?;
        Ok(StagedFile {
            staging,
            file,
            path,
            hasher: blake3::Hasher::new(),
            written: 0,
        })
    }

    /// Publishes a file written with [`LocalStore::stage_file`]; with `expected`, only if
    /// it has that address.
    pub fn commit_file(
        &self,
        file: StagedFile,
        new: &NewEntry,
        executable: bool,
        expected: Option<Digest>,
    ) -> Result<Entry> {
        validate_name(&new.name)?;
        seal_file(&file.file, &file.path, executable)?;
        let node = Node::File {
            executable,
            size: file.written,
            contents: file.hasher.finalize().into(),
        };
        let actual = node.entry_digest(&new.name);
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(StoreError::DigestMismatch {
                subject: format!("entry `{}`", new.name),
                expected,
                actual,
            });
        }
        drop(file.file);
        self.publish(file.staging, node, new)
    }

    /// Re-hashes an entry's path and compares it with its address and metadata.
    fn check(&self, digest: &Digest, path: &Path, progress: &dyn Progress) -> Result<Verification> {
        let fname = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((_, name)) = parse_entry_name(&fname) else {
            return Ok(corrupt("its file name is not `<digest>-<name>`"));
        };
        let node = match hash_path(path, progress) {
            Ok(n) => n,
            Err(StoreError::UnsupportedFileType { path, what }) => {
                return Ok(corrupt(&format!("`{}` is {what}", path.display())));
            }
            Err(e) => return Err(e),
        };
        let actual = node.entry_digest(name);
        if actual != *digest {
            return Ok(corrupt(&format!("its contents hash to {actual}")));
        }
        match self.read_meta(digest) {
            Ok(m) if m.digest == *digest && m.name == name && m.size == node.content_size() => {
                Ok(Verification::Ok)
            }
            Ok(_) => Ok(corrupt("its metadata does not describe it")),
            Err(e) => Ok(corrupt(&format!("its metadata is unreadable ({e})"))),
        }
    }

    /// Every on-disk entry by digest, including those whose metadata is broken, for
    /// verification and gc.
    pub(crate) fn all_digests(&self) -> Result<Vec<(Digest, PathBuf)>> {
        let mut out = Vec::new();
        for (name, path) in self.raw_entries()? {
            if let Some((d, _)) = parse_entry_name(&name) {
                out.push((d, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-hashes every entry; returns the corrupt ones with their reasons.
    pub fn verify_all(&self, progress: &dyn Progress) -> Result<Vec<(Digest, PathBuf, String)>> {
        let mut bad = Vec::new();
        for (digest, path) in self.all_digests()? {
            if let Verification::Corrupt { reason } = self.check(&digest, &path, progress)? {
                bad.push((digest, path, reason));
            }
        }
        Ok(bad)
    }

    /// Removes metadata files and key records whose entry is gone.
    pub(crate) fn remove_orphan_meta(&self) -> Result<usize> {
        let present: std::collections::HashSet<Digest> =
            self.all_digests()?.into_iter().map(|(d, _)| d).collect();
        let keys = self.dir.join(".keys");
        for item in fs::read_dir(&keys).map_err(StoreError::io("read directory", &keys))? {
            let item = item.map_err(StoreError::io("read directory", &keys))?;
            let live = fs::read_to_string(item.path())
                .ok()
                .and_then(|t| Digest::parse(t.trim()).ok())
                .is_some_and(|d| present.contains(&d));
            if !live {
                let _ = fs::remove_file(item.path());
            }
        }
        let meta_dir = self.dir.join(".meta");
        let mut n = 0;
        for item in fs::read_dir(&meta_dir).map_err(StoreError::io("read directory", &meta_dir))? {
            let item = item.map_err(StoreError::io("read directory", &meta_dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let keep = name
                .strip_suffix(".json")
                .and_then(|h| Digest::parse(h).ok())
                .is_some_and(|d| present.contains(&d));
            if !keep {
                let _ = fs::remove_file(item.path());
                n += 1;
            }
        }
        Ok(n)
    }
}

fn corrupt(reason: &str) -> Verification {
    Verification::Corrupt {
        reason: reason.to_owned(),
    }
}

/// Splits `<64 hex>-<name>` into its digest and name.
pub(crate) fn parse_entry_name(s: &str) -> Option<(Digest, &str)> {
    if s.len() < 66 || s.as_bytes()[64] != b'-' {
        return None;
    }
    let d = Digest::parse(&s[..64]).ok()?;
    Some((d, &s[65..]))
}

/// Refuses a store written by a newer dockerbuild (a `vN` directory with N above ours).
fn check_no_newer_format(root: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(root) else {
        return Ok(());
    };
    for item in rd.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix('v').and_then(|n| n.parse::<u32>().ok())
            && n > FORMAT_VERSION
            && !root.join(format!("v{FORMAT_VERSION}")).exists()
        {
            return Err(StoreError::UnsupportedFormat {
                path: root.to_owned(),
                found: name,
            });
        }
    }
    Ok(())
}

/// One `syncfs(2)` for everything staged, instead of an fsync per file.
fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(StoreError::io("open", path))?;
    rustix::fs::syncfs(&f).map_err(|e| StoreError::Io {
        action: "sync filesystem of",
        path: path.to_owned(),
        source: e.into(),
    })
}

fn fsync_dir(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(StoreError::io("open", path))?;
    f.sync_all().map_err(StoreError::io("sync directory", path))
}

impl Store for LocalStore {
    #[instrument(skip_all, fields(src = %src.display(), name = %new.name))]
    fn add_path(&self, src: &Path, new: &NewEntry, progress: &dyn Progress) -> Result<Entry> {
        validate_name(&new.name)?;
        let staging = self.staging()?;
        let node = copy_path(&follow_top(src)?, &staging.item(), progress)?;
        self.publish(staging, node, new)
    }

    fn add_reader(
        &self,
        reader: &mut dyn Read,
        executable: bool,
        new: &NewEntry,
        expected: Option<Digest>,
    ) -> Result<Entry> {
        validate_name(&new.name)?;
        let mut file = self.stage_file()?;
        let path = file.path().to_owned();
        std::io::copy(reader, &mut file).map_err(StoreError::io("write", &path))?;
        self.commit_file(file, new, executable, expected)
    }

    fn get(&self, digest: &Digest) -> Result<Option<Entry>> {
        let meta = match self.read_meta(digest) {
            Ok(m) => m,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let path = self.entry_path(digest, &meta.name);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(Some(Entry { meta, path })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("stat", &path)(e)),
        }
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (digest, path) in self.all_digests()? {
            // An entry with unreadable metadata is listed by `store verify`, not here.
            if let Ok(meta) = self.read_meta(&digest) {
                out.push(Entry { meta, path });
            }
        }
        out.sort_by(|a, b| (&a.meta.name, a.meta.digest).cmp(&(&b.meta.name, b.meta.digest)));
        Ok(out)
    }

    fn verify(&self, digest: &Digest, progress: &dyn Progress) -> Result<Verification> {
        match self.locate(digest)? {
            Some(path) => self.check(digest, &path, progress),
            None => Err(StoreError::NotFound {
                query: digest.to_string(),
            }),
        }
    }

    fn remove(&self, digest: &Digest) -> Result<bool> {
        let Some(path) = self.locate(digest)? else {
            return Ok(false);
        };
        // Move it out of sight first, so an interrupted delete leaves no partial entry.
        let staging = self.staging()?;
        let trash = staging.item();
        rustix::fs::renameat_with(CWD, &path, CWD, &trash, RenameFlags::empty()).map_err(|e| {
            StoreError::Io {
                action: "remove entry",
                path: path.clone(),
                source: e.into(),
            }
        })?;
        let _ = fs::remove_file(self.meta_path(digest));
        remove_tree(&trash)?;
        Ok(true)
    }

    fn export(&self, digest: &Digest, out: &mut dyn Write) -> Result<()> {
        let entry = self.get(digest)?.ok_or_else(|| StoreError::NotFound {
            query: digest.to_string(),
        })?;
        export::write(&entry, out)
    }

    fn import(&self, input: &mut dyn Read, progress: &dyn Progress) -> Result<Entry> {
        self.import_checked(input, None, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_keys_can_produce_the_same_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("s")).unwrap();
        let (k1, k2) = (Digest::of(b"key one"), Digest::of(b"key two"));
        let new = NewEntry::new("out", crate::store::Kind::Output);
        let e1 = store
            .add_reader(&mut &b"same"[..], false, &new, None)
            .unwrap();
        store.bind_key(&k1, &e1.meta.digest).unwrap();
        let e2 = store
            .add_reader(&mut &b"same"[..], false, &new, None)
            .unwrap();
        store.bind_key(&k2, &e2.meta.digest).unwrap();
        assert_eq!(store.resolve_key(&k1).unwrap(), Some(e1.clone()));
        assert_eq!(store.resolve_key(&k2).unwrap(), Some(e1.clone()));
        assert_eq!(store.resolve_key(&Digest::of(b"other")).unwrap(), None);
        // A key whose entry is gone resolves to nothing, and gc drops the record.
        store.remove(&e1.meta.digest).unwrap();
        assert_eq!(store.resolve_key(&k1).unwrap(), None);
        store.remove_orphan_meta().unwrap();
        assert_eq!(
            std::fs::read_dir(store.entries_dir().join(".keys"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_store_named_by_a_relative_path_hands_out_absolute_entry_paths() {
        // Docker refuses relative bind-mount sources.
        let dir = tempfile::tempdir_in(".").unwrap();
        let relative = Path::new(".").join(dir.path().file_name().unwrap());
        assert!(relative.is_relative());
        let store = LocalStore::open(&relative.join("s")).unwrap();
        let e = store
            .add_reader(
                &mut &b"x"[..],
                false,
                &NewEntry::new("x", crate::store::Kind::Output),
                None,
            )
            .unwrap();
        assert!(e.path.is_absolute(), "{}", e.path.display());
        assert!(e.path.exists());
    }
}
