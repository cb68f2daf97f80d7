//! The shared set-up of tests that need Docker: one store for every such test of a run
//! (so each image and interpreter is built once), and the real binary pointed at it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One store for every test of a run, so each image is generated once.
pub fn shared_store() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("images-store")
}

pub fn ready() -> bool {
    let docker = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    let root = rustix::process::geteuid().is_root();
    let mmdebstrap = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    super::available(
        "root, a Docker daemon and mmdebstrap (tests/setup-docker.sh)",
        docker && root && mmdebstrap,
    )
}

pub fn dockerbuild(store: &Path, dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dockerbuild"));
    c.current_dir(dir)
        .arg("--project")
        .arg(repo())
        .arg("--store")
        .arg(store)
        .arg("--locked")
        .arg("-q")
        .env("DOCKERBUILD_CONFIG", store.with_extension("config.toml"))
        // The default binary cache lives under the cache dir: one per store.
        .env("XDG_CACHE_HOME", store.with_extension("xdg-cache"))
        .env_remove("DOCKERBUILD_CACHES");
    c
}

/// Generates (or finds) a platform's image in the shared store; returns its ID.
pub fn image(platform: &str) -> String {
    image_in(&shared_store(), platform)
}

/// A platform's image generated in a store of its own, for a platform no other test
/// builds on. When it is dropped, the store goes and so does the image in Docker, so the
/// disk of a CI run holds one such image (twice: in the store and in Docker) at a time.
pub struct OwnImage {
    pub store: PathBuf,
    pub id: String,
    _dir: tempfile::TempDir,
}

impl OwnImage {
    pub fn new(platform: &str) -> OwnImage {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let id = image_in(&store, platform);
        OwnImage {
            store,
            id,
            _dir: dir,
        }
    }
}

impl Drop for OwnImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "--force", &self.id])
            .output();
    }
}

/// Held while a test runs mmdebstrap (image generation, root filesystems): one at a
/// time across the test processes of a run, as two at once in root mode have been seen
/// to leave each other's `/proc` busy.
pub fn mmdebstrap_lock() -> File {
    std::fs::create_dir_all(shared_store()).unwrap();
    let lock = File::create(shared_store().with_extension("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

fn image_in(store: &Path, platform: &str) -> String {
    let _lock = mmdebstrap_lock();
    let out = dockerbuild(store, &repo())
        .args(["--json", "docker-generate", "-p", platform])
        .output()
        .unwrap();
    super::assert_success(&out, &format!("docker-generate {platform}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["id"].as_str().unwrap().to_owned()
}
