//! The Docker engine layer against a real daemon (`tests/setup-docker.sh` prepares one).
//!
//! The test image is made here, without any registry (see `fixtures/docker/README.md`).
//! Tests that run containers hold a shared lock on `$TMPDIR/dockerbuild-docker-tests.lock`;
//! the test of `Engine::clean_kind`, which removes every container and image of the test
//! kind on the daemon, holds it exclusively, so it never removes another test's container
//! (nextest runs each test in its own process). It leaves other kinds alone: `clean()`
//! itself would remove the images other suites (toolchains) load into the same daemon.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dockerbuild::docker::{
    ContainerSpec, DockerError, Engine, KIND_TEST, LABEL_KIND, LABEL_MANAGED, Mount,
};
use sha2::{Digest as _, Sha256};

const TAG: &str = "dockerbuild-test/busybox:1";
const APPLETS: &[&str] = &[
    "cat", "echo", "env", "hostname", "id", "ls", "sh", "sleep", "touch", "true", "wget",
];
/// Set in a child process to the name of the job it runs (see `child_*`).
const CHILD_ENV: &str = "DOCKERBUILD_DOCKER_TEST_CHILD";

// --- the image ---------------------------------------------------------------------------

/// Debian's statically linked busybox: the installed one, else downloaded with apt.
fn busybox() -> Option<&'static [u8]> {
    static BUSYBOX: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BUSYBOX
        .get_or_init(|| {
            let installed = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", "busybox-static"])
                .output()
                .is_ok_and(|o| o.stdout.ends_with(b"install ok installed"));
            if installed {
                return std::fs::read("/bin/busybox").ok();
            }
            let dir = tempfile::tempdir().ok()?;
            let got = Command::new("apt-get")
                .args(["download", "-q", "busybox-static"])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .status()
                .ok()?;
            let deb = std::fs::read_dir(dir.path())
                .ok()?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(".deb"))?;
            let root = dir.path().join("root");
            let unpacked = Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb.path())
                .arg(&root)
                .status()
                .ok()?;
            (got.success() && unpacked.success())
                .then(|| std::fs::read(root.join("bin/busybox")).ok())
                .flatten()
        })
        .as_deref()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(path, tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

/// The image as a `docker save` tar, and its ID. The same busybox gives the same bytes.
fn image_tar(busybox: &[u8]) -> (Vec<u8>, String) {
    let mut layer = tar::Builder::new(Vec::new());
    append_dir(&mut layer, "bin/", 0o755);
    append_file(&mut layer, "bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        let path = format!("bin/{applet}");
        let mut h = header(&path, tar::EntryType::Symlink, 0o777, 0);
        layer.append_link(&mut h, &path, "busybox").unwrap();
    }
    append_dir(&mut layer, "tmp/", 0o1777);
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256_hex(&layer);

    let template = include_str!("fixtures/docker/busybox-config.json");
    let config = template.replace("@LAYER_DIFF_ID@", &diff_id);
    let config_id = sha256_hex(config.as_bytes());
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [TAG],
        "Layers": [format!("{diff_id}/layer.tar")],
    }])
    .to_string();

    let mut image = tar::Builder::new(Vec::new());
    append_dir(&mut image, &format!("{diff_id}/"), 0o755);
    append_file(&mut image, &format!("{diff_id}/layer.tar"), 0o644, &layer);
    append_file(
        &mut image,
        &format!("{config_id}.json"),
        0o644,
        config.as_bytes(),
    );
    append_file(&mut image, "manifest.json", 0o644, manifest.as_bytes());
    (image.into_inner().unwrap(), format!("sha256:{config_id}"))
}

// --- the harness --------------------------------------------------------------------------

/// A connected engine with the test image loaded, holding the test lock.
struct Fixture {
    engine: Engine,
    image: String,
    _lock: std::fs::File,
}

fn lock(exclusive: bool) -> std::fs::File {
    let path = std::env::temp_dir().join("dockerbuild-docker-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the test lock");
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    rustix::fs::flock(&file, op).expect("lock the test lock");
    file
}

/// `None` (after saying why) when there is no daemon or no busybox; panics under CI=true.
fn fixture_with(exclusive: bool) -> Option<Fixture> {
    let engine = Engine::connect();
    if let Err(e) = &engine {
        eprintln!("{e}");
    }
    if !common::available("docker daemon", engine.is_ok()) {
        return None;
    }
    let busybox = busybox();
    if !common::available("busybox-static (Debian)", busybox.is_some()) {
        return None;
    }
    let lock = lock(exclusive);
    let engine = engine.unwrap();
    let (tar, id) = image_tar(busybox.unwrap());
    if !engine.image_exists(&id).unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        std::fs::write(&path, &tar).unwrap();
        let loaded = engine.load_image(&path).expect("load the test image");
        assert_eq!(loaded, id, "the image ID is the SHA-256 of its config");
    }
    Some(Fixture {
        engine,
        image: id,
        _lock: lock,
    })
}

fn fixture() -> Option<Fixture> {
    fixture_with(false)
}

impl Fixture {
    fn spec(&self, cmd: &[&str]) -> ContainerSpec {
        let mut spec = ContainerSpec::new(&self.image, cmd.iter().copied());
        spec.kind = KIND_TEST.to_owned();
        spec
    }

    /// Runs `spec`; returns the exit code and everything it printed.
    fn run(&self, spec: &ContainerSpec) -> (i64, String) {
        let mut seen = Vec::new();
        let out = self
            .engine
            .run(spec, &mut |b| seen.extend_from_slice(b))
            .expect("run the container");
        assert_eq!(
            out.tail, seen,
            "the tail is the whole output when it is short"
        );
        (out.exit_code, String::from_utf8(seen).unwrap())
    }
}

/// The Debian docker CLI (it speaks the daemon's API version).
fn docker_cli() -> Command {
    let cli = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    Command::new(cli)
}

fn container_exists(id: &str) -> bool {
    docker_cli()
        .args(["container", "inspect", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run docker")
        .success()
}

fn containers_labelled(label: &str) -> Vec<String> {
    let out = docker_cli()
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={label}"))
        .output()
        .expect("run docker ps");
    common::assert_success(&out, &"docker ps");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// Runs this test binary's ignored test `name` in a child process with `CHILD_ENV=name`.
fn child(name: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, name);
    c
}

fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

// --- the tests ----------------------------------------------------------------------------

#[test]
fn the_image_tar_is_the_same_every_time() {
    let Some(busybox) = busybox() else {
        common::available("busybox-static (Debian)", false);
        return;
    };
    let (a, id_a) = image_tar(busybox);
    let (b, id_b) = image_tar(busybox);
    assert_eq!(id_a, id_b);
    assert!(a == b, "two builds of the image tar differ");
}

#[test]
fn the_engine_negotiates_the_daemons_api_version() {
    let Some(f) = fixture() else { return };
    let info = f.engine.info();
    let version = |v: &str| -> (u32, u32) {
        let (a, b) = v.split_once('.').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert!(!info.version.is_empty(), "{info:?}");
    assert!(
        version(&info.api_version) <= version(&info.server_api_version),
        "{info:?}"
    );
    assert_eq!(info.os, "linux");
}

#[test]
fn true_exits_zero_and_the_container_is_gone() {
    let Some(f) = fixture() else { return };
    let label = unique("run");
    let mut spec = f.spec(&["true"]);
    spec.labels = BTreeMap::from([("org.dockerbuild.test-run".to_owned(), label.clone())]);
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        containers_labelled(&format!("org.dockerbuild.test-run={label}")),
        Vec::<String>::new()
    );
}

#[test]
fn the_exit_code_is_propagated_and_a_failed_container_is_removed() {
    let Some(f) = fixture() else { return };
    let (code, out) = f.run(&f.spec(&["sh", "-c", "hostname; exit 7"]));
    assert_eq!(code, 7);
    let id = out.trim();
    assert!(!id.is_empty());
    assert!(!container_exists(id), "container {id} is still there");
}

#[test]
fn output_is_streamed_as_it_is_printed() {
    let Some(f) = fixture() else { return };
    let spec = f.spec(&[
        "sh",
        "-c",
        "echo out; echo err >&2; sleep 1; echo late; exit 3",
    ]);
    let start = Instant::now();
    let mut chunks: Vec<(Duration, Vec<u8>)> = Vec::new();
    let out = f
        .engine
        .run(&spec, &mut |b| chunks.push((start.elapsed(), b.to_vec())))
        .unwrap();
    assert_eq!(out.exit_code, 3);
    let all: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.clone()).collect();
    // stdout and stderr are separate streams: their order is not kept.
    let text = String::from_utf8_lossy(&all);
    assert!(
        text == "out\nerr\nlate\n" || text == "err\nout\nlate\n",
        "{text}"
    );
    assert_eq!(out.tail, all);
    let first = chunks.first().unwrap().0;
    let last = chunks.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(800),
        "`out` arrived at {first:?} and `late` at {last:?}: not streamed"
    );
}

#[test]
fn a_long_output_keeps_its_last_64_kib() {
    let Some(f) = fixture() else { return };
    // 200,000 numbered lines, about 1.3 MB.
    let spec = f.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 200000 ]; do echo line$i; i=$((i+1)); done",
    ]);
    let mut total = 0usize;
    let out = f.engine.run(&spec, &mut |b| total += b.len()).unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(total > 1_000_000, "{total}");
    assert_eq!(out.tail.len(), 64 * 1024);
    assert!(out.tail_lossy().ends_with("line199999\n"));
}

#[test]
fn the_environment_is_passed() {
    let Some(f) = fixture() else { return };
    let mut spec = f.spec(&["sh", "-c", "echo \"$GREETING|$EMPTY|$PATH\""]);
    spec.env = vec![
        ("GREETING".into(), "hello world".into()),
        ("EMPTY".into(), String::new()),
    ];
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0);
    assert_eq!(out, "hello world||/bin\n");
}

#[test]
fn read_only_mounts_are_not_writable_and_scratch_mounts_are() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let scratch = dir.path().join("scratch");
    common::write(&src.join("hello.txt"), b"hello from the host\n");
    std::fs::create_dir(&scratch).unwrap();

    let mut spec = f.spec(&[
        "sh",
        "-c",
        "cat /src/hello.txt; \
         if touch /src/new 2>/dev/null; then echo RO-WRITABLE; else echo RO-REFUSED; fi; \
         touch /scratch/made && echo SCRATCH-OK; \
         cd && pwd",
    ]);
    spec.mounts = vec![
        Mount::read_only(&src, "/src"),
        Mount::read_write(&scratch, "/scratch"),
    ];
    spec.workdir = Some("/scratch".into());
    spec.env = vec![("HOME".into(), "/scratch".into())];
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "hello from the host\nRO-REFUSED\nSCRATCH-OK\n/scratch\n"
    );
    assert!(!src.join("new").exists());
    assert!(scratch.join("made").exists());
}

#[test]
fn the_user_is_set() {
    let Some(f) = fixture() else { return };
    let mut spec = f.spec(&["sh", "-c", "id -u; id -g"]);
    spec.user = Some("1000:1000".into());
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "1000\n1000\n");
}

#[test]
fn without_network_there_is_only_loopback() {
    let Some(f) = fixture() else { return };
    let spec = f.spec(&["ls", "/sys/class/net"]);
    assert!(!spec.network, "no network is the default");
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"]);
}

#[test]
fn builds_run_without_capabilities_or_new_privileges() {
    let Some(f) = fixture() else { return };
    let (code, out) = f.run(&f.spec(&[
        "sh",
        "-c",
        "cat /proc/self/status | while read k v; do case $k in CapEff:|CapBnd:|NoNewPrivs:) echo $k $v;; esac; done",
    ]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "CapEff: 0000000000000000\nCapBnd: 0000000000000000\nNoNewPrivs: 1\n"
    );
}

#[test]
fn tmpfs_mounts_are_writable() {
    let Some(f) = fixture() else { return };
    let mut spec = f.spec(&["sh", "-c", "touch /work/x && ls /work"]);
    spec.tmpfs = vec!["/work:rw,size=1m".into()];
    let (code, out) = f.run(&spec);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "x\n");
}

#[test]
fn an_image_that_is_not_loaded_is_not_pulled() {
    let Some(f) = fixture() else { return };
    let missing = format!("sha256:{}", "0".repeat(64));
    let spec = ContainerSpec::new(&missing, ["true"]);
    let err = f.engine.run(&spec, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DockerError::ImageNotLoaded { .. }), "{err:?}");
    assert!(err.to_string().contains("never pulls"), "{err}");
    assert!(!f.engine.image_exists(&missing).unwrap());
    let err = f
        .engine
        .run(
            &ContainerSpec::new("dockerbuild-test/no-such-image:1", ["true"]),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, DockerError::ImageNotLoaded { .. }), "{err:?}");
}

#[test]
fn the_docker_socket_is_never_mounted() {
    let Some(f) = fixture() else { return };
    for host in ["/var/run/docker.sock", "/run", "/var/run", "/"] {
        if !Path::new(host).exists() {
            continue;
        }
        let mut spec = f.spec(&["true"]);
        spec.mounts = vec![Mount::read_only(host, "/x")];
        let err = f.engine.run(&spec, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("Docker socket"),
            "mounting {host}: {err}"
        );
    }
    let mut spec = f.spec(&["true"]);
    spec.mounts = vec![Mount::read_only("/nonexistent/dockerbuild", "/x")];
    let err = f.engine.run(&spec, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DockerError::InvalidSpec { .. }), "{err:?}");
}

#[test]
fn a_panicking_output_callback_still_removes_the_container() {
    let Some(f) = fixture() else { return };
    let spec = f.spec(&["sh", "-c", "hostname; sleep 30"]);
    let mut host = String::new();
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.engine.run(&spec, &mut |b| {
            host.push_str(std::str::from_utf8(b).unwrap());
            panic!("the callback fails");
        })
    }));
    assert!(result.is_err());
    let id = host.trim();
    assert!(!id.is_empty());
    assert!(!container_exists(id), "container {id} survived the panic");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The engine still works.
    assert_eq!(f.run(&f.spec(&["true"])).0, 0);
}

#[test]
fn stdin_is_passed_to_the_container() {
    let Some(f) = fixture() else { return };
    // No TTY: the end of the input ends the shell.
    let mut out = Vec::new();
    let code = f
        .engine
        .run_with_input(
            &f.spec(&["sh"]),
            Cursor::new(b"echo from stdin\necho $((6*7))\n".to_vec()),
            &mut out,
        )
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&out), "from stdin\n42\n");

    // A TTY, as `shell` has.
    let mut spec = f.spec(&["sh"]);
    spec.tty = true;
    let mut out = Vec::new();
    let code = f
        .engine
        .run_with_input(
            &spec,
            Cursor::new(b"echo tty-$((6*7))\nexit 5\n".to_vec()),
            &mut out,
        )
        .unwrap();
    assert_eq!(code, 5, "{}", String::from_utf8_lossy(&out));
    assert!(
        String::from_utf8_lossy(&out).contains("tty-42\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Runs `interrupted_child` in a child process, sends it `signal` once its container
/// runs, and checks that the container is gone and the run said why.
fn interrupt_a_run(signal: rustix::process::Signal, name: &str) {
    if is_child("interrupted_child") {
        return;
    }
    let Some(f) = fixture() else { return };
    drop(f);
    let mut c = child("interrupted_child")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let id = loop {
        let Some(line) = lines.next() else {
            let status = c.wait().unwrap();
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("the child ended ({status}) before its container started:\n{stderr}");
        };
        // The harness prints `test interrupted_child ... ` before it, on the same line.
        if let Some((_, id)) = line.unwrap().split_once("CONTAINER ") {
            break id.trim().to_owned();
        }
    };
    assert!(container_exists(&id));
    let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = c.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}\n{rest:?}\n{stderr}");
    let said = format!("INTERRUPTED interrupted by {name}: container `");
    assert!(rest.iter().any(|l| l.contains(&said)), "{rest:?}\n{stderr}");
    assert!(!container_exists(&id), "container {id} survived {name}");
}

#[test]
fn ctrl_c_removes_the_container() {
    interrupt_a_run(rustix::process::Signal::INT, "SIGINT");
}

#[test]
fn sigterm_removes_the_container() {
    interrupt_a_run(rustix::process::Signal::TERM, "SIGTERM");
}

/// In a child of `interrupt_a_run`: runs a long container and reports.
#[test]
#[ignore = "run by ctrl_c_removes_the_container and sigterm_removes_the_container"]
fn interrupted_child() {
    if !is_child("interrupted_child") {
        return;
    }
    let f = fixture().expect("the parent checked the daemon");
    let spec = f.spec(&["sh", "-c", "hostname; sleep 60"]);
    let started = Instant::now();
    let err = f
        .engine
        .run(&spec, &mut |b| {
            println!("CONTAINER {}", String::from_utf8_lossy(b).trim());
        })
        .unwrap_err();
    assert!(matches!(err, DockerError::Interrupted { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    println!("INTERRUPTED {err}");
}

#[test]
fn clean_removes_labelled_containers_and_images_of_its_kind() {
    let Some(f) = fixture_with(true) else { return };
    // A container left behind (as by a killed dockerbuild).
    let out = docker_cli()
        .args(["create", "--pull", "never", "--label"])
        .arg(format!("{LABEL_MANAGED}=true"))
        .arg("--label")
        .arg(format!("{LABEL_KIND}={KIND_TEST}"))
        .args([f.image.as_str(), "true"])
        .output()
        .unwrap();
    common::assert_success(&out, &"docker create");
    let leftover = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(container_exists(&leftover));
    // One of another kind, which stays.
    let out = docker_cli()
        .args(["create", "--pull", "never", "--label"])
        .arg(format!("{LABEL_MANAGED}=true"))
        .arg("--label")
        .arg(format!("{LABEL_KIND}=test-bystander"))
        .args([f.image.as_str(), "true"])
        .output()
        .unwrap();
    common::assert_success(&out, &"docker create");
    let bystander = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    // Only the test kind: other suites' images (toolchains) share the daemon.
    let report = f.engine.clean_kind(KIND_TEST).unwrap();
    assert!(
        report
            .containers
            .iter()
            .any(|c| c.id == leftover && c.kind == KIND_TEST),
        "{report:?}"
    );
    assert!(
        report
            .images
            .iter()
            .any(|i| i.id == f.image && i.tags == [TAG] && i.kind == KIND_TEST),
        "{report:?}"
    );
    assert!(!container_exists(&leftover));
    assert!(container_exists(&bystander), "{report:?}");
    assert!(!report.containers.iter().any(|c| c.id == bystander));
    let removed = docker_cli()
        .args(["rm", "-f", &bystander])
        .output()
        .unwrap();
    common::assert_success(&removed, &"docker rm");
    assert!(!f.engine.image_exists(&f.image).unwrap());
    assert!(!f.engine.image_exists(TAG).unwrap());
    assert!(containers_labelled(&format!("{LABEL_KIND}={KIND_TEST}")).is_empty());

    let again = f.engine.clean_kind(KIND_TEST).unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn without_a_daemon_the_error_says_how_to_start_one() {
    let err = Engine::connect_to("unix:///nonexistent/dockerbuild/docker.sock").unwrap_err();
    assert!(matches!(err, DockerError::NoDaemon { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/dockerbuild/docker.sock"),
        "{text}"
    );
    assert!(text.contains("hint:"), "{text}");
    assert!(
        text.contains("dockerd") && text.contains("docker.io"),
        "{text}"
    );

    // Through $DOCKER_HOST, in a child (the environment is shared by every test thread).
    let out = child("no_daemon_child")
        .env("DOCKER_HOST", "unix:///nonexistent/dockerbuild/docker.sock")
        .output()
        .unwrap();
    common::assert_success(&out, &"no_daemon_child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ERROR cannot connect to the Docker daemon at `unix:///nonexistent/dockerbuild/docker.sock`"),
        "{stdout}"
    );
    assert!(stdout.contains("hint:"), "{stdout}");
}

#[test]
#[ignore = "run by without_a_daemon_the_error_says_how_to_start_one"]
fn no_daemon_child() {
    if !is_child("no_daemon_child") {
        return;
    }
    let err = Engine::connect().unwrap_err();
    println!("ERROR {err}");
}

#[test]
fn shell_gets_the_hosts_terminal() {
    let Some(f) = fixture() else { return };
    drop(f);
    let script = Command::new("script").arg("--version").output();
    if !common::available("script (util-linux)", script.is_ok()) {
        return;
    }
    // A pseudo-terminal of 30 x 100 running the child, which runs `sh` in a container;
    // afterwards, the terminal's modes.
    let exe = std::env::current_exe().unwrap();
    let inner = format!(
        "stty rows 30 cols 100; {} interactive_child --exact --ignored --nocapture \
         --test-threads=1; echo; stty -a",
        exe.display()
    );
    let mut c = Command::new("timeout")
        .args(["60", "script", "-qec", &inner, "/dev/null"])
        .env(CHILD_ENV, "interactive_child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    // Typed once the shell is up; kept open until the end, as a terminal is.
    std::thread::sleep(Duration::from_secs(1));
    std::io::Write::write_all(&mut stdin, b"tty; stty size; echo $((6*7)); exit 4\n").unwrap();
    let out = c.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", out.status);
    let after = |what: &str| text.split(what).nth(1).unwrap_or_default().to_owned();
    assert!(after("exit 4").contains("/dev/pts/"), "no TTY:\n{text}");
    assert!(
        text.contains("\r\n30 100\r\n"),
        "the size was not passed:\n{text}"
    );
    assert!(text.contains("\r\n42\r\n"), "{text}");
    assert!(text.contains("EXIT 4"), "{text}");
    // Typed once, echoed once: by the container's terminal, not the host's too.
    assert_eq!(text.matches("stty size;").count(), 1, "{text}");
    let modes = after("EXIT 4");
    assert!(
        modes.contains(" icanon") && modes.contains(" echo "),
        "the terminal was not restored:\n{modes}"
    );
}

/// In a child of `shell_gets_the_hosts_terminal`, on a pseudo-terminal made by `script`.
#[test]
#[ignore = "run by shell_gets_the_hosts_terminal"]
fn interactive_child() {
    if !is_child("interactive_child") {
        return;
    }
    let f = fixture().expect("the parent checked the daemon");
    let code = f.engine.run_interactive(&f.spec(&["sh"])).unwrap();
    println!("EXIT {code}");
}
