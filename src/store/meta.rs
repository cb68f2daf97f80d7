//! What the store records about each entry, and which names an entry may have.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The version of the metadata and layout format; also the store's subdirectory name (`v1`).
pub const FORMAT_VERSION: u32 = 1;

/// What an entry is for. Purely descriptive: it does not change the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Source,
    Toolchain,
    Python,
    Perl,
    Wheel,
    Output,
    #[default]
    Other,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Source,
        Kind::Toolchain,
        Kind::Python,
        Kind::Perl,
        Kind::Wheel,
        Kind::Output,
        Kind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Toolchain => "toolchain",
            Kind::Python => "python",
            Kind::Perl => "perl",
            Kind::Wheel => "wheel",
            Kind::Output => "output",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind `{s}`; expected one of {}", all.join(", "))
            })
    }
}

/// Everything the store records about one entry (`.meta/<hex>.json`). Immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Metadata format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// The entry's address (see `store-format/README.md`).
    pub digest: Digest,
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the contents came from (a URL, a build key, a path), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Entries this one needs; gc keeps them alive while this one lives. Sorted, unique.
    #[serde(default)]
    pub references: Vec<Digest>,
    /// Bytes of file contents.
    pub size: u64,
    /// Files, symlinks and directories in the tree (1 for a plain file).
    pub nodes: u64,
    /// For build outputs: the build that produced the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRecord>,
}

/// How a build output was made: its key (the hash of everything that went into it) and
/// the tail of its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub key: Digest,
    pub platform: String,
    pub log_tail: String,
}

/// The caller-supplied part of an entry's metadata.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub name: String,
    pub kind: Kind,
    pub version: Option<String>,
    pub origin: Option<String>,
    pub references: Vec<Digest>,
    pub build: Option<BuildRecord>,
}

impl NewEntry {
    pub fn new(name: impl Into<String>, kind: Kind) -> Self {
        NewEntry {
            name: name.into(),
            kind,
            ..Default::default()
        }
    }
}

/// Why a name cannot name an entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid entry name `{name}`: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

/// Longest allowed entry name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Checks an entry name: 1–200 bytes of `A-Z a-z 0-9 + - . _ ? =`, not starting with `.`
/// (dot names are the store's own bookkeeping).
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let err = |reason| {
        Err(InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return err("it is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return err("it starts with `.`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
    {
        return err("only letters, digits and `+ - . _ ? =` are allowed");
    }
    Ok(())
}

/// Turns an arbitrary file name into a valid entry name (invalid bytes become `_`).
pub fn sanitize_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.remove(0);
    }
    s.truncate(MAX_NAME_LEN);
    if s.is_empty() { "entry".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("openssl-1.1.1w.tar.gz").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(".tmp").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"a".repeat(201)).is_err());
        assert_eq!(sanitize_name(".hidden dir/x"), "hidden_dir_x");
        assert!(validate_name(&sanitize_name("ü..")).is_ok());
    }

    #[test]
    fn kinds_parse() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        assert!("bogus".parse::<Kind>().unwrap_err().contains("source"));
    }
}
