//! `.deb` files and the local apt repository a root filesystem is built from.
//!
//! The repository has one suite (the toolchain's) and component `main`:
//!
//! ```text
//! <repo>/pool/<file>.deb                       each pinned file (hard link or copy)
//! <repo>/dists/<suite>/main/binary-<arch>/Packages
//! <repo>/dists/<suite>/Release                 unsigned; sources use [trusted=yes]
//! ```
//!
//! `Packages` stanzas are each file's `control` paragraph plus `Filename`, `Size` and
//! `SHA256`, sorted, so the repository's bytes depend only on the pinned files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use super::{DebPin, Result, ToolchainError, rfc2822};

/// Reads one `.deb`'s `control` file (from `control.tar{,.gz,.xz,.zst}`).
pub(crate) fn control_of(path: &Path) -> Result<String> {
    let bad = |reason: String| ToolchainError::BadDeb {
        path: path.to_owned(),
        reason,
    };
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).map_err(ToolchainError::io("open", path))?,
    );
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)
        .map_err(|e| bad(format!("cannot read its header: {e}")))?;
    if &magic != b"!<arch>\n" {
        return Err(bad("it is not an ar archive".to_owned()));
    }
    loop {
        let mut hdr = [0u8; 60];
        match f.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(bad("it has no control.tar member".to_owned()));
            }
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        }
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_owned();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(format!("member `{name}` has a malformed size")))?;
        if let Some(comp) = name.strip_prefix("control.tar") {
            let mut member = Vec::new();
            (&mut f)
                .take(size)
                .read_to_end(&mut member)
                .map_err(|e| bad(format!("cannot read `{name}`: {e}")))?;
            let reader: Box<dyn Read> = match comp {
                "" => Box::new(&member[..]),
                ".gz" => Box::new(flate2::read::GzDecoder::new(&member[..])),
                ".xz" => Box::new(liblzma::read::XzDecoder::new(&member[..])),
                ".zst" => Box::new(
                    zstd::stream::read::Decoder::new(&member[..])
                        .map_err(|e| bad(format!("cannot decompress `{name}`: {e}")))?,
                ),
                _ => return Err(bad(format!("unknown control member `{name}`"))),
            };
            let mut ar = tar::Archive::new(reader);
            let entries = ar
                .entries()
                .map_err(|e| bad(format!("cannot read `{name}`: {e}")))?;
            for e in entries {
                let mut e = e.map_err(|e| bad(format!("cannot read `{name}`: {e}")))?;
                let p = e.path_bytes().into_owned();
                if p == b"./control" || p == b"control" {
                    let mut text = String::new();
                    e.read_to_string(&mut text)
                        .map_err(|e| bad(format!("cannot read its control file: {e}")))?;
                    return Ok(text);
                }
            }
            return Err(bad(format!("`{name}` has no control file")));
        }
        // Skip the member and its padding to an even offset.
        let skip = size + size % 2;
        std::io::copy(&mut (&mut f).take(skip), &mut std::io::sink())
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
    }
}

/// A control paragraph's field (first line only).
fn field<'a>(control: &'a str, name: &str) -> Option<&'a str> {
    control.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (!l.starts_with([' ', '\t']) && k.eq_ignore_ascii_case(name)).then(|| v.trim())
    })
}

/// SHA-256 and size of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(ToolchainError::io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(ToolchainError::io("read", path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Checks that every file is its pin (size, SHA-256, and the package, version and
/// architecture its control file names) and returns each one's `Packages` stanza.
fn stanzas(debs: &[(DebPin, PathBuf)]) -> Result<Vec<(DebPin, String)>> {
    debs.par_iter()
        .map(|(pin, path)| {
            let mismatch = |expected: String, actual: String| ToolchainError::DebMismatch {
                path: path.clone(),
                pin: pin.apt_name(),
                expected,
                actual,
            };
            let (sha, size) = sha256_file(path)?;
            if size != pin.size || sha != pin.sha256 {
                return Err(mismatch(
                    format!("sha256 {} ({} bytes)", pin.sha256, pin.size),
                    format!("sha256 {sha} ({size} bytes)"),
                ));
            }
            let control = control_of(path)?;
            let named = (
                field(&control, "Package").unwrap_or(""),
                field(&control, "Version").unwrap_or(""),
                field(&control, "Architecture").unwrap_or(""),
            );
            if named != (&pin.package[..], &pin.version[..], &pin.arch[..]) {
                return Err(mismatch(
                    pin.apt_name(),
                    format!("{}:{}={}", named.0, named.2, named.1),
                ));
            }
            let mut stanza = control.trim_end().to_owned();
            stanza += &format!(
                "\nFilename: pool/{}\nSize: {}\nSHA256: {}\n",
                pin.file_name(),
                pin.size,
                pin.sha256
            );
            Ok((pin.clone(), stanza))
        })
        .collect()
}

/// Writes the local repository for `debs` at `repo` (which must not exist).
pub(crate) fn write_repo(
    repo: &Path,
    suite: &str,
    architectures: &[String],
    debs: &[(DebPin, PathBuf)],
    epoch: u64,
) -> Result<()> {
    let mut by_file: BTreeMap<&str, &DebPin> = BTreeMap::new();
    for (pin, _) in debs {
        if pin.arch != "all" && !architectures.contains(&pin.arch) {
            return Err(ToolchainError::BadDeb {
                path: PathBuf::from(pin.file_name()),
                reason: format!(
                    "its architecture `{}` is not one of the toolchain's ({})",
                    pin.arch,
                    architectures.join(", ")
                ),
            });
        }
        if let Some(other) = by_file.insert(pin.file_name(), pin)
            && other != pin
        {
            return Err(ToolchainError::BadDeb {
                path: PathBuf::from(pin.file_name()),
                reason: "two different pins have this file name".to_owned(),
            });
        }
    }
    let mut stanzas = stanzas(debs)?;
    stanzas.sort_by(|(a, _), (b, _)| {
        (&a.package, &a.arch, &a.version).cmp(&(&b.package, &b.arch, &b.version))
    });
    stanzas.dedup_by(|(a, _), (b, _)| a == b);

    let pool = repo.join("pool");
    std::fs::create_dir_all(&pool).map_err(ToolchainError::io("create", &pool))?;
    for (pin, path) in debs {
        let dst = pool.join(pin.file_name());
        if dst.exists() {
            continue;
        }
        if std::fs::hard_link(path, &dst).is_err() {
            std::fs::copy(path, &dst)
                .map_err(ToolchainError::io("copy into the repository", path))?;
        }
    }

    let dists = repo.join("dists").join(suite);
    let mut release_hashes = String::new();
    for arch in architectures {
        let rel = format!("main/binary-{arch}/Packages");
        let text: String = stanzas
            .iter()
            .filter(|(p, _)| p.arch == *arch || p.arch == "all")
            .map(|(_, s)| format!("{s}\n"))
            .collect();
        let path = dists.join(&rel);
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(ToolchainError::io("create", dir))?;
        std::fs::write(&path, &text).map_err(ToolchainError::io("write", &path))?;
        release_hashes += &format!(
            " {} {} {rel}\n",
            hex::encode(Sha256::digest(text.as_bytes())),
            text.len()
        );
    }
    let release = format!(
        "Origin: dockerbuild\nLabel: dockerbuild\nSuite: {suite}\nCodename: {suite}\n\
         Date: {}\nArchitectures: {}\nComponents: main\n\
         Description: pinned packages of a dockerbuild toolchain\nSHA256:\n{release_hashes}",
        rfc2822(epoch),
        architectures.join(" ")
    );
    let path = dists.join("Release");
    std::fs::write(&path, release).map_err(ToolchainError::io("write", &path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields() {
        let c = "Package: zlib1g\nVersion: 1:1.2.13.dfsg-1\nDescription: x\n Version: no\n";
        assert_eq!(field(c, "package"), Some("zlib1g"));
        assert_eq!(field(c, "Version"), Some("1:1.2.13.dfsg-1"));
        assert_eq!(field(c, "Architecture"), None);
    }
}
