//! The suite every [`Store`] backend must pass. Each check takes a fresh, empty store.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Kind, NewEntry, Store, StoreError, Verification};
use crate::progress::Silent;

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/empty")).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha").unwrap();
    std::fs::write(dir.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../a.txt", dir.join("sub/link")).unwrap();
}

pub fn add_is_idempotent_and_read_only<S: Store>(store: &S, scratch: &Path) {
    tree(&scratch.join("t"));
    let new = NewEntry::new("t", Kind::Other);
    let a = store.add_path(&scratch.join("t"), &new, &Silent).unwrap();
    let b = store.add_path(&scratch.join("t"), &new, &Silent).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.meta.size, 15);
    assert_eq!(a.meta.nodes, 6);
    let f = std::fs::metadata(a.path.join("a.txt")).unwrap();
    assert_eq!(f.permissions().mode() & 0o222, 0, "files are read-only");
    let d = std::fs::metadata(a.path.join("sub")).unwrap();
    assert_eq!(
        d.permissions().mode() & 0o222,
        0,
        "directories are read-only"
    );
    assert_eq!(store.list().unwrap(), vec![a.clone()]);
    assert_eq!(store.get(&a.meta.digest).unwrap(), Some(a));
}

pub fn find_and_resolve<S: Store>(store: &S, scratch: &Path) {
    std::fs::write(scratch.join("one"), b"1").unwrap();
    std::fs::write(scratch.join("two"), b"2").unwrap();
    let one = store
        .add_path(
            &scratch.join("one"),
            &NewEntry::new("dup", Kind::Source),
            &Silent,
        )
        .unwrap();
    store
        .add_path(
            &scratch.join("two"),
            &NewEntry::new("dup", Kind::Source),
            &Silent,
        )
        .unwrap();
    assert!(matches!(
        store.resolve("dup"),
        Err(StoreError::Ambiguous { .. })
    ));
    assert!(matches!(
        store.resolve("nope"),
        Err(StoreError::NotFound { .. })
    ));
    let hex = one.meta.digest.to_hex();
    assert_eq!(store.resolve(&hex[..12]).unwrap(), one);
    assert_eq!(store.resolve(&one.meta.digest.to_string()).unwrap(), one);
}

pub fn add_reader_checks_expected_digest<S: Store>(store: &S) {
    let new = NewEntry::new("blob", Kind::Source);
    let wrong = crate::digest::Digest::of(b"not it");
    let err = store
        .add_reader(&mut &b"contents"[..], false, &new, Some(wrong))
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty(), "a mismatch adds nothing");
    let e = store
        .add_reader(&mut &b"contents"[..], false, &new, None)
        .unwrap();
    assert_eq!(std::fs::read(&e.path).unwrap(), b"contents");
}

pub fn export_import_round_trip<S: Store>(from: &S, to: &S, scratch: &Path) {
    tree(&scratch.join("t"));
    let a = from
        .add_path(
            &scratch.join("t"),
            &NewEntry::new("t", Kind::Toolchain),
            &Silent,
        )
        .unwrap();
    let mut buf = Vec::new();
    from.export(&a.meta.digest, &mut buf).unwrap();
    let mut again = Vec::new();
    from.export(&a.meta.digest, &mut again).unwrap();
    assert_eq!(buf, again, "exports are deterministic");
    let b = to.import(&mut buf.as_slice(), &Silent).unwrap();
    assert_eq!(a.meta, b.meta);
    assert_eq!(
        to.verify(&b.meta.digest, &Silent).unwrap(),
        Verification::Ok
    );
}

pub fn remove_and_verify<S: Store>(store: &S, scratch: &Path) {
    tree(&scratch.join("t"));
    let a = store
        .add_path(
            &scratch.join("t"),
            &NewEntry::new("t", Kind::Other),
            &Silent,
        )
        .unwrap();
    assert_eq!(
        store.verify(&a.meta.digest, &Silent).unwrap(),
        Verification::Ok
    );
    // Corrupt it behind the store's back.
    let f = a.path.join("a.txt");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&f, b"tampered").unwrap();
    assert!(matches!(
        store.verify(&a.meta.digest, &Silent).unwrap(),
        Verification::Corrupt { .. }
    ));
    assert!(store.remove(&a.meta.digest).unwrap());
    assert!(!store.remove(&a.meta.digest).unwrap());
    assert!(store.get(&a.meta.digest).unwrap().is_none());
    assert!(!a.path.exists());
}

pub fn top_level_symlinks_are_followed<S: Store>(store: &S, scratch: &Path) {
    std::fs::write(scratch.join("target"), b"pointed at").unwrap();
    std::os::unix::fs::symlink(scratch.join("target"), scratch.join("link")).unwrap();
    let via_link = store
        .add_path(
            &scratch.join("link"),
            &NewEntry::new("f", Kind::Other),
            &Silent,
        )
        .unwrap();
    let direct = store
        .add_path(
            &scratch.join("target"),
            &NewEntry::new("f", Kind::Other),
            &Silent,
        )
        .unwrap();
    assert_eq!(via_link, direct);
    assert_eq!(
        store.verify(&direct.meta.digest, &Silent).unwrap(),
        Verification::Ok
    );
}

/// Instantiates the suite for a backend: `conformance_suite!(module, |dir| make_store(dir))`.
macro_rules! conformance_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;
            fn fresh() -> (tempfile::TempDir, impl $crate::store::Store) {
                let dir = tempfile::tempdir().unwrap();
                let store = ($make)(&dir.path().join("store"));
                (dir, store)
            }
            #[test]
            fn add_is_idempotent_and_read_only() {
                let (d, s) = fresh();
                $crate::store::conformance::add_is_idempotent_and_read_only(&s, d.path());
            }
            #[test]
            fn find_and_resolve() {
                let (d, s) = fresh();
                $crate::store::conformance::find_and_resolve(&s, d.path());
            }
            #[test]
            fn add_reader_checks_expected_digest() {
                let (_d, s) = fresh();
                $crate::store::conformance::add_reader_checks_expected_digest(&s);
            }
            #[test]
            fn export_import_round_trip() {
                let (d, s) = fresh();
                let (_d2, t) = fresh();
                $crate::store::conformance::export_import_round_trip(&s, &t, d.path());
            }
            #[test]
            fn top_level_symlinks_are_followed() {
                let (d, s) = fresh();
                $crate::store::conformance::top_level_symlinks_are_followed(&s, d.path());
            }
            #[test]
            fn remove_and_verify() {
                let (d, s) = fresh();
                $crate::store::conformance::remove_and_verify(&s, d.path());
            }
        }
    };
}

use super::LocalStore;
conformance_suite!(local, |p: &Path| LocalStore::open(p).unwrap());
