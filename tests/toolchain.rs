//! Toolchain definitions, package closures, reproducible root filesystems and image
//! archives.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dockerbuild::fetch::{Http, HttpOptions};
use dockerbuild::source::debian::Mirrors;
use dockerbuild::toolchain::{
    self, CMAKE_TOOLCHAIN_PATH, DEFAULT_PATH, DebPin, LABEL_MANAGED, LABEL_TOOLCHAIN, Toolchain,
};
use sha2::{Digest as _, Sha256};

/// The epoch every reproducibility test builds with.
const EPOCH: u64 = 1_700_000_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

// ---------------------------------------------------------------------------------------
// Definitions

#[test]
fn every_definition_parses_with_the_real_types() {
    let all = toolchain::load_all(&repo().join("toolchains")).unwrap();
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    for want in ["linux-arm64", "linux-armv7", "linux-x64"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for tc in all.iter().filter(|t| t.is_runner()) {
        // Runners are the target's own Debian userland (under QEMU unless it is amd64),
        // with its Python.
        assert_eq!(tc.qemu.is_some(), tc.host_arch() != "amd64", "{}", tc.name);
        assert!(
            tc.debian
                .as_ref()
                .unwrap()
                .packages
                .iter()
                .any(|p| p.starts_with("python3")),
            "{}",
            tc.name
        );
        assert!(
            tc.name.starts_with("run-") || tc.name.starts_with("native-"),
            "{}",
            tc.name
        );
    }
    for tc in all.iter().filter(|t| !t.is_runner()) {
        assert_eq!(tc.env["CROSS_TRIPLE"], tc.cross_triple, "{}", tc.name);
        assert_eq!(
            tc.env["CMAKE_TOOLCHAIN_FILE"], CMAKE_TOOLCHAIN_PATH,
            "{}",
            tc.name
        );
        assert_eq!(tc.host_arch(), "amd64", "{}", tc.name);
        assert_eq!(tc.qemu.is_some(), tc.is_cross(), "{}", tc.name);
        // zig toolchains wrap `zig cc` in /usr/local/bin; the others are Debian's.
        let zig = tc.unpack.iter().any(|u| u.source == "ziglang");
        for var in ["CC", "CXX", "AR", "LD", "RANLIB", "STRIP"] {
            let v = &tc.env[var];
            let wrapped = zig && ["CC", "CXX", "AR", "RANLIB"].contains(&var);
            let dir = if wrapped {
                "/usr/local/bin"
            } else {
                "/usr/bin"
            };
            assert!(
                v.starts_with(&format!("{dir}/{}-", tc.cross_triple)),
                "{}: {var}={v}",
                tc.name
            );
            if wrapped {
                assert!(
                    tc.files.contains_key(v),
                    "{}: {v} is a generated wrapper",
                    tc.name
                );
            }
        }
        // The essentials of a build image.
        let has = |p: &str| tc.debian.as_ref().unwrap().packages.iter().any(|x| x == p);
        for p in [
            "make",
            "autoconf",
            "automake",
            "libtool",
            "pkg-config",
            "cmake",
            "file",
            "patch",
            "ca-certificates",
            "xz-utils",
            "bzip2",
        ] {
            assert!(has(p), "{} lacks {p}", tc.name);
        }
        let target = tc.target_arch();
        if zig {
            assert!(
                tc.env["ZIG_TARGET"].starts_with(&tc.cross_triple),
                "{}",
                tc.name
            );
            assert!(
                tc.files[&tc.env["CC"]].contains("$ZIG\" cc -target"),
                "{}",
                tc.name
            );
        } else if tc.is_cross() && tc.is_multiarch() {
            assert!(has(&format!("gcc-{}", tc.cross_triple)), "{}", tc.name);
            assert!(has(&format!("zlib1g-dev:{target}")), "{}", tc.name);
            assert!(has(&format!("libc6-dev:{target}")), "{}", tc.name);
            assert!(
                tc.env["PKG_CONFIG_LIBDIR"].starts_with(&format!("/usr/lib/{}/", tc.cross_triple))
            );
        } else if tc.is_cross() {
            // Debian's -cross packages: the target's glibc lives in /usr/<triple>.
            assert!(
                tc.debian
                    .as_ref()
                    .unwrap()
                    .packages
                    .iter()
                    .any(|p| p.starts_with("libc6-dev-") && p.ends_with("-cross")),
                "{}",
                tc.name
            );
            let root = format!("/usr/{}", tc.cross_triple);
            assert!(
                tc.env["PKG_CONFIG_LIBDIR"].starts_with(&root),
                "{}",
                tc.name
            );
            assert_eq!(tc.env["QEMU_LD_PREFIX"], root, "{}", tc.name);
        } else {
            assert!(has("gcc") && has("zlib1g-dev") && has("libc6-dev"));
        }
        let cmake = tc.cmake_toolchain();
        assert!(cmake.contains(&tc.env["CC"]), "{cmake}");
        assert_eq!(
            cmake.contains("CMAKE_SYSTEM_NAME"),
            tc.is_cross(),
            "{cmake}"
        );
        let env = tc.image_env();
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
    }
}

#[test]
fn every_example_in_the_readme_parses_with_the_real_types() {
    let text = std::fs::read_to_string(repo().join("toolchains/README.md")).unwrap();
    let blocks = common::toml_blocks(&repo().join("toolchains/README.md"));
    assert!(!blocks.is_empty(), "the README has a ```toml example");
    for b in &blocks {
        let tc = Toolchain::parse(b, Path::new("toolchains/README.md"))
            .unwrap_or_else(|e| panic!("{e}\n{b}"));
        assert!(tc.base.is_some() || !tc.debian.as_ref().unwrap().packages.is_empty());
    }
    // The documented CMake file is what the generator writes.
    let arm64 = Toolchain::load(&repo().join("toolchains/linux-arm64.toml")).unwrap();
    let generated = arm64.cmake_toolchain();
    let documented = text
        .split("```cmake\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    for line in documented.lines() {
        assert!(
            generated.lines().any(|g| g == line),
            "README's `{line}` is not generated:\n{generated}"
        );
    }
}

#[test]
fn malformed_definitions_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("toolchains/linux-arm64.toml")).unwrap();
    let p = dir.path().join("other-name.toml");
    std::fs::write(&p, &good).unwrap();
    let e = Toolchain::load(&p).unwrap_err().to_string();
    assert!(e.contains("other-name.toml"), "{e}");

    let p = dir.path().join("linux-arm64.toml");
    std::fs::write(&p, format!("{good}\n[extra]\nx = 1\n")).unwrap();
    let e = Toolchain::load(&p).unwrap_err().to_string();
    assert!(e.contains("extra"), "{e}");

    std::fs::write(
        &p,
        good.replace("\"zlib1g-dev:arm64\"", "\"zlib1g-dev:armhf\""),
    )
    .unwrap();
    let e = Toolchain::load(&p).unwrap_err().to_string();
    assert!(e.contains("armhf"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Image archives

/// An entry of a tar, as the tests compare them.
#[derive(Debug, Clone)]
struct TarEntry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// The contents, or a link's target.
    data: Vec<u8>,
    user: String,
}

/// A small root filesystem tar with the awkward cases: `./` prefixes, a hard link whose
/// target sorts after it, a long path, a long symlink target, a device node, set-uid bits
/// and owner names. `variant` changes times, names and order, which must not matter.
fn synthetic_rootfs(path: &Path, variant: u64) {
    use tar::EntryType as T;
    let e = |kind, name: &str, mode, data: &[u8]| TarEntry {
        name: name.to_owned(),
        kind,
        mode,
        uid: if name.contains("mail") { 8 } else { 0 },
        gid: if name.contains("mail") { 8 } else { 0 },
        mtime: 1_000 + variant * 77,
        data: data.to_vec(),
        user: if variant == 0 { "root" } else { "someone" }.to_owned(),
    };
    let long = format!("./usr/share/{}/file.txt", "d".repeat(120));
    let target = format!("/{}", "t".repeat(150));
    let mut entries = vec![
        e(T::Directory, "./", 0o755, b""),
        e(T::Directory, "./usr/", 0o755, b""),
        e(T::Directory, "./usr/bin/", 0o755, b""),
        e(T::Regular, "./usr/bin/zz", 0o4755, b"binary"),
        e(T::Link, "./usr/bin/aa", 0o4755, b"./usr/bin/zz"),
        e(T::Directory, "./var/mail/", 0o2775, b""),
        e(T::Regular, &long, 0o644, b"long"),
        e(T::Symlink, "./usr/bin/ln", 0o777, target.as_bytes()),
        e(T::Directory, "./dev/", 0o755, b""),
        e(T::Char, "./dev/null", 0o666, b""),
    ];
    if variant != 0 {
        // Another valid order: parents still first, links after their targets.
        let dev = entries.split_off(8);
        entries.splice(1..1, dev);
    }
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for t in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t.kind);
        h.set_mode(t.mode);
        h.set_uid(t.uid);
        h.set_gid(t.gid);
        h.set_mtime(t.mtime);
        h.set_username(&t.user).unwrap();
        if matches!(t.kind, T::Link | T::Symlink) {
            h.set_size(0);
            let link = String::from_utf8(t.data.clone()).unwrap();
            b.append_link(&mut h, &t.name, link).unwrap();
        } else {
            h.set_size(t.data.len() as u64);
            b.append_data(&mut h, &t.name, &t.data[..]).unwrap();
        }
    }
    b.into_inner().unwrap();
}

fn tar_entries(path: &Path) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(TarEntry {
            name,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            data: link.unwrap_or(data),
            user: h.username().unwrap().unwrap_or("").to_owned(),
        });
    }
    out
}

#[test]
fn image_archives_are_deterministic_docker_save_archives() {
    let dir = tempfile::tempdir().unwrap();
    let tc = Toolchain::load(&repo().join("toolchains/linux-arm64.toml")).unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    synthetic_rootfs(&a, 0);
    synthetic_rootfs(&b, 1);
    let (ia, ib) = (dir.path().join("ia.tar"), dir.path().join("ib.tar"));
    let info = toolchain::write_image_archive(&a, &tc, &ia, EPOCH).unwrap();
    let info_b = toolchain::write_image_archive(&b, &tc, &ib, EPOCH).unwrap();
    assert_eq!(info, info_b);
    assert_eq!(sha256_file(&ia), sha256_file(&ib), "same tree, same bytes");
    assert_eq!(info.dropped, ["/dev/null"]);

    let outer = tar_entries(&ia);
    let names: Vec<&str> = outer.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        outer
            .iter()
            .all(|e| e.mtime == EPOCH && e.uid == 0 && e.gid == 0 && e.user.is_empty())
    );
    let file = |n: &str| {
        outer
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
            .data
            .clone()
    };

    let manifest: serde_json::Value = serde_json::from_slice(&file("manifest.json")).unwrap();
    let m = &manifest[0];
    let config_name = m["Config"].as_str().unwrap();
    let config_bytes = file(config_name);
    let config_hex = hex::encode(Sha256::digest(&config_bytes));
    assert_eq!(info.id, format!("sha256:{config_hex}"));
    assert_eq!(config_name, format!("blobs/sha256/{config_hex}"));
    assert_eq!(m["RepoTags"][0], info.repo_tag);
    assert_eq!(
        info.repo_tag,
        format!("dockerbuild/linux-arm64:{}", &config_hex[..12])
    );
    let layer = file(m["Layers"][0].as_str().unwrap());
    assert_eq!(
        info.diff_id,
        format!("sha256:{}", hex::encode(Sha256::digest(&layer)))
    );
    assert_eq!(info.layer_size, layer.len() as u64);

    let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"][0], info.diff_id);
    assert_eq!(config["config"]["Labels"][LABEL_MANAGED], "true");
    assert_eq!(config["config"]["Labels"][LABEL_TOOLCHAIN], "linux-arm64");
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"CC=/usr/bin/aarch64-linux-gnu-gcc"),
        "{env:?}"
    );
    assert!(env.contains(&"CROSS_TRIPLE=aarch64-linux-gnu"), "{env:?}");
    assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));

    // The layer: sorted, epoch times, numeric owners, hard link to the first path.
    let lpath = dir.path().join("layer.tar");
    std::fs::write(&lpath, &layer).unwrap();
    let entries = tar_entries(&lpath);
    let lnames: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut lsorted = lnames.clone();
    lsorted.sort();
    assert_eq!(lnames, lsorted);
    assert!(!lnames.iter().any(|n| n.starts_with("./") || n.is_empty()));
    assert!(
        entries
            .iter()
            .all(|e| e.mtime == EPOCH && e.user.is_empty())
    );
    let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    let aa = get("usr/bin/aa");
    assert_eq!(aa.kind, tar::EntryType::Regular);
    assert_eq!(aa.data, b"binary");
    assert_eq!(aa.mode, 0o4755);
    let zz = get("usr/bin/zz");
    assert_eq!(zz.kind, tar::EntryType::Link);
    assert_eq!(zz.data, b"usr/bin/aa");
    assert_eq!(get("var/mail").mode, 0o2775);
    assert_eq!((get("var/mail").uid, get("var/mail").gid), (8, 8));
    assert_eq!(
        get("usr/bin/ln").data,
        format!("/{}", "t".repeat(150)).as_bytes()
    );
    assert!(
        lnames
            .iter()
            .any(|n| n.ends_with("/file.txt") && n.len() > 100)
    );
    assert!(lnames.contains(&"dev") && !lnames.contains(&"dev/null"));
}

// ---------------------------------------------------------------------------------------
// Closures and root filesystems (network; building needs root and mmdebstrap)

fn mirrors_or_skip() -> Option<Mirrors> {
    let m = Mirrors::from_system();
    if !common::available(
        "a Debian mirror in apt's configuration (or DOCKERBUILD_DEBIAN_MIRROR)",
        m.is_ok() && Command::new("apt-get").arg("--version").output().is_ok(),
    ) {
        return None;
    }
    m.ok()
}

fn check_pins(tc: &Toolchain, pins: &[DebPin]) {
    let suites = toolchain::suites(tc);
    let mut keys = BTreeSet::new();
    for p in pins {
        assert!(suites.contains(&p.suite), "{p:?}");
        assert!(
            p.path.starts_with("pool/") && p.path.ends_with(".deb"),
            "{p:?}"
        );
        assert!(
            p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "{p:?}"
        );
        assert!(p.size > 0);
        assert!(
            p.arch == "all" || tc.debian.as_ref().unwrap().architectures.contains(&p.arch),
            "{p:?}"
        );
        assert!(
            keys.insert((p.package.clone(), p.arch.clone())),
            "twice: {p:?}"
        );
    }
    let mut sorted = pins.to_vec();
    sorted.sort_by(|a, b| (&a.package, &a.arch).cmp(&(&b.package, &b.arch)));
    assert_eq!(sorted, pins, "pins are sorted");
    let has = |n: &str, a: &str| pins.iter().any(|p| p.package == n && p.arch == a);
    let host = tc.host_arch();
    for (n, a) in [("bash", host), ("dpkg", host), ("apt", host)] {
        assert!(
            has(n, a),
            "{n}:{a} not pinned: {:?}",
            pins.iter().filter(|p| p.package == n).collect::<Vec<_>>()
        );
    }
    assert!(has("usr-is-merged", "all"));
    assert!(!pins.iter().any(|p| p.package == "usrmerge"), "no usrmerge");
    if tc.is_runner() {
        assert!(has("python3", host), "a runner has its Python");
        return;
    }
    assert!(has("cmake", host) && has("make", host));
    if tc.unpack.iter().any(|u| u.source == "ziglang") {
        // zig brings its own C libraries (libtool still pulls in Debian's gcc).
        return;
    }
    if tc.is_multiarch() || !tc.is_cross() {
        assert!(has("zlib1g-dev", tc.target_arch()));
        assert!(has("libc6-dev", tc.target_arch()));
    } else {
        assert!(pins.iter().any(|p| p.package.starts_with("libc6-dev-")
            && p.package.ends_with("-cross")
            && p.arch == "all"));
    }
    if tc.is_runner() {
        assert!(has("python3", host), "a runner has its Python");
        return;
    }
    assert!(has("cmake", host) && has("make", host));
    if tc.is_cross() {
        assert!(has(&format!("gcc-{}", tc.cross_triple), host));
    } else {
        assert!(has("gcc", host));
    }
}

#[test]
fn every_toolchain_resolves_to_a_pinned_closure() {
    let Some(mirrors) = mirrors_or_skip() else {
        return;
    };
    let mut failed = Vec::new();
    for tc in toolchain::load_all(&repo().join("toolchains")).unwrap() {
        let t = Instant::now();
        let pins = match toolchain::resolve_closure(&tc, &mirrors) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}", tc.name);
                failed.push(tc.name.clone());
                continue;
            }
        };
        let bytes: u64 = pins.iter().map(|p| p.size).sum();
        let by_suite: BTreeMap<&str, usize> = pins.iter().fold(BTreeMap::new(), |mut m, p| {
            *m.entry(p.suite.as_str()).or_default() += 1;
            m
        });
        eprintln!(
            "{}: {} packages, {:.1} MB, {by_suite:?}, resolved in {:.1}s",
            tc.name,
            pins.len(),
            bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        check_pins(&tc, &pins);
        // The same indexes give the same pins.
        if tc.name == "linux-x64" {
            assert_eq!(toolchain::resolve_closure(&tc, &mirrors).unwrap(), pins);
        }
    }
    assert!(failed.is_empty(), "cannot resolve {failed:?} (see above)");
}

/// Downloads every pin into `dir`, 4 at a time, checking size and SHA-256.
fn download(pins: &[DebPin], mirrors: &Mirrors, dir: &Path) -> Vec<(DebPin, PathBuf)> {
    let http = Http::new(HttpOptions::from_env());
    let queue = std::sync::Mutex::new(pins.iter());
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let Some(p) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let url = p.url(mirrors).unwrap();
                    let bytes = http.get_bytes(&url, None).unwrap();
                    assert_eq!(bytes.len() as u64, p.size, "{url}");
                    assert_eq!(hex::encode(Sha256::digest(&bytes)), p.sha256, "{url}");
                    let path = dir.join(p.file_name());
                    std::fs::write(&path, &bytes).unwrap();
                    out.lock().unwrap().push((p.clone(), path));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by(|a, b| a.0.file_name().cmp(b.0.file_name()));
    v
}

/// (path → (type, mode, uid, gid, mtime, sha256 of the data)) for telling two tars apart.
fn listing(path: &Path) -> BTreeMap<String, String> {
    tar_entries(path)
        .into_iter()
        .map(|e| {
            (
                e.name,
                format!(
                    "{:?} {:o} {}:{} {} {}",
                    e.kind,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.mtime,
                    hex::encode(Sha256::digest(&e.data))
                ),
            )
        })
        .collect()
}

/// One file of a tar.
fn tar_file(tar: &Path, name: &str) -> Option<Vec<u8>> {
    let mut ar = tar::Archive::new(std::fs::File::open(tar).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if p.trim_start_matches("./") == name.trim_start_matches('/') {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return Some(v);
        }
    }
    None
}

/// `(package, arch, version)` of every installed package in a dpkg status file.
fn installed(status: &str) -> BTreeSet<(String, String, String)> {
    status
        .split("\n\n")
        .filter(|s| s.contains("\nStatus: install ok installed"))
        .map(|s| {
            let f = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .unwrap_or("")
                    .to_owned()
            };
            (f("Package"), f("Architecture"), f("Version"))
        })
        .collect()
}

#[test]
fn linux_arm64_rootfs_and_image_are_reproducible() {
    let root = rustix::process::geteuid().is_root();
    let mmdebstrap = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::available(
        "root and mmdebstrap (apt-get install -y mmdebstrap)",
        root && mmdebstrap,
    ) {
        return;
    }
    let Some(mirrors) = mirrors_or_skip() else {
        return;
    };
    let tc = Toolchain::load(&repo().join("toolchains/linux-arm64.toml")).unwrap();
    let t = Instant::now();
    let pins = toolchain::resolve_closure(&tc, &mirrors).unwrap();
    let bytes: u64 = pins.iter().map(|p| p.size).sum();
    eprintln!(
        "resolved {} packages ({:.1} MB) in {:.1}s",
        pins.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let debs_dir = dir.path().join("debs");
    std::fs::create_dir(&debs_dir).unwrap();
    let t = Instant::now();
    let debs = download(&pins, &mirrors, &debs_dir);
    eprintln!(
        "downloaded and verified {} .debs in {:.1}s",
        debs.len(),
        t.elapsed().as_secs_f64()
    );

    let mut outs = Vec::new();
    for name in ["a", "b"] {
        let out = dir.path().join(format!("rootfs-{name}.tar"));
        let t = Instant::now();
        let lock = common::images::mmdebstrap_lock();
        toolchain::build_rootfs(&tc, &debs, &[], &out, EPOCH).unwrap();
        drop(lock);
        eprintln!(
            "rootfs build {name}: {:.1}s, {:.1} MB",
            t.elapsed().as_secs_f64(),
            std::fs::metadata(&out).unwrap().len() as f64 / 1e6
        );
        outs.push(out);
    }
    let (sa, sb) = (sha256_file(&outs[0]), sha256_file(&outs[1]));
    if sa != sb {
        let (la, lb) = (listing(&outs[0]), listing(&outs[1]));
        let diff: Vec<String> = la
            .keys()
            .chain(lb.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| la.get(*k) != lb.get(*k))
            .take(30)
            .map(|k| format!("{k}: {:?} vs {:?}", la.get(k), lb.get(k)))
            .collect();
        panic!("the two builds differ ({sa} vs {sb}):\n{}", diff.join("\n"));
    }
    eprintln!("both rootfs builds: sha256 {sa}");

    // Exactly the pinned packages are installed.
    let status = String::from_utf8(tar_file(&outs[0], "var/lib/dpkg/status").unwrap()).unwrap();
    let want: BTreeSet<_> = pins
        .iter()
        .map(|p| (p.package.clone(), p.arch.clone(), p.version.clone()))
        .collect();
    assert_eq!(installed(&status), want);
    // The CMake file is there; the build machine is not.
    assert_eq!(
        tar_file(&outs[0], CMAKE_TOOLCHAIN_PATH).unwrap(),
        tc.cmake_toolchain().as_bytes()
    );
    let list = listing(&outs[0]);
    for gone in [
        "./etc/resolv.conf",
        "./etc/hostname",
        "./etc/apt/sources.list",
    ] {
        assert!(!list.contains_key(gone), "{gone} is in the rootfs");
    }
    assert!(!list.keys().any(|k| k.contains("dockerbuild-rootfs-")));

    let images: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let out = dir.path().join(format!("image-{i}.tar"));
            let t = Instant::now();
            let info = toolchain::write_image_archive(r, &tc, &out, EPOCH).unwrap();
            eprintln!("image archive {i}: {:.1}s", t.elapsed().as_secs_f64());
            (info, sha256_file(&out), out)
        })
        .collect();
    assert_eq!(images[0].0, images[1].0);
    assert_eq!(images[0].1, images[1].1);
    eprintln!(
        "image {} ({}), layer {} ({:.1} MB), archive sha256 {}",
        images[0].0.id,
        images[0].0.repo_tag,
        images[0].0.diff_id,
        images[0].0.layer_size as f64 / 1e6,
        images[0].1
    );
    // For loading by hand: DOCKERBUILD_TEST_KEEP_IMAGE=/path/image.tar.
    if let Some(keep) = std::env::var_os("DOCKERBUILD_TEST_KEEP_IMAGE") {
        std::fs::copy(&images[0].2, keep).unwrap();
    }
}
