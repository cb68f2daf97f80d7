//! `docker-mirror`: copies an image from one registry repository to another by digest:
//! a manifest or a multi-platform index, every manifest it lists and every blob they
//! reference. Manifests are put byte for byte, so every digest, the top one included, is
//! the same on both sides; blobs the destination has are skipped, and every byte copied
//! is checked against its digest (by the reader here, and by the destination registry).

use std::sync::Arc;

use tracing::{debug, instrument};

use crate::registry::{MANIFEST_TYPES, RawManifest, RegistryError, Repository, Result};

/// What a mirror did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// The top manifest's digest (the same on both sides).
    pub digest: String,
    /// Manifests put (the top one included).
    pub manifests: usize,
    /// Blobs copied, and skipped because the destination had them.
    pub blobs_copied: usize,
    pub blobs_present: usize,
    pub bytes_copied: u64,
}

/// Copies `reference` (a tag or `sha256:` digest) of `src` to `dst`, tagging the top
/// manifest `tag` there when given.
#[instrument(skip(src, dst), fields(src = %src.name, dst = %dst.name))]
pub fn mirror(
    src: &Arc<Repository>,
    reference: &str,
    dst: &Arc<Repository>,
    tag: Option<&str>,
) -> Result<Mirrored> {
    let mut done = Mirrored::default();
    let top = copy_manifest(src, dst, reference, &mut done, 0)?;
    if let Some(tag) = tag {
        dst.put_manifest(tag, &top.bytes, &top.media_type, &format!("tag {tag}"))?;
    }
    done.digest = top.digest;
    Ok(done)
}

fn copy_manifest(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    reference: &str,
    done: &mut Mirrored,
    depth: usize,
) -> Result<RawManifest> {
    let what = format!("manifest {reference}");
    let malformed = |reason: String| RegistryError::Malformed {
        registry: src.name.clone(),
        what: what.clone(),
        reason,
    };
    if depth > 4 {
        return Err(malformed("indexes nest too deeply".into()));
    }
    let mut m = src
        .get_manifest(reference, &MANIFEST_TYPES, &what)?
        .ok_or_else(|| RegistryError::Remote {
            registry: src.name.clone(),
            what: what.clone(),
            reason: "no such manifest".into(),
        })?;
    let v: serde_json::Value =
        serde_json::from_slice(&m.bytes).map_err(|e| malformed(e.to_string()))?;
    if let Some(t) = v.get("mediaType").and_then(|t| t.as_str()) {
        m.media_type = t.to_owned();
    }
    if !MANIFEST_TYPES.contains(&m.media_type.as_str()) {
        return Err(malformed(format!(
            "unsupported media type `{}`",
            m.media_type
        )));
    }
    let descriptor = |d: &serde_json::Value| -> Result<(String, u64)> {
        let digest = d.get("digest").and_then(|x| x.as_str());
        let size = d.get("size").and_then(|x| x.as_u64());
        match (digest, size) {
            (Some(digest), Some(size)) if digest.starts_with("sha256:") => {
                Ok((digest.to_owned(), size))
            }
            _ => Err(malformed(format!("a bad descriptor: {d}"))),
        }
    };
    if let Some(children) = v.get("manifests").and_then(|c| c.as_array()) {
        for child in children {
            let (digest, _) = descriptor(child)?;
            copy_manifest(src, dst, &digest, done, depth + 1)?;
        }
    } else {
        let config = v
            .get("config")
            .ok_or_else(|| malformed("no config".into()))?;
        let layers = v
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or_else(|| malformed("no layers".into()))?;
        for d in std::iter::once(config).chain(layers) {
            let (digest, size) = descriptor(d)?;
            copy_blob(src, dst, &digest, size, done)?;
        }
    }
    dst.put_manifest(&m.digest, &m.bytes, &m.media_type, &what)?;
    done.manifests += 1;
    Ok(m)
}

/// Downloads a blob to a temporary file (resumable, digest-checked), then uploads it
/// (resumable; the destination checks the digest again).
fn copy_blob(
    src: &Arc<Repository>,
    dst: &Arc<Repository>,
    digest: &str,
    size: u64,
    done: &mut Mirrored,
) -> Result<()> {
    let what = format!("blob {digest}");
    if dst.has_blob(digest, &what)? {
        debug!(digest, "the destination has it");
        done.blobs_present += 1;
        return Ok(());
    }
    let io = |action: &str| {
        let registry = dst.name.clone();
        let action = format!("{action} ({what})");
        move |source| RegistryError::Io {
            registry,
            action,
            source,
        }
    };
    let mut tmp = tempfile::NamedTempFile::new().map_err(io("create a temporary file"))?;
    let mut reader = src.blob_reader(digest, size, &what)?;
    std::io::copy(&mut reader, tmp.as_file_mut()).map_err(io("download"))?;
    dst.upload_blob(tmp.path(), digest, size, &what)?;
    done.blobs_copied += 1;
    done.bytes_copied += size;
    Ok(())
}
