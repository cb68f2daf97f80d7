//! Sources: what a build consumes, named in the catalogue (`sources.toml`), pinned in the
//! lockfile ([`crate::lock`]) and fetched into the store as `source` entries.
//!
//! A source lists URLs tried in order (mirrors). Besides `https://`, `http://` and
//! `file://`, two schemes resolve through an index to a file and its SHA-256:
//! - `pypi:NAME==VERSION[:FILENAME]` ([`pypi`]), through the index pip uses;
//! - `debian:SUITE/SOURCEPKG=VERSION[:FILE]` and `debian:SUITE/binary-ARCH/PKG=VERSION`
//!   ([`debian`]), through the archive apt uses.
//!
//! Resolved locations recorded in the lockfile never contain a registry's host: a Debian
//! file is `debian-pool:SUITE:PATH` (the mirror is read from apt's configuration when
//! fetching) and a PyPI file stays `pypi:NAME==VERSION:FILENAME`.

pub mod debian;
mod fetcher;
pub mod pypi;

pub use fetcher::{Fetcher, Pin, Resolution, file_name_of};

use serde::{Deserialize, Serialize};

use crate::fetch::FetchError;
use crate::store::StoreError;

/// One source in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique within the catalogue.
    pub name: String,
    pub version: String,
    /// Tried in order until one yields the pinned bytes.
    pub urls: Vec<String>,
    /// Upstream SHA-256 (required for plain URLs unless `lock` may trust the first fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A URL of a source, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Http(String),
    File(String),
    Pypi(pypi::PypiSpec),
    Debian(debian::DebianSpec),
    /// A resolved Debian file: suite and archive-relative path.
    DebianPool {
        suite: String,
        path: String,
    },
}

/// Something wrong with a source, its lockfile entry, or its bytes.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A binary cache failed while serving or taking the source.
    #[error(transparent)]
    Cache(Box<crate::cache::CacheError>),
    #[error(
        "source `{name}`: unsupported URL `{url}`\nhint: use https://, http://, file://, pypi:NAME==VERSION[:FILE] or debian:SUITE/PKG=VERSION[:FILE]"
    )]
    UnsupportedUrl { name: String, url: String },
    #[error("source `{name}` has no URLs")]
    NoUrls { name: String },
    #[error(
        "source `{name}`: `{url}` has SHA-256 {actual}, but {expected} is pinned; nothing was added\nhint: if upstream really changed, re-pin it with `dockerbuild lock --update {name}`"
    )]
    Sha256Mismatch {
        name: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "source `{name}`: `{url}` is {actual} bytes, but {expected} are pinned; nothing was added"
    )]
    SizeMismatch {
        name: String,
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("source `{name}`: the mirrors disagree: {first} says SHA-256 {a}, {second} says {b}")]
    MirrorsDisagree {
        name: String,
        first: String,
        a: String,
        second: String,
        b: String,
    },
    #[error("source `{name}`: `{sha256}` is not a SHA-256 (64 hex digits)")]
    BadSha256 { name: String, sha256: String },
    #[error("source `{name}`: every URL failed:\n  {}", errors.join("\n  "))]
    AllFailed { name: String, errors: Vec<String> },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    // Boxed: the resolvers' errors carry listings and would bloat every Result.
    #[error(transparent)]
    Debian(Box<debian::DebianError>),
    #[error(transparent)]
    Pypi(Box<pypi::PypiError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<debian::DebianError> for SourceError {
    fn from(e: debian::DebianError) -> Self {
        SourceError::Debian(Box::new(e))
    }
}

impl From<crate::cache::CacheError> for SourceError {
    fn from(e: crate::cache::CacheError) -> Self {
        SourceError::Cache(Box::new(e))
    }
}

impl From<pypi::PypiError> for SourceError {
    fn from(e: pypi::PypiError) -> Self {
        SourceError::Pypi(Box::new(e))
    }
}

impl Location {
    /// Parses a catalogue URL or a lockfile location.
    pub fn parse(name: &str, url: &str) -> Result<Location, SourceError> {
        if url.starts_with("https://") || url.starts_with("http://") {
            Ok(Location::Http(url.to_owned()))
        } else if url.starts_with("file://") {
            Ok(Location::File(url.to_owned()))
        } else if let Some(rest) = url.strip_prefix("pypi:") {
            Ok(Location::Pypi(pypi::parse_spec(rest)?))
        } else if let Some(rest) = url.strip_prefix("debian:") {
            Ok(Location::Debian(debian::parse_spec(rest)?))
        } else if let Some(rest) = url.strip_prefix("debian-pool:") {
            match rest.split_once(':') {
                Some((suite, path)) if !suite.is_empty() && path.starts_with("pool/") => {
                    Ok(Location::DebianPool {
                        suite: suite.to_owned(),
                        path: path.to_owned(),
                    })
                }
                _ => Err(SourceError::UnsupportedUrl {
                    name: name.to_owned(),
                    url: url.to_owned(),
                }),
            }
        } else {
            Err(SourceError::UnsupportedUrl {
                name: name.to_owned(),
                url: url.to_owned(),
            })
        }
    }
}

/// Checks a SHA-256 written by a person.
pub fn check_sha256(name: &str, s: &str) -> Result<String, SourceError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(SourceError::BadSha256 {
            name: name.to_owned(),
            sha256: s.to_owned(),
        })
    }
}
