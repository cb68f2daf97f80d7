//! Base images: the upstream images (dockcross ones) that `[base]` toolchains are built on,
//! pinned by digest.
//!
//! - [`pin`]: `dockerbuild lock` resolves a toolchain's `base.image` tag to the top
//!   manifest's digest (an index or a manifest) and the platform's manifest digest.
//! - [`mirror_locked`]: `docker-mirror --to` copies a pinned image, index and all, to
//!   another registry by digest ([`crate::mirror`]), so the copy has the same digests.
//! - [`fetch`]: image generation downloads the platform's manifest, config and layers
//!   by digest, from the lockfile's mirrors in order and then upstream. Every byte is
//!   checked against its digest; a source that fails is reported and the next one tried.
//!
//! A reference without a registry host (`dockcross/linux-arm64:TAG`) is fetched from the
//! registry [`REGISTRY_ENV`] names, so no public registry's host is written in a project.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, instrument, warn};

use crate::lock::LockedBaseImage;
use crate::mirror::Mirrored;
use crate::registry::{
    MANIFEST_TYPES, OciOptions, RawManifest, RegistryError, Repository, parse_reference,
};
use crate::toolchain::BaseImage;

/// The registry (`HOST[:PORT]`) of base image references that name none.
pub const REGISTRY_ENV: &str = "DOCKERBUILD_BASE_REGISTRY";

#[derive(Debug, thiserror::Error)]
pub enum BaseImageError {
    #[error(
        "toolchain `{toolchain}`: base image `{image}` names no registry\nhint: set {REGISTRY_ENV}=HOST[:PORT], or write HOST[:PORT]/REPO:TAG"
    )]
    NoRegistry { toolchain: String, image: String },
    #[error("toolchain `{toolchain}`: cannot pin base image `{image}`")]
    Pin {
        toolchain: String,
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(
        "toolchain `{toolchain}`: base image `{image}` has no {platform} manifest (it has: {})",
        available.join(", ")
    )]
    NoPlatform {
        toolchain: String,
        image: String,
        platform: String,
        available: Vec<String>,
    },
    #[error("toolchain `{toolchain}`: cannot mirror base image `{image}` to `{to}`")]
    Mirror {
        toolchain: String,
        image: String,
        to: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(
        "`{to}` is not a mirror location\nhint: write HOST[:PORT] or HOST[:PORT]/PREFIX (the image's repository goes under PREFIX)"
    )]
    BadMirror { to: String },
    #[error(
        "toolchain `{toolchain}`: no source served base image manifest {manifest}:\n  {}",
        attempts.join("\n  ")
    )]
    Fetch {
        toolchain: String,
        manifest: String,
        /// One line per source tried: where, and why it failed.
        attempts: Vec<String>,
    },
}

pub type Result<T, E = BaseImageError> = std::result::Result<T, E>;

/// Where an upstream reference points: registry host, repository, tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub repo: String,
    pub reference: String,
}

/// Splits a `base.image`, taking the registry from [`REGISTRY_ENV`] when the reference
/// has none. As Docker reads references, the first component is a host when it has a
/// `.` or `:` or is `localhost`.
pub fn upstream(toolchain: &str, image: &str) -> Result<Upstream> {
    let first = image.split('/').next().unwrap_or_default();
    let has_host =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_host {
        image.to_owned()
    } else {
        match std::env::var(REGISTRY_ENV) {
            Ok(h) if !h.is_empty() => format!("{}/{image}", h.trim_end_matches('/')),
            _ => {
                return Err(BaseImageError::NoRegistry {
                    toolchain: toolchain.to_owned(),
                    image: image.to_owned(),
                });
            }
        }
    };
    let pin_err = |source| BaseImageError::Pin {
        toolchain: toolchain.to_owned(),
        image: image.to_owned(),
        source: Box::new(source),
    };
    let (host, repo, reference) = parse_reference(&full).map_err(pin_err)?;
    Ok(Upstream {
        host,
        repo,
        reference: reference.unwrap_or_else(|| "latest".to_owned()),
    })
}

fn open(name: &str, host: &str, repo: &str) -> Result<Arc<Repository>, RegistryError> {
    Ok(Arc::new(Repository::open(
        name,
        host,
        repo,
        OciOptions::default(),
    )?))
}

fn no_manifest(repo: &Repository, what: &str) -> RegistryError {
    RegistryError::Remote {
        registry: repo.name.clone(),
        what: what.to_owned(),
        reason: "no such manifest".into(),
    }
}

/// Pins a toolchain's base image: the top digest its tag names now, and the manifest
/// of its platform (from an index, or the manifest itself when its config's platform is
/// the one wanted). Uses the network.
#[instrument(skip(base), fields(image = %base.image))]
pub fn pin(toolchain: &str, base: &BaseImage) -> Result<LockedBaseImage> {
    let up = upstream(toolchain, &base.image)?;
    let err = |source| BaseImageError::Pin {
        toolchain: toolchain.to_owned(),
        image: base.image.clone(),
        source: Box::new(source),
    };
    let repo = open(&format!("{}/{}", up.host, up.repo), &up.host, &up.repo).map_err(err)?;
    let what = format!("base image {}", base.image);
    let top = repo
        .get_manifest(&up.reference, &MANIFEST_TYPES, &what)
        .map_err(err)?
        .ok_or_else(|| err(no_manifest(&repo, &what)))?;
    let parsed = parse(&repo, &top, &what).map_err(err)?;
    let no_platform = |available| BaseImageError::NoPlatform {
        toolchain: toolchain.to_owned(),
        image: base.image.clone(),
        platform: base.platform.clone(),
        available,
    };
    let manifest = match parsed {
        Parsed::Index(children) => {
            let found = children
                .iter()
                .find(|(_, p)| platform_matches(p, &base.platform));
            match found {
                Some((digest, _)) => digest.clone(),
                None => return Err(no_platform(children.into_iter().map(|c| c.1).collect())),
            }
        }
        Parsed::Image { config, .. } => {
            let mut bytes = Vec::new();
            repo.blob_reader(&config.0, config.1, &what)
                .map_err(err)?
                .read_to_end(&mut bytes)
                .map_err(|source| {
                    err(RegistryError::Io {
                        registry: repo.name.clone(),
                        action: format!("download the config of {what}"),
                        source,
                    })
                })?;
            let has = config_platform(&bytes);
            if !platform_matches(&has, &base.platform) {
                return Err(no_platform(vec![has]));
            }
            top.digest.clone()
        }
    };
    info!(digest = top.digest, manifest, "pinned the base image");
    Ok(LockedBaseImage {
        toolchain: toolchain.to_owned(),
        image: base.image.clone(),
        platform: base.platform.clone(),
        digest: top.digest,
        manifest,
        mirrors: Vec::new(),
    })
}

/// `os/architecture[/variant]` of an image config.
fn config_platform(config: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    let mut p = format!("{}/{}", field("os"), field("architecture"));
    if !field("variant").is_empty() {
        p = format!("{p}/{}", field("variant"));
    }
    p
}

/// Whether `has` (`os/arch[/variant]`) is `wanted`; a wanted platform without a variant
/// takes any variant, and arm64's only variant v8 may be left out.
fn platform_matches(has: &str, wanted: &str) -> bool {
    let norm = |p: &str| p.strip_suffix("/v8").unwrap_or(p).to_owned();
    let (has, wanted) = (norm(has), norm(wanted));
    has == wanted || (wanted.matches('/').count() == 1 && has.starts_with(&format!("{wanted}/")))
}

/// A manifest's content: an index's children (digest, platform), or an image's config
/// and layers (digest, size).
enum Parsed {
    Index(Vec<(String, String)>),
    Image {
        config: (String, u64),
        layers: Vec<(String, u64)>,
    },
}

fn parse(repo: &Repository, m: &RawManifest, what: &str) -> Result<Parsed, RegistryError> {
    let malformed = |reason: String| RegistryError::Malformed {
        registry: repo.name.clone(),
        what: what.to_owned(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&m.bytes).map_err(|e| malformed(e.to_string()))?;
    let descriptor = |d: &serde_json::Value| -> Result<(String, u64), RegistryError> {
        let digest = d.get("digest").and_then(|x| x.as_str());
        let size = d.get("size").and_then(|x| x.as_u64());
        match (digest, size) {
            (Some(digest), Some(size)) if crate::lock::is_sha256(digest) => {
                Ok((digest.to_owned(), size))
            }
            _ => Err(malformed(format!("a bad descriptor: {d}"))),
        }
    };
    if let Some(children) = v.get("manifests").and_then(|c| c.as_array()) {
        let mut out = Vec::new();
        for c in children {
            let (digest, _) = descriptor(c)?;
            let p = c.get("platform").cloned().unwrap_or_default();
            let platform = config_platform(&serde_json::to_vec(&p).unwrap_or_default());
            out.push((digest, platform));
        }
        return Ok(Parsed::Index(out));
    }
    let config = descriptor(
        v.get("config")
            .ok_or_else(|| malformed("no config".into()))?,
    )?;
    let layers = v
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or_else(|| malformed("no layers".into()))?
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed::Image { config, layers })
}

/// `HOST[:PORT][/PREFIX]` → host and the repository prefix (maybe empty).
fn mirror_location(to: &str) -> Result<(String, String)> {
    let bad = || BaseImageError::BadMirror { to: to.to_owned() };
    let (host, prefix) = to.split_once('/').unwrap_or((to, ""));
    let prefix = prefix.trim_matches('/');
    if host.is_empty() || host.contains('@') || prefix.contains(':') || prefix.contains('@') {
        return Err(bad());
    }
    Ok((host.to_owned(), prefix.to_owned()))
}

/// Where [`mirror_locked`] puts a pinned image: `HOST[:PORT]/PREFIX/REPO@sha256:...`.
pub fn mirror_reference(locked: &LockedBaseImage, to: &str) -> Result<String> {
    let up = upstream(&locked.toolchain, &locked.image)?;
    let (host, prefix) = mirror_location(to)?;
    Ok(if prefix.is_empty() {
        format!("{host}/{}@{}", up.repo, locked.digest)
    } else {
        format!("{host}/{prefix}/{}@{}", up.repo, locked.digest)
    })
}

/// Copies a pinned image (its top manifest, so every platform) to `to`
/// (`HOST[:PORT][/PREFIX]`) under PREFIX/REPO by digest, tagged with the upstream tag
/// when it has one. Reads from upstream, else from the mirrors already recorded. Returns
/// the copy's reference (`HOST[:PORT]/PREFIX/REPO@sha256:...`) for the lockfile.
#[instrument(skip(locked), fields(toolchain = %locked.toolchain))]
pub fn mirror_locked(locked: &LockedBaseImage, to: &str) -> Result<(String, Mirrored)> {
    let up = upstream(&locked.toolchain, &locked.image)?;
    let reference = mirror_reference(locked, to)?;
    let (dst_name, _) = reference.split_once('@').expect("a digest reference");
    let (host, dst_repo) = dst_name.split_once('/').expect("HOST/REPO");
    let err = |source| BaseImageError::Mirror {
        toolchain: locked.toolchain.clone(),
        image: locked.image.clone(),
        to: to.to_owned(),
        source: Box::new(source),
    };
    let dst = open(dst_name, host, dst_repo).map_err(err)?;
    let tag = (!up.reference.starts_with("sha256:")).then_some(up.reference.as_str());
    let mut last = None;
    for (host, repo) in sources(locked, &up) {
        let src = open(&format!("{host}/{repo}"), &host, &repo).map_err(err)?;
        match crate::mirror::mirror(&src, &locked.digest, &dst, tag) {
            Ok(done) => return Ok((reference, done)),
            Err(e) => {
                warn!(source = %src.name, "cannot copy from here: {e}");
                last = Some(e);
            }
        }
    }
    Err(err(last.expect("upstream is always a source")))
}

/// Where a pinned image can be read, in order: upstream, then the recorded mirrors.
fn sources(locked: &LockedBaseImage, up: &Upstream) -> Vec<(String, String)> {
    let mut out = vec![(up.host.clone(), up.repo.clone())];
    for m in &locked.mirrors {
        if let Ok((host, repo, _)) = parse_reference(m) {
            out.push((host, repo));
        }
    }
    out
}

/// A pinned platform image downloaded into a directory.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The image config, as served (its digest checked).
    pub config: Vec<u8>,
    /// The layer files, in the manifest's order, as served (compressed or not).
    pub layers: Vec<PathBuf>,
    /// Where it came from.
    pub source: String,
}

/// Downloads the pinned platform manifest's config and layers into `dir`: from each
/// mirror in order, then upstream. A source that fails (unreachable, missing, bytes that
/// do not match their digest) is logged and the next one tried; layers already
/// downloaded and checked are kept.
#[instrument(skip(locked, dir), fields(toolchain = %locked.toolchain))]
pub fn fetch(locked: &LockedBaseImage, dir: &Path) -> Result<Fetched> {
    let mut tries: Vec<(String, String)> = Vec::new();
    for m in &locked.mirrors {
        if let Ok((host, repo, _)) = parse_reference(m) {
            tries.push((host, repo));
        }
    }
    let mut attempts = Vec::new();
    match upstream(&locked.toolchain, &locked.image) {
        Ok(up) => tries.push((up.host, up.repo)),
        Err(e) => attempts.push(format!("upstream: {e}")),
    }
    let mut have = BTreeMap::new();
    for (host, repo) in tries {
        let name = format!("{host}/{repo}");
        match fetch_from(&name, &host, &repo, locked, dir, &mut have) {
            Ok(f) => return Ok(f),
            Err(e) => {
                warn!(source = name, "cannot fetch the base image here: {e}");
                attempts.push(format!("{name}: {}", error_chain(&e)));
            }
        }
    }
    Err(BaseImageError::Fetch {
        toolchain: locked.toolchain.clone(),
        manifest: locked.manifest.clone(),
        attempts,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut at = e.source();
    while let Some(c) = at {
        s += &format!(": {c}");
        at = c.source();
    }
    s.replace('\n', " ")
}

fn fetch_from(
    name: &str,
    host: &str,
    repo_name: &str,
    locked: &LockedBaseImage,
    dir: &Path,
    have: &mut BTreeMap<String, PathBuf>,
) -> Result<Fetched, RegistryError> {
    let repo = open(name, host, repo_name)?;
    let what = format!("manifest {}", locked.manifest);
    // By digest: the registry client checks the bytes against it.
    let m = repo
        .get_manifest(&locked.manifest, &MANIFEST_TYPES, &what)?
        .ok_or_else(|| no_manifest(&repo, &what))?;
    let Parsed::Image { config, layers } = parse(&repo, &m, &what)? else {
        return Err(RegistryError::Malformed {
            registry: repo.name.clone(),
            what,
            reason: "it is an index, not a platform's manifest".into(),
        });
    };
    let io = |action: String| {
        let registry = repo.name.clone();
        move |source| RegistryError::Io {
            registry,
            action,
            source,
        }
    };
    let mut config_bytes = Vec::new();
    let blob = format!("blob {}", config.0);
    repo.blob_reader(&config.0, config.1, &blob)?
        .read_to_end(&mut config_bytes)
        .map_err(io(format!("download {blob}")))?;
    let mut files = Vec::new();
    for (digest, size) in layers {
        if let Some(p) = have.get(&digest) {
            files.push(p.clone());
            continue;
        }
        let blob = format!("blob {digest}");
        let hex = digest.trim_start_matches("sha256:");
        let path = dir.join(hex);
        let partial = dir.join(format!("{hex}.partial"));
        let mut out = std::fs::File::create(&partial)
            .map_err(io(format!("create `{}` for {blob}", partial.display())))?;
        let mut reader = repo.blob_reader(&digest, size, &blob)?;
        std::io::copy(&mut reader, &mut out).map_err(io(format!("download {blob}")))?;
        std::fs::rename(&partial, &path)
            .map_err(io(format!("rename `{}` for {blob}", partial.display())))?;
        have.insert(digest, path.clone());
        files.push(path);
    }
    Ok(Fetched {
        config: config_bytes,
        layers: files,
        source: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_as_docker_picks_them() {
        assert!(platform_matches("linux/amd64", "linux/amd64"));
        assert!(platform_matches("linux/arm64/v8", "linux/arm64"));
        assert!(platform_matches("linux/arm/v7", "linux/arm"));
        assert!(!platform_matches("linux/arm/v6", "linux/arm/v7"));
        assert!(!platform_matches("linux/arm64", "linux/amd64"));
    }

    #[test]
    fn references_take_the_registry_from_the_reference_first() {
        let up = upstream("t", "127.0.0.1:5000/dockcross/linux-arm64:1").unwrap();
        assert_eq!(
            (up.host.as_str(), up.repo.as_str(), up.reference.as_str()),
            ("127.0.0.1:5000", "dockcross/linux-arm64", "1")
        );
        assert_eq!(
            mirror_location("127.0.0.1:5000/m/").unwrap(),
            ("127.0.0.1:5000".into(), "m".into())
        );
        assert!(mirror_location("h/x:1").is_err());
    }
}
