//! Reproducibility (`wheel-build --check`, like Nix's `--check`): a wheel built again
//! is compared byte for byte with the store's entry, and a difference is named down to
//! the first differing file, zip member and, for an ELF member, section.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read `{}` to compare it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where two builds of one wheel first differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The file of the entry (`MarkupSafe-...whl`).
    pub file: String,
    /// The zip member of a wheel that differs, if the difference is inside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// For an ELF member (or file), its first section whose bytes differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let Some(m) = &self.member {
            write!(f, ": member {m}")?;
        }
        if let Some(s) = &self.section {
            write!(f, ", section {s}")?;
        }
        write!(f, " ({})", self.detail)
    }
}

/// The outcome of checking one wheel.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub reproducible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<Difference>,
}

/// Every regular file under `dir`, by path relative to it (`/`-separated), sorted.
fn files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, CheckError> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let read = |source| CheckError::Read {
            path: d.clone(),
            source,
        };
        for e in std::fs::read_dir(&d).map_err(read)? {
            let e = e.map_err(read)?;
            let p = e.path();
            if e.file_type().map_err(read)?.is_dir() {
                todo.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, p);
            }
        }
    }
    Ok(out)
}

/// A file's bytes; a symlink's target (never followed: it may point outside the entry).
fn read(path: &Path) -> Result<Vec<u8>, CheckError> {
    let err = |source| CheckError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(path).map_err(err)?.is_symlink() {
        let target = std::fs::read_link(path).map_err(err)?;
        return Ok(target.as_os_str().as_encoded_bytes().to_vec());
    }
    std::fs::read(path).map_err(err)
}

/// The first difference between the stored entry `stored` and a rebuild `rebuilt` (two
/// directories), or `None` when every file is identical.
pub fn first_difference(stored: &Path, rebuilt: &Path) -> Result<Option<Difference>, CheckError> {
    let (a, b) = (files(stored)?, files(rebuilt)?);
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let (Some(pa), Some(pb)) = (a.get(name), b.get(name)) else {
            let side = if a.contains_key(name) {
                "only in the stored entry"
            } else {
                "only in the rebuild"
            };
            return Ok(Some(Difference {
                file: name.clone(),
                member: None,
                section: None,
                detail: side.into(),
            }));
        };
        let (da, db) = (read(pa)?, read(pb)?);
        if da == db {
            continue;
        }
        let mut d = if name.ends_with(".whl") {
            zip_difference(&da, &db)
        } else {
            Difference {
                file: String::new(),
                member: None,
                section: elf_section(&da, &db),
                detail: "contents differ".into(),
            }
        };
        d.file = name.clone();
        return Ok(Some(d));
    }
    Ok(None)
}

fn members(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).ok()?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut e = z.by_index(i).ok()?;
        let name = e.name().ok()?.into_owned();
        let mut d = Vec::new();
        e.read_to_end(&mut d).ok()?;
        out.push((name, d));
    }
    Some(out)
}

/// The first member (in the stored wheel's order) whose bytes differ, is missing on one
/// side, or, failing that, what else differs (order, timestamps, modes).
fn zip_difference(a: &[u8], b: &[u8]) -> Difference {
    let diff = |member: Option<String>, section, detail: &str| Difference {
        file: String::new(),
        member,
        section,
        detail: detail.into(),
    };
    let (Some(ma), Some(mb)) = (members(a), members(b)) else {
        return diff(None, None, "not both readable zips");
    };
    let by_name: BTreeMap<&str, &[u8]> = mb.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    for (n, da) in &ma {
        match by_name.get(n.as_str()) {
            None => return diff(Some(n.clone()), None, "only in the stored wheel"),
            Some(db) if *db != &da[..] => {
                return diff(Some(n.clone()), elf_section(da, db), "contents differ");
            }
            Some(_) => {}
        }
    }
    let names: std::collections::HashSet<&str> = ma.iter().map(|(n, _)| n.as_str()).collect();
    if let Some((n, _)) = mb.iter().find(|(n, _)| !names.contains(n.as_str())) {
        return diff(Some(n.clone()), None, "only in the rebuilt wheel");
    }
    diff(
        None,
        None,
        "same members, but the zip's order, timestamps or modes differ",
    )
}

/// The first section (in `a`'s order) whose bytes differ, for two ELF files. The GNU
/// build ID is a hash of the rest, so it is named only when nothing else differs.
fn elf_section(a: &[u8], b: &[u8]) -> Option<String> {
    let (fa, fb) = (object::File::parse(a).ok()?, object::File::parse(b).ok()?);
    let mut build_id = None;
    for s in fa.sections() {
        let name = s.name().ok()?;
        let other = fb.section_by_name(name);
        let same = other.is_some_and(|o| o.data().ok() == s.data().ok());
        if same {
            continue;
        }
        if name == ".note.gnu.build-id" {
            build_id = Some(name.to_owned());
        } else {
            return Some(name.to_owned());
        }
    }
    build_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(dir: &Path, members: &[(&str, &[u8])]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(dir.join("x.whl")).unwrap());
        for (n, d) in members {
            z.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(d).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn the_first_differing_member_is_named() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        wheel(&a, &[("x/__init__.py", b"1"), ("x/stamp.py", b"T = 1")]);
        wheel(&b, &[("x/__init__.py", b"1"), ("x/stamp.py", b"T = 2")]);
        wheel(&c, &[("x/__init__.py", b"1"), ("x/stamp.py", b"T = 1")]);
        let d = first_difference(&a, &b).unwrap().unwrap();
        assert_eq!(d.file, "x.whl");
        assert_eq!(d.member.as_deref(), Some("x/stamp.py"));
        assert!(d.to_string().contains("member x/stamp.py"), "{d}");
        assert_eq!(first_difference(&a, &c).unwrap(), None);
        std::fs::write(c.join("extra"), b"").unwrap();
        let d = first_difference(&a, &c).unwrap().unwrap();
        assert_eq!(
            (d.file.as_str(), d.detail.as_str()),
            ("extra", "only in the rebuild")
        );
    }
}
