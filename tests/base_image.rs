//! `[base]` toolchains: an upstream dockcross-style image pinned by digest, mirrored
//! between two registries on loopback, and a toolchain image generated on it from the
//! mirror alone.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::registry::{Registry, flip_middle_byte};
use dockerbuild::lock::Lockfile;
use dockerbuild::registry::{OciOptions, Repository, sha256_hex};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    common::assert_success(&out, &args);
}

/// Images this test made, removed from the daemon however the test ends.
struct Images(std::cell::RefCell<Vec<String>>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in self.0.borrow().iter() {
            drop(Command::new("docker").args(["rmi", i]).output());
        }
    }
}

/// A project of one `[base]` toolchain on `image`, with no sources.
fn project(dir: &Path, image: &str) {
    common::write(&dir.join("sources.toml"), b"");
    common::write(
        &dir.join("toolchains/dockcross-arm64.toml"),
        format!(
            r##"
name = "dockcross-arm64"
cross_triple = "aarch64-linux-gnu"
wheel_tags = ["linux_aarch64"]
cipd_platform = "linux-arm64"
qemu = "qemu-aarch64"

[base]
image = "{image}"

[files]
"/usr/local/bin/hello-wrapper" = "#!/bin/sh\necho wrapped\n"

[env]
DOCKCROSS_STYLE = "ours"
"##
        )
        .as_bytes(),
    );
}

/// The pushed manifest wrapped in a two-platform index (the arm64 entry is a config-only
/// manifest, enough for the platform choice); returns (index digest, amd64 manifest).
fn make_index(repo: &Arc<Repository>, tag: &str) -> (String, String) {
    let amd64 = repo
        .get_manifest(tag, &dockerbuild::registry::MANIFEST_TYPES, "pushed")
        .unwrap()
        .unwrap();
    let config =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256_hex(config);
    repo.upload_blob_bytes(config, &config_digest, "arm64 config")
        .unwrap();
    let arm64 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [],
    }))
    .unwrap();
    let arm64_digest = sha256_hex(&arm64);
    repo.put_manifest(&arm64_digest, &arm64, MANIFEST, "arm64")
        .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": arm64_digest, "size": arm64.len(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": amd64.media_type, "digest": amd64.digest, "size": amd64.bytes.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .unwrap();
    repo.put_manifest("multi", &index, INDEX, "index").unwrap();
    (sha256_hex(&index), amd64.digest)
}

/// The ELF machine of a file (183: AArch64).
fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[18], b[19]])
}

/// The proof of issue #8's last item: a dockcross-style image built here and pushed to
/// registry A is pinned by digest through a multi-platform index, mirrored to registry B,
/// and, with A stopped, a toolchain is generated on it from B and cross-compiles. A
/// tampered mirror then fails naming the mirror and the blob and adds nothing; with
/// upstream back it is fallen back from, giving the same image.
#[test]
fn a_toolchain_on_a_mirrored_dockcross_style_base_image() {
    if !common::images::ready() {
        return;
    }
    let (Some(a), Some(b)) = (Registry::start(), Registry::start()) else {
        return;
    };
    let started = std::time::Instant::now();
    let upstream = format!("127.0.0.1:{}", a.port);
    let mirror = format!("127.0.0.1:{}", b.port);

    // A dockcross-style image: the linux-arm64 toolchain plus dockcross's variables.
    let base = common::images::image("linux-arm64");
    let pushed = format!("{upstream}/dockcross/linux-arm64:v1");
    let env = common::TestEnv::new();
    let context = env.path().join("context");
    let dockerfile = context.join("Dockerfile");
    common::write(
        &dockerfile,
        format!("FROM {base}\nENV DEFAULT_DOCKCROSS_IMAGE=dockcross/linux-arm64 DOCKCROSS_STYLE=theirs\n")
            .as_bytes(),
    );
    docker(&[
        "build",
        "-q",
        "-t",
        &pushed,
        "-f",
        dockerfile.to_str().unwrap(),
        context.to_str().unwrap(),
    ]);
    let made = Images(Default::default());
    made.0.borrow_mut().push(pushed.clone());
    docker(&["push", "-q", &pushed]);
    let repo = Arc::new(
        Repository::open(
            "upstream",
            &upstream,
            "dockcross/linux-arm64",
            OciOptions::default(),
        )
        .unwrap(),
    );
    let (index_digest, amd64_digest) = make_index(&repo, "v1");
    eprintln!("built and pushed the base image in {:?}", started.elapsed());

    // Pinned through the index: the top digest and the amd64 manifest.
    let dir = env.path().join("project");
    project(&dir, "dockcross/linux-arm64:multi");
    let run = |store: &Path, args: &[&str]| {
        env.cmd_with_store(store)
            .env("DOCKERBUILD_BASE_REGISTRY", &upstream)
            .arg("--project")
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&env.store(), &["lock"]);
    common::assert_success(&out, &"lock");
    let lock_path = dir.join("lockfiles/dockerbuild.lock");
    let lock = Lockfile::read(&lock_path).unwrap().unwrap();
    let pin = lock.base_image("dockcross-arm64").unwrap().clone();
    assert_eq!(pin.digest, index_digest);
    assert_eq!(pin.manifest, amd64_digest);
    assert!(pin.mirrors.is_empty());

    // A single manifest of another platform is refused, naming both platforms.
    let wrong = env.path().join("wrong");
    project(
        &wrong,
        "dockcross/linux-arm64:v1\"\nplatform = \"linux/arm64",
    );
    let out = env
        .cmd()
        .env("DOCKERBUILD_BASE_REGISTRY", &upstream)
        .arg("--project")
        .arg(&wrong)
        .arg("lock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no linux/arm64 manifest") && err.contains("it has: linux/amd64"),
        "{err}"
    );

    // Mirrored, and recorded; --locked refuses a copy the lockfile lacks.
    let to = format!("{mirror}/mirror");
    let out = run(&env.store(), &["--locked", "docker-mirror", "--to", &to]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--locked") && err.contains("mirrors"), "{err}");
    let out = run(&env.store(), &["docker-mirror", "--to", &to]);
    common::assert_success(&out, &"docker-mirror --to");
    let copy = format!("{to}/dockcross/linux-arm64@{index_digest}");
    let lock = Lockfile::read(&lock_path).unwrap().unwrap();
    assert_eq!(lock.base_image("dockcross-arm64").unwrap().mirrors, [copy]);
    let out = run(&env.store(), &["--locked", "docker-mirror", "--to", &to]);
    common::assert_success(&out, &"docker-mirror --to, recorded already");
    eprintln!("locked and mirrored at {:?}", started.elapsed());

    // Upstream gone: generated from the mirror alone.
    a.kill();
    let generate = |store: &Path| {
        run(
            store,
            &[
                "--locked",
                "--json",
                "docker-generate",
                "-p",
                "dockcross-arm64",
            ],
        )
    };
    let out = generate(&env.store());
    common::assert_success(&out, &"docker-generate from the mirror");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v[0]["id"].as_str().unwrap().to_owned();
    made.0.borrow_mut().push(id.clone());
    eprintln!("generated from the mirror at {:?}", started.elapsed());

    // It cross-compiles with the base's $CC; our layer and environment are there.
    let work = env.path().join("work");
    common::write(
        &work.join("hello.c"),
        b"#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    );
    let out = run(
        &env.store(),
        &[
            "--locked",
            "run",
            "-p",
            "dockcross-arm64",
            "--workdir",
            work.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "$CC -o hello hello.c && echo \"$DOCKCROSS_STYLE $DEFAULT_DOCKCROSS_IMAGE\" \
             && cat $CMAKE_TOOLCHAIN_FILE /usr/lib/dockerbuild/toolchain.cmake && hello-wrapper",
        ],
    );
    common::assert_success(&out, &"run in the toolchain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ours dockcross/linux-arm64"), "{stdout}");
    assert!(
        stdout.contains("for toolchain `dockcross-arm64`")
            && stdout.contains("set(CMAKE_SYSTEM_PROCESSOR aarch64)"),
        "our CMake file replaced the base's: {stdout}"
    );
    assert!(stdout.contains("wrapped"), "{stdout}");
    assert_eq!(elf_machine(&work.join("hello")), 183, "an AArch64 binary");

    // A tampered mirror with upstream gone: the error names the mirror and the blob,
    // and the fresh store gets no image.
    let mirror_repo = Repository::open(
        "mirror",
        &mirror,
        "mirror/dockcross/linux-arm64",
        OciOptions::default(),
    )
    .unwrap();
    let m = mirror_repo
        .get_manifest(&amd64_digest, &dockerbuild::registry::MANIFEST_TYPES, "t")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    flip_middle_byte(&b.blob_file(&layer));
    let other = env.path().join("other-store");
    let out = generate(&other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{mirror}/mirror/dockcross/linux-arm64"))
            && err.contains(&layer)
            && err.contains("hash to"),
        "{err}"
    );
    assert!(err.contains(&upstream), "upstream was tried too: {err}");
    let entries = std::fs::read_dir(other.join("v1"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("image-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(entries, 0, "no image entry from a failed generation");

    // Upstream back: fallen back to, and the same image (mirrors are not in the key).
    a.restart();
    let out = generate(&other);
    common::assert_success(&out, &"docker-generate falling back to upstream");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str(), "the same bytes from either source");
    eprintln!("done in {:?}", started.elapsed());
}

/// A definition with both or neither of `[debian]` and `[base]` is refused, naming the
/// file; a `[base]` image without a registry needs DOCKERBUILD_BASE_REGISTRY.
#[test]
fn debian_or_base_exactly_one() {
    let env = common::TestEnv::new();
    let dir = env.path().join("p");
    project(&dir, "dockcross/linux-arm64:v1");
    let file = dir.join("toolchains/dockcross-arm64.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    let lock = |extra: &str, base: bool| {
        let text = if base {
            format!("{good}{extra}")
        } else {
            good.replace("[base]\nimage = \"dockcross/linux-arm64:v1\"\n", "")
        };
        std::fs::write(&file, text).unwrap();
        env.cmd()
            .env_remove("DOCKERBUILD_BASE_REGISTRY")
            .arg("--project")
            .arg(&dir)
            .arg("lock")
            .output()
            .unwrap()
    };
    let both =
        "\n[debian]\nsuite = \"bookworm\"\narchitectures = [\"amd64\"]\npackages = [\"gcc\"]\n";
    for (out, what) in [
        (lock(both, true), "both [debian] and [base]"),
        (lock("", false), "neither [debian] nor [base]"),
        (lock("", true), "DOCKERBUILD_BASE_REGISTRY"),
    ] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{err}");
        if !what.starts_with("DOCKER") {
            assert!(err.contains("dockcross-arm64.toml"), "{err}");
        }
    }
}
