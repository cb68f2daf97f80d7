//! CIPD names as vpython and the ensure-file tools expect them: pure functions, no I/O.
//!
//! - wheels: `infra/python/wheels/<name>/<platform>_<abi>` for a platform wheel (e.g.
//!   `infra/python/wheels/numpy/linux-amd64_cp311_cp311`), `infra/python/wheels/<name>-py3`
//!   for a universal one; `<name>` is the normalized distribution name;
//! - sources: `infra/third_party/source/<name>`;
//! - versions: the tag `version:<v>`, and refs `latest`, `N.x`, `N.M.x`;
//! - ensure files (package lines after settings) and `$ResolvedVersions` files (triples:
//!   package, tab-indented version, tab-indented instance ID; sorted; blank-line
//!   separated).

use super::package::InstanceId;

/// Why a name or version is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "`{0}` is not a valid CIPD package name\nhint: lowercase letters, digits, `_ - .`, separated by `/`"
    )]
    Package(String),
    #[error("`{0}` is not a valid CIPD version (an instance ID, a ref or a `key:value` tag)")]
    Version(String),
    #[error("`{0}` is not a valid name component for a CIPD package")]
    Component(String),
    #[error(
        "{package} {version}: the versions file needs its instance ID\nhint: write it as PACKAGE=VERSION=INSTANCE_ID"
    )]
    NoInstanceId { package: String, version: String },
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && !c.chars().all(|x| x == '.')
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// `^([a-z0-9_\-.]+/)*[a-z0-9_\-.]+$`, no all-dot component.
pub fn valid_package_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(component_ok)
}

/// A ref: `^[a-z0-9_./\-]{1,256}$`, and not an instance ID.
pub fn valid_ref(r: &str) -> bool {
    (1..=256).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_./-".contains(&b))
        && InstanceId::parse(r, false).is_err()
}

/// A tag: `key:value`, key `^[a-z0-9_\-]+$`, value printable ASCII and space minus
/// `!"#%&?'^|` and backtick, not starting or ending with a space; at most 400 characters.
pub fn valid_tag(t: &str) -> bool {
    let Some((k, v)) = t.split_once(':') else {
        return false;
    };
    t.len() <= 400
        && !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        && !v.is_empty()
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$()*+,-./:;<=>@\\_{}~ ".contains(&b))
}

/// A version string: an instance ID, a ref or a tag.
pub fn valid_version(v: &str) -> bool {
    InstanceId::parse(v, false).is_ok() || valid_ref(v) || valid_tag(v)
}

/// A distribution name as the original dockerbuild spelled CIPD package components:
/// lowercased, `.` as `_`, hyphens and underscores kept (`zope.interface` ->
/// `zope_interface`, `google-crc32c` stays), so existing vpython specs find them.
pub fn normalize(name: &str) -> Result<String, NameError> {
    let out: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == '.' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    if component_ok(&out) {
        Ok(out)
    } else {
        Err(NameError::Component(name.to_owned()))
    }
}

/// A platform wheel: `infra/python/wheels/<name>/<platform>_<abi>`, e.g. platform
/// `linux-amd64` and abi `cp311_cp311`.
pub fn wheel_package(name: &str, platform: &str, abi: &str) -> Result<String, NameError> {
    let p = format!("infra/python/wheels/{}/{platform}_{abi}", normalize(name)?);
    checked(p)
}

/// A universal (pure Python 3) wheel: `infra/python/wheels/<name>-py3`.
pub fn universal_wheel_package(name: &str) -> Result<String, NameError> {
    checked(format!("infra/python/wheels/{}-py3", normalize(name)?))
}

/// A source archive: `infra/third_party/source/<name>`.
pub fn source_package(name: &str) -> Result<String, NameError> {
    checked(format!("infra/third_party/source/{}", normalize(name)?))
}

fn checked(p: String) -> Result<String, NameError> {
    if valid_package_name(&p) {
        Ok(p)
    } else {
        Err(NameError::Package(p))
    }
}

/// The tag a published version carries: `version:<v>`.
pub fn version_tag(version: &str) -> Result<String, NameError> {
    let t = format!("version:{version}");
    if valid_tag(&t) {
        Ok(t)
    } else {
        Err(NameError::Version(t))
    }
}

/// The refs a version moves: `latest`, `N.x` and `N.M.x` (those its leading numeric
/// components allow; `1.2.3` gives `latest`, `1.x`, `1.2.x`).
pub fn refs(version: &str) -> Vec<String> {
    let mut out = vec!["latest".to_owned()];
    let nums: Vec<&str> = version
        .split('.')
        .take_while(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
        .take(2)
        .collect();
    for i in 1..=nums.len() {
        out.push(format!("{}.x", nums[..i].join(".")));
    }
    out
}

/// A package pinned at a version, with its instance ID when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub instance_id: Option<String>,
}

impl Pin {
    /// `PACKAGE=VERSION[=INSTANCE_ID]` (a tag's value may hold `=`: the last part counts
    /// as an instance ID only if it is one).
    pub fn parse(s: &str) -> Result<Pin, NameError> {
        let (package, rest) = s
            .split_once('=')
            .ok_or_else(|| NameError::Package(s.to_owned()))?;
        let (version, iid) = match rest.rsplit_once('=') {
            Some((v, iid)) if InstanceId::parse(iid, false).is_ok() && valid_version(v) => {
                (v, Some(iid.to_owned()))
            }
            _ => (rest, None),
        };
        let pin = Pin {
            package: package.trim().to_owned(),
            version: version.trim().to_owned(),
            instance_id: iid,
        };
        if !valid_package_name(&pin.package) {
            return Err(NameError::Package(pin.package));
        }
        if !valid_version(&pin.version) {
            return Err(NameError::Version(pin.version));
        }
        Ok(pin)
    }
}

/// Splits `NAME...=VERSION[=INSTANCE_ID]` into the part before the first `=` and a pin
/// whose package is filled in by `package`.
fn pin_with(
    spec: &str,
    package: impl FnOnce(&str) -> Result<String, NameError>,
) -> Result<Pin, NameError> {
    let (head, rest) = spec
        .split_once('=')
        .ok_or_else(|| NameError::Version(spec.to_owned()))?;
    let (version, iid) = match rest.rsplit_once('=') {
        Some((v, iid)) if InstanceId::parse(iid, false).is_ok() => (v, Some(iid.to_owned())),
        _ => (rest, None),
    };
    Ok(Pin {
        package: package(head.trim())?,
        version: version_tag(version.trim())?,
        instance_id: iid,
    })
}

impl Pin {
    /// A wheel: `NAME=VERSION[=IID]` (universal, `<name>-py3`) or
    /// `NAME/PLATFORM_ABI=VERSION[=IID]` (e.g. `numpy/linux-amd64_cp311_cp311=1.26.4`),
    /// pinned at `version:VERSION`.
    pub fn wheel(spec: &str) -> Result<Pin, NameError> {
        pin_with(spec, |head| match head.split_once('/') {
            Some((name, plat_abi)) => {
                let p = format!("infra/python/wheels/{}/{plat_abi}", normalize(name)?);
                checked(p)
            }
            None => universal_wheel_package(head),
        })
    }

    /// A source: `NAME=VERSION[=IID]`, pinned at `version:VERSION`.
    pub fn source(spec: &str) -> Result<Pin, NameError> {
        pin_with(spec, source_package)
    }
}

/// An ensure file for `pins` (in the order given); with `versions_file`, it points at it
/// with `$ResolvedVersions` (settings come before package lines).
pub fn ensure_file(pins: &[Pin], versions_file: Option<&str>) -> String {
    let mut out = String::from("# Generated by `dockerbuild cipd ensure-file`.\n");
    if let Some(v) = versions_file {
        out.push_str(&format!("$ResolvedVersions {v}\n"));
    }
    out.push('\n');
    for p in pins {
        out.push_str(&format!("{} {}\n", p.package, p.version));
    }
    out
}

/// The `$ResolvedVersions` file for `pins`, canonical: a two-line header, then per pin a
/// blank line, the package, the version and the instance ID (both tab-indented), sorted
/// by (package, version). Pins whose version is an instance ID are left out (they map to
/// themselves). Every other pin needs its instance ID.
pub fn versions_file(pins: &[Pin]) -> Result<String, NameError> {
    let mut rows = Vec::new();
    for p in pins {
        if InstanceId::parse(&p.version, false).is_ok() {
            continue;
        }
        let iid = p
            .instance_id
            .clone()
            .ok_or_else(|| NameError::NoInstanceId {
                package: p.package.clone(),
                version: p.version.clone(),
            })?;
        rows.push((p.package.clone(), p.version.clone(), iid));
    }
    rows.sort();
    rows.dedup();
    let mut out = String::from(
        "# This file is generated by `dockerbuild cipd ensure-file`.\n# Do not edit it by hand.\n",
    );
    for (p, v, iid) in rows {
        out.push_str(&format!("\n{p}\n\t{v}\n\t{iid}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IID: &str = "B7r75joOfFfFcq7fHCKAIrU34oeFAT174Bf8eHMajMUC";

    #[test]
    fn wheel_and_source_names_follow_vpython() {
        assert_eq!(
            wheel_package("NumPy", "linux-amd64", "cp311_cp311").unwrap(),
            "infra/python/wheels/numpy/linux-amd64_cp311_cp311"
        );
        assert_eq!(
            universal_wheel_package("typing_extensions").unwrap(),
            "infra/python/wheels/typing_extensions-py3"
        );
        assert_eq!(
            wheel_package("ruamel.yaml.clib", "linux-arm64", "cp311_cp311").unwrap(),
            "infra/python/wheels/ruamel_yaml_clib/linux-arm64_cp311_cp311"
        );
        assert_eq!(
            universal_wheel_package("google-crc32c").unwrap(),
            "infra/python/wheels/google-crc32c-py3"
        );
        assert_eq!(
            source_package("zope.interface").unwrap(),
            "infra/third_party/source/zope_interface"
        );
        assert!(universal_wheel_package("bad/name").is_err());
        assert!(wheel_package("x", "Linux-AMD64", "cp311").is_err());
        assert_eq!(version_tag("1.26.4").unwrap(), "version:1.26.4");
        assert_eq!(version_tag("2@1.2.3").unwrap(), "version:2@1.2.3");
        assert!(version_tag("1.0!").is_err());
    }

    #[test]
    fn refs_are_latest_major_and_minor() {
        assert_eq!(refs("1.26.4"), ["latest", "1.x", "1.26.x"]);
        assert_eq!(refs("3"), ["latest", "3.x"]);
        assert_eq!(refs("2024.1.0rc1"), ["latest", "2024.x", "2024.1.x"]);
        assert_eq!(refs("abc"), ["latest"]);
        for r in refs("1.26.4") {
            assert!(valid_ref(&r), "{r}");
        }
    }

    #[test]
    fn versions_are_classified_as_the_notes_say() {
        assert!(valid_ref("latest") && !valid_tag("latest"));
        assert!(valid_tag("git_revision:deadbeef") && valid_tag("version:2@1.2.3"));
        assert!(!valid_tag("Key:v") && !valid_tag("k: v") && !valid_tag("k:v!"));
        assert!(!valid_tag(&format!("k:{}", "a".repeat(399))));
        assert!(!valid_ref(IID), "an instance ID is not a ref");
        assert!(valid_version(IID));
        assert!(valid_package_name("infra/tools/cipd/linux-amd64"));
        for bad in ["", "a//b", "a/../b", "A/b", "a/b/", "a+b"] {
            assert!(!valid_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn ensure_and_versions_files_are_canonical() {
        let pins = [
            Pin::parse(&format!("infra/python/wheels/six-py3=version:1.16.0={IID}")).unwrap(),
            Pin::parse(&format!("infra/python/wheels/attrs-py3=version:a=b={IID}")).unwrap(),
            Pin::parse(&format!("infra/third_party/source/zlib={IID}")).unwrap(),
        ];
        assert_eq!(pins[1].version, "version:a=b");
        assert_eq!(pins[2].version, IID);
        assert_eq!(pins[2].instance_id, None);
        assert_eq!(
            ensure_file(&pins, Some("cipd.versions")),
            format!(
                "# Generated by `dockerbuild cipd ensure-file`.\n$ResolvedVersions cipd.versions\n\n\
                 infra/python/wheels/six-py3 version:1.16.0\n\
                 infra/python/wheels/attrs-py3 version:a=b\n\
                 infra/third_party/source/zlib {IID}\n"
            )
        );
        assert_eq!(
            versions_file(&pins).unwrap(),
            format!(
                "# This file is generated by `dockerbuild cipd ensure-file`.\n# Do not edit it by hand.\n\
                 \ninfra/python/wheels/attrs-py3\n\tversion:a=b\n\t{IID}\n\
                 \ninfra/python/wheels/six-py3\n\tversion:1.16.0\n\t{IID}\n"
            )
        );
        let unpinned = [Pin::parse("a/b=latest").unwrap()];
        assert!(matches!(
            versions_file(&unpinned),
            Err(NameError::NoInstanceId { .. })
        ));
        assert!(Pin::parse("a/b").is_err());
        let w = Pin::wheel(&format!("NumPy/linux-amd64_cp311_cp311=1.26.4={IID}")).unwrap();
        assert_eq!(
            w.package,
            "infra/python/wheels/numpy/linux-amd64_cp311_cp311"
        );
        assert_eq!(w.version, "version:1.26.4");
        assert_eq!(w.instance_id.as_deref(), Some(IID));
        let u = Pin::wheel("six=1.16.0").unwrap();
        assert_eq!(
            (u.package.as_str(), u.instance_id),
            ("infra/python/wheels/six-py3", None)
        );
        let src = Pin::source("zlib=1.3.1").unwrap();
        assert_eq!(src.package, "infra/third_party/source/zlib");
        assert!(Pin::wheel("six").is_err() && Pin::wheel("six/Linux=1").is_err());
        assert!(Pin::parse("a/b=not a version!").is_err());
    }
}
