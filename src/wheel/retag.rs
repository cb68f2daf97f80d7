//! Writing a wheel out under the platform tags it can truthfully carry: the file name,
//! the `Tag:` lines of `.dist-info/WHEEL` and the hashes in `RECORD` always agree, and
//! the same input gives the same bytes (entries in `build-wheel.sh`'s order, their own
//! timestamps and modes kept).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum RetagError {
    #[error("cannot read wheel `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write wheel `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wheel `{}`: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// The parts of a wheel file name (PEP 427) that tags are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    /// `{distribution}-{version}[-{build}]`.
    pub stem: String,
    pub python: String,
    pub abi: String,
    pub platforms: Vec<String>,
}

impl WheelName {
    pub fn parse(file_name: &str) -> Option<WheelName> {
        let base = file_name.strip_suffix(".whl")?;
        let mut parts = base.rsplitn(4, '-');
        let platform = parts.next()?;
        let abi = parts.next()?;
        let python = parts.next()?;
        let stem = parts.next()?;
        Some(WheelName {
            stem: stem.to_owned(),
            python: python.to_owned(),
            abi: abi.to_owned(),
            platforms: platform.split('.').map(str::to_owned).collect(),
        })
    }

    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}.whl",
            self.stem,
            self.python,
            self.abi,
            self.platforms.join(".")
        )
    }

    /// Every `python-abi-platform` tag the name stands for, as `WHEEL` lists them.
    pub fn tags(&self) -> Vec<String> {
        let mut v = Vec::new();
        for p in self.python.split('.') {
            for a in self.abi.split('.') {
                for pl in &self.platforms {
                    v.push(format!("{p}-{a}-{pl}"));
                }
            }
        }
        v
    }
}

/// The platform tags a wheel is written out under: the ones it was built with (the
/// platform's, which stay true), then its true tag when that says more (a manylinux tag
/// for a wheel built as `linux_aarch64`). Kept first, the built tags keep file names
/// stable for whoever looks them up by prefix.
pub fn tag_set(built: &[String], true_tag: &str) -> Vec<String> {
    let mut v = built.to_vec();
    if !v.iter().any(|t| t == true_tag) {
        v.push(true_tag.to_owned());
    }
    v
}

/// `sha256=<urlsafe base64, unpadded>`, as `RECORD` spells a hash.
pub fn record_hash(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
    )
}

struct Member {
    name: String,
    data: Vec<u8>,
    mode: u32,
    time: zip::DateTime,
}

/// Writes `src` into `dir` under `platforms`, returning the new path. A wheel that
/// already carries exactly these tags is copied byte for byte.
pub fn write_retagged(src: &Path, dir: &Path, platforms: &[String]) -> Result<PathBuf, RetagError> {
    let malformed = |reason: String| RetagError::Malformed {
        path: src.to_owned(),
        reason,
    };
    let file_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = WheelName::parse(&file_name).ok_or_else(|| {
        malformed("its file name is not `NAME-VERSION-PY-ABI-PLATFORM.whl`".into())
    })?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RetagError::Write { path, source }
    };
    if name.platforms == platforms {
        let to = dir.join(&file_name);
        // Replace, never write through: an earlier copy may be read-only.
        let _ = std::fs::remove_file(&to);
        std::fs::copy(src, &to).map_err(write_err(&to))?;
        return Ok(to);
    }
    name.platforms = platforms.to_vec();
    let read_err = |source| RetagError::Read {
        path: src.to_owned(),
        source,
    };
    let zip_err = |e: zip::result::ZipError| malformed(e.to_string());
    let mut z =
        zip::ZipArchive::new(std::fs::File::open(src).map_err(read_err)?).map_err(zip_err)?;
    let mut members = Vec::new();
    for i in 0..z.len() {
        let mut e = z.by_index(i).map_err(zip_err)?;
        if e.is_dir() {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).map_err(read_err)?;
        members.push(Member {
            name: e.name().map_err(zip_err)?.into_owned(),
            data,
            mode: e.unix_mode().unwrap_or(0o644),
            time: e.last_modified().unwrap_or_default(),
        });
    }
    let info_dir = members
        .iter()
        .find_map(|m| {
            m.name
                .strip_suffix("/WHEEL")
                .filter(|d| d.ends_with(".dist-info") && !d.contains('/'))
                .map(str::to_owned)
        })
        .ok_or_else(|| malformed("it has no .dist-info/WHEEL".into()))?;
    let wheel_path = format!("{info_dir}/WHEEL");
    let record_path = format!("{info_dir}/RECORD");
    let time = members.iter().map(|m| m.time).next().unwrap_or_default();
    members.retain(|m| m.name != record_path);
    for m in &mut members {
        if m.name == wheel_path {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("Tag:"))
                .map(str::to_owned)
                .collect();
            lines.extend(name.tags().iter().map(|t| format!("Tag: {t}")));
            m.data = (lines.join("\n") + "\n").into_bytes();
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut record = String::new();
    for m in &members {
        record.push_str(&format!(
            "{},{},{}\n",
            m.name,
            record_hash(&m.data),
            m.data.len()
        ));
    }
    record.push_str(&format!("{record_path},,\n"));
    members.push(Member {
        name: record_path,
        data: record.into_bytes(),
        mode: 0o644,
        time,
    });
    // The .dist-info last, as PEP 427 recommends; otherwise sorted.
    let prefix = format!("{info_dir}/");
    members.sort_by(|a, b| {
        (a.name.starts_with(&prefix), &a.name).cmp(&(b.name.starts_with(&prefix), &b.name))
    });

    let to = dir.join(name.file_name());
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err(dir))?;
    let mut w = zip::ZipWriter::new(tmp);
    for m in &members {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(m.time)
            .unix_permissions(if m.mode & 0o111 != 0 { 0o755 } else { 0o644 });
        w.start_file(m.name.as_str(), options)
            .map_err(|e| malformed(e.to_string()))?;
        w.write_all(&m.data).map_err(write_err(&to))?;
    }
    let tmp = w.finish().map_err(|e| malformed(e.to_string()))?;
    // A temporary file is private (0600); a wheel written out is for others to read.
    let public = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    std::fs::set_permissions(tmp.path(), public).map_err(write_err(tmp.path()))?;
    tmp.persist(&to).map_err(|e| RetagError::Write {
        path: to.clone(),
        source: e.error,
    })?;
    Ok(to)
}

/// Copies a job's wheels into `dir`, each under its built tags and its true tag
/// ([`super::run::JobResult::tags`]); returns the files written.
pub fn copy_out(r: &super::run::JobResult, dir: &Path) -> Result<Vec<PathBuf>, RetagError> {
    let mut out = Vec::new();
    for (i, w) in r.wheels.iter().enumerate() {
        let name = w
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let built = WheelName::parse(&name).map(|n| n.platforms);
        let tags = match (built, r.tags.get(i)) {
            (Some(built), Some(t)) => tag_set(&built, t),
            (Some(built), None) => built,
            (None, _) => {
                return Err(RetagError::Malformed {
                    path: w.clone(),
                    reason: "its file name is not `NAME-VERSION-PY-ABI-PLATFORM.whl`".into(),
                });
            }
        };
        out.push(write_retagged(w, dir, &tags)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_tags() {
        let n =
            WheelName::parse("MarkupSafe-2.1.5-cp311-cp311-linux_aarch64.linux_arm64.whl").unwrap();
        assert_eq!(n.stem, "MarkupSafe-2.1.5");
        assert_eq!(n.platforms, ["linux_aarch64", "linux_arm64"]);
        assert_eq!(
            n.tags(),
            ["cp311-cp311-linux_aarch64", "cp311-cp311-linux_arm64"]
        );
        assert!(WheelName::parse("nope.whl").is_none());
        assert_eq!(
            tag_set(&n.platforms, "manylinux_2_17_aarch64"),
            ["linux_aarch64", "linux_arm64", "manylinux_2_17_aarch64"]
        );
        assert_eq!(tag_set(&n.platforms, "linux_aarch64"), n.platforms);
    }

    #[test]
    fn a_retagged_wheel_agrees_with_its_name_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("x-1-cp311-cp311-linux_aarch64.whl");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&src).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        for (n, d) in [
            ("x/__init__.py", "pass\n"),
            (
                "x-1.dist-info/WHEEL",
                "Wheel-Version: 1.0\nTag: cp311-cp311-linux_aarch64\n",
            ),
            ("x-1.dist-info/RECORD", "stale\n"),
        ] {
            w.start_file(n, o).unwrap();
            w.write_all(d.as_bytes()).unwrap();
        }
        w.finish().unwrap();
        let tags = vec![
            "linux_aarch64".to_owned(),
            "manylinux_2_17_aarch64".to_owned(),
        ];
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let one = write_retagged(&src, &a, &tags).unwrap();
        let two = write_retagged(&src, &b, &tags).unwrap();
        assert_eq!(
            one.file_name().unwrap(),
            "x-1-cp311-cp311-linux_aarch64.manylinux_2_17_aarch64.whl"
        );
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        let mut z = zip::ZipArchive::new(std::fs::File::open(&one).unwrap()).unwrap();
        let mut read = |n: &str| {
            let mut s = String::new();
            z.by_name(n).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        let wheel = read("x-1.dist-info/WHEEL");
        assert!(
            wheel.contains("Tag: cp311-cp311-manylinux_2_17_aarch64\n"),
            "{wheel}"
        );
        let record = read("x-1.dist-info/RECORD");
        let init = format!("x/__init__.py,{},5\n", record_hash(b"pass\n"));
        let wheel_row = format!(
            "x-1.dist-info/WHEEL,{},{}\n",
            record_hash(wheel.as_bytes()),
            wheel.len()
        );
        // Sorted by bytes, as build-wheel.sh sorts (`-` before `/`).
        assert_eq!(record, format!("{wheel_row}{init}x-1.dist-info/RECORD,,\n"));
        // The same tags: the very same bytes.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&one).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by all");
        let same = write_retagged(&src, &b, &["linux_aarch64".to_owned()]).unwrap();
        assert_eq!(std::fs::read(&same).unwrap(), std::fs::read(&src).unwrap());
    }
}
