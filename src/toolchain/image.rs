//! A `docker load`-compatible image archive of one root filesystem, written
//! deterministically.
//!
//! ```text
//! blobs/sha256/<config>   the image config (JSON); its SHA-256 is the image id
//! blobs/sha256/<layer>    the layer: an uncompressed tar; its SHA-256 is the diff id
//! manifest.json           [{"Config", "RepoTags", "Layers"}], as `docker save` writes it
//! ```
//!
//! The layer is the root filesystem tar normalized: entries sorted by path (bytes), every
//! time stamp the epoch, numeric owners without names, no PAX or extended attributes,
//! hard links pointing to the first path of their group, and no device nodes, FIFOs or
//! sockets (the container runtime provides `/dev`). The archive's own entries are sorted,
//! owned by 0:0 and dated at the epoch, so the same root filesystem, toolchain and epoch
//! always give the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::{Result, Toolchain, ToolchainError, rfc3339};

/// The label every image dockerbuild builds carries (`"true"`).
pub use crate::docker::LABEL_MANAGED;
/// The label naming the image's toolchain.
pub const LABEL_TOOLCHAIN: &str = "org.dockerbuild.toolchain";

/// What [`write_image_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// `sha256:<hex>` of the config: the id `docker images --no-trunc` shows.
    pub id: String,
    /// `sha256:<hex>` of the uncompressed layer.
    pub diff_id: String,
    /// The layer's size in bytes.
    pub layer_size: u64,
    /// The tag the archive carries: `dockerbuild/<toolchain>:<first 12 hex digits of id>`.
    pub repo_tag: String,
    /// Entries of the root filesystem left out of the layer (device nodes, FIFOs, sockets).
    pub dropped: Vec<String>,
}

/// The OCI/Docker `architecture` (and `variant`) of a dpkg architecture.
pub fn docker_architecture(dpkg_arch: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match dpkg_arch {
        "amd64" => ("amd64", None),
        "arm64" => ("arm64", Some("v8")),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "mipsel" => ("mipsle", None),
        "mips64el" => ("mips64le", None),
        _ => return None,
    })
}

/// A temporary file in `out`'s directory, so that the finished file can be renamed into
/// place atomically.
fn temp_beside(out: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(&dir)
        .map_err(ToolchainError::io("create a temporary file in", &dir))
}

/// Writes the image of `tc` with the root filesystem `rootfs_tar` as its one layer to
/// `out` (replaced atomically).
pub fn write_image_archive(
    rootfs_tar: &Path,
    tc: &Toolchain,
    out: &Path,
    epoch: u64,
) -> Result<ImageInfo> {
    let (architecture, variant) =
        docker_architecture(tc.host_arch()).ok_or_else(|| ToolchainError::Resolve {
            toolchain: tc.name.clone(),
            reason: format!(
                "no Docker architecture is known for dpkg architecture `{}`",
                tc.host_arch()
            ),
        })?;
    let tmp = |what| temp_beside(out, what);

    // The layer, hashed while written.
    let layer_file = tmp(".dockerbuild-layer-")?;
    let mut hw = HashingWriter::new(BufWriter::new(layer_file.as_file()));
    let dropped = write_layer(rootfs_tar, &mut hw, epoch)?;
    let (layer_hex, layer_size) = hw
        .finish()
        .map_err(ToolchainError::io("write", layer_file.path()))?;
    let diff_id = format!("sha256:{layer_hex}");

    // The config.
    let created = rfc3339(epoch);
    let mut labels = crate::docker::managed_labels(crate::docker::KIND_IMAGE);
    labels.insert(LABEL_TOOLCHAIN.to_owned(), tc.name.clone());
    let config = ImageConfig {
        architecture,
        variant,
        config: RunConfig {
            env: tc.image_env(),
            cmd: vec!["/bin/bash".to_owned()],
            working_dir: "/".to_owned(),
            labels,
        },
        created: created.clone(),
        history: vec![History {
            created,
            created_by: format!(
                "dockerbuild: toolchain {} ({}, Debian {})",
                tc.name,
                tc.cross_triple,
                tc.debian()?.suite
            ),
        }],
        os: "linux",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![diff_id.clone()],
        },
    };
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");
    let layer_path = layer_file.path().to_owned();
    let (id, repo_tag) = write_docker_archive(
        tmp(".dockerbuild-image-")?,
        out,
        &tc.name,
        &config_bytes,
        &[(layer_hex, &layer_path)],
        epoch,
    )?;
    Ok(ImageInfo {
        id,
        diff_id,
        layer_size,
        repo_tag,
        dropped,
    })
}

/// Writes the image of a `[base]` toolchain to `out` (replaced atomically): the base
/// image's layers as served (`docker load` takes them compressed; the base config's
/// `diff_ids` name them uncompressed), then one layer of ours with the CMake toolchain
/// file, `tc.files` and the `overlays` (directories copied to their destinations). The
/// config is the base's with the toolchain's `env` merged in, our labels, our layer's
/// diff id and a history line added. The same inputs give the same bytes.
pub fn write_base_image_archive(
    base_config: &[u8],
    base_layers: &[PathBuf],
    tc: &Toolchain,
    overlays: &[(PathBuf, String)],
    out: &Path,
    epoch: u64,
) -> Result<ImageInfo> {
    let bad = |reason: String| ToolchainError::Resolve {
        toolchain: tc.name.clone(),
        reason: format!("its base image config {reason}"),
    };
    let mut config: serde_json::Value =
        serde_json::from_slice(base_config).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let tmp = |what| temp_beside(out, what);

    let obj = config
        .as_object_mut()
        .ok_or_else(|| bad("is not an object".into()))?;
    let run = obj
        .entry("config")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("has a `config` that is not an object".into()))?;
    // The toolchain's variables replace the base's of the same name; the others stay.
    let mut env: Vec<String> = run
        .get("Env")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    env.retain(|kv| {
        !tc.env
            .contains_key(kv.split('=').next().unwrap_or_default())
    });
    env.extend(tc.env.iter().map(|(k, v)| format!("{k}={v}")));
    let merged: BTreeMap<String, String> = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    run.insert("Env".into(), env.into());

    let layer_file = tmp(".dockerbuild-layer-")?;
    let mut hw = HashingWriter::new(BufWriter::new(layer_file.as_file()));
    let cmake = tc.cmake_toolchain_in(&merged);
    write_own_layer(tc, &cmake, overlays, &mut hw, epoch)?;
    let (layer_hex, layer_size) = hw
        .finish()
        .map_err(ToolchainError::io("write", layer_file.path()))?;
    let diff_id = format!("sha256:{layer_hex}");
    let mut labels = crate::docker::managed_labels(crate::docker::KIND_IMAGE);
    labels.insert(LABEL_TOOLCHAIN.to_owned(), tc.name.clone());
    let all_labels = run.entry("Labels").or_insert_with(|| serde_json::json!({}));
    if !all_labels.is_object() {
        *all_labels = serde_json::json!({});
    }
    for (k, v) in labels {
        all_labels[k] = v.into();
    }
    let created = rfc3339(epoch);
    obj.insert("created".into(), created.clone().into());
    let diff_ids = obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(|d| d.as_array_mut())
        .ok_or_else(|| bad("has no rootfs.diff_ids".into()))?;
    if diff_ids.len() != base_layers.len() {
        return Err(bad(format!(
            "names {} layers, its manifest {}",
            diff_ids.len(),
            base_layers.len()
        )));
    }
    diff_ids.push(diff_id.clone().into());
    let history = obj
        .entry("history")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(h) = history.as_array_mut() {
        h.push(serde_json::json!({
            "created": created,
            "created_by": format!("dockerbuild: toolchain {} ({})", tc.name, tc.cross_triple),
        }));
    }
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");

    let mut layers = Vec::new();
    for p in base_layers {
        let f = std::fs::File::open(p).map_err(ToolchainError::io("open", p))?;
        let mut hw = HashingWriter::new(std::io::sink());
        std::io::copy(&mut BufReader::new(f), &mut hw).map_err(ToolchainError::io("read", p))?;
        let (hex, _) = hw.finish().map_err(ToolchainError::io("read", p))?;
        layers.push((hex, p.as_path()));
    }
    let own = layer_file.path().to_owned();
    layers.push((layer_hex, &own));
    let (id, repo_tag) = write_docker_archive(
        tmp(".dockerbuild-image-")?,
        out,
        &tc.name,
        &config_bytes,
        &layers,
        epoch,
    )?;
    Ok(ImageInfo {
        id,
        diff_id,
        layer_size,
        repo_tag,
        dropped: Vec::new(),
    })
}

/// What our layer on a base image holds, by path (relative, sorted).
enum Own {
    Dir(u32),
    Bytes(Vec<u8>, u32),
    File(PathBuf, u32),
    Symlink(PathBuf),
}

/// The layer a `[base]` toolchain adds: the CMake toolchain file (`cmake`), `tc.files`
/// (executable) and the overlays, owned by root, dated `epoch`, sorted; the parent
/// directories of each are included (mode 0755).
fn write_own_layer(
    tc: &Toolchain,
    cmake: &str,
    overlays: &[(PathBuf, String)],
    out: &mut dyn Write,
    epoch: u64,
) -> Result<()> {
    let mut items: BTreeMap<PathBuf, Own> = BTreeMap::new();
    let rel = |abs: &str| PathBuf::from(abs.trim_start_matches('/'));
    items.insert(
        rel(super::CMAKE_TOOLCHAIN_PATH),
        Own::Bytes(cmake.as_bytes().to_vec(), 0o644),
    );
    for (path, text) in &tc.files {
        items.insert(rel(path), Own::Bytes(text.clone().into_bytes(), 0o755));
    }
    for (dir, to) in overlays {
        add_tree(dir, &rel(to), &mut items)?;
    }
    let parents: Vec<PathBuf> = items
        .keys()
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_owned))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    for p in parents {
        items.entry(p).or_insert(Own::Dir(0o755));
    }
    let mut b = tar::Builder::new(out);
    let werr = |e: std::io::Error| ToolchainError::Resolve {
        toolchain: tc.name.clone(),
        reason: format!("cannot write its layer: {e}"),
    };
    for (path, item) in &items {
        let mut h = Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(epoch);
        h.set_size(0);
        match item {
            Own::Dir(mode) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(*mode);
                b.append_data(&mut h, path, std::io::empty())
                    .map_err(werr)?;
            }
            Own::Bytes(bytes, mode) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, &bytes[..]).map_err(werr)?;
            }
            Own::File(src, mode) => {
                let f = std::fs::File::open(src).map_err(ToolchainError::io("open", src))?;
                let len = f.metadata().map_err(ToolchainError::io("read", src))?.len();
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(len);
                b.append_data(&mut h, path, BufReader::new(f))
                    .map_err(werr)?;
            }
            Own::Symlink(target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).map_err(werr)?;
            }
        }
    }
    b.into_inner().map_err(werr)?.flush().map_err(werr)
}

/// Adds the tree at `dir` under `to`: directories, regular files (their permission bits
/// kept) and symlinks.
fn add_tree(dir: &Path, to: &Path, items: &mut BTreeMap<PathBuf, Own>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).map_err(ToolchainError::io("read", dir))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let t = std::fs::read_link(dir).map_err(ToolchainError::io("read", dir))?;
        items.insert(to.to_owned(), Own::Symlink(t));
    } else if meta.is_dir() {
        items.insert(to.to_owned(), Own::Dir(mode));
        for e in std::fs::read_dir(dir).map_err(ToolchainError::io("read", dir))? {
            let e = e.map_err(ToolchainError::io("read", dir))?;
            add_tree(&e.path(), &to.join(e.file_name()), items)?;
        }
    } else if meta.is_file() {
        items.insert(to.to_owned(), Own::File(dir.to_owned(), mode));
    }
    Ok(())
}

/// Writes a `docker load` archive of `config` and `layers` (each its file's SHA-256 hex
/// and path) into `archive`, then moves it to `out`. Returns the image id and the tag it
/// carries.
fn write_docker_archive(
    archive: tempfile::NamedTempFile,
    out: &Path,
    name: &str,
    config_bytes: &[u8],
    layers: &[(String, &Path)],
    epoch: u64,
) -> Result<(String, String)> {
    let config_hex = hex::encode(Sha256::digest(config_bytes));
    let id = format!("sha256:{config_hex}");
    let repo_tag = format!("dockerbuild/{name}:{}", &config_hex[..12]);
    let manifest = serde_json::to_vec(&[Manifest {
        config: format!("blobs/sha256/{config_hex}"),
        repo_tags: vec![repo_tag.clone()],
        layers: layers
            .iter()
            .map(|(hex, _)| format!("blobs/sha256/{hex}"))
            .collect(),
    }])
    .expect("manifest serializes");

    // The archive, entries sorted by name; a layer listed twice is stored once.
    let mut b = tar::Builder::new(BufWriter::new(archive.as_file()));
    let head = |kind: EntryType, mode: u32, size: u64| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(epoch);
        h.set_size(size);
        h
    };
    let mut blobs: Vec<(String, Blob)> = vec![(config_hex.clone(), Blob::Bytes(config_bytes))];
    blobs.extend(layers.iter().map(|(hex, p)| (hex.clone(), Blob::File(p))));
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    (|| -> std::io::Result<()> {
        for d in ["blobs/", "blobs/sha256/"] {
            b.append_data(
                &mut head(EntryType::Directory, 0o755, 0),
                d,
                std::io::empty(),
            )?;
        }
        for (hex, blob) in &blobs {
            let name = format!("blobs/sha256/{hex}");
            match blob {
                Blob::Bytes(bytes) => b.append_data(
                    &mut head(EntryType::Regular, 0o644, bytes.len() as u64),
                    &name,
                    *bytes,
                )?,
                Blob::File(p) => {
                    let f = std::fs::File::open(p)?;
                    let len = f.metadata()?.len();
                    b.append_data(
                        &mut head(EntryType::Regular, 0o644, len),
                        &name,
                        BufReader::new(f),
                    )?
                }
            }
        }
        b.append_data(
            &mut head(EntryType::Regular, 0o644, manifest.len() as u64),
            "manifest.json",
            &manifest[..],
        )?;
        b.into_inner()?.flush()
    })()
    .map_err(ToolchainError::io("write", archive.path()))?;
    archive
        .as_file()
        .sync_all()
        .map_err(ToolchainError::io("write", archive.path()))?;
    archive
        .persist(out)
        .map_err(|e| ToolchainError::io("write", out)(e.error))?;
    Ok((id, repo_tag))
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    config: RunConfig,
    created: String,
    history: Vec<History>,
    os: &'static str,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RunConfig {
    #[serde(rename = "Env")]
    env: Vec<String>,
    #[serde(rename = "Cmd")]
    cmd: Vec<String>,
    #[serde(rename = "WorkingDir")]
    working_dir: String,
    #[serde(rename = "Labels")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A writer computing SHA-256 and length of what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.inner.flush()?;
        Ok((hex::encode(self.sha.finalize()), self.len))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One entry of the root filesystem.
#[derive(Debug, Clone)]
struct Item {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    /// Data at `offset` of the input, `size` bytes.
    File {
        offset: u64,
        size: u64,
    },
    Symlink(Vec<u8>),
    /// A hard link to another path of the tar.
    Hardlink(Vec<u8>),
}

/// `./a/b/`, `/a/b` → `a/b`; the root is empty.
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    let mut v = p.to_vec();
    while v.last() == Some(&b'/') {
        v.pop();
    }
    if v == b"." {
        v.clear();
    }
    v
}

/// Reads the root filesystem tar, normalizes it and writes the layer to `out`. Returns
/// the paths left out.
fn write_layer(rootfs_tar: &Path, out: &mut dyn Write, epoch: u64) -> Result<Vec<String>> {
    let bad = |reason: String| ToolchainError::BadRootfs {
        path: rootfs_tar.to_owned(),
        reason,
    };
    let file = std::fs::File::open(rootfs_tar).map_err(ToolchainError::io("open", rootfs_tar))?;
    let mut ar = tar::Archive::new(BufReader::new(file));
    let mut items: BTreeMap<Vec<u8>, Item> = BTreeMap::new();
    let mut dropped = Vec::new();
    let entries = ar
        .entries_with_seek()
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    for e in entries {
        let e = e.map_err(|e| bad(format!("cannot read it: {e}")))?;
        let h = e.header();
        let path = normalize(&e.path_bytes());
        let kind = match h.entry_type() {
            EntryType::Regular | EntryType::Continuous => Kind::File {
                offset: e.raw_file_position(),
                size: e.size(),
            },
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(
                e.link_name_bytes()
                    .ok_or_else(|| bad(format!("symlink `{}` has no target", lossy(&path))))?
                    .into_owned(),
            ),
            EntryType::Link => {
                Kind::Hardlink(normalize(&e.link_name_bytes().ok_or_else(|| {
                    bad(format!("hard link `{}` has no target", lossy(&path)))
                })?))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                dropped.push(format!("/{}", lossy(&path)));
                continue;
            }
            // PAX and GNU extension headers are applied by the reader; anything else has no
            // place in a layer.
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            other => return Err(bad(format!("`{}` has entry type {other:?}", lossy(&path)))),
        };
        if path.is_empty() {
            continue; // the root directory itself
        }
        let mode = h
            .mode()
            .map_err(|e| bad(format!("`{}`: {e}", lossy(&path))))?
            & 0o7777;
        let uid = h
            .uid()
            .map_err(|e| bad(format!("`{}`: {e}", lossy(&path))))?;
        let gid = h
            .gid()
            .map_err(|e| bad(format!("`{}`: {e}", lossy(&path))))?;
        // A later entry for the same path replaces an earlier one, as on extraction.
        items.insert(
            path,
            Item {
                kind,
                mode,
                uid,
                gid,
            },
        );
    }
    canonical_hardlinks(&mut items).map_err(bad)?;

    let mut input = BufReader::new(
        std::fs::File::open(rootfs_tar).map_err(ToolchainError::io("open", rootfs_tar))?,
    );
    let mut b = tar::Builder::new(out);
    let werr = |e: std::io::Error| bad(format!("cannot write the layer: {e}"));
    for (path, item) in &items {
        let p = Path::new(OsStr::from_bytes(path));
        let mut h = Header::new_gnu();
        h.set_mode(item.mode);
        h.set_uid(item.uid);
        h.set_gid(item.gid);
        h.set_mtime(epoch);
        h.set_size(0);
        match &item.kind {
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                b.append_data(&mut h, p, std::io::empty()).map_err(werr)?;
            }
            Kind::File { offset, size } => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(*size);
                input
                    .seek(SeekFrom::Start(*offset))
                    .map_err(ToolchainError::io("read", rootfs_tar))?;
                let mut data = (&mut input).take(*size);
                b.append_data(&mut h, p, &mut data).map_err(werr)?;
            }
            Kind::Symlink(target) | Kind::Hardlink(target) => {
                h.set_entry_type(if matches!(item.kind, Kind::Symlink(_)) {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                });
                let t = Path::new(OsStr::from_bytes(target));
                b.append_link(&mut h, p, t).map_err(werr)?;
            }
        }
    }
    b.into_inner().map_err(werr)?.flush().map_err(werr)?;
    dropped.sort();
    Ok(dropped)
}

/// Rewrites hard links so that each group of paths sharing one file has its data at the
/// first path in sorted order and every other path links to that one.
fn canonical_hardlinks(items: &mut BTreeMap<Vec<u8>, Item>) -> std::result::Result<(), String> {
    // Each link's ultimate target (the path holding the data).
    let mut groups: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    for (path, item) in items.iter() {
        if let Kind::Hardlink(_) = item.kind {
            let mut target = path.clone();
            let mut hops = 0;
            while let Some(Item {
                kind: Kind::Hardlink(t),
                ..
            }) = items.get(&target)
            {
                target = t.clone();
                hops += 1;
                if hops > items.len() {
                    return Err(format!("hard link `{}` is part of a cycle", lossy(path)));
                }
            }
            match items.get(&target) {
                Some(Item {
                    kind: Kind::File { .. },
                    ..
                }) => groups.entry(target).or_default().push(path.clone()),
                _ => {
                    return Err(format!(
                        "hard link `{}` points to `{}`, which is not a regular file in the tar",
                        lossy(path),
                        lossy(&target)
                    ));
                }
            }
        }
    }
    for (data_path, mut links) in groups {
        links.push(data_path.clone());
        links.sort();
        let first = links[0].clone();
        if first != data_path {
            let data = items.get(&data_path).cloned().expect("present");
            items.insert(first.clone(), data);
        }
        for l in &links[1..] {
            let meta = items.get(l).cloned().expect("present");
            items.insert(
                l.clone(),
                Item {
                    kind: Kind::Hardlink(first.clone()),
                    ..meta
                },
            );
        }
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base image's archive: the same inputs give the same bytes; the config keeps the
    /// base's fields, merges `env`, appends our layer's diff id and history; our layer
    /// holds the CMake file, `files` and overlays with their parents.
    #[test]
    fn base_image_archives_are_deterministic_and_extend_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let tc = Toolchain::parse(
            r##"
            name = "dockcross-arm64"
            cross_triple = "aarch64-linux-gnu"
            wheel_tags = ["linux_aarch64"]
            cipd_platform = "linux-arm64"
            [base]
            image = "dockcross/linux-arm64:1"
            [files]
            "/usr/local/bin/w" = "#!/bin/sh\n"
            [env]
            CC = "/usr/xcc/bin/cc"
            "##,
            Path::new("t.toml"),
        )
        .unwrap();
        let base_layer = dir.path().join("layer");
        std::fs::write(&base_layer, b"not looked into").unwrap();
        let base_config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/xcc/bin:/bin","CC=gcc","CXX=/usr/xcc/bin/c++"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:00"]},"history":[{"created_by":"base"}]}"#;
        let overlay = dir.path().join("overlay");
        std::fs::create_dir_all(overlay.join("bin")).unwrap();
        std::fs::write(overlay.join("bin/zig"), b"zig").unwrap();
        let overlays = [(overlay, "/opt/zig".to_owned())];
        let write = |name: &str| {
            let out = dir.path().join(name);
            let info = write_base_image_archive(
                base_config,
                std::slice::from_ref(&base_layer),
                &tc,
                &overlays,
                &out,
                7,
            )
            .unwrap();
            (info, std::fs::read(&out).unwrap())
        };
        let (a, bytes_a) = write("a.tar");
        let (b, bytes_b) = write("b.tar");
        assert_eq!(a, b);
        assert_eq!(bytes_a, bytes_b, "byte-identical archives");

        let mut ar = tar::Archive::new(&bytes_a[..]);
        let mut files = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), v);
        }
        let hex = a.id.trim_start_matches("sha256:");
        let config: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap();
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!([
                "PATH=/usr/xcc/bin:/bin",
                "CXX=/usr/xcc/bin/c++",
                "CC=/usr/xcc/bin/cc"
            ])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!(
            config["config"]["Labels"][LABEL_TOOLCHAIN],
            "dockcross-arm64"
        );
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:00", a.diff_id])
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
        let own = &files[&format!("blobs/sha256/{}", a.diff_id.trim_start_matches("sha256:"))];
        let mut names = Vec::new();
        let mut cmake = String::new();
        for e in tar::Archive::new(&own[..]).entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().ends_with("toolchain.cmake") {
                e.read_to_string(&mut cmake).unwrap();
            }
            assert_eq!(
                (e.header().uid().unwrap(), e.header().mtime().unwrap()),
                (0, 7)
            );
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        for want in [
            "usr/lib/dockerbuild/toolchain.cmake",
            "usr/local/bin/w",
            "opt/zig/bin/zig",
            "opt",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want}: {names:?}"
            );
        }
        // The compilers the image has: the toolchain's CC, the base's CXX.
        assert!(
            cmake.contains("set(CMAKE_C_COMPILER /usr/xcc/bin/cc)"),
            "{cmake}"
        );
        assert!(
            cmake.contains("set(CMAKE_CXX_COMPILER /usr/xcc/bin/c++)"),
            "{cmake}"
        );
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "sorted");

        // A config whose layers do not match the manifest's is refused.
        let e = write_base_image_archive(base_config, &[], &tc, &[], &dir.path().join("c.tar"), 7)
            .unwrap_err();
        assert!(e.to_string().contains("names 1 layers"), "{e}");
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize(b"./"), b"");
        assert_eq!(normalize(b"."), b"");
        assert_eq!(normalize(b"./usr/bin/"), b"usr/bin");
        assert_eq!(normalize(b"/etc/passwd"), b"etc/passwd");
    }

    #[test]
    fn hardlink_groups_are_canonical() {
        let file = |o| Item {
            kind: Kind::File { offset: o, size: 1 },
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let link = |t: &str| Item {
            kind: Kind::Hardlink(t.as_bytes().to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let mut items = BTreeMap::from([
            (b"z".to_vec(), file(7)),
            (b"a".to_vec(), link("z")),
            (b"m".to_vec(), link("a")),
        ]);
        canonical_hardlinks(&mut items).unwrap();
        assert_eq!(
            items[&b"a".to_vec()].kind,
            Kind::File { offset: 7, size: 1 }
        );
        assert_eq!(items[&b"a".to_vec()].mode, 0o755);
        assert_eq!(items[&b"m".to_vec()].kind, Kind::Hardlink(b"a".to_vec()));
        assert_eq!(items[&b"z".to_vec()].kind, Kind::Hardlink(b"a".to_vec()));

        let mut bad = BTreeMap::from([(b"a".to_vec(), link("b"))]);
        assert!(
            canonical_hardlinks(&mut bad)
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}
