//! Python packages from a package index: pinning `NAME==VERSION[:FILENAME]` to one file
//! with its URL, SHA-256 and (when the index says) size.
//!
//! # Spec syntax (after `pypi:`)
//! `NAME==VERSION[:FILENAME]`, e.g. `six==1.16.0`,
//! `cryptography==3.3.2:cryptography-3.3.2.tar.gz`,
//! `setuptools==69.5.1:setuptools-69.5.1-py3-none-any.whl`. Only exact pins. Without
//! FILENAME the release's sdist is chosen, else its single pure-Python wheel
//! (`py3-none-any` or `py2.py3-none-any`).
//!
//! # Which index
//! [`index_url`]: `$DOCKERBUILD_PYPI_INDEX`, else `$PIP_INDEX_URL`, else pip's
//! `global.index-url` setting, else pip's built-in default (asked from `python3`). No
//! index address is written into dockerbuild itself.
//!
//! # How a project is read
//! [`resolve`] fetches the project page `<index>/<normalized name>/` (PEP 503 name
//! normalization) asking for the JSON form (PEP 691; sizes from PEP 700) and falls back
//! to the HTML form (PEP 503 anchors, `#sha256=` fragments, `data-yanked`) when the
//! index answers HTML. File URLs may be relative to the page and are resolved against it.
//!
//! A `file://` index is a directory laid out like the URL space: the page of project
//! `foo-bar` is `<dir>/foo-bar/index.json` (PEP 691 JSON), else `<dir>/foo-bar/index.html`
//! (PEP 503 HTML, the layout pip itself reads from `file://` indexes). Relative file URLs
//! are resolved against that file, i.e. against `<dir>/foo-bar/`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;

use serde::Deserialize;
use tracing::{debug, warn};

use crate::fetch::{FetchError, Http};

/// The spec syntax, shown in errors.
const SYNTAX: &str = "pypi:NAME==VERSION[:FILENAME], e.g. pypi:six==1.16.0 or \
                      pypi:setuptools==69.5.1:setuptools-69.5.1-py3-none-any.whl";

/// What the project page is asked for: PEP 691 JSON first, HTML accepted.
const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
                      application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// `NAME==VERSION[:FILENAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiSpec {
    /// As written; [`normalize`] gives the index form.
    pub name: String,
    pub version: String,
    /// A file of the release, when the default choice (sdist, else pure wheel) is not
    /// wanted.
    pub filename: Option<String>,
}

impl fmt::Display for PypiSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=={}", self.name, self.version)?;
        if let Some(file) = &self.filename {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

/// One file of a release, pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiFile {
    pub filename: String,
    /// Absolute, without fragment.
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    /// When the index gives it (PEP 700 JSON pages).
    pub size: Option<u64>,
}

/// Why a PyPI spec could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PypiError {
    #[error("malformed PyPI spec `{spec}`: {reason}\nexpected {SYNTAX}")]
    MalformedSpec { spec: String, reason: String },
    #[error("cannot find the package index `{index}`: {reason}")]
    IndexNotFound { index: String, reason: String },
    #[error("cannot find project `{name}` on the package index: `{url}` was not found")]
    ProjectNotFound { name: String, url: String },
    #[error(
        "cannot find version {version} of `{name}` at `{url}`; {}",
        versions_hint(.available)
    )]
    VersionNotFound {
        name: String,
        version: String,
        url: String,
        /// Sorted oldest to newest.
        available: Vec<String>,
    },
    #[error(
        "cannot find file `{filename}` in {name} {version} at `{url}`; its files are: {}",
        list(.files)
    )]
    FileNotFound {
        name: String,
        version: String,
        filename: String,
        url: String,
        files: Vec<String>,
    },
    #[error(
        "cannot choose a file of {name} {version} at `{url}`: it has no sdist and no single \
         pure-Python wheel; its files are: {}\nhint: name one, as in pypi:{name}=={version}:FILENAME",
        list(.files)
    )]
    NoDefaultFile {
        name: String,
        version: String,
        url: String,
        files: Vec<String>,
    },
    #[error("cannot pin `{filename}`: the index page `{url}` gives no sha256 for it")]
    NoSha256 { filename: String, url: String },
    #[error("cannot read the package index page `{url}`: {reason}")]
    BadPage { url: String, reason: String },
    #[error(
        "cannot find which package index to use; tried:\n{}\nhint: set DOCKERBUILD_PYPI_INDEX to \
         the index's simple URL (what pip's --index-url takes), or file:///DIR for a local one",
        bullets(.tried)
    )]
    IndexDiscovery { tried: Vec<String> },
    #[error("cannot fetch the package index page of `{name}`")]
    Fetch {
        name: String,
        #[source]
        source: FetchError,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn bullets(items: &[String]) -> String {
    items
        .iter()
        .map(|t| format!("  - {t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn versions_hint(available: &[String]) -> String {
    const SHOWN: usize = 10;
    match available.len() {
        0 => "the project lists no files".to_owned(),
        n if n <= SHOWN => format!("available versions: {}", available.join(", ")),
        n => format!(
            "the latest {SHOWN} of {n} versions: {}",
            available[n - SHOWN..].join(", ")
        ),
    }
}

/// PEP 503 normalization: lowercase, runs of `-`, `_` and `.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep {
                out.push('-');
                sep = false;
            }
            out.push(c.to_ascii_lowercase());
        }
    }
    if sep {
        out.push('-');
    }
    out
}

/// Parses `NAME==VERSION[:FILENAME]` (a leading `pypi:` is accepted too).
pub fn parse_spec(s: &str) -> Result<PypiSpec, PypiError> {
    let bad = |reason: &str| PypiError::MalformedSpec {
        spec: s.to_owned(),
        reason: reason.to_owned(),
    };
    let body = s.trim();
    let body = body.strip_prefix("pypi:").unwrap_or(body);
    let Some((name, rest)) = body.split_once("==") else {
        return Err(
            if body.contains(['<', '>', '~', '!']) || body.contains('=') {
                bad("only exact pins (NAME==VERSION) are supported")
            } else {
                bad("no `==VERSION`")
            },
        );
    };
    let (version, filename) = match rest.split_once(':') {
        Some((v, f)) => (v, Some(f)),
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(bad("the project name is empty"));
    }
    // PEP 508: ASCII letters and digits, with `.`, `_`, `-` inside.
    let name_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(bad(&format!(
            "`{name}` is not a project name (letters, digits and inner `.`, `_`, `-`)"
        )));
    }
    if version.is_empty() {
        return Err(bad("the version is empty"));
    }
    if version.contains('*') {
        return Err(bad("wildcard versions are not pins; give an exact version"));
    }
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!'))
    {
        return Err(bad(&format!("`{version}` is not a version")));
    }
    let filename = match filename {
        None => None,
        Some("") => return Err(bad("the file name after `:` is empty")),
        Some(f) if f.contains(['/', '\\', ':']) || f.chars().any(char::is_whitespace) => {
            return Err(bad(&format!(
                "`{f}` is not a file name (no `/`, `\\`, `:` or spaces)"
            )));
        }
        Some(f) => Some(f.to_owned()),
    };
    Ok(PypiSpec {
        name: name.to_owned(),
        version: version.to_owned(),
        filename,
    })
}

/// The index to use: `$DOCKERBUILD_PYPI_INDEX`, else `$PIP_INDEX_URL`, else
/// `python3 -m pip config get global.index-url`, else pip's built-in default
/// (`python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)'`).
pub fn index_url() -> Result<String, PypiError> {
    discover_index(|k| std::env::var(k).ok(), "python3")
}

fn discover_index(env: impl Fn(&str) -> Option<String>, python: &str) -> Result<String, PypiError> {
    let mut tried = Vec::new();
    for var in ["DOCKERBUILD_PYPI_INDEX", "PIP_INDEX_URL"] {
        match env(var).map(|v| v.trim().to_owned()) {
            Some(v) if !v.is_empty() => {
                debug!(index = %v, "package index from ${var}");
                return Ok(v);
            }
            _ => tried.push(format!("${var}: unset")),
        }
    }
    let attempts: [(&[&str], &str); 2] = [
        (
            &["-m", "pip", "config", "get", "global.index-url"],
            "pip config get global.index-url",
        ),
        (
            &[
                "-c",
                "from pip._internal.models.index import PyPI; print(PyPI.simple_url)",
            ],
            "pip's default index",
        ),
    ];
    for (args, what) in attempts {
        match Command::new(python).args(args).output() {
            Ok(out) if out.status.success() => {
                let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if v.is_empty() {
                    tried.push(format!("{what} (`{python}`): printed nothing"));
                } else {
                    debug!(index = %v, "package index from {what}");
                    return Ok(v);
                }
            }
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                tried.push(format!(
                    "{what} (`{python}`): unset ({}{}{})",
                    out.status,
                    if last.is_empty() { "" } else { ": " },
                    last.trim()
                ));
            }
            Err(e) => tried.push(format!("{what}: cannot run `{python}`: {e}")),
        }
    }
    Err(PypiError::IndexDiscovery { tried })
}

/// Pins `spec` to one file listed by the index `index` (a simple-API base URL, or
/// `file:///DIR` laid out as described in the module docs).
pub fn resolve(spec: &PypiSpec, index: &str, http: &Http) -> Result<PypiFile, PypiError> {
    let norm = normalize(&spec.name);
    let (url, body) = fetch_page(&spec.name, &norm, index, http)?;
    let page = parse_page(&body, &url)?;
    select(spec, &page, &url)
}

/// Fetches a project page; returns the URL it was read from and its body.
fn fetch_page(
    name: &str,
    norm: &str,
    index: &str,
    http: &Http,
) -> Result<(String, Vec<u8>), PypiError> {
    let base = index.trim_end_matches('/');
    let fetch = |source| PypiError::Fetch {
        name: name.to_owned(),
        source,
    };
    if let Some(dir) = base.strip_prefix("file://") {
        if !std::path::Path::new(dir).is_dir() {
            return Err(PypiError::IndexNotFound {
                index: index.to_owned(),
                reason: format!("`{dir}` is not a directory"),
            });
        }
        for page in ["index.json", "index.html"] {
            let url = format!("{base}/{norm}/{page}");
            match http.get_bytes(&url, None) {
                Ok(body) => return Ok((url, body)),
                Err(FetchError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fetch(e)),
            }
        }
        return Err(PypiError::ProjectNotFound {
            name: name.to_owned(),
            url: format!("{base}/{norm}/index.{{json,html}}"),
        });
    }
    let url = format!("{base}/{norm}/");
    match http.get_bytes(&url, Some(ACCEPT)) {
        Ok(body) => Ok((url, body)),
        Err(FetchError::NotFound { .. }) => Err(PypiError::ProjectNotFound {
            name: name.to_owned(),
            url,
        }),
        Err(e) => Err(fetch(e)),
    }
}

/// A file as the project page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexFile {
    filename: String,
    /// Absolute, without fragment.
    url: String,
    sha256: Option<String>,
    size: Option<u64>,
    /// `Some(reason)` (maybe empty) when yanked (PEP 592).
    yanked: Option<String>,
}

#[derive(Debug, Default)]
struct Page {
    files: Vec<IndexFile>,
    /// PEP 700 `versions`, when given.
    versions: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
    #[serde(default)]
    versions: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    yanked: serde_json::Value,
}

/// Parses a PEP 691 JSON page, or a PEP 503 HTML one when the body is not JSON.
fn parse_page(body: &[u8], page_url: &str) -> Result<Page, PypiError> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let page: JsonPage = serde_json::from_slice(body).map_err(|e| PypiError::BadPage {
            url: page_url.to_owned(),
            reason: format!("invalid PEP 691 JSON: {e}"),
        })?;
        let files = page
            .files
            .into_iter()
            .map(|f| {
                let sha256 = f
                    .hashes
                    .get("sha256")
                    .map(|h| check_sha256(h, &f.filename, page_url))
                    .transpose()?;
                let yanked = match f.yanked {
                    serde_json::Value::Bool(true) => Some(String::new()),
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                };
                Ok(IndexFile {
                    url: strip_fragment(&resolve_url(page_url, &f.url)).to_owned(),
                    filename: f.filename,
                    sha256,
                    size: f.size,
                    yanked,
                })
            })
            .collect::<Result<_, PypiError>>()?;
        Ok(Page {
            files,
            versions: page.versions,
        })
    } else {
        debug!(
            url = page_url,
            "the index answered HTML; reading PEP 503 anchors"
        );
        Ok(Page {
            files: parse_html(&String::from_utf8_lossy(body), page_url)?,
            versions: None,
        })
    }
}

fn check_sha256(hex: &str, filename: &str, page_url: &str) -> Result<String, PypiError> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(PypiError::BadPage {
            url: page_url.to_owned(),
            reason: format!("the sha256 of `{filename}` is not 64 hex digits: `{hex}`"),
        })
    }
}

/// Reads the `<a href="URL#sha256=HEX">FILENAME</a>` anchors of a PEP 503 page (and a
/// `<base href>`, which pip honours too).
fn parse_html(html: &str, page_url: &str) -> Result<Vec<IndexFile>, PypiError> {
    let lower = html.to_ascii_lowercase();
    let mut base = page_url.to_owned();
    let mut files = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        if lower[start..].starts_with("<!--") {
            i = lower[start..]
                .find("-->")
                .map_or(html.len(), |e| start + e + 3);
            continue;
        }
        let name_end = lower[start + 1..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(html.len(), |e| start + 1 + e);
        let tag = &lower[start + 1..name_end];
        let (attrs, after) = parse_attrs(html, name_end);
        i = after;
        match tag {
            "base" => {
                if let Some(Some(href)) = attrs.get("href") {
                    base = resolve_url(page_url, href);
                }
            }
            "a" => {
                let text_end = lower[after..].find("</a").map_or(html.len(), |e| after + e);
                i = text_end;
                let Some(Some(href)) = attrs.get("href") else {
                    continue;
                };
                let url = resolve_url(&base, href);
                let (url, fragment) = match url.split_once('#') {
                    Some((u, f)) => (u.to_owned(), Some(f.to_owned())),
                    None => (url, None),
                };
                let mut filename = decode_entities(&strip_tags(&html[after..text_end]))
                    .trim()
                    .to_owned();
                if filename.is_empty() {
                    let path = url.split(['?', '#']).next().unwrap_or("");
                    filename = path.rsplit('/').next().unwrap_or("").to_owned();
                }
                let sha256 = match fragment.as_deref().and_then(|f| f.split_once('=')) {
                    Some((algo, hex)) if algo.eq_ignore_ascii_case("sha256") => {
                        Some(check_sha256(hex, &filename, page_url)?)
                    }
                    _ => None,
                };
                files.push(IndexFile {
                    filename,
                    url,
                    sha256,
                    size: None,
                    yanked: attrs
                        .get("data-yanked")
                        .map(|r| r.clone().unwrap_or_default()),
                });
            }
            _ => {}
        }
    }
    Ok(files)
}

/// Parses attributes from `pos` (just after a tag name) to the closing `>`; returns them
/// (names lowercased, values entity-decoded) and the index after the `>`.
fn parse_attrs(html: &str, mut pos: usize) -> (BTreeMap<String, Option<String>>, usize) {
    let b = html.as_bytes();
    let mut attrs = BTreeMap::new();
    loop {
        while pos < b.len() && (b[pos].is_ascii_whitespace() || b[pos] == b'/') {
            pos += 1;
        }
        if pos >= b.len() {
            return (attrs, b.len());
        }
        if b[pos] == b'>' {
            return (attrs, pos + 1);
        }
        let name_start = pos;
        while pos < b.len() && !b[pos].is_ascii_whitespace() && !matches!(b[pos], b'=' | b'>') {
            pos += 1;
        }
        let name = html[name_start..pos].to_ascii_lowercase();
        while pos < b.len() && b[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let mut value = None;
        if pos < b.len() && b[pos] == b'=' {
            pos += 1;
            while pos < b.len() && b[pos].is_ascii_whitespace() {
                pos += 1;
            }
            let (v_start, v_end) = if pos < b.len() && matches!(b[pos], b'"' | b'\'') {
                let q = b[pos];
                let s = pos + 1;
                let e = b[s..]
                    .iter()
                    .position(|&c| c == q)
                    .map_or(b.len(), |e| s + e);
                pos = (e + 1).min(b.len());
                (s, e)
            } else {
                let s = pos;
                while pos < b.len() && !b[pos].is_ascii_whitespace() && b[pos] != b'>' {
                    pos += 1;
                }
                (s, pos)
            };
            value = Some(decode_entities(&html[v_start..v_end]));
        }
        attrs.entry(name).or_insert(value);
    }
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Decodes the character references an index page may use.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&e| e <= 10).and_then(|semi| {
            let ent = &rest[1..semi];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let num = ent.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(u, _)| u)
}

fn has_scheme(r: &str) -> bool {
    match r.find(':') {
        Some(i) if i > 0 => {
            let s = &r[..i];
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        _ => false,
    }
}

/// Resolves the reference `r` against the absolute URL `base` (RFC 3986 §5.2).
fn resolve_url(base: &str, r: &str) -> String {
    let r = r.trim();
    if has_scheme(r) {
        return r.to_owned();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return r.to_owned();
    };
    if let Some(net) = r.strip_prefix("//") {
        return format!("{scheme}://{net}");
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let base_path_q = &rest[auth_end..];
    let base_path = base_path_q.split(['?', '#']).next().unwrap_or("");
    let base_path = if base_path.is_empty() { "/" } else { base_path };
    if r.is_empty() || r.starts_with('#') {
        return format!("{}{r}", strip_fragment(base));
    }
    if r.starts_with('?') {
        return format!("{scheme}://{authority}{base_path}{r}");
    }
    let split = r.find(['?', '#']).unwrap_or(r.len());
    let (path, suffix) = r.split_at(split);
    let merged = if path.starts_with('/') {
        path.to_owned()
    } else {
        let dir = &base_path[..=base_path.rfind('/').unwrap_or(0)];
        format!("{dir}{path}")
    };
    format!(
        "{scheme}://{authority}{}{suffix}",
        remove_dot_segments(&merged)
    )
}

fn remove_dot_segments(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    let last = segs.len() - 1;
    let mut out: Vec<&str> = Vec::new();
    for (i, seg) in segs.iter().enumerate().skip(1) {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// What a file name says about its project, version and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dist {
    /// Rank: lower is preferred (`.tar.gz`, then `.zip`, then older formats).
    Sdist {
        version: String,
        rank: u8,
    },
    Wheel {
        version: String,
        pure_py3: bool,
    },
}

impl Dist {
    fn version(&self) -> &str {
        match self {
            Dist::Sdist { version, .. } | Dist::Wheel { version, .. } => version,
        }
    }
}

/// Classifies `filename` as an sdist or wheel of the project `norm` (normalized).
fn classify(filename: &str, norm: &str) -> Option<Dist> {
    let lower = filename.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix(".whl") {
        let stem = &filename[..stem.len()];
        let parts: Vec<&str> = stem.split('-').collect();
        if !(parts.len() == 5 || parts.len() == 6) || normalize(parts[0]) != norm {
            return None;
        }
        let n = parts.len();
        let (py, abi, plat) = (parts[n - 3], parts[n - 2], parts[n - 1]);
        let pure_py3 = py.split('.').any(|t| t == "py3") && abi == "none" && plat == "any";
        return Some(Dist::Wheel {
            version: parts[1].to_owned(),
            pure_py3,
        });
    }
    let exts = [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz"];
    let (rank, ext) = exts.iter().enumerate().find(|(_, e)| lower.ends_with(*e))?;
    let stem = &filename[..filename.len() - ext.len()];
    stem.match_indices('-')
        .find(|(i, _)| normalize(&stem[..*i]) == norm)
        .map(|(i, _)| Dist::Sdist {
            version: stem[i + 1..].to_owned(),
            rank: rank as u8,
        })
}

/// Whether a version from a file name is the one asked for (case-insensitive; wheels
/// write `-` as `_`).
fn same_version(found: &str, wanted: &str) -> bool {
    let canon = |v: &str| v.to_ascii_lowercase().replace('_', "-");
    canon(found) == canon(wanted)
}

/// Chooses the file `spec` names among a parsed page.
fn select(spec: &PypiSpec, page: &Page, page_url: &str) -> Result<PypiFile, PypiError> {
    let norm = normalize(&spec.name);
    let classified: Vec<(&IndexFile, Dist)> = page
        .files
        .iter()
        .filter_map(|f| classify(&f.filename, &norm).map(|d| (f, d)))
        .collect();
    let of_version: Vec<&(&IndexFile, Dist)> = classified
        .iter()
        .filter(|(_, d)| same_version(d.version(), &spec.version))
        .collect();
    if of_version.is_empty() {
        let mut available: Vec<String> = match &page.versions {
            Some(v) => v.clone(),
            None => classified
                .iter()
                .map(|(_, d)| d.version().to_owned())
                .collect(),
        };
        available.sort_by(|a, b| loose_version_cmp(a, b));
        available.dedup();
        return Err(PypiError::VersionNotFound {
            name: spec.name.clone(),
            version: spec.version.clone(),
            url: page_url.to_owned(),
            available,
        });
    }
    let names = || -> Vec<String> { of_version.iter().map(|(f, _)| f.filename.clone()).collect() };
    let chosen: &IndexFile = match &spec.filename {
        Some(wanted) => of_version
            .iter()
            .map(|(f, _)| *f)
            .find(|f| f.filename == *wanted)
            .or_else(|| {
                of_version
                    .iter()
                    .map(|(f, _)| *f)
                    .find(|f| f.filename.eq_ignore_ascii_case(wanted))
            })
            .ok_or_else(|| PypiError::FileNotFound {
                name: spec.name.clone(),
                version: spec.version.clone(),
                filename: wanted.clone(),
                url: page_url.to_owned(),
                files: names(),
            })?,
        None => {
            let sdist = of_version
                .iter()
                .filter_map(|(f, d)| match d {
                    Dist::Sdist { rank, .. } => Some((*rank, *f)),
                    Dist::Wheel { .. } => None,
                })
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, f)| f);
            let pure: Vec<&IndexFile> = of_version
                .iter()
                .filter(|(_, d)| matches!(d, Dist::Wheel { pure_py3: true, .. }))
                .map(|(f, _)| *f)
                .collect();
            match (sdist, pure.as_slice()) {
                (Some(f), _) => f,
                (None, [only]) => only,
                _ => {
                    return Err(PypiError::NoDefaultFile {
                        name: spec.name.clone(),
                        version: spec.version.clone(),
                        url: page_url.to_owned(),
                        files: names(),
                    });
                }
            }
        }
    };
    if let Some(reason) = &chosen.yanked {
        warn!(
            file = %chosen.filename,
            "{} {} is yanked{}{}; using it because it is pinned exactly",
            spec.name,
            spec.version,
            if reason.is_empty() { "" } else { ": " },
            reason
        );
    }
    let sha256 = chosen.sha256.clone().ok_or_else(|| PypiError::NoSha256 {
        filename: chosen.filename.clone(),
        url: page_url.to_owned(),
    })?;
    Ok(PypiFile {
        filename: chosen.filename.clone(),
        url: chosen.url.clone(),
        sha256,
        size: chosen.size,
    })
}

/// Orders versions well enough for messages: digit runs compare as numbers, the rest as
/// text (pre-releases are not placed as PEP 440 would).
fn loose_version_cmp(a: &str, b: &str) -> Ordering {
    fn tokens(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ta, tb) = (tokens(a), tokens(b));
    for ((da, xa), (db, xb)) in ta.iter().zip(&tb) {
        let ord = if *da && *db {
            let (xa, xb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            xa.len().cmp(&xb.len()).then_with(|| xa.cmp(xb))
        } else {
            xa.cmp(xb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ta.len().cmp(&tb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::HttpOptions;

    fn fixtures() -> String {
        format!(
            "file://{}/tests/fixtures/pypi/index",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn http() -> Http {
        Http::new(HttpOptions::default())
    }

    fn resolve_str(spec: &str) -> Result<PypiFile, PypiError> {
        resolve(&parse_spec(spec).unwrap(), &fixtures(), &http())
    }

    const FILES: &str = "https://files.example.invalid/packages";

    #[test]
    fn names_are_normalized_as_pep_503_says() {
        assert_eq!(normalize("Six"), "six");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("Foo__Bar-.-baz"), "foo-bar-baz");
        assert_eq!(normalize("MarkupSafe"), "markupsafe");
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse_spec("six==1.16.0").unwrap(),
            PypiSpec {
                name: "six".into(),
                version: "1.16.0".into(),
                filename: None
            }
        );
        let s = parse_spec("pypi:setuptools==69.5.1:setuptools-69.5.1-py3-none-any.whl").unwrap();
        assert_eq!(s.name, "setuptools");
        assert_eq!(s.version, "69.5.1");
        assert_eq!(
            s.filename.as_deref(),
            Some("setuptools-69.5.1-py3-none-any.whl")
        );
        assert_eq!(
            s.to_string(),
            "setuptools==69.5.1:setuptools-69.5.1-py3-none-any.whl"
        );
        assert_eq!(
            parse_spec("Zope.Interface==1!2.0+local").unwrap().version,
            "1!2.0+local"
        );
    }

    #[test]
    fn malformed_specs_show_the_syntax() {
        for (spec, says) in [
            ("six", "no `==VERSION`"),
            ("six>=1.0", "only exact pins"),
            ("six~=1.0", "only exact pins"),
            ("==1.0", "name is empty"),
            ("-six==1.0", "not a project name"),
            ("six==", "version is empty"),
            ("six==1.*", "wildcard"),
            ("six===1.0", "not a version"),
            ("six==1.0:", "file name after `:` is empty"),
            ("six==1.0:a/b.whl", "not a file name"),
        ] {
            let e = parse_spec(spec).unwrap_err();
            assert!(
                matches!(e, PypiError::MalformedSpec { .. }),
                "{spec}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(says), "{spec}: {msg}");
            assert!(msg.contains("NAME==VERSION[:FILENAME]"), "{msg}");
        }
    }

    #[test]
    fn relative_urls_resolve_against_the_page() {
        let page = "https://idx.example.invalid/simple/six/";
        for (r, want) in [
            (
                "../../packages/six-1.0.tar.gz",
                "https://idx.example.invalid/packages/six-1.0.tar.gz",
            ),
            (
                "six-1.0.tar.gz",
                "https://idx.example.invalid/simple/six/six-1.0.tar.gz",
            ),
            ("/p/six.whl", "https://idx.example.invalid/p/six.whl"),
            (
                "//other.example.invalid/x",
                "https://other.example.invalid/x",
            ),
            ("https://a.example.invalid/x", "https://a.example.invalid/x"),
            (
                "./a/./b/../c?q=1#h",
                "https://idx.example.invalid/simple/six/a/c?q=1#h",
            ),
            ("../../../../x", "https://idx.example.invalid/x"),
        ] {
            assert_eq!(resolve_url(page, r), want, "{r}");
        }
        assert_eq!(
            resolve_url("file:///srv/idx/six/index.json", "../files/six.whl"),
            "file:///srv/idx/files/six.whl"
        );
        assert_eq!(
            resolve_url("https://h.example.invalid", "x"),
            "https://h.example.invalid/x"
        );
    }

    #[test]
    fn entities_decode() {
        assert_eq!(
            decode_entities("a&amp;b&lt;&#62;&#x41;&bogus;&"),
            "a&b<>A&bogus;&"
        );
    }

    #[test]
    fn file_names_are_classified() {
        let sdist = |v: &str, rank| {
            Some(Dist::Sdist {
                version: v.into(),
                rank,
            })
        };
        assert_eq!(classify("six-1.16.0.tar.gz", "six"), sdist("1.16.0", 0));
        assert_eq!(
            classify("MarkupSafe-2.1.5.tar.gz", "markupsafe"),
            sdist("2.1.5", 0)
        );
        assert_eq!(
            classify("zope.interface-6.0.zip", "zope-interface"),
            sdist("6.0", 1)
        );
        // Sdist names are ambiguous; the version part then simply never matches.
        assert_eq!(classify("foo-bar-1.0.tar.gz", "foo"), sdist("bar-1.0", 0));
        assert_eq!(classify("foo-1.0.tar.gz", "foo-bar"), None);
        assert_eq!(classify("foo-bar-1.0.tar.gz", "foo-bar"), sdist("1.0", 0));
        assert_eq!(
            classify("six-1.16.0-py2.py3-none-any.whl", "six"),
            Some(Dist::Wheel {
                version: "1.16.0".into(),
                pure_py3: true
            })
        );
        assert_eq!(
            classify("cffi-1.16.0-cp311-cp311-manylinux_2_17_x86_64.whl", "cffi"),
            Some(Dist::Wheel {
                version: "1.16.0".into(),
                pure_py3: false
            })
        );
        assert_eq!(
            classify("foo-1.0-1-py2-none-any.whl", "foo"),
            Some(Dist::Wheel {
                version: "1.0".into(),
                pure_py3: false
            })
        );
        assert_eq!(classify("six-1.16.0.egg", "six"), None);
    }

    #[test]
    fn versions_sort_loosely() {
        let mut v = vec!["1.10.0", "1.9", "1.2.10", "1.2.9", "0.9", "10.0"];
        v.sort_by(|a, b| loose_version_cmp(a, b));
        assert_eq!(v, ["0.9", "1.2.9", "1.2.10", "1.9", "1.10.0", "10.0"]);
    }

    #[test]
    fn a_json_page_gives_the_sdist_by_default() {
        let f = resolve_str("Six==1.16.0").unwrap();
        assert_eq!(f.filename, "six-1.16.0.tar.gz");
        assert_eq!(f.url, format!("{FILES}/six-1.16.0.tar.gz"));
        assert_eq!(f.sha256, "1".repeat(64));
        assert_eq!(f.size, Some(34041));
    }

    #[test]
    fn a_json_page_gives_a_named_wheel_and_resolves_relative_urls() {
        let f = resolve_str("six==1.16.0:six-1.16.0-py2.py3-none-any.whl").unwrap();
        assert_eq!(f.sha256, "c".repeat(64), "uppercase hex is lowered");
        assert_eq!(f.size, Some(11053));
        assert_eq!(
            f.url,
            format!(
                "file://{}/tests/fixtures/pypi/files/six-1.16.0-py2.py3-none-any.whl",
                env!("CARGO_MANIFEST_DIR")
            )
        );
    }

    #[test]
    fn a_missing_version_lists_the_latest_ten() {
        let e = resolve_str("six==9.9").unwrap_err();
        let PypiError::VersionNotFound { available, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(available.len(), 12);
        let msg = e.to_string();
        assert!(
            msg.contains("the latest 10 of 12 versions: 1.7.0, 1.8.0,"),
            "{msg}"
        );
        assert!(msg.ends_with("1.15.0, 1.16.0"), "{msg}");
    }

    #[test]
    fn a_missing_file_lists_the_files_of_the_version() {
        let e = resolve_str("six==1.16.0:six-1.16.0.zip").unwrap_err();
        assert!(matches!(e, PypiError::FileNotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("its files are: six-1.16.0-py2.py3-none-any.whl, six-1.16.0.tar.gz"),
            "{msg}"
        );
    }

    #[test]
    fn an_html_page_is_read() {
        let f = resolve_str("demo_pkg==1.0").unwrap();
        assert_eq!(f.filename, "Demo.Pkg-1.0.tar.gz");
        assert_eq!(f.url, format!("{FILES}/Demo.Pkg-1.0.tar.gz?a=1&b=2"));
        assert_eq!(f.sha256, "a".repeat(64));
        assert_eq!(f.size, None);
        // Only a pure wheel: that one, even though yanked (the pin is exact).
        let f = resolve_str("demo-pkg==2.0").unwrap();
        assert_eq!(f.filename, "demo_pkg-2.0-py3-none-any.whl");
        assert_eq!(f.url, format!("{FILES}/demo_pkg-2.0-py3-none-any.whl"));
        assert_eq!(f.sha256, "b".repeat(64));
        // A relative href, and a <base>-less page: relative to the page.
        let f = resolve_str("demo-pkg==2.0:demo_pkg-2.0-cp311-cp311-linux_x86_64.whl").unwrap();
        assert_eq!(
            f.url,
            format!(
                "file://{}/tests/fixtures/pypi/files/demo_pkg-2.0-cp311-cp311-linux_x86_64.whl",
                env!("CARGO_MANIFEST_DIR")
            )
        );
    }

    #[test]
    fn html_yanked_attributes_are_read() {
        let page = format!("{}/demo-pkg/index.html", fixtures());
        let body = std::fs::read(page.strip_prefix("file://").unwrap()).unwrap();
        let files = parse_page(&body, &page).unwrap().files;
        let yanked: Vec<_> = files
            .iter()
            .map(|f| (f.filename.as_str(), f.yanked.as_deref()))
            .filter(|(_, y)| y.is_some())
            .collect();
        assert_eq!(
            yanked,
            [("demo_pkg-2.0-py3-none-any.whl", Some("broken <metadata>"))]
        );
    }

    #[test]
    fn json_yanked_values_are_read() {
        let page = format!("{}/six/index.json", fixtures());
        let body = std::fs::read(page.strip_prefix("file://").unwrap()).unwrap();
        let files = parse_page(&body, &page).unwrap().files;
        let yanked: Vec<_> = files
            .iter()
            .filter_map(|f| Some((f.filename.as_str(), f.yanked.as_deref()?)))
            .collect();
        assert_eq!(
            yanked,
            [("six-1.16.0.tar.gz", "not really, a reason string")]
        );
    }

    #[test]
    fn a_file_without_sha256_is_refused() {
        let e = resolve_str("demo-pkg==3.0").unwrap_err();
        assert!(matches!(e, PypiError::NoSha256 { .. }), "{e:?}");
        assert!(e.to_string().contains("demo_pkg-3.0.tar.gz"), "{e}");
    }

    #[test]
    fn no_default_without_sdist_or_single_pure_wheel() {
        let e = resolve_str("demo-pkg==4.0").unwrap_err();
        assert!(matches!(e, PypiError::NoDefaultFile { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("demo_pkg-4.0-cp311-cp311-linux_x86_64.whl"),
            "{msg}"
        );
        assert!(msg.contains("pypi:demo-pkg==4.0:FILENAME"), "{msg}");
    }

    #[test]
    fn an_unknown_project_or_index_is_named() {
        let e = resolve_str("nonexistent-project==1.0").unwrap_err();
        assert!(matches!(e, PypiError::ProjectNotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("nonexistent-project"), "{e}");
        let e = resolve(
            &parse_spec("six==1.16.0").unwrap(),
            "file:///nonexistent/dockerbuild-index",
            &http(),
        )
        .unwrap_err();
        assert!(matches!(e, PypiError::IndexNotFound { .. }), "{e:?}");
    }

    #[test]
    fn bad_json_is_reported() {
        let e = parse_page(b" {\"files\": 3}", "file:///x/index.json").unwrap_err();
        assert!(e.to_string().contains("invalid PEP 691 JSON"), "{e}");
        let e = parse_page(
            br#"{"files":[{"filename":"a-1.tar.gz","url":"a","hashes":{"sha256":"xyz"}}]}"#,
            "file:///x/index.json",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not 64 hex digits"), "{e}");
    }

    #[test]
    fn the_index_comes_from_the_environment_first() {
        let env = |k: &str| match k {
            "DOCKERBUILD_PYPI_INDEX" => Some("file:///a".to_owned()),
            "PIP_INDEX_URL" => Some("file:///b".to_owned()),
            _ => None,
        };
        assert_eq!(
            discover_index(env, "/nonexistent/python3").unwrap(),
            "file:///a"
        );
        let env = |k: &str| (k == "PIP_INDEX_URL").then(|| "file:///b".to_owned());
        assert_eq!(
            discover_index(env, "/nonexistent/python3").unwrap(),
            "file:///b"
        );
    }

    #[test]
    fn failed_discovery_says_what_was_tried() {
        let e = discover_index(|_| Some(" ".to_owned()), "/nonexistent/python3").unwrap_err();
        let msg = e.to_string();
        for part in [
            "$DOCKERBUILD_PYPI_INDEX: unset",
            "$PIP_INDEX_URL: unset",
            "pip config get global.index-url: cannot run `/nonexistent/python3`",
            "pip's default index: cannot run",
            "hint: set DOCKERBUILD_PYPI_INDEX",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // A python that fails (as `pip config get` does for an unset key) counts as unset.
        let e = discover_index(|_| None, "false").unwrap_err();
        assert!(e.to_string().contains("(`false`): unset"), "{e}");
    }
}
