//! `wheel-build --test`: every wanted wheel is installed into a Python of its target
//! architecture and each of its extension modules imported by its dotted name.
//!
//! The Python is a *runner*: a toolchain image of Debian's own userland for that
//! architecture with its `python3` (run under QEMU's user emulation where it is not the
//! host's), named for each (platform, Python) in `wheels/platforms.toml`. One container
//! runs per group of wheels with the same platform and Python, with every wheel of that
//! group the run produced (so `cryptography` finds its `cffi`) mounted read-only, no
//! network, and `/tmp` as the only writable place.
//!
//! A wheel built from source that has no extension module fails here: MarkupSafe, say,
//! quietly falls back to pure Python when its C code does not compile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::run::{Context, HOST_PLATFORM, JobKind, JobResult, Plan};
use super::{Catalogue, How};
use crate::docker::{ContainerSpec, Engine, Mount};

/// The line of the runner's output that carries its findings.
const MARKER: &str = "DOCKERBUILD-WHEEL-TEST ";

/// Unpacks the mounted wheels into a site directory, imports what it is given, and
/// prints one JSON line. A module must come from that directory, not from the runner's
/// own Python.
const SCRIPT: &str = r#"
import glob, importlib, json, os, sys, zipfile
want = json.loads(sys.argv[1])
site = "/tmp/site"
for w in sorted(glob.glob("/wheels/*.whl")):
    zipfile.ZipFile(w).extractall(site)
sys.path.insert(0, site)
out = {"python": "%d.%d" % sys.version_info[:2], "machine": os.uname().machine, "wheels": {}}
for wheel, modules in want.items():
    r = out["wheels"][wheel] = {"imported": [], "error": None}
    for m in modules:
        try:
            f = getattr(importlib.import_module(m), "__file__", None) or ""
            if not f.startswith(site + "/"):
                raise ImportError("found at %r, not in the wheel" % f)
            r["imported"].append(m)
        except BaseException as e:
            r["error"] = "import %s: %s: %s" % (m, type(e).__name__, e)
            break
print(MARKER + json.dumps(out), flush=True)
"#;

/// A runner: the toolchain whose Python imports the wheels of `platforms` built for
/// `python` (an entry `[[runner]]` of `wheels/platforms.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runner {
    pub toolchain: String,
    /// The CPython version of the runner's `python3` (`3.11`); checked when it runs.
    pub python: String,
    pub platforms: Vec<String>,
}

/// What testing one wheel found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tested {
    /// The runner toolchain it was imported on; `None` when there is none for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// The modules imported, by dotted name, in order.
    pub imported: Vec<String>,
    /// Why it failed; `None` when every module imported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Tested {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn failed(runner: Option<&str>, error: impl Into<String>) -> Tested {
        Tested {
            runner: runner.map(str::to_owned),
            imported: Vec::new(),
            error: Some(error.into()),
        }
    }
}

/// The wheels one runner container tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub runner: String,
    pub platform: String,
    pub python: String,
    /// Indexes (into the results) of the wheels to import.
    pub targets: Vec<usize>,
    /// Every wheel file installed for them: theirs and what the run made for the same
    /// platform and Python, and the universal wheels.
    pub site: Vec<PathBuf>,
}

/// Sorts the wanted wheels that were built or found into groups by runner. Wheels of
/// download-only platforms (mac, windows) are left out; a Linux wheel without a runner
/// gets its reason instead of a group. Universal wheels are tested on the first runner of
/// the host platform.
pub fn groups(
    catalogue: &Catalogue,
    plan: &Plan,
    results: &[JobResult],
) -> (Vec<Group>, Vec<(usize, Tested)>) {
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    let mut untestable = Vec::new();
    let universal = |r: &JobResult| r.python.is_none();
    for (i, r) in results.iter().enumerate() {
        if !r.wanted || !r.status.ok() || r.wheels.is_empty() {
            continue;
        }
        let JobKind::Wheel(triple) = &plan.jobs[i].kind else {
            continue;
        };
        let platform = if universal(r) {
            HOST_PLATFORM
        } else {
            triple.platform.as_str()
        };
        if !catalogue.platform(platform).is_some_and(|p| p.buildable) {
            continue;
        }
        let runner = catalogue
            .runners
            .iter()
            .find(|x| {
                x.platforms.iter().any(|p| p == platform)
                    && (universal(r) || r.python.as_deref() == Some(x.python.as_str()))
            })
            .cloned();
        let Some(runner) = runner else {
            let python = r.python.as_deref().unwrap_or("any");
            untestable.push((
                i,
                Tested::failed(
                    None,
                    format!(
                        "no runner for {platform} and Python {python}: add a [[runner]] to wheels/platforms.toml"
                    ),
                ),
            ));
            continue;
        };
        groups
            .entry((
                runner.toolchain.clone(),
                platform.to_owned(),
                runner.python.clone(),
            ))
            .or_insert_with(|| Group {
                runner: runner.toolchain.clone(),
                platform: platform.to_owned(),
                python: runner.python.clone(),
                targets: Vec::new(),
                site: Vec::new(),
            })
            .targets
            .push(i);
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    for g in &mut groups {
        let mut by_name: BTreeMap<std::ffi::OsString, PathBuf> = BTreeMap::new();
        for (i, r) in results.iter().enumerate() {
            let same = r.platform.as_deref() == Some(g.platform.as_str())
                && r.python.as_deref() == Some(g.python.as_str());
            let JobKind::Wheel(_) = &plan.jobs[i].kind else {
                continue;
            };
            if r.status.ok() && (same || universal(r) || g.targets.contains(&i)) {
                for w in &r.wheels {
                    if let Some(name) = w.file_name() {
                        by_name.entry(name.to_owned()).or_insert_with(|| w.clone());
                    }
                }
            }
        }
        g.site = by_name.into_values().collect();
    }
    (groups, untestable)
}

/// The modules a wheel's test imports: its extension modules (but those of its own test
/// suite, in a `tests` or `test` package); for a wheel without any, its top-level
/// packages and modules. A wheel built from source (`source` specs) must
/// have an extension module, or this says why not.
pub fn modules(wheel: &Path, from_source: bool) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(wheel).map_err(|e| format!("open {}: {e}", wheel.display()))?;
    let zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("read {}: {e}", wheel.display()))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read {}: {e}", wheel.display()))?;
    let mut extensions = Vec::new();
    let mut top = Vec::new();
    for name in names.iter().map(String::as_str) {
        let first = name.split('/').next().unwrap_or_default();
        if first.ends_with(".dist-info") || first.ends_with(".data") {
            continue;
        }
        if let Some(dotted) = extension_module(name) {
            // A package's own test suite (`greenlet.tests._test_extension`) imports its
            // test dependencies (objgraph, psutil), which a wheel does not bring.
            if !dotted.split('.').any(|p| p == "tests" || p == "test") {
                extensions.push(dotted);
            }
        } else if let Some(stem) = name.strip_suffix(".py").filter(|n| !n.contains('/')) {
            top.push(stem.to_owned());
        } else if name.split('/').count() == 2 && name.ends_with("/__init__.py") {
            top.push(first.to_owned());
        }
    }
    extensions.sort();
    extensions.dedup();
    top.sort();
    top.dedup();
    if !extensions.is_empty() {
        return Ok(extensions);
    }
    if from_source {
        return Err(
            "no extension module in a wheel built from source: the build fell back to pure \
             Python (look for a compiler error in its log)"
                .to_owned(),
        );
    }
    if top.is_empty() {
        return Err("no module to import".to_owned());
    }
    Ok(top)
}

/// `pkg/sub/_ext.cpython-311-aarch64-linux-gnu.so` -> `pkg.sub._ext`; `None` for what is
/// not an extension module (a vendored library in `pkg.libs/` is not one).
fn extension_module(member: &str) -> Option<String> {
    let (dir, file) = match member.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, member),
    };
    if !file.ends_with(".so") || dir.is_some_and(|d| d.split('/').any(|c| c.ends_with(".libs"))) {
        return None;
    }
    let stem = file.split('.').next().filter(|s| !s.is_empty())?;
    if stem.starts_with("lib") && file.contains(".so.") {
        return None;
    }
    Some(match dir {
        Some(d) => format!("{}.{stem}", d.replace('/', ".")),
        None => stem.to_owned(),
    })
}

/// Runs one group's container and returns what it found for each target.
pub fn run_group(
    cx: &Context,
    engine: &Engine,
    plan: &Plan,
    results: &[JobResult],
    group: &Group,
) -> Vec<(usize, Tested)> {
    let fail_all = |e: String| {
        group
            .targets
            .iter()
            .map(|&i| (i, Tested::failed(Some(&group.runner), e.clone())))
            .collect()
    };
    // What to import, per wheel file name; a wheel without anything importable fails
    // before any container starts.
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut named: Vec<(usize, String)> = Vec::new();
    for &i in &group.targets {
        let from_source = match &plan.jobs[i].kind {
            JobKind::Wheel(t) => {
                t.how == How::Build
                    && cx
                        .catalogue
                        .spec(&t.spec)
                        .is_ok_and(|s| !s.kind.is_universal())
            }
            _ => false,
        };
        for w in &results[i].wheels {
            let name = w
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match modules(w, from_source) {
                Ok(m) => {
                    want.insert(name.clone(), m);
                    named.push((i, name));
                }
                Err(e) => out.push((
                    i,
                    Tested::failed(Some(&group.runner), format!("{name}: {e}")),
                )),
            }
        }
    }
    if want.is_empty() {
        return out;
    }
    let image = match crate::image::generate(
        cx.store,
        cx.fetcher,
        cx.project,
        cx.lock,
        &group.runner,
        cx.caches,
        cx.progress,
    ) {
        Ok(img) => img,
        Err(e) => return fail_all(format!("runner {}: {e}", group.runner)),
    };
    if let Err(e) = crate::image::ensure_loaded(engine, &image) {
        return fail_all(format!("runner {}: {e}", group.runner));
    }
    let arg = serde_json::to_string(&want).expect("strings serialize");
    let mut spec = ContainerSpec::new(
        image.id.clone(),
        [
            "python3".to_owned(),
            "-c".to_owned(),
            SCRIPT.replace("MARKER", &format!("{MARKER:?}")),
            arg,
        ],
    );
    for w in &group.site {
        let name = w.file_name().unwrap_or_default().to_string_lossy();
        spec.mounts
            .push(Mount::read_only(w.clone(), format!("/wheels/{name}")));
    }
    spec.env.push(("HOME".into(), "/tmp".into()));
    spec.env
        .push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    spec.tmpfs.push("/tmp:rw,exec".into());
    spec.kind = "test".into();
    let mut stdout = Vec::new();
    let run = engine.run(&spec, &mut |b| stdout.extend_from_slice(b));
    let text = String::from_utf8_lossy(&stdout);
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .and_then(|j| serde_json::from_str::<Found>(j).ok());
    let found = match (run, found) {
        (Ok(_), Some(f)) => f,
        (Ok(o), None) => {
            return fail_all(format!(
                "the runner {} printed no result (exit status {}): {}",
                group.runner,
                o.exit_code,
                crate::toolchain::tail(&stdout, 20)
            ));
        }
        (Err(e), _) => return fail_all(format!("runner {}: {e}", group.runner)),
    };
    if found.python != group.python {
        return fail_all(format!(
            "the runner {} has Python {}, not {} (fix its [[runner]] entry)",
            group.runner, found.python, group.python
        ));
    }
    for (i, name) in named {
        let t = match found.wheels.get(&name) {
            Some(r) => Tested {
                runner: Some(group.runner.clone()),
                imported: r.imported.clone(),
                error: r.error.as_ref().map(|e| format!("{name}: {e}")),
            },
            None => Tested::failed(
                Some(&group.runner),
                format!("{name}: not tested by the runner"),
            ),
        };
        // A result with several wheels keeps the first failure.
        match out.iter_mut().find(|(j, _)| *j == i) {
            Some((_, prev)) if prev.ok() => {
                prev.imported.extend(t.imported);
                prev.error = t.error;
            }
            Some(_) => {}
            None => out.push((i, t)),
        }
    }
    out
}

#[derive(Deserialize)]
struct Found {
    python: String,
    wheels: BTreeMap<String, FoundWheel>,
}

#[derive(Deserialize)]
struct FoundWheel {
    imported: Vec<String>,
    error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_modules_are_named_by_their_dotted_path() {
        assert_eq!(
            extension_module("markupsafe/_speedups.cpython-311-aarch64-linux-gnu.so").as_deref(),
            Some("markupsafe._speedups")
        );
        assert_eq!(
            extension_module("cryptography/hazmat/bindings/_openssl.abi3.so").as_deref(),
            Some("cryptography.hazmat.bindings._openssl")
        );
        assert_eq!(
            extension_module("_cffi_backend.cpython-313-x86_64-linux-gnu.so").as_deref(),
            Some("_cffi_backend")
        );
        assert_eq!(extension_module("psutil.libs/libfoo.so.1"), None);
        assert_eq!(extension_module("markupsafe/__init__.py"), None);
    }

    fn wheel(dir: &Path, members: &[&str]) -> PathBuf {
        let path = dir.join("w-1-cp311-cp311-linux_x86_64.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for m in members {
            z.start_file(*m, zip::write::SimpleFileOptions::default())
                .unwrap();
        }
        z.finish().unwrap();
        path
    }

    #[test]
    fn a_source_wheel_without_an_extension_is_refused_and_a_pure_one_imports_its_packages() {
        let dir = tempfile::tempdir().unwrap();
        let pure = wheel(
            dir.path(),
            &[
                "six.py",
                "pkg/__init__.py",
                "pkg/sub/__init__.py",
                "w-1.dist-info/METADATA",
            ],
        );
        assert_eq!(modules(&pure, false).unwrap(), ["pkg", "six"]);
        let err = modules(&pure, true).unwrap_err();
        assert!(err.contains("fell back to pure Python"), "{err}");
        let ext = wheel(
            dir.path(),
            &[
                "pkg/__init__.py",
                "pkg/_c.cpython-311-x86_64-linux-gnu.so",
                "pkg/tests/_test_extension.cpython-311-x86_64-linux-gnu.so",
            ],
        );
        assert_eq!(modules(&ext, true).unwrap(), ["pkg._c"]);
    }
}
