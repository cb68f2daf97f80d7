//! Toolchain images: generated from a toolchain's pinned `.deb` files (or on its base
//! image pinned by digest) into a deterministic `docker load` archive, kept in the store
//! as a `toolchain` entry, and loaded into the local Docker daemon on demand.
//!
//! An image's key is the BLAKE3 of everything that goes into it: the toolchain definition,
//! the store addresses of its `.deb` files and of the sources it unpacks, a base image's
//! pinned manifest digest, the time stamp, and the generator's version.
//! The same lockfile therefore gives the same key, entry and image ID on any machine.

use std::path::PathBuf;

use serde::Serialize;
use tracing::info;

use crate::cache::Caches;
use crate::digest::Digest;
use crate::docker::{DockerError, Engine};
use crate::lock::Lockfile;
use crate::progress::Progress;
use crate::project::{Project, ProjectError, deb_pin};
use crate::source::{Fetcher, SourceError};
use crate::store::{Kind, LocalStore, NewEntry, Store, StoreError};
use crate::toolchain::{self, Toolchain, ToolchainError};

/// Every time stamp in a generated image (2023-11-14T22:13:20Z); fixed so images are
/// reproducible and independent of when they were built.
pub const SOURCE_DATE_EPOCH: u64 = 1_700_000_000;
/// Bumped whenever the generator's output changes for the same inputs.
const GENERATOR_VERSION: &str = "dockerbuild-image-v2";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no toolchain `{name}` in toolchains/ (there are: {})", known.join(", "))]
    UnknownPlatform { name: String, known: Vec<String> },
    #[error("toolchain `{name}` is not in the lockfile\nhint: run `dockerbuild lock`")]
    NotLocked { name: String },
    #[error(
        "the lockfile's deb `{name}` is malformed\nhint: regenerate it with `dockerbuild lock`"
    )]
    BadDeb { name: String },
    #[error(
        "toolchain `{name}` unpacks source `{source_name}`, which the lockfile does not pin\nhint: add it to sources.toml and run `dockerbuild lock`"
    )]
    UnpackNotLocked { name: String, source_name: String },
    #[error(
        "toolchain `{name}` unpacks `{subdir}` from source `{source_name}`, which has no such directory"
    )]
    UnpackSubdir {
        name: String,
        source_name: String,
        subdir: String,
    },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("the generated image of `{name}` has ID {actual}, but the daemon loaded {loaded}")]
    IdMismatch {
        name: String,
        actual: String,
        loaded: String,
    },
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot use temporary directory")]
    Temp(#[source] std::io::Error),
    #[error(
        "toolchain `{name}`: its base image is not in the lockfile\nhint: run `dockerbuild lock`"
    )]
    BaseNotLocked { name: String },
    #[error(transparent)]
    BaseImage(#[from] crate::base_image::BaseImageError),
}

/// A generated image in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub platform: String,
    /// `sha256:...`, as Docker names it.
    pub id: String,
    pub key: Digest,
    /// The `docker load` archive's store entry.
    pub entry: PathBuf,
    /// Whether it was found in the store rather than generated now.
    pub cached: bool,
}

/// Finds the platform's toolchain definition.
pub fn toolchain<'a>(project: &'a Project, platform: &str) -> Result<&'a Toolchain, ImageError> {
    project
        .toolchains
        .iter()
        .find(|t| t.name == platform)
        .ok_or_else(|| ImageError::UnknownPlatform {
            name: platform.to_owned(),
            known: project.toolchains.iter().map(|t| t.name.clone()).collect(),
        })
}

/// `base` is the pinned platform manifest of a `[base]` toolchain: its image is built on
/// it, wherever the bytes come from (mirrors are not part of the key).
fn key(tc: &Toolchain, debs: &[Digest], base: Option<&str>) -> Digest {
    let json = match base {
        None => serde_json::to_vec(&(GENERATOR_VERSION, SOURCE_DATE_EPOCH, tc, debs)),
        Some(m) => serde_json::to_vec(&(GENERATOR_VERSION, SOURCE_DATE_EPOCH, tc, debs, m)),
    }
    .expect("key serializes");
    Digest::of(&json)
}

fn entry_name(platform: &str) -> String {
    format!("image-{platform}.tar")
}

fn origin(key: &Digest) -> String {
    format!("toolchain-image:{}", key.to_hex())
}

/// Returns the platform's image from the store, generating it (fetching its `.deb` files
/// first) when the store has none for this lockfile.
pub fn generate(
    store: &LocalStore,
    fetcher: &Fetcher,
    project: &Project,
    lock: &Lockfile,
    platform: &str,
    caches: &Caches,
    progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
) -> Result<Image, ImageError> {
    let Resolved {
        tc,
        debs,
        unpacks,
        digests,
        base,
        key,
    } = resolve(project, lock, platform)?;
    // One generation per image at a time, across threads and processes: who waited
    // finds the other's result.
    let _generating = store.lock_key(&key)?;
    if let Some(e) = store.resolve_key(&key)? {
        caches.offer(store, &key, &e)?;
        return Ok(Image {
            platform: platform.to_owned(),
            id: e.meta.version.clone().unwrap_or_default(),
            key,
            entry: e.path,
            cached: true,
        });
    }
    if let Some(hit) = caches.substitute(store, &key, progress("image").as_ref())? {
        info!(
            platform,
            cache = hit.cache,
            "substituted the toolchain image"
        );
        return Ok(Image {
            platform: platform.to_owned(),
            id: hit.entry.meta.version.clone().unwrap_or_default(),
            key,
            entry: hit.entry.path,
            cached: true,
        });
    }
    info!(platform, %key, "generating toolchain image");
    let mut files = Vec::new();
    for d in &debs {
        let pin = deb_pin(d).ok_or_else(|| ImageError::BadDeb {
            name: d.name.clone(),
        })?;
        let entry = crate::project::fetch_one(store, fetcher, caches, d, progress)?;
        files.push((pin, entry.path));
    }
    let mut overlays = Vec::new();
    for (u, pin) in &unpacks {
        let archive = crate::project::fetch_one(store, fetcher, caches, pin, progress)?;
        let tree = crate::archive::unpack(
            store,
            &archive.path,
            &NewEntry {
                name: format!("{}.unpacked", pin.file),
                kind: Kind::Other,
                version: Some(pin.version.clone()),
                origin: Some(format!("unpack:{}", pin.blake3)),
                references: vec![pin.blake3],
                build: None,
            },
            &Default::default(),
            progress(&pin.name).as_ref(),
        )?;
        let dir = match &u.subdir {
            Some(sub) => tree.path.join(sub),
            None => tree.path,
        };
        if !dir.is_dir() {
            return Err(ImageError::UnpackSubdir {
                name: platform.to_owned(),
                source_name: u.source.clone(),
                subdir: u.subdir.clone().unwrap_or_default(),
            });
        }
        overlays.push((dir, u.to.clone()));
    }
    let tmp = tempfile::Builder::new()
        .prefix("dockerbuild-image-")
        .tempdir()
        .map_err(ImageError::Temp)?;
    let archive = tmp.path().join("image.tar");
    let info = match base {
        Some(locked) => {
            let blobs = tmp.path().join("blobs");
            std::fs::create_dir(&blobs).map_err(ImageError::Temp)?;
            let fetched = crate::base_image::fetch(locked, &blobs)?;
            info!(platform, source = fetched.source, "fetched the base image");
            toolchain::write_base_image_archive(
                &fetched.config,
                &fetched.layers,
                tc,
                &overlays,
                &archive,
                SOURCE_DATE_EPOCH,
            )?
        }
        None => {
            let rootfs = tmp.path().join("rootfs.tar");
            toolchain::build_rootfs(tc, &files, &overlays, &rootfs, SOURCE_DATE_EPOCH)?;
            let info = toolchain::write_image_archive(&rootfs, tc, &archive, SOURCE_DATE_EPOCH)?;
            drop(std::fs::remove_file(&rootfs));
            info
        }
    };
    let new = NewEntry {
        name: entry_name(platform),
        kind: Kind::Toolchain,
        version: Some(info.id.clone()),
        origin: Some(origin(&key)),
        references: digests,
        build: None,
    };
    let entry = store.add_path(&archive, &new, progress("image").as_ref())?;
    store.bind_key(&key, &entry.meta.digest)?;
    caches.offer(store, &key, &entry)?;
    Ok(Image {
        platform: platform.to_owned(),
        id: info.id,
        key,
        entry: entry.path,
        cached: false,
    })
}

/// The key of a platform's image (what [`generate`] would make), from the lockfile
/// alone: builds are keyed by it, so a build whose output is known needs no image.
pub fn image_key(project: &Project, lock: &Lockfile, platform: &str) -> Result<Digest, ImageError> {
    Ok(resolve(project, lock, platform)?.key)
}

/// What an image is made of, from the lockfile, and its key.
struct Resolved<'a> {
    tc: &'a Toolchain,
    debs: Vec<&'a crate::lock::LockedSource>,
    unpacks: Vec<(&'a crate::toolchain::Unpack, &'a crate::lock::LockedSource)>,
    /// The .debs' and unpacked sources' store addresses, in order.
    digests: Vec<Digest>,
    /// A `[base]` toolchain's pinned image.
    base: Option<&'a crate::lock::LockedBaseImage>,
    key: Digest,
}

fn resolve<'a>(
    project: &'a Project,
    lock: &'a Lockfile,
    platform: &str,
) -> Result<Resolved<'a>, ImageError> {
    let tc = toolchain(project, platform)?;
    let base = match &tc.base {
        Some(b) => Some(
            lock.base_image(platform)
                .filter(|l| l.image == b.image && l.platform == b.platform)
                .ok_or_else(|| ImageError::BaseNotLocked {
                    name: platform.to_owned(),
                })?,
        ),
        None => None,
    };
    let deb_names = match base {
        Some(_) => &[][..],
        None => {
            &lock
                .toolchain(platform)
                .ok_or_else(|| ImageError::NotLocked {
                    name: platform.to_owned(),
                })?
                .debs[..]
        }
    };
    let mut debs = Vec::new();
    for name in deb_names {
        let d = lock
            .deb(name)
            .ok_or_else(|| ImageError::BadDeb { name: name.clone() })?;
        debs.push(d);
    }
    let mut unpacks = Vec::new();
    for u in &tc.unpack {
        let pin = lock
            .get(&u.source)
            .ok_or_else(|| ImageError::UnpackNotLocked {
                name: platform.to_owned(),
                source_name: u.source.clone(),
            })?;
        unpacks.push((u, pin));
    }
    // The unpacked sources count like the .debs: by their pinned store addresses.
    let digests: Vec<Digest> = debs
        .iter()
        .map(|d| d.blake3)
        .chain(unpacks.iter().map(|(_, p)| p.blake3))
        .collect();
    let key = key(tc, &digests, base.map(|b| b.manifest.as_str()));
    Ok(Resolved {
        tc,
        debs,
        unpacks,
        digests,
        base,
        key,
    })
}

/// Makes sure the daemon has the image, loading it from the store if not.
pub fn ensure_loaded(engine: &Engine, image: &Image) -> Result<(), ImageError> {
    if engine.image_exists(&image.id)? {
        return Ok(());
    }
    let loaded = engine.load_image(&image.entry)?;
    if loaded != image.id {
        return Err(ImageError::IdMismatch {
            name: image.platform.clone(),
            actual: image.id.clone(),
            loaded,
        });
    }
    Ok(())
}
