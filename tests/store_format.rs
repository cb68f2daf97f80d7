//! `store-format/vectors.json` against this implementation and against the independent
//! Python one (`store-format/b3tree.py`), on trees materialized on disk.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dockerbuild::digest::Digest;
use dockerbuild::progress::Silent;
use dockerbuild::store::hash_path;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("store-format/vectors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn materialize(node: &Value, at: &Path) {
    match node["type"].as_str().unwrap() {
        t @ ("file" | "exec") => {
            let unit = unhex(&node["contents_hex"]);
            let n = node.get("repeat").and_then(Value::as_u64).unwrap_or(1) as usize;
            std::fs::write(at, unit.repeat(n)).unwrap();
            let mode = if t == "exec" { 0o755 } else { 0o644 };
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        "symlink" => {
            std::os::unix::fs::symlink(OsStr::from_bytes(&unhex(&node["target_hex"])), at).unwrap()
        }
        "dir" => {
            std::fs::create_dir(at).unwrap();
            for child in node["children"].as_array().unwrap() {
                materialize(
                    &child["node"],
                    &at.join(OsStr::from_bytes(&unhex(&child["name_hex"]))),
                );
            }
        }
        other => panic!("unknown node type {other}"),
    }
}

fn python_ok() -> bool {
    Command::new("python3")
        .args(["-c", "import blake3"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn vectors_cover_the_required_cases() {
    let all = serde_json::to_string(&vectors()).unwrap();
    for needle in [
        "\"exec\"",
        "\"symlink\"",
        "\"children\":[]",
        "\"name_hex\":\"fffe",
        "\"repeat\"",
    ] {
        assert!(all.contains(needle), "no vector has {needle}");
    }
}

#[test]
fn rust_matches_the_vectors() {
    let env = common::TestEnv::new();
    for v in vectors() {
        let at = env.path().join(v["id"].as_str().unwrap());
        materialize(&v["tree"], &at);
        let node = hash_path(&at, &Silent).unwrap();
        let expected = Digest::parse(v["digest"].as_str().unwrap()).unwrap();
        assert_eq!(
            node.entry_digest(v["name"].as_str().unwrap()),
            expected,
            "vector {}",
            v["id"]
        );
        // The CLI gives the same address through a real `store add`.
        let out = env.ok(&[
            "--json",
            "store",
            "add",
            at.to_str().unwrap(),
            "--name",
            v["name"].as_str().unwrap(),
        ]);
        assert!(
            out.contains(&expected.to_string()),
            "vector {}: {out}",
            v["id"]
        );
    }
    env.ok(&["store", "verify"]);
}

#[test]
fn python_matches_the_vectors_and_rust() {
    if !common::available("python3 with the blake3 package", python_ok()) {
        return;
    }
    let env = common::TestEnv::new();
    let script = repo().join("store-format/b3tree.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--vectors")
        .arg(repo().join("store-format/vectors.json"))
        .arg(env.path().join("py"))
        .output()
        .unwrap();
    common::assert_success(&out, &"b3tree.py --vectors");
    let printed = String::from_utf8(out.stdout).unwrap();
    // Python hashes trees Rust materialized, and Rust hashes them too.
    for v in vectors() {
        let id = v["id"].as_str().unwrap();
        assert!(
            printed.contains(&format!("{id} {}", v["digest"].as_str().unwrap())),
            "{id}: {printed}"
        );
        let at = env.path().join("rs").join(id);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        materialize(&v["tree"], &at);
        let name = v["name"].as_str().unwrap();
        let out = Command::new("python3")
            .arg(&script)
            .arg(name)
            .arg(&at)
            .output()
            .unwrap();
        common::assert_success(&out, &id);
        let py = String::from_utf8(out.stdout).unwrap();
        let rust = hash_path(&at, &Silent).unwrap().entry_digest(name);
        assert_eq!(py.trim(), rust.to_string(), "vector {id}");
    }
}
