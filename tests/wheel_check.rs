//! Checking wheels, on a temporary project with tiny C-extension sdists made here:
//! - reproducible: `wheel-build --check` on one reproducible sdist and one whose
//!   `setup.py` writes random bytes into a module; one C-extension wheel built in two
//!   empty stores (their toolchain image and Python substituted from a `file://` cache)
//!   is byte-identical;
//! - working: `wheel-build --test` imports each extension on the platform's runner, and
//!   fails a wheel whose build quietly fell back to pure Python.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::{ready, repo, shared_store};
use serde_json::Value;

const C_SOURCE: &str = r#"#include <Python.h>
#include "stamp.h"
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyObject *stamp(PyObject *self, PyObject *args) { return PyUnicode_FromString(STAMP); }
static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, NULL}, {"stamp", stamp, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_c", NULL, -1, methods};
PyMODINIT_FUNC PyInit__c(void) { return PyModule_Create(&module); }
"#;

/// An sdist `NAME-1.0.tar.gz` with one C extension `NAME._c`. `noisy` makes its setup.py
/// write random bytes into `stamp.h` (a string in the extension) and `NAME/stamp.py`;
/// `fallback` makes the extension optional and its C code fail to compile, so the wheel
/// quietly has none. Fixed times and owners: the same bytes each run, so the same pin
/// and build key.
fn sdist(dir: &Path, name: &str) -> PathBuf {
    let noisy = name == "noisy";
    let fallback = name == "fallback";
    let stamp = if noisy {
        "import os\nSTAMP = os.urandom(8).hex()\n\
         with open(os.path.join(NAME, 'stamp.py'), 'w') as f:\n    f.write('STAMP = %r\\n' % STAMP)\n\
         with open('stamp.h', 'w') as f:\n    f.write('#define STAMP \"%s\"\\n' % STAMP)\n"
    } else {
        ""
    };
    let setup = format!(
        "from setuptools import setup, Extension\nNAME = {name:?}\n{stamp}\
         setup(name=NAME, version='1.0', packages=[NAME],\n      \
         ext_modules=[Extension(NAME + '._c', ['c.c'], optional={})])\n",
        if fallback { "True" } else { "False" }
    );
    let c = if fallback {
        format!("#error this extension does not compile\n{C_SOURCE}")
    } else {
        C_SOURCE.to_owned()
    };
    let files = [
        ("setup.py", setup),
        ("c.c", c),
        ("stamp.h", "#define STAMP \"0000000000000000\"\n".to_owned()),
        (&format!("{name}/__init__.py") as &str, String::new()),
        (
            &format!("{name}/stamp.py") as &str,
            "STAMP = ''\n".to_owned(),
        ),
    ];
    let path = dir.join(format!("{name}-1.0.tar.gz"));
    let gz = flate2::GzBuilder::new().mtime(0).write(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    let mut t = tar::Builder::new(gz);
    for (f, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        t.append_data(&mut h, format!("{name}-1.0/{f}"), text.as_bytes())
            .unwrap();
    }
    t.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

/// A project with the repository's toolchains, recipes, lockfile and build script, and
/// only the `quiet`, `noisy` and `fallback` wheel specs (CPython 3.11 on linux-x64),
/// locked. `fallback` declares no `extensions`, so its build does not notice it has none.
fn project(dir: &Path) -> PathBuf {
    let root = dir.join("project");
    for d in ["toolchains", "recipes", "lockfiles"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        for f in std::fs::read_dir(repo().join(d)).unwrap().flatten() {
            std::fs::copy(f.path(), root.join(d).join(f.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("wheels")).unwrap();
    for f in ["build-wheel.sh", "platforms.toml"] {
        std::fs::copy(repo().join("wheels").join(f), root.join("wheels").join(f)).unwrap();
    }
    let mut sources = std::fs::read_to_string(repo().join("sources.toml")).unwrap();
    for name in ["quiet", "noisy", "fallback"] {
        let s = sdist(dir, name);
        let extensions = if name == "fallback" {
            String::new()
        } else {
            format!("extensions = [\"{name}._c\"]\n")
        };
        sources.push_str(&format!(
            "\n[[source]]\nname = \"{name}\"\nversion = \"1.0\"\nurls = [\"file://{}\"]\n",
            s.display()
        ));
        std::fs::write(
            root.join(format!("wheels/{name}.toml")),
            format!(
                "name = \"{name}\"\nversion = \"1.0\"\nkind = \"source\"\nsdist = \"{name}\"\n\
                 python = [\"3.11\"]\nplatforms = [\"linux-x64\"]\n\
                 host = [\"source:setuptools\", \"source:wheel\"]\n{extensions}"
            ),
        )
        .unwrap();
    }
    std::fs::write(root.join("sources.toml"), sources).unwrap();
    let out = cmd(&shared_store(), &root).arg("lock").output().unwrap();
    common::assert_success(&out, &"lock the fixtures");
    root
}

fn cmd(store: &Path, project: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dockerbuild"));
    c.arg("--project")
        .arg(project)
        .arg("--store")
        .arg(store)
        .arg("-q")
        .env("DOCKERBUILD_CONFIG", store.with_extension("config.toml"))
        .env("XDG_CACHE_HOME", store.with_extension("xdg-cache"))
        .env_remove("DOCKERBUILD_CACHES");
    c
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wheel-build JSON: {e}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn wheel_of<'a>(report: &'a Value, spec: &str) -> &'a Value {
    report["wheels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["spec"] == spec)
        .unwrap_or_else(|| panic!("no {spec} in {report}"))
}

/// `--check` passes the reproducible wheel, and for the other names the first differing
/// member (the extension, which sorts before the stamped module) and its section (the
/// string's `.rodata`, not the build ID derived from it) and exits 1; the store's entry
/// stays as it was.
#[test]
fn check_names_the_first_difference_and_leaves_the_store_alone() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = project(dir.path());
    let args = [
        "-w",
        "quiet",
        "-w",
        "noisy",
        "-p",
        "linux-x64",
        "--python",
        "3.11",
    ];
    let first = cmd(&shared_store(), &root)
        .args(["--locked", "--json", "wheel-build", "-j", "2"])
        .args(args)
        .output()
        .unwrap();
    common::assert_success(&first, &"wheel-build quiet noisy");
    let first = report(&first);
    let stored = PathBuf::from(wheel_of(&first, "noisy")["wheels"][0].as_str().unwrap());
    let before = std::fs::read(&stored).unwrap();

    let out = cmd(&shared_store(), &root)
        .args(["--locked", "--json", "wheel-build", "--check", "-j", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a difference fails --check");
    let v = report(&out);
    assert_eq!(wheel_of(&v, "quiet")["check"]["reproducible"], true, "{v}");
    let noisy = &wheel_of(&v, "noisy")["check"];
    assert_eq!(noisy["reproducible"], false, "{v}");
    let diff = &noisy["first_difference"];
    assert!(
        diff["file"]
            .as_str()
            .unwrap()
            .starts_with("noisy-1.0-cp311-cp311-"),
        "{diff}"
    );
    assert_eq!(
        diff["member"], "noisy/_c.cpython-311-x86_64-linux-gnu.so",
        "{diff}"
    );
    assert_eq!(diff["section"], ".rodata", "{diff}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not reproducible: noisy cp311 linux-x64")
            && stderr.contains("member noisy/_c.cpython-311-x86_64-linux-gnu.so, section .rodata"),
        "{stderr}"
    );
    assert_eq!(
        wheel_of(&v, "noisy")["wheels"][0],
        wheel_of(&first, "noisy")["wheels"][0],
        "the same entry"
    );
    assert!(
        std::fs::read(&stored).unwrap() == before,
        "the entry's bytes are unchanged"
    );
}

/// Two clean builds of one C-extension wheel, each in its own empty store, give the same
/// bytes, with no path of the host in them. The stores get the toolchain image and Python from a `file://` cache that the
/// shared store fills; the wheel itself is built in each (`--rebuild`).
#[test]
fn a_c_extension_wheel_from_two_empty_stores_is_byte_identical() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = project(dir.path());
    let cache = format!("file://{}", dir.path().join("cache").display());
    let args = ["-w", "quiet", "-p", "linux-x64", "--python", "3.11"];
    let build = |store: &Path, upload: bool| {
        let mut c = cmd(store, &root);
        c.args(["--locked", "--json", "--cache", &cache]);
        if upload {
            c.arg("--upload");
        }
        let out = c
            .args(["wheel-build", "--rebuild"])
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out, &format!("wheel-build in {}", store.display()));
        let v = report(&out);
        let w = wheel_of(&v, "quiet");
        assert_eq!(w["status"], "built", "{v}");
        std::fs::read(w["wheels"][0].as_str().unwrap()).unwrap()
    };
    let shared = build(&shared_store(), true);
    let a = build(&dir.path().join("a"), false);
    // Each store holds a toolchain image and a Python: one at a time on a CI disk.
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let b = build(&dir.path().join("b"), false);
    assert!(a == b, "two empty stores built different bytes");
    assert!(a == shared, "and the same as the shared store's");
    // No path of the machine that built it reaches its members (extension included).
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&a)).unwrap();
    for i in 0..z.len() {
        let mut m = z.by_index(i).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut m, &mut data).unwrap();
        let text = String::from_utf8_lossy(&data);
        for path in [
            dir.path().display().to_string(),
            shared_store().display().to_string(),
            "dockerbuild-build-".to_owned(),
        ] {
            assert!(!text.contains(&path), "{} holds {path}", m.name().unwrap());
        }
    }
}

/// `--test` installs each wheel on its runner (Debian bookworm's amd64 Python 3.11 for
/// linux-x64) and imports its extension by dotted name; a wheel whose optional extension
/// did not compile builds fine but fails its test, by name, and the exit status is 1.
#[test]
fn test_imports_extensions_on_the_runner_and_refuses_a_pure_fallback() {
    if !ready() {
        return;
    }
    common::images::image("run-x64");
    let dir = tempfile::tempdir().unwrap();
    let root = project(dir.path());
    let out = cmd(&shared_store(), &root)
        .args(["--locked", "--json", "wheel-build", "--test"])
        .args([
            "-w",
            "quiet",
            "-w",
            "fallback",
            "-p",
            "linux-x64",
            "--python",
            "3.11",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = report(&out);
    let quiet = wheel_of(&v, "quiet");
    assert!(
        quiet["status"] == "built" || quiet["status"] == "cached",
        "{quiet}"
    );
    assert_eq!(quiet["test"]["runner"], "run-x64", "{quiet}");
    assert_eq!(
        quiet["test"]["imported"],
        serde_json::json!(["quiet._c"]),
        "{quiet}"
    );
    assert!(quiet["test"].get("error").is_none(), "{quiet}");
    let fallback = wheel_of(&v, "fallback");
    assert!(
        fallback["status"] == "built" || fallback["status"] == "cached",
        "the build itself succeeds: {fallback}"
    );
    let error = fallback["test"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fallback-1.0-cp311-cp311-linux_x86_64.whl")
            && error.contains("fell back to pure Python"),
        "{fallback}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed on their runner:")
            && stderr.contains("fallback cp311 linux-x64 on run-x64"),
        "{stderr}"
    );
}
