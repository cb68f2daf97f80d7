//! Hermetic builds: a script run in a platform's toolchain image that sees only what it
//! declared, whose output becomes a store entry keyed by everything that went into it.
//!
//! Inside the container:
//! - every input entry is mounted read-only at `/inputs/<name>` (the host store's path
//!   never appears, so it cannot reach outputs or keys);
//! - `/build` is a writable scratch directory (the working directory, `HOME` below it);
//! - `/out` is the output directory, empty at the start;
//! - no network, an unprivileged uid (even when the caller is root), `TZ=UTC`,
//!   `LC_ALL=C`, `SOURCE_DATE_EPOCH`, the toolchain's environment and the build's own,
//!   and nothing else from the host.
//!
//! The key is the BLAKE3 of the image's key, the inputs (by name and digest), the script,
//! the environment and the output's name. A key already built is a lookup, not a build.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use tracing::info;

use crate::digest::Digest;
use crate::docker::{ContainerSpec, DockerError, Engine, Mount};
use crate::image::{self, Image, ImageError, SOURCE_DATE_EPOCH};
use crate::project::Project;
use crate::store::{BuildRecord, Entry, Kind, LocalStore, NewEntry, Store, StoreError};

/// Where inputs, scratch and output appear in the container.
pub const INPUTS: &str = "/inputs";
pub const SCRATCH: &str = "/build";
pub const OUT: &str = "/out";
/// The uid:gid builds run as.
pub const BUILD_USER: (u32, u32) = (1000, 1000);
const KEY_VERSION: &str = "dockerbuild-build-v1";

/// What to build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSpec {
    /// The output entry's name.
    pub name: String,
    /// The toolchain (a `toolchains/*.toml` name).
    pub platform: String,
    /// Input entries by mount name (`/inputs/<name>`).
    pub inputs: BTreeMap<String, Digest>,
    /// A bash script, run with `bash -euo pipefail` in `/build`.
    pub script: String,
    /// Variables set for the script (on top of the toolchain's).
    pub env: BTreeMap<String, String>,
    /// The output entry's kind: `output` unless the build makes an interpreter
    /// (`python`, `perl`) or a wheel. Left out of the key when `output`, so plain builds
    /// keep their keys.
    #[serde(skip_serializing_if = "is_output")]
    pub kind: Kind,
    /// The version recorded in the output's metadata (`3.11.2`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

fn is_output(k: &Kind) -> bool {
    *k == Kind::Output
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("build `{name}`: input `{input}` ({digest}) is not in the store")]
    MissingInput {
        name: String,
        input: String,
        digest: Digest,
    },
    #[error("build `{name}`: input name `{input}` must be a plain file name")]
    BadInputName { name: String, input: String },
    #[error(
        "build `{name}` failed with exit code {code}; the last lines of its output:\n{tail}{}",
        keep.as_ref().map(|k| format!("\nhint: its scratch directory was kept at {}", k.display())).unwrap_or_default()
    )]
    Failed {
        name: String,
        code: i64,
        tail: String,
        keep: Option<PathBuf>,
    },
    #[error("cannot prepare build `{name}`")]
    Prepare {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(Box<ImageError>),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ImageError> for BuildError {
    fn from(e: ImageError) -> Self {
        BuildError::Image(Box::new(e))
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    pub key: Digest,
    pub entry: Entry,
    /// Found in the store by its key (or substituted): nothing ran.
    pub cached: bool,
    /// The binary cache it was substituted from, if it was.
    pub substituted: Option<String>,
}

/// The build's key: everything that can change its output.
pub fn key(spec: &BuildSpec, image: &Image) -> Digest {
    key_for(spec, &image.key)
}

/// The build's key given only its image's key ([`crate::image::image_key`]), so that a
/// build already done needs no image.
pub fn key_for(spec: &BuildSpec, image_key: &Digest) -> Digest {
    let json = serde_json::to_vec(&(KEY_VERSION, image_key, spec)).expect("key serializes");
    Digest::of(&json)
}

fn origin(key: &Digest) -> String {
    format!("build:{}", key.to_hex())
}

/// The output already built for `key`, if any.
pub fn find(store: &LocalStore, key: &Digest) -> Result<Option<Entry>, StoreError> {
    store.resolve_key(key)
}

/// Options of one build run.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Keep the scratch directory of a failed build and say where.
    pub keep_failed: bool,
    /// Run the build even when the store or a cache has its output (`--rebuild`).
    pub rebuild: bool,
}

/// Runs a build (or finds its output): the image must already be generated.
pub fn build(
    store: &LocalStore,
    engine: &Engine,
    project: &Project,
    image: &Image,
    spec: &BuildSpec,
    opts: &BuildOptions,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Built, BuildError> {
    let key = key(spec, image);
    if !opts.rebuild
        && let Some(entry) = find(store, &key)?
    {
        return Ok(Built {
            key,
            entry,
            cached: true,
            substituted: None,
        });
    }
    let ran = build_unpublished(store, engine, project, image, spec, opts, output)?;
    let new = NewEntry {
        name: spec.name.clone(),
        kind: spec.kind,
        version: spec.version.clone(),
        origin: Some(origin(&key)),
        references: spec.inputs.values().copied().collect(),
        build: Some(BuildRecord {
            key,
            platform: spec.platform.clone(),
            log_tail: ran.log_tail.clone(),
        }),
    };
    let entry = store.add_path(&ran.out(), &new, &crate::progress::Silent)?;
    // The contents may already exist under another key: index this one too.
    store.bind_key(&key, &entry.meta.digest)?;
    Ok(Built {
        key,
        entry,
        cached: false,
        substituted: None,
    })
}

/// The output of a build that was not added to the store (`wheel-build --check`):
/// removed with this value.
pub struct Unpublished {
    pub key: Digest,
    work: tempfile::TempDir,
    log_tail: String,
}

impl Unpublished {
    /// The build's `/out`.
    pub fn out(&self) -> PathBuf {
        self.work.path().join("out")
    }
}

/// Runs a build again whatever the store holds, and keeps its output out of the store,
/// so that it can be compared with the entry its key already names. [`build`] publishes
/// what this makes.
pub fn build_unpublished(
    store: &LocalStore,
    engine: &Engine,
    project: &Project,
    image: &Image,
    spec: &BuildSpec,
    opts: &BuildOptions,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Unpublished, BuildError> {
    let key = key(spec, image);
    let tc = image::toolchain(project, &spec.platform)?;
    image::ensure_loaded(engine, image)?;
    let prepare = |source| BuildError::Prepare {
        name: spec.name.clone(),
        source,
    };
    let mut mounts = Vec::new();
    for (input, digest) in &spec.inputs {
        if input.is_empty() || input.contains('/') || input.starts_with('.') {
            return Err(BuildError::BadInputName {
                name: spec.name.clone(),
                input: input.clone(),
            });
        }
        let entry = store.get(digest)?.ok_or_else(|| BuildError::MissingInput {
            name: spec.name.clone(),
            input: input.clone(),
            digest: *digest,
        })?;
        mounts.push(Mount::read_only(entry.path, format!("{INPUTS}/{input}")));
    }
    let work = tempfile::Builder::new()
        .prefix("dockerbuild-build-")
        .tempdir()
        .map_err(prepare)?;
    let scratch = work.path().join("build");
    let out = work.path().join("out");
    for d in [&scratch, &out, &scratch.join("home")] {
        std::fs::create_dir_all(d).map_err(prepare)?;
    }
    // The build's unprivileged user must own its writable directories.
    let (uid, gid) = if rustix::process::geteuid().is_root() {
        for d in [&scratch, &out, &scratch.join("home")] {
            std::os::unix::fs::chown(d, Some(BUILD_USER.0), Some(BUILD_USER.1)).map_err(prepare)?;
        }
        BUILD_USER
    } else {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    };
    mounts.push(Mount::read_write(&scratch, SCRATCH));
    mounts.push(Mount::read_write(&out, OUT));

    let mut env: BTreeMap<String, String> = tc
        .image_env()
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    env.extend(spec.env.clone());
    for (k, v) in [
        ("HOME", format!("{SCRATCH}/home")),
        ("TZ", "UTC".to_owned()),
        ("LC_ALL", "C".to_owned()),
        ("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string()),
        ("DOCKERBUILD_INPUTS", INPUTS.to_owned()),
        ("DOCKERBUILD_OUT", OUT.to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    let mut c = ContainerSpec::new(
        image.id.clone(),
        ["bash", "-euo", "pipefail", "-c", spec.script.as_str()],
    );
    c.env = env.into_iter().collect();
    c.mounts = mounts;
    c.workdir = Some(SCRATCH.to_owned());
    c.user = Some(format!("{uid}:{gid}"));
    c.network = false;
    c.tmpfs.push("/tmp:rw,exec".to_owned());
    c.labels
        .insert("org.dockerbuild.build-key".to_owned(), key.to_hex());
    info!(name = %spec.name, %key, "building");
    let run = engine.run(&c, output)?;
    if !run.success() {
        let keep = if opts.keep_failed {
            Some(work.keep())
        } else {
            None
        };
        return Err(BuildError::Failed {
            name: spec.name.clone(),
            code: run.exit_code,
            tail: last_lines(&run.tail_lossy(), 25),
            keep,
        });
    }
    Ok(Unpublished {
        key,
        work,
        log_tail: last_lines(&run.tail_lossy(), 200),
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
