//! What a wheel's binaries need, read from their ELF headers (as auditwheel does): the
//! highest glibc and libstdc++ symbol versions, the libraries in `DT_NEEDED`, the machine
//! and, on 32-bit Arm, the architecture version (`Tag_CPU_arch`). From that follows the
//! platform tag the wheel can truthfully carry, and whether the tag it carries lies.

use std::io::Read;
use std::path::Path;

use object::elf;
use object::read::elf::{Dyn, ElfFile, FileHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("cannot read wheel `{}`", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wheel `{}` is not a valid zip: {reason}", path.display())]
    Zip {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{file}: not an ELF file this tool can read: {reason}")]
    Elf { file: String, reason: String },
    #[error("wheel `{}`: its file name has no linux or manylinux platform tag to judge it by\nhint: name the platform it is for with --platform", path.display())]
    NoPromise { path: std::path::PathBuf },
    #[error("wheel `{wheel}` would lie with tag `{tag}`: {reason}")]
    Lie {
        wheel: String,
        tag: String,
        reason: String,
    },
}

/// What one ELF file needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElfFacts {
    pub file: String,
    pub machine: u16,
    pub bits: u8,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// The highest `GLIBC_x.y` symbol version required.
    pub glibc: Option<(u32, u32)>,
    /// The highest `GLIBCXX_x.y.z` symbol version required.
    pub glibcxx: Option<(u32, u32, u32)>,
    /// 32-bit Arm: `Tag_CPU_arch` from `.ARM.attributes` (6: ARMv6KZ is 7, ARMv7 is 10).
    pub arm_arch: Option<u64>,
}

/// The libraries a manylinux wheel may leave to the system (PEP 599 / PEP 600 policy);
/// everything else must be vendored or linked in.
pub const MANYLINUX_ALLOWED: &[&str] = &[
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libc.so.6",
    "libnsl.so.1",
    "libutil.so.1",
    "libpthread.so.0",
    "libresolv.so.2",
    "libX11.so.6",
    "libXext.so.6",
    "libXrender.so.1",
    "libICE.so.6",
    "libSM.so.6",
    "libGL.so.1",
    "libgobject-2.0.so.0",
    "libgthread-2.0.so.0",
    "libglib-2.0.so.0",
];

/// Architectures manylinux tags exist for (pip understands them).
const MANYLINUX_ARCHES: &[&str] = &[
    "x86_64", "i686", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64",
];

fn parse_version(s: &str) -> Vec<u32> {
    s.split('.').map_while(|p| p.parse().ok()).collect()
}

/// Reads the facts of one ELF file.
pub fn inspect(file: &str, data: &[u8]) -> Result<ElfFacts, TagError> {
    let bad = |reason: String| TagError::Elf {
        file: file.to_owned(),
        reason,
    };
    match data.get(4) {
        Some(1) => inspect_as::<elf::FileHeader32<Endianness>>(file, data),
        Some(2) => inspect_as::<elf::FileHeader64<Endianness>>(file, data),
        _ => Err(bad("no ELF class".into())),
    }
}

fn inspect_as<H: FileHeader<Endian = Endianness>>(
    file: &str,
    data: &[u8],
) -> Result<ElfFacts, TagError> {
    let bad = |e: object::Error| TagError::Elf {
        file: file.to_owned(),
        reason: e.to_string(),
    };
    let obj = ElfFile::<H>::parse(data).map_err(bad)?;
    let endian = obj.endian();
    let header = obj.elf_header();
    let sections = header.sections(endian, data).map_err(bad)?;
    let mut facts = ElfFacts {
        file: file.to_owned(),
        machine: header.e_machine(endian),
        bits: if obj.is_64() { 64 } else { 32 },
        needed: Vec::new(),
        glibc: None,
        glibcxx: None,
        arm_arch: None,
    };
    if let Some((dynamic, link)) = sections.dynamic(endian, data).map_err(bad)? {
        let strings = sections.strings(endian, data, link).map_err(bad)?;
        for d in dynamic {
            if d.d_tag(endian).into() == u64::from(elf::DT_NEEDED) {
                let name = d.string(endian, strings).map_err(bad)?;
                facts
                    .needed
                    .push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    if let Some((mut verneed, link)) = sections.gnu_verneed(endian, data).map_err(bad)? {
        let strings = sections.strings(endian, data, link).map_err(bad)?;
        while let Some((_, mut aux)) = verneed.next().map_err(bad)? {
            while let Some(a) = aux.next().map_err(bad)? {
                let name =
                    String::from_utf8_lossy(a.name(endian, strings).map_err(bad)?).into_owned();
                if let Some(v) = name.strip_prefix("GLIBC_") {
                    let v = parse_version(v);
                    if v.len() >= 2 {
                        facts.glibc = facts.glibc.max(Some((v[0], v[1])));
                    }
                } else if let Some(v) = name.strip_prefix("GLIBCXX_") {
                    let v = parse_version(v);
                    if v.len() >= 2 {
                        let t = (v[0], v[1], v.get(2).copied().unwrap_or(0));
                        facts.glibcxx = facts.glibcxx.max(Some(t));
                    }
                }
            }
        }
    }
    if facts.machine == elf::EM_ARM {
        for s in sections.iter() {
            if s.sh_type(endian) == elf::SHT_ARM_ATTRIBUTES {
                let bytes = s.data(endian, data).map_err(bad)?;
                facts.arm_arch = arm_cpu_arch(bytes);
            }
        }
        if facts.arm_arch.is_none()
            && let Some(s) = obj.section_by_name(".ARM.attributes")
        {
            facts.arm_arch = s.data().ok().and_then(arm_cpu_arch);
        }
    }
    Ok(facts)
}

fn uleb(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// `Tag_CPU_arch` (tag 6) of the `aeabi` file-scope attributes.
pub fn arm_cpu_arch(b: &[u8]) -> Option<u64> {
    if b.first() != Some(&b'A') {
        return None;
    }
    let mut at = 1;
    while at + 4 <= b.len() {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().ok()?) as usize;
        let end = at.checked_add(len)?.min(b.len());
        let body = &b[at + 4..end];
        let nul = body.iter().position(|&c| c == 0)?;
        if &body[..nul] == b"aeabi" {
            let mut p = nul + 1;
            while p < body.len() {
                let tag = *body.get(p)?;
                let size = u32::from_le_bytes(body.get(p + 1..p + 5)?.try_into().ok()?) as usize;
                if tag == 1 {
                    let attrs = body.get(p + 5..(p + size).min(body.len()))?;
                    let mut q = 0;
                    while q < attrs.len() {
                        let t = uleb(attrs, &mut q)?;
                        // Strings: Tag_CPU_raw_name (4), Tag_CPU_name (5), and above 32
                        // the odd tags; Tag_compatibility (32) is a number then a string.
                        let is_string = t == 4 || t == 5 || (t > 32 && t % 2 == 1);
                        if t == 32 {
                            uleb(attrs, &mut q)?;
                        }
                        if is_string || t == 32 {
                            let n = attrs[q..].iter().position(|&c| c == 0)?;
                            q += n + 1;
                        } else {
                            let v = uleb(attrs, &mut q)?;
                            if t == 6 {
                                return Some(v);
                            }
                        }
                    }
                }
                p += size.max(1);
            }
        }
        at = end;
    }
    None
}

/// The ELF facts of every shared object in a wheel.
pub fn inspect_wheel(path: &Path) -> Result<Vec<ElfFacts>, TagError> {
    let f = std::fs::File::open(path).map_err(|source| TagError::Read {
        path: path.to_owned(),
        source,
    })?;
    let zip_err = |e: zip::result::ZipError| TagError::Zip {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut z = zip::ZipArchive::new(f).map_err(zip_err)?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut entry = z.by_index(i).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?.into_owned();
        if !(name.ends_with(".so") || name.contains(".so.")) {
            continue;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|source| TagError::Read {
                path: path.to_owned(),
                source,
            })?;
        if data.starts_with(b"\x7fELF") {
            out.push(inspect(&name, &data)?);
        }
    }
    Ok(out)
}

/// What a platform promises about the wheels built for it.
#[derive(Debug, Clone)]
pub struct Promise {
    /// The tag's architecture (`aarch64`, `armv6l`).
    pub arch: String,
    /// The oldest glibc the platform's wheels must run on, if it promises one.
    pub glibc_floor: Option<(u32, u32)>,
    /// Its first tag is a manylinux tag, which also promises that only the policy's
    /// libraries are left to the system.
    pub manylinux: bool,
}

impl Promise {
    /// From a platform's wheel tags (`manylinux_2_17_x86_64` promises glibc 2.17) and
    /// its toolchain's zig target (`arm-linux-gnueabihf.2.28` promises 2.28).
    pub fn of(tags: &[String], zig_target: Option<&str>) -> Option<Promise> {
        let first = tags.first()?;
        let (arch, mut floor) = if let Some(rest) = first.strip_prefix("manylinux_") {
            let mut parts = rest.splitn(3, '_');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            (parts.next()?.to_owned(), Some((major, minor)))
        } else {
            (first.strip_prefix("linux_")?.to_owned(), None)
        };
        if floor.is_none()
            && let Some(z) = zig_target
            && let Some((_, v)) = z.rsplit_once(".2.")
        {
            floor = v.parse().ok().map(|m| (2, m));
        }
        Some(Promise {
            arch,
            manylinux: first.starts_with("manylinux_"),
            glibc_floor: floor,
        })
    }

    /// What a wheel's own file name promises (its first platform tag), for a wheel that
    /// comes without a platform: `x-1-cp311-cp311-manylinux_2_17_x86_64.whl` promises
    /// glibc 2.17 and the policy's libraries. The legacy aliases (`manylinux2014_x86_64`)
    /// are read as the PEP 600 tags they stand for.
    pub fn of_file_name(name: &str) -> Option<Promise> {
        let stem = name.strip_suffix(".whl")?;
        let platforms = stem.rsplit('-').next()?;
        let first = platforms.split('.').next()?;
        let tag = pep600_alias(first).unwrap_or_else(|| first.to_owned());
        Promise::of(&[tag], None)
    }
}

/// The PEP 600 tag a legacy manylinux tag stands for (`manylinux2014_x86_64` is
/// `manylinux_2_17_x86_64`).
pub fn pep600_alias(tag: &str) -> Option<String> {
    for (old, glibc) in [
        ("manylinux1_", "2_5"),
        ("manylinux2010_", "2_12"),
        ("manylinux2014_", "2_17"),
    ] {
        if let Some(arch) = tag.strip_prefix(old) {
            return Some(format!("manylinux_{glibc}_{arch}"));
        }
    }
    None
}

/// The machine (`e_machine`) of an architecture tag.
pub fn machine_of(arch: &str) -> Option<u16> {
    Some(match arch {
        "x86_64" => elf::EM_X86_64,
        "i686" => elf::EM_386,
        "aarch64" => elf::EM_AARCH64,
        "armv6l" | "armv7l" => elf::EM_ARM,
        "ppc64le" => elf::EM_PPC64,
        "mips" | "mips64" => elf::EM_MIPS,
        "riscv64" => elf::EM_RISCV,
        "s390x" => elf::EM_S390,
        _ => return None,
    })
}

/// The libraries in the binaries' `DT_NEEDED` that no manylinux policy lets a wheel
/// leave to the system (the dynamic loader and libpython are the interpreter's).
pub fn external_libraries(facts: &[ElfFacts]) -> Vec<&str> {
    let mut v: Vec<&str> = facts
        .iter()
        .flat_map(|f| f.needed.iter())
        .map(|s| s.as_str())
        .filter(|n| {
            !MANYLINUX_ALLOWED.contains(n)
                && !n.starts_with("ld-linux")
                && !n.starts_with("libpython")
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// For each manylinux glibc from which libstdc++ grew, the newest `GLIBCXX_3.4.N` its
/// reference distribution provides: CentOS 7 (2.17, GCC 4.8), Debian 9 (2.24, GCC 6),
/// then the GCC 7, 9, 11, 12 and 13 eras. A wheel needing `GLIBCXX_3.4.21` runs only
/// from manylinux_2_24 on, whatever its `GLIBC_` versions say.
const LIBSTDCXX: &[(u32, u32)] = &[
    (17, 19),
    (24, 22),
    (26, 24),
    (31, 28),
    (34, 29),
    (35, 30),
    (39, 33),
];

/// The oldest manylinux glibc whose libstdc++ provides `GLIBCXX_` version `v`; `None`
/// past the table.
fn glibc_for_glibcxx(v: (u32, u32, u32)) -> Option<(u32, u32)> {
    if (v.0, v.1) != (3, 4) {
        return None;
    }
    LIBSTDCXX
        .iter()
        .find(|&&(_, n)| v.2 <= n)
        .map(|&(g, _)| (2, g))
}

/// The glibc of the manylinux tag the binaries allow: their highest `GLIBC_` version, or
/// the glibc whose libstdc++ their `GLIBCXX_` versions need if that is newer, never below
/// 2.17 (manylinux2014, the oldest policy every architecture here has). `None` when they
/// need a libstdc++ newer than any policy's.
pub fn manylinux_glibc(facts: &[ElfFacts]) -> Option<(u32, u32)> {
    let mut g = (2, 17);
    for f in facts {
        g = g.max(f.glibc.unwrap_or_default());
        if let Some(v) = f.glibcxx {
            g = g.max(glibc_for_glibcxx(v)?);
        }
    }
    Some(g)
}

/// The truthful platform tag of a wheel whose binaries are `facts`, made for a platform
/// that promises `promise`; an error when its binaries break the promise.
pub fn true_tag(wheel: &str, facts: &[ElfFacts], promise: &Promise) -> Result<String, TagError> {
    let lie = |reason: String| TagError::Lie {
        wheel: wheel.to_owned(),
        tag: format!("linux_{}", promise.arch),
        reason,
    };
    let want = machine_of(&promise.arch);
    for f in facts {
        if want.is_some_and(|m| m != f.machine) {
            return Err(lie(format!(
                "{} is for ELF machine {}, not {}",
                f.file, f.machine, promise.arch
            )));
        }
        if promise.arch == "armv6l" && f.arm_arch.is_some_and(|a| a >= 10 || a == 8) {
            return Err(lie(format!(
                "{} is ARM architecture {} (Tag_CPU_arch), newer than ARMv6",
                f.file,
                f.arm_arch.unwrap_or_default()
            )));
        }
        if let (Some(floor), Some(g)) = (promise.glibc_floor, f.glibc)
            && g > floor
        {
            return Err(lie(format!(
                "{} needs GLIBC_{}.{}, newer than the platform's floor {}.{}",
                f.file, g.0, g.1, floor.0, floor.1
            )));
        }
    }
    let external = external_libraries(facts);
    if promise.manylinux && !external.is_empty() {
        return Err(TagError::Lie {
            wheel: wheel.to_owned(),
            tag: format!("manylinux_*_{}", promise.arch),
            reason: format!(
                "it needs {} from the system, outside the manylinux policy",
                external.join(", ")
            ),
        });
    }
    let glibc = manylinux_glibc(facts);
    if promise.manylinux
        && let Some(floor) = promise.glibc_floor
    {
        let too_new = |v: (u32, u32, u32)| glibc_for_glibcxx(v).is_none_or(|g| g > floor);
        if let Some(f) = facts.iter().find(|f| f.glibcxx.is_some_and(too_new)) {
            let v = f.glibcxx.unwrap_or_default();
            return Err(lie(format!(
                "{} needs GLIBCXX_{}.{}.{}, a libstdc++ newer than glibc {}.{} systems have",
                f.file, v.0, v.1, v.2, floor.0, floor.1
            )));
        }
    }
    match glibc {
        Some(g) if external.is_empty() && MANYLINUX_ARCHES.contains(&promise.arch.as_str()) => {
            Ok(format!("manylinux_{}_{}_{}", g.0, g.1, promise.arch))
        }
        _ => Ok(format!("linux_{}", promise.arch)),
    }
}

/// What `dockerbuild wheel-tag` reports about one wheel.
#[derive(Debug, Clone, Serialize)]
pub struct Examined {
    pub wheel: String,
    /// The architecture and glibc floor the wheel was judged against.
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glibc_floor: Option<String>,
    /// The truthful platform tag; `None` when the promise is a lie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Why the promise is a lie, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lie: Option<String>,
    /// The glibc of the manylinux tag the binaries allow (see [`manylinux_glibc`]),
    /// also for architectures without manylinux tags; `None` past every policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glibc: Option<String>,
    /// Libraries needed from the system outside the manylinux policy.
    pub external: Vec<String>,
    pub files: Vec<ElfFacts>,
}

/// Inspects a wheel and judges it against `promise`, or, without one, against what its
/// own file name promises.
pub fn examine(path: &Path, promise: Option<&Promise>) -> Result<Examined, TagError> {
    let wheel = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let universal = promise.is_none() && wheel.ends_with("-any.whl");
    if universal {
        // A universal wheel promises no binaries at all.
        let files = inspect_wheel(path)?;
        let lie = files.first().map(|f| {
            TagError::Lie {
                wheel: wheel.clone(),
                tag: "any".into(),
                reason: format!("{} is ELF code for machine {}", f.file, f.machine),
            }
            .to_string()
        });
        return Ok(Examined {
            tag: lie.is_none().then(|| "any".to_owned()),
            lie,
            wheel,
            arch: "any".into(),
            glibc_floor: None,
            glibc: None,
            external: Vec::new(),
            files,
        });
    }
    let promise = match promise {
        Some(p) => p.clone(),
        None => Promise::of_file_name(&wheel).ok_or_else(|| TagError::NoPromise {
            path: path.to_owned(),
        })?,
    };
    let files = inspect_wheel(path)?;
    let (tag, lie) = match true_tag(&wheel, &files, &promise) {
        Ok(t) => (Some(t), None),
        Err(e @ TagError::Lie { .. }) => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let glibc = manylinux_glibc(&files).map(|(a, b)| format!("{a}.{b}"));
    Ok(Examined {
        wheel,
        arch: promise.arch.clone(),
        glibc_floor: promise.glibc_floor.map(|(a, b)| format!("{a}.{b}")),
        tag,
        lie,
        glibc,
        external: external_libraries(&files)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        machine: u16,
        glibc: Option<(u32, u32)>,
        needed: &[&str],
        arm: Option<u64>,
    ) -> ElfFacts {
        ElfFacts {
            file: "x.so".into(),
            machine,
            bits: 64,
            needed: needed.iter().map(|s| s.to_string()).collect(),
            glibc,
            glibcxx: None,
            arm_arch: arm,
        }
    }

    fn promise(tag: &str, zig: Option<&str>) -> Promise {
        Promise::of(&[tag.to_owned()], zig).unwrap()
    }

    #[test]
    fn promises_come_from_tags_and_zig_targets() {
        let p = promise("manylinux_2_17_x86_64", None);
        assert_eq!((p.arch.as_str(), p.glibc_floor), ("x86_64", Some((2, 17))));
        let p = promise("linux_armv6l", Some("arm-linux-gnueabihf.2.28"));
        assert_eq!((p.arch.as_str(), p.glibc_floor), ("armv6l", Some((2, 28))));
        let p = promise("linux_aarch64", None);
        assert_eq!(p.glibc_floor, None);
    }

    #[test]
    fn tags_follow_what_binaries_need() {
        let p = promise("linux_aarch64", None);
        let ok = facts(elf::EM_AARCH64, Some((2, 17)), &["libc.so.6"], None);
        assert_eq!(
            true_tag("w", std::slice::from_ref(&ok), &p).unwrap(),
            "manylinux_2_17_aarch64"
        );
        let newer = facts(
            elf::EM_AARCH64,
            Some((2, 34)),
            &["libc.so.6", "libm.so.6"],
            None,
        );
        assert_eq!(
            true_tag("w", &[ok.clone(), newer], &p).unwrap(),
            "manylinux_2_34_aarch64"
        );
        let ssl = facts(
            elf::EM_AARCH64,
            Some((2, 17)),
            &["libssl.so.3", "libc.so.6"],
            None,
        );
        assert_eq!(
            true_tag("w", &[ssl], &p).unwrap(),
            "linux_aarch64",
            "libssl is not allowed"
        );
        let pure: Vec<ElfFacts> = Vec::new();
        assert_eq!(true_tag("w", &pure, &p).unwrap(), "manylinux_2_17_aarch64");
        let armv6 = promise("linux_armv6l", None);
        let v6 = facts(elf::EM_ARM, Some((2, 4)), &["libc.so.6"], Some(7));
        assert_eq!(
            true_tag("w", &[v6], &armv6).unwrap(),
            "linux_armv6l",
            "no manylinux for armv6l"
        );
    }

    #[test]
    fn lies_are_refused_by_name() {
        let armv6 = promise("linux_armv6l", Some("arm-linux-gnueabihf.2.28"));
        let v7 = facts(elf::EM_ARM, Some((2, 4)), &["libc.so.6"], Some(10));
        let e = true_tag("w.whl", &[v7], &armv6).unwrap_err().to_string();
        assert!(e.contains("w.whl") && e.contains("newer than ARMv6"), "{e}");
        let new_glibc = facts(elf::EM_ARM, Some((2, 34)), &["libc.so.6"], Some(6));
        let e = true_tag("w.whl", &[new_glibc], &armv6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GLIBC_2.34") && e.contains("2.28"), "{e}");
        let ml = promise("manylinux_2_17_x86_64", None);
        let x = facts(elf::EM_X86_64, Some((2, 28)), &["libc.so.6"], None);
        assert!(true_tag("w", &[x], &ml).is_err());
        let wrong = facts(elf::EM_AARCH64, None, &[], None);
        let e = true_tag("w", &[wrong], &ml).unwrap_err().to_string();
        assert!(e.contains("machine"), "{e}");
    }

    #[test]
    fn a_manylinux_name_promises_the_policy_libraries_and_its_glibc() {
        let p =
            Promise::of_file_name("x-1-cp311-cp311-manylinux2014_x86_64.linux_x86_64.whl").unwrap();
        assert_eq!(
            (p.arch.as_str(), p.glibc_floor, p.manylinux),
            ("x86_64", Some((2, 17)), true)
        );
        let z = facts(
            elf::EM_X86_64,
            Some((2, 17)),
            &["libz.so.1", "libc.so.6"],
            None,
        );
        let e = true_tag("w", std::slice::from_ref(&z), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("libz.so.1") && e.contains("manylinux"), "{e}");
        let linux = Promise::of_file_name("x-1-cp311-cp311-linux_x86_64.whl").unwrap();
        assert!(!linux.manylinux);
        assert_eq!(true_tag("w", &[z], &linux).unwrap(), "linux_x86_64");
        assert!(Promise::of_file_name("x-1-py3-none-any.whl").is_none());

        // A universal wheel: `any` without binaries, a lie with one.
        let dir = tempfile::tempdir().unwrap();
        let any = |name: &str, member: &str, data: &[u8]| {
            let path = dir.path().join(name);
            let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            w.start_file(member, zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut w, data).unwrap();
            w.finish().unwrap();
            examine(&path, None).unwrap()
        };
        let pure = any("p-1-py3-none-any.whl", "p/__init__.py", b"");
        assert_eq!(
            (pure.tag.as_deref(), pure.lie.as_deref()),
            (Some("any"), None)
        );
        // The smallest ELF: a 64-bit little-endian x86-64 header, no sections.
        let mut elf = vec![0u8; 64];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[16] = 3; // ET_DYN
        elf[18] = 62; // EM_X86_64
        elf[20] = 1; // EV_CURRENT
        elf[52] = 64; // e_ehsize
        elf[54] = 56; // e_phentsize
        elf[58] = 64; // e_shentsize
        let bad = any("b-1-py3-none-any.whl", "b/m.so", &elf);
        assert!(bad.tag.is_none(), "{bad:?}");
        assert!(
            bad.lie
                .unwrap()
                .contains("b/m.so is ELF code for machine 62")
        );
        // libstdc++'s version raises the glibc: GLIBCXX_3.4.21 first came with 2.24's.
        let mut cxx = facts(elf::EM_X86_64, Some((2, 17)), &["libstdc++.so.6"], None);
        cxx.glibcxx = Some((3, 4, 21));
        assert_eq!(
            true_tag("w", std::slice::from_ref(&cxx), &linux).unwrap(),
            "manylinux_2_24_x86_64"
        );
        let e = true_tag("w", std::slice::from_ref(&cxx), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GLIBCXX_3.4.21"), "{e}");
        cxx.glibcxx = Some((3, 4, 40));
        assert_eq!(
            true_tag("w", &[cxx], &linux).unwrap(),
            "linux_x86_64",
            "past every policy"
        );
    }

    #[test]
    fn arm_attributes_give_the_cpu_arch() {
        // 'A', a subsection of 0x1d bytes for "aeabi": Tag_File of 0x13 bytes holding
        // Tag_CPU_name "6KZ", Tag_CPU_arch 7, Tag_ARM_ISA_use 1, Tag_THUMB_ISA_use 1.
        let mut b = vec![b'A'];
        let mut file = vec![5u8, b'6', b'K', b'Z', 0, 6, 7, 8, 1, 9, 1];
        let mut tagfile = vec![1u8];
        tagfile.extend(((file.len() + 5) as u32).to_le_bytes());
        tagfile.append(&mut file);
        let mut sub = Vec::new();
        sub.extend(b"aeabi\0");
        sub.append(&mut tagfile);
        b.extend(((sub.len() + 4) as u32).to_le_bytes());
        b.append(&mut sub);
        assert_eq!(arm_cpu_arch(&b), Some(7));
        assert_eq!(arm_cpu_arch(b"B"), None);
    }
}
