//! The content-addressed store: immutable entries addressed by the BLAKE3 digest of
//! their canonical form ([`crate::tree`]).
//!
//! [`Store`] is the small interface every backend implements; [`LocalStore`] keeps
//! entries in a directory on this machine:
//!
//! ```text
//! <store>/
//! └── v1/                         format version (FORMAT_VERSION)
//!     ├── .lock                   flock: shared for normal work, exclusive for gc
//!     ├── .tmp/                   staging on the same filesystem
//!     │   ├── <id>.lock           held by the live process staging <id>/
//!     │   └── <id>/               a half-written entry; never visible as an entry
//!     ├── .meta/<hex>.json        EntryMeta, written before the entry is published
//!     ├── .pins/<hex>             gc roots made by `store pin`
//!     ├── .roots/<hex>            gc roots: files registered by `store add-root`
//!     ├── .keys/<key hex>         build key -> the entry it produced (several keys may
//!     │                           produce one entry)
//!     └── <hex>-<name>            an entry: a read-only file or directory tree
//! ```
//!
//! An entry becomes visible with one `rename(2)` of a fully written, synced tree, so a
//! crash at any moment leaves either no entry or a whole one.

pub mod export;
mod gc;
mod local;
mod lock;
mod meta;
mod stage;
mod walk;

#[cfg(test)]
mod conformance;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use export::{EXPORT_HEADER_NAME, ExportHeader};
pub use gc::{GcReport, RootFile};
pub use local::LocalStore;
pub use meta::{
    BuildRecord, EntryMeta, FORMAT_VERSION, InvalidName, Kind, MAX_NAME_LEN, NewEntry,
    sanitize_name, validate_name,
};
pub use stage::{StagedFile, StagedTree, TreeWriter};
pub use walk::hash_path;

use crate::digest::Digest;
use crate::progress::Progress;

/// An entry present in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub meta: EntryMeta,
    /// Where the entry's file or tree is on this machine.
    pub path: PathBuf,
}

/// The result of re-hashing one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Ok,
    /// The contents no longer hash to the address, or the metadata is missing or wrong.
    Corrupt {
        reason: String,
    },
}

/// Something that went wrong in the store; each variant names the action and its subject.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("cannot add `{}`: {what} is not a regular file, symlink or directory", path.display())]
    UnsupportedFileType { path: PathBuf, what: &'static str },
    #[error("cannot add `{}`: it changed while it was being added", path.display())]
    ChangedWhileAdding { path: PathBuf },
    #[error("no entry matches `{query}`\nhint: `dockerbuild store ls` lists the entries")]
    NotFound { query: String },
    #[error("`{query}` matches {} entries:\n  {}\nhint: name one by its digest", matches.len(), matches.join("\n  "))]
    Ambiguous { query: String, matches: Vec<String> },
    #[error(
        "refusing {subject}: its contents hash to {actual}, but {expected} was expected; nothing was added"
    )]
    DigestMismatch {
        subject: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("cannot read metadata `{}`", path.display())]
    ParseMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed export stream: {reason}; nothing was added")]
    MalformedExport { reason: String },
    #[error("malformed tree: {reason}")]
    MalformedTree { reason: String },
    #[error(
        "entry {digest} is corrupt: {reason}\nhint: `dockerbuild store verify --repair` removes corrupt entries"
    )]
    Corrupt { digest: Digest, reason: String },
    #[error("store format `{found}` in `{}` is not supported by this dockerbuild (it reads v{FORMAT_VERSION})", path.display())]
    UnsupportedFormat { path: PathBuf, found: String },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The interface of a store backend. Every backend passes the suite in `conformance.rs`.
pub trait Store {
    /// Adds the file or directory tree at `src` (if `src` is a symlink, what it names), copying
    /// and hashing in one pass. Adding an entry that exists is a no-op returning it.
    fn add_path(&self, src: &Path, new: &NewEntry, progress: &dyn Progress) -> Result<Entry>;

    /// Adds one file whose bytes come from a stream. If `expected` is given and the entry's
    /// address differs, nothing is added.
    fn add_reader(
        &self,
        reader: &mut dyn Read,
        executable: bool,
        new: &NewEntry,
        expected: Option<Digest>,
    ) -> Result<Entry>;

    /// The entry with this address, if present.
    fn get(&self, digest: &Digest) -> Result<Option<Entry>>;

    /// Every entry, sorted by name then digest.
    fn list(&self) -> Result<Vec<Entry>>;

    /// Re-hashes one entry.
    fn verify(&self, digest: &Digest, progress: &dyn Progress) -> Result<Verification>;

    /// Removes an entry atomically (it disappears at once, then its files are deleted).
    /// Returns whether it existed.
    fn remove(&self, digest: &Digest) -> Result<bool>;

    /// Writes one entry and its metadata as a `.tar.zst` stream.
    fn export(&self, digest: &Digest, out: &mut dyn Write) -> Result<()>;

    /// Reads a stream written by [`Store::export`], re-hashes it, and adds it only if it
    /// matches the digest it claims.
    fn import(&self, input: &mut dyn Read, progress: &dyn Progress) -> Result<Entry>;

    /// Finds entries by digest (full, or a prefix of at least 8 hex digits), by name, or
    /// by path (`<store>/v1/<hex>-<name>`, as commands print it).
    fn find(&self, query: &str) -> Result<Vec<Entry>> {
        if query.starts_with('/')
            && let Some(file) = std::path::Path::new(query).file_name()
            && let Some((digest, _)) = local::parse_entry_name(&file.to_string_lossy())
        {
            return Ok(self.get(&digest)?.into_iter().collect());
        }
        let all = self.list()?;
        if Digest::is_hex_prefix(query) {
            let hex = query.strip_prefix(crate::digest::PREFIX).unwrap_or(query);
            let hex = hex.to_ascii_lowercase();
            let hits: Vec<Entry> = all
                .iter()
                .filter(|e| e.meta.digest.to_hex().starts_with(&hex))
                .cloned()
                .collect();
            if !hits.is_empty() {
                return Ok(hits);
            }
        }
        Ok(all.into_iter().filter(|e| e.meta.name == query).collect())
    }

    /// Like [`Store::find`], but exactly one entry must match.
    fn resolve(&self, query: &str) -> Result<Entry> {
        let mut hits = self.find(query)?;
        match hits.len() {
            0 => Err(StoreError::NotFound {
                query: query.to_owned(),
            }),
            1 => Ok(hits.remove(0)),
            _ => Err(StoreError::Ambiguous {
                query: query.to_owned(),
                matches: hits
                    .iter()
                    .map(|e| {
                        let v = e.meta.version.as_deref().unwrap_or("-");
                        format!("{}  {}  {v}", e.meta.digest, e.meta.name)
                    })
                    .collect(),
            }),
        }
    }
}
