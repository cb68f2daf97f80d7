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

use crate::fetch::Fetched;
use crate::lock::{Change, LockError, LockedSource, Lockfile};
use crate::progress::Progress;
use crate::source::{Fetcher, Pin, SourceError, SourceSpec, check_sha256, debian};
use crate::store::{Entry, LocalStore, Store, StoreError, validate_name};

/// The catalogue file name at a project's root.
pub const CATALOG: &str = "sources.toml";
/// The lockfile, relative to the project root.
pub const LOCKFILE: &str = "lockfiles/dockerbuild.lock";

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
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A project directory and its catalogue.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub sources: Vec<SourceSpec>,
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
        Ok(Project {
            root: root.to_owned(),
            sources: file.sources,
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
        match update
            .iter()
            .find(|u| !self.sources.iter().any(|s| &s.name == *u))
        {
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
        progress: &dyn Fn(&str) -> Box<dyn Progress>,
    ) -> Result<Lockfile, ProjectError> {
        self.check_update(update)?;
        let mirrors_needed = self.sources.iter().any(|s| {
            s.urls.iter().any(|u| u.starts_with("debian:"))
                && old
                    .and_then(|l| l.get(&s.name))
                    .is_none_or(|p| !Self::current(s, p) || update.contains(&s.name))
        });
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
        Ok(new)
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

/// Fetches every pinned source not yet in the store, `jobs` at a time. Sources already
/// present cost no network.
pub fn fetch_all(
    store: &LocalStore,
    fetcher: &Fetcher,
    lock: &Lockfile,
    jobs: usize,
    progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
) -> Result<Vec<FetchOutcome>, Vec<SourceError>> {
    let results: Mutex<Vec<Result<FetchOutcome, SourceError>>> = Mutex::new(Vec::new());
    let queue: Mutex<std::slice::Iter<'_, LockedSource>> = Mutex::new(lock.sources.iter());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some(p) = queue.lock().expect("queue").next() else {
                        break;
                    };
                    let r = fetch_one(store, fetcher, p, progress);
                    results.lock().expect("results").push(r);
                }
            });
        }
    });
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in results.into_inner().expect("results") {
        match r {
            Ok(o) => ok.push(o),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        ok.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ok)
    } else {
        Err(errors)
    }
}

use std::sync::Mutex;

fn fetch_one(
    store: &LocalStore,
    fetcher: &Fetcher,
    p: &LockedSource,
    progress: &(dyn Fn(&str) -> Box<dyn Progress> + Sync),
) -> Result<FetchOutcome, SourceError> {
    if let Some(e) = store.get(&p.blake3)? {
        return Ok(FetchOutcome {
            name: p.name.clone(),
            file: p.file.clone(),
            path: e.path,
            present: true,
            bytes: 0,
        });
    }
    let pin = Pin {
        name: &p.name,
        version: &p.version,
        file: &p.file,
        locations: &p.locations,
        sha256: Some(&p.sha256),
        size: Some(p.size),
        blake3: Some(p.blake3),
    };
    let bar = progress(&p.name);
    let (entry, fetched) = fetcher.fetch(store, &pin, bar.as_ref())?;
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
    fn the_documented_catalogue_parses() {
        let text: String = crate::testutil::doc_toml_example(include_str!("project.rs"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG), text).unwrap();
        let p = Project::open(dir.path()).unwrap();
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.stale(None, &[]).len(), 2);
    }
}
