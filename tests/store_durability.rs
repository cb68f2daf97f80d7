//! What must hold when processes die, race or run out of disk: never a partial entry.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestEnv, available, make_tree};

/// SIGKILLs `store add` of a large tree at many moments spread over a normal add's
/// duration; after every kill the store verifies clean, and a last add succeeds.
#[test]
fn sigkill_at_any_moment_leaves_no_partial_entry() {
    let env = TestEnv::new();
    let src = env.path().join("big");
    let bytes = make_tree(&src, 3000, 256 * 1024);
    assert!(
        bytes > 60 << 20,
        "tree is large enough to kill mid-add ({bytes} bytes)"
    );
    let src_s = src.to_str().unwrap();

    // How long one uninterrupted add takes, in separate stores: the faster of two, since
    // the first also pays for reading the tree into the page cache and later adds don't.
    let mut full = Duration::MAX;
    let mut expected = String::new();
    for run in 0..2 {
        let t0 = Instant::now();
        let out = env
            .cmd_with_store(&env.path().join(format!("timing-{run}")))
            .args(["store", "add", src_s, "--name", "big"])
            .output()
            .unwrap();
        common::assert_success(&out, &"timing add");
        full = full.min(t0.elapsed());
        expected = String::from_utf8(out.stdout).unwrap();
        std::fs::remove_dir_all(env.path().join(format!("timing-{run}"))).unwrap();
    }
    let expected_name = std::path::Path::new(expected.trim())
        .file_name()
        .unwrap()
        .to_owned();

    const KILLS: u32 = 24;
    let (mut mid_add, mut with_debris) = (0, 0);
    for i in 0..KILLS {
        // Spread over the first 80% of an add: a loaded machine makes adds vary in length.
        let delay = full.mul_f64(0.8 * f64::from(i) / f64::from(KILLS));
        let mut child = env
            .cmd()
            .args(["store", "add", src_s, "--name", "big"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if still_running {
            mid_add += 1;
        }
        if !env.staging_debris().is_empty() {
            with_debris += 1;
        }
        // Either no entry or the whole entry, never anything else.
        let entries = env.entries_on_disk();
        assert!(
            entries.is_empty() || entries == vec![expected_name.to_string_lossy().into_owned()],
            "{entries:?}"
        );
        env.ok(&["store", "verify"]);
        if !entries.is_empty() {
            env.ok(&["store", "gc"]); // unpinned: deleted, so the next add starts over
        }
    }
    eprintln!(
        "{mid_add}/{KILLS} kills landed while add was running; {with_debris} left staging debris; full add took {full:?}"
    );
    assert!(
        mid_add * 4 >= KILLS * 3,
        "most kills must land mid-add ({mid_add}/{KILLS})"
    );
    assert!(with_debris > 0, "some kills must have interrupted staging");

    // The next run cleans the debris and adds the same entry as an undisturbed run.
    let path = env.ok(&["store", "add", src_s, "--name", "big"]);
    assert_eq!(
        std::path::Path::new(path.trim()).file_name().unwrap(),
        expected_name
    );
    env.ok(&["store", "verify"]);
    assert!(
        env.staging_debris().is_empty(),
        "{:?}",
        env.staging_debris()
    );
}

/// Several processes add the same trees and different ones at once.
#[test]
fn concurrent_adds_never_corrupt_anything() {
    let env = TestEnv::new();
    let shared = env.path().join("shared");
    make_tree(&shared, 400, 64 * 1024);
    let mut children = Vec::new();
    for i in 0..6 {
        let own = env.path().join(format!("own{i}"));
        common::write(&own.join("f"), format!("process {i}").as_bytes());
        for (src, name) in [
            (shared.clone(), "shared".to_owned()),
            (own, format!("own{i}")),
        ] {
            let child = env
                .cmd()
                .args(["store", "add", src.to_str().unwrap(), "--name", &name])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            children.push((name, child));
        }
    }
    let mut shared_paths = Vec::new();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        common::assert_success(&out, &name);
        if name == "shared" {
            shared_paths.push(String::from_utf8(out.stdout).unwrap());
        }
    }
    shared_paths.dedup();
    assert_eq!(shared_paths.len(), 1, "every process got the same entry");
    assert_eq!(env.entries_on_disk().len(), 7);
    env.ok(&["store", "verify"]);
    assert!(env.staging_debris().is_empty());
}

/// gc waits for the exclusive lock, so it never deletes under a running add.
#[test]
fn gc_waits_for_adds_in_progress() {
    let env = TestEnv::new();
    let src = env.path().join("tree");
    make_tree(&src, 1500, 256 * 1024);
    let add = env
        .cmd()
        .args(["store", "add", src.to_str().unwrap(), "--name", "tree"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let gc = env.cmd().args(["store", "gc"]).output().unwrap();
    common::assert_success(&gc, &"gc");
    let out = add.wait_with_output().unwrap();
    common::assert_success(&out, &"add");
    // Whichever ran first, the store is consistent and the add's entry is whole or gone.
    env.ok(&["store", "verify"]);
}

/// A full disk fails the add cleanly and leaves the store as it was.
#[test]
fn a_full_disk_fails_cleanly() {
    let env = TestEnv::new();
    let mnt = env.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !available("a tmpfs mount (run as root)", mounted) {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let store = mnt.join("store");
    common::write(&env.path().join("small.txt"), b"fits");
    common::write(&env.path().join("big.bin"), &vec![7u8; 3 << 20]);
    let ok = env
        .cmd_with_store(&store)
        .args([
            "store",
            "add",
            env.path().join("small.txt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    common::assert_success(&ok, &"small add");
    let out = env
        .cmd_with_store(&store)
        .args(["store", "add", env.path().join("big.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    let names: Vec<_> = std::fs::read_dir(store.join("v1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 1, "only the first entry: {names:?}");
    assert_eq!(
        std::fs::read_dir(store.join("v1/.tmp")).unwrap().count(),
        0,
        "no staging left"
    );
    let v = env
        .cmd_with_store(&store)
        .args(["store", "verify"])
        .output()
        .unwrap();
    common::assert_success(&v, &"verify");
}
