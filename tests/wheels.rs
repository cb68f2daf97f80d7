//! Wheels: the spec format (README examples parsed with the real types), the matrix and
//! its catalogue, and, with Docker, real cross-compiled wheels imported by Debian's own
//! Python of the target architecture under QEMU (the `run-arm64` and `run-armhf` runner
//! images), plus a second `wheel-build` that starts no container and needs no network.

mod common;

use std::path::Path;
use std::process::Command;

use common::images::{dockerbuild, ready, repo, shared_store};
use common::wheels::{import_on, machine, members, wheel_build, wheel_named};
use dockerbuild::project::Project;
use dockerbuild::recipe;
use dockerbuild::wheel::run::{JobKind, Plan};
use dockerbuild::wheel::{Catalogue, Filter, How, WheelSpec};

fn catalogue() -> Catalogue {
    Catalogue::load(&Project::open(&repo()).unwrap()).unwrap()
}

#[test]
fn the_readme_examples_parse_with_the_real_types() {
    let blocks = common::toml_blocks(&repo().join("wheels/README.md"));
    assert!(blocks.len() >= 3, "README has its examples");
    for b in blocks {
        let id = b
            .lines()
            .find_map(|l| l.strip_prefix("# wheels/"))
            .and_then(|f| f.strip_suffix(".toml"))
            .expect("each example names its file");
        WheelSpec::parse(&b, id, Path::new(id)).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
}

#[test]
fn the_catalogue_is_up_to_date_and_a_stale_one_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_dockerbuild"))
        .args(["--project"])
        .arg(repo())
        .args(["wheel-dump", "--check"])
        .output()
        .unwrap();
    common::assert_success(&out, &"wheel-dump --check");

    // A copy of the project whose catalogue is stale.
    let dir = tempfile::tempdir().unwrap();
    for d in ["wheels", "toolchains"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        for f in std::fs::read_dir(repo().join(d)).unwrap().flatten() {
            std::fs::copy(f.path(), dir.path().join(d).join(f.file_name())).unwrap();
        }
    }
    std::fs::copy(repo().join("sources.toml"), dir.path().join("sources.toml")).unwrap();
    let md = dir.path().join("wheels/wheels.md");
    std::fs::write(&md, "# old\n").unwrap();
    let dump = |check: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dockerbuild"));
        c.arg("--project").arg(dir.path()).arg("wheel-dump");
        if check {
            c.arg("--check");
        }
        c.output().unwrap()
    };
    let out = dump(true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is stale"));
    assert_eq!(
        std::fs::read_to_string(&md).unwrap(),
        "# old\n",
        "--check writes nothing"
    );
    common::assert_success(&dump(false), &"wheel-dump");
    common::assert_success(&dump(true), &"wheel-dump --check after writing");
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("| `cryptography` | cryptography | 3.3.2 | 3.11+ (abi3)"),
        "{text}"
    );
}

#[test]
fn the_matrix_has_one_abi3_wheel_per_platform_and_one_universal_wheel() {
    let c = catalogue();
    let all = c.triples(&Filter::default()).unwrap();
    let of = |spec: &str| all.iter().filter(|t| t.spec == spec).collect::<Vec<_>>();
    assert_eq!(of("six").len(), 1, "universal: one wheel");
    assert_eq!(of("six")[0].platform, "any");
    let crypto = of("cryptography");
    let arm64: Vec<_> = crypto
        .iter()
        .filter(|t| t.platform == "linux-arm64")
        .collect();
    assert_eq!(arm64.len(), 1, "abi3: one wheel per platform");
    assert!(
        crypto
            .iter()
            .any(|t| t.platform == "windows-x64" && t.how == How::Prebuilt)
    );
    let markupsafe = of("markupsafe");
    assert_eq!(
        markupsafe
            .iter()
            .filter(|t| t.platform == "linux-armv7")
            .count(),
        2,
        "3.11 and 3.13"
    );
    assert!(
        markupsafe
            .iter()
            .any(|t| t.platform == "mac-arm64" && t.how == How::Prebuilt)
    );
    // Runner images are not wheel platforms.
    assert!(all.iter().all(|t| !t.platform.starts_with("run-")));

    // wheel-json prints the same triples.
    let out = Command::new(env!("CARGO_BIN_EXE_dockerbuild"))
        .arg("--project")
        .arg(repo())
        .args(["wheel-json", "-p", "linux-arm64", "--python", "3.11"])
        .output()
        .unwrap();
    common::assert_success(&out, &"wheel-json");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = v
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["spec"].as_str().unwrap(),
                t["platform"].as_str().unwrap()
            )
        })
        .collect();
    assert!(names.contains(&"cffi linux-arm64".to_owned()), "{names:?}");
    assert!(names.contains(&"six any".to_owned()), "{names:?}");
    assert!(
        v.iter()
            .all(|t| t["python"].is_null() || t["python"] == "3.11")
    );
}

#[test]
fn cryptography_needs_host_cffi_openssl_and_both_pythons_first() {
    let c = catalogue();
    let recipes = recipe::load_all(&repo().join("recipes")).unwrap();
    let triples = c
        .triples(&Filter {
            wheels: vec!["cryptography".into()],
            platforms: vec!["linux-arm64".into()],
            pythons: vec![],
        })
        .unwrap();
    assert_eq!(triples.len(), 1);
    let plan = Plan::new(&c, &recipes, &triples).unwrap();
    let labels: Vec<&str> = plan.jobs.iter().map(|j| j.label.as_str()).collect();
    for want in [
        "python-3.11",
        "python-3.11-target-linux-arm64",
        "openssl-1.1.1-linux-arm64",
        "cffi cp311 linux-x64",
        "libffi-linux-x64",
        "cryptography cp311 linux-arm64",
    ] {
        assert!(labels.contains(&want), "{want} in {labels:?}");
    }
    // Dependencies come first, and each is planned once.
    for (i, j) in plan.jobs.iter().enumerate() {
        assert!(j.deps.iter().all(|&d| d < i), "{} after its deps", j.label);
    }
    let pythons = plan
        .jobs
        .iter()
        .filter(|j| matches!(&j.kind, JobKind::Recipe { name, .. } if name == "python-3.11"))
        .count();
    assert_eq!(pythons, 1);
    let wanted: Vec<_> = plan.jobs.iter().filter(|j| j.wanted).collect();
    assert_eq!(wanted.len(), 1);
}

#[test]
fn a_spec_naming_an_unknown_source_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("wheels")).unwrap();
    std::fs::write(dir.path().join("sources.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("wheels/foo.toml"),
        "name = \"foo\"\nversion = \"1\"\nkind = \"universal\"\nwheel = \"foo-wheel\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dockerbuild"))
        .arg("--project")
        .arg(dir.path())
        .arg("wheel-json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("foo") && err.contains("foo-wheel") && err.contains("sources.toml"),
        "{err}"
    );
}

// ---- Real builds (Docker) ----

/// The CI proof of wheel-build: MarkupSafe and cffi (libffi from source, linked in) for
/// arm64 and ARMv7, imported by Debian's Python 3.11 of each architecture under QEMU
/// (by `wheel-build --test`, each extension by its dotted name, and by a script that uses
/// them), each extension compiled for the target; then the same `wheel-build` again
/// starts no container (Docker events by label) and, under `unshare -n`, needs no network.
#[test]
fn markupsafe_and_cffi_wheels_import_on_arm64_and_armv7() {
    if !ready() {
        return;
    }
    let args = [
        "-w",
        "markupsafe",
        "-w",
        "cffi",
        "-w",
        "pycparser",
        "-p",
        "linux-arm64",
        "-p",
        "linux-armv7",
        "--python",
        "3.11",
    ];
    let dir = tempfile::tempdir().unwrap();
    let wheels = wheel_build(&[&["--test"], &args[..]].concat(), dir.path());
    assert_eq!(wheels.len(), 5, "{wheels:#?}");
    for w in &wheels {
        let (runner, imported) = match (w["spec"].as_str(), w["platform"].as_str()) {
            (Some("markupsafe"), Some("linux-arm64")) => ("run-arm64", "markupsafe._speedups"),
            (Some("markupsafe"), _) => ("run-armhf", "markupsafe._speedups"),
            (Some("cffi"), Some("linux-arm64")) => ("run-arm64", "_cffi_backend"),
            (Some("cffi"), _) => ("run-armhf", "_cffi_backend"),
            _ => ("run-x64", "pycparser"), // universal: on the host platform's runner
        };
        assert_eq!(w["test"]["runner"], runner, "{w}");
        assert_eq!(w["test"]["imported"], serde_json::json!([imported]), "{w}");
        assert!(w["test"].get("error").is_none(), "{w}");
    }
    for (platform, runner, tag, elf_machine) in [
        ("linux-arm64", "run-arm64", "linux_aarch64", 183),
        ("linux-armv7", "run-armhf", "linux_armv7l", 40),
    ] {
        let here = tempfile::tempdir().unwrap();
        for prefix in ["MarkupSafe-2.1.5-cp311-cp311-", "cffi-1.17.1-cp311-cp311-"] {
            let w = wheel_named(dir.path(), &format!("{prefix}{tag}"));
            let so = members(&w, ".so");
            assert_eq!(so.len(), 1, "{}: one extension", w.display());
            assert_eq!(
                machine(&so[0].1),
                elf_machine,
                "{} is for {platform}",
                so[0].0
            );
            assert!(
                !String::from_utf8_lossy(&so[0].1).contains("libffi.so"),
                "{}: libffi is linked in, not needed at run time",
                so[0].0
            );
            std::fs::copy(&w, here.path().join(w.file_name().unwrap())).unwrap();
        }
        let pycparser = wheel_named(dir.path(), "pycparser-2.22-py3-none-any");
        std::fs::copy(&pycparser, here.path().join(pycparser.file_name().unwrap())).unwrap();
        let out = import_on(
            runner,
            here.path(),
            "import platform, markupsafe, markupsafe._speedups as s, _cffi_backend, cffi\n\
             ffi = cffi.FFI(); ffi.cdef('int abs(int);'); C = ffi.dlopen(None)\n\
             print(platform.machine(), s.__file__.rsplit('/', 1)[1], _cffi_backend.__file__.rsplit('/', 1)[1])\n\
             print(markupsafe.escape('<a>'), C.abs(-7))",
        );
        let triple = if platform == "linux-arm64" {
            "aarch64-linux-gnu"
        } else {
            "arm-linux-gnueabihf"
        };
        assert!(
            out.contains(&format!(
                "_speedups.cpython-311-{triple}.so _cffi_backend.cpython-311-{triple}.so"
            )),
            "{out}"
        );
        assert!(out.contains("&lt;a&gt; 7"), "{out}");
    }

    // Everything is built: no container starts, and no network is needed.
    let since = chrono_now();
    let again = tempfile::tempdir().unwrap();
    let unshare = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let out = if unshare {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(env!("CARGO_BIN_EXE_dockerbuild"));
        let base = dockerbuild(&shared_store(), &repo());
        c.args(base.get_args());
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.args(["--json", "wheel-build", "-o"])
            .arg(again.path())
            .args(args);
        c.output().unwrap()
    } else {
        common::available("unshare -n (util-linux, root)", false);
        return;
    };
    common::assert_success(&out, &"a second wheel-build, without network");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for w in v["jobs"].as_array().unwrap() {
        assert!(
            ["cached", "downloaded"].contains(&w["status"].as_str().unwrap()),
            "{w}"
        );
    }
    assert_eq!(
        containers_started_since(&since, &job_keys(&v)),
        "",
        "no container started"
    );
    assert_eq!(std::fs::read_dir(again.path()).unwrap().count(), 5);
}

/// The build keys of every job a `wheel-build --json` ran or looked up.
fn job_keys(report: &serde_json::Value) -> Vec<String> {
    report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["key"].as_str())
        .map(|k| k.trim_start_matches("blake3:").to_owned())
        .collect()
}

/// The containers Docker started since `since` (Unix seconds) for builds with one of
/// `keys` (other tests' builds may run meanwhile), one build key per line.
fn containers_started_since(since: &str, keys: &[String]) -> String {
    let events = Command::new("docker")
        .args(["events", "--since", since, "--until", &chrono_now()])
        .args([
            "--filter",
            "label=org.dockerbuild.managed=true",
            "--filter",
            "event=start",
        ])
        .args([
            "--format",
            "{{index .Actor.Attributes \"org.dockerbuild.build-key\"}}",
        ])
        .output()
        .unwrap();
    common::assert_success(&events, &"docker events");
    String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter(|k| keys.iter().any(|want| want == k.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `docker events` wants a time; Unix seconds do.
fn chrono_now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// cryptography 3.3.2 for arm64 with OpenSSL 1.1.1w built from source and linked in: a real
/// AES-GCM round trip in Debian's arm64 Python under QEMU, the pinned OpenSSL version, and
/// no libssl in the extension's DT_NEEDED.
#[test]
fn cryptography_wheel_round_trips_aes_gcm_on_arm64() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wheels = wheel_build(
        &[
            "-w",
            "cryptography",
            "-w",
            "cffi",
            "-w",
            "six",
            "-p",
            "linux-arm64",
            "--python",
            "3.11",
        ],
        dir.path(),
    );
    assert_eq!(wheels.len(), 3, "{wheels:#?}");
    let w = wheel_named(dir.path(), "cryptography-3.3.2-cp311-abi3-linux_aarch64");
    let openssl = members(&w, "_openssl.abi3.so");
    assert_eq!(openssl.len(), 1);
    assert_eq!(machine(&openssl[0].1), 183);
    let text = String::from_utf8_lossy(&openssl[0].1);
    assert!(
        !text.contains("libssl.so") && !text.contains("libcrypto.so"),
        "OpenSSL is linked in"
    );
    let out = import_on(
        "run-arm64",
        dir.path(),
        "import os\n\
         from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n\
         from cryptography.hazmat.backends.openssl.backend import backend\n\
         key = AESGCM.generate_key(bit_length=256); nonce = os.urandom(12)\n\
         ct = AESGCM(key).encrypt(nonce, b'dockerbuild', b'aad')\n\
         assert AESGCM(key).decrypt(nonce, ct, b'aad') == b'dockerbuild'\n\
         print(len(ct), backend.openssl_version_text())",
    );
    assert_eq!(out.trim(), "27 OpenSSL 1.1.1w  11 Sep 2023");
}

/// Debian has no ARMv6 userland: linux-armv6 wheels are imported by Debian's armhf Python
/// under QEMU's default CPU, and their extension is ARMv6 code (`Tag_CPU_arch: v6`).
#[test]
fn armv6_wheels_are_armv6_and_import_on_armhf() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    wheel_build(
        &["-w", "markupsafe", "-p", "linux-armv6", "--python", "3.11"],
        dir.path(),
    );
    let w = wheel_named(dir.path(), "MarkupSafe-2.1.5-cp311-cp311-linux_armv6l");
    let so = members(&w, ".so");
    assert_eq!(so.len(), 1);
    assert_eq!(machine(&so[0].1), 40);
    std::fs::write(dir.path().join("speedups.so"), &so[0].1).unwrap();
    let out = dockerbuild(&shared_store(), dir.path())
        .args([
            "run",
            "-p",
            "linux-armv6",
            "--",
            "readelf",
            "-A",
            "speedups.so",
        ])
        .output()
        .unwrap();
    common::assert_success(&out, &"readelf -A");
    let attrs = String::from_utf8_lossy(&out.stdout);
    assert!(attrs.contains("Tag_CPU_arch: v6"), "{attrs}");
    std::fs::remove_file(dir.path().join("speedups.so")).unwrap();
    let out = import_on(
        "run-armhf",
        dir.path(),
        "import markupsafe._speedups as s, markupsafe\nprint(s.__file__.rsplit('/', 1)[1], markupsafe.escape('&'))",
    );
    assert_eq!(
        out.trim(),
        "_speedups.cpython-311-arm-linux-gnueabihf.so &amp;"
    );
}

/// What one store built and uploaded, an empty store substitutes from a cache: the same
/// wheel bytes, no container started, and no toolchain image or source fetched (keys
/// follow from the lockfile, so only the entries themselves are downloaded). Runs for
/// each backend: `file://` and `oci://` (Debian's docker-registry on 127.0.0.1).
#[test]
fn wheels_are_substituted_from_a_file_cache_into_an_empty_store() {
    if !ready() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    substituted_through(&format!("file://{}", cache.path().display()));
}

#[test]
fn wheels_are_substituted_from_an_oci_registry_into_an_empty_store() {
    if !ready() {
        return;
    }
    let Some(registry) = common::registry::Registry::start() else {
        return;
    };
    substituted_through(&registry.url("dockerbuild/wheels"));
}

fn substituted_through(url: &str) {
    eprintln!("cache backend: {url}");
    let args = ["-w", "markupsafe", "-p", "linux-arm64", "--python", "3.11"];
    let run = |store: &Path, out: &Path, upload: bool| {
        let mut c = dockerbuild(store, &repo());
        c.args(["--json", "--cache", url]);
        if upload {
            c.arg("--upload");
        }
        let o = c
            .args(["wheel-build", "-o"])
            .arg(out)
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&o, &format!("wheel-build (upload: {upload})"));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = tempfile::tempdir().unwrap();
    run(&shared_store(), first.path(), true);
    let since = chrono_now();
    let fresh = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let store = fresh.path().join("store");
    let report = run(&store, second.path(), false);
    assert_eq!(report["wheels"][0]["status"], "substituted", "{report}");
    assert_eq!(report["wheels"][0]["cache"], url, "{report}");
    let name = "MarkupSafe-2.1.5-cp311-cp311-linux_aarch64";
    let a = std::fs::read(wheel_named(first.path(), name)).unwrap();
    let b = std::fs::read(wheel_named(second.path(), name)).unwrap();
    assert!(a == b, "identical wheel bytes");
    assert_eq!(
        containers_started_since(&since, &job_keys(&report)),
        "",
        "no container started"
    );
    let ls = dockerbuild(&store, &repo())
        .args(["store", "ls"])
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        ls.contains("wheel-markupsafe-2.1.5-linux-arm64-cp311"),
        "{ls}"
    );
    assert!(!ls.contains("image-"), "no toolchain image: {ls}");
    assert!(
        !ls.contains(".tar.gz") && !ls.contains(".orig.tar"),
        "no source: {ls}"
    );
}
