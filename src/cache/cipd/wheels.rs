//! Publishing wheels under the names vpython expects, as the original dockerbuild did.
//!
//! - a platform wheel goes to `infra/python/wheels/<name>/<cipd_platform>_<cpXY>_<cpXY>`,
//!   a universal one to `infra/python/wheels/<name>-py3` ([`super::names`]);
//! - inside the instance every wheel is renamed to a universal file name, so pip installs
//!   it anywhere and CIPD package naming (vpython's `${vpython_platform}`) does the
//!   platform selection: `<dist>-<ver>-py2.py3-none-any.whl` for a platform wheel (the
//!   original's `universal_filename()` of a binary spec), `<dist>-<ver>-py3-none-any.whl`
//!   for a universal (Python 3) one;
//! - the instance is tagged `version:<version>` and the refs `latest`, `N.x` and `N.M.x`
//!   are moved to it.
//!
//! When `version:<version>` already names an instance, nothing is uploaded: the same
//! instance is registered again (a no-op) and its refs set; a *different* instance is left
//! as it is (a second one would make the tag ambiguous), as the original skipped versions
//! that already resolved.

use std::path::{Path, PathBuf};

use super::package::{self, InstanceId, Source};
use super::prpc::ObjectRef;
use super::{CipdCache, instance_id, names};
use crate::cache::{CacheError, Result};

/// Where a wheel goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelTarget {
    /// A pure Python 3 wheel: `infra/python/wheels/<name>-py3`.
    Universal,
    /// A wheel for one platform and CPython: `.../<name>/<cipd_platform>_<cpXY>_<cpXY>`.
    Platform {
        /// CIPD's platform name (`linux-arm64`, `mac-amd64`).
        cipd_platform: String,
        /// The CPython version (`3.11`).
        python: String,
    },
}

impl WheelTarget {
    /// The CIPD package for distribution `name`.
    pub fn package(&self, name: &str) -> std::result::Result<String, names::NameError> {
        match self {
            WheelTarget::Universal => names::universal_wheel_package(name),
            WheelTarget::Platform {
                cipd_platform,
                python,
            } => {
                let cp =
                    cp_tag(python).ok_or_else(|| names::NameError::Component(python.to_owned()))?;
                names::wheel_package(name, cipd_platform, &format!("{cp}_{cp}"))
            }
        }
    }

    /// The Python tag of the universal file names inside the instance.
    pub fn python_tag(&self) -> &'static str {
        match self {
            WheelTarget::Universal => "py3",
            WheelTarget::Platform { .. } => "py2.py3",
        }
    }
}

/// `3.11` → `cp311`.
fn cp_tag(python: &str) -> Option<String> {
    let (a, b) = python.split_once('.')?;
    let num = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    (num(a) && num(b)).then(|| format!("cp{a}{b}"))
}

/// The universal name of wheel file `file_name` (PEP 427: `dist-ver[-build]-py-abi-plat`):
/// its distribution and version, then `python_tag`, `none` and `any`.
pub fn universal_file_name(file_name: &str, python_tag: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(format!(
        "{}-{}-{python_tag}-none-any.whl",
        parts[0], parts[1]
    ))
}

/// What happened to the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The instance's bytes were uploaded.
    Uploaded,
    /// The service already had the instance (or its bytes); tags and refs were set.
    Registered,
    /// `version:<version>` already names another instance, left as it is.
    Kept,
}

/// One published wheel package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub package: String,
    /// The tag, `version:<version>`.
    pub version: String,
    pub instance_id: String,
    /// The refs moved to the instance (none when [`Outcome::Kept`]).
    pub refs: Vec<String>,
    pub outcome: Outcome,
}

impl CipdCache {
    /// Publishes the wheel files `wheels` of distribution `name` at `version` as one
    /// instance of the package vpython expects for `target`, each file renamed to its
    /// universal name; tags it `version:<version>` and moves `latest`, `N.x` and `N.M.x`
    /// to it. Needs WRITER on the package.
    pub fn publish_wheel(
        &self,
        name: &str,
        version: &str,
        target: &WheelTarget,
        wheels: &[PathBuf],
    ) -> Result<Published> {
        let action = format!("publish wheel {name} {version}");
        let refuse = |reason: String, hint: &str| CacheError::Rpc {
            cache: self.url.clone(),
            action: action.clone(),
            reason,
            hint: hint.to_owned(),
        };
        let package = target
            .package(name)
            .map_err(|e| refuse(e.to_string(), ""))?;
        let action = format!("publish wheel {name} {version} as `{package}`");
        let refuse = |reason: String, hint: &str| CacheError::Rpc {
            cache: self.url.clone(),
            action: action.clone(),
            reason,
            hint: hint.to_owned(),
        };
        let tag = names::version_tag(version).map_err(|e| refuse(e.to_string(), ""))?;
        if wheels.is_empty() {
            return Err(refuse("there is no wheel file".into(), ""));
        }
        let mut files: Vec<(String, &Path)> = Vec::new();
        for w in wheels {
            let file_name = w.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            let renamed = universal_file_name(file_name, target.python_tag()).ok_or_else(|| {
                refuse(
                    format!("`{}` is not a wheel file name", w.display()),
                    "\nhint: wheel files are named DIST-VERSION-PYTHON-ABI-PLATFORM.whl (PEP 427)",
                )
            })?;
            if files.iter().any(|(n, _)| *n == renamed) {
                return Err(refuse(
                    format!(
                        "two of its wheel files would both be named `{renamed}` inside the package"
                    ),
                    "",
                ));
            }
            files.push((renamed, w));
        }
        files.sort();
        let sources: Vec<(&str, Source<'_>)> = files
            .iter()
            .map(|(n, p)| (n.as_str(), Source::File(p)))
            .collect();
        let mut zip = self.new_temp()?;
        let sha = package::build(&mut zip, &package, &sources).map_err(self.io(format!(
            "pack wheel {name} {version} as an instance of `{package}`"
        )))?;
        let iid = InstanceId::sha256(sha).to_text();
        let refs = names::refs(version);
        if let Some(existing) = self.resolve(&package, &tag)? {
            let existing = instance_id(&existing);
            if existing != iid {
                return Ok(Published {
                    package,
                    version: tag,
                    instance_id: existing,
                    refs: Vec::new(),
                    outcome: Outcome::Kept,
                });
            }
        }
        let (key, value) = tag.split_once(':').expect("a tag has a colon");
        let uploaded = self.publish(&package, &mut zip, sha, &[(key, value)])?;
        let object = ObjectRef::sha256(hex::encode(sha));
        let what = format!("instance {iid} of `{package}`");
        for r in &refs {
            self.create_ref(&what, &package, &object, r)?;
        }
        Ok(Published {
            package,
            version: tag,
            instance_id: iid,
            refs,
            outcome: if uploaded {
                Outcome::Uploaded
            } else {
                Outcome::Registered
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_packages_as_vpython_expects() {
        let p = WheelTarget::Platform {
            cipd_platform: "linux-arm64".into(),
            python: "3.11".into(),
        };
        assert_eq!(
            p.package("MarkupSafe").unwrap(),
            "infra/python/wheels/markupsafe/linux-arm64_cp311_cp311"
        );
        assert_eq!(
            WheelTarget::Universal.package("six").unwrap(),
            "infra/python/wheels/six-py3"
        );
        let bad = WheelTarget::Platform {
            cipd_platform: "linux-arm64".into(),
            python: "abi3".into(),
        };
        assert!(bad.package("x").is_err());
    }

    #[test]
    fn wheels_are_renamed_to_universal_names() {
        let u = |f| universal_file_name(f, "py2.py3");
        assert_eq!(
            u("MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_aarch64.whl").as_deref(),
            Some("MarkupSafe-2.1.5-py2.py3-none-any.whl")
        );
        assert_eq!(
            universal_file_name("six-1.16.0-1-py2.py3-none-any.whl", "py3").as_deref(),
            Some("six-1.16.0-py3-none-any.whl")
        );
        assert_eq!(u("six-1.16.0.tar.gz"), None);
        assert_eq!(u("six-1.16.0-py3.whl"), None);
    }
}
