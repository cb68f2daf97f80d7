//! Unpacking archives into the store (`src/archive.rs`): benign archives in every format
//! give the same tree; hostile ones (built by `tests/fixtures/make_hostile_archives.py`
//! with Python's own tarfile and zipfile) are refused, naming the member, with nothing
//! written anywhere: a sentinel directory beside the store stays as it was, no entry is
//! added, and the staging area is empty.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use common::TestEnv;
use dockerbuild::archive::{ArchiveError, Format, UnpackOptions, unpack};
use dockerbuild::progress::{Progress, Silent};
use dockerbuild::store::{Entry, Kind, LocalStore, NewEntry, Store, Verification};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/make_hostile_archives.py"
);

/// Builds the fixture archives `names` into `<env>/archives`; `None` (after saying why)
/// when python3 is missing outside CI.
fn fixtures(env: &TestEnv, names: &[&str]) -> Option<PathBuf> {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::available("python3", python) {
        return None;
    }
    let dir = env.path().join("archives");
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(&dir)
        .args(names)
        .output()
        .expect("run python3");
    common::assert_success(&out, &"make_hostile_archives.py");
    Some(dir)
}

/// Every path under `root` with what it is: file contents, a link target, or a directory.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link {}", t.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let data = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    format!(
                        "file {:o} {}",
                        meta.permissions().mode(),
                        String::from_utf8_lossy(&data)
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// An error with its causes, as the binary prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!("\n  caused by: {c}"));
        cur = c.source();
    }
    s
}

fn new_entry(name: &str) -> NewEntry {
    NewEntry::new(name, Kind::Source)
}

/// Unpacks a hostile fixture with `opts`, expects it refused, and checks that nothing was
/// written: the sentinel beside the store, the test directory's top level, the store's
/// entries and its staging area are all as before. Returns the error text, which must
/// contain every string of `expect` (the member's name, at least).
fn refused_with(name: &str, opts: &UnpackOptions, expect: &[&str]) -> Option<String> {
    let env = TestEnv::new();
    let dir = fixtures(&env, &[name])?;
    let archive = dir.join(name);
    let sentinel = env.path().join("sentinel");
    common::write(&sentinel.join("keep.txt"), b"do not touch\n");
    common::write(&sentinel.join("sub/inner.txt"), b"nor this\n");
    let store = LocalStore::open(&env.store()).unwrap();
    let sentinel_before = snapshot(&sentinel);
    let archives_before = snapshot(&dir);
    let top_before = snapshot(env.path())
        .into_keys()
        .filter(|p| p.components().count() == 1);
    let top_before: Vec<PathBuf> = top_before.collect();

    let err = match unpack(&store, &archive, &new_entry("hostile"), opts, &Silent) {
        Ok(entry) => panic!("`{name}` was unpacked to {}", entry.path.display()),
        Err(e) => e,
    };
    let msg = chain(&err);
    assert!(
        msg.contains(name),
        "the error names the archive `{name}`:\n{msg}"
    );
    for want in expect {
        assert!(msg.contains(want), "the error mentions `{want}`:\n{msg}");
    }
    assert_eq!(snapshot(&sentinel), sentinel_before, "the sentinel changed");
    assert_eq!(
        snapshot(&dir),
        archives_before,
        "the archive directory changed"
    );
    let top_after: Vec<PathBuf> = snapshot(env.path())
        .into_keys()
        .filter(|p| p.components().count() == 1)
        .collect();
    assert_eq!(top_after, top_before, "something appeared beside the store");
    assert!(store.list().unwrap().is_empty(), "an entry was added");
    assert_eq!(env.staging_debris(), Vec::<String>::new(), "staging debris");
    Some(msg)
}

fn refused(name: &str, expect: &[&str]) -> Option<String> {
    refused_with(name, &UnpackOptions::default(), expect)
}

fn small(max_bytes: u64, max_members: u64) -> UnpackOptions {
    UnpackOptions {
        max_bytes,
        max_members,
    }
}

// ---------------------------------------------------------------------------------------
// Hostile names

#[test]
fn dotdot_member_is_refused() {
    refused(
        "dotdot.tar",
        &["member `../escape` escapes the archive root"],
    );
}

#[test]
fn dotdot_member_aimed_at_the_sentinel_is_refused() {
    refused("dotdot-sentinel.tar", &["`../../../../../sentinel/pwned`"]);
}

#[test]
fn absolute_member_is_refused() {
    refused("absolute.tar", &["member `/abs/path` has an absolute path"]);
}

#[test]
fn inner_dotdot_member_is_refused() {
    refused("middotdot.tar", &["member `a/../../x` escapes"]);
}

#[test]
fn pax_long_name_escape_is_refused() {
    let name = format!("{}/../../../escape", "p".repeat(120));
    refused("pax-escape.tar", &[&name, "escapes the archive root"]);
}

#[test]
fn gnu_long_name_escape_is_refused() {
    let name = format!("{}/../../escape", "g".repeat(120));
    refused("gnu-escape.tar.gz", &[&name, "escapes the archive root"]);
}

#[test]
fn empty_and_dot_components_are_refused() {
    refused("empty-component.tar", &["`a//b`", "empty component"]);
    refused("dot-component.tar", &["`a/./b`", "`.` component"]);
}

#[test]
fn duplicate_member_is_refused() {
    refused("dup.tar", &["member `a`", "appears twice"]);
}

// ---------------------------------------------------------------------------------------
// Symlinks

#[test]
fn symlink_to_absolute_path_is_refused() {
    refused(
        "symlink-abs.tar",
        &["symlink `passwd` -> `/etc/passwd` is absolute"],
    );
}

#[test]
fn symlink_out_then_file_through_it_is_refused() {
    // Refused at the link already; the file under it is never reached.
    refused(
        "symlink-updir.tar",
        &["symlink `link` -> `../..` points outside the archive root"],
    );
}

#[test]
fn file_through_a_symlink_inside_the_tree_is_refused() {
    // `inside -> sub` is a fine link, but the writer never writes through a link.
    refused(
        "symlink-through.tar",
        &[
            "member `inside/pwned`",
            "is used as a directory but is not one",
        ],
    );
}

#[test]
fn symlink_escaping_from_a_subdirectory_is_refused() {
    refused("symlink-sub-escape.tar", &["symlink `sub/l` -> `../../x`"]);
}

#[test]
fn symlink_aimed_at_the_sentinel_is_refused() {
    refused(
        "symlink-sentinel.tar",
        &["symlink `s` -> `../../../../../sentinel`"],
    );
}

#[test]
fn symlink_escaping_through_another_symlink_is_refused() {
    // `esc -> sub/up/..` comes before `sub/up -> ..`: only the whole tree shows the escape.
    refused(
        "symlink-chain.tar",
        &["symlink `esc` -> `sub/up/..`", "through other symlinks"],
    );
}

// ---------------------------------------------------------------------------------------
// Hard links

#[test]
fn hardlink_to_absolute_path_is_refused() {
    refused(
        "hardlink-abs.tar",
        &["hard link `h` -> `/etc/passwd` is absolute"],
    );
}

#[test]
fn hardlink_to_parent_is_refused() {
    refused("hardlink-updir.tar", &["hard link `h` -> `../x` escapes"]);
}

#[test]
fn hardlink_to_a_later_member_is_refused() {
    refused(
        "hardlink-later.tar",
        &["hard link `h` -> `f` names no earlier member"],
    );
}

#[test]
fn hardlink_to_a_symlink_is_refused() {
    refused(
        "hardlink-to-symlink.tar",
        &["hard link `h` -> `l` names a symlink"],
    );
}

// ---------------------------------------------------------------------------------------
// Special files

#[test]
fn char_device_is_refused() {
    refused("chardev.tar", &["member `dev/null` is a character device"]);
}

#[test]
fn block_device_is_refused() {
    refused("blockdev.tar", &["member `dev/sda` is a block device"]);
}

#[test]
fn fifo_is_refused() {
    refused("fifo.tar", &["member `pipe` is a fifo"]);
}

// ---------------------------------------------------------------------------------------
// Zip

#[test]
fn zip_slip_is_refused() {
    refused(
        "zipslip.zip",
        &["member `../zipslip` escapes the archive root"],
    );
}

#[test]
fn zip_absolute_member_is_refused() {
    refused("zip-absolute.zip", &["member `/abs` has an absolute path"]);
}

#[test]
fn zip_symlink_escape_is_refused() {
    refused(
        "zip-symlink-escape.zip",
        &["symlink `l` -> `../x` points outside"],
    );
}

#[test]
fn zip_fifo_is_refused() {
    refused("zip-fifo.zip", &["member `pipe` is a fifo"]);
}

#[test]
fn zip_duplicate_names_are_refused() {
    refused("zip-dup.zip", &["lists a member name more than once"]);
}

// ---------------------------------------------------------------------------------------
// Bombs and floods

#[test]
fn bomb_is_refused() {
    refused_with(
        "bomb.tar.gz",
        &small(1 << 20, 100),
        &["member `big`", "limit of 1048576 bytes"],
    );
}

#[test]
fn zip_bomb_is_refused() {
    refused_with(
        "bomb.zip",
        &small(1 << 20, 100),
        &["member `big`", "limit of 1048576 bytes"],
    );
}

#[test]
fn many_members_together_over_the_size_limit_are_refused() {
    // Four members of 512 KiB: the first two fill 1 MiB exactly, the third is refused.
    refused_with(
        "bomb-many.tar.gz",
        &small(1 << 20, 100),
        &["member `part2`", "limit of 1048576 bytes"],
    );
}

#[test]
fn hard_link_copies_count_toward_the_size_limit() {
    refused_with(
        "bomb-hardlinks.tar.gz",
        &small(1 << 20, 100),
        &["member `h0`", "limit of 1048576 bytes"],
    );
}

#[test]
fn too_many_members_are_refused() {
    refused_with(
        "many.tar",
        &small(1 << 20, 10),
        &["member `m010`", "limit of 10 members"],
    );
    refused_with(
        "many.zip",
        &small(1 << 20, 10),
        &["member `m010`", "limit of 10 members"],
    );
}

#[test]
fn huge_pax_header_is_refused() {
    refused(
        "pax-huge.tar.gz",
        &["headers", "take more than 1048576 bytes"],
    );
}

#[test]
fn truncated_archive_fails_cleanly() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, &["bomb.tar.gz"]) else {
        return;
    };
    let data = std::fs::read(dir.join("bomb.tar.gz")).unwrap();
    std::fs::write(dir.join("truncated.tar.gz"), &data[..data.len() / 2]).unwrap();
    let msg = refused_with_env(&env, &dir.join("truncated.tar.gz"));
    assert!(msg.contains("cannot read"), "{msg}");
}

/// Like [`refused_with`] for an archive made by the test itself.
fn refused_with_env(env: &TestEnv, archive: &Path) -> String {
    let store = LocalStore::open(&env.store()).unwrap();
    let err = unpack(
        &store,
        archive,
        &new_entry("bad"),
        &UnpackOptions::default(),
        &Silent,
    )
    .expect_err("refused");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(env.staging_debris(), Vec::<String>::new());
    chain(&err)
}

// ---------------------------------------------------------------------------------------
// Benign archives

/// The same tree in every format Python can write.
const BENIGN: &[&str] = &[
    "benign.tar.gz",
    "benign.tar.xz",
    "benign.tar.bz2",
    "benign.tar",
    "benign.zip",
];

/// Makes `benign.tar.zst` from the fixtures' `benign.tar.gz` (Python has no zstd).
fn make_zst(dir: &Path) -> PathBuf {
    let gz = std::fs::File::open(dir.join("benign.tar.gz")).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar)
        .unwrap();
    let out = dir.join("benign.tar.zst");
    std::fs::write(&out, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    out
}

fn unpack_into(env: &TestEnv, store_name: &str, archive: &Path, opts: &UnpackOptions) -> Entry {
    let store = LocalStore::open(&env.path().join(store_name)).unwrap();
    let entry = unpack(&store, archive, &new_entry("benign"), opts, &Silent)
        .unwrap_or_else(|e| panic!("unpack {}: {}", archive.display(), chain(&e)));
    assert_eq!(
        store.verify(&entry.meta.digest, &Silent).unwrap(),
        Verification::Ok
    );
    entry
}

fn is_exec(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o111 != 0
}

/// The tree `make_hostile_archives.py` calls BENIGN.
fn check_benign_tree(root: &Path) {
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let link = |p: &str| std::fs::read_link(root.join(p)).unwrap();
    assert_eq!(read("README"), b"hello from the benign archive\n");
    assert!(!is_exec(&root.join("README")));
    assert_eq!(read("bin/tool"), b"#!/bin/sh\necho tool\n");
    assert!(is_exec(&root.join("bin/tool")));
    assert!(is_exec(&root.join("bin/group-exec")), "any of 0o111 counts");
    let data = "nested data\n".repeat(100);
    assert_eq!(read("lib/deep/nested/data.txt"), data.as_bytes());
    assert_eq!(read("lib/hard"), data.as_bytes(), "hard link content");
    assert!(
        !std::fs::symlink_metadata(root.join("lib/hard"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(link("lib/link"), Path::new("deep/nested/data.txt"));
    assert_eq!(read("lib/link"), data.as_bytes());
    assert_eq!(link("bin/up"), Path::new("../README"));
    assert_eq!(link("lib/deep/dangling"), Path::new("../../missing"));
    assert_eq!(std::fs::read_dir(root.join("empty")).unwrap().count(), 0);
    let long = format!("long/{}/{}.txt", "d".repeat(60), "n".repeat(80));
    assert_eq!(read(&long), b"a long name\n");
    let latin1 = root.join(OsStr::from_bytes(b"caf\xe9-latin1.txt"));
    assert_eq!(
        std::fs::read(latin1).unwrap(),
        b"a name that is not UTF-8\n"
    );
}

#[test]
fn all_formats_unpack_to_the_same_tree() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, BENIGN) else {
        return;
    };
    let zst = make_zst(&dir);
    let mut digests = Vec::new();
    for (i, archive) in [
        dir.join("benign.tar.gz"),
        dir.join("benign.tar.xz"),
        dir.join("benign.tar.bz2"),
        dir.join("benign.tar"),
        dir.join("benign.zip"),
        zst,
    ]
    .iter()
    .enumerate()
    {
        // A store per format, so each one is really unpacked (not found already present).
        let entry = unpack_into(
            &env,
            &format!("store{i}"),
            archive,
            &UnpackOptions::default(),
        );
        check_benign_tree(&entry.path);
        digests.push((archive.file_name().unwrap().to_owned(), entry.meta.digest));
    }
    for (name, d) in &digests {
        assert_eq!(*d, digests[0].1, "{name:?} differs from {:?}", digests[0].0);
    }
}

#[test]
fn formats_are_detected_by_content() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, BENIGN) else {
        return;
    };
    make_zst(&dir);
    for (name, format) in [
        ("benign.tar.gz", Format::TarGz),
        ("benign.tar.xz", Format::TarXz),
        ("benign.tar.bz2", Format::TarBz2),
        ("benign.tar.zst", Format::TarZst),
        ("benign.tar", Format::Tar),
        ("benign.zip", Format::Zip),
    ] {
        let anonymous = dir.join(format!("{name}.data"));
        std::fs::copy(dir.join(name), &anonymous).unwrap();
        assert_eq!(Format::detect(&anonymous).unwrap(), format, "{name}");
    }
    // And the unpack itself does not care about the name.
    let entry = unpack_into(
        &env,
        "store",
        &dir.join("benign.tar.zst.data"),
        &UnpackOptions::default(),
    );
    check_benign_tree(&entry.path);
}

#[test]
fn limits_are_inclusive() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, &["benign.tar.gz"]) else {
        return;
    };
    let archive = dir.join("benign.tar.gz");
    let size = unpack_into(&env, "probe", &archive, &UnpackOptions::default())
        .meta
        .size;
    // 13 members in BENIGN.
    let exact = small(size, 13);
    unpack_into(&env, "exact", &archive, &exact);

    let store = LocalStore::open(&env.path().join("under")).unwrap();
    let err = unpack(
        &store,
        &archive,
        &new_entry("benign"),
        &small(size - 1, 13),
        &Silent,
    )
    .expect_err("one byte over");
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    let err = unpack(
        &store,
        &archive,
        &new_entry("benign"),
        &small(size, 12),
        &Silent,
    )
    .expect_err("one member over");
    assert!(matches!(err, ArchiveError::TooManyMembers { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn dot_slash_prefix_is_stripped() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, &["dotslash.tar"]) else {
        return;
    };
    let entry = unpack_into(
        &env,
        "store",
        &dir.join("dotslash.tar"),
        &UnpackOptions::default(),
    );
    assert_eq!(std::fs::read(entry.path.join("a/f")).unwrap(), b"dot\n");
    assert_eq!(entry.meta.nodes, 3, "root, a, a/f");
}

#[test]
fn progress_counts_the_compressed_bytes() {
    struct Count(AtomicU64, AtomicU64);
    impl Progress for Count {
        fn start(&self, _: &str, total: Option<u64>) {
            self.1.store(total.unwrap_or(0), Ordering::Relaxed);
        }
        fn advance(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, &["benign.tar.xz"]) else {
        return;
    };
    let archive = dir.join("benign.tar.xz");
    let store = LocalStore::open(&env.store()).unwrap();
    let p = Count(AtomicU64::new(0), AtomicU64::new(0));
    unpack(
        &store,
        &archive,
        &new_entry("benign"),
        &UnpackOptions::default(),
        &p,
    )
    .unwrap();
    let len = std::fs::metadata(&archive).unwrap().len();
    assert_eq!(p.1.load(Ordering::Relaxed), len);
    assert!(p.0.load(Ordering::Relaxed) <= len);
    assert!(p.0.load(Ordering::Relaxed) > 0);
}

#[test]
fn invalid_entry_name_fails_before_unpacking() {
    let env = TestEnv::new();
    let Some(dir) = fixtures(&env, &["benign.tar.gz"]) else {
        return;
    };
    let store = LocalStore::open(&env.store()).unwrap();
    let err = unpack(
        &store,
        &dir.join("benign.tar.gz"),
        &new_entry(".hidden"),
        &UnpackOptions::default(),
        &Silent,
    )
    .expect_err("invalid name");
    assert!(chain(&err).contains(".hidden"), "{}", chain(&err));
    assert_eq!(env.staging_debris(), Vec::<String>::new());
}
