//! `file://DIR`: a cache in a directory, on a local disk or any shared filesystem.
//!
//! ```text
//! DIR/dockerbuild-cache-v1/
//!     entries/<digest hex>.tar.zst   an entry's export stream
//!     claims/<key hex>.json          a Claim, published after its entry
//!     tmp/                           partial writes, renamed into place when complete
//! ```
//! Every file appears by `rename` of a complete, synced temporary file, so readers never
//! see a partial one, and two writers of the same entry both succeed.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Cache, CacheError, Claim, Result};
use crate::digest::Digest;

const LAYOUT: &str = "dockerbuild-cache-v1";

pub struct FileCache {
    url: String,
    root: PathBuf,
}

impl FileCache {
    /// Opens (creating) the cache at `dir`; `url` is how it is named in messages.
    pub fn open(dir: &Path, url: &str) -> Result<FileCache> {
        let root = dir.join(LAYOUT);
        let c = FileCache {
            url: url.to_owned(),
            root,
        };
        for sub in ["entries", "claims", "tmp"] {
            let d = c.root.join(sub);
            fs::create_dir_all(&d).map_err(c.io(format!("create `{}`", d.display())))?;
        }
        Ok(c)
    }

    fn io(&self, action: String) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            cache: self.url.clone(),
            action,
            source,
        }
    }

    fn entry_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("entries")
            .join(format!("{}.tar.zst", digest.to_hex()))
    }

    fn claim_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("claims")
            .join(format!("{}.json", key.to_hex()))
    }

    /// Writes `dest` atomically from `fill`.
    fn publish(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(self.io("create a temporary file".into()))?;
        fill(tmp.as_file_mut())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(self.io(format!("write `{}`", dest.display())))?;
        tmp.persist(dest)
            .map_err(|e| e.error)
            .map_err(self.io(format!("publish `{}`", dest.display())))?;
        Ok(())
    }

    fn read_claim(&self, path: &Path) -> Result<Claim> {
        let bytes = fs::read(path).map_err(self.io(format!("read `{}`", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| CacheError::Malformed {
            cache: self.url.clone(),
            what: format!("claim `{}`", path.display()),
            reason: e.to_string(),
        })
    }
}

impl Cache for FileCache {
    fn url(&self) -> &str {
        &self.url
    }

    fn lookup(&self, key: &Digest) -> Result<Option<Claim>> {
        let path = self.claim_path(key);
        if !path.exists() {
            return Ok(None);
        }
        self.read_claim(&path).map(Some)
    }

    fn has_entry(&self, digest: &Digest) -> Result<bool> {
        Ok(self.entry_path(digest).is_file())
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn std::io::Read + Send>> {
        let path = self.entry_path(digest);
        let f = File::open(&path).map_err(self.io(format!("open `{}`", path.display())))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn push(&self, claim: &Claim, stream: &Path) -> Result<()> {
        let dest = self.entry_path(&claim.digest);
        if !dest.is_file() {
            self.publish(&dest, |f| {
                let mut src = File::open(stream)?;
                std::io::copy(&mut src, f).map(drop)
            })?;
        }
        let json = serde_json::to_vec_pretty(claim).expect("claim serializes");
        self.publish(&self.claim_path(&claim.key), |f| f.write_all(&json))
    }

    fn list(&self) -> Result<Vec<Claim>> {
        let dir = self.root.join("claims");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(self.io(format!("read `{}`", dir.display())))? {
            let item = item.map_err(self.io(format!("read `{}`", dir.display())))?;
            if item.path().extension().is_some_and(|e| e == "json") {
                out.push(self.read_claim(&item.path())?);
            }
        }
        out.sort_by_key(|c| (c.name.clone(), c.key));
        Ok(out)
    }
}
