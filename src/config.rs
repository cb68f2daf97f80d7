//! The user's `config.toml` and the platform directories dockerbuild uses.
//!
//! Looked up at `$DOCKERBUILD_CONFIG`, else `<platform config dir>/config.toml`
//! (`~/.config/dockerbuild/config.toml` on Linux). A missing file means defaults.
//!
//! ```toml
//! # Where the store lives (overridden by --store and $DOCKERBUILD_STORE).
//! store = "/var/lib/dockerbuild/store"
//! # Binary caches, looked up in order (after --cache and $DOCKERBUILD_CACHES); uploads go
//! # to the first. Default: a directory under the platform cache dir.
//! caches = ["file:///srv/dockerbuild-cache"]
//! # Public keys whose signatures are trusted (`dockerbuild key generate` prints one). With
//! # none, cached entries are checked for integrity only, not provenance.
//! trusted-keys = ["ci-1:Zm9v..."]
//! # The secret key that signs uploads.
//! signing-key = "/etc/dockerbuild/ci-1.secret"
//! # A file holding an OAuth access token for cipd:// caches (when
//! # $DOCKERBUILD_CIPD_TOKEN is unset); without either, CIPD reads are anonymous.
//! cipd-token-file = "/run/secrets/cipd-token"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings read from `config.toml`. Unknown keys are refused so typos do not pass silently.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The store directory.
    pub store: Option<PathBuf>,
    /// Binary cache URLs, looked up in order.
    #[serde(default)]
    pub caches: Vec<String>,
    /// Trusted public keys (`name:base64`).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// A file holding the secret key that signs uploads.
    pub signing_key: Option<PathBuf>,
    /// A file holding an OAuth access token for `cipd://` caches.
    pub cipd_token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file `{}` is invalid:\n{source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "cannot find a home directory for the default {what}\nhint: pass --store or set DOCKERBUILD_STORE"
    )]
    NoHome { what: &'static str },
}

fn dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "dockerbuild")
}

/// The default config file path.
pub fn default_config_path() -> Option<PathBuf> {
    dirs().map(|d| d.config_dir().join("config.toml"))
}

/// The store directory used when neither flag, env nor config names one.
pub fn default_store_dir() -> Result<PathBuf, ConfigError> {
    dirs()
        .map(|d| d.data_dir().join("store"))
        .ok_or(ConfigError::NoHome { what: "store" })
}

impl Config {
    /// Reads `path`; a missing file is the default config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let example = crate::testutil::doc_toml_example(include_str!("config.rs"));
        let c = Config::parse(&example, Path::new("doc")).unwrap();
        assert_eq!(
            c.store.unwrap(),
            PathBuf::from("/var/lib/dockerbuild/store")
        );
        assert!(c.cipd_token_file.is_some());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::parse("stor = 1", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("c.toml"));
    }
}
