//! Resolving catalogue URLs to pinned files, and fetching pinned files into the store.

use std::sync::Mutex;

use tracing::{debug, info};

use super::{Location, SourceError, SourceSpec, check_sha256, debian, pypi};
use crate::digest::Digest;
use crate::fetch::{Fetched, Http};
use crate::progress::Progress;
use crate::store::{Entry, Kind, LocalStore, NewEntry, sanitize_name};

/// What `lock` learns about a source before fetching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub file: String,
    pub locations: Vec<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// A file to fetch, as pinned (or about to be pinned) in the lockfile.
#[derive(Debug, Clone)]
pub struct Pin<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub file: &'a str,
    pub locations: &'a [String],
    /// Known upstream hash; `None` trusts the first fetch (plain URLs without a hash).
    pub sha256: Option<&'a str>,
    pub size: Option<u64>,
    /// Known store address; a fetched file with another address is refused.
    pub blake3: Option<Digest>,
}

/// Shared by parallel downloads; index look-ups are cached per run.
pub struct Fetcher {
    pub http: Http,
    mirrors: Mutex<Option<debian::Mirrors>>,
    pypi_index: Mutex<Option<String>>,
}

impl Fetcher {
    pub fn new(http: Http) -> Self {
        Fetcher {
            http,
            mirrors: Mutex::new(None),
            pypi_index: Mutex::new(None),
        }
    }

    fn mirrors(&self) -> Result<debian::Mirrors, SourceError> {
        let mut m = self.mirrors.lock().expect("mirrors lock");
        if m.is_none() {
            *m = Some(debian::Mirrors::from_system()?);
        }
        Ok(m.clone().expect("set above"))
    }

    fn pypi_index(&self) -> Result<String, SourceError> {
        let mut i = self.pypi_index.lock().expect("index lock");
        if i.is_none() {
            *i = Some(pypi::index_url()?);
        }
        Ok(i.clone().expect("set above"))
    }

    /// Resolves every URL of a catalogue source; indexed schemes give the file and hash.
    pub fn resolve(
        &self,
        spec: &SourceSpec,
        debian: &mut Option<debian::Resolver<'_>>,
    ) -> Result<Resolution, SourceError> {
        if spec.urls.is_empty() {
            return Err(SourceError::NoUrls {
                name: spec.name.clone(),
            });
        }
        let pinned = spec
            .sha256
            .as_deref()
            .map(|s| check_sha256(&spec.name, s))
            .transpose()?;
        let mut res = Resolution {
            file: String::new(),
            locations: Vec::new(),
            sha256: pinned.clone(),
            size: spec.size,
        };
        let mut first_hash: Option<(String, String)> = pinned.map(|h| ("sources.toml".into(), h));
        let mut failures = Vec::new();
        for url in &spec.urls {
            let resolved = self.resolve_one(&spec.name, url, debian);
            let (file, location, sha, size) = match resolved {
                Ok(r) => r,
                // One mirror's index may have moved on; the others may still pin it.
                Err(e) if spec.urls.len() > 1 => {
                    tracing::warn!(source = %spec.name, url, "{e}");
                    failures.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(sha) = sha {
                match &first_hash {
                    Some((where_, h)) if *h != sha => {
                        return Err(SourceError::MirrorsDisagree {
                            name: spec.name.clone(),
                            first: where_.clone(),
                            a: h.clone(),
                            second: url.clone(),
                            b: sha,
                        });
                    }
                    Some(_) => {}
                    None => first_hash = Some((url.clone(), sha.clone())),
                }
                res.sha256 = Some(sha);
            }
            if res.size.is_none() {
                res.size = size;
            }
            if res.file.is_empty() {
                res.file = sanitize_name(&file);
            }
            res.locations.push(location);
        }
        if res.locations.is_empty() {
            return Err(SourceError::AllFailed {
                name: spec.name.clone(),
                errors: failures,
            });
        }
        Ok(res)
    }

    /// Resolves one URL to (file name, lockfile location, index SHA-256, size).
    #[allow(clippy::type_complexity)]
    fn resolve_one(
        &self,
        name: &str,
        url: &str,
        debian: &mut Option<debian::Resolver<'_>>,
    ) -> Result<(String, String, Option<String>, Option<u64>), SourceError> {
        Ok(match Location::parse(name, url)? {
            Location::Http(u) | Location::File(u) => (file_name_of(&u), u.clone(), None, None),
            Location::DebianPool { path, .. } => (file_name_of(&path), url.to_owned(), None, None),
            Location::Pypi(p) => {
                let f = pypi::resolve(&p, &self.pypi_index()?, &self.http)?;
                let loc = format!("pypi:{}=={}:{}", p.name, p.version, f.filename);
                (f.filename, loc, Some(f.sha256), f.size)
            }
            Location::Debian(d) => {
                let r = debian.as_mut().expect("caller provides a Debian resolver");
                let f = r.resolve(&d)?;
                let loc = format!("debian-pool:{}:{}", f.suite, f.path);
                (f.file_name, loc, Some(f.sha256), Some(f.size))
            }
        })
    }

    /// The URL to download a lockfile location from, and the SHA-256 the index gives.
    fn concrete_url(
        &self,
        name: &str,
        location: &str,
    ) -> Result<(String, Option<String>), SourceError> {
        match Location::parse(name, location)? {
            Location::Http(u) | Location::File(u) => Ok((u, None)),
            Location::DebianPool { suite, path } => {
                let base = self.mirrors()?.base_for(&suite)?;
                Ok((format!("{}/{}", base.trim_end_matches('/'), path), None))
            }
            Location::Pypi(p) => {
                let f = pypi::resolve(&p, &self.pypi_index()?, &self.http)?;
                Ok((f.url, Some(f.sha256)))
            }
            Location::Debian(_) => Err(SourceError::UnsupportedUrl {
                name: name.to_owned(),
                url: location.to_owned(),
            }),
        }
    }

    /// Fetches a pinned file into the store, trying its locations in order. The file is
    /// added only if its SHA-256, size and (when known) store address match the pins.
    pub fn fetch(
        &self,
        store: &LocalStore,
        pin: &Pin<'_>,
        progress: &dyn Progress,
    ) -> Result<(Entry, Fetched), SourceError> {
        let mut errors = Vec::new();
        for location in pin.locations {
            match self.fetch_one(store, pin, location, progress) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    info!(source = pin.name, location, "{e}");
                    errors.push(e);
                }
            }
        }
        if errors.len() == 1 {
            return Err(errors.remove(0));
        }
        Err(SourceError::AllFailed {
            name: pin.name.to_owned(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        })
    }

    fn fetch_one(
        &self,
        store: &LocalStore,
        pin: &Pin<'_>,
        location: &str,
        progress: &dyn Progress,
    ) -> Result<(Entry, Fetched), SourceError> {
        let (url, index_sha) = self.concrete_url(pin.name, location)?;
        if let (Some(idx), Some(pinned)) = (&index_sha, pin.sha256)
            && idx != pinned
        {
            return Err(SourceError::Sha256Mismatch {
                name: pin.name.to_owned(),
                url: format!("{location} (index)"),
                expected: pinned.to_owned(),
                actual: idx.clone(),
            });
        }
        debug!(source = pin.name, url, "fetching");
        let mut staged = store.stage_file()?;
        let fetched = self.http.download(&url, pin.size, &mut staged, progress)?;
        if let Some(expected) = pin.sha256
            && expected != fetched.sha256
        {
            return Err(SourceError::Sha256Mismatch {
                name: pin.name.to_owned(),
                url,
                expected: expected.to_owned(),
                actual: fetched.sha256,
            });
        }
        if let Some(expected) = pin.size
            && expected != fetched.size
        {
            return Err(SourceError::SizeMismatch {
                name: pin.name.to_owned(),
                url,
                expected,
                actual: fetched.size,
            });
        }
        let new = NewEntry {
            name: pin.file.to_owned(),
            kind: Kind::Source,
            version: Some(pin.version.to_owned()),
            origin: Some(location.to_owned()),
            references: Vec::new(),
            build: None,
        };
        let entry = store.commit_file(staged, &new, false, pin.blake3)?;
        Ok((entry, fetched))
    }
}

/// The last path segment of a URL or path, without query or fragment.
pub fn file_name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(file_name_of("https://h/a/b/x-1.tar.gz?x=1#y"), "x-1.tar.gz");
        assert_eq!(
            file_name_of("pool/main/z/zlib/zlib_1.orig.tar.gz"),
            "zlib_1.orig.tar.gz"
        );
    }
}
