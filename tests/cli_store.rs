//! The `store` subcommands driven through the real binary on temp stores.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use common::{TestEnv, write};

fn sample(env: &TestEnv) -> std::path::PathBuf {
    let src = env.path().join("src");
    write(&src.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&src.join("share/doc.txt"), b"documentation");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("link")).unwrap();
    src
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn add_prints_the_store_path_and_is_idempotent() {
    let env = TestEnv::new();
    let src = sample(&env);
    let p1 = env.ok(&[
        "store",
        "add",
        src.to_str().unwrap(),
        "--name",
        "demo",
        "--kind",
        "toolchain",
    ]);
    let p2 = env.ok(&[
        "store",
        "add",
        src.to_str().unwrap(),
        "--name",
        "demo",
        "--kind",
        "toolchain",
    ]);
    assert_eq!(p1, p2);
    let path = std::path::PathBuf::from(p1.trim());
    assert!(path.starts_with(env.store().join("v1")));
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-demo")
    );
    assert_eq!(
        std::fs::read(path.join("share/doc.txt")).unwrap(),
        b"documentation"
    );
    assert_eq!(
        std::fs::read_link(path.join("link")).unwrap().to_str(),
        Some("bin/tool")
    );
    let mode = std::fs::metadata(path.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555, "executable and read-only");
    assert!(env.staging_debris().is_empty());
    assert_eq!(env.entries_on_disk().len(), 1);
}

#[test]
fn ls_show_and_path_agree_and_json_is_machine_readable() {
    let env = TestEnv::new();
    let src = sample(&env);
    let added = json(&env.ok(&[
        "--json",
        "store",
        "add",
        src.to_str().unwrap(),
        "--name",
        "demo",
        "--version",
        "1.2",
        "--kind",
        "source",
    ]));
    let digest = added["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("blake3:"));
    assert_eq!(added["size"], 13 + 20);
    let listed = json(&env.ok(&["--json", "store", "ls"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["digest"], added["digest"]);
    assert_eq!(listed[0]["version"], "1.2");
    assert!(
        env.ok(&["--json", "store", "ls", "--kind", "wheel"])
            .contains("[]")
    );
    let by_name = env.ok(&["store", "path", "demo"]);
    let by_prefix = env.ok(&["store", "path", &digest["blake3:".len()..][..10]]);
    assert_eq!(by_name, by_prefix);
    let shown = env.ok(&["store", "show", &digest]);
    assert!(shown.contains("kind:       source"), "{shown}");
}

#[test]
fn an_ambiguous_name_lists_the_candidates_and_fails() {
    let env = TestEnv::new();
    write(&env.path().join("a"), b"1");
    write(&env.path().join("b"), b"2");
    for f in ["a", "b"] {
        env.ok(&[
            "store",
            "add",
            env.path().join(f).to_str().unwrap(),
            "--name",
            "same",
        ]);
    }
    let err = env.fails(&["store", "path", "same"]);
    assert!(err.contains("matches 2 entries"), "{err}");
    assert_eq!(err.matches("blake3:").count(), 2, "{err}");
    let err = env.fails(&["store", "path", "missing"]);
    assert!(err.contains("no entry matches `missing`"), "{err}");
}

#[test]
fn bad_names_and_special_files_are_refused_without_leftovers() {
    let env = TestEnv::new();
    write(&env.path().join("f"), b"x");
    let err = env.fails(&[
        "store",
        "add",
        env.path().join("f").to_str().unwrap(),
        "--name",
        "../evil",
    ]);
    assert!(err.contains("invalid entry name `../evil`"), "{err}");
    let dir = env.path().join("withfifo");
    std::fs::create_dir_all(&dir).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let err = env.fails(&["store", "add", dir.to_str().unwrap(), "--name", "x"]);
    assert!(err.contains("a fifo"), "{err}");
    assert!(env.entries_on_disk().is_empty());
    assert!(
        env.staging_debris().is_empty(),
        "{:?}",
        env.staging_debris()
    );
}

#[test]
fn verify_finds_corruption_and_repair_removes_it() {
    let env = TestEnv::new();
    let src = sample(&env);
    let good = env.path().join("good");
    write(&good, b"fine");
    let bad_path = env.ok(&["store", "add", src.to_str().unwrap(), "--name", "demo"]);
    env.ok(&["store", "add", good.to_str().unwrap()]);
    env.ok(&["store", "verify"]);
    let victim = std::path::Path::new(bad_path.trim()).join("share/doc.txt");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, b"documentatioN").unwrap();
    let err = env.fails(&["store", "verify"]);
    assert!(err.contains("corrupt:") && err.contains("-demo"), "{err}");
    assert!(
        !err.contains("-good"),
        "only the damaged entry is named: {err}"
    );
    env.ok(&["store", "verify", "--repair"]);
    env.ok(&["store", "verify"]);
    assert_eq!(env.entries_on_disk().len(), 1);
}

#[test]
fn export_import_round_trips_between_stores() {
    let env = TestEnv::new();
    let src = sample(&env);
    let path = env.ok(&[
        "store",
        "add",
        src.to_str().unwrap(),
        "--name",
        "demo",
        "--version",
        "7",
    ]);
    let file = env.path().join("demo.tar.zst");
    env.ok(&["store", "export", "demo", "-o", file.to_str().unwrap()]);
    let other = env.path().join("other");
    let out = env
        .cmd_with_store(&other)
        .args(["store", "import", file.to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_success(&out, &"import");
    let imported = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        std::path::Path::new(imported.trim()).file_name(),
        std::path::Path::new(path.trim()).file_name()
    );
    let out = env
        .cmd_with_store(&other)
        .args(["--json", "store", "show", "demo"])
        .output()
        .unwrap();
    assert_eq!(
        json(&String::from_utf8(out.stdout).unwrap())["version"],
        "7"
    );
}

/// Rewrites an export, changing one byte of the first file's contents.
fn tamper(export: &[u8]) -> Vec<u8> {
    let raw = zstd::decode_all(export).unwrap();
    let mut archive = tar::Archive::new(raw.as_slice());
    let mut out = tar::Builder::new(Vec::new());
    let mut done = false;
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let mut header = member.header().clone();
        let mut data = Vec::new();
        member.read_to_end(&mut data).unwrap();
        let path = member.path_bytes().into_owned();
        if !done && path.starts_with(b"entry/") && !data.is_empty() {
            data[0] ^= 1;
            done = true;
        }
        out.append_data(
            &mut header,
            std::ffi::OsStr::new(std::str::from_utf8(&path).unwrap()),
            data.as_slice(),
        )
        .unwrap();
    }
    assert!(done, "nothing to tamper with");
    zstd::encode_all(out.into_inner().unwrap().as_slice(), 3).unwrap()
}

#[test]
fn a_tampered_export_is_refused_and_changes_nothing() {
    let env = TestEnv::new();
    let src = sample(&env);
    env.ok(&["store", "add", src.to_str().unwrap(), "--name", "demo"]);
    let file = env.path().join("demo.tar.zst");
    env.ok(&["store", "export", "demo", "-o", file.to_str().unwrap()]);
    let bad = env.path().join("bad.tar.zst");
    std::fs::write(&bad, tamper(&std::fs::read(&file).unwrap())).unwrap();
    let other = env.path().join("other");
    let out = env
        .cmd_with_store(&other)
        .args(["store", "import", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hash to blake3:") && err.contains("was expected"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(other.join("v1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(std::fs::read_dir(other.join("v1/.tmp")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(other.join("v1/.meta")).unwrap().count(),
        0
    );
}

#[test]
fn hostile_export_members_are_refused() {
    let env = TestEnv::new();
    write(&env.path().join("f"), b"x");
    env.ok(&[
        "store",
        "add",
        env.path().join("f").to_str().unwrap(),
        "--name",
        "f",
    ]);
    let file = env.path().join("f.tar.zst");
    env.ok(&["store", "export", "f", "-o", file.to_str().unwrap()]);
    // Keep the genuine header but follow it with a member escaping `entry/`.
    let raw = zstd::decode_all(std::fs::read(&file).unwrap().as_slice()).unwrap();
    let mut archive = tar::Archive::new(raw.as_slice());
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    let mut head = Vec::new();
    first.read_to_end(&mut head).unwrap();
    let mut hostile = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(head.len() as u64);
    h.set_mode(0o644);
    hostile
        .append_data(&mut h, "dockerbuild-export.json", head.as_slice())
        .unwrap();
    let mut h = tar::Header::new_old();
    h.set_size(1);
    h.set_mode(0o644);
    h.as_old_mut().name[..11].copy_from_slice(b"entry/../x\0");
    h.set_cksum();
    hostile.append(&h, &b"x"[..]).unwrap();
    let bad = env.path().join("hostile.tar.zst");
    let mut f = std::fs::File::create(&bad).unwrap();
    f.write_all(&zstd::encode_all(hostile.into_inner().unwrap().as_slice(), 3).unwrap())
        .unwrap();
    let other = env.path().join("other");
    let out = env
        .cmd_with_store(&other)
        .args(["store", "import", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("malformed export") || err.contains("not allowed"),
        "{err}"
    );
    assert!(!env.path().join("x").exists() && !other.join("v1/x").exists());
}

/// Adds a file whose contents are its name; returns its digest.
fn add_named(env: &TestEnv, name: &str, extra: &[&str]) -> String {
    let f = env.path().join(name);
    write(&f, name.as_bytes());
    let mut args = vec![
        "--json",
        "store",
        "add",
        f.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    json(&env.ok(&args))["digest"].as_str().unwrap().to_owned()
}

#[test]
fn gc_keeps_pins_registered_lockfiles_and_their_references() {
    let env = TestEnv::new();
    let add = |name: &str, extra: &[&str]| add_named(&env, name, extra);
    let lib = add("lib", &[]);
    let app = add("app", &["--reference", &lib]);
    let pinned = add("pinned", &[]);
    let locked = add("locked", &[]);
    let garbage = add("garbage", &[]);
    env.ok(&["store", "pin", &app]);
    env.ok(&["store", "pin", &pinned]);
    let lockfile = env.path().join("dockerbuild.lock");
    write(
        &lockfile,
        format!("[[source]]\nname = \"locked\"\nblake3 = \"{locked}\"\n").as_bytes(),
    );
    env.ok(&["store", "add-root", lockfile.to_str().unwrap()]);

    let dry = json(&env.ok(&["--json", "store", "gc", "--dry-run"]));
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(env.entries_on_disk().len(), 5, "dry run deletes nothing");
    let report = json(&env.ok(&["--json", "store", "gc"]));
    assert_eq!(report["deleted"][0][0], garbage.as_str());
    assert_eq!(report["freed_bytes"], 7);
    assert_eq!(env.entries_on_disk().len(), 4);

    // Unpinning the app frees it and the library it referenced; deleting the lockfile frees
    // what only it rooted.
    env.ok(&["store", "unpin", &app]);
    std::fs::remove_file(&lockfile).unwrap();
    let out = env.cmd().args(["store", "gc"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no longer exists"));
    let left = env.entries_on_disk();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("-pinned"));
    env.ok(&["store", "verify"]);
}

#[test]
fn outputs_of_registered_lockfiles_are_kept() {
    let env = TestEnv::new();
    let add = |name: &str, extra: &[&str]| add_named(&env, name, extra);
    let src = add("src", &["--kind", "source"]);
    let other = add("other", &["--kind", "source"]);
    add("built", &["--kind", "output", "--reference", &src]);
    add(
        "stray",
        &[
            "--kind",
            "output",
            "--reference",
            &src,
            "--reference",
            &other,
        ],
    );
    let lockfile = env.path().join("dockerbuild.lock");
    write(&lockfile, format!("blake3 = \"{src}\"\n").as_bytes());
    env.ok(&["store", "add-root", lockfile.to_str().unwrap()]);
    env.ok(&["store", "gc"]);
    let left = env.entries_on_disk();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|e| e.ends_with("-built")) && left.iter().any(|e| e.ends_with("-src")));
    std::fs::remove_file(&lockfile).unwrap();
    env.ok(&["store", "gc"]);
    assert!(env.entries_on_disk().is_empty());
}

#[test]
fn config_file_names_the_store() {
    let env = TestEnv::new();
    let store = env.path().join("from-config");
    write(
        &env.path().join("config.toml"),
        format!("store = {:?}\n", store.to_str().unwrap()).as_bytes(),
    );
    write(&env.path().join("f"), b"x");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockerbuild"))
        .env_remove("DOCKERBUILD_STORE")
        .env("DOCKERBUILD_CONFIG", env.path().join("config.toml"))
        .args(["store", "add", env.path().join("f").to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_success(&out, &"add via config");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(store.to_str().unwrap()));
    write(&env.path().join("config.toml"), b"stor = 1\n");
    let err = env.fails(&["store", "ls"]);
    assert!(err.contains("config.toml") && err.contains("stor"), "{err}");
}

#[test]
fn help_is_there_for_every_subcommand() {
    let env = TestEnv::new();
    for sub in [
        "add",
        "path",
        "ls",
        "show",
        "verify",
        "gc",
        "pin",
        "unpin",
        "add-root",
        "remove-root",
        "roots",
        "export",
        "import",
    ] {
        let out = env.ok(&["store", sub, "--help"]);
        assert!(out.contains("Usage: dockerbuild store"), "{sub}: {out}");
    }
}
