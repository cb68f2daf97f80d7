//! The binary cache: where entries built or fetched on one machine are found by others,
//! so they are substituted instead of rebuilt.
//!
//! A cache maps a **key** (a build key, an image-generation key, or for a source its own
//! digest) to a signed [`Claim`] "key K produced entry D", and holds each entry once, as
//! its `store export` stream. Backends implement the small [`Cache`] trait and are chosen
//! by URL ([`open`]); all pass one conformance suite (`tests/cache.rs`).
//!
//! What every backend guarantees: a claim is published only after its entry's stream is
//! complete, so a reader never sees a claim it cannot fetch; and what is fetched is never
//! trusted: [`substitute`] re-hashes the stream as it imports it and refuses a mismatch
//! (naming the cache and the entry) without changing the store.

pub mod cipd;
mod file;
mod oci;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use cipd::CipdCache;
pub use file::FileCache;
pub use oci::{OciCache, OciOptions};

use crate::digest::Digest;
use crate::progress::Progress;
pub use crate::signing::Claim;
use crate::signing::{PublicKey, SecretKey, trusted};
use crate::store::{Entry, LocalStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "`{url}` is not a cache URL\nhint: use file:///DIR, cipd://HOST[:PORT][/PREFIX] or oci://HOST[:PORT]/REPO"
    )]
    BadUrl { url: String },
    #[error("cache {cache}: cannot {action}")]
    Io {
        cache: String,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache {cache}: {what} is malformed: {reason}")]
    Malformed {
        cache: String,
        what: String,
        reason: String,
    },
    #[error("cache {cache}: {what}: {reason}")]
    Remote {
        cache: String,
        what: String,
        reason: String,
    },
    #[error("cache {cache}: entry {digest} ({name}) is not what it claims: {source}")]
    Corrupt {
        cache: String,
        digest: Digest,
        name: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error(
        "cache {cache}: the claim for key {key} is not signed by a trusted key\nhint: trust its signer in config.toml (`trusted_keys`), or re-push it signed"
    )]
    Untrusted { cache: String, key: Digest },
    #[error("cache {cache}: cannot {action}: {reason}{hint}")]
    Rpc {
        cache: String,
        action: String,
        reason: String,
        /// Empty, or `\nhint: ...`.
        hint: String,
    },
    #[error("cache {cache} is read-only")]
    ReadOnly { cache: String },
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
}

impl From<crate::registry::RegistryError> for CacheError {
    fn from(e: crate::registry::RegistryError) -> Self {
        CacheError::Registry(Box::new(e))
    }
}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> Self {
        CacheError::Store(Box::new(e))
    }
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// A binary cache backend.
pub trait Cache: Send + Sync {
    /// The URL it was opened from (for messages).
    fn url(&self) -> &str;
    /// The claim for `key`, if the cache has one.
    fn lookup(&self, key: &Digest) -> Result<Option<Claim>>;
    /// Whether the cache holds the export stream of entry `digest`.
    fn has_entry(&self, digest: &Digest) -> Result<bool>;
    /// Entry `digest`'s export stream, to be read (and re-hashed) once, as it arrives.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;
    /// Stores an export stream (the file `stream`, `size` bytes) for entry `digest`, then
    /// publishes `claim`. Pushing what is already there is not an error.
    fn push(&self, claim: &Claim, stream: &Path) -> Result<()>;
    /// Every claim in the cache.
    fn list(&self) -> Result<Vec<Claim>>;
}

/// Opens a cache by URL: `file:///DIR` (or a plain absolute path), or
/// `cipd://HOST[:PORT][/PREFIX]` (token from `DOCKERBUILD_CIPD_TOKEN`), or
/// `oci://HOST[:PORT]/REPO` (a registry repository).
pub fn open(url: &str) -> Result<Box<dyn Cache>> {
    if url.starts_with("oci://") {
        return Ok(Box::new(OciCache::open(url)?));
    }
    if url.starts_with("cipd://") {
        return Ok(Box::new(CipdCache::open(url)?));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Box::new(FileCache::open(Path::new(path), url)?));
    }
    if url.starts_with('/') {
        return Ok(Box::new(FileCache::open(Path::new(url), url)?));
    }
    Err(CacheError::BadUrl {
        url: url.to_owned(),
    })
}

/// Opens a cache by URL as [`open`] does, with what the config adds: for `cipd://`, the
/// token from `cipd-token-file` when `DOCKERBUILD_CIPD_TOKEN` is unset.
pub fn open_with_config(url: &str, config: &crate::config::Config) -> Result<Box<dyn Cache>> {
    if !url.starts_with("cipd://") {
        return open(url);
    }
    Ok(Box::new(open_cipd_with_config(url, config)?))
}

/// Opens a `cipd://` cache as such (to publish wheels to it), with the token from the
/// environment or the config's `cipd-token-file`.
pub fn open_cipd_with_config(url: &str, config: &crate::config::Config) -> Result<CipdCache> {
    let mut opts = cipd::CipdOptions::from_env();
    if opts.token.is_none()
        && let Some(path) = &config.cipd_token_file
    {
        let text = fs_err::read_to_string(path).map_err(|source| CacheError::Io {
            cache: url.to_owned(),
            action: format!(
                "read the token file `{}` (config `cipd-token-file`)",
                path.display()
            ),
            source,
        })?;
        opts.token = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    }
    CipdCache::open_with(url, opts)
}

/// The claim an entry makes under `key`, signed when a key is given.
pub fn claim_for(key: &Digest, entry: &Entry, signer: Option<&SecretKey>) -> Claim {
    let mut refs = entry.meta.references.clone();
    refs.sort();
    let mut claim = Claim {
        key: *key,
        digest: entry.meta.digest,
        name: entry.meta.name.clone(),
        kind: entry.meta.kind,
        size: entry.meta.size,
        references: refs,
        signatures: Vec::new(),
    };
    if let Some(s) = signer {
        s.sign(&mut claim);
    }
    claim
}

/// Pushes `entry` under `key` (exporting it to a temporary file first, so the stream is
/// complete before the cache sees it).
pub fn upload(
    cache: &dyn Cache,
    key: &Digest,
    entry: &Entry,
    signer: Option<&SecretKey>,
) -> Result<Claim> {
    let claim = claim_for(key, entry, signer);
    let io = |action: &str| {
        let cache = cache.url().to_owned();
        let action = action.to_owned();
        move |source| CacheError::Io {
            cache,
            action,
            source,
        }
    };
    let mut tmp = tempfile::NamedTempFile::new().map_err(io("create a temporary file"))?;
    crate::store::export::write(entry, tmp.as_file_mut())?;
    cache.push(&claim, tmp.path())?;
    Ok(claim)
}

/// Where a substitution came from.
#[derive(Debug, Clone)]
pub struct Substituted {
    pub entry: Entry,
    pub cache: String,
}

/// Looks `key` up in `caches` in order; on the first trusted hit, fetches the entry,
/// re-hashes it into the store and records the key. Untrusted claims are skipped with
/// an error only if no cache has a trusted one.
pub fn substitute(
    caches: &[Box<dyn Cache>],
    store: &LocalStore,
    key: &Digest,
    trusted_keys: &[PublicKey],
    progress: &dyn Progress,
) -> Result<Option<Substituted>> {
    let mut refused = None;
    for cache in caches {
        let Some(claim) = cache.lookup(key)? else {
            continue;
        };
        if claim.key != *key {
            refused = Some(CacheError::Untrusted {
                cache: cache.url().to_owned(),
                key: *key,
            });
            continue;
        }
        if !trusted(&claim, trusted_keys) {
            refused = Some(CacheError::Untrusted {
                cache: cache.url().to_owned(),
                key: *key,
            });
            continue;
        }
        let entry = match store.get(&claim.digest)? {
            Some(e) => e,
            None => fetch_into(cache.as_ref(), store, &claim, progress)?,
        };
        store.bind_key(key, &entry.meta.digest)?;
        return Ok(Some(Substituted {
            entry,
            cache: cache.url().to_owned(),
        }));
    }
    match refused {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Imports a claimed entry straight from the cache's stream, re-hashing every byte as it
/// is written to staging; the entry is published only if it is the one claimed.
pub fn fetch_into(
    cache: &dyn Cache,
    store: &LocalStore,
    claim: &Claim,
    progress: &dyn Progress,
) -> Result<Entry> {
    let mut stream = cache.open(&claim.digest)?;
    store
        .import_expecting(&mut stream, &claim.digest, progress)
        .map_err(|source| CacheError::Corrupt {
            cache: cache.url().to_owned(),
            digest: claim.digest,
            name: claim.name.clone(),
            source: Box::new(source),
        })
}

/// The default cache directory (`<platform cache dir>/dockerbuild/cache`).
pub fn default_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "dockerbuild").map(|d| d.cache_dir().join("cache"))
}

/// How a run uses caches: where to look, whom to trust, whether to substitute and upload,
/// and what it uploaded (or failed to).
#[derive(Default)]
pub struct Caches {
    /// Looked up in order.
    pub caches: Vec<Box<dyn Cache>>,
    /// With none, claims are accepted unsigned (integrity only: every byte is re-hashed).
    pub trusted: Vec<PublicKey>,
    /// Signs what is uploaded.
    pub signer: Option<SecretKey>,
    /// Look keys up before working (`--no-substitute` and `--offline` turn it off).
    pub substitute: bool,
    /// Push what is produced or fetched to the first cache (`--upload`).
    pub upload: bool,
    /// Push the sources a run fetches or uses, even without `upload` (the original
    /// dockerbuild's `--upload-sources`).
    pub upload_sources: bool,
    uploaded: std::sync::Mutex<Vec<Claim>>,
    /// Every key offered during the run (uploading or not), with its entry's name.
    used: std::sync::Mutex<Vec<(Digest, String)>>,
}

impl Caches {
    /// No caches: everything is local work.
    pub fn none() -> Caches {
        Caches::default()
    }

    /// The entry `key` produced, from the first cache that has a trusted claim.
    pub fn substitute(
        &self,
        store: &LocalStore,
        key: &Digest,
        progress: &dyn Progress,
    ) -> Result<Option<Substituted>> {
        if !self.substitute || self.caches.is_empty() {
            return Ok(None);
        }
        substitute(&self.caches, store, key, &self.trusted, progress)
    }

    /// A content-addressed entry (a source: its key is its own digest) from the first
    /// cache that claims exactly that digest. No signature is needed, since what arrives
    /// is re-hashed against the digest it must have.
    pub fn substitute_content(
        &self,
        store: &LocalStore,
        digest: &Digest,
        progress: &dyn Progress,
    ) -> Result<Option<Substituted>> {
        if !self.substitute {
            return Ok(None);
        }
        for cache in &self.caches {
            let Some(claim) = cache.lookup(digest)? else {
                continue;
            };
            if claim.digest != *digest {
                continue;
            }
            // A damaged copy is no reason to fail: upstream (or the next cache) has it.
            match fetch_into(cache.as_ref(), store, &claim, progress) {
                Ok(entry) => {
                    return Ok(Some(Substituted {
                        entry,
                        cache: cache.url().to_owned(),
                    }));
                }
                Err(e @ CacheError::Corrupt { .. }) => {
                    tracing::warn!("{e}; fetching it elsewhere");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Pushes `entry` under `key` to the first cache when uploading is on and the cache
    /// lacks the claim.
    /// Notes in `store` (`.uploads/`) that the cache holds the claim, for
    /// [`LocalStore::never_uploaded`].
    pub fn offer(&self, store: &LocalStore, key: &Digest, entry: &Entry) -> Result<()> {
        self.offer_if(self.upload, store, key, entry)
    }

    /// [`Caches::offer`] for a source (its key is its digest): also with `upload_sources`.
    pub fn offer_source(&self, store: &LocalStore, entry: &Entry) -> Result<()> {
        let digest = entry.meta.digest;
        self.offer_if(self.upload || self.upload_sources, store, &digest, entry)
    }

    fn offer_if(&self, on: bool, store: &LocalStore, key: &Digest, entry: &Entry) -> Result<()> {
        self.used
            .lock()
            .expect("not poisoned")
            .push((*key, entry.meta.name.clone()));
        let Some(first) = self.caches.first().filter(|_| on) else {
            return Ok(());
        };
        let present = first
            .lookup(key)?
            .is_some_and(|c| c.digest == entry.meta.digest);
        if !present {
            let claim = upload(first.as_ref(), key, entry, self.signer.as_ref())?;
            self.uploaded.lock().expect("not poisoned").push(claim);
        }
        Ok(store.record_upload(first.url(), key)?)
    }

    /// The names of the entries this run produced or used that the first cache is not
    /// recorded (in `store`) as holding: only this run's keys, read from local records.
    pub fn not_uploaded(&self, store: &LocalStore) -> Vec<String> {
        let Some(first) = self.caches.first() else {
            return Vec::new();
        };
        let mut used = self.used.lock().expect("not poisoned").clone();
        used.sort();
        used.dedup();
        used.into_iter()
            .filter(|(k, _)| !store.is_uploaded(first.url(), k))
            .map(|(_, name)| name)
            .collect()
    }

    /// What [`Caches::offer`] pushed during this run.
    pub fn uploaded(&self) -> Vec<Claim> {
        self.uploaded.lock().expect("not poisoned").clone()
    }
}
