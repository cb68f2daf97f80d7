//! A project: a directory with a catalogue of sources (`sources.toml`) and the lockfile
//! pinning them (`lockfiles/dockerbuild.lock`). Locking resolves and fetches what changed;
//! fetching brings every pinned source into the store.
//!
//! ```toml
//! # sources.toml
//! [[source]]
//! name = "zlib"
//! version = "1.2.13"
//! urls = ["debian:bookworm/zlib=1:1.2.13.dfsg-1"]
//!
//! [[source]]
//! name = "hello"
//! version = "1.0"
//! urls = ["https://example.invalid/hello-1.0.tar.gz", "file:///srv/mirror/hello-1.0.tar.gz"]
//! sha256 = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"
//! size = 1234
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::fetch::Fetched;
use crate::lock::LockedToolchain;
use crate::lock::{Change, LockError, LockedSource, Lockfile};
use crate::progress::Progress;
use crate::source::{Fetcher, Pin, SourceError, SourceSpec, check_sha256, debian};
use crate::store::{Entry, LocalStore, Store, StoreError, sanitize_name, validate_name};
use crate::toolchain::{self, DebPin, Toolchain, ToolchainError};

impl From<ToolchainError> for ProjectError {
    fn from(e: ToolchainError) -> Self {
        ProjectError::Toolchain(Box::new(e))
    }
}

/// What a toolchain's closure depends on: its `[debian]` section and the base packages.
pub fn toolchain_definition(tc: &Toolchain) -> Digest {
    let json = serde_json::to_vec(&(&tc.debian, toolchain::base_packages(tc)))
        .expect("definition serializes");
    Digest::of(&json)
}

/// The apt pin a lockfile `deb` entry was made from ([`deb_entry`]'s inverse).
pub fn deb_pin(d: &LockedSource) -> Option<DebPin> {
    let spec = d.urls.first()?.strip_prefix("debian:")?;
    let (suite, rest) = spec.split_once("/binary-")?;
    let (arch, rest) = rest.split_once('/')?;
    let (package, version) = rest.split_once('=')?;
    let (_, path) = d
        .locations
        .first()?
        .strip_prefix("debian-pool:")?
        .split_once(':')?;
    Some(DebPin {
        package: package.to_owned(),
        version: version.to_owned(),
        arch: arch.to_owned(),
        suite: suite.to_owned(),
        path: path.to_owned(),
        sha256: d.sha256.clone(),
        size: d.size,
    })
}

/// A resolved `.deb` as a lockfile entry (its store address still unknown).
fn deb_entry(pin: &DebPin) -> LockedSource {
    let file = pin.file_name().to_owned();
    LockedSource {
        name: sanitize_name(file.trim_end_matches(".deb")),
        version: pin.version.clone(),
        urls: vec![format!(
            "debian:{}/binary-{}/{}={}",
            pin.suite, pin.arch, pin.package, pin.version
        )],
        file: sanitize_name(&file),
        locations: vec![pin.location()],
        sha256: pin.sha256.clone(),
        size: pin.size,
        blake3: Digest([0; 32]),
    }
}

/// The catalogue file name at a project's root.
pub const CATALOG: &str = "sources.toml";
/// The lockfile, relative to the project root.
pub const LOCKFILE: &str = "lockfiles/dockerbuild.lock";
/// Platform definitions, relative to the project root.
pub const TOOLCHAINS: &str = "toolchains";

/// Every `*.toml` file directly in `dir`, sorted (toolchain and recipe definitions).
pub(crate) fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            paths.push(p);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The recipes directory, relative to the project root.
pub const RECIPES: &str = "recipes";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default, rename = "source")]
    sources: Vec<SourceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no `{CATALOG}` in `{}` or any parent directory\nhint: run dockerbuild in a project, or pass --project DIR", start.display())]
    NotFound { start: PathBuf },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is malformed:\n{source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("`{}`: source `{name}` is listed twice", path.display())]
    Duplicate { path: PathBuf, name: String },
    #[error("`{}`: source name `{name}` is invalid: {reason}", path.display())]
    BadName {
        path: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("`--update {name}`: there is no source `{name}` in `{}`", path.display())]
    UnknownSource { path: PathBuf, name: String },
    #[error(
        "the lockfile `{}` is out of date and --locked forbids changing it; it would:\n  {}\nhint: run `dockerbuild lock` and commit the lockfile",
        path.display(),
        changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Locked { path: PathBuf, changes: Vec<Change> },
    #[error("cannot write lockfile `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Toolchain(Box<ToolchainError>),
    #[error(transparent)]
    BaseImage(#[from] Box<crate::base_image::BaseImageError>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A project directory and its catalogue.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub sources: Vec<SourceSpec>,
    /// `toolchains/*.toml`, sorted by name (none if the directory does not exist).
    pub toolchains: Vec<Toolchain>,
}

/// What happened to one source in `fetch_all`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchOutcome {
    pub name: String,
    pub file: String,
    pub path: PathBuf,
    /// Already in the store: no network was used.
    pub present: bool,
    pub bytes: u64,
}

impl Project {
    /// Finds the project: `dir` itself if given, else the nearest ancestor of the current
    /// directory with a `sources.toml`.
    pub fn discover(dir: Option<&Path>) -> Result<Project, ProjectError> {
        if let Some(d) = dir {
            return Project::open(d);
        }
        let cwd = std::env::current_dir().map_err(|source| ProjectError::Read {
            path: ".".into(),
            source,
        })?;
        let mut at = cwd.as_path();
        loop {
            if at.join(CATALOG).is_file() {
                return Project::open(at);
            }
            match at.parent() {
                Some(p) => at = p,
                None => return Err(ProjectError::NotFound { start: cwd }),
            }
        }
    }

    /// Reads and checks `root/sources.toml`.
    pub fn open(root: &Path) -> Result<Project, ProjectError> {
        let path = root.join(CATALOG);
        let text = std::fs::read_to_string(&path).map_err(|source| ProjectError::Read {
            path: path.clone(),
            source,
        })?;
        let file: CatalogFile = toml::from_str(&text).map_err(|source| ProjectError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut seen = std::collections::HashSet::new();
        for s in &file.sources {
            if !seen.insert(s.name.clone()) {
                return Err(ProjectError::Duplicate {
                    path,
                    name: s.name.clone(),
                });
            }
            if let Err(e) = validate_name(&s.name) {
                return Err(ProjectError::BadName {
                    path,
                    name: s.name.clone(),
                    reason: e.reason,
                });
            }
            if s.urls.is_empty() {
                return Err(SourceError::NoUrls {
                    name: s.name.clone(),
                }
                .into());
            }
            if let Some(h) = &s.sha256 {
                check_sha256(&s.name, h)?;
            }
        }
        let tc_dir = root.join(TOOLCHAINS);
        let toolchains = if tc_dir.is_dir() {
            toolchain::load_all(&tc_dir)?
        } else {
            Vec::new()
        };
        Ok(Project {
            root: root.to_owned(),
            sources: file.sources,
            toolchains,
        })
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.root.join(CATALOG)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join(LOCKFILE)
    }

    pub fn read_lock(&self) -> Result<Option<Lockfile>, ProjectError> {
        Ok(Lockfile::read(&self.lock_path())?)
    }

    /// Refuses `--update` names that are not in the catalogue.
    pub fn check_update(&self, update: &[String]) -> Result<(), ProjectError> {
        match update.iter().find(|u| {
            !self.sources.iter().any(|s| &s.name == *u)
                && !self.toolchains.iter().any(|t| &t.name == *u)
        }) {
            Some(u) => Err(ProjectError::UnknownSource {
                path: self.catalog_path(),
                name: u.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a pin still describes its catalogue entry (no network needed).
    fn current(spec: &SourceSpec, pin: &LockedSource) -> bool {
        pin.urls == spec.urls
            && pin.version == spec.version
            && spec
                .sha256
                .as_ref()
                .is_none_or(|h| h.eq_ignore_ascii_case(&pin.sha256))
            && spec.size.is_none_or(|s| s == pin.size)
    }

    /// What `lock` would change, without resolving anything: sources added, removed, or
    /// whose catalogue entry no longer matches its pin (and those named in `update`).
    pub fn stale(&self, lock: Option<&Lockfile>, update: &[String]) -> Vec<Change> {
        let empty = Lockfile::empty();
        let lock = lock.unwrap_or(&empty);
        let mut out = Vec::new();
        for s in &self.sources {
            match lock.get(&s.name) {
                None => out.push(Change::Added(s.name.clone())),
                Some(p) if !Self::current(s, p) || update.contains(&s.name) => {
                    out.push(Change::Changed {
                        name: s.name.clone(),
                        fields: vec!["catalogue entry"],
                    })
                }
                Some(_) => {}
            }
        }
        for p in &lock.sources {
            if !self.sources.iter().any(|s| s.name == p.name) {
                out.push(Change::Removed(p.name.clone()));
            }
        }
        for tc in self.toolchains.iter().filter(|t| t.debian.is_some()) {
            let label = format!("toolchain {}", tc.name);
            match lock.toolchain(&tc.name) {
                None => out.push(Change::Added(label)),
                Some(t)
                    if t.definition != toolchain_definition(tc) || update.contains(&tc.name) =>
                {
                    out.push(Change::Changed {
                        name: label,
                        fields: vec!["[debian] section"],
                    })
                }
                Some(_) => {}
            }
        }
        for t in &lock.toolchains {
            if !self
                .toolchains
                .iter()
                .any(|tc| tc.name == t.name && tc.debian.is_some())
            {
                out.push(Change::Removed(format!("toolchain {}", t.name)));
            }
        }
        for tc in &self.toolchains {
            let Some(base) = &tc.base else { continue };
            let label = format!("base image of {}", tc.name);
            match lock.base_image(&tc.name) {
                None => out.push(Change::Added(label)),
                Some(b)
                    if b.image != base.image
                        || b.platform != base.platform
                        || update.contains(&tc.name) =>
                {
                    out.push(Change::Changed {
                        name: label,
                        fields: vec!["[base] section"],
                    })
                }
                Some(_) => {}
            }
        }
        for b in &lock.base_images {
            if !self
                .toolchains
                .iter()
                .any(|tc| tc.name == b.toolchain && tc.base.is_some())
            {
                out.push(Change::Removed(format!("base image of {}", b.toolchain)));
            }
        }
        out
    }

    /// Computes the new lockfile: current pins are kept as they are; new, changed and
    /// `update`d sources are resolved and fetched (a pin needs the file's store address).
    pub fn lock(
        &self,
        store: &LocalStore,
        fetcher: &Fetcher,
        old: Option<&Lockfile>,
        update: &[String],
        progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
    ) -> Result<Lockfile, ProjectError> {
        self.check_update(update)?;
        let mirrors_needed = self.sources.iter().any(|s| {
            s.urls.iter().any(|u| u.starts_with("debian:"))
                && old
                    .and_then(|l| l.get(&s.name))
                    .is_none_or(|p| !Self::current(s, p) || update.contains(&s.name))
        });
        let toolchains_stale: Vec<&Toolchain> = self
            .toolchains
            .iter()
            .filter(|tc| tc.debian.is_some())
            .filter(|tc| {
                old.and_then(|l| l.toolchain(&tc.name)).is_none_or(|t| {
                    t.definition != toolchain_definition(tc) || update.contains(&tc.name)
                })
            })
            .collect();
        let mirrors_needed = mirrors_needed || !toolchains_stale.is_empty();
        let mirrors = if mirrors_needed {
            Some(debian::Mirrors::from_system().map_err(SourceError::from)?)
        } else {
            None
        };
        let mut resolver = mirrors
            .as_ref()
            .map(|m| debian::Resolver::new(m, &fetcher.http));
        let mut new = Lockfile::empty();
        for spec in &self.sources {
            if let Some(p) = old.and_then(|l| l.get(&spec.name))
                && Self::current(spec, p)
                && !update.contains(&spec.name)
            {
                new.sources.push(p.clone());
                continue;
            }
            let res = fetcher.resolve(spec, &mut resolver)?;
            let pin = Pin {
                name: &spec.name,
                version: &spec.version,
                file: &res.file,
                locations: &res.locations,
                sha256: res.sha256.as_deref(),
                size: res.size,
                blake3: None,
            };
            let bar = progress(&spec.name);
            let (entry, fetched): (Entry, Fetched) = fetcher.fetch(store, &pin, bar.as_ref())?;
            new.sources.push(LockedSource {
                name: spec.name.clone(),
                version: spec.version.clone(),
                urls: spec.urls.clone(),
                file: res.file.clone(),
                locations: res.locations.clone(),
                sha256: fetched.sha256,
                size: fetched.size,
                blake3: entry.meta.digest,
            });
        }
        new.sources.sort_by(|a, b| a.name.cmp(&b.name));
        self.lock_toolchains(
            store,
            fetcher,
            old,
            &toolchains_stale,
            mirrors.as_ref(),
            &mut new,
            progress,
        )?;
        self.lock_base_images(old, update, &mut new)?;
        Ok(new)
    }

    /// Keeps current base image pins (and their mirrors) and pins new or changed ones
    /// through their registry.
    fn lock_base_images(
        &self,
        old: Option<&Lockfile>,
        update: &[String],
        new: &mut Lockfile,
    ) -> Result<(), ProjectError> {
        for tc in &self.toolchains {
            let Some(base) = &tc.base else { continue };
            let kept = old.and_then(|l| l.base_image(&tc.name)).filter(|b| {
                b.image == base.image && b.platform == base.platform && !update.contains(&tc.name)
            });
            new.base_images.push(match kept {
                Some(b) => b.clone(),
                None => crate::base_image::pin(&tc.name, base).map_err(Box::new)?,
            });
        }
        new.base_images
            .sort_by(|a, b| a.toolchain.cmp(&b.toolchain));
        Ok(())
    }

    /// Keeps current toolchain closures and resolves stale ones with apt, fetching
    /// every `.deb` not pinned before (a pin needs its store address).
    #[allow(clippy::too_many_arguments)]
    fn lock_toolchains(
        &self,
        store: &LocalStore,
        fetcher: &Fetcher,
        old: Option<&Lockfile>,
        stale: &[&Toolchain],
        mirrors: Option<&debian::Mirrors>,
        new: &mut Lockfile,
        progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
    ) -> Result<(), ProjectError> {
        let mut wanted: Vec<LockedSource> = Vec::new();
        for tc in self.toolchains.iter().filter(|t| t.debian.is_some()) {
            let locked = if stale.iter().any(|s| s.name == tc.name) {
                let mirrors = mirrors.expect("mirrors are read when a toolchain is stale");
                let pins = toolchain::resolve_closure(tc, mirrors)?;
                let debs: Vec<LockedSource> = pins.iter().map(deb_entry).collect();
                let mut names: Vec<String> = debs.iter().map(|d| d.name.clone()).collect();
                names.sort();
                names.dedup();
                wanted.extend(debs);
                LockedToolchain {
                    name: tc.name.clone(),
                    definition: toolchain_definition(tc),
                    debs: names,
                }
            } else {
                let old = old.expect("current toolchains come from the old lockfile");
                let t = old.toolchain(&tc.name).expect("current").clone();
                wanted.extend(t.debs.iter().filter_map(|d| old.deb(d)).cloned());
                t
            };
            new.toolchains.push(locked);
        }
        wanted.sort_by(|a, b| a.name.cmp(&b.name));
        wanted.dedup_by(|a, b| a.name == b.name);
        // Reuse earlier pins of the same file; fetch the rest to learn their addresses.
        let mut to_fetch = Vec::new();
        for d in wanted {
            match old.and_then(|o| o.deb(&d.name)) {
                Some(prev) if prev.sha256 == d.sha256 && prev.locations == d.locations => {
                    new.debs.push(prev.clone())
                }
                _ => to_fetch.push(d),
            }
        }
        let results = parallel(&to_fetch, 4, |d| {
            // Not pinned yet: its store address is what this fetch learns.
            let pin = Pin {
                blake3: None,
                ..pin(d)
            };
            let bar = progress(&d.name);
            fetcher.fetch(store, &pin, bar.as_ref())
        });
        for (mut d, r) in to_fetch.into_iter().zip(results) {
            let (entry, _) = r?;
            d.blake3 = entry.meta.digest;
            new.debs.push(d);
        }
        new.toolchains.sort_by(|a, b| a.name.cmp(&b.name));
        new.debs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Writes the lockfile atomically, only if its text changes. Returns whether it did.
    pub fn write_lock(&self, lock: &Lockfile) -> Result<bool, ProjectError> {
        let path = self.lock_path();
        let text = lock.to_text();
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return Ok(false);
        }
        let dir = path.parent().expect("lockfile has a parent");
        let err = |source| ProjectError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(true)
    }
}

/// Runs `f` over `items`, `jobs` at a time, keeping the results in order.
fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Fetches every pinned source and `.deb` not yet in the store, `jobs` at a time.
/// Those already present cost no network.
pub fn fetch_all(
    store: &LocalStore,
    fetcher: &Fetcher,
    caches: &crate::cache::Caches,
    lock: &Lockfile,
    jobs: usize,
    progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
) -> Result<Vec<FetchOutcome>, Vec<SourceError>> {
    let all: Vec<&LockedSource> = lock.sources.iter().chain(&lock.debs).collect();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in parallel(&all, jobs, |p| {
        fetch_one(store, fetcher, caches, p, progress)
    }) {
        match r {
            Ok(o) => ok.push(o),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

use std::sync::Mutex;

/// How a lockfile entry is fetched: every pin it records must hold.
pub fn pin(p: &LockedSource) -> Pin<'_> {
    Pin {
        name: &p.name,
        version: &p.version,
        file: &p.file,
        locations: &p.locations,
        sha256: Some(&p.sha256),
        size: Some(p.size),
        blake3: Some(p.blake3),
    }
}

/// Brings one locked file into the store unless it is there already (no network then).
pub fn fetch_one(
    store: &LocalStore,
    fetcher: &Fetcher,
    caches: &crate::cache::Caches,
    p: &LockedSource,
    progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
) -> Result<FetchOutcome, SourceError> {
    // A source is keyed by its own digest in binary caches: a cache's copy is as good as
    // upstream's, since the store re-hashes it on the way in.
    if let Some(e) = store.get(&p.blake3)? {
        caches.offer_source(store, &e)?;
        return Ok(FetchOutcome {
            name: p.name.clone(),
            file: p.file.clone(),
            path: e.path,
            present: true,
            bytes: 0,
        });
    }
    let bar = progress(&p.name);
    if let Some(hit) = caches.substitute_content(store, &p.blake3, bar.as_ref())? {
        tracing::info!(source = p.name, cache = hit.cache, "substituted");
        return Ok(FetchOutcome {
            name: p.name.clone(),
            file: p.file.clone(),
            path: hit.entry.path,
            present: false,
            bytes: p.size,
        });
    }
    let (entry, fetched) = fetcher.fetch(store, &pin(p), bar.as_ref())?;
    caches.offer_source(store, &entry)?;
    Ok(FetchOutcome {
        name: p.name.clone(),
        file: p.file.clone(),
        path: entry.path,
        present: false,
        bytes: fetched.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_entries_round_trip() {
        let pin = DebPin {
            package: "libc6-dev".into(),
            version: "2.36-9+deb12u13".into(),
            arch: "arm64".into(),
            suite: "bookworm-security".into(),
            path: "pool/updates/main/g/glibc/libc6-dev_2.36-9+deb12u13_arm64.deb".into(),
            sha256: "ab".repeat(32),
            size: 42,
        };
        let e = deb_entry(&pin);
        assert_eq!(e.file, "libc6-dev_2.36-9+deb12u13_arm64.deb");
        assert_eq!(deb_pin(&e), Some(pin));
    }

    #[test]
    fn the_documented_catalogue_parses() {
        let text: String = crate::testutil::doc_toml_example(include_str!("project.rs"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG), text).unwrap();
        let p = Project::open(dir.path()).unwrap();
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.stale(None, &[]).len(), 2);
    }
}
