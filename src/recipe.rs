//! Recipes: named, checked-in builds (`recipes/<name>.toml` plus a script), such as the
//! host Python and Perl, or git for any platform.
//!
//! ```toml
//! # recipes/python-3.11.toml
//! kind = "python"            # the output entry's kind (default: output)
//! version = "3.11.2"         # recorded in the output's metadata
//! platform = "linux-x64"     # built there; omit to take the platform as a parameter
//! script = "python.sh"       # relative to recipes/
//! [inputs]                   # mounted read-only at /inputs/<name>
//! python = "source:python-3.11"   # a locked source
//! openssl = "source:openssl-3.0"
//! [env]
//! PYTHON_CONFIGURE_FLAGS = ""
//! ```
//!
//! An input may also be `recipe:NAME`: that recipe's output, built first (on its own
//! platform when it has one, else on the platform being built). The output entry is named
//! after the recipe, plus `-<platform>` for a recipe without a fixed platform.
//!
//! A recipe adds nothing to the lockfile: the sources it names are pinned there, and its
//! key (image, inputs, script, environment) follows from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::build::{self, BuildError, BuildOptions, BuildSpec, Built};
use crate::cache::Caches;
use crate::digest::Digest;
use crate::docker::Engine;
use crate::image::{self, ImageError};
use crate::lock::Lockfile;
use crate::progress::Progress;
use crate::project::{self, Project};
use crate::source::{Fetcher, SourceError};
use crate::store::{Kind, LocalStore, Store, StoreError, validate_name};

/// One recipe file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The file's stem (not written in the file).
    #[serde(skip)]
    pub name: String,
    #[serde(default = "output_kind")]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The platform it is always built on; none when the platform is a parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The build script, relative to the recipes directory.
    pub script: PathBuf,
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn output_kind() -> Kind {
    Kind::Output
}

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Input {
    /// `source:NAME`: a locked source.
    Source(String),
    /// `recipe:NAME`: another recipe's output.
    Recipe(String),
}

impl TryFrom<String> for Input {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("source", n)) if !n.is_empty() => Ok(Input::Source(n.to_owned())),
            Some(("recipe", n)) if !n.is_empty() => Ok(Input::Recipe(n.to_owned())),
            _ => Err(format!(
                "input `{s}` is neither `source:NAME` nor `recipe:NAME`"
            )),
        }
    }
}

impl From<Input> for String {
    fn from(i: Input) -> String {
        match i {
            Input::Source(n) => format!("source:{n}"),
            Input::Recipe(n) => format!("recipe:{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recipe `{}` is malformed:\n{source}\nhint: the format is in recipes/README.md", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("recipe `{name}`: {reason}\nhint: the format is in recipes/README.md")]
    Invalid { name: String, reason: String },
    #[error("no recipe `{name}`; the project has: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("recipe `{name}` takes a platform: pass one (e.g. --platform linux-arm64)")]
    NeedsPlatform { name: String },
    #[error("recipe `{name}` is built on `{fixed}` only, not `{asked}`")]
    FixedPlatform {
        name: String,
        fixed: String,
        asked: String,
    },
    #[error(
        "recipe `{name}` needs source `{source_name}`, which the lockfile does not pin\nhint: add it to sources.toml and run `dockerbuild lock`"
    )]
    NotLocked { name: String, source_name: String },
    #[error("recipe `{name}` depends on itself through {}", chain.join(" -> "))]
    Cycle { name: String, chain: Vec<String> },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Image(Box<ImageError>),
    #[error(transparent)]
    Build(Box<BuildError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl From<ImageError> for RecipeError {
    fn from(e: ImageError) -> Self {
        RecipeError::Image(Box::new(e))
    }
}

impl From<BuildError> for RecipeError {
    fn from(e: BuildError) -> Self {
        RecipeError::Build(Box::new(e))
    }
}

type Result<T, E = RecipeError> = std::result::Result<T, E>;

impl Recipe {
    /// Reads `path` (its stem is the recipe's name) and its script.
    pub fn load(path: &Path) -> Result<(Recipe, String)> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| RecipeError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let text = read(path)?;
        let mut r: Recipe = toml::from_str(&text).map_err(|source| RecipeError::Parse {
            path: path.to_owned(),
            source,
        })?;
        r.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let invalid = |reason: String| RecipeError::Invalid {
            name: r.name.clone(),
            reason,
        };
        validate_name(&r.name).map_err(|e| invalid(e.reason.to_string()))?;
        if r.script.is_absolute()
            || r.script
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(format!(
                "script `{}` must be a relative path inside recipes/",
                r.script.display()
            )));
        }
        for name in r.inputs.keys() {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(invalid(format!(
                    "input name `{name}` must be a plain file name"
                )));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let script = read(&dir.join(&r.script))?;
        Ok((r, script))
    }

    /// The output entry's name when built on `platform`.
    pub fn output_name(&self, platform: &str) -> String {
        match &self.platform {
            Some(_) => self.name.clone(),
            None => format!("{}-{platform}", self.name),
        }
    }
}

/// Every `*.toml` in `dir` with its script, sorted by name (none if `dir` is missing).
pub fn load_all(dir: &Path) -> Result<Vec<(Recipe, String)>> {
    let paths = match crate::project::toml_files(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecipeError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    paths.iter().map(|p| Recipe::load(p)).collect()
}

/// What building recipes needs; builds each recipe (and what it depends on) at most once.
pub struct Builder<'a> {
    pub store: &'a LocalStore,
    pub fetcher: &'a Fetcher,
    /// Connected on the first build that runs, so a lookup needs no Docker daemon.
    pub engine: std::cell::OnceCell<Engine>,
    pub project: &'a Project,
    pub lock: &'a Lockfile,
    pub recipes: &'a [(Recipe, String)],
    pub options: BuildOptions,
    /// Where outputs are substituted from and uploaded to.
    pub caches: &'a Caches,
    /// Progress of downloads and image generation, by label.
    pub progress: &'a (dyn Fn(&str) -> Box<dyn Progress> + Sync),
    /// Called when a build starts (its output name), and with each chunk of its log.
    pub on_start: &'a mut dyn FnMut(&str),
    pub on_output: &'a mut dyn FnMut(&[u8]),
}

impl Builder<'_> {
    fn find(&self, name: &str) -> Result<&(Recipe, String)> {
        self.recipes
            .iter()
            .find(|(r, _)| r.name == name)
            .ok_or_else(|| RecipeError::Unknown {
                name: name.to_owned(),
                known: self.recipes.iter().map(|(r, _)| r.name.clone()).collect(),
            })
    }

    /// The build a recipe makes on a platform, with its inputs in the store (dependencies
    /// built, sources fetched), but not run.
    pub fn spec(&mut self, name: &str, platform: Option<&str>) -> Result<BuildSpec> {
        self.spec_inner(name, platform, &mut Vec::new())
    }

    fn spec_inner(
        &mut self,
        name: &str,
        platform: Option<&str>,
        chain: &mut Vec<String>,
    ) -> Result<BuildSpec> {
        if chain.iter().any(|c| c == name) {
            chain.push(name.to_owned());
            return Err(RecipeError::Cycle {
                name: name.to_owned(),
                chain: chain.clone(),
            });
        }
        let (recipe, script) = self.find(name)?.clone();
        let platform = match (&recipe.platform, platform) {
            (Some(fixed), Some(asked)) if fixed != asked && chain.is_empty() => {
                return Err(RecipeError::FixedPlatform {
                    name: name.to_owned(),
                    fixed: fixed.clone(),
                    asked: asked.to_owned(),
                });
            }
            (Some(fixed), _) => fixed.clone(),
            (None, Some(p)) => p.to_owned(),
            (None, None) => {
                return Err(RecipeError::NeedsPlatform {
                    name: name.to_owned(),
                });
            }
        };
        chain.push(name.to_owned());
        let mut inputs = BTreeMap::new();
        for (input, from) in &recipe.inputs {
            let digest = match from {
                Input::Source(s) => self.source(name, s)?,
                Input::Recipe(r) => {
                    let spec = self.spec_inner(r, Some(&platform), chain)?;
                    self.run(&spec)?.entry.meta.digest
                }
            };
            inputs.insert(input.clone(), digest);
        }
        chain.pop();
        Ok(BuildSpec {
            name: recipe.output_name(&platform),
            platform,
            inputs,
            script,
            env: recipe.env.clone(),
            kind: recipe.kind,
            version: recipe.version.clone(),
        })
    }

    fn source(&self, recipe: &str, source: &str) -> Result<Digest> {
        let pin = self
            .lock
            .get(source)
            .ok_or_else(|| RecipeError::NotLocked {
                name: recipe.to_owned(),
                source_name: source.to_owned(),
            })?;
        // Only the pinned digest goes into the key: the file is fetched when a build
        // actually needs it (see `fetch_inputs`), not when its output is a lookup.
        Ok(pin.blake3)
    }

    /// Fetches the inputs of `spec` that are locked sources missing from the store.
    fn fetch_inputs(&self, spec: &BuildSpec) -> Result<()> {
        for digest in spec.inputs.values() {
            if self.store.get(digest)?.is_some() {
                continue;
            }
            if let Some(pin) = self.lock.sources.iter().find(|p| p.blake3 == *digest) {
                project::fetch_one(self.store, self.fetcher, self.caches, pin, self.progress)?;
            }
        }
        Ok(())
    }

    /// Runs a build (or finds its output), generating its image first when needed.
    pub fn run(&mut self, spec: &BuildSpec) -> Result<Built> {
        let key = build::key_for(
            spec,
            &image::image_key(self.project, self.lock, &spec.platform)?,
        );
        let found = match self.options.rebuild {
            true => None,
            false => build::find(self.store, &key)?,
        };
        if let Some(entry) = found {
            self.caches.offer(self.store, &key, &entry)?;
            return Ok(Built {
                key,
                entry,
                cached: true,
                substituted: None,
            });
        }
        let hit = match self.options.rebuild {
            true => None,
            false => {
                self.caches
                    .substitute(self.store, &key, (self.progress)(&spec.name).as_ref())?
            }
        };
        if let Some(hit) = hit {
            tracing::info!(name = spec.name, cache = hit.cache, "substituted");
            return Ok(Built {
                key,
                entry: hit.entry,
                cached: true,
                substituted: Some(hit.cache),
            });
        }
        // Another process on this store may be building the same key: wait for it, then
        // use what it made.
        let _building = self.store.lock_key(&key)?;
        if !self.options.rebuild
            && let Some(entry) = build::find(self.store, &key)?
        {
            return Ok(Built {
                key,
                entry,
                cached: true,
                substituted: None,
            });
        }
        let img = self.prepare(spec)?;
        debug_assert_eq!(build::key(spec, &img), key);
        let engine = self.engine.get().expect("just set");
        (self.on_start)(&spec.name);
        let built = build::build(
            self.store,
            engine,
            self.project,
            &img,
            spec,
            &self.options,
            self.on_output,
        )?;
        self.caches.offer(self.store, &key, &built.entry)?;
        Ok(built)
    }

    /// The image, the inputs and the Docker connection a build needs.
    fn prepare(&mut self, spec: &BuildSpec) -> Result<image::Image> {
        let img = image::generate(
            self.store,
            self.fetcher,
            self.project,
            self.lock,
            &spec.platform,
            self.caches,
            self.progress,
        )?;
        self.fetch_inputs(spec)?;
        if self.engine.get().is_none() {
            let _ = self
                .engine
                .set(Engine::connect().map_err(BuildError::from)?);
        }
        Ok(img)
    }

    /// Runs `spec` again, whatever the store or a cache holds, without adding its output
    /// to the store (`wheel-build --check`).
    pub fn rebuild_unpublished(&mut self, spec: &BuildSpec) -> Result<build::Unpublished> {
        let img = self.prepare(spec)?;
        let engine = self.engine.get().expect("just set");
        (self.on_start)(&spec.name);
        Ok(build::build_unpublished(
            self.store,
            engine,
            self.project,
            &img,
            spec,
            &self.options,
            self.on_output,
        )?)
    }

    /// Builds recipe `name` (on `platform` when it takes one) and what it depends on.
    pub fn build(&mut self, name: &str, platform: Option<&str>) -> Result<Built> {
        let spec = self.spec(name, platform)?;
        self.run(&spec)
    }
}
