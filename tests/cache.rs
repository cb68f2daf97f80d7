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
