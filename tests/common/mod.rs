//! Test harness: a temp store per test, the real binary, and the rule for optional
//! components (skip on a laptop, fail under `CI=true`).
#![allow(dead_code)]

pub mod images;
pub mod registry;
pub mod wheels;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        TestEnv {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The binary with this test's store and an empty config.
    pub fn cmd(&self) -> Command {
        self.cmd_with_store(&self.store())
    }

    pub fn cmd_with_store(&self, store: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dockerbuild"));
        c.env("DOCKERBUILD_STORE", store)
            .env("DOCKERBUILD_CONFIG", self.dir.path().join("config.toml"))
            // The default binary cache lives under the cache dir: one per test.
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
            .env_remove("DOCKERBUILD_CACHES")
            .env("NO_COLOR", "1")
            .arg("-q");
        c
    }

    /// Runs the binary with `args`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run dockerbuild");
        assert_success(&out, &args);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs the binary with `args`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run dockerbuild");
        assert!(
            !out.status.success(),
            "expected `{args:?}` to fail, but it succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// Every `<hex>-<name>` entry on disk.
    pub fn entries_on_disk(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store().join("v1"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Everything in the staging area.
    pub fn staging_debris(&self) -> Vec<String> {
        std::fs::read_dir(self.store().join("v1/.tmp"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn assert_success(out: &Output, what: &dyn std::fmt::Debug) {
    assert!(
        out.status.success(),
        "`{what:?}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when running in CI, where a missing component fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Returns false (after saying why) when a test must be skipped; panics in CI instead.
pub fn available(component: &str, ok: bool) -> bool {
    if !ok {
        assert!(
            !in_ci(),
            "{component} is required under CI=true but is missing"
        );
        eprintln!("SKIP: {component} is not available");
    }
    ok
}

/// Writes a file, creating parents.
pub fn write(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// A deterministic tree of `files` files with sizes cycling through small and large ones.
pub fn make_tree(root: &Path, files: usize, big: usize) -> u64 {
    let mut total = 0u64;
    for i in 0..files {
        let size = match i % 10 {
            0 => big,
            1..=3 => 4096 * (i % 7 + 1),
            _ => 100 + i % 900,
        };
        let byte = (i % 251) as u8;
        let data: Vec<u8> = (0..size).map(|j| byte ^ (j as u8)).collect();
        write(&root.join(format!("d{}/f{i}.bin", i % 37)), &data);
        total += size as u64;
    }
    total
}

/// The ```toml blocks of a Markdown file, in order.
#[allow(dead_code)]
pub fn toml_blocks(markdown: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(markdown).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}
