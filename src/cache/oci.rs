//! `oci://HOST[:PORT]/REPO`: a cache in an OCI (Docker) registry repository.
//!
//! ```text
//! REPO
//!     blob sha256:<hex>        an entry's export stream (already a .tar.zst), one layer
//!     blob sha256:44136fa...   the empty config `{}` every manifest points to
//!     tag entry-<digest hex>   manifest: that one layer; how `open(digest)` finds it
//!     tag key-<key hex>        manifest: the same layer, the signed claim in its annotations
//! ```
//! Order of publication: the blob (the registry verifies its sha256 when the upload is
//! completed), then the `entry-` manifest, then the `key-` manifest (the registry refuses a
//! manifest whose blobs it lacks), so a reader never sees a claim it cannot fetch.
//! Registries without the referrers API (Debian's registry 2.8) are served by tags alone.
//!
//! Transfers are resumable: a push skips blobs the registry has, uploads in chunks and,
//! when interrupted, asks the registry how much it kept and goes on from there (or starts
//! the upload over when the registry lost it); a pull resumes with `Range` requests. Bytes
//! pulled are checked against the layer's sha256 here and re-hashed (BLAKE3) by the
//! store's import; a manifest is checked against the digest the registry names it by.
//!
//! The registry client (schemes, credentials, retries) is [`crate::registry`].

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::instrument;

use super::{Cache, CacheError, Claim, Result};
use crate::digest::Digest;
pub use crate::registry::OciOptions;
use crate::registry::Repository;

/// Media types and annotation names (store-format/README.md, section 10).
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.dockerbuild.entry.v1";
pub const LAYER_TYPE: &str = "application/vnd.dockerbuild.export.v1.tar+zstd";
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const ANNOTATION_CLAIM: &str = "dev.dockerbuild.claim";
pub const ANNOTATION_ENTRY: &str = "dev.dockerbuild.entry";
pub const ANNOTATION_NAME: &str = "dev.dockerbuild.name";
pub const ANNOTATION_KEY: &str = "dev.dockerbuild.key";

pub struct OciCache {
    url: String,
    repo: Arc<Repository>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

impl OciCache {
    /// Opens `oci://HOST[:PORT]/REPO` (no request is made until it is used).
    pub fn open(url: &str) -> Result<OciCache> {
        OciCache::with_options(url, OciOptions::default())
    }

    pub fn with_options(url: &str, opts: OciOptions) -> Result<OciCache> {
        let bad = || CacheError::BadUrl {
            url: url.to_owned(),
        };
        let rest = url.strip_prefix("oci://").ok_or_else(bad)?;
        let (host, repo) = rest.split_once('/').ok_or_else(bad)?;
        let repo = repo.trim_end_matches('/');
        let repo = Repository::open(url, host, repo, opts).map_err(|_| bad())?;
        Ok(OciCache {
            url: url.to_owned(),
            repo: Arc::new(repo),
        })
    }

    fn entry_tag(digest: &Digest) -> String {
        format!("entry-{}", digest.to_hex())
    }

    fn key_tag(key: &Digest) -> String {
        format!("key-{}", key.to_hex())
    }

    fn malformed(&self, what: String, reason: String) -> CacheError {
        CacheError::Malformed {
            cache: self.url.clone(),
            what,
            reason,
        }
    }

    fn manifest(&self, tag: &str, what: &str) -> Result<Option<Manifest>> {
        let Some(raw) = self.repo.get_manifest(tag, &[MANIFEST_TYPE], what)? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw.bytes)
            .map(Some)
            .map_err(|e| self.malformed(format!("{what}: manifest `{tag}`"), e.to_string()))
    }

    fn put(&self, tag: &str, m: &Manifest, what: &str) -> Result<()> {
        let bytes = serde_json::to_vec(m).expect("a manifest serializes");
        Ok(self.repo.put_manifest(tag, &bytes, MANIFEST_TYPE, what)?)
    }

    fn claim_of(&self, m: &Manifest, tag: &str) -> Result<Claim> {
        let what = format!("the claim in manifest `{tag}`");
        let json = m.annotations.get(ANNOTATION_CLAIM).ok_or_else(|| {
            self.malformed(what.clone(), format!("no `{ANNOTATION_CLAIM}` annotation"))
        })?;
        serde_json::from_str(json).map_err(|e| self.malformed(what, e.to_string()))
    }
}

impl Cache for OciCache {
    fn url(&self) -> &str {
        &self.url
    }

    #[instrument(skip(self), fields(cache = %self.url))]
    fn lookup(&self, key: &Digest) -> Result<Option<Claim>> {
        let tag = Self::key_tag(key);
        let what = format!("the claim for key {key}");
        match self.manifest(&tag, &what)? {
            None => Ok(None),
            Some(m) => self.claim_of(&m, &tag).map(Some),
        }
    }

    fn has_entry(&self, digest: &Digest) -> Result<bool> {
        let what = format!("entry {digest}");
        let Some(m) = self.manifest(&Self::entry_tag(digest), &what)? else {
            return Ok(false);
        };
        match m.layers.first() {
            Some(l) => Ok(self.repo.has_blob(&l.digest, &what)?),
            None => Ok(false),
        }
    }

    #[instrument(skip(self), fields(cache = %self.url))]
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let what = format!("entry {digest}");
        let tag = Self::entry_tag(digest);
        let m = self
            .manifest(&tag, &what)?
            .ok_or_else(|| CacheError::Remote {
                cache: self.url.clone(),
                what: what.clone(),
                reason: "not in the cache".into(),
            })?;
        let layer = match m.layers.as_slice() {
            [l] if l.media_type == LAYER_TYPE && l.digest.starts_with("sha256:") => l,
            _ => {
                return Err(self.malformed(
                    format!("manifest `{tag}`"),
                    format!("it must have one `{LAYER_TYPE}` layer"),
                ));
            }
        };
        Ok(Box::new(self.repo.blob_reader(
            &layer.digest,
            layer.size,
            &what,
        )?))
    }

    #[instrument(skip(self, claim, stream), fields(cache = %self.url, key = %claim.key, name = %claim.name))]
    fn push(&self, claim: &Claim, stream: &Path) -> Result<()> {
        let what = format!("entry {} ({})", claim.digest, claim.name);
        let io = |action: String| {
            move |source| CacheError::Io {
                cache: self.url.clone(),
                action,
                source,
            }
        };
        let mut f =
            std::fs::File::open(stream).map_err(io(format!("open `{}`", stream.display())))?;
        let mut sha = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io(format!("read `{}`", stream.display())))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex::encode(sha.finalize()));

        if !self.repo.has_blob(EMPTY_DIGEST, &what)? {
            self.repo.upload_blob_bytes(b"{}", EMPTY_DIGEST, &what)?;
        }
        self.repo.upload_blob(stream, &digest, size, &what)?;

        let entry = claim.digest.to_string();
        let manifest = |annotations: Vec<(&str, String)>| Manifest {
            schema_version: 2,
            media_type: MANIFEST_TYPE.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: EMPTY_TYPE.into(),
                digest: EMPTY_DIGEST.into(),
                size: 2,
            },
            layers: vec![Descriptor {
                media_type: LAYER_TYPE.into(),
                digest: digest.clone(),
                size,
            }],
            annotations: annotations
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let by_entry = manifest(vec![
            (ANNOTATION_ENTRY, entry.clone()),
            (ANNOTATION_NAME, claim.name.clone()),
        ]);
        self.put(&Self::entry_tag(&claim.digest), &by_entry, &what)?;
        let by_key = manifest(vec![
            (ANNOTATION_ENTRY, entry),
            (ANNOTATION_NAME, claim.name.clone()),
            (ANNOTATION_KEY, claim.key.to_string()),
            (
                ANNOTATION_CLAIM,
                serde_json::to_string(claim).expect("a claim serializes"),
            ),
        ]);
        self.put(&Self::key_tag(&claim.key), &by_key, &what)
    }

    fn list(&self) -> Result<Vec<Claim>> {
        let mut out = Vec::new();
        for tag in self.repo.tags()? {
            let Some(key) = tag
                .strip_prefix("key-")
                .and_then(|hex| format!("blake3:{hex}").parse::<Digest>().ok())
            else {
                continue;
            };
            if let Some(c) = self.lookup(&key)? {
                out.push(c);
            }
        }
        out.sort_by_key(|c| (c.name.clone(), c.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::sha256_hex;

    #[test]
    fn urls_choose_the_scheme_and_refuse_bad_repositories() {
        for good in [
            "oci://127.0.0.1:5000/team/cache",
            "oci://localhost/cache/",
            "oci://[::1]:5000/cache",
            "oci://registry.example:5000/cache",
        ] {
            OciCache::open(good).unwrap();
        }
        for bad in [
            "oci://host",
            "oci:///repo",
            "oci://host/Upper",
            "oci://host/a//b",
            "oci://host/-a",
        ] {
            assert!(
                matches!(OciCache::open(bad), Err(CacheError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_fit_the_distribution_spec() {
        let d = Digest::of(b"x");
        for tag in [OciCache::entry_tag(&d), OciCache::key_tag(&d)] {
            assert!(tag.len() <= 128, "{tag}");
            assert!(
                tag.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            );
        }
        assert_eq!(sha256_hex(b"{}"), EMPTY_DIGEST);
    }
}
