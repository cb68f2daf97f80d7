//! Python wheels: typed specs (`wheels/*.toml`), the platforms they are built for, the
//! (spec, platform, Python) matrix, the `wheels.md` catalogue, and building the matrix
//! hermetically ([`run`]); the tag a wheel's binaries allow ([`tags`]), writing wheels
//! out under it ([`retag`]), comparing a rebuild with the store's wheel ([`check`]), and
//! importing wheels on a Python of their architecture ([`test`]).
//!
//! Linux platforms are toolchains (`toolchains/*.toml`); mac and windows are download-only
//! platforms (`wheels/platforms.toml`) served by prebuilt wheels.

pub mod catalogue;
pub mod check;
pub mod publish;
pub mod retag;
pub mod run;
pub mod spec;
pub mod tags;
pub mod test;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use spec::{Dep, WheelKind, WheelSpec, cp_tag};

use crate::project::Project;

/// The download-only platforms' file in `wheels/`.
pub const PLATFORMS_FILE: &str = "platforms.toml";
/// The catalogue `wheel-dump` writes, in `wheels/`.
pub const CATALOGUE_FILE: &str = "wheels.md";
/// The wheel specs' directory.
pub const WHEELS: &str = "wheels";

#[derive(Debug, thiserror::Error)]
pub enum WheelError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wheel spec `{}` is malformed:\n{source}\nhint: the format is in wheels/README.md", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("wheel spec `{spec}`: {reason}\nhint: the format is in wheels/README.md")]
    Invalid { spec: String, reason: String },
    #[error("no wheel spec `{name}`; the project has: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("wheel `{spec}` on {platform} for Python {python}: {reason}")]
    Plan {
        spec: String,
        platform: String,
        python: String,
        reason: String,
    },
    #[error("wheel `{spec}` depends on itself through {}", chain.join(" -> "))]
    Cycle { spec: String, chain: Vec<String> },
    #[error("runner `{toolchain}` in wheels/platforms.toml: {reason}")]
    Runner { toolchain: String, reason: String },
}

pub type Result<T, E = WheelError> = std::result::Result<T, E>;

/// A platform wheels are made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Platform {
    pub name: String,
    /// Its wheel platform tags, preferred first (`linux_armv7l`).
    pub wheel_tags: Vec<String>,
    /// The CIPD platform its packages are published under.
    pub cipd_platform: String,
    /// A toolchain builds for it; download-only platforms are served by prebuilt wheels.
    #[serde(skip)]
    pub buildable: bool,
    /// Its toolchain cross-compiles (a target Python describes it to the host Python).
    #[serde(skip)]
    pub cross: bool,
}

impl Platform {
    /// `_PYTHON_HOST_PLATFORM` for a cross build: the first tag as sysconfig spells it
    /// (`linux_armv7l` -> `linux-armv7l`).
    pub fn host_platform(&self) -> String {
        self.wheel_tags[0].replacen('_', "-", 1)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformsFile {
    #[serde(default)]
    platform: Vec<Platform>,
    #[serde(default)]
    runner: Vec<test::Runner>,
}

/// Every wheel spec and platform of a project.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub specs: Vec<WheelSpec>,
    pub platforms: Vec<Platform>,
    /// Where `wheel-build --test` imports each platform's wheels, per Python.
    pub runners: Vec<test::Runner>,
}

impl Catalogue {
    /// Loads `wheels/*.toml` and the platforms (toolchains, then `wheels/platforms.toml`),
    /// and checks that every name a spec uses exists.
    pub fn load(project: &Project) -> Result<Catalogue> {
        let dir = project.root.join(WHEELS);
        let specs = spec::load_all(&dir)?;
        let path = dir.join(PLATFORMS_FILE);
        let file: PlatformsFile = if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| WheelError::Read {
                path: path.clone(),
                source,
            })?;
            toml::from_str(&text).map_err(|source| WheelError::Parse {
                path: path.clone(),
                source,
            })?
        } else {
            PlatformsFile {
                platform: Vec::new(),
                runner: Vec::new(),
            }
        };
        // Builds run the x86-64 host Python, so only amd64 images build wheels; runners
        // (run-arm64, run-x64, ...) import them.
        let mut platforms: Vec<Platform> = project
            .toolchains
            .iter()
            .filter(|tc| !tc.is_runner())
            .map(|tc| Platform {
                name: tc.name.clone(),
                wheel_tags: tc.wheel_tags.clone(),
                cipd_platform: tc.cipd_platform.clone(),
                buildable: true,
                cross: tc.is_cross(),
            })
            .collect();
        platforms.extend(file.platform);
        let c = Catalogue {
            specs,
            platforms,
            runners: file.runner,
        };
        c.check(project)?;
        Ok(c)
    }

    fn check(&self, project: &Project) -> Result<()> {
        for r in &self.runners {
            let bad = |reason: String| {
                Err(WheelError::Runner {
                    toolchain: r.toolchain.clone(),
                    reason,
                })
            };
            match project.toolchains.iter().find(|t| t.name == r.toolchain) {
                None => return bad(format!("there is no toolchains/{}.toml", r.toolchain)),
                Some(t) if !t.is_runner() => {
                    return bad(format!(
                        "toolchains/{}.toml is a build platform; a runner has `runner = true` \
                         or an image of another architecture",
                        r.toolchain
                    ));
                }
                Some(_) => {}
            }
            for p in &r.platforms {
                if !self.platform(p).is_some_and(|p| p.buildable) {
                    return bad(format!("`{p}` is not a platform wheels are built for"));
                }
            }
        }
        let sources: std::collections::HashSet<&str> =
            project.sources.iter().map(|s| s.name.as_str()).collect();
        for s in &self.specs {
            let bad = |reason: String| {
                Err(WheelError::Invalid {
                    spec: s.id.clone(),
                    reason,
                })
            };
            let mut named: Vec<&str> = s.wheel.iter().chain(&s.sdist).map(|x| x.as_str()).collect();
            named.extend(
                s.prebuilt
                    .values()
                    .flat_map(|m| m.values().map(|x| x.as_str())),
            );
            for d in s.host.iter().chain(&s.target) {
                match d {
                    Dep::Source(n) => named.push(n),
                    Dep::Wheel(w) => {
                        if self.spec(w).is_err() {
                            return bad(format!("`wheel:{w}`: there is no wheels/{w}.toml"));
                        }
                    }
                }
            }
            for n in named {
                if !sources.contains(n) {
                    return bad(format!(
                        "source `{n}` is not in sources.toml (add it and run `dockerbuild lock`)"
                    ));
                }
            }
            for m in &s.members {
                if self.spec(m).is_err() {
                    return bad(format!("member `{m}`: there is no wheels/{m}.toml"));
                }
            }
            for p in s.platforms.iter().chain(s.prebuilt.keys()) {
                if self.platform(p).is_none() {
                    return bad(format!(
                        "platform `{p}` is neither a toolchain nor in wheels/platforms.toml"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn spec(&self, id: &str) -> Result<&WheelSpec> {
        self.specs
            .iter()
            .find(|s| s.id == id || s.name.eq_ignore_ascii_case(id))
            .ok_or_else(|| WheelError::Unknown {
                name: id.to_owned(),
                known: self.specs.iter().map(|s| s.id.clone()).collect(),
            })
    }

    pub fn platform(&self, name: &str) -> Option<&Platform> {
        self.platforms.iter().find(|p| p.name == name)
    }

    /// What a platform promises about its wheels: its first wheel tag, and the glibc
    /// its toolchain's zig target pins (`ZIG_TARGET`), if any. `None` for a platform
    /// without a linux or manylinux tag.
    pub fn promise(&self, project: &Project, platform: &str) -> Option<tags::Promise> {
        let pf = self.platform(platform)?;
        let zig = project
            .toolchains
            .iter()
            .find(|tc| tc.name == platform)
            .and_then(|tc| tc.env.get("ZIG_TARGET"));
        tags::Promise::of(&pf.wheel_tags, zig.map(|z| z.as_str()))
    }

    /// Every wheel the specs make, optionally narrowed, in spec order.
    pub fn triples(&self, filter: &Filter) -> Result<Vec<Triple>> {
        let mut out = Vec::new();
        for s in &self.specs {
            if !filter.wheels.is_empty() {
                if !filter
                    .wheels
                    .iter()
                    .any(|w| w == &s.id || w.eq_ignore_ascii_case(&s.name))
                {
                    continue;
                }
            } else if !s.default {
                continue;
            }
            for t in self.triples_of(s)? {
                let keep_platform = filter.platforms.is_empty()
                    || filter.platforms.contains(&t.platform)
                    || t.platform == ANY;
                let keep_python = filter.pythons.is_empty()
                    || t.python.as_ref().is_none_or(|p| filter.pythons.contains(p));
                if keep_platform && keep_python {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// The wheels one spec makes.
    pub fn triples_of(&self, s: &WheelSpec) -> Result<Vec<Triple>> {
        let mut out = Vec::new();
        if s.kind.is_universal() {
            out.push(Triple {
                spec: s.id.clone(),
                platform: ANY.into(),
                python: None,
                how: match s.kind {
                    WheelKind::Universal => How::Download,
                    _ => How::Build,
                },
            });
            return Ok(out);
        }
        let mut platforms: Vec<&String> = s.platforms.iter().collect();
        for p in s.prebuilt.keys() {
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        for p in platforms {
            let platform = self.platform(p).expect("checked on load");
            // A platform listed only under `prebuilt` gets the Pythons listed there.
            let pythons: Vec<Option<&str>> = if !s.platforms.contains(p) {
                s.prebuilt[p]
                    .keys()
                    .map(|k| match k.as_str() {
                        "abi3" => s.python.first().map(|x| x.as_str()),
                        k => Some(k),
                    })
                    .collect()
            } else if s.abi3 {
                vec![s.python.first().map(|x| x.as_str())]
            } else {
                s.python.iter().map(|x| Some(x.as_str())).collect()
            };
            for py in pythons {
                let prebuilt = s
                    .prebuilt
                    .get(p)
                    .and_then(|m| m.get(py.unwrap_or("abi3")).or_else(|| m.get("abi3")));
                let how = match (s.kind, prebuilt) {
                    (WheelKind::MultiWheel, _) => How::Members,
                    (_, Some(_)) => How::Prebuilt,
                    (WheelKind::Prebuilt, None) => continue,
                    (_, None) if !platform.buildable => {
                        return Err(WheelError::Plan {
                            spec: s.id.clone(),
                            platform: p.clone(),
                            python: py.unwrap_or("any").to_owned(),
                            reason: "a download-only platform needs a `prebuilt` wheel".into(),
                        });
                    }
                    (_, None) => How::Build,
                };
                out.push(Triple {
                    spec: s.id.clone(),
                    platform: p.clone(),
                    python: py.map(|x| x.to_owned()),
                    how,
                });
            }
        }
        Ok(out)
    }
}

/// The platform of universal wheels.
pub const ANY: &str = "any";

/// Which wheels a command is about; empty means all (default specs only for `wheels`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub wheels: Vec<String>,
    pub platforms: Vec<String>,
    pub pythons: Vec<String>,
}

/// One wheel of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Triple {
    pub spec: String,
    pub platform: String,
    /// `None` for universal wheels; for abi3 wheels, the Python they are built with.
    pub python: Option<String>,
    pub how: How,
}

/// How a triple's wheel is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// A pinned wheel file, as it is.
    Download,
    /// A pinned binary wheel for the platform.
    Prebuilt,
    /// A hermetic build from the sdist.
    Build,
    /// The members' wheels, together.
    Members,
}

impl Triple {
    pub fn label(&self) -> String {
        match &self.python {
            Some(p) => format!("{} {} {}", self.spec, cp_tag(p), self.platform),
            None => format!("{} {}", self.spec, self.platform),
        }
    }
}

/// The wheel file name a spec gets on a platform (PEP 427), for the tags given.
pub fn file_name(s: &WheelSpec, python_tag: &str, abi: &str, platform_tags: &[String]) -> String {
    format!(
        "{}-{}-{python_tag}-{abi}-{}.whl",
        s.dist_name(),
        s.version,
        platform_tags.join(".")
    )
}

/// Where `wheels/README.md` is, for error hints.
pub fn readme(project: &Path) -> PathBuf {
    project.join(WHEELS).join("README.md")
}
