//! Debian archive sources: resolving `debian:` specs to one file of the archive.
//!
//! Two spec forms (the part after `debian:`):
//! - `SUITE/SOURCEPKG=VERSION[:FILE]`: a file of a source package, by default its upstream
//!   tarball (the single `*.orig.tar.*`, or for a native package the single `*.tar.*`);
//! - `SUITE/binary-ARCH/PACKAGE=VERSION`: a binary `.deb`.
//!
//! A spec is looked up in the suite's `main` index (`dists/SUITE/main/source/Sources.xz` or
//! `dists/SUITE/main/binary-ARCH/Packages.xz`), which names the file's archive path, size
//! and SHA-256. Which mirror serves a suite comes from [`Mirrors`]:
//! `DOCKERBUILD_DEBIAN_MIRROR` (and `DOCKERBUILD_DEBIAN_SECURITY_MIRROR`), else apt's own
//! sources. No mirror is ever named in this code.
//!
//! An index is fetched, decompressed and parsed once per [`Resolver`].

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info};

use crate::fetch::{FetchError, Http};

/// The environment variable naming the main archive's base URL.
pub const MIRROR_ENV: &str = "DOCKERBUILD_DEBIAN_MIRROR";
/// The environment variable naming the security archive's base URL.
pub const SECURITY_MIRROR_ENV: &str = "DOCKERBUILD_DEBIAN_SECURITY_MIRROR";

const SYNTAX_HINT: &str = "hint: write SUITE/SOURCEPKG=VERSION[:FILE] \
(e.g. `bookworm/git=1:2.39.5-0+deb12u2` or `bookworm/git=1:2.39.5-0+deb12u2:git_2.39.5.orig.tar.xz`) \
or SUITE/binary-ARCH/PACKAGE=VERSION (e.g. `bookworm/binary-arm64/libc6=2.36-9+deb12u10`)";

/// Why a Debian spec could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("malformed Debian spec `{spec}`: {reason}\n{SYNTAX_HINT}")]
    MalformedSpec { spec: String, reason: String },
    #[error(
        "suite `{suite}` has no {what} index at `{url}` (HTTP 404)\nhint: the mirror may not carry \
         that suite (old releases move to a separate archive); {MIRROR_ENV} (or \
         {SECURITY_MIRROR_ENV} for -security suites) chooses another mirror"
    )]
    SuiteNotFound {
        suite: String,
        what: String,
        url: String,
    },
    #[error("{what} package `{package}` is not in suite `{suite}` (component main, index `{url}`)")]
    PackageNotFound {
        suite: String,
        what: String,
        package: String,
        url: String,
    },
    #[error(
        "{what} package `{package}` has no version `{version}` in suite `{suite}`; it has: {}",
        .available.join(", ")
    )]
    VersionNotFound {
        suite: String,
        what: String,
        package: String,
        version: String,
        available: Vec<String>,
    },
    #[error(
        "source package `{package}` {version} in suite `{suite}` has no file `{file}`; its files: {}",
        .files.join(", ")
    )]
    FileNotFound {
        suite: String,
        package: String,
        version: String,
        file: String,
        files: Vec<String>,
    },
    #[error(
        "source package `{package}` {version} in suite `{suite}`: {reason}; its files: {}\nhint: \
         name the file: SUITE/{package}={version}:FILE",
        .files.join(", ")
    )]
    AmbiguousFile {
        suite: String,
        package: String,
        version: String,
        reason: String,
        files: Vec<String>,
    },
    #[error(
        "no Debian mirror is configured{}\nhint: set {MIRROR_ENV} to the main archive's base URL \
         (the directory holding `dists/` and `pool/`), and {SECURITY_MIRROR_ENV} for -security suites",
        .suite.as_ref().map(|s| format!(" for suite `{s}`")).unwrap_or_default()
    )]
    NoMirror { suite: Option<String> },
    #[error("the index `{url}` is malformed: {reason}")]
    MalformedIndex { url: String, reason: String },
    #[error("cannot decompress the index `{url}`")]
    Decompress {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{}`", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

// ---------------------------------------------------------------------------------------
// Specs

/// What a spec names: a source package's file or a binary package.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpecKind {
    /// A file of a source package; `None` picks the upstream tarball.
    Source { file: Option<String> },
    /// The `.deb` of a binary package for one architecture (`amd64`, `arm64`, `all`, ...).
    Binary { arch: String },
}

/// A parsed `debian:` spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DebianSpec {
    pub suite: String,
    pub package: String,
    /// As written: with or without the epoch.
    pub version: String,
    pub kind: SpecKind,
}

impl DebianSpec {
    /// The upstream part of the version: no epoch, no Debian revision
    /// (`1:2.39.5-0+deb12u2` → `2.39.5`).
    pub fn upstream_version(&self) -> String {
        upstream_version(&self.version).to_owned()
    }
}

impl fmt::Display for DebianSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SpecKind::Source { file } => {
                write!(f, "{}/{}={}", self.suite, self.package, self.version)?;
                if let Some(file) = file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
            SpecKind::Binary { arch } => write!(
                f,
                "{}/binary-{arch}/{}={}",
                self.suite, self.package, self.version
            ),
        }
    }
}

/// `EPOCH:UPSTREAM-REVISION` → `UPSTREAM`.
fn upstream_version(v: &str) -> &str {
    let v = match v.split_once(':') {
        Some((e, rest)) if is_epoch(e) => rest,
        _ => v,
    };
    match v.rfind('-') {
        Some(i) => &v[..i],
        None => v,
    }
}

fn is_epoch(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses the part of a spec after `debian:` (a leading `debian:` is accepted too).
pub fn parse_spec(s: &str) -> Result<DebianSpec, DebianError> {
    let bad = |reason: &str| DebianError::MalformedSpec {
        spec: s.to_owned(),
        reason: reason.to_owned(),
    };
    let body = s.trim();
    let body = body.strip_prefix("debian:").unwrap_or(body);
    let (path, rest) = body
        .split_once('=')
        .ok_or_else(|| bad("no `=VERSION` after the package name"))?;
    let parts: Vec<&str> = path.split('/').collect();
    let (suite, kind_arch, package) = match parts.as_slice() {
        [suite, package] => (*suite, None, *package),
        [suite, binary, package] => match binary.strip_prefix("binary-") {
            Some(arch) => (*suite, Some(arch), *package),
            None => return Err(bad("the middle part must be `binary-ARCH`")),
        },
        _ => return Err(bad("expected SUITE/PACKAGE or SUITE/binary-ARCH/PACKAGE")),
    };
    if !valid_name(suite, b".+_-") {
        return Err(bad(
            "the suite is empty or has characters a suite cannot have",
        ));
    }
    if !valid_name(package, b".+-") || !package.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad(
            "the package name is empty or not a Debian package name",
        ));
    }
    let (version, file) = split_version_file(rest);
    if !valid_name(version, b".+~:-")
        || !version
            .split_once(':')
            .map_or(version, |(_, v)| v)
            .starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(bad(
            "the version is empty or not a Debian version (it must start with a digit)",
        ));
    }
    let kind = match kind_arch {
        Some(arch) => {
            if !valid_name(arch, b"-") {
                return Err(bad("the architecture is empty or malformed"));
            }
            if file.is_some() {
                return Err(bad("a binary package spec names no `:FILE`"));
            }
            SpecKind::Binary {
                arch: arch.to_owned(),
            }
        }
        None => {
            if let Some(f) = file
                && (f.is_empty() || f.contains('/') || f == "." || f == "..")
            {
                return Err(bad("FILE must be a plain file name"));
            }
            SpecKind::Source {
                file: file.map(str::to_owned),
            }
        }
    };
    Ok(DebianSpec {
        suite: suite.to_owned(),
        package: package.to_owned(),
        version: version.to_owned(),
        kind,
    })
}

fn valid_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Splits `VERSION[:FILE]`, where VERSION may start with `EPOCH:`. A leading all-digit
/// segment is an epoch when what follows it starts with a digit and has no `_` (versions
/// never do; source file names always do).
fn split_version_file(s: &str) -> (&str, Option<&str>) {
    let skip = match s.split_once(':') {
        Some((e, r)) if is_epoch(e) => {
            let next = r.split(':').next().unwrap_or("");
            if next.starts_with(|c: char| c.is_ascii_digit()) && !next.contains('_') {
                e.len() + 1
            } else {
                0
            }
        }
        _ => 0,
    };
    match s[skip..].find(':') {
        Some(i) => (&s[..skip + i], Some(&s[skip + i + 1..])),
        None => (s, None),
    }
}

/// Whether an index's version is the one a spec asks for: exactly, or the index's with its
/// epoch dropped when the spec has none.
fn version_matches(spec: &str, index: &str) -> bool {
    if spec == index {
        return true;
    }
    match index.split_once(':') {
        Some((e, rest)) if is_epoch(e) && !spec.contains(':') => rest == spec,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Mirrors

/// One apt source entry: a base URI and the suites it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
}

/// Which base URL serves which suite.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    /// From [`MIRROR_ENV`]: serves every suite but `-security` ones.
    main: Option<String>,
    /// From [`SECURITY_MIRROR_ENV`]: serves `-security` suites.
    security: Option<String>,
    /// From apt's sources, in the order apt reads them.
    sources: Vec<AptSource>,
    /// The machine's release codename (`/etc/os-release`), to tell its own archive apart
    /// from third-party repositories.
    codename: Option<String>,
}

impl Mirrors {
    /// From the environment ([`MIRROR_ENV`], [`SECURITY_MIRROR_ENV`]), else apt's sources in
    /// `/etc/apt`. When [`MIRROR_ENV`] is set apt is not consulted.
    pub fn from_system() -> Result<Mirrors, DebianError> {
        let env = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let main = env(MIRROR_ENV);
        let security = env(SECURITY_MIRROR_ENV);
        if main.is_some() {
            return Ok(Mirrors::from_base_urls(main, security));
        }
        let codename = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| os_release_codename(&t));
        let mut m = Mirrors::from_apt_dir(Path::new("/etc/apt"), codename.as_deref())?;
        m.security = security.map(|s| trim_base(&s));
        if m.sources.is_empty() && m.security.is_none() {
            return Err(DebianError::NoMirror { suite: None });
        }
        Ok(m)
    }

    /// Explicit base URLs, as the environment gives them.
    pub fn from_base_urls(main: Option<String>, security: Option<String>) -> Mirrors {
        Mirrors {
            main: main.map(|s| trim_base(&s)),
            security: security.map(|s| trim_base(&s)),
            ..Mirrors::default()
        }
    }

    /// apt's sources under `etc_apt` (`sources.list`, `sources.list.d/*.list` and
    /// `*.sources`); missing files are no error.
    pub fn from_apt_dir(etc_apt: &Path, codename: Option<&str>) -> Result<Mirrors, DebianError> {
        let read = |path: &Path| -> Result<Option<String>, DebianError> {
            match std::fs::read_to_string(path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(DebianError::Io {
                    path: path.to_owned(),
                    source,
                }),
            }
        };
        let mut one_line = Vec::new();
        let mut deb822 = Vec::new();
        if let Some(t) = read(&etc_apt.join("sources.list"))? {
            one_line.push(t);
        }
        let dir = etc_apt.join("sources.list.d");
        let mut names = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(DebianError::Io { path: dir, source }),
        };
        names.sort();
        for path in names {
            match path.extension().and_then(|e| e.to_str()) {
                Some("list") => one_line.extend(read(&path)?),
                Some("sources") => deb822.extend(read(&path)?),
                _ => {}
            }
        }
        let one_line: Vec<&str> = one_line.iter().map(String::as_str).collect();
        let deb822: Vec<&str> = deb822.iter().map(String::as_str).collect();
        Ok(Mirrors::from_apt_text(&one_line, &deb822, codename))
    }

    /// apt's sources from texts: one-line `sources.list` files and deb822 `.sources` files.
    pub fn from_apt_text(one_line: &[&str], deb822: &[&str], codename: Option<&str>) -> Mirrors {
        let mut sources = Vec::new();
        for t in one_line {
            sources.extend(parse_one_line_sources(t));
        }
        for t in deb822 {
            sources.extend(parse_deb822_sources(t));
        }
        Mirrors {
            sources,
            codename: codename.map(str::to_owned),
            ..Mirrors::default()
        }
    }

    /// The base URL (holding `dists/` and `pool/`, no trailing slash) that serves `suite`.
    pub fn base_for(&self, suite: &str) -> Result<String, DebianError> {
        let is_security = suite.ends_with("-security");
        if is_security && let Some(s) = &self.security {
            return Ok(s.clone());
        }
        if let Some(m) = &self.main {
            if !is_security {
                return Ok(m.clone());
            }
            // An explicit main mirror with no explicit security one: do not mix in apt.
            return Err(DebianError::NoMirror {
                suite: Some(suite.to_owned()),
            });
        }
        let found = self
            .sources
            .iter()
            .find(|s| s.suites.iter().any(|x| x == suite))
            .or_else(|| {
                if is_security {
                    self.sources
                        .iter()
                        .find(|s| s.suites.iter().any(|x| x.ends_with("-security")))
                } else {
                    self.main_source()
                }
            });
        found
            .map(|s| s.uri.clone())
            .ok_or_else(|| DebianError::NoMirror {
                suite: Some(suite.to_owned()),
            })
    }

    /// The entry of the machine's own release: the one listing its codename, else one
    /// listing a suite without a dash whose path ends in `/debian`, else any such.
    fn main_source(&self) -> Option<&AptSource> {
        let dashless = |s: &&AptSource| s.suites.iter().any(|x| !x.contains('-'));
        self.codename
            .as_ref()
            .and_then(|c| {
                self.sources
                    .iter()
                    .find(|s| s.suites.iter().any(|x| x == c))
            })
            .or_else(|| {
                self.sources
                    .iter()
                    .filter(dashless)
                    .find(|s| s.uri.ends_with("/debian"))
            })
            .or_else(|| self.sources.iter().find(dashless))
    }
}

fn trim_base(s: &str) -> String {
    s.trim().trim_end_matches('/').to_owned()
}

/// apt's URI as a base URL [`Http`] can fetch, or `None` for schemes it cannot.
fn normalize_uri(uri: &str) -> Option<String> {
    let uri = uri.trim();
    if uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file://") {
        Some(trim_base(uri))
    } else if let Some(path) = uri.strip_prefix("file:") {
        // apt writes `file:/srv/mirror`.
        Some(format!("file://{}", trim_base(path)))
    } else {
        debug!(uri, "skipping an apt source whose scheme cannot be fetched");
        None
    }
}

/// `VERSION_CODENAME=` from `/etc/os-release` text.
fn os_release_codename(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("VERSION_CODENAME=")
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// Keeps only entries that are `deb`/`deb-src`, with a fetchable URI and non-flat suites.
fn push_source(out: &mut Vec<AptSource>, uri: &str, suites: Vec<String>) {
    let suites: Vec<String> = suites
        .into_iter()
        .filter(|s| !s.is_empty() && !s.ends_with('/'))
        .collect();
    if suites.is_empty() {
        return;
    }
    if let Some(uri) = normalize_uri(uri) {
        out.push(AptSource { uri, suites });
    }
}

/// One-line sources (`deb [opts] URI SUITE COMPONENTS...`).
pub fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((ty, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if ty != "deb" && ty != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => rest = rest[i + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        push_source(&mut out, uri, vec![suite.to_owned()]);
    }
    out
}

/// deb822 sources (`Types:`, `URIs:`, `Suites:`, `Components:`; `Enabled: no` skips).
pub fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in deb822_stanzas(text) {
        let get = |k: &str| {
            stanza
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        if get("Enabled").trim().eq_ignore_ascii_case("no") {
            continue;
        }
        if !get("Types")
            .split_whitespace()
            .any(|t| t == "deb" || t == "deb-src")
        {
            continue;
        }
        let suites: Vec<String> = get("Suites")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for uri in get("URIs").split_whitespace() {
            push_source(&mut out, uri, suites.clone());
        }
    }
    out
}

/// Small deb822 documents as stanzas of (field, value); comments are dropped and
/// continuation lines joined with newlines.
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

// ---------------------------------------------------------------------------------------
// Indexes

/// One file of a source package, from `Checksums-Sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceFile {
    sha256: String,
    size: u64,
    name: String,
}

#[derive(Debug, Clone)]
struct SourceStanza {
    version: String,
    directory: String,
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
struct BinaryStanza {
    version: String,
    filename: String,
    size: u64,
    sha256: String,
}

#[derive(Debug)]
enum Index {
    Sources(HashMap<String, Vec<SourceStanza>>),
    Packages(HashMap<String, Vec<BinaryStanza>>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IndexKind {
    Sources,
    Packages { arch: String },
}

impl IndexKind {
    fn rel(&self) -> String {
        match self {
            IndexKind::Sources => "main/source/Sources".to_owned(),
            IndexKind::Packages { arch } => format!("main/binary-{arch}/Packages"),
        }
    }
    fn what(&self) -> String {
        match self {
            IndexKind::Sources => "source".to_owned(),
            IndexKind::Packages { arch } => format!("binary ({arch})"),
        }
    }
}

/// Reads deb822 stanzas from `r`, keeping only `wanted` fields (by position; continuation
/// lines joined with `\n`), and hands each stanza to `each`.
fn for_each_stanza(
    r: impl Read,
    wanted: &[&str],
    mut each: impl FnMut(&[Option<String>]) -> Result<(), String>,
) -> std::io::Result<Result<(), String>> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut line = Vec::with_capacity(256);
    let mut fields: Vec<Option<String>> = vec![None; wanted.len()];
    let mut current: Option<usize> = None;
    let mut any = false;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if n == 0 || text.trim().is_empty() {
            if any {
                if let Err(e) = each(&fields) {
                    return Ok(Err(e));
                }
                fields.iter_mut().for_each(|f| *f = None);
                any = false;
            }
            current = None;
            if n == 0 {
                return Ok(Ok(()));
            }
            continue;
        }
        if text.starts_with([' ', '\t']) {
            if let Some(i) = current
                && let Some(v) = &mut fields[i]
            {
                if !v.is_empty() {
                    v.push('\n');
                }
                v.push_str(text.trim());
            }
            continue;
        }
        any = true;
        current = None;
        if let Some((k, v)) = text.split_once(':')
            && let Some(i) = wanted.iter().position(|w| w.eq_ignore_ascii_case(k))
        {
            fields[i] = Some(v.trim().to_owned());
            current = Some(i);
        }
    }
}

fn parse_sources(r: impl Read) -> std::io::Result<Result<Index, String>> {
    let mut map: HashMap<String, Vec<SourceStanza>> = HashMap::new();
    let res = for_each_stanza(
        r,
        &["Package", "Version", "Directory", "Checksums-Sha256"],
        |f| {
            let (Some(package), Some(version)) = (&f[0], &f[1]) else {
                return Err("a stanza has no Package or Version".to_owned());
            };
            let directory = f[2]
                .clone()
                .ok_or_else(|| format!("`{package}` {version} has no Directory"))?;
            let mut files = Vec::new();
            for l in f[3].as_deref().unwrap_or("").lines() {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    [] => {}
                    [sha, size, name] => files.push(SourceFile {
                        sha256: sha.to_ascii_lowercase(),
                        size: size
                            .parse()
                            .map_err(|_| format!("`{package}` {version}: bad size `{size}`"))?,
                        name: (*name).to_owned(),
                    }),
                    _ => {
                        return Err(format!(
                            "`{package}` {version}: bad Checksums-Sha256 line `{l}`"
                        ));
                    }
                }
            }
            map.entry(package.clone()).or_default().push(SourceStanza {
                version: version.clone(),
                directory: directory.trim_end_matches('/').to_owned(),
                files,
            });
            Ok(())
        },
    )?;
    Ok(res.map(|()| Index::Sources(map)))
}

fn parse_packages(r: impl Read) -> std::io::Result<Result<Index, String>> {
    let mut map: HashMap<String, Vec<BinaryStanza>> = HashMap::new();
    let res = for_each_stanza(
        r,
        &["Package", "Version", "Filename", "Size", "SHA256"],
        |f| {
            let (Some(package), Some(version)) = (&f[0], &f[1]) else {
                return Err("a stanza has no Package or Version".to_owned());
            };
            let missing = |k: &str| format!("`{package}` {version} has no {k}");
            let filename = f[2].clone().ok_or_else(|| missing("Filename"))?;
            let size = f[3].as_deref().ok_or_else(|| missing("Size"))?;
            let size = size
                .parse()
                .map_err(|_| format!("`{package}` {version}: bad Size `{size}`"))?;
            let sha256 = f[4].as_deref().ok_or_else(|| missing("SHA256"))?;
            map.entry(package.clone()).or_default().push(BinaryStanza {
                version: version.clone(),
                filename,
                size,
                sha256: sha256.to_ascii_lowercase(),
            });
            Ok(())
        },
    )?;
    Ok(res.map(|()| Index::Packages(map)))
}

fn is_not_found(e: &FetchError) -> bool {
    match e {
        FetchError::NotFound { .. } => true,
        FetchError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Resolving

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianFile {
    pub suite: String,
    /// Archive-relative, e.g. `pool/main/o/openssl/openssl_1.1.1w.orig.tar.gz`.
    pub path: String,
    pub file_name: String,
    pub sha256: String,
    pub size: u64,
    /// The index's version, epoch included.
    pub version: String,
}

/// The URL of `file` on the mirror serving its suite.
pub fn url(mirrors: &Mirrors, file: &DebianFile) -> Result<String, DebianError> {
    Ok(format!("{}/{}", mirrors.base_for(&file.suite)?, file.path))
}

/// Resolves one spec (fetching its index; use a [`Resolver`] for many).
pub fn resolve(
    spec: &DebianSpec,
    mirrors: &Mirrors,
    http: &Http,
) -> Result<DebianFile, DebianError> {
    Resolver::new(mirrors, http).resolve(spec)
}

/// Resolves specs, fetching and parsing each suite's index once.
pub struct Resolver<'a> {
    mirrors: &'a Mirrors,
    http: &'a Http,
    indexes: HashMap<(String, IndexKind), (String, Index)>,
}

impl<'a> Resolver<'a> {
    pub fn new(mirrors: &'a Mirrors, http: &'a Http) -> Self {
        Resolver {
            mirrors,
            http,
            indexes: HashMap::new(),
        }
    }

    /// The versions of `package` in a suite's source index (for messages and tooling).
    pub fn source_versions(
        &mut self,
        suite: &str,
        package: &str,
    ) -> Result<Vec<String>, DebianError> {
        let (_, index) = self.index(suite, &IndexKind::Sources)?;
        Ok(match index {
            Index::Sources(m) => m
                .get(package)
                .map(|v| v.iter().map(|s| s.version.clone()).collect())
                .unwrap_or_default(),
            Index::Packages(_) => Vec::new(),
        })
    }

    pub fn resolve(&mut self, spec: &DebianSpec) -> Result<DebianFile, DebianError> {
        let kind = match &spec.kind {
            SpecKind::Source { .. } => IndexKind::Sources,
            SpecKind::Binary { arch } => IndexKind::Packages { arch: arch.clone() },
        };
        let (index_url, index) = self.index(&spec.suite, &kind)?;
        let not_found = || DebianError::PackageNotFound {
            suite: spec.suite.clone(),
            what: kind.what(),
            package: spec.package.clone(),
            url: index_url.clone(),
        };
        let version_not_found = |available: Vec<String>| DebianError::VersionNotFound {
            suite: spec.suite.clone(),
            what: kind.what(),
            package: spec.package.clone(),
            version: spec.version.clone(),
            available,
        };
        match (index, &spec.kind) {
            (Index::Sources(map), SpecKind::Source { file }) => {
                let stanzas = map.get(&spec.package).ok_or_else(not_found)?;
                let st = stanzas
                    .iter()
                    .find(|s| version_matches(&spec.version, &s.version))
                    .ok_or_else(|| {
                        version_not_found(stanzas.iter().map(|s| s.version.clone()).collect())
                    })?;
                let names = || st.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
                let chosen = match file {
                    Some(name) => st.files.iter().find(|f| &f.name == name).ok_or_else(|| {
                        DebianError::FileNotFound {
                            suite: spec.suite.clone(),
                            package: spec.package.clone(),
                            version: st.version.clone(),
                            file: name.clone(),
                            files: names(),
                        }
                    })?,
                    None => pick_upstream_tarball(&st.files).map_err(|reason| {
                        DebianError::AmbiguousFile {
                            suite: spec.suite.clone(),
                            package: spec.package.clone(),
                            version: st.version.clone(),
                            reason,
                            files: names(),
                        }
                    })?,
                };
                Ok(DebianFile {
                    suite: spec.suite.clone(),
                    path: format!("{}/{}", st.directory, chosen.name),
                    file_name: chosen.name.clone(),
                    sha256: chosen.sha256.clone(),
                    size: chosen.size,
                    version: st.version.clone(),
                })
            }
            (Index::Packages(map), SpecKind::Binary { .. }) => {
                let stanzas = map.get(&spec.package).ok_or_else(not_found)?;
                let st = stanzas
                    .iter()
                    .find(|s| version_matches(&spec.version, &s.version))
                    .ok_or_else(|| {
                        version_not_found(stanzas.iter().map(|s| s.version.clone()).collect())
                    })?;
                let file_name = st.filename.rsplit('/').next().unwrap_or("").to_owned();
                Ok(DebianFile {
                    suite: spec.suite.clone(),
                    path: st.filename.clone(),
                    file_name,
                    sha256: st.sha256.clone(),
                    size: st.size,
                    version: st.version.clone(),
                })
            }
            _ => unreachable!("the index kind follows the spec kind"),
        }
    }

    /// The parsed index (and the URL it came from), fetched on first use.
    fn index(&mut self, suite: &str, kind: &IndexKind) -> Result<&(String, Index), DebianError> {
        let key = (suite.to_owned(), kind.clone());
        if !self.indexes.contains_key(&key) {
            let loaded = self.load(suite, kind)?;
            self.indexes.insert(key.clone(), loaded);
        }
        Ok(&self.indexes[&key])
    }

    fn load(&self, suite: &str, kind: &IndexKind) -> Result<(String, Index), DebianError> {
        let base = self.mirrors.base_for(suite)?;
        let stem = format!("{base}/dists/{suite}/{}", kind.rel());
        let started = Instant::now();
        // `.xz` is what the archive publishes; `.gz` serves mirrors that only keep that.
        let xz_url = format!("{stem}.xz");
        let (url, bytes, gz) = match self.http.get_bytes(&xz_url, None) {
            Ok(b) => (xz_url, b, false),
            Err(e) if is_not_found(&e) => {
                let gz_url = format!("{stem}.gz");
                match self.http.get_bytes(&gz_url, None) {
                    Ok(b) => (gz_url, b, true),
                    Err(e2) if is_not_found(&e2) => {
                        return Err(DebianError::SuiteNotFound {
                            suite: suite.to_owned(),
                            what: kind.what(),
                            url: xz_url,
                        });
                    }
                    Err(e2) => return Err(e2.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let fetched = started.elapsed();
        let reader: Box<dyn Read + '_> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(&bytes[..]))
        } else {
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(&bytes[..]))
        };
        let parsed = match kind {
            IndexKind::Sources => parse_sources(reader),
            IndexKind::Packages { .. } => parse_packages(reader),
        };
        let index = parsed
            .map_err(|source| DebianError::Decompress {
                url: url.clone(),
                source,
            })?
            .map_err(|reason| DebianError::MalformedIndex {
                url: url.clone(),
                reason,
            })?;
        let packages = match &index {
            Index::Sources(m) => m.len(),
            Index::Packages(m) => m.len(),
        };
        info!(
            url,
            bytes = bytes.len(),
            packages,
            fetch_ms = fetched.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "loaded Debian index"
        );
        Ok((url, index))
    }
}

/// The upstream tarball among a source package's files: the single `*.orig.tar.*` (not a
/// signature, not an `*.orig-NAME.tar.*` component), else for a native package the single
/// `*.tar.*` that is not a `.debian.tar.*`.
fn pick_upstream_tarball(files: &[SourceFile]) -> Result<&SourceFile, String> {
    let signature = |n: &str| n.ends_with(".asc") || n.ends_with(".sig") || n.ends_with(".sign");
    let orig: Vec<&SourceFile> = files
        .iter()
        .filter(|f| f.name.contains(".orig.tar.") && !signature(&f.name))
        .collect();
    match orig.as_slice() {
        [one] => return Ok(one),
        [] => {}
        _ => return Err("more than one upstream tarball".to_owned()),
    }
    let native: Vec<&SourceFile> = files
        .iter()
        .filter(|f| {
            f.name.contains(".tar.")
                && !f.name.contains(".debian.tar.")
                && !f.name.contains(".orig-")
                && !signature(&f.name)
        })
        .collect();
    match native.as_slice() {
        [one] => Ok(one),
        [] => Err("no upstream tarball (no *.orig.tar.* nor native *.tar.*)".to_owned()),
        _ => Err("more than one tarball and no *.orig.tar.*".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::HttpOptions;
    use std::io::Write;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/debian")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A `file://` archive with `bookworm` (sources and arm64 binaries, xz) and `bullseye`
    /// (sources, gz only).
    fn archive() -> (tempfile::TempDir, Mirrors) {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, data: &[u8]| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        put(
            "dists/bookworm/main/source/Sources.xz",
            &xz(fixture("Sources").as_bytes()),
        );
        put(
            "dists/bookworm/main/binary-arm64/Packages.xz",
            &xz(fixture("Packages").as_bytes()),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(fixture("Sources-bullseye").as_bytes())
            .unwrap();
        put(
            "dists/bullseye/main/source/Sources.gz",
            &gz.finish().unwrap(),
        );
        let base = format!("file://{}", dir.path().display());
        let mirrors = Mirrors::from_base_urls(Some(base), None);
        (dir, mirrors)
    }

    fn http() -> Http {
        Http::new(HttpOptions::default())
    }

    fn spec(s: &str) -> DebianSpec {
        parse_spec(s).unwrap()
    }

    #[test]
    fn parses_specs() {
        let s = spec("bookworm/git=1:2.39.5-0+deb12u2:git_2.39.5.orig.tar.xz");
        assert_eq!(s.suite, "bookworm");
        assert_eq!(s.package, "git");
        assert_eq!(s.version, "1:2.39.5-0+deb12u2");
        assert_eq!(
            s.kind,
            SpecKind::Source {
                file: Some("git_2.39.5.orig.tar.xz".into())
            }
        );
        assert_eq!(s.upstream_version(), "2.39.5");
        assert_eq!(
            s.to_string(),
            "bookworm/git=1:2.39.5-0+deb12u2:git_2.39.5.orig.tar.xz"
        );

        let s = spec("bullseye/openssl=1.1.1w-0+deb11u1");
        assert_eq!(s.version, "1.1.1w-0+deb11u1");
        assert_eq!(s.kind, SpecKind::Source { file: None });
        assert_eq!(s.upstream_version(), "1.1.1w");

        let s = spec("bullseye/openssl=1.1.1w-0+deb11u1:openssl_1.1.1w.orig.tar.gz");
        assert_eq!(s.version, "1.1.1w-0+deb11u1");
        assert_eq!(
            s.kind,
            SpecKind::Source {
                file: Some("openssl_1.1.1w.orig.tar.gz".into())
            }
        );

        // An all-digit version followed by a file name is no epoch.
        let s = spec("bookworm/0ad=1:0ad_1.tar.xz");
        assert_eq!(s.version, "1");
        assert_eq!(
            s.kind,
            SpecKind::Source {
                file: Some("0ad_1.tar.xz".into())
            }
        );

        let s = spec("debian:bookworm/binary-arm64/libc6=2.36-9+deb12u10");
        assert_eq!(
            s.kind,
            SpecKind::Binary {
                arch: "arm64".into()
            }
        );
        assert_eq!(s.package, "libc6");
        assert_eq!(s.upstream_version(), "2.36");
        assert_eq!(s.to_string(), "bookworm/binary-arm64/libc6=2.36-9+deb12u10");

        assert_eq!(spec("trixie/make-dfsg=4.3").upstream_version(), "4.3");
        assert_eq!(spec("trixie/x=2:1.0-1-2").upstream_version(), "1.0-1");
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "bookworm/git",
            "git=1.0",
            "bookworm/git=",
            "bookworm/git=abc",
            "bookworm/source/git=1.0",
            "bookworm/binary-/git=1.0",
            "bookworm/binary-arm64/libc6=2.36-9:foo.deb",
            "bookworm/git=1.0:a/b",
            "/git=1.0",
            "bookworm/Git?=1.0",
            "a/b/c/d=1",
        ] {
            let e = parse_spec(bad).unwrap_err();
            assert!(matches!(e, DebianError::MalformedSpec { .. }), "{bad}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("bookworm/binary-arm64/libc6="), "{msg}");
        }
    }

    #[test]
    fn version_matching() {
        assert!(version_matches("1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u2"));
        assert!(version_matches("2.39.5-0+deb12u2", "1:2.39.5-0+deb12u2"));
        assert!(!version_matches("2:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u2"));
        assert!(!version_matches("1:2.39.5-0+deb12u2", "2.39.5-0+deb12u2"));
        assert!(!version_matches("2.39.5", "1:2.39.5-0+deb12u2"));
    }

    #[test]
    fn mirrors_from_apt_text() {
        const MAIN: &str = "http://mirror.invalid/debian";
        const SECURITY: &str = "http://security.mirror.invalid/debian-security";
        let check = |m: &Mirrors, table: &[(&str, &str)]| {
            for (suite, base) in table {
                assert_eq!(m.base_for(suite).unwrap(), *base, "suite {suite}");
            }
        };
        // Other suites than the listed ones: the same archive as the machine's own
        // release; -security ones the security archive.
        let m = Mirrors::from_apt_text(&[], &[&fixture("debian.sources")], None);
        check(
            &m,
            &[
                ("bookworm", MAIN),
                ("bookworm-updates", MAIN),
                ("bookworm-security", SECURITY),
                ("bullseye", MAIN),
                ("trixie", MAIN),
                ("bullseye-security", SECURITY),
            ],
        );
        // A disabled stanza and a third-party dashless suite (`nodistro`) are not the
        // main archive.
        assert!(!m.sources.iter().any(|s| s.uri.contains("disabled")));

        let m = Mirrors::from_apt_text(&[&fixture("sources.list")], &[], Some("bookworm"));
        check(
            &m,
            &[
                ("bookworm", MAIN),
                ("trixie", MAIN),
                ("bookworm-security", SECURITY),
                ("stable", "http://other.mirror.invalid/extra"),
            ],
        );

        let m = Mirrors::from_apt_text(&[], &[], None);
        let e = m.base_for("bookworm").unwrap_err();
        assert!(e.to_string().contains(MIRROR_ENV), "{e}");

        let m = Mirrors::from_base_urls(Some("http://mirror.invalid/debian/".into()), None);
        assert_eq!(
            m.base_for("trixie").unwrap(),
            "http://mirror.invalid/debian"
        );
        assert!(matches!(
            m.base_for("trixie-security"),
            Err(DebianError::NoMirror { .. })
        ));
    }

    #[test]
    fn one_line_sources_parse_options_and_types() {
        let s = parse_one_line_sources(
            "# comment\n\
             deb [arch=amd64 signed-by=/k.gpg] http://a.invalid/debian bookworm main\n\
             deb-src http://b.invalid/debian bookworm main # trailing\n\
             rpm http://c.invalid/x y z\n\
             deb file:/srv/mirror ./\n\
             deb file:/srv/mirror2/ sid main\n\
             deb cdrom:[Debian]/ bookworm main\n",
        );
        assert_eq!(
            s,
            vec![
                AptSource {
                    uri: "http://a.invalid/debian".into(),
                    suites: vec!["bookworm".into()]
                },
                AptSource {
                    uri: "http://b.invalid/debian".into(),
                    suites: vec!["bookworm".into()]
                },
                AptSource {
                    uri: "file:///srv/mirror2".into(),
                    suites: vec!["sid".into()]
                },
            ]
        );
        assert_eq!(
            os_release_codename("NAME=\"Debian\"\nVERSION_CODENAME=bookworm\n").as_deref(),
            Some("bookworm")
        );
    }

    #[test]
    fn resolves_source_tarballs() {
        let (_dir, mirrors) = archive();
        let http = http();
        let mut r = Resolver::new(&mirrors, &http);

        let f = r.resolve(&spec("bookworm/git=1:2.39.5-0+deb12u2")).unwrap();
        assert_eq!(f.path, "pool/main/g/git/git_2.39.5.orig.tar.xz");
        assert_eq!(f.file_name, "git_2.39.5.orig.tar.xz");
        assert_eq!(f.size, 7_318_408);
        assert_eq!(
            f.sha256,
            "f1d4f4c5e8b5e0a2b4d3c7e6f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7"
        );
        assert_eq!(f.version, "1:2.39.5-0+deb12u2");
        assert_eq!(f.suite, "bookworm");
        // Without the epoch, and naming a file.
        let g = r.resolve(&spec("bookworm/git=2.39.5-0+deb12u2")).unwrap();
        assert_eq!(g, f);
        let d = r
            .resolve(&spec(
                "bookworm/git=1:2.39.5-0+deb12u2:git_2.39.5-0+deb12u2.dsc",
            ))
            .unwrap();
        assert_eq!(d.path, "pool/main/g/git/git_2.39.5-0+deb12u2.dsc");
        assert_eq!(d.size, 2_873);

        // Orig components and signatures are not the upstream tarball.
        let f = r.resolve(&spec("bookworm/withparts=1.0-1")).unwrap();
        assert_eq!(f.file_name, "withparts_1.0.orig.tar.gz");

        // A native package.
        let f = r.resolve(&spec("bookworm/native-pkg=3.2")).unwrap();
        assert_eq!(f.file_name, "native-pkg_3.2.tar.xz");
        assert_eq!(f.path, "pool/main/n/native-pkg/native-pkg_3.2.tar.xz");

        assert_eq!(
            url(&mirrors, &f).unwrap(),
            format!(
                "{}/pool/main/n/native-pkg/native-pkg_3.2.tar.xz",
                mirrors.base_for("bookworm").unwrap()
            )
        );

        // gz fallback.
        let f = r
            .resolve(&spec("bullseye/openssl=1.1.1w-0+deb11u1"))
            .unwrap();
        assert_eq!(f.path, "pool/main/o/openssl/openssl_1.1.1w.orig.tar.gz");
        assert_eq!(f.size, 9_893_384);
        assert_eq!(r.source_versions("bullseye", "openssl").unwrap().len(), 1);
    }

    #[test]
    fn resolves_binary_packages() {
        let (_dir, mirrors) = archive();
        let http = http();
        let f = resolve(
            &spec("bookworm/binary-arm64/libc6=2.36-9+deb12u10"),
            &mirrors,
            &http,
        )
        .unwrap();
        assert_eq!(f.path, "pool/main/g/glibc/libc6_2.36-9+deb12u10_arm64.deb");
        assert_eq!(f.file_name, "libc6_2.36-9+deb12u10_arm64.deb");
        assert_eq!(f.size, 2_321_880);
        assert_eq!(
            f.sha256,
            "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
        );
        // Two versions of one package in one index.
        let f = resolve(
            &spec("bookworm/binary-arm64/tzdata=2024a-0+deb12u1"),
            &mirrors,
            &http,
        )
        .unwrap();
        assert_eq!(f.path, "pool/main/t/tzdata/tzdata_2024a-0+deb12u1_all.deb");
    }

    #[test]
    fn errors_say_what_is_there() {
        let (_dir, mirrors) = archive();
        let http = http();
        let mut r = Resolver::new(&mirrors, &http);

        let e = r.resolve(&spec("bookworm/git=1:2.39.2-1.1")).unwrap_err();
        assert!(matches!(e, DebianError::VersionNotFound { .. }), "{e}");
        assert!(e.to_string().contains("1:2.39.5-0+deb12u2"), "{e}");

        let e = r.resolve(&spec("bookworm/nosuch=1.0")).unwrap_err();
        assert!(matches!(e, DebianError::PackageNotFound { .. }), "{e}");

        let e = r
            .resolve(&spec("bookworm/git=1:2.39.5-0+deb12u2:git_9.orig.tar.xz"))
            .unwrap_err();
        assert!(matches!(e, DebianError::FileNotFound { .. }), "{e}");
        assert!(e.to_string().contains("git_2.39.5.orig.tar.xz"), "{e}");

        let e = r.resolve(&spec("bookworm/twotars=2.0")).unwrap_err();
        assert!(matches!(e, DebianError::AmbiguousFile { .. }), "{e}");
        assert!(e.to_string().contains("twotars_2.0.tar.gz"), "{e}");
        assert!(e.to_string().contains("twotars=2.0:FILE"), "{e}");

        let e = r.resolve(&spec("sid/git=1.0")).unwrap_err();
        assert!(matches!(e, DebianError::SuiteNotFound { .. }), "{e}");
        assert!(e.to_string().contains("may not carry"), "{e}");

        let e = r
            .resolve(&spec("bookworm/binary-armel/libc6=2.36-9+deb12u10"))
            .unwrap_err();
        assert!(matches!(e, DebianError::SuiteNotFound { .. }), "{e}");

        let e = r
            .resolve(&spec("bookworm/binary-arm64/libc6=2.36-9"))
            .unwrap_err();
        assert!(e.to_string().contains("2.36-9+deb12u10"), "{e}");
    }

    #[test]
    fn malformed_index_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dists/bookworm/main/source");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("Sources.xz"),
            xz(b"Package: x\nVersion: 1\nDirectory: pool/main/x/x\nChecksums-Sha256:\n abc\n"),
        )
        .unwrap();
        let mirrors =
            Mirrors::from_base_urls(Some(format!("file://{}", dir.path().display())), None);
        let e = resolve(&spec("bookworm/x=1"), &mirrors, &http()).unwrap_err();
        assert!(matches!(e, DebianError::MalformedIndex { .. }), "{e}");

        std::fs::write(p.join("Sources.xz"), b"not xz").unwrap();
        let e = resolve(&spec("bookworm/x=1"), &mirrors, &http()).unwrap_err();
        assert!(matches!(e, DebianError::Decompress { .. }), "{e}");
    }
}
