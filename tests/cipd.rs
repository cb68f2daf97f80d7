//! The `cipd://` binary cache backend against a fake CIPD server written from the protocol
//! notes (`support/cipd_fake.rs`), not the real service; and an opt-in live smoke test.

#[path = "support/cipd_fake.rs"]
mod cipd_fake;

use cipd_fake::{FakeCipd, Fault};

fn post(fake: &FakeCipd, method: &str, ct: &str, body: &[u8]) -> (u16, Option<String>, Vec<u8>) {
    post_as(fake, method, ct, body, None)
}

fn post_as(
    fake: &FakeCipd,
    method: &str,
    ct: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .post(format!("{}/prpc/{method}", fake.base))
        .header("Content-Type", ct);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send(body).unwrap();
    let code = resp
        .headers()
        .get("X-Prpc-Grpc-Code")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    (status, code, resp.body_mut().read_to_vec().unwrap())
}

/// The fake's own framing, driven by hand-written requests: JSON with the XSSI prefix,
/// snake_case input, errors as plain text with the gRPC code header, binary bodies
/// assembled byte by byte, injected proxy errors without the header.
#[test]
fn the_fake_speaks_prpc_as_the_notes_describe() {
    let fake = FakeCipd::start();
    fake.add_instance("a/pkg", b"zip bytes", &["version:1"]);
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:1"}"#,
    );
    assert_eq!((status, code.as_deref()), (200, Some("0")));
    let text = String::from_utf8(body).unwrap();
    let json = text.strip_prefix(")]}'\n").expect("XSSI prefix");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["instance"]["hashAlgo"], "SHA256");
    assert_eq!(v["package"], "a/pkg");

    // snake_case on input; a missing tag is NOT_FOUND as text.
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:2","unknown_field":1}"#,
    );
    assert_eq!((status, code.as_deref()), (404, Some("5")));
    assert_eq!(body, b"no such tag");

    // Binary: ResolveVersionRequest{1: "a/pkg", 2: "version:1"} by hand.
    let mut req = vec![0x0a, 5];
    req.extend(b"a/pkg");
    req.extend([0x12, 9]);
    req.extend(b"version:1");
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/prpc; encoding=binary",
        &req,
    );
    assert_eq!((status, code.as_deref()), (200, Some("0")));
    // Instance{1: package, 2: ObjectRef{1: 2 (SHA256), 2: hex}, 3: registered_by}
    assert_eq!(&body[..7], &[0x0a, 5, b'a', b'/', b'p', b'k', b'g']);
    assert_eq!(&body[7..11], &[0x12, 68, 0x08, 2]);

    // RegisterInstance in JSON: enum names, camelCase, the operation bound to its caller.
    let hex = "07bafbe63a0e7c57c572aedf1c228022b537e28785013d7be017fc78731a8cc5";
    let reg = format!(r#"{{"package":"a/new","instance":{{"hash_algo":2,"hex_digest":"{hex}"}}}}"#);
    let (status, code, body) = post(
        &fake,
        "cipd.Repository/RegisterInstance",
        "application/json",
        reg.as_bytes(),
    );
    assert_eq!(
        (status, code.as_deref()),
        (403, Some("7")),
        "anonymous writes are refused"
    );
    assert!(String::from_utf8_lossy(&body).contains("not allowed to write"));
    let (status, _, body) = post_as(
        &fake,
        "cipd.Repository/RegisterInstance",
        "application/json",
        reg.as_bytes(),
        Some(cipd_fake::WRITER_TOKEN),
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body[5..]).unwrap();
    assert_eq!(v["status"], "NOT_UPLOADED");
    assert_eq!(v["uploadOp"]["status"], "UPLOADING");
    let op = v["uploadOp"]["operationId"].as_str().unwrap().to_owned();
    let finish = format!(r#"{{"uploadOperationId":"{op}"}}"#);
    for (token, want) in [
        (Some(cipd_fake::READER_TOKEN), Some("5")),
        (None, Some("5")),
    ] {
        let (_, code, body) = post_as(
            &fake,
            "cipd.Storage/FinishUpload",
            "application/json",
            finish.as_bytes(),
            token,
        );
        assert_eq!(code.as_deref(), want, "{}", String::from_utf8_lossy(&body));
    }
    // Nothing was uploaded: the first poll errs the operation.
    let (_, _, body) = post_as(
        &fake,
        "cipd.Storage/FinishUpload",
        "application/json",
        finish.as_bytes(),
        Some(cipd_fake::WRITER_TOKEN),
    );
    let v: serde_json::Value = serde_json::from_slice(&body[5..]).unwrap();
    assert_eq!(v["status"], "ERRORED");
    assert_eq!(v["errorMessage"], "upload not finished");

    let (status, code, _) = post(&fake, "cipd.Repository/Nope", "application/json", b"{}");
    assert_eq!((status, code.as_deref()), (501, Some("12")));

    fake.fault("ResolveVersion", Fault::Http(502), 1);
    let (status, code, _) = post(
        &fake,
        "cipd.Repository/ResolveVersion",
        "application/json",
        br#"{"package":"a/pkg","version":"version:1"}"#,
    );
    assert_eq!((status, code), (502, None));
}

// ---------------------------------------------------------------------------------------
// The client against injected faults: each either heals by retrying, or fails naming the
// cache and the thing, leaving the store as it was.

#[path = "support/cipd_options.rs"]
mod cipd_options;
mod common;

use dockerbuild::cache::{self, Cache, CacheError, CipdCache};
use dockerbuild::digest::Digest;
use dockerbuild::progress::Silent;
use dockerbuild::signing::SecretKey;
use dockerbuild::store::{Entry, Kind, LocalStore, NewEntry, Store};

struct Setup {
    fake: FakeCipd,
    url: String,
    key: Digest,
    entry: Entry,
    dir: tempfile::TempDir,
    _src: LocalStore,
}

impl Setup {
    /// A fake holding one pushed entry under `key`.
    fn new() -> Setup {
        let fake = FakeCipd::start();
        let url = fake.url("team/cache");
        let dir = tempfile::tempdir().unwrap();
        let src = LocalStore::open(&dir.path().join("src")).unwrap();
        let tree = dir.path().join("tree");
        for i in 0..12 {
            common::write(
                &tree.join(format!("f{i}")),
                format!("victim {i}").repeat(200 + i).as_bytes(),
            );
        }
        let entry = src
            .add_path(&tree, &NewEntry::new("victim", Kind::Output), &Silent)
            .unwrap();
        let key = Digest::of(b"fault key");
        let s = Setup {
            fake,
            url,
            key,
            entry,
            dir,
            _src: src,
        };
        cache::upload(&s.cache(), &key, &s.entry, None).unwrap();
        s
    }

    fn cache(&self) -> CipdCache {
        CipdCache::open_with(&self.url, cipd_options::fast()).unwrap()
    }

    fn anonymous(&self) -> CipdCache {
        let mut o = cipd_options::fast();
        o.token = None;
        CipdCache::open_with(&self.url, o).unwrap()
    }

    fn store(&self, name: &str) -> LocalStore {
        LocalStore::open(&self.dir.path().join(name)).unwrap()
    }

    /// Substitutes the key into a fresh store.
    fn substitute(
        &self,
        name: &str,
    ) -> (Result<Option<cache::Substituted>, CacheError>, LocalStore) {
        let store = self.store(name);
        let caches: Vec<Box<dyn Cache>> = vec![Box::new(self.cache())];
        (
            cache::substitute(&caches, &store, &self.key, &[], &Silent),
            store,
        )
    }

    /// Substitution fails naming the cache and `needles`; the store stays empty.
    fn fails(&self, name: &str, needles: &[&str]) -> String {
        let (r, store) = self.substitute(name);
        let msg = r.expect_err("the substitution fails").to_string();
        assert!(msg.contains(&self.url), "{name}: names the cache: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{name}: mentions `{n}`: {msg}");
        }
        assert!(
            store.list().unwrap().is_empty(),
            "{name}: nothing entered the store"
        );
        msg
    }

    fn heals(&self, name: &str) {
        let (r, _) = self.substitute(name);
        let got = r.unwrap().expect("a hit");
        assert_eq!(got.entry.meta.digest, self.entry.meta.digest, "{name}");
    }
}

#[test]
fn transient_5xx_and_429_are_retried_then_reported() {
    let s = Setup::new();
    s.fake.fault("ResolveVersion", Fault::Http(503), 2);
    s.fake.fault(
        "GetInstanceURL",
        Fault::Grpc(cipd_fake::UNAVAILABLE, "try later"),
        1,
    );
    s.fake.fault("download", Fault::Http(500), 1);
    s.fake.fault(
        "ResolveVersion",
        Fault::Grpc(cipd_fake::RESOURCE_EXHAUSTED, "slow down"),
        1,
    );
    s.heals("retried");

    s.fake.fault("ResolveVersion", Fault::Http(502), 100);
    let msg = s.fails(
        "5xx",
        &["HTTP 502", "dockerbuild_key:", "team/cache/v1/claims"],
    );
    assert!(msg.contains("hint:"), "{msg}");
    s.fake.clear_faults();
    s.fake.fault(
        "ResolveVersion",
        Fault::Grpc(cipd_fake::RESOURCE_EXHAUSTED, "quota"),
        100,
    );
    s.fails("429", &["RESOURCE_EXHAUSTED", "quota"]);
    s.fake.clear_faults();
    // A proxy's 4xx without the gRPC header is not retried.
    s.fake.fault("ResolveVersion", Fault::Http(403), 1);
    s.fails("proxy-403", &["HTTP 403 without a gRPC code"]);
    s.heals("after");
}

#[test]
fn truncated_and_altered_downloads_are_refused() {
    let s = Setup::new();
    // A truncated download is retried from the start.
    s.fake.fault("download", Fault::Truncate, 1);
    s.heals("truncated-once");
    s.fake.fault("download", Fault::Truncate, 100);
    s.fails(
        "truncated",
        &["download the claim for key", "team/cache/v1/claims"],
    );
    s.fake.clear_faults();
    // Altered bytes do not hash to the instance ID.
    s.fake.fault("download", Fault::WrongBytes, 1);
    s.fails("altered-claim", &["not to the instance ID", "v1/claims"]);
    // The entry's instance replaced in storage: caught by the instance ID before the
    // store sees a byte.
    let hex = s.fake.instances("team/cache/v1/entries")[0].hex.clone();
    let good = s.fake.blob(&hex).unwrap();
    let mut bad = good.clone();
    let n = bad.len() / 2;
    bad[n] ^= 1;
    s.fake.replace_blob(&hex, bad);
    s.fails(
        "rotten-entry",
        &["not to the instance ID", "v1/entries", "entry blake3:"],
    );
    s.fake.replace_blob(&hex, good);
    s.heals("restored");
}

#[test]
fn an_ambiguous_tag_is_an_error_naming_it() {
    let s = Setup::new();
    let tag = format!("dockerbuild_key:{}", s.key.to_hex());
    s.fake
        .add_instance("team/cache/v1/claims", b"another claim", &[&tag]);
    s.fails("ambiguous", &["FAILED_PRECONDITION", &tag, "ambiguity"]);
}

#[test]
fn uploads_resume_and_wait_for_verification_and_processing() {
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let src = LocalStore::open(dir.path()).unwrap();
    let tree = dir.path().join("t");
    common::write(
        &tree.join("big"),
        &(0..20_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let e = src
        .add_path(&tree, &NewEntry::new("resumed", Kind::Output), &Silent)
        .unwrap();
    s.fake.fault("upload", Fault::Http(503), 2);
    s.fake.fault(
        "RegisterInstance",
        Fault::Grpc(cipd_fake::INTERNAL, "oops"),
        1,
    );
    s.fake.set_verify_polls(3);
    s.fake.set_processing_rounds(3);
    let key = Digest::of(b"resumed key");
    cache::upload(&s.cache(), &key, &e, None).unwrap();
    assert!(
        s.fake
            .log()
            .iter()
            .any(|l| l.starts_with("upload bytes */")),
        "asked where to resume: {:?}",
        s.fake.log()
    );
    assert_eq!(
        s.cache().lookup(&key).unwrap().unwrap().digest,
        e.meta.digest
    );

    // Still processing past the deadline: a clear error; the bytes are there, so a later
    // push only tags.
    let mut o = cipd_options::fast();
    o.processing_timeout = std::time::Duration::from_millis(30);
    s.fake.set_processing_rounds(1000);
    let key2 = Digest::of(b"slow key");
    let slow = CipdCache::open_with(&s.url, o).unwrap();
    let msg = cache::upload(&slow, &key2, &e, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("still being processed") && msg.contains(&s.url),
        "{msg}"
    );
    assert!(
        s.cache().lookup(&key2).unwrap().is_none(),
        "no claim was published"
    );

    // An upload URL that accepts nothing: a clear error after the retries.
    s.fake.set_processing_rounds(0);
    s.fake.fault("upload", Fault::Http(308), 1000);
    let stuck = src
        .add_path(&tree, &NewEntry::new("stuck", Kind::Output), &Silent)
        .unwrap();
    let msg = cache::upload(&s.cache(), &Digest::of(b"k4"), &stuck, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("stalled") && msg.contains("upload instance"),
        "{msg}"
    );
    s.fake.clear_faults();

    // Bytes altered on the way up: the service's verification refuses them.
    s.fake.set_processing_rounds(0);
    let other = src
        .add_path(
            &tree.join("big"),
            &NewEntry::new("mangled", Kind::Output),
            &Silent,
        )
        .unwrap();
    s.fake.fault("upload", Fault::WrongBytes, 1);
    let msg = cache::upload(&s.cache(), &Digest::of(b"k3"), &other, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("ERRORED") && msg.contains("hash mismatch"),
        "{msg}"
    );
    assert!(!s.cache().has_entry(&other.meta.digest).unwrap());
}

#[test]
fn permission_denied_says_how_to_authenticate() {
    let s = Setup::new();
    // Anonymous writes are refused, with a hint naming the token variable.
    let key = Digest::of(b"anonymous push");
    let msg = cache::upload(&s.anonymous(), &key, &s.entry, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("PERMISSION_DENIED") && msg.contains("DOCKERBUILD_CIPD_TOKEN"),
        "{msg}"
    );
    assert!(msg.contains(&s.url), "{msg}");
    // Anonymous reads work until the prefix is private.
    assert!(s.anonymous().lookup(&s.key).unwrap().is_some());
    s.fake.set_anonymous_read(false);
    let store = s.store("private");
    let caches: Vec<Box<dyn Cache>> = vec![Box::new(s.anonymous())];
    let msg = cache::substitute(&caches, &store, &s.key, &[], &Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("not visible to unauthenticated callers"),
        "{msg}"
    );
    assert!(msg.contains("DOCKERBUILD_CIPD_TOKEN"), "{msg}");
    assert!(store.list().unwrap().is_empty());
    // A bad token is UNAUTHENTICATED.
    let mut o = cipd_options::fast();
    o.token = Some("expired".into());
    let msg = CipdCache::open_with(&s.url, o)
        .unwrap()
        .lookup(&s.key)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("UNAUTHENTICATED"), "{msg}");
}

#[test]
fn a_failed_processor_is_reported() {
    let s = Setup::new();
    s.fake.fault(
        "AttachTags",
        Fault::Grpc(10, "processor failed: broken instance"),
        1,
    );
    let msg = cache::upload(&s.cache(), &Digest::of(b"k"), &s.entry, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("ABORTED") && msg.contains("broken instance"),
        "{msg}"
    );
    assert!(
        msg.contains("tag instance") && msg.contains(&s.url),
        "{msg}"
    );
}

#[test]
fn a_key_keeps_its_first_claim() {
    let s = Setup::new();
    let signer = SecretKey::generate("other").unwrap();
    let msg = cache::upload(&s.cache(), &s.key, &s.entry, Some(&signer))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("different claim") && msg.contains(&s.url),
        "{msg}"
    );
}

/// `dockerbuild cipd ensure-file`: an ensure file on stdout, the versions file on disk.
#[test]
fn ensure_file_command_prints_pins_and_writes_the_versions_file() {
    let env = common::TestEnv::new();
    let iid = "B7r75joOfFfFcq7fHCKAIrU34oeFAT174Bf8eHMajMUC";
    let vf = env.path().join("cipd.versions");
    let out = env.ok(&[
        "cipd",
        "ensure-file",
        &format!("infra/tools/thing/linux-amd64=git_revision:deadbeef={iid}"),
        "--wheel",
        &format!("numpy/linux-arm64_cp311_cp311=1.26.4={iid}"),
        "--wheel",
        &format!("six=1.16.0={iid}"),
        "--versions-file",
        vf.to_str().unwrap(),
    ]);
    assert!(
        out.contains(&format!("$ResolvedVersions {}\n", vf.display())),
        "{out}"
    );
    assert!(
        out.contains("infra/python/wheels/numpy/linux-arm64_cp311_cp311 version:1.26.4\n"),
        "{out}"
    );
    assert!(
        out.contains("infra/python/wheels/six-py3 version:1.16.0\n"),
        "{out}"
    );
    let versions = std::fs::read_to_string(&vf).unwrap();
    assert!(
        versions.contains(&format!(
            "\ninfra/python/wheels/six-py3\n\tversion:1.16.0\n\t{iid}\n"
        )),
        "{versions}"
    );
    // Without instance IDs there is no versions file to write.
    let err = env.fails(&[
        "cipd",
        "ensure-file",
        "--wheel",
        "six=1.16.0",
        "--versions-file",
        vf.to_str().unwrap(),
    ]);
    assert!(err.contains("needs its instance ID"), "{err}");
    let err = env.fails(&["cipd", "ensure-file", "Bad/Name=latest"]);
    assert!(err.contains("not a valid CIPD package name"), "{err}");
}

/// Opt-in (`DOCKERBUILD_CIPD_LIVE=1`, with `DOCKERBUILD_CIPD_LIVE_SERVICE=HOST`,
/// `DOCKERBUILD_CIPD_LIVE_PACKAGE` and `DOCKERBUILD_CIPD_LIVE_VERSION`, e.g. a public
/// package at `latest`): resolves and downloads a public package anonymously and checks
/// its instance ID. Prints "not run" otherwise; CI machines cannot reach the service.
#[test]
fn live_anonymous_resolve_and_download() {
    if std::env::var("DOCKERBUILD_CIPD_LIVE").as_deref() != Ok("1") {
        eprintln!("live CIPD smoke test: not run (set DOCKERBUILD_CIPD_LIVE=1 to run it)");
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
    let service = var("DOCKERBUILD_CIPD_LIVE_SERVICE");
    let package = var("DOCKERBUILD_CIPD_LIVE_PACKAGE");
    let version = std::env::var("DOCKERBUILD_CIPD_LIVE_VERSION").unwrap_or("latest".into());
    let mut o = dockerbuild::cache::cipd::CipdOptions::default();
    o.retry.retries = 2;
    let c = CipdCache::open_with(&format!("cipd://{service}/dockerbuild/cache"), o).unwrap();
    let (iid, size) = c.fetch_instance(&package, &version).unwrap();
    eprintln!("live CIPD smoke test: {package}@{version} = {iid} ({size} bytes), verified");
    assert!(iid.ends_with('C') || iid.len() == 40, "{iid}");
}

/// What the live test does, against the fake: resolve a ref anonymously, download,
/// verify the instance ID.
#[test]
fn fetch_instance_resolves_a_ref_anonymously_on_the_fake() {
    let fake = FakeCipd::start();
    let hex = fake.add_instance("infra/tools/thing/linux-amd64", b"some zip", &[]);
    fake.set_ref("infra/tools/thing/linux-amd64", "latest", &hex);
    let mut o = cipd_options::fast();
    o.token = None;
    let c = CipdCache::open_with(&fake.url("x"), o).unwrap();
    let (iid, size) = c
        .fetch_instance("infra/tools/thing/linux-amd64", "latest")
        .unwrap();
    assert_eq!(size, 8);
    let want = dockerbuild::cache::cipd::package::InstanceId::sha256(
        hex::decode(&hex).unwrap().try_into().unwrap(),
    );
    assert_eq!(iid, want.to_text());
    assert!(
        c.fetch_instance("infra/tools/thing/linux-amd64", "nope")
            .is_err()
    );
}

/// The token can come from the config's `cipd-token-file`; an unreadable one is an error
/// naming the file.
#[test]
fn the_token_file_from_config_authenticates_pushes() {
    if std::env::var_os("DOCKERBUILD_CIPD_TOKEN").is_some() {
        eprintln!("skipped: DOCKERBUILD_CIPD_TOKEN is set and takes precedence");
        return;
    }
    let fake = FakeCipd::start();
    let url = fake.url("team/cache");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", cipd_fake::WRITER_TOKEN)).unwrap();
    let config = dockerbuild::config::Config {
        cipd_token_file: Some(token),
        ..Default::default()
    };
    let c = cache::open_with_config(&url, &config).unwrap();
    let store = LocalStore::open(&dir.path().join("s")).unwrap();
    common::write(&dir.path().join("t/a"), b"a");
    let e = store
        .add_path(
            &dir.path().join("t"),
            &NewEntry::new("a", Kind::Output),
            &Silent,
        )
        .unwrap();
    cache::upload(c.as_ref(), &Digest::of(b"k"), &e, None).unwrap();
    let missing = dockerbuild::config::Config {
        cipd_token_file: Some(dir.path().join("nope")),
        ..Default::default()
    };
    let msg = cache::open_with_config(&url, &missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("cipd-token-file") && msg.contains(&url),
        "{msg}"
    );
}

/// An independent reader (Python's `zipfile`) sees an instance the way the notes say
/// CIPD writes one, and computes the same instance ID.
#[test]
fn python_reads_instances_as_cipd_lays_them_out() {
    use dockerbuild::cache::cipd::package::{self, InstanceId, Source};
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg("import zipfile")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::available("python3", ok) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.zip");
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let sha = package::build(
        &mut f,
        "team/cache/v1/entries",
        &[("entry.tar.zst", Source::Bytes(&[7u8; 5000]))],
    )
    .unwrap();
    drop(f);
    let script = r#"
import base64, hashlib, json, sys, zipfile
data = open(sys.argv[1], 'rb').read()
iid = base64.urlsafe_b64encode(hashlib.sha256(data).digest() + b'\x02').decode().rstrip('=')
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
files = [dict(name=i.filename, system=i.create_system, mode=i.external_attr >> 16,
              low=i.external_attr & 0xffff, method=i.compress_type, extra=len(i.extra),
              size=i.file_size)
         for i in z.infolist()]
print(json.dumps(dict(iid=iid, files=files,
                      manifest=json.loads(z.read('.cipdpkg/manifest.json')))))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    common::assert_success(&out, &"python3 zipfile");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["iid"], InstanceId::sha256(sha).to_text());
    let files = v["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["entry.tar.zst", ".cipdpkg/manifest.json"]);
    for f in files {
        assert_eq!(f["system"], 3, "creator Unix: {f}");
        assert_eq!(f["mode"], 0o100400, "S_IFREG|0400: {f}");
        assert_eq!(f["low"], 1, "MS-DOS read-only: {f}");
        assert_eq!(f["method"], 0, "Stored: {f}");
        assert_eq!(f["extra"], 0, "no extra fields: {f}");
    }
    assert_eq!(files[0]["size"], 5000);
    assert_eq!(v["manifest"]["format_version"], "1.1");
    assert_eq!(v["manifest"]["package_name"], "team/cache/v1/entries");
}

/// The binary end to end against the fake: `cache push` with the token from the
/// environment, `cache ls`, `cache pull` into another store, `cache verify`.
#[test]
fn cache_commands_work_against_the_fake() {
    let fake = FakeCipd::start();
    let url = fake.url("team/cache");
    let env = common::TestEnv::new();
    let dir = env.path();
    common::write(&dir.join("tree/a.txt"), b"hello cipd");
    let run = |store: &std::path::Path, args: &[&str]| {
        let out = env
            .cmd_with_store(store)
            .env("DOCKERBUILD_CIPD_TOKEN", cipd_fake::WRITER_TOKEN)
            .args(["--cache", &url])
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out, &args);
        String::from_utf8(out.stdout).unwrap()
    };
    let store = env.store();
    let path = run(
        &store,
        &[
            "store",
            "add",
            dir.join("tree").to_str().unwrap(),
            "--name",
            "shared",
        ],
    );
    let hex = &std::path::Path::new(path.trim())
        .file_name()
        .unwrap()
        .to_string_lossy()[..64]
        .to_owned();
    run(&store, &["cache", "push", "shared"]);
    let ls = run(&store, &["cache", "ls"]);
    assert!(ls.contains("shared") && ls.contains(&url), "{ls}");
    run(&store, &["cache", "verify"]);
    let other = dir.join("other-store");
    let pulled = run(&other, &["cache", "pull", &format!("blake3:{hex}")]);
    assert_eq!(
        std::fs::read(std::path::Path::new(pulled.trim()).join("a.txt")).unwrap(),
        b"hello cipd"
    );
    assert_eq!(fake.instances("team/cache/v1/entries").len(), 1);
}

// ---------------------------------------------------------------------------------------
// Publishing wheels under vpython's names.

use dockerbuild::cache::cipd::wheels::{Outcome, WheelTarget};

/// A small but real wheel: a module and its dist-info, zipped.
fn write_wheel(dir: &std::path::Path, file_name: &str, body: &str) -> std::path::PathBuf {
    use std::io::Write as _;
    let (dist, ver) = {
        let mut p = file_name.split('-');
        (p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
    };
    let path = dir.join(file_name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let o = zip::write::SimpleFileOptions::default();
    let info = format!("{dist}-{ver}.dist-info");
    let files = [
        (format!("{}.py", dist.to_lowercase()), body.to_owned()),
        (
            format!("{info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {ver}\n"),
        ),
        (
            format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n".to_owned(),
        ),
        (format!("{info}/RECORD"), String::new()),
    ];
    for (n, b) in files {
        z.start_file(n, o).unwrap();
        z.write_all(b.as_bytes()).unwrap();
    }
    z.finish().unwrap();
    path
}

fn iid_of_hex(hex: &str) -> String {
    dockerbuild::cache::cipd::package::InstanceId::sha256(
        hex::decode(hex).unwrap().try_into().unwrap(),
    )
    .to_text()
}

/// The files of the instance `hex` as the fake stores it.
fn instance_files(fake: &FakeCipd, hex: &str) -> Vec<String> {
    let bytes = fake.blob(hex).expect("the fake has the instance's bytes");
    let z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = z.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn publishing_wheels_creates_vpython_packages_tags_and_refs() {
    let fake = FakeCipd::start();
    let dir = tempfile::tempdir().unwrap();
    let c = CipdCache::open_with(&fake.url("team/cache"), cipd_options::fast()).unwrap();
    let universal = write_wheel(dir.path(), "six-1.16.0-py2.py3-none-any.whl", "# six");
    let platform = write_wheel(
        dir.path(),
        "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "# speedups",
    );
    let arm = WheelTarget::Platform {
        cipd_platform: "linux-arm64".into(),
        python: "3.11".into(),
    };
    let cases = [
        (
            "six",
            "1.16.0",
            WheelTarget::Universal,
            &universal,
            "infra/python/wheels/six-py3",
            "six-1.16.0-py3-none-any.whl",
            ["latest", "1.x", "1.16.x"],
        ),
        (
            "MarkupSafe",
            "2.1.5",
            arm,
            &platform,
            "infra/python/wheels/markupsafe/linux-arm64_cp311_cp311",
            "MarkupSafe-2.1.5-py2.py3-none-any.whl",
            ["latest", "2.x", "2.1.x"],
        ),
    ];
    for (name, version, target, wheel, package, inside, refs) in cases {
        let p = c
            .publish_wheel(name, version, &target, std::slice::from_ref(wheel))
            .unwrap();
        assert_eq!(p.package, package);
        assert_eq!(p.version, format!("version:{version}"));
        assert_eq!(p.outcome, Outcome::Uploaded);
        assert_eq!(p.refs, refs);
        let instances = fake.instances(package);
        assert_eq!(instances.len(), 1, "{package}");
        let hex = &instances[0].hex;
        assert_eq!(iid_of_hex(hex), p.instance_id);
        assert!(
            instances[0].tags.contains(&format!("version:{version}")),
            "{:?}",
            instances[0].tags
        );
        assert_eq!(
            instance_files(&fake, hex),
            [".cipdpkg/manifest.json".to_owned(), inside.to_owned()]
        );
        for r in refs {
            assert_eq!(
                fake.ref_hex(package, r).as_deref(),
                Some(hex.as_str()),
                "{r}"
            );
            let (iid, _) = c.fetch_instance(package, r).unwrap();
            assert_eq!(iid, p.instance_id, "ref {r} resolves to the new instance");
        }

        // Again: the same instance, registered (no upload), tags and refs unchanged.
        let uploads_before = fake
            .log()
            .iter()
            .filter(|l| l.starts_with("upload"))
            .count();
        let again = c
            .publish_wheel(name, version, &target, std::slice::from_ref(wheel))
            .unwrap();
        assert_eq!(again.instance_id, p.instance_id);
        assert_eq!(again.outcome, Outcome::Registered);
        assert_eq!(fake.instances(package).len(), 1);
        let uploads_after = fake
            .log()
            .iter()
            .filter(|l| l.starts_with("upload"))
            .count();
        assert_eq!(uploads_before, uploads_after, "nothing uploaded again");
    }
}

/// A version already published with other bytes is left alone: a second instance would
/// make `version:` ambiguous.
#[test]
fn a_published_version_is_kept_when_the_bytes_differ() {
    let fake = FakeCipd::start();
    let dir = tempfile::tempdir().unwrap();
    let c = CipdCache::open_with(&fake.url("team/cache"), cipd_options::fast()).unwrap();
    let first = write_wheel(dir.path(), "six-1.16.0-py3-none-any.whl", "# one");
    let p = c
        .publish_wheel("six", "1.16.0", &WheelTarget::Universal, &[first])
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let second = write_wheel(other.path(), "six-1.16.0-py3-none-any.whl", "# two");
    let again = c
        .publish_wheel("six", "1.16.0", &WheelTarget::Universal, &[second])
        .unwrap();
    assert_eq!(again.outcome, Outcome::Kept);
    assert_eq!(again.instance_id, p.instance_id);
    assert!(again.refs.is_empty());
    assert_eq!(fake.instances("infra/python/wheels/six-py3").len(), 1);
}

#[test]
fn publishing_a_wheel_without_write_access_is_permission_denied() {
    let fake = FakeCipd::start();
    let dir = tempfile::tempdir().unwrap();
    let wheel = write_wheel(dir.path(), "six-1.16.0-py3-none-any.whl", "# six");
    let mut o = cipd_options::fast();
    o.token = None;
    let anonymous = CipdCache::open_with(&fake.url("team/cache"), o).unwrap();
    let msg = anonymous
        .publish_wheel(
            "six",
            "1.16.0",
            &WheelTarget::Universal,
            std::slice::from_ref(&wheel),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("PERMISSION_DENIED"), "{msg}");
    assert!(msg.contains("infra/python/wheels/six-py3"), "{msg}");
    assert!(msg.contains("DOCKERBUILD_CIPD_TOKEN"), "{msg}");
    let mut o = cipd_options::fast();
    o.token = Some(cipd_fake::READER_TOKEN.into());
    let reader = CipdCache::open_with(&fake.url("team/cache"), o).unwrap();
    let msg = reader
        .publish_wheel("six", "1.16.0", &WheelTarget::Universal, &[wheel])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("PERMISSION_DENIED") && msg.contains("WRITER"),
        "{msg}"
    );
    assert!(fake.instances("infra/python/wheels/six-py3").is_empty());
}

/// Publishing waits out pending processors before tagging and setting refs.
#[test]
fn publishing_a_wheel_waits_for_processing() {
    let fake = FakeCipd::start();
    fake.set_processing_rounds(3);
    let dir = tempfile::tempdir().unwrap();
    let wheel = write_wheel(dir.path(), "six-1.16.0-py3-none-any.whl", "# six");
    let c = CipdCache::open_with(&fake.url("team/cache"), cipd_options::fast()).unwrap();
    let p = c
        .publish_wheel("six", "1.16.0", &WheelTarget::Universal, &[wheel])
        .unwrap();
    let hex = &fake.instances("infra/python/wheels/six-py3")[0].hex;
    assert_eq!(iid_of_hex(hex), p.instance_id);
    assert_eq!(
        fake.ref_hex("infra/python/wheels/six-py3", "latest")
            .as_deref(),
        Some(hex.as_str())
    );
    // CreateRef itself answering FAILED_PRECONDITION is waited out too; ABORTED (a
    // failed processor) is reported naming the ref and the package.
    fake.fault(
        "CreateRef",
        Fault::Grpc(9, "the instance is not ready yet: pending processors"),
        2,
    );
    let dir2 = tempfile::tempdir().unwrap();
    let wheel = write_wheel(dir2.path(), "six-1.17.0-py3-none-any.whl", "# six 1.17");
    let p = c
        .publish_wheel("six", "1.17.0", &WheelTarget::Universal, &[wheel])
        .unwrap();
    assert_eq!(p.refs, ["latest", "1.x", "1.17.x"]);
    fake.fault(
        "CreateRef",
        Fault::Grpc(10, "processor failed: broken instance"),
        1,
    );
    let wheel = write_wheel(dir2.path(), "six-1.18.0-py3-none-any.whl", "# six 1.18");
    let msg = c
        .publish_wheel("six", "1.18.0", &WheelTarget::Universal, &[wheel])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("ABORTED")
            && msg.contains("set ref `latest`")
            && msg.contains("infra/python/wheels/six-py3"),
        "{msg}"
    );
}

/// The fake's CreateRef, driven by hand: WRITER only, a valid ref name, an existing
/// instance.
#[test]
fn the_fake_creates_refs_as_the_notes_describe() {
    let fake = FakeCipd::start();
    let hex = fake.add_instance("a/pkg", b"zip bytes", &[]);
    let body = |name: &str, hex: &str| {
        format!(
            r#"{{"name":"{name}","package":"a/pkg","instance":{{"hashAlgo":"SHA256","hexDigest":"{hex}"}}}}"#
        )
    };
    let json = "application/json";
    let call = |b: String, token| {
        post_as(
            &fake,
            "cipd.Repository/CreateRef",
            json,
            b.as_bytes(),
            token,
        )
        .1
    };
    let writer = Some(cipd_fake::WRITER_TOKEN);
    assert_eq!(call(body("latest", &hex), None).as_deref(), Some("7"));
    assert_eq!(
        call(body("latest", &hex), Some(cipd_fake::READER_TOKEN)).as_deref(),
        Some("7")
    );
    assert_eq!(call(body("Bad Ref", &hex), writer).as_deref(), Some("3"));
    assert_eq!(
        call(body("latest", &"0".repeat(64)), writer).as_deref(),
        Some("5")
    );
    assert_eq!(fake.ref_hex("a/pkg", "latest"), None);
    assert_eq!(call(body("latest", &hex), writer).as_deref(), Some("0"));
    assert_eq!(
        fake.ref_hex("a/pkg", "latest").as_deref(),
        Some(hex.as_str())
    );
}

/// What `wheel-build --upload` does after its run, without Docker: the wanted results
/// (a universal wheel, a platform wheel, an abi3 wheel, a failure and a dependency) go
/// to one package per CPython they serve; the rest go nowhere.
#[test]
fn wheel_build_results_are_published_under_vpython_names() {
    use dockerbuild::wheel::run::{JobResult, Status};
    use dockerbuild::wheel::{Catalogue, Platform, publish, spec::WheelSpec};
    let spec = |id: &str, text: &str| {
        let mut s: WheelSpec = toml::from_str(text).unwrap();
        s.id = id.to_owned();
        s
    };
    let catalogue = Catalogue {
        specs: vec![
            spec(
                "six",
                "name = \"six\"\nversion = \"1.16.0\"\nkind = \"universal\"\nwheel = \"six\"\n",
            ),
            spec(
                "markupsafe",
                "name = \"MarkupSafe\"\nversion = \"2.1.5\"\nkind = \"source\"\nsdist = \"markupsafe\"\n\
                 python = [\"3.11\", \"3.13\"]\nplatforms = [\"linux-arm64\"]\n",
            ),
            spec(
                "cryptography",
                "name = \"cryptography\"\nversion = \"43.0.0\"\nkind = \"source\"\nsdist = \"c\"\n\
                 python = [\"3.11\", \"3.13\"]\nplatforms = [\"linux-arm64\"]\nabi3 = true\n",
            ),
        ],
        platforms: vec![Platform {
            name: "linux-arm64".into(),
            wheel_tags: vec!["manylinux_2_17_aarch64".into()],
            cipd_platform: "linux-arm64".into(),
            buildable: true,
            cross: true,
        }],
        runners: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let result =
        |spec: &str, platform: &str, python: Option<&str>, wheel: Option<&str>| JobResult {
            label: format!("{spec} {platform}"),
            status: if wheel.is_some() {
                Status::Built
            } else {
                Status::Failed {
                    error: "boom".into(),
                }
            },
            spec: Some(spec.into()),
            platform: Some(platform.into()),
            python: python.map(str::to_owned),
            key: None,
            digest: None,
            path: None,
            wheels: wheel
                .map(|w| write_wheel(dir.path(), w, spec))
                .into_iter()
                .collect(),
            tags: Vec::new(),
            check: None,
            test: None,
            wanted: true,
        };
    let mut dependency = result("six", "any", None, Some("six-1.16.0-py3-none-any.whl"));
    dependency.wanted = false;
    let results = [
        result("six", "any", None, Some("six-1.16.0-py3-none-any.whl")),
        result(
            "markupsafe",
            "linux-arm64",
            Some("3.13"),
            Some("MarkupSafe-2.1.5-cp313-cp313-manylinux_2_17_aarch64.whl"),
        ),
        result("markupsafe", "linux-arm64", Some("3.11"), None),
        result(
            "cryptography",
            "linux-arm64",
            Some("3.11"),
            Some("cryptography-43.0.0-cp311-abi3-manylinux_2_17_aarch64.whl"),
        ),
        dependency,
    ];
    let fake = FakeCipd::start();
    let c = CipdCache::open_with(&fake.url("team/cache"), cipd_options::fast()).unwrap();
    let out = publish::publish(&c, &catalogue, &results);
    let mut packages: Vec<String> = out
        .into_iter()
        .map(|(label, r)| r.unwrap_or_else(|e| panic!("{label}: {e}")).package)
        .collect();
    packages.sort();
    assert_eq!(
        packages,
        [
            "infra/python/wheels/cryptography/linux-arm64_cp311_cp311",
            "infra/python/wheels/cryptography/linux-arm64_cp313_cp313",
            "infra/python/wheels/markupsafe/linux-arm64_cp313_cp313",
            "infra/python/wheels/six-py3",
        ]
    );
    let hex = &fake.instances("infra/python/wheels/cryptography/linux-arm64_cp313_cp313")[0].hex;
    assert_eq!(
        instance_files(&fake, hex),
        [
            ".cipdpkg/manifest.json",
            "cryptography-43.0.0-py2.py3-none-any.whl"
        ]
    );
}
