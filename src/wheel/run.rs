//! Building the wheel matrix: a plan of jobs (the recipes wheels need, such as host and
//! target Pythons and native libraries, then the wheels, dependencies first) run in
//! parallel. Every job is keyed, so what is in the store (or a binary cache) is a lookup;
//! failures are collected while the other jobs finish.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use serde::Serialize;

use super::{Catalogue, Dep, How, Platform, Triple, WheelError, WheelSpec, cp_tag};
use crate::build::{BuildOptions, BuildSpec};
use crate::cache::Caches;
use crate::digest::Digest;
use crate::lock::Lockfile;
use crate::progress::{Progress, Silent};
use crate::project::{self, Project};
use crate::recipe::{Builder, Recipe};
use crate::source::Fetcher;
use crate::store::{Entry, Kind, LocalStore, NewEntry, Store};

/// The platform universal wheels and host build dependencies are built on.
pub const HOST_PLATFORM: &str = "linux-x64";
/// The build script of `source` wheels, in `wheels/`.
pub const SCRIPT: &str = "build-wheel.sh";
const KEY_VERSION: &str = "dockerbuild-wheel-v1";

/// What one job is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A recipe's output (a Python, a native library).
    Recipe {
        name: String,
        platform: Option<String>,
    },
    /// A wheel of the matrix, or one a wheel needs.
    Wheel(Triple),
    /// The host build dependencies of wheels (`host` in a spec) unpacked into one site
    /// directory and byte-compiled for a host Python, once for every wheel that names
    /// the same set: a build then imports its backend without unpacking or compiling.
    HostSite { python: String, host: Vec<Dep> },
}

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: JobKind,
    pub label: String,
    /// Jobs that must succeed first.
    pub deps: Vec<usize>,
    /// Asked for (not only needed by another job).
    pub wanted: bool,
}

/// How a job ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    /// Ran a build.
    Built,
    /// Already in the store: nothing ran.
    Cached,
    /// Fetched from a binary cache.
    Substituted {
        cache: String,
    },
    /// A pinned wheel, made an entry.
    Downloaded,
    Failed {
        error: String,
    },
    /// Not attempted: a job it needs failed.
    Skipped {
        needs: String,
    },
}

impl Status {
    pub fn ok(&self) -> bool {
        !matches!(self, Status::Failed { .. } | Status::Skipped { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Status::Built => "built".into(),
            Status::Cached => "already built".into(),
            Status::Substituted { cache } => format!("substituted from {cache}"),
            Status::Downloaded => "pinned wheel".into(),
            Status::Failed { error } => format!("FAILED: {error}"),
            Status::Skipped { needs } => format!("skipped: needs {needs}, which failed"),
        }
    }
}

/// What a job produced.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub label: String,
    #[serde(flatten)]
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The wheel files (inside `path`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wheels: Vec<PathBuf>,
    /// For built wheels, the platform tag each can truthfully carry, from what its
    /// binaries need ([`super::tags`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// With `--check`: whether building it again gave the same bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<super::check::Checked>,
    /// With `--test`: what importing it on its runner found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<super::test::Tested>,
    pub wanted: bool,
}

/// The jobs a set of triples needs, dependencies first.
#[derive(Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    index: HashMap<JobKind, usize>,
    /// Recipes being planned, to refuse a cycle.
    visiting: Vec<String>,
}

impl Plan {
    /// Plans `triples` and everything they need.
    pub fn new(
        c: &Catalogue,
        recipes: &[(Recipe, String)],
        triples: &[Triple],
    ) -> super::Result<Plan> {
        let mut p = Plan::default();
        for t in triples {
            let i = p.wheel(c, recipes, t, &mut Vec::new())?;
            p.jobs[i].wanted = true;
        }
        Ok(p)
    }

    fn add(&mut self, kind: JobKind, label: String, deps: Vec<usize>) -> usize {
        if let Some(&i) = self.index.get(&kind) {
            return i;
        }
        self.jobs.push(Job {
            kind: kind.clone(),
            label,
            deps,
            wanted: false,
        });
        self.index.insert(kind, self.jobs.len() - 1);
        self.jobs.len() - 1
    }

    fn recipe(
        &mut self,
        recipes: &[(Recipe, String)],
        name: &str,
        platform: &str,
        spec: &str,
    ) -> super::Result<usize> {
        let Some((r, _)) = recipes.iter().find(|(r, _)| r.name == name) else {
            return Err(WheelError::Invalid {
                spec: spec.to_owned(),
                reason: format!("it needs recipe `{name}`, and recipes/{name}.toml does not exist"),
            });
        };
        let on = match &r.platform {
            Some(_) => None,
            None => Some(platform.to_owned()),
        };
        // The recipes it builds on are jobs of their own, so that no two jobs build the
        // same thing at once (the recipe builder then finds them in the store).
        if self.visiting.iter().any(|v| v == name) {
            return Err(WheelError::Invalid {
                spec: spec.to_owned(),
                reason: format!(
                    "recipe `{name}` depends on itself through {}",
                    self.visiting.join(" -> ")
                ),
            });
        }
        self.visiting.push(name.to_owned());
        let mut deps = Vec::new();
        for input in r.inputs.values() {
            if let crate::recipe::Input::Recipe(dep) = input {
                deps.push(self.recipe(recipes, dep, platform, spec)?);
            }
        }
        self.visiting.pop();
        let label = r.output_name(on.as_deref().unwrap_or_default());
        Ok(self.add(
            JobKind::Recipe {
                name: name.to_owned(),
                platform: on,
            },
            label,
            deps,
        ))
    }

    /// The job of a spec's wheel on `platform` for `python` (a universal spec's one wheel
    /// whatever they are; an abi3 spec's wheel built with any earlier Python).
    fn wheel_for(
        &mut self,
        c: &Catalogue,
        recipes: &[(Recipe, String)],
        id: &str,
        platform: &str,
        python: &str,
        chain: &mut Vec<String>,
    ) -> super::Result<usize> {
        let s = c.spec(id)?;
        let triples = c.triples_of(s)?;
        let found = triples.iter().find(|t| {
            t.platform == super::ANY
                || (t.platform == platform
                    && match &t.python {
                        Some(p) if s.abi3 => {
                            super::spec::parse_python(p) <= super::spec::parse_python(python)
                        }
                        Some(p) => p == python,
                        None => true,
                    })
        });
        let Some(t) = found else {
            return Err(WheelError::Plan {
                spec: s.id.clone(),
                platform: platform.to_owned(),
                python: python.to_owned(),
                reason: "another wheel needs it there, but its spec does not build it there (add the platform and Python)".into(),
            });
        };
        let t = t.clone();
        self.wheel(c, recipes, &t, chain)
    }

    fn wheel(
        &mut self,
        c: &Catalogue,
        recipes: &[(Recipe, String)],
        t: &Triple,
        chain: &mut Vec<String>,
    ) -> super::Result<usize> {
        let kind = JobKind::Wheel(t.clone());
        if let Some(&i) = self.index.get(&kind) {
            return Ok(i);
        }
        if chain.contains(&t.spec) {
            chain.push(t.spec.clone());
            return Err(WheelError::Cycle {
                spec: t.spec.clone(),
                chain: chain.clone(),
            });
        }
        chain.push(t.spec.clone());
        let s = c.spec(&t.spec)?.clone();
        let mut deps = Vec::new();
        match t.how {
            How::Download | How::Prebuilt => {}
            How::Members => {
                let python = t.python.clone().unwrap_or_default();
                for m in &s.members {
                    deps.push(self.wheel_for(c, recipes, m, &t.platform, &python, chain)?);
                }
            }
            How::Build => {
                let (platform, python) = build_target(&s, t);
                let pf = c.platform(&platform).expect("checked on load").clone();
                deps.push(self.recipe(
                    recipes,
                    &format!("python-{python}"),
                    HOST_PLATFORM,
                    &s.id,
                )?);
                if pf.cross {
                    deps.push(self.recipe(
                        recipes,
                        &format!("python-{python}-target"),
                        &platform,
                        &s.id,
                    )?);
                }
                for l in &s.libraries {
                    deps.push(self.recipe(recipes, l, &platform, &s.id)?);
                }
                if !s.host.is_empty() {
                    let python_job = deps[0];
                    deps.push(self.host_site(c, recipes, &s.host, &python, python_job, chain)?);
                }
                for d in &s.target {
                    if let Dep::Wheel(w) = d {
                        deps.push(self.wheel_for(c, recipes, w, &platform, &python, chain)?);
                    }
                }
            }
        }
        chain.pop();
        Ok(self.add(kind, t.label(), deps))
    }
}

impl Plan {
    /// The job making the site of `host` for `python` (whose recipe job is `python_job`).
    fn host_site(
        &mut self,
        c: &Catalogue,
        recipes: &[(Recipe, String)],
        host: &[Dep],
        python: &str,
        python_job: usize,
        chain: &mut Vec<String>,
    ) -> super::Result<usize> {
        let kind = JobKind::HostSite {
            python: python.to_owned(),
            host: host.to_vec(),
        };
        if let Some(&i) = self.index.get(&kind) {
            return Ok(i);
        }
        let mut deps = vec![python_job];
        for d in host {
            if let Dep::Wheel(w) = d {
                deps.push(self.wheel_for(c, recipes, w, HOST_PLATFORM, python, chain)?);
            }
        }
        let names: Vec<&str> = host.iter().map(|d| d.name()).collect();
        let label = format!("host site {} {}", cp_tag(python), names.join("+"));
        Ok(self.add(kind, label, deps))
    }
}

/// Where a `Build` triple is built and with which Python: universal-source wheels on the
/// host platform with the spec's first Python (3.11 if none).
fn build_target(s: &WheelSpec, t: &Triple) -> (String, String) {
    if s.kind.is_universal() {
        let py = s
            .python
            .first()
            .cloned()
            .unwrap_or_else(|| "3.11".to_owned());
        (HOST_PLATFORM.to_owned(), py)
    } else {
        (t.platform.clone(), t.python.clone().unwrap_or_default())
    }
}

/// Something for the front end to show.
pub enum Event<'a> {
    Started {
        job: usize,
        label: &'a str,
    },
    Log {
        job: usize,
        bytes: &'a [u8],
    },
    Finished {
        job: usize,
        label: &'a str,
        status: &'a Status,
    },
}

/// What running a plan needs.
pub struct Context<'a> {
    pub store: &'a LocalStore,
    pub fetcher: &'a Fetcher,
    pub project: &'a Project,
    pub lock: &'a Lockfile,
    pub recipes: &'a [(Recipe, String)],
    pub catalogue: &'a Catalogue,
    pub caches: &'a Caches,
    pub options: BuildOptions,
    /// Build wanted wheels again even when the store has them (`--rebuild`).
    pub rebuild: bool,
    /// Build wanted source wheels once more, outside the store, and compare (`--check`).
    pub check: bool,
    /// Parallel jobs.
    pub jobs: usize,
    pub progress: &'a (dyn Fn(&str) -> Box<dyn Progress> + Sync),
    pub events: &'a (dyn Fn(Event) + Sync),
}

struct State {
    results: Vec<Option<JobResult>>,
    started: Vec<bool>,
    running: usize,
}

/// Runs every job of `plan` (at most `cx.jobs` at once); returns one result per job.
pub fn run(cx: &Context, plan: &Plan) -> Vec<JobResult> {
    let n = plan.jobs.len();
    let state = Mutex::new(State {
        results: vec![None; n],
        started: vec![false; n],
        running: 0,
    });
    let changed = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..cx.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let next = {
                        let mut st = state.lock().expect("not poisoned");
                        loop {
                            if st.results.iter().all(|r| r.is_some()) {
                                break None;
                            }
                            let mut pick = None;
                            for i in 0..n {
                                if st.started[i] {
                                    continue;
                                }
                                let failed = plan.jobs[i].deps.iter().find(|&&d| {
                                    st.results[d].as_ref().is_some_and(|r| !r.status.ok())
                                });
                                if let Some(&d) = failed {
                                    st.started[i] = true;
                                    let status = Status::Skipped {
                                        needs: plan.jobs[d].label.clone(),
                                    };
                                    (cx.events)(Event::Finished {
                                        job: i,
                                        label: &plan.jobs[i].label,
                                        status: &status,
                                    });
                                    st.results[i] = Some(empty_result(&plan.jobs[i], status));
                                    changed.notify_all();
                                    continue;
                                }
                                if plan.jobs[i].deps.iter().all(|&d| st.results[d].is_some()) {
                                    pick = Some(i);
                                    break;
                                }
                            }
                            match pick {
                                Some(i) => {
                                    st.started[i] = true;
                                    st.running += 1;
                                    let deps: Vec<JobResult> = plan.jobs[i]
                                        .deps
                                        .iter()
                                        .map(|&d| st.results[d].clone().expect("done"))
                                        .collect();
                                    break Some((i, deps));
                                }
                                None if st.results.iter().all(|r| r.is_some()) => break None,
                                None => st = changed.wait(st).expect("not poisoned"),
                            }
                        }
                    };
                    let Some((i, deps)) = next else {
                        changed.notify_all();
                        return;
                    };
                    let job = &plan.jobs[i];
                    (cx.events)(Event::Started {
                        job: i,
                        label: &job.label,
                    });
                    let result = match run_job(cx, i, job, &deps) {
                        Ok(r) => r,
                        Err(e) => empty_result(
                            job,
                            Status::Failed {
                                error: error_chain(e.as_ref()),
                            },
                        ),
                    };
                    (cx.events)(Event::Finished {
                        job: i,
                        label: &job.label,
                        status: &result.status,
                    });
                    let mut st = state.lock().expect("not poisoned");
                    st.results[i] = Some(result);
                    st.running -= 1;
                    changed.notify_all();
                }
            });
        }
    });
    state
        .into_inner()
        .expect("not poisoned")
        .results
        .into_iter()
        .map(|r| r.expect("every job ends"))
        .collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn empty_result(job: &Job, status: Status) -> JobResult {
    let (spec, platform, python) = match &job.kind {
        JobKind::Wheel(t) => (
            Some(t.spec.clone()),
            Some(t.platform.clone()),
            t.python.clone(),
        ),
        JobKind::Recipe { platform, .. } => (None, platform.clone(), None),
        JobKind::HostSite { python, .. } => {
            (None, Some(HOST_PLATFORM.to_owned()), Some(python.clone()))
        }
    };
    JobResult {
        label: job.label.clone(),
        status,
        spec,
        platform,
        python,
        key: None,
        digest: None,
        path: None,
        wheels: Vec::new(),
        tags: Vec::new(),
        check: None,
        test: None,
        wanted: job.wanted,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run_job(cx: &Context, i: usize, job: &Job, deps: &[JobResult]) -> Result<JobResult, BoxError> {
    let mut on_start = |_: &str| {};
    let mut on_output = |bytes: &[u8]| (cx.events)(Event::Log { job: i, bytes });
    let mut builder = Builder {
        store: cx.store,
        fetcher: cx.fetcher,
        engine: Default::default(),
        project: cx.project,
        lock: cx.lock,
        recipes: cx.recipes,
        options: cx.options.clone(),
        caches: cx.caches,
        progress: cx.progress,
        on_start: &mut on_start,
        on_output: &mut on_output,
    };
    let mut result = empty_result(job, Status::Built);
    match &job.kind {
        JobKind::Recipe { name, platform } => {
            let spec = builder.spec(name, platform.as_deref())?;
            let built = builder.run(&spec)?;
            result.status = status_of(&built);
            result.key = Some(built.key);
            result.digest = Some(built.entry.meta.digest);
            result.path = Some(built.entry.path);
        }
        JobKind::HostSite { python, host } => {
            let spec = host_site_spec(cx, python, host, deps)?;
            let built = builder.run(&spec)?;
            result.status = status_of(&built);
            result.key = Some(built.key);
            result.digest = Some(built.entry.meta.digest);
            result.path = Some(built.entry.path);
        }
        JobKind::Wheel(t) => {
            let s = cx.catalogue.spec(&t.spec)?;
            let (status, key, entry) = match t.how {
                How::Download | How::Prebuilt => local_wheel(cx, s, t, None)?,
                How::Members => local_wheel(cx, s, t, Some(deps))?,
                How::Build => {
                    let spec = wheel_build_spec(cx, s, t, &job.deps, deps)?;
                    if cx.rebuild && job.wanted {
                        builder.options.rebuild = true;
                    }
                    let built = builder.run(&spec)?;
                    if cx.check && job.wanted {
                        let again = builder.rebuild_unpublished(&spec)?;
                        let diff = super::check::first_difference(&built.entry.path, &again.out())?;
                        result.check = Some(super::check::Checked {
                            reproducible: diff.is_none(),
                            first_difference: diff,
                        });
                    }
                    let status = status_of(&built);
                    (status, built.key, built.entry)
                }
            };
            result.wheels = wheel_files(&entry.path)?;
            if result.wheels.is_empty() {
                return Err(format!("{} holds no .whl file", entry.path.display()).into());
            }
            if t.how == How::Build && !s.kind.is_universal() {
                result.tags = true_tags(cx, &t.platform, &result.wheels)?;
            }
            result.status = status;
            result.key = Some(key);
            result.digest = Some(entry.meta.digest);
            result.path = Some(entry.path);
        }
    }
    Ok(result)
}

/// The truthful tag of each built wheel; an error when its binaries break what the
/// platform promises (ARMv7 code in an ARMv6 wheel, a glibc newer than the floor).
fn true_tags(cx: &Context, platform: &str, wheels: &[PathBuf]) -> Result<Vec<String>, BoxError> {
    let promise = cx
        .catalogue
        .promise(cx.project, platform)
        .ok_or_else(|| format!("platform `{platform}` has no linux or manylinux wheel tag"))?;
    let mut tags = Vec::new();
    for w in wheels {
        let facts = super::tags::inspect_wheel(w)?;
        let name = w
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tags.push(super::tags::true_tag(&name, &facts, &promise)?);
    }
    Ok(tags)
}

fn status_of(built: &crate::build::Built) -> Status {
    match (&built.substituted, built.cached) {
        (Some(cache), _) => Status::Substituted {
            cache: cache.clone(),
        },
        (None, true) => Status::Cached,
        (None, false) => Status::Built,
    }
}

/// The `.whl` files of a wheel entry (a directory of them), sorted.
pub fn wheel_files(entry: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(entry)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.retain(|p| p.extension().is_some_and(|e| e == "whl"));
    v.sort();
    Ok(v)
}

/// The entry name of a triple's wheel.
fn entry_name(s: &WheelSpec, t: &Triple) -> String {
    let mut n = format!("wheel-{}-{}-{}", s.id, s.version, t.platform);
    if let Some(p) = &t.python {
        n.push('-');
        n.push_str(&if s.abi3 { "abi3".to_owned() } else { cp_tag(p) });
    }
    n
}

/// A wheel entry made without a build: a pinned wheel (universal, prebuilt), or the
/// members' wheels together (multi-wheel). Keyed by what goes in.
fn local_wheel(
    cx: &Context,
    s: &WheelSpec,
    t: &Triple,
    members: Option<&[JobResult]>,
) -> Result<(Status, Digest, Entry), BoxError> {
    let mut files: Vec<(String, PathBuf, Digest)> = Vec::new();
    match members {
        Some(deps) => {
            for d in deps {
                for w in &d.wheels {
                    let name = w
                        .file_name()
                        .expect("a file")
                        .to_string_lossy()
                        .into_owned();
                    files.push((name, w.clone(), d.digest.expect("a wheel entry")));
                }
            }
        }
        None => {
            let source = match t.how {
                How::Download => s.wheel.clone().expect("checked on load"),
                _ => {
                    let by_python = &s.prebuilt[&t.platform];
                    t.python
                        .as_deref()
                        .and_then(|p| by_python.get(p))
                        .or_else(|| by_python.get("abi3"))
                        .cloned()
                        .ok_or("no prebuilt wheel for this Python")?
                }
            };
            let pin = cx.lock.get(&source).ok_or_else(|| {
                format!("source `{source}` is not in the lockfile (run `dockerbuild lock`)")
            })?;
            if !pin.file.ends_with(".whl") {
                return Err(format!("source `{source}` is `{}`, not a .whl file", pin.file).into());
            }
            let got = project::fetch_one(cx.store, cx.fetcher, cx.caches, pin, cx.progress)?;
            files.push((pin.file.clone(), got.path, pin.blake3));
        }
    }
    let what: Vec<(&str, Digest)> = files.iter().map(|(n, _, d)| (n.as_str(), *d)).collect();
    let json = serde_json::to_vec(&(KEY_VERSION, t, &what)).expect("serializes");
    let key = Digest::of(&json);
    if let Some(e) = cx.store.resolve_key(&key)? {
        cx.caches.offer(cx.store, &key, &e)?;
        return Ok((Status::Cached, key, e));
    }
    if let Some(hit) = cx.caches.substitute(cx.store, &key, &Silent)? {
        return Ok((Status::Substituted { cache: hit.cache }, key, hit.entry));
    }
    let dir = tempfile::Builder::new()
        .prefix("dockerbuild-wheel-")
        .tempdir()?;
    for (name, path, _) in &files {
        std::fs::copy(path, dir.path().join(name))?;
    }
    let new = NewEntry {
        name: entry_name(s, t),
        kind: Kind::Wheel,
        version: Some(s.version.clone()),
        origin: Some(format!("wheel:{}", key.to_hex())),
        references: files.iter().map(|(_, _, d)| *d).collect(),
        build: None,
    };
    let entry = cx.store.add_path(dir.path(), &new, &Silent)?;
    cx.store.bind_key(&key, &entry.meta.digest)?;
    cx.caches.offer(cx.store, &key, &entry)?;
    let status = if members.is_some() {
        Status::Built
    } else {
        Status::Downloaded
    };
    Ok((status, key, entry))
}

/// The build of a host site: the host Python, and the host wheels as `host-NAME` (pinned
/// wheel files, or the entries of wheel jobs, which are `deps` after the Python).
fn host_site_spec(
    cx: &Context,
    python: &str,
    host: &[Dep],
    deps: &[JobResult],
) -> Result<BuildSpec, BoxError> {
    let script = read_script(cx)?;
    let digest = |r: &JobResult| r.digest.ok_or("a dependency has no entry");
    let mut inputs = BTreeMap::new();
    inputs.insert("python".to_owned(), digest(&deps[0])?);
    let mut built = deps[1..].iter();
    for d in host {
        let digest = match d {
            Dep::Source(n) => pinned(cx, n)?,
            Dep::Wheel(_) => digest(built.next().ok_or("the plan lacks a host wheel")?)?,
        };
        inputs.insert(format!("host-{}", d.name()), digest);
    }
    let names: Vec<&str> = host.iter().map(|d| d.name()).collect();
    Ok(BuildSpec {
        name: format!("host-site-{}-{}", cp_tag(python), names.join("+")),
        platform: HOST_PLATFORM.to_owned(),
        inputs,
        script,
        env: BTreeMap::from([("WHEEL_MAKE_HOST_SITE".to_owned(), "1".to_owned())]),
        kind: Kind::Other,
        version: None,
    })
}

fn read_script(cx: &Context) -> Result<String, BoxError> {
    let path = cx.project.root.join(super::WHEELS).join(SCRIPT);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read wheels/{SCRIPT}: {e}").into())
}

/// A pinned source's store address: a build fetches it if it runs; a lookup needs only
/// the digest.
fn pinned(cx: &Context, name: &str) -> Result<Digest, BoxError> {
    let pin = cx.lock.get(name).ok_or_else(|| {
        format!("source `{name}` is not in the lockfile (run `dockerbuild lock`)")
    })?;
    Ok(pin.blake3)
}

/// The hermetic build of a `source` (or universal-source) wheel.
fn wheel_build_spec(
    cx: &Context,
    s: &WheelSpec,
    t: &Triple,
    dep_jobs: &[usize],
    deps: &[JobResult],
) -> Result<BuildSpec, BoxError> {
    let (platform, _) = build_target(s, t);
    let pf: &Platform = cx.catalogue.platform(&platform).ok_or("unknown platform")?;
    let wheels_dir = cx.project.root.join(super::WHEELS);
    let script = read_script(cx)?;
    let mut inputs = BTreeMap::new();
    let source = |name: &str| pinned(cx, name);
    inputs.insert(
        "sdist".to_owned(),
        source(s.sdist.as_deref().ok_or("no sdist")?)?,
    );
    // The dependency jobs, in the order the plan added them: host Python, target Python,
    // libraries, the host site, target wheels.
    let by_job: HashMap<usize, &JobResult> = dep_jobs.iter().copied().zip(deps).collect();
    let mut it = dep_jobs.iter();
    let mut next = || -> Result<Digest, BoxError> {
        let j = it.next().ok_or("the plan lacks a dependency")?;
        by_job[j]
            .digest
            .ok_or_else(|| "a dependency has no entry".into())
    };
    inputs.insert("python".to_owned(), next()?);
    if pf.cross {
        inputs.insert("target".to_owned(), next()?);
    }
    for l in &s.libraries {
        inputs.insert(format!("lib-{l}"), next()?);
    }
    if !s.host.is_empty() {
        inputs.insert("host-site".to_owned(), next()?);
    }
    for d in &s.target {
        let digest = match d {
            Dep::Source(n) => source(n)?,
            Dep::Wheel(_) => next()?,
        };
        inputs.insert(format!("target-{}", d.name()), digest);
    }
    for (n, p) in s.patches.iter().enumerate() {
        let path = wheels_dir.join(p);
        let e = cx.store.add_path(
            &path,
            &NewEntry::new(
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                Kind::Other,
            ),
            &Silent,
        )?;
        inputs.insert(format!("patch-{n:02}"), e.meta.digest);
    }
    let mut env = s.env.clone();
    env.insert("WHEEL_DIST".into(), s.dist_name());
    env.insert("WHEEL_VERSION".into(), s.version.clone());
    let tags = if s.kind.is_universal() {
        "any".to_owned()
    } else {
        pf.wheel_tags.join(".")
    };
    env.insert("WHEEL_PLATFORM_TAGS".into(), tags);
    if pf.cross {
        env.insert("WHEEL_CROSS".into(), "1".into());
        env.insert("WHEEL_HOST_PLATFORM".into(), pf.host_platform());
    }
    if s.abi3 {
        let (_, python) = build_target(s, t);
        env.insert("WHEEL_ABI3".into(), cp_tag(&python));
    }
    if !s.extensions.is_empty() {
        env.insert("WHEEL_EXTENSIONS".into(), s.extensions.join(" "));
    }
    Ok(BuildSpec {
        name: entry_name(s, t),
        platform,
        inputs,
        script,
        env,
        kind: Kind::Wheel,
        version: Some(s.version.clone()),
    })
}
