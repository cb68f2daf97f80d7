//! True tags: `dockerbuild wheel-tag` cross-checked against auditwheel (installed from
//! the package index into a throwaway venv) on real wheels `wheel-build` made for
//! x86-64, arm64, ARMv7 and ARMv6, and on negative fixtures compiled here by the host's
//! gcc: a library outside the manylinux policy, a glibc newer than the name claims, a
//! libstdc++ newer than manylinux2014's, and ARMv7 code in a wheel named `linux_armv6l`. Also: `wheel-build -o` writes each wheel
//! under its true tags, with `WHEEL` and `RECORD` agreeing with the name.
//!
//! What is compared: our tag against auditwheel's best policy for the wheel as it is
//! (no grafting: the lower of its symbol and external-library policies), after two
//! normalisations. auditwheel knows manylinux policies only at certain glibc versions
//! (2.5, 2.12, 2.17, 2.24, ...), so our `manylinux_2_X` is rounded up to the next one it
//! knows; and we never claim below 2.17, so its older policies count as 2.17. auditwheel
//! has no armv6l: it reads any 32-bit Arm wheel as armv7l, so for `linux_armv6l` wheels
//! the comparison is what the tag would be on armv7l (same glibc, same libraries). One
//! difference is by design: auditwheel allows `libz.so.1` (with a symbol blacklist);
//! we keep PEP 599's list, so a wheel needing libz is `linux_<arch>` for us.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{dockerbuild, ready, repo, shared_store};
use dockerbuild::wheel::retag::{WheelName, record_hash};
use serde_json::Value;

/// The auditwheel release compared against: the first ones with armv7l policies (6.1)
/// still judge a foreign wheel by the host's architecture; 6.8 reads it from the ELF.
const AUDITWHEEL: &str = "auditwheel==6.8.2";

struct Auditwheel {
    _venv: tempfile::TempDir,
    python: PathBuf,
}

/// auditwheel in a fresh venv; pip uses the machine's configured index. `None` (after
/// saying why) when it cannot be installed off CI.
fn auditwheel() -> Option<Auditwheel> {
    let venv = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv.path())
        .status()
        .is_ok_and(|s| s.success());
    let python = venv.path().join("bin/python");
    let installed = made
        && Command::new(&python)
            .args(["-m", "pip", "install", "-q", AUDITWHEEL])
            .status()
            .is_ok_and(|s| s.success());
    common::available(&format!("{AUDITWHEEL} (python3 -m venv, pip)"), installed).then_some(
        Auditwheel {
            _venv: venv,
            python,
        },
    )
}

/// Runs in auditwheel's venv: each wheel's best policy as it is, and the glibc minor
/// versions auditwheel has manylinux policies for, by architecture.
const ANALYZE: &str = r#"
import importlib.resources, json, logging, sys
from pathlib import Path
from auditwheel.wheel_abi import analyze_wheel_abi
logging.disable(logging.WARNING)
out = {"wheels": {}, "minors": {}}
for w in sys.argv[1:]:
    i = analyze_wheel_abi(None, None, Path(w), frozenset(),
                          disable_isa_ext_check=True, allow_graft=False)
    out["wheels"][Path(w).name] = min(i.overall_policy, i.ref_policy).name
text = importlib.resources.files("auditwheel.policy").joinpath("manylinux-policy.json").read_text()
for p in json.loads(text):
    if p["name"].startswith("manylinux_2_"):
        for arch in p["symbol_versions"]:
            out["minors"].setdefault(arch, []).append(int(p["name"].split("_")[2]))
print(json.dumps(out))
"#;

struct Verdicts {
    /// Wheel file name -> auditwheel's policy name.
    policies: HashMap<String, String>,
    minors: HashMap<String, Vec<u32>>,
}

fn analyze(aw: &Auditwheel, wheels: &[PathBuf]) -> Verdicts {
    let out = Command::new(&aw.python)
        .args(["-c", ANALYZE])
        .args(wheels)
        .output()
        .unwrap();
    common::assert_success(&out, &"auditwheel's analyze_wheel_abi");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let policies = v["wheels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, p)| (k.clone(), p.as_str().unwrap().to_owned()))
        .collect();
    let minors = v["minors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, m)| {
            let mut m: Vec<u32> = m
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            m.sort_unstable();
            (k.clone(), m)
        })
        .collect();
    Verdicts { policies, minors }
}

/// `dockerbuild --json wheel-tag [-p P] FILES`: one report per wheel, and whether it
/// exited 0 (no lie).
fn wheel_tag(platform: Option<&str>, wheels: &[PathBuf]) -> (Vec<Value>, bool) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dockerbuild"));
    c.arg("--project")
        .arg(repo())
        .args(["-q", "--json", "wheel-tag"]);
    if let Some(p) = platform {
        c.args(["-p", p]);
    }
    let out = c.args(wheels).output().unwrap();
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wheel-tag JSON: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.success())
}

/// Our verdict as auditwheel would spell it (see the module comment).
fn ours_as_auditwheel(ours: &Value, minors: &HashMap<String, Vec<u32>>) -> String {
    let arch = match ours["arch"].as_str().unwrap() {
        "armv6l" => "armv7l",
        a => a,
    };
    let tag = ours["tag"].as_str().expect("no lie");
    let manylinux = tag.starts_with("manylinux_")
        || (ours["arch"] == "armv6l" && ours["external"].as_array().unwrap().is_empty());
    if !manylinux {
        return format!("linux_{arch}");
    }
    let minor: u32 = ours["glibc"]
        .as_str()
        .unwrap()
        .strip_prefix("2.")
        .unwrap()
        .parse()
        .unwrap();
    let known = &minors[arch];
    let up = known.iter().copied().find(|&m| m >= minor).unwrap_or(minor);
    format!("manylinux_2_{up}_{arch}")
}

fn auditwheel_normalised(policy: &str) -> String {
    match policy.strip_prefix("manylinux_2_") {
        Some(rest) => {
            let (minor, arch) = rest.split_once('_').unwrap();
            let minor: u32 = minor.parse().unwrap();
            format!("manylinux_2_{}_{arch}", minor.max(17))
        }
        None => policy.to_owned(),
    }
}

/// A wheel holding `files` (name, bytes), with WHEEL and RECORD, named `file_name`.
fn make_wheel(dir: &Path, file_name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let name = WheelName::parse(file_name).unwrap();
    let info = format!("{}.dist-info", name.stem);
    let wheel = format!(
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n{}",
        name.tags()
            .iter()
            .map(|t| format!("Tag: {t}\n"))
            .collect::<String>()
    );
    let mut all: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    all.push((format!("{info}/WHEEL"), wheel.into_bytes()));
    let mut record: String = all
        .iter()
        .map(|(n, d)| format!("{n},{},{}\n", record_hash(d), d.len()))
        .collect();
    record.push_str(&format!("{info}/RECORD,,\n"));
    all.push((format!("{info}/RECORD"), record.into_bytes()));
    let path = dir.join(file_name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    for (n, d) in &all {
        z.start_file(n.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(d).unwrap();
    }
    z.finish().unwrap();
    path
}

/// A shared object compiled by the host's gcc (g++ for a `.cpp` stem) from `source`,
/// linked with `libs` (`-l:libffi.so.8`: kept in DT_NEEDED even when unused).
fn compile(dir: &Path, file: &str, source: &str, libs: &[&str]) -> Vec<u8> {
    let (stem, compiler) = match file.strip_suffix(".cpp") {
        Some(stem) => (stem, "g++"),
        None => (file.strip_suffix(".c").unwrap(), "gcc"),
    };
    let c = dir.join(file);
    let so = dir.join(format!("{stem}.so"));
    std::fs::write(&c, source).unwrap();
    let out = Command::new(compiler)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&c)
        .arg("-Wl,--no-as-needed")
        .args(libs)
        .output()
        .unwrap();
    common::assert_success(&out, &format!("gcc {stem}"));
    std::fs::read(&so).unwrap()
}

/// Every member of a wheel, by name.
fn members(wheel: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(wheel).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().unwrap().into_owned(), b)
        })
        .collect()
}

/// As pip checks an installed wheel: the WHEEL tags are exactly the name's, and every
/// RECORD row's hash and size match the member's bytes, every member listed once.
fn assert_name_wheel_and_record_agree(wheel: &Path) {
    let file_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    let name = WheelName::parse(&file_name).unwrap();
    let all = members(wheel);
    let get = |suffix: &str| {
        all.iter()
            .find(|(n, _)| n.ends_with(suffix) && n.contains(".dist-info/"))
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
            .unwrap_or_else(|| panic!("{file_name}: no {suffix}"))
    };
    let mut tags: Vec<String> = get("/WHEEL")
        .lines()
        .filter_map(|l| l.strip_prefix("Tag: "))
        .map(str::to_owned)
        .collect();
    tags.sort();
    let mut want = name.tags();
    want.sort();
    assert_eq!(tags, want, "{file_name}: WHEEL tags are the name's");
    let record = get("/RECORD");
    let mut listed = Vec::new();
    for row in record.lines() {
        let mut f = row.split(',');
        let (n, hash, size) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        listed.push(n.to_owned());
        if n.ends_with(".dist-info/RECORD") {
            continue;
        }
        let (_, data) = all
            .iter()
            .find(|(m, _)| m == n)
            .unwrap_or_else(|| panic!("{file_name}: RECORD lists {n}, not in the zip"));
        assert_eq!(hash, record_hash(data), "{file_name}: hash of {n}");
        assert_eq!(size, data.len().to_string(), "{file_name}: size of {n}");
    }
    listed.sort();
    let mut names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(listed, names, "{file_name}: RECORD lists every member once");
}

/// The real wheels: MarkupSafe on all five Linux platforms, cffi (libffi linked in) on
/// arm64 and ARMv7 (built by tests/wheels.rs too), psutil (abi3, two extensions) on arm64,
/// all for CPython 3.11, written out by `-o`. Returns the files and the true tag
/// `wheel-build` reported for each.
fn built_wheels(out: &Path) -> Vec<(PathBuf, String)> {
    let mut v = Vec::new();
    for (spec, platforms) in [
        (
            "markupsafe",
            &[
                "linux-x64",
                "manylinux-x64",
                "linux-arm64",
                "linux-armv7",
                "linux-armv6",
            ][..],
        ),
        ("cffi", &["linux-arm64", "linux-armv7"][..]),
        ("psutil", &["linux-arm64"][..]),
    ] {
        let mut c = dockerbuild(&shared_store(), &repo());
        c.args(["--json", "wheel-build", "-j", "2", "-o"])
            .arg(out)
            .args(["-w", spec, "--python", "3.11"]);
        for p in platforms {
            c.args(["-p", p]);
        }
        let o = c.output().unwrap();
        common::assert_success(&o, &format!("wheel-build {spec}"));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        for w in report["wheels"].as_array().unwrap() {
            let tag = w["tags"][0].as_str().unwrap().to_owned();
            let stored = PathBuf::from(w["wheels"][0].as_str().unwrap());
            let name = WheelName::parse(&stored.file_name().unwrap().to_string_lossy()).unwrap();
            // Found by its built tags, which stay first in the name.
            let written = std::fs::read_dir(out)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    WheelName::parse(&p.file_name().unwrap().to_string_lossy()).is_some_and(|n| {
                        n.stem == name.stem
                            && n.python == name.python
                            && n.platforms.starts_with(&name.platforms)
                    })
                })
                .unwrap_or_else(|| panic!("{} was not written out", stored.display()));
            v.push((written, tag));
        }
    }
    v
}

/// `wheel-build -o` names each wheel by its built tags plus its true tag, and the
/// WHEEL and RECORD inside agree with that name; the store's own copy is untouched.
#[test]
fn wheels_written_out_carry_their_true_tags_and_a_matching_record() {
    if !ready() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let wheels = built_wheels(out.path());
    assert_eq!(wheels.len(), 8);
    for (w, tag) in &wheels {
        let name = WheelName::parse(&w.file_name().unwrap().to_string_lossy()).unwrap();
        assert!(name.platforms.contains(tag), "{}: {tag}", w.display());
        assert_name_wheel_and_record_agree(w);
    }
    let arm64 = wheels
        .iter()
        .find(|(w, _)| {
            let n = w.file_name().unwrap().to_string_lossy();
            n.starts_with("MarkupSafe") && n.contains("aarch64")
        })
        .unwrap();
    // MarkupSafe's extension needs only libc: arm64 gains a manylinux tag.
    assert!(arm64.1.starts_with("manylinux_2_"), "{}", arm64.1);
}

/// The cross-check: for every real wheel and fixture, our tag and auditwheel's agree
/// (see the module comment for what is compared), and the lies are refused.
#[test]
fn true_tags_agree_with_auditwheel() {
    let compilers = ["gcc", "g++"]
        .iter()
        .all(|c| Command::new(c).arg("--version").output().is_ok());
    if !ready() || !common::available("gcc and g++", compilers) {
        return;
    }
    let Some(aw) = auditwheel() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let mut wheels: Vec<PathBuf> = built_wheels(out.path())
        .into_iter()
        .map(|(w, _)| w)
        .collect();

    // Negative fixtures (and one positive), compiled here.
    let fx = tempfile::tempdir().unwrap();
    let plain = "#include <string.h>\nint f(const char *s) { return (int)strlen(s); }\n";
    let newer = "#include <stdlib.h>\nunsigned f(void) { return arc4random(); }\n";
    // std::string's C++11 ABI: GLIBCXX_3.4.21, a libstdc++ manylinux2014 lacks.
    let cxx = "#include <string>\n\
               extern \"C\" int f(const char *s) { std::string t(s); t += \"!\"; return (int)t.size(); }\n";
    let plain_so = compile(fx.path(), "plain.c", plain, &[]);
    let ffi_so = compile(fx.path(), "ffi.c", plain, &["-l:libffi.so.8"]);
    let z_so = compile(fx.path(), "z.c", plain, &["-l:libz.so.1"]);
    let new_so = compile(fx.path(), "newer.c", newer, &[]);
    let cxx_so = compile(fx.path(), "cxx.cpp", cxx, &[]);
    let armv7_so = members(
        wheels
            .iter()
            .find(|w| {
                let n = w.file_name().unwrap().to_string_lossy();
                n.starts_with("MarkupSafe") && n.contains("armv7l")
            })
            .unwrap(),
    )
    .into_iter()
    .find(|(n, _)| n.ends_with(".so"))
    .unwrap()
    .1;
    let fixture = |file: &str, so: &[u8]| make_wheel(fx.path(), file, &[("fx/m.so", so)]);
    let plain_ok = fixture("plain-1-cp311-cp311-manylinux_2_17_x86_64.whl", &plain_so);
    let ffi_linux = fixture("ffi-1-cp311-cp311-linux_x86_64.whl", &ffi_so);
    let ffi_lie = fixture("ffilie-1-cp311-cp311-manylinux2014_x86_64.whl", &ffi_so);
    let z_linux = fixture("zlib-1-cp311-cp311-linux_x86_64.whl", &z_so);
    let new_linux = fixture("newer-1-cp311-cp311-linux_x86_64.whl", &new_so);
    let new_lie = fixture("newerlie-1-cp311-cp311-manylinux_2_17_x86_64.whl", &new_so);
    let v7_lie = fixture("armv7code-1-cp311-cp311-linux_armv6l.whl", &armv7_so);
    let cxx_linux = fixture("cxx-1-cp311-cp311-linux_x86_64.whl", &cxx_so);
    let cxx_lie = fixture("cxxlie-1-cp311-cp311-manylinux2014_x86_64.whl", &cxx_so);
    wheels.extend([plain_ok, ffi_linux.clone(), z_linux, new_linux, cxx_linux]);

    let (ours, ok) = wheel_tag(None, &wheels);
    assert!(
        ok,
        "no lie among the real wheels and positive fixtures: {ours:#?}"
    );
    let verdicts = analyze(&aw, &wheels);
    let mut table = String::new();
    for o in &ours {
        let name = o["wheel"].as_str().unwrap();
        let theirs = &verdicts.policies[name];
        let (a, b) = (
            ours_as_auditwheel(o, &verdicts.minors),
            auditwheel_normalised(theirs),
        );
        table.push_str(&format!(
            "| {name} | {} | {theirs} |\n",
            o["tag"].as_str().unwrap()
        ));
        if name.starts_with("zlib-") {
            // The one difference by design (module comment).
            assert_eq!(o["tag"], "linux_x86_64", "{o}");
            assert!(theirs.starts_with("manylinux_"), "{theirs}");
            continue;
        }
        assert_eq!(a, b, "{name}: ours {} vs auditwheel {theirs}", o["tag"]);
    }
    eprintln!("| wheel | ours | auditwheel |\n|---|---|---|\n{table}");
    let tag_of = |name: &str| {
        ours.iter()
            .find(|o| o["wheel"].as_str().unwrap().starts_with(name))
            .unwrap()["tag"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        tag_of("ffi-"),
        "linux_x86_64",
        "libffi is outside the policy"
    );
    assert!(
        verdicts.policies[&file(&ffi_linux)].starts_with("linux_"),
        "auditwheel agrees"
    );
    assert_eq!(
        tag_of("cxx-"),
        "manylinux_2_24_x86_64",
        "libstdc++ raises the glibc"
    );
    let newer_tag = tag_of("newer-");
    assert!(
        newer_tag.starts_with("manylinux_2_3") && newer_tag != "manylinux_2_17_x86_64",
        "{newer_tag}"
    );

    let x64 = wheels
        .iter()
        .find(|w| file(w).starts_with("MarkupSafe") && file(w).contains("-linux_x86_64"))
        .unwrap();
    // The lies: each refused by name, with the reason.
    for (wheel, platform, why) in [
        (&ffi_lie, None, "libffi.so.8"),
        (&new_lie, None, "newer than the platform's floor 2.17"),
        (&v7_lie, None, "newer than ARMv6"),
        (&cxx_lie, None, "GLIBCXX_3.4.21"),
        (x64, Some("linux-arm64"), "is for ELF machine"),
    ] {
        let (v, ok) = wheel_tag(platform, std::slice::from_ref(wheel));
        assert!(!ok, "{} must be refused", wheel.display());
        let lie = v[0]["lie"].as_str().unwrap_or_default();
        assert!(lie.contains(why), "{}: {lie}", wheel.display());
        assert!(v[0]["tag"].is_null());
    }
    // auditwheel too sees ARMv7 code (its armv7l policy) and the newer glibc.
    let lies = analyze(&aw, &[v7_lie.clone(), new_lie.clone()]);
    assert!(lies.policies[&file(&v7_lie)].ends_with("_armv7l"));
    assert_ne!(lies.policies[&file(&new_lie)], "manylinux_2_17_x86_64");
}

fn file(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}
