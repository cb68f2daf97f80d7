//! The package closure of a toolchain's root filesystem, pinned.
//!
//! apt's own solver picks the packages, in a throwaway apt root: a temporary directory
//! with an `apt.conf` pointing every `Dir` into it, the toolchain's architectures, an empty
//! dpkg status, and `deb822` sources for the suite, `-updates` and `-security` on the
//! mirrors [`Mirrors`] names (apt's configuration or the environment). The machine's keys
//! (`/etc/apt/trusted.gpg{,.d}`) verify the indexes. `apt-get install --print-uris` then
//! lists what an install would download, and the downloaded `Packages` indexes give each
//! file's suite, archive path, size and SHA-256. Nothing is installed and the directory is
//! removed afterwards.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::{Result, Toolchain, ToolchainError, run};
use crate::source::debian::{DebianError, Mirrors};

/// What every root filesystem gets besides the toolchain's packages, as apt patterns:
/// debootstrap's `minbase` (the `Essential: yes` and `Priority: required` packages of the
/// image's architecture, and apt), plus `usr-is-merged` so that /usr is merged by
/// mmdebstrap's `merged-usr` hook rather than by the `usrmerge` package (and its perl).
/// (apt's `?architecture(native)` would mean the machine's architecture, not the
/// toolchain's, so the architecture is named.)
pub fn base_packages(tc: &Toolchain) -> Vec<String> {
    let host = tc.host_arch();
    vec![
        format!("?and(?essential,?architecture({host}))"),
        format!("?and(?priority(required),?architecture({host}))"),
        "apt".to_owned(),
        "usr-is-merged".to_owned(),
    ]
}

/// One `.deb` of a closure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebPin {
    pub package: String,
    /// As the index writes it, epoch included (`1:1.2.13.dfsg-1`).
    pub version: String,
    /// `amd64`, `arm64`, ..., or `all`.
    pub arch: String,
    /// The suite whose index lists it (`bookworm`, `bookworm-updates`, `bookworm-security`).
    pub suite: String,
    /// Archive-relative (`pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_arm64.deb`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

impl DebPin {
    /// The file's name (the last part of [`DebPin::path`]).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The host-free location the lockfile records: `debian-pool:SUITE:PATH`.
    pub fn location(&self) -> String {
        format!("debian-pool:{}:{}", self.suite, self.path)
    }

    /// Where to download it from, on the mirror serving its suite.
    pub fn url(&self, mirrors: &Mirrors) -> Result<String, DebianError> {
        Ok(format!("{}/{}", mirrors.base_for(&self.suite)?, self.path))
    }

    /// How apt names exactly this package: `PACKAGE:ARCH=VERSION` (`PACKAGE=VERSION` for
    /// `all`).
    pub fn apt_name(&self) -> String {
        if self.arch == "all" {
            format!("{}={}", self.package, self.version)
        } else {
            format!("{}:{}={}", self.package, self.arch, self.version)
        }
    }
}

/// The suites a toolchain's packages come from, preferred first: the release, its
/// `-updates` and its `-security` suite (unless the toolchain opts out of it).
pub fn suites(tc: &Toolchain) -> Vec<String> {
    let Some(d) = &tc.debian else {
        return Vec::new();
    };
    let s = &d.suite;
    let mut v = vec![s.clone(), format!("{s}-updates")];
    if d.security {
        v.push(format!("{s}-security"));
    }
    v
}

/// Every `.deb` the root filesystem of `tc` needs ([`base_packages`], the toolchain's
/// packages and their dependencies, without recommends), as of the mirrors' current
/// indexes; sorted by package, architecture and version. Uses the network.
pub fn resolve_closure(tc: &Toolchain, mirrors: &Mirrors) -> Result<Vec<DebPin>> {
    let started = std::time::Instant::now();
    let root = AptRoot::new(tc, mirrors)?;
    root.update(tc)?;
    let chosen = root.print_uris(tc)?;
    let targets = root.index_targets()?;
    let suites = suites(tc);
    let rank = |s: &str| suites.iter().position(|x| x == s).unwrap_or(usize::MAX);

    // (package, version, arch) -> candidates (rank, pin)
    let mut wanted: HashMap<(String, String, String), Vec<(usize, DebPin)>> = chosen
        .iter()
        .map(|c| {
            (
                (c.package.clone(), c.version.clone(), c.arch.clone()),
                Vec::new(),
            )
        })
        .collect();
    for t in &targets {
        let file = std::fs::File::open(&t.path).map_err(ToolchainError::io("read", &t.path))?;
        scan_packages(BufReader::with_capacity(1 << 20, file), |st| {
            let key = (st.package.clone(), st.version.clone(), st.arch.clone());
            if let Some(v) = wanted.get_mut(&key)
                && !v.iter().any(|(_, p)| p.suite == t.suite)
            {
                v.push((
                    rank(&t.suite),
                    DebPin {
                        package: st.package.clone(),
                        version: st.version.clone(),
                        arch: st.arch.clone(),
                        suite: t.suite.clone(),
                        path: st.filename.clone(),
                        sha256: st.sha256.to_ascii_lowercase(),
                        size: st.size,
                    },
                ));
            }
        })
        .map_err(ToolchainError::io("read", &t.path))?;
    }

    let mut pins = Vec::with_capacity(chosen.len());
    let mut missing = Vec::new();
    for c in &chosen {
        let key = (c.package.clone(), c.version.clone(), c.arch.clone());
        let mut cands = wanted.remove(&key).unwrap_or_default();
        cands.sort_by_key(|(r, p)| (*r, p.suite.clone()));
        // The suite apt downloads from, else the most preferred one listing it.
        let apt_url = percent_decode(&c.uri);
        let pick = cands
            .iter()
            .position(|(_, p)| p.url(mirrors).is_ok_and(|u| u == apt_url))
            .unwrap_or(0);
        match cands.into_iter().nth(pick) {
            Some((_, pin)) => {
                if pin.size != c.size {
                    return Err(ToolchainError::Resolve {
                        toolchain: tc.name.clone(),
                        reason: format!(
                            "{} is {} bytes in the `{}` index but apt expects {}",
                            pin.apt_name(),
                            pin.size,
                            pin.suite,
                            c.size
                        ),
                    });
                }
                pins.push(pin);
            }
            None => missing.push(format!("{}:{}={}", c.package, c.arch, c.version)),
        }
    }
    if !missing.is_empty() {
        return Err(ToolchainError::Resolve {
            toolchain: tc.name.clone(),
            reason: format!(
                "apt chose packages no index of {} lists: {}",
                suites.join(", "),
                missing.join(", ")
            ),
        });
    }
    pins.sort_by(|a, b| {
        (&a.package, &a.arch, &a.version, &a.suite)
            .cmp(&(&b.package, &b.arch, &b.version, &b.suite))
    });
    pins.dedup();
    info!(
        toolchain = tc.name,
        packages = pins.len(),
        bytes = pins.iter().map(|p| p.size).sum::<u64>(),
        ms = started.elapsed().as_millis() as u64,
        "resolved the package closure"
    );
    Ok(pins)
}

/// A package `apt-get install --print-uris` would download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub uri: String,
    pub package: String,
    pub version: String,
    pub arch: String,
    pub size: u64,
}

/// One line of `--print-uris` output: `'URI' NAME_VERSION_ARCH.deb SIZE [HASH]`, where the
/// file name escapes `:` (an epoch) as `%3a`.
pub(crate) fn parse_print_uri(line: &str) -> Option<Chosen> {
    let rest = line.strip_prefix('\'')?;
    let (uri, rest) = rest.split_once('\'')?;
    let mut words = rest.split_whitespace();
    let file = percent_decode(words.next()?);
    let size = words.next()?.parse().ok()?;
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (package, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || package.is_empty() || version.is_empty() || arch.is_empty() {
        return None;
    }
    Some(Chosen {
        uri: uri.to_owned(),
        package: package.to_owned(),
        version: version.to_owned(),
        arch: arch.to_owned(),
        size,
    })
}

/// Decodes `%XX` escapes; anything malformed stays as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fields of a `Packages` stanza that pin a file.
#[derive(Debug, Default, Clone)]
pub(crate) struct PackagesStanza {
    pub package: String,
    pub version: String,
    pub arch: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// Calls `each` for every complete stanza of a `Packages` index (those missing a field
/// that pins a file are skipped).
pub(crate) fn scan_packages(
    mut r: impl BufRead,
    mut each: impl FnMut(&PackagesStanza),
) -> std::io::Result<()> {
    let mut line = String::new();
    let mut st = PackagesStanza::default();
    let mut any = false;
    let mut flush = |st: &mut PackagesStanza, any: &mut bool| {
        if *any
            && !st.package.is_empty()
            && !st.version.is_empty()
            && !st.arch.is_empty()
            && !st.filename.is_empty()
            && !st.sha256.is_empty()
        {
            each(st);
        }
        *st = PackagesStanza::default();
        *any = false;
    };
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        let l = line.trim_end_matches(['\n', '\r']);
        if n == 0 || l.is_empty() {
            flush(&mut st, &mut any);
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        any = true;
        if l.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Package" => st.package = v.to_owned(),
            "Version" => st.version = v.to_owned(),
            "Architecture" => st.arch = v.to_owned(),
            "Filename" => st.filename = v.to_owned(),
            "Size" => st.size = v.parse().unwrap_or(0),
            "SHA256" => st.sha256 = v.to_owned(),
            _ => {}
        }
    }
}

/// A `Packages` index apt downloaded, and which suite and architecture it is for.
#[derive(Debug)]
struct IndexTarget {
    path: PathBuf,
    suite: String,
}

/// A temporary apt configuration and state directory.
struct AptRoot {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl AptRoot {
    fn new(tc: &Toolchain, mirrors: &Mirrors) -> Result<AptRoot> {
        let dir = tempfile::Builder::new()
            .prefix("dockerbuild-apt-")
            .tempdir()
            .map_err(ToolchainError::io(
                "create a temporary directory in",
                &std::env::temp_dir(),
            ))?;
        let root = dir.path();
        let root_s = root
            .to_str()
            .filter(|s| !s.contains(['"', '\n']))
            .ok_or_else(|| ToolchainError::Resolve {
                toolchain: tc.name.clone(),
                reason: format!(
                    "the temporary directory `{}` cannot be named in apt's configuration",
                    root.display()
                ),
            })?;
        for d in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(ToolchainError::io("create", &p))?;
        }
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::write(&p, text).map_err(ToolchainError::io("write", &p))
        };
        write("var/lib/dpkg/status", "")?;

        // Suites on the same mirror share a stanza, in preference order.
        let mut stanzas: Vec<(String, Vec<String>)> = Vec::new();
        for s in suites(tc) {
            let base = mirrors.base_for(&s)?;
            match stanzas.iter_mut().find(|(b, _)| *b == base) {
                Some((_, v)) => v.push(s),
                None => stanzas.push((base, vec![s])),
            }
        }
        let sources: String = stanzas
            .iter()
            .map(|(base, suites)| {
                format!(
                    "Types: deb\nURIs: {base}\nSuites: {}\nComponents: main\n\n",
                    suites.join(" ")
                )
            })
            .collect();
        write("etc/apt/sources.list.d/dockerbuild.sources", &sources)?;

        let archs: String = tc
            .debian()?
            .architectures
            .iter()
            .map(|a| format!("\"{a}\"; "))
            .collect();
        let conf = format!(
            "Dir \"{root_s}/\";\n\
             Dir::State::status \"{root_s}/var/lib/dpkg/status\";\n\
             Dir::Etc::Trusted \"/etc/apt/trusted.gpg\";\n\
             Dir::Etc::TrustedParts \"/etc/apt/trusted.gpg.d/\";\n\
             APT::Architecture \"{}\";\n\
             APT::Architectures {{ {archs}}};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Sandbox::User \"root\";\n\
             APT::Update::Error-Mode \"any\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"false\";\n",
            tc.host_arch()
        );
        write("etc/apt/apt.conf", &conf)?;
        debug!(dir = root_s, "throwaway apt root");
        Ok(AptRoot {
            conf: root.join("etc/apt/apt.conf"),
            dir,
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &self.conf)
            .env("LC_ALL", "C")
            .env_remove("DEBIAN_FRONTEND")
            .current_dir(self.dir.path());
        c
    }

    fn update(&self, tc: &Toolchain) -> Result<()> {
        match run(self
            .cmd("apt-get")
            .args(["update", "-q", "-o", "Acquire::Retries=3"]))
        {
            Ok(_) => Ok(()),
            Err(ToolchainError::Command { output, .. }) => Err(ToolchainError::Resolve {
                toolchain: tc.name.clone(),
                reason: format!(
                    "apt could not download the indexes of {}:\n{output}\nhint: a mirror \
                     in the middle of a sync serves inconsistent indexes; retry later, or \
                     choose another mirror with {} (and {} for -security)",
                    suites(tc).join(", "),
                    crate::source::debian::MIRROR_ENV,
                    crate::source::debian::SECURITY_MIRROR_ENV,
                ),
            }),
            Err(e) => Err(e),
        }
    }

    fn print_uris(&self, tc: &Toolchain) -> Result<Vec<Chosen>> {
        let mut c = self.cmd("apt-get");
        c.args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "--print-uris",
        ])
        .args(base_packages(tc))
        .args(&tc.debian()?.packages);
        let out = run(&mut c)?;
        let text = String::from_utf8_lossy(&out);
        let mut chosen = Vec::new();
        for line in text.lines().filter(|l| l.starts_with('\'')) {
            chosen.push(
                parse_print_uri(line).ok_or_else(|| ToolchainError::Resolve {
                    toolchain: tc.name.clone(),
                    reason: format!("cannot parse apt's `--print-uris` line `{line}`"),
                })?,
            );
        }
        if chosen.is_empty() {
            return Err(ToolchainError::Resolve {
                toolchain: tc.name.clone(),
                reason: format!("apt chose no packages; it said:\n{}", super::tail(&out, 20)),
            });
        }
        Ok(chosen)
    }

    fn index_targets(&self) -> Result<Vec<IndexTarget>> {
        let out = run(self.cmd("apt-get").args([
            "indextargets",
            "--format",
            "$(FILENAME)\t$(RELEASE)",
            "Created-By: Packages",
        ]))?;
        let text = String::from_utf8_lossy(&out);
        let mut by_path: BTreeMap<PathBuf, IndexTarget> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some((path, suite)) = line.split_once('\t') {
                let path = Path::new(path).to_owned();
                if path.exists() {
                    by_path.insert(
                        path.clone(),
                        IndexTarget {
                            path,
                            suite: suite.to_owned(),
                        },
                    );
                }
            }
        }
        Ok(by_path.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines() {
        let c = parse_print_uri(
            "'http://m.invalid/debian/pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_arm64.deb' \
             zlib1g_1%3a1.2.13.dfsg-1_arm64.deb 83812 MD5Sum:0123",
        )
        .unwrap();
        assert_eq!(c.package, "zlib1g");
        assert_eq!(c.version, "1:1.2.13.dfsg-1");
        assert_eq!(c.arch, "arm64");
        assert_eq!(c.size, 83_812);
        let c = parse_print_uri("'http://m.invalid/x%2bdeb_1_all.deb' x_1.0+deb12u1_all.deb 5 ")
            .unwrap();
        assert_eq!(c.version, "1.0+deb12u1");
        assert_eq!(percent_decode(&c.uri), "http://m.invalid/x+deb_1_all.deb");
        assert!(parse_print_uri("'u' notadeb 5").is_none());
        assert!(parse_print_uri("'u' a_b_c_d.deb 5").is_none());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%7e%zz"), "~%zz");
    }

    #[test]
    fn packages_index_stanzas() {
        let text = "Package: a\nVersion: 1\nArchitecture: all\nDescription: x\n more\n\
                    Filename: pool/a_1_all.deb\nSize: 10\nSHA256: AB\n\n\
                    Package: b\nVersion: 2\n\n\n\
                    Package: c\r\nVersion: 3\r\nArchitecture: arm64\r\nFilename: pool/c.deb\r\n\
                    Size: 7\r\nSHA256: cd\r\n";
        let mut seen = Vec::new();
        scan_packages(text.as_bytes(), |s| seen.push(s.clone())).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].filename, "pool/a_1_all.deb");
        assert_eq!(seen[0].size, 10);
        assert_eq!(seen[1].package, "c");
        assert_eq!(seen[1].sha256, "cd");
    }
}
