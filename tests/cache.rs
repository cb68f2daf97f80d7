//! The binary cache conformance suite: every backend must pass it. The log names each
//! backend that ran.

#[path = "support/cipd_fake.rs"]
mod cipd_fake;
#[path = "support/cipd_options.rs"]
mod cipd_options;
mod common;

use dockerbuild::cache::{self, Cache, CacheError};
use dockerbuild::digest::Digest;
use dockerbuild::progress::Silent;
use dockerbuild::signing::SecretKey;
use dockerbuild::store::{Entry, Kind, LocalStore, NewEntry, Store};

fn store(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(dir).unwrap()
}

fn entry(s: &LocalStore, name: &str, files: usize) -> Entry {
    let src = tempfile::tempdir().unwrap();
    for i in 0..files {
        common::write(
            &src.path().join(format!("d{}/f{i}", i % 3)),
            format!("{name} file {i}").repeat(100 + i).as_bytes(),
        );
    }
    s.add_path(src.path(), &NewEntry::new(name, Kind::Output), &Silent)
        .unwrap()
}

/// The suite, run against one backend made by `open` (each call gives the same cache).
fn conformance(open: &dyn Fn() -> Box<dyn Cache>) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(&dir.path().join("a")), store(&dir.path().join("b")));
    let c = open();
    eprintln!("cache backend: {}", c.url());
    let key = Digest::of(b"build key 1");
    let e = entry(&a, "out", 20);
    assert!(c.lookup(&key).unwrap().is_none());
    assert!(!c.has_entry(&e.meta.digest).unwrap());

    // Push from one store, substitute into an empty one: the same entry.
    let signer = SecretKey::generate("test-1").unwrap();
    let claim = cache::upload(c.as_ref(), &key, &e, Some(&signer)).unwrap();
    assert!(c.has_entry(&e.meta.digest).unwrap());
    assert_eq!(c.lookup(&key).unwrap().as_ref(), Some(&claim));
    assert_eq!(c.list().unwrap(), vec![claim.clone()]);
    let trusted = [signer.public()];
    let caches = vec![open()];
    let got = cache::substitute(&caches, &b, &key, &trusted, &Silent)
        .unwrap()
        .expect("a hit");
    assert_eq!(got.entry.meta.digest, e.meta.digest);
    assert_eq!(
        b.resolve_key(&key).unwrap().unwrap().meta.digest,
        e.meta.digest
    );
    // Pushing again is fine; so is a second key for the same entry.
    cache::upload(c.as_ref(), &key, &e, Some(&signer)).unwrap();
    let key2 = Digest::of(b"build key 2");
    cache::upload(c.as_ref(), &key2, &e, Some(&signer)).unwrap();
    assert_eq!(c.list().unwrap().len(), 2);

    // A miss is a miss.
    let empty = store(&dir.path().join("empty"));
    assert!(
        cache::substitute(&caches, &empty, &Digest::of(b"nothing"), &trusted, &Silent)
            .unwrap()
            .is_none()
    );

    // Signed by an untrusted key: refused, nothing imported.
    let other = SecretKey::generate("stranger").unwrap();
    let key3 = Digest::of(b"build key 3");
    let e3 = entry(&a, "other", 5);
    cache::upload(c.as_ref(), &key3, &e3, Some(&other)).unwrap();
    let err = cache::substitute(&caches, &empty, &key3, &trusted, &Silent).unwrap_err();
    assert!(matches!(err, CacheError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains(c.url()), "{err}");
    // Unsigned: refused when keys are trusted, accepted (integrity only) when none are.
    let key4 = Digest::of(b"build key 4");
    cache::upload(c.as_ref(), &key4, &e3, None).unwrap();
    assert!(cache::substitute(&caches, &empty, &key4, &trusted, &Silent).is_err());
    assert!(
        empty.list().unwrap().is_empty(),
        "nothing entered the store"
    );
    let ok = cache::substitute(&caches, &empty, &key4, &[], &Silent).unwrap();
    assert_eq!(ok.unwrap().entry.meta.digest, e3.meta.digest);
}

/// Faults only a backend whose storage the test can reach can show: a tampered or
/// truncated stream, a claim moved to another key.
fn file_faults(root: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let c = cache::open(root.to_str().unwrap()).unwrap();
    let signer = SecretKey::generate("test-1").unwrap();
    let trusted = [signer.public()];
    let caches = vec![cache::open(root.to_str().unwrap()).unwrap()];
    let key = Digest::of(b"fault key");
    let e = entry(&a, "victim", 30);
    cache::upload(c.as_ref(), &key, &e, Some(&signer)).unwrap();
    let blob = root
        .join("dockerbuild-cache-v1/entries")
        .join(format!("{}.tar.zst", e.meta.digest.to_hex()));
    let good = std::fs::read(&blob).unwrap();

    // A validly signed claim served under another key is refused.
    let moved = Digest::of(b"another build");
    let claims = root.join("dockerbuild-cache-v1/claims");
    std::fs::copy(
        claims.join(format!("{}.json", key.to_hex())),
        claims.join(format!("{}.json", moved.to_hex())),
    )
    .unwrap();
    let fresh = store(&dir.path().join("fresh"));
    let err = cache::substitute(&caches, &fresh, &moved, &trusted, &Silent).unwrap_err();
    assert!(matches!(err, CacheError::Untrusted { .. }), "{err}");

    // Truncated, then one byte flipped, then another valid entry's stream in its place.
    let other = entry(&a, "impostor", 3);
    let mut impostor = Vec::new();
    dockerbuild::store::export::write(&other, &mut impostor).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    for (what, bytes) in [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("flipped", flipped),
        ("another entry", impostor),
    ] {
        std::fs::write(&blob, &bytes).unwrap();
        let fresh = store(&dir.path().join(what.replace(' ', "-")));
        let err = cache::substitute(&caches, &fresh, &key, &trusted, &Silent).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{what}: {msg}");
        assert!(
            msg.contains(c.url()) && msg.contains("victim"),
            "{what}: {msg}"
        );
        assert!(
            fresh.list().unwrap().is_empty(),
            "{what}: nothing entered the store"
        );
    }
    std::fs::write(&blob, &good).unwrap();
    let fresh = store(&dir.path().join("restored"));
    assert!(
        cache::substitute(&caches, &fresh, &key, &trusted, &Silent)
            .unwrap()
            .is_some()
    );
}

#[test]
fn file_cache_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let url = format!("file://{}", root.display());
    conformance(&|| cache::open(&url).unwrap());
    file_faults(&dir.path().join("faults"));
}

/// The suite against the `cipd://` backend and a fake CIPD server written from the
/// protocol notes (not the real service), which verifies uploads in two polls and keeps
/// each new instance "processing" for two AttachTags rounds.
#[test]
fn cipd_cache_conforms_against_the_fake() {
    let fake = cipd_fake::FakeCipd::start();
    fake.set_verify_polls(2);
    fake.set_processing_rounds(2);
    let url = fake.url("dockerbuild/cache");
    conformance(&|| Box::new(cache::CipdCache::open_with(&url, cipd_options::fast()).unwrap()));
    // The flow the notes describe: register, chunked resumable upload, FinishUpload polled
    // through VERIFYING, register again, tags once processing is over.
    let log = fake.log();
    let calls = |m: &str| log.iter().filter(|l| l.starts_with(m)).count();
    assert!(
        calls("upload bytes 256-511/") > 0,
        "chunked uploads: {log:?}"
    );
    assert!(
        calls("FinishUpload") >= 2 * calls("upload bytes 0-"),
        "{log:?}"
    );
    assert!(
        log.iter().all(|l| !l.starts_with("download auth=true")),
        "{log:?}"
    );
    let entries = fake.instances("dockerbuild/cache/v1/entries");
    assert_eq!(entries.len(), 2, "one instance per entry");
    assert!(
        entries
            .iter()
            .all(|i| i.tags.len() == 1 && i.tags[0].starts_with("dockerbuild_digest:"))
    );
    assert_eq!(fake.instances("dockerbuild/cache/v1/claims").len(), 4);
    // cache::open picks the backend by scheme.
    assert_eq!(cache::open(&url).unwrap().url(), url);
}

#[test]
fn bad_cache_urls_are_refused() {
    let e = cache::open("ftp://example.invalid/x")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("file:///DIR") && e.contains("oci://") && e.contains("cipd://"),
        "{e}"
    );
    for bad in ["cipd://", "cipd://host/Upper", "cipd://host/a/../b"] {
        assert!(cache::open(bad).is_err(), "{bad}");
    }
}

/// The CLI without Docker: `key generate`, `cache push` from one store, `cache pull` into
/// another, `cache ls`, `cache verify` (which fails naming a tampered entry), and trusted
/// keys from config.toml.
#[test]
fn cache_commands_push_pull_list_and_verify() {
    let env = common::TestEnv::new();
    let dir = env.path();
    let cache_dir = dir.join("shared-cache");
    let url = format!("file://{}", cache_dir.display());
    common::write(&dir.join("tree/a.txt"), b"hello cache");
    let secret = dir.join("ci-1.secret");
    let public = env.ok(&["key", "generate", "ci-1", "-o", secret.to_str().unwrap()]);
    assert!(public.trim().starts_with("ci-1:"), "{public}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "caches = [\"{url}\"]\ntrusted-keys = [\"{}\"]\nsigning-key = \"{}\"\n",
            public.trim(),
            secret.display()
        ),
    )
    .unwrap();
    let path = env.ok(&[
        "store",
        "add",
        dir.join("tree").to_str().unwrap(),
        "--name",
        "shared",
    ]);
    let digest = format!(
        "blake3:{}",
        &std::path::Path::new(path.trim())
            .file_name()
            .unwrap()
            .to_string_lossy()[..64]
    );
    env.ok(&["cache", "push", "shared"]);
    let ls = env.ok(&["cache", "ls"]);
    assert!(ls.contains("shared") && ls.contains(&url), "{ls}");
    env.ok(&["cache", "verify"]);

    // Another store pulls it by digest, verified and signed.
    let other = dir.join("other-store");
    let out = env
        .cmd_with_store(&other)
        .args(["cache", "pull", &digest])
        .output()
        .unwrap();
    common::assert_success(&out, &"cache pull");
    let pulled = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        std::path::Path::new(pulled.trim()).file_name(),
        std::path::Path::new(path.trim()).file_name()
    );
    assert_eq!(
        std::fs::read(std::path::Path::new(pulled.trim()).join("a.txt")).unwrap(),
        b"hello cache"
    );

    // Tampered on the cache's disk: verify names it and fails; pull refuses it.
    let blob = cache_dir
        .join("dockerbuild-cache-v1/entries")
        .join(format!("{}.tar.zst", &digest[7..]));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let err = env.fails(&["cache", "verify"]);
    assert!(err.contains("shared") && err.contains(&url), "{err}");
    let third = dir.join("third-store");
    let out = env
        .cmd_with_store(&third)
        .args(["cache", "pull", &digest])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not what it claims"));
}

#[test]
fn the_readme_config_example_parses_with_a_real_key() {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let block = common::toml_blocks(&readme)
        .into_iter()
        .find(|b| b.contains("trusted-keys"))
        .expect("the README shows a config with trusted keys");
    let c = dockerbuild::config::Config::parse(&block, &readme).unwrap();
    assert_eq!(c.caches.len(), 1);
    for k in &c.trusted_keys {
        dockerbuild::signing::PublicKey::parse(k).unwrap();
    }
    assert!(c.caches[0].starts_with("file:///"));
}

/// `store-format/claim-vector.json`: the fingerprint and the (deterministic) signature.
#[test]
fn the_claim_vector_is_reproduced() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("store-format/claim-vector.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let sk = SecretKey::parse(v["secret_key"].as_str().unwrap()).unwrap();
    assert_eq!(sk.public().to_text(), v["public_key"].as_str().unwrap());
    let mut claim: cache::Claim = serde_json::from_value(v["claim"].clone()).unwrap();
    assert_eq!(
        String::from_utf8(claim.fingerprint()).unwrap(),
        v["fingerprint"].as_str().unwrap()
    );
    sk.sign(&mut claim);
    assert_eq!(
        claim.signatures,
        vec![v["signature"].as_str().unwrap().to_owned()]
    );
    let pk = dockerbuild::signing::PublicKey::parse(v["public_key"].as_str().unwrap()).unwrap();
    assert!(pk.verifies(&claim));
}

// ---- oci:// against a real registry (Debian's docker-registry on loopback) ----

use common::registry::{Fault, Proxy, Registry, flip_middle_byte};
use dockerbuild::cache::{OciCache, OciOptions};

const REPO: &str = "dockerbuild-test";

/// Quick retries: the registry is local and restarts in well under a second.
fn quick() -> OciOptions {
    OciOptions {
        chunk_size: 1 << 20,
        retries: 6,
        backoff: std::time::Duration::from_millis(50),
        ..OciOptions::default()
    }
}

fn oci(url: &str) -> Box<dyn Cache> {
    Box::new(OciCache::with_options(url, quick()).unwrap())
}

/// An entry whose export stream is about `mb` MB (incompressible contents).
fn big_entry(s: &LocalStore, name: &str, mb: usize) -> Entry {
    let src = tempfile::tempdir().unwrap();
    let mut state = blake3::Hasher::new();
    state.update(name.as_bytes());
    let mut xof = state.finalize_xof();
    for i in 0..mb {
        let mut data = vec![0u8; 1 << 20];
        xof.fill(&mut data);
        common::write(&src.path().join(format!("part{i}")), &data);
    }
    common::write(&src.path().join("small.txt"), b"small");
    s.add_path(src.path(), &NewEntry::new(name, Kind::Output), &Silent)
        .unwrap()
}

/// The sha256 of the layer an entry is stored as (from its `entry-` manifest).
fn layer_of(reg: &Registry, digest: &Digest) -> String {
    let m = reg.tag_target(REPO, &format!("entry-{}", digest.to_hex()));
    let bytes = std::fs::read(reg.blob_file(&m)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn oci_cache_conforms() {
    let Some(reg) = Registry::start() else { return };
    let url = reg.url(REPO);
    conformance(&|| cache::open(&url).unwrap());
}

/// Tampered or truncated on the registry's disk, or a claim re-tagged under another key:
/// refused, and nothing enters the store.
#[test]
fn oci_tampered_entries_are_refused() {
    let Some(reg) = Registry::start() else { return };
    let url = reg.url(REPO);
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let signer = SecretKey::generate("test-1").unwrap();
    let trusted = [signer.public()];
    let caches = vec![oci(&url)];
    let key = Digest::of(b"fault key");
    let e = entry(&a, "victim", 30);
    cache::upload(caches[0].as_ref(), &key, &e, Some(&signer)).unwrap();
    let refused = |what: &str| {
        let fresh = store(&dir.path().join(what.replace(' ', "-")));
        let err = cache::substitute(&caches, &fresh, &key, &trusted, &Silent).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&url), "{what}: {msg}");
        assert!(fresh.list().unwrap().is_empty(), "{what}: store unchanged");
        err
    };

    // The layer blob: a flipped byte, then truncated.
    let blob = reg.blob_file(&layer_of(&reg, &e.meta.digest));
    let good = flip_middle_byte(&blob);
    let err = refused("flipped blob");
    assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("victim"), "{err}");
    std::fs::write(&blob, &good[..good.len() / 3]).unwrap();
    let err = refused("truncated blob");
    assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
    std::fs::write(&blob, &good).unwrap();

    // The claim's manifest, edited on disk (another name): its digest no longer matches.
    let manifest = reg.blob_file(&reg.tag_target(REPO, &format!("key-{}", key.to_hex())));
    let m = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, m.replace("victim", "victin")).unwrap();
    let err = refused("edited manifest");
    assert!(err.to_string().contains("its bytes hash to"), "{err}");
    std::fs::write(&manifest, &m).unwrap();

    // A validly signed claim re-tagged under another key.
    let moved = Digest::of(b"another build");
    let from = reg.tag_dir(REPO, &format!("key-{}", key.to_hex()));
    let to = reg.tag_dir(REPO, &format!("key-{}", moved.to_hex()));
    std::fs::create_dir_all(to.join("current")).unwrap();
    std::fs::copy(from.join("current/link"), to.join("current/link")).unwrap();
    let fresh = store(&dir.path().join("moved"));
    let err = cache::substitute(&caches, &fresh, &moved, &trusted, &Silent).unwrap_err();
    assert!(matches!(err, CacheError::Untrusted { .. }), "{err}");
    assert!(fresh.list().unwrap().is_empty());

    // Restored: accepted.
    let fresh = store(&dir.path().join("restored"));
    let got = cache::substitute(&caches, &fresh, &key, &trusted, &Silent).unwrap();
    assert_eq!(got.unwrap().entry.meta.digest, e.meta.digest);
}

/// The registry killed (and restarted on the same storage) as the third upload chunk
/// arrives: the push resumes where the registry stopped; killed in the middle of a chunk:
/// the registry drops the upload and the push starts over; killed mid-download, and a
/// connection cut mid-download: the pull resumes with Range. Each ends in the right entry.
#[test]
fn oci_transfers_survive_registry_restarts() {
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(reg.clone());
    let url = proxy.url(REPO);
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let c = oci(&url);
    let caches = vec![oci(&url)];

    // Between chunks: resumed (one upload session for the layer).
    let e1 = big_entry(&a, "resumed", 5);
    let k1 = Digest::of(b"resume key");
    proxy.arm(Fault::KillAtRequest("patch /v2/", 3));
    cache::upload(c.as_ref(), &k1, &e1, None).unwrap();
    assert_eq!(proxy.fired(), 1, "the registry was killed mid-push");
    assert_eq!(
        proxy.count("post /v2/"),
        2,
        "config + one layer upload: resumed"
    );

    // Mid-chunk: the registry refuses the stale session; started over.
    let e2 = big_entry(&a, "restarted", 5);
    let k2 = Digest::of(b"restart key");
    proxy.arm(Fault::KillAfterUpBytes(2_500_000));
    cache::upload(c.as_ref(), &k2, &e2, None).unwrap();
    assert_eq!(proxy.fired(), 2, "the registry was killed mid-push");
    assert_eq!(proxy.count("post /v2/"), 2, "the layer upload started over");

    // Killed mid-download, then cut mid-download: resumed with Range.
    for (i, (fault, key, e)) in [
        (Fault::KillAfterDownBytes(1_500_000), k1, &e1),
        (Fault::CutAfterDownBytes(2_500_000), k2, &e2),
    ]
    .into_iter()
    .enumerate()
    {
        let fresh = store(&dir.path().join(format!("pull{i}")));
        proxy.arm(fault);
        let got = cache::substitute(&caches, &fresh, &key, &[], &Silent)
            .unwrap()
            .unwrap();
        assert_eq!(got.entry.meta.digest, e.meta.digest);
        assert_eq!(proxy.fired(), 3 + i, "{fault:?} fired");
        assert!(proxy.count("range: bytes=") >= 1, "{fault:?}: resumed");
        assert!(fresh.verify_all(&Silent).unwrap().is_empty());
    }
    assert!(!reg.log().contains("panic"), "registry log:\n{}", reg.log());
}

/// Two pushers of one entry at once: both succeed, and the cache holds one valid claim.
#[test]
fn oci_concurrent_pushes_of_one_entry() {
    let Some(reg) = Registry::start() else { return };
    let url = reg.url(REPO);
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let e = big_entry(&a, "shared", 3);
    let key = Digest::of(b"shared key");
    let signer = SecretKey::generate("test-1").unwrap();
    let barrier = std::sync::Barrier::new(2);
    let claims: Vec<cache::Claim> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let c = oci(&url);
                    barrier.wait();
                    cache::upload(c.as_ref(), &key, &e, Some(&signer)).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(claims[0], claims[1]);
    let c = oci(&url);
    assert_eq!(c.list().unwrap(), vec![claims[0].clone()]);
    let fresh = store(&dir.path().join("fresh"));
    let got = cache::substitute(&[c], &fresh, &key, &[signer.public()], &Silent).unwrap();
    assert_eq!(got.unwrap().entry.meta.digest, e.meta.digest);
}

/// The CLI against a registry: `cache push` from one store, `cache ls`, `cache verify`,
/// `cache pull` into an empty store gives the same entry.
#[test]
fn oci_cache_commands_push_pull_list_and_verify() {
    let Some(reg) = Registry::start() else { return };
    let env = common::TestEnv::new();
    let dir = env.path();
    let url = reg.url("cli/entries");
    common::make_tree(&dir.join("tree"), 60, 300_000);
    let path = env.ok(&[
        "store",
        "add",
        dir.join("tree").to_str().unwrap(),
        "--name",
        "shared",
    ]);
    let file_name = std::path::Path::new(path.trim()).file_name().unwrap();
    let digest = format!("blake3:{}", &file_name.to_string_lossy()[..64]);
    let run = |store: &std::path::Path, args: &[&str]| {
        let out = env
            .cmd_with_store(store)
            .env("DOCKER_CONFIG", dir.join("docker"))
            .args(["--cache", &url])
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out, &args);
        String::from_utf8(out.stdout).unwrap()
    };
    run(&env.store(), &["cache", "push", "shared"]);
    let ls = run(&env.store(), &["cache", "ls"]);
    assert!(ls.contains("shared") && ls.contains(&url), "{ls}");
    run(&env.store(), &["cache", "verify"]);

    let other = dir.join("other-store");
    let pulled = run(&other, &["cache", "pull", &digest]);
    assert_eq!(
        std::path::Path::new(pulled.trim()).file_name(),
        Some(file_name)
    );
    let out = env
        .cmd_with_store(&other)
        .args(["store", "verify"])
        .output()
        .unwrap();
    common::assert_success(&out, &"store verify");
}

/// A registry asking for credentials: without them, the error says how to log in; with
/// them in `$DOCKER_CONFIG/config.json`, push and pull work.
#[test]
fn oci_cache_uses_docker_credentials() {
    // bcrypt("hunter2"), fixed salt: the registry accepts only bcrypt in htpasswd.
    let hash = "$2b$05$abcdefghijklmnopqrstuuoXuKqgZXLiJqzfmMXDDhSFPIvxV7t8.";
    let Some(reg) = Registry::start_with_htpasswd(&format!("ci:{hash}")) else {
        return;
    };
    let env = common::TestEnv::new();
    let dir = env.path();
    let url = reg.url(REPO);
    common::write(&dir.join("tree/a.txt"), b"secret stuff");
    env.ok(&[
        "store",
        "add",
        dir.join("tree").to_str().unwrap(),
        "--name",
        "private",
    ]);
    let push = |docker: &std::path::Path| {
        env.cmd()
            .env("DOCKER_CONFIG", docker)
            .args(["--cache", &url, "cache", "push", "private"])
            .output()
            .unwrap()
    };
    let out = push(&dir.join("no-docker-config"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&url) && err.contains(&format!("docker login 127.0.0.1:{}", reg.port)),
        "{err}"
    );
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci:hunter2");
    common::write(
        &dir.join("docker/config.json"),
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{auth}"}}}}}}"#,
            reg.port
        )
        .as_bytes(),
    );
    common::assert_success(&push(&dir.join("docker")), &"cache push with credentials");
    let out = env
        .cmd()
        .env("DOCKER_CONFIG", dir.join("docker"))
        .args(["--cache", &url, "cache", "ls"])
        .output()
        .unwrap();
    common::assert_success(&out, &"cache ls");
    assert!(String::from_utf8_lossy(&out.stdout).contains("private"));
}

// ---- docker-mirror between two registries ----

/// A multi-platform index built here (two platform manifests sharing a layer) is copied
/// from one registry to another: the same digests, every manifest and blob there; a second
/// run copies nothing; a source blob tampered on disk fails the copy before the tag moves.
#[test]
fn docker_mirror_copies_a_multi_platform_index_by_digest() {
    use dockerbuild::registry::{OciOptions, Repository, sha256_hex};
    use std::sync::Arc;
    let (Some(a), Some(b)) = (Registry::start(), Registry::start()) else {
        return;
    };
    let src = Arc::new(
        Repository::open(
            "src",
            &format!("127.0.0.1:{}", a.port),
            "img",
            OciOptions::default(),
        )
        .unwrap(),
    );
    let push_blob = |bytes: &[u8]| {
        let d = sha256_hex(bytes);
        src.upload_blob_bytes(bytes, &d, "test blob").unwrap();
        serde_json::json!({"digest": d, "size": bytes.len()})
    };
    let shared = push_blob(&vec![7u8; 200_000]);
    let mut children = Vec::new();
    let mut blobs = vec![shared["digest"].as_str().unwrap().to_owned()];
    for arch in ["amd64", "arm64"] {
        let mut config =
            push_blob(format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).as_bytes());
        config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let mut own = push_blob(format!("{arch} layer").repeat(5000).as_bytes());
        let mut shared = shared.clone();
        for l in [&mut own, &mut shared] {
            l["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        }
        blobs.extend([&config, &own].map(|d| d["digest"].as_str().unwrap().to_owned()));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [shared, own],
        }))
        .unwrap();
        let d = sha256_hex(&manifest);
        src.put_manifest(
            &d,
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
            "test",
        )
        .unwrap();
        children.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d,
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children,
    }))
    .unwrap();
    let index_digest = sha256_hex(&index);
    src.put_manifest(
        "v1",
        &index,
        "application/vnd.oci.image.index.v1+json",
        "test",
    )
    .unwrap();

    let env = common::TestEnv::new();
    let mirror = |to: &str| {
        env.cmd()
            .env("DOCKER_CONFIG", env.path().join("docker"))
            .args([
                "--json",
                "docker-mirror",
                &format!("127.0.0.1:{}/img:v1", a.port),
                &format!("127.0.0.1:{}/{to}", b.port),
            ])
            .output()
            .unwrap()
    };
    let out = mirror("copy/img");
    common::assert_success(&out, &"docker-mirror");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["digest"], index_digest.as_str(), "{report}");
    assert_eq!(report["manifests"], 3, "{report}");
    assert_eq!(report["blobs_copied"], 5, "{report}");

    let dst = Arc::new(
        Repository::open(
            "dst",
            &format!("127.0.0.1:{}", b.port),
            "copy/img",
            OciOptions::default(),
        )
        .unwrap(),
    );
    let got = dst
        .get_manifest("v1", &["application/vnd.oci.image.index.v1+json"], "test")
        .unwrap()
        .unwrap();
    assert_eq!(got.bytes, index, "the index, byte for byte");
    assert_eq!(got.digest, index_digest);
    for c in &children {
        let d = c["digest"].as_str().unwrap();
        assert!(
            dst.get_manifest(d, &dockerbuild::registry::MANIFEST_TYPES, "test")
                .unwrap()
                .is_some()
        );
    }
    for d in &blobs {
        assert!(dst.has_blob(d, "test").unwrap(), "{d}");
    }

    // Again: nothing to copy.
    let out = mirror("copy/img");
    common::assert_success(&out, &"docker-mirror again");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blobs_copied"], 0, "{report}");

    // A source blob changed on disk: refused, and the destination has no tag.
    flip_middle_byte(&a.blob_file(blobs.last().unwrap()));
    let out = mirror("tampered");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hash to"), "{err}");
    let bad = Repository::open(
        "bad",
        &format!("127.0.0.1:{}", b.port),
        "tampered",
        OciOptions::default(),
    )
    .unwrap();
    assert!(
        bad.get_manifest("v1", &dockerbuild::registry::MANIFEST_TYPES, "t")
            .unwrap()
            .is_none()
    );
}

/// A push whose registry dies for good fails, naming the cache; once the registry is back,
/// nothing of it is visible: no claim, no entry.
#[test]
fn oci_failed_push_publishes_nothing() {
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(reg.clone());
    let url = proxy.url(REPO);
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let impatient = OciOptions {
        retries: 2,
        ..quick()
    };
    let c = OciCache::with_options(&url, impatient).unwrap();
    let e = big_entry(&a, "doomed", 3);
    let key = Digest::of(b"doomed key");
    proxy.arm(Fault::StopAfterUpBytes(1_500_000));
    let err = cache::upload(&c, &key, &e, None).unwrap_err().to_string();
    eprintln!("failed push: {err}");
    assert!(err.contains(&url) && err.contains("doomed"), "{err}");
    reg.restart();
    let c = oci(&url);
    assert!(c.lookup(&key).unwrap().is_none());
    assert!(!c.has_entry(&e.meta.digest).unwrap());
    assert!(c.list().unwrap().is_empty());
}

/// The store remembers which keys it gave the first cache, so a run can say what was
/// built here but never uploaded without asking the cache.
#[test]
fn the_store_knows_what_was_never_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("store"));
    let a = entry(&s, "a", 2);
    let b = entry(&s, "b", 2);
    let (ka, kb) = (Digest::of(b"key a"), Digest::of(b"key b"));
    s.bind_key(&ka, &a.meta.digest).unwrap();
    s.bind_key(&kb, &b.meta.digest).unwrap();
    let url = format!("file://{}", dir.path().join("cache").display());
    let names = |s: &LocalStore| {
        s.never_uploaded(&url)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.meta.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&s), ["a", "b"]);
    let mut caches = cache::Caches::none();
    caches.caches.push(cache::open(&url).unwrap());
    caches.upload = true;
    caches.upload = false;
    caches.offer(&s, &kb, &b).unwrap();
    assert_eq!(
        caches.not_uploaded(&s),
        ["b"],
        "this run used b and kept it"
    );
    caches.upload = true;
    caches.offer(&s, &ka, &a).unwrap();
    assert_eq!(names(&s), ["b"], "a was uploaded");
    assert_eq!(
        caches.not_uploaded(&s),
        ["b"],
        "the run's report: a is there now"
    );
    assert!(caches.caches[0].lookup(&ka).unwrap().is_some());
    // Another cache has its own record.
    assert_eq!(s.never_uploaded("file:///elsewhere").unwrap().len(), 2);
}
