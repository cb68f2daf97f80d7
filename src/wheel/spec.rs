//! Wheel specs: `wheels/*.toml`, one per wheel, typed and checked on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, WheelError};

/// How a wheel is obtained (the original tool's builder kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WheelKind {
    /// A pure-Python wheel used as PyPI has it (`wheel`).
    Universal,
    /// A pure-Python wheel built from the sdist, once.
    UniversalSource,
    /// Built per platform and Python from the sdist, extensions cross-compiled.
    Source,
    /// The platform's binary wheel as PyPI has it (`prebuilt`): how mac and windows are
    /// served.
    Prebuilt,
    /// `prebuilt` where the spec lists one for the platform, else `source`.
    SourceOrPrebuilt,
    /// Several specs' wheels for one platform, as one entry (`members`).
    MultiWheel,
}

impl WheelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WheelKind::Universal => "universal",
            WheelKind::UniversalSource => "universal-source",
            WheelKind::Source => "source",
            WheelKind::Prebuilt => "prebuilt",
            WheelKind::SourceOrPrebuilt => "source-or-prebuilt",
            WheelKind::MultiWheel => "multi-wheel",
        }
    }

    /// One wheel for every platform and Python.
    pub fn is_universal(self) -> bool {
        matches!(self, WheelKind::Universal | WheelKind::UniversalSource)
    }
}

/// A dependency of a build: a pinned source (`source:NAME`, a wheel file) or another
/// spec's wheel (`wheel:SPEC`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Dep {
    Source(String),
    Wheel(String),
}

impl Dep {
    pub fn name(&self) -> &str {
        match self {
            Dep::Source(n) | Dep::Wheel(n) => n,
        }
    }
}

impl TryFrom<String> for Dep {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("source", n)) if !n.is_empty() => Ok(Dep::Source(n.to_owned())),
            Some(("wheel", n)) if !n.is_empty() => Ok(Dep::Wheel(n.to_owned())),
            _ => Err(format!(
                "dependency `{s}` is neither `source:NAME` nor `wheel:SPEC`"
            )),
        }
    }
}

impl From<Dep> for String {
    fn from(d: Dep) -> String {
        match d {
            Dep::Source(n) => format!("source:{n}"),
            Dep::Wheel(n) => format!("wheel:{n}"),
        }
    }
}

/// One `wheels/<id>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WheelSpec {
    /// The file's stem: what `--wheel` and `wheel:SPEC` name.
    #[serde(skip)]
    pub id: String,
    /// The distribution's name on PyPI (`MarkupSafe`).
    pub name: String,
    pub version: String,
    pub kind: WheelKind,
    /// Built by a plain `wheel-build` (without `--wheel`).
    #[serde(default = "yes")]
    pub default: bool,
    /// `universal`: the pinned source that is the wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    /// Source-built kinds: the pinned source that is the sdist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdist: Option<String>,
    /// CPython versions (`3.11`); source-built kinds need at least one.
    #[serde(default)]
    pub python: Vec<String>,
    /// Platforms: toolchains to build on, or download-only ones with a `prebuilt` wheel.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The wheel uses the stable ABI (`cp3X-abi3`): built once per platform, with the
    /// first Python listed, and good for every later one.
    #[serde(default)]
    pub abi3: bool,
    /// Wheels the build backend needs on the host Python (setuptools, wheel, cffi).
    #[serde(default)]
    pub host: Vec<Dep>,
    /// Wheels for the target, built first and unpacked where the build can find them
    /// (`$DOCKERBUILD_TARGET_SITE`), e.g. for their headers.
    #[serde(default)]
    pub target: Vec<Dep>,
    /// Recipes (`recipes/NAME.toml`) built for the target first: native libraries
    /// such as OpenSSL, found through CFLAGS, LDFLAGS and PKG_CONFIG_PATH.
    #[serde(default)]
    pub libraries: Vec<String>,
    /// Patches (relative to `wheels/`), applied to the sdist with `patch -p1`.
    #[serde(default)]
    pub patches: Vec<PathBuf>,
    /// Extension modules the wheel must contain (`markupsafe._speedups`): a build that
    /// falls back to pure Python fails.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Variables for the build.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `prebuilt`, `source-or-prebuilt`: platform -> Python (`3.11`, or `abi3`) -> the
    /// pinned source that is that platform's wheel.
    #[serde(default)]
    pub prebuilt: BTreeMap<String, BTreeMap<String, String>>,
    /// `multi-wheel`: the specs whose wheels make up the entry.
    #[serde(default)]
    pub members: Vec<String>,
}

fn yes() -> bool {
    true
}

impl WheelSpec {
    /// Parses a spec's text; `id` is its file stem.
    pub fn parse(text: &str, id: &str, path: &Path) -> Result<WheelSpec> {
        let mut s: WheelSpec = toml::from_str(text).map_err(|source| WheelError::Parse {
            path: path.to_owned(),
            source,
        })?;
        s.id = id.to_owned();
        s.check()?;
        Ok(s)
    }

    /// Reads `path` (its stem is the spec's id).
    pub fn load(path: &Path) -> Result<WheelSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| WheelError::Read {
            path: path.to_owned(),
            source,
        })?;
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        WheelSpec::parse(&text, &id, path)
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(WheelError::Invalid {
                spec: self.id.clone(),
                reason,
            })
        };
        if crate::store::validate_name(&self.id).is_err() {
            return bad("the file name must be a plain name (letters, digits, . _ -)".into());
        }
        for py in &self.python {
            if parse_python(py).is_none() {
                return bad(format!("python `{py}` is not a CPython version like 3.11"));
            }
        }
        let needs = |field: &str, present: bool| {
            if present {
                Ok(())
            } else {
                bad(format!("kind `{}` needs `{field}`", self.kind.as_str()))
            }
        };
        match self.kind {
            WheelKind::Universal => needs("wheel", self.wheel.is_some())?,
            WheelKind::UniversalSource => needs("sdist", self.sdist.is_some())?,
            WheelKind::Source => {
                needs("sdist", self.sdist.is_some())?;
                needs("python", !self.python.is_empty())?;
                needs("platforms", !self.platforms.is_empty())?;
            }
            WheelKind::Prebuilt => needs("prebuilt", !self.prebuilt.is_empty())?,
            WheelKind::SourceOrPrebuilt => {
                needs("sdist", self.sdist.is_some())?;
                needs("python", !self.python.is_empty())?;
                needs("platforms", !self.platforms.is_empty())?;
            }
            WheelKind::MultiWheel => {
                needs("members", !self.members.is_empty())?;
                needs("python", !self.python.is_empty())?;
                needs("platforms", !self.platforms.is_empty())?;
            }
        }
        for (platform, by_python) in &self.prebuilt {
            for py in by_python.keys() {
                if py != "abi3" && parse_python(py).is_none() {
                    return bad(format!(
                        "prebuilt.{platform}: `{py}` is neither a CPython version like 3.11 nor `abi3`"
                    ));
                }
            }
        }
        for p in &self.patches {
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return bad(format!(
                    "patch `{}` must be a relative path inside wheels/",
                    p.display()
                ));
            }
        }
        Ok(())
    }

    /// The wheel file's distribution part (PEP 427: runs of `-_.` become `_`).
    pub fn dist_name(&self) -> String {
        let mut out = String::new();
        for c in self.name.chars() {
            if matches!(c, '-' | '_' | '.') {
                if !out.ends_with('_') {
                    out.push('_');
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// `3.11` -> (3, 11).
pub fn parse_python(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a == 3).then_some((a, b))
}

/// `3.11` -> `cp311`.
pub fn cp_tag(v: &str) -> String {
    match parse_python(v) {
        Some((a, b)) => format!("cp{a}{b}"),
        None => v.to_owned(),
    }
}

/// Every `*.toml` under `dir` but `platforms.toml`, sorted by id (none if `dir` is
/// missing).
pub fn load_all(dir: &Path) -> Result<Vec<WheelSpec>> {
    let paths = match crate::project::toml_files(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(WheelError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    paths
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != super::PLATFORMS_FILE))
        .map(|p| WheelSpec::load(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WheelSpec> {
        WheelSpec::parse(text, "x", Path::new("wheels/x.toml"))
    }

    #[test]
    fn kinds_need_their_fields() {
        let e = parse("name = \"a\"\nversion = \"1\"\nkind = \"source\"\n").unwrap_err();
        assert!(e.to_string().contains("needs `sdist`"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\nkind = \"universal\"\n").unwrap_err();
        assert!(e.to_string().contains("needs `wheel`"), "{e}");
        let ok = parse("name = \"a\"\nversion = \"1\"\nkind = \"universal\"\nwheel = \"a\"\n");
        assert!(ok.unwrap().default);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = parse("name = \"a\"\nversion = \"1\"\nkind = \"sauce\"\n").unwrap_err();
        assert!(e.to_string().contains("sauce"), "{e}");
        let e = parse(
            "name = \"a\"\nversion = \"1\"\nkind = \"universal\"\nwheel = \"a\"\nhost = [\"pip\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("source:NAME"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\nkind = \"source\"\nsdist = \"a\"\npython = [\"2.7\"]\nplatforms = [\"linux-x64\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("2.7"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\nkind = \"universal\"\nwheel = \"a\"\npatches = [\"../x.patch\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("relative path"), "{e}");
    }

    #[test]
    fn names_follow_pep_427() {
        let mut s = parse(
            "name = \"zope.interface\"\nversion = \"1\"\nkind = \"universal\"\nwheel = \"a\"\n",
        )
        .unwrap();
        assert_eq!(s.dist_name(), "zope_interface");
        s.name = "a--b".into();
        assert_eq!(s.dist_name(), "a_b");
        assert_eq!(cp_tag("3.13"), "cp313");
    }
}
