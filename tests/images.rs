//! Toolchain images through the real binary and a real Docker daemon: generation from the
//! checked-in lockfile (shared by every test of a run), cross-compiling C programs that
//! run under QEMU, exit codes, no network, the entrypoint script, and reproducibility.
//! Needs root, Docker, mmdebstrap and qemu-user (tests/setup-docker.sh installs them);
//! skipped on a laptop without them, failures under CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::{OwnImage, dockerbuild, image, ready, repo, shared_store};

fn run_in(platform: &str, dir: &Path, args: &[&str]) -> Output {
    image(platform);
    run_in_store(&shared_store(), platform, dir, args)
}

fn run_in_store(store: &Path, platform: &str, dir: &Path, args: &[&str]) -> Output {
    dockerbuild(store, dir)
        .args(["run", "-p", platform])
        .args(args)
        .output()
        .unwrap()
}

const HELLO: &str = "#include <stdio.h>\nint main(void) { printf(\"hello from %d-bit %s\\n\", (int)(8 * sizeof(void *)), PLATFORM); return 0; }\n";

/// What a platform's binaries must be: ELF class (1: 32-bit, 2: 64-bit), `e_machine`, and
/// the ABI bits of `e_flags` that must be set (mask, value).
struct Target {
    platform: &'static str,
    class: u8,
    machine: u16,
    abi: (u32, u32),
    qemu: Option<&'static str>,
    /// No other test builds on it: its image lives in a store of its own and goes when
    /// the test ends ([`OwnImage`]).
    own: bool,
}

/// (ELF class, e_machine, e_flags) of a little-endian binary.
fn elf_header(path: &Path) -> (u8, u16, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(b[5], 1, "little-endian");
    let flags_at = if b[4] == 2 { 48 } else { 36 };
    let flags = u32::from_le_bytes(b[flags_at..flags_at + 4].try_into().unwrap());
    (b[4], u16::from_le_bytes([b[18], b[19]]), flags)
}

/// Compiles a C program statically with `run`, checks its ELF header, runs it on the host
/// (under QEMU for foreign targets), and runs a dynamically linked build inside the image
/// (binfmt's QEMU with the toolchain's loader).
fn compile_and_run(t: &Target) {
    let platform = t.platform;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.c"), HELLO).unwrap();
    let define = format!("-DPLATFORM='\"{platform}\"'");
    // i686 programs run natively, without QEMU and so without QEMU_LD_PREFIX: the -cross
    // glibc's loader runs them.
    let run_dyn = if platform == "linux-x86" {
        "/usr/i686-linux-gnu/lib/ld-linux.so.2 --library-path /usr/i686-linux-gnu/lib ./hello-dyn"
    } else {
        "./hello-dyn"
    };
    let own = t.own.then(|| OwnImage::new(platform));
    let store = match &own {
        Some(o) => o.store.clone(),
        None => {
            image(platform);
            shared_store()
        }
    };
    let out = run_in_store(
        &store,
        platform,
        dir.path(),
        &[
            "--",
            "sh",
            "-c",
            &format!(
                "$CC -O2 -static {define} -o hello hello.c && $CC -O2 {define} -o hello-dyn hello.c && {run_dyn}"
            ),
        ],
    );
    common::assert_success(&out, &format!("compile for {platform}"));
    let bits = if t.class == 2 { 64 } else { 32 };
    let expected = format!("hello from {bits}-bit {platform}\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "dynamic, in the image"
    );
    let bin = dir.path().join("hello");
    let (class, machine, flags) = elf_header(&bin);
    assert_eq!(
        (class, machine),
        (t.class, t.machine),
        "{platform}: ELF class and machine"
    );
    assert_eq!(flags & t.abi.0, t.abi.1, "{platform}: ABI flags {flags:#x}");
    let mut cmd = match t.qemu {
        Some(q) => {
            let mut c = Command::new(format!("{q}-static"));
            c.arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd.output().unwrap();
    common::assert_success(&out, &format!("run the {platform} binary"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

/// EF_ARM_EABI_VER5 and EF_ARM_ABI_FLOAT_HARD.
const ARM_EABI5_HARD: (u32, u32) = (0xff00_0400, 0x0500_0400);

/// One test per platform: `name => (class, e_machine, (e_flags mask, value), qemu, own)`.
macro_rules! c_program_tests {
    ($($test:ident: $platform:literal => ($class:expr, $machine:expr, $abi:expr, $qemu:expr, $own:expr);)*) => {$(
        #[test]
        fn $test() {
            if !ready() {
                return;
            }
            compile_and_run(&Target {
                platform: $platform,
                class: $class,
                machine: $machine,
                abi: $abi,
                qemu: $qemu,
                own: $own,
            });
        }
    )*};
}

c_program_tests! {
    c_program_linux_x64: "linux-x64" => (2, 62, (0, 0), None, false);
    c_program_linux_arm64: "linux-arm64" => (2, 183, (0, 0), Some("qemu-aarch64"), false);
    c_program_linux_armv7: "linux-armv7" => (1, 40, ARM_EABI5_HARD, Some("qemu-arm"), false);
    c_program_linux_x86: "linux-x86" => (1, 3, (0, 0), Some("qemu-i386"), true);
    // EF_MIPS_ARCH_32R2 and EF_MIPS_ABI_O32.
    c_program_linux_mipsel: "linux-mipsel" => (1, 8, (0xf000_f000, 0x7000_1000), Some("qemu-mipsel"), true);
    // EF_MIPS_ARCH_64R2, no EF_MIPS_ABI (n64) and not EF_MIPS_ABI2 (n32).
    c_program_linux_mips64el: "linux-mips64el" => (2, 8, (0xf000_f020, 0x8000_0000), Some("qemu-mips64el"), true);
    // ELFv2.
    c_program_linux_ppc64le: "linux-ppc64le" => (2, 21, (0x3, 0x2), Some("qemu-ppc64le"), true);
    // EF_RISCV_RVC and EF_RISCV_FLOAT_ABI_DOUBLE (lp64d).
    c_program_linux_riscv64: "linux-riscv64" => (2, 243, (0x7, 0x5), Some("qemu-riscv64"), true);
}

#[test]
fn run_returns_the_exit_code_and_has_no_network_unless_asked() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_in("linux-arm64", dir.path(), &["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = run_in("linux-arm64", dir.path(), &["--", "ls", "/sys/class/net"]);
    common::assert_success(&out, &"ls /sys/class/net");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "lo",
        "only loopback"
    );
    let out = run_in(
        "linux-arm64",
        dir.path(),
        &["--network", "--", "ls", "/sys/class/net"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .count()
            > 1,
        "--network adds an interface"
    );
}

#[test]
fn run_maps_the_current_directory_and_passes_environment() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let out = dockerbuild(&shared_store(), &dir.path().join("sub"))
        .args(["run", "-p", "linux-arm64", "--workdir"])
        .arg(dir.path())
        .args([
            "-e",
            "GREETING=hi",
            "--env-prefix",
            "PATH",
            "/opt/x/bin",
            "--",
            "sh",
            "-c",
            "pwd; echo $GREETING $CROSS_TRIPLE; echo $PATH; touch made-here; id -u",
        ])
        .output()
        .unwrap();
    image("linux-arm64");
    common::assert_success(&out, &"run in sub");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "/work/sub");
    assert_eq!(lines[1], "hi aarch64-linux-gnu");
    assert!(lines[2].starts_with("/opt/x/bin:"), "{}", lines[2]);
    assert_eq!(
        lines[3],
        rustix::process::getuid().as_raw().to_string(),
        "runs as the caller"
    );
    assert!(dir.path().join("sub/made-here").exists());
    // Nothing of the host but /work: not the store, not the project.
    let out = run_in(
        "linux-arm64",
        dir.path(),
        &[
            "--",
            "sh",
            "-c",
            &format!(
                "test -e {} || test -e {}",
                shared_store().display(),
                repo().join("Cargo.toml").display()
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "host paths are invisible");
}

#[test]
fn the_entrypoint_script_runs_the_pinned_image() {
    if !ready() {
        return;
    }
    let id = image("linux-arm64");
    let dir = tempfile::tempdir().unwrap();
    let out = dockerbuild(&shared_store(), dir.path())
        .args(["entrypoint", "-p", "linux-arm64"])
        .output()
        .unwrap();
    common::assert_success(&out, &"entrypoint");
    let script = dir.path().join("dockcross");
    std::fs::write(&script, &out.stdout).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = Command::new("bash")
        .arg(&script)
        .args(["sh", "-c", "echo $CROSS_TRIPLE > triple; pwd"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    common::assert_success(&out, &"entrypoint script");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/work");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("triple"))
            .unwrap()
            .trim(),
        "aarch64-linux-gnu"
    );
}

/// The same lockfile in a second, empty store gives the same entry and image ID; with
/// the entry present, generation is a lookup.
#[test]
fn images_are_reproducible_and_cached() {
    if !ready() {
        return;
    }
    let id = image("linux-x64");
    let t0 = std::time::Instant::now();
    assert_eq!(image("linux-x64"), id);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "cached: {:?}",
        t0.elapsed()
    );
    let fresh = tempfile::tempdir().unwrap();
    let lock = common::images::mmdebstrap_lock();
    let out = dockerbuild(&fresh.path().join("store"), &repo())
        .args(["--json", "docker-generate", "-p", "linux-x64"])
        .output()
        .unwrap();
    drop(lock);
    common::assert_success(&out, &"docker-generate in an empty store");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"].as_str().unwrap(), id);
    assert_eq!(v[0]["cached"], false);
}

// ---------------------------------------------------------------------------------------
// Library-level builds

mod builds {
    use super::*;
    use dockerbuild::build::{self, BuildError, BuildOptions, BuildSpec};
    use dockerbuild::docker::Engine;
    use dockerbuild::fetch::{Http, HttpOptions};
    use dockerbuild::image::{self, Image};
    use dockerbuild::progress::Silent;
    use dockerbuild::project::Project;
    use dockerbuild::source::Fetcher;
    use dockerbuild::store::{Kind, LocalStore, NewEntry, Store};
    use std::collections::BTreeMap;

    pub struct Ctx {
        pub store: LocalStore,
        pub engine: Engine,
        pub project: Project,
        pub image: Image,
    }

    pub fn ctx(store_dir: &Path, platform: &str) -> Ctx {
        let project = Project::open(&repo()).unwrap();
        let store = LocalStore::open(store_dir).unwrap();
        let lock = project.read_lock().unwrap().unwrap();
        let fetcher = Fetcher::new(Http::new(HttpOptions::from_env()));
        let image = image::generate(
            &store,
            &fetcher,
            &project,
            &lock,
            platform,
            &dockerbuild::cache::Caches::none(),
            &|_| Box::new(Silent),
        )
        .unwrap();
        Ctx {
            store,
            engine: Engine::connect().unwrap(),
            project,
            image,
        }
    }

    pub fn spec(
        name: &str,
        platform: &str,
        inputs: &[(&str, dockerbuild::digest::Digest)],
        script: &str,
    ) -> BuildSpec {
        BuildSpec {
            name: name.into(),
            platform: platform.into(),
            inputs: inputs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            script: script.into(),
            env: BTreeMap::new(),
            kind: dockerbuild::store::Kind::Output,
            version: None,
        }
    }

    #[test]
    fn builds_see_only_what_they_declared_and_run_once() {
        if !ready() {
            return;
        }
        image("linux-arm64");
        let c = ctx(&shared_store(), "linux-arm64");
        let data = c
            .store
            .add_reader(
                &mut &b"input bytes"[..],
                false,
                &NewEntry::new("data.txt", Kind::Source),
                None,
            )
            .unwrap();
        let script = format!(
            "id -u > $DOCKERBUILD_OUT/uid\n\
             if touch /inputs/data 2>/dev/null; then echo writable > $DOCKERBUILD_OUT/inputs; else echo read-only > $DOCKERBUILD_OUT/inputs; fi\n\
             ls /sys/class/net > $DOCKERBUILD_OUT/net\n\
             if test -e {} || test -e {}; then echo visible > $DOCKERBUILD_OUT/host; else echo hidden > $DOCKERBUILD_OUT/host; fi\n\
             echo \"$TZ $SOURCE_DATE_EPOCH $HOME $PWD\" > $DOCKERBUILD_OUT/env\n\
             cp /inputs/data $DOCKERBUILD_OUT/copy\n",
            shared_store().display(),
            repo().join("Cargo.toml").display()
        );
        let s = spec(
            "isolation-probe",
            "linux-arm64",
            &[("data", data.meta.digest)],
            &script,
        );
        let mut log = Vec::new();
        let b = build::build(
            &c.store,
            &c.engine,
            &c.project,
            &c.image,
            &s,
            &BuildOptions::default(),
            &mut |x| log.extend_from_slice(x),
        )
        .unwrap();
        let read = |f: &str| {
            std::fs::read_to_string(b.entry.path.join(f))
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_ne!(read("uid"), "0", "an unprivileged uid");
        assert_eq!(read("inputs"), "read-only");
        assert_eq!(read("net"), "lo", "no network");
        assert_eq!(read("host"), "hidden", "nothing of the host");
        assert_eq!(read("env"), "UTC 1700000000 /build/home /build");
        assert_eq!(read("copy"), "input bytes");
        assert_eq!(b.entry.meta.kind, Kind::Output);
        assert_eq!(b.entry.meta.references, vec![data.meta.digest]);
        assert_eq!(b.entry.meta.build.as_ref().unwrap().key, b.key);
        // The same key again is a lookup.
        let again = build::build(
            &c.store,
            &c.engine,
            &c.project,
            &c.image,
            &s,
            &BuildOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert!(again.cached);
        assert_eq!(again.entry.meta.digest, b.entry.meta.digest);
        // A different script is a different key.
        let other = spec(
            "isolation-probe",
            "linux-arm64",
            &[("data", data.meta.digest)],
            &format!("{script}\ntrue"),
        );
        assert_ne!(build::key(&other, &c.image), b.key);
    }

    #[test]
    fn failed_builds_show_their_tail_and_add_nothing() {
        if !ready() {
            return;
        }
        image("linux-arm64");
        let c = ctx(&shared_store(), "linux-arm64");
        let s = spec(
            "doomed",
            "linux-arm64",
            &[],
            "echo making progress\necho something broke >&2\nexit 3",
        );
        let err = build::build(
            &c.store,
            &c.engine,
            &c.project,
            &c.image,
            &s,
            &BuildOptions {
                keep_failed: true,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap_err();
        let BuildError::Failed {
            code, tail, keep, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(*code, 3);
        assert!(tail.contains("something broke"), "{tail}");
        let kept = keep.as_ref().unwrap();
        assert!(
            kept.join("build").is_dir() && err.to_string().contains(&kept.display().to_string())
        );
        std::fs::remove_dir_all(kept).unwrap();
        assert!(
            build::find(&c.store, &build::key(&s, &c.image))
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn sigint_during_run_leaves_no_container() {
    if !ready() {
        return;
    }
    image("linux-arm64");
    let dir = tempfile::tempdir().unwrap();
    let mut child = dockerbuild(&shared_store(), dir.path())
        .args(["run", "-p", "linux-arm64", "--", "sleep", "123.456"])
        .spawn()
        .unwrap();
    // Other tests run containers too: count only this one, by its unique command.
    let count = || {
        let out = Command::new("/usr/bin/docker")
            .args([
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                "label=org.dockerbuild.kind=run",
                "--format",
                "{{.Command}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("123.456"))
            .count()
    };
    let t0 = std::time::Instant::now();
    while count() == 0 && t0.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(count() > 0, "the container started (positive control)");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(count(), 0, "no labelled run container remains after SIGINT");
}

/// git 2.39.5 from its pinned `.orig` tarball, cross-compiled for linux-arm64 through the
/// library build path; under QEMU it prints its version. The second build is a lookup and
/// a rebuild in a second, empty store gives the same output digest.
#[test]
fn git_cross_compiles_for_arm64_and_rebuilds_identically() {
    if !ready() {
        return;
    }
    image("linux-arm64");
    let script = std::fs::read_to_string(repo().join("recipes/git.sh")).unwrap();
    let run_build = |store_dir: &Path| {
        let c = builds::ctx(store_dir, "linux-arm64");
        // The source comes from the lockfile like any other.
        let lock = c.project.read_lock().unwrap().unwrap();
        let fetcher = dockerbuild::source::Fetcher::new(dockerbuild::fetch::Http::new(
            dockerbuild::fetch::HttpOptions::from_env(),
        ));
        let mut inputs = Vec::new();
        for name in ["git", "zlib"] {
            let src = lock.get(name).unwrap();
            let got = dockerbuild::project::fetch_one(
                &c.store,
                &fetcher,
                &dockerbuild::cache::Caches::none(),
                src,
                &|_| Box::new(dockerbuild::progress::Silent),
            )
            .unwrap();
            assert!(got.path.exists());
            inputs.push((name, src.blake3));
        }
        let spec = builds::spec("git-2.39.5-linux-arm64", "linux-arm64", &inputs, &script);
        let b = dockerbuild::build::build(
            &c.store,
            &c.engine,
            &c.project,
            &c.image,
            &spec,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        let again = dockerbuild::build::build(
            &c.store,
            &c.engine,
            &c.project,
            &c.image,
            &spec,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        assert!(again.cached, "the second build is a lookup");
        (b, c.image.id.clone())
    };
    let (b, image_id) = run_build(&shared_store());
    let bin = b.entry.path.join("bin/git");
    assert_eq!(elf_header(&bin).1, 183, "an aarch64 ELF");
    let out = Command::new("qemu-aarch64-static")
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    common::assert_success(&out, &"git --version under QEMU");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "git version 2.39.5\n");

    let fresh = tempfile::tempdir().unwrap();
    let (b2, image2) = run_build(&fresh.path().join("store"));
    assert_eq!(image2, image_id, "same image from an empty store");
    assert!(!b2.cached);
    assert_eq!(
        b2.entry.meta.digest, b.entry.meta.digest,
        "the same output digest from an empty store"
    );
}

/// git 2.39.5 for linux-armv7 through `dockerbuild build git` (recipes/git.toml): zlib is
/// built from its pinned source (the -cross toolchain has no armhf zlib), a second run is a
/// lookup, and an ad-hoc `--script` build that fails keeps its scratch directory when asked.
#[test]
fn git_cross_compiles_for_armv7_through_the_cli() {
    if !ready() {
        return;
    }
    image("linux-armv7");
    // The recipe (recipes/git.toml) names the locked `git` and `zlib` sources.
    let build = || {
        dockerbuild(&shared_store(), &repo())
            .args(["--json", "build", "git", "-p", "linux-armv7"])
            .output()
            .unwrap()
    };
    let out = build();
    common::assert_success(&out, &"dockerbuild build git for linux-armv7");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bin = Path::new(first["path"].as_str().unwrap()).join("bin/git");
    let (class, machine, flags) = elf_header(&bin);
    assert_eq!((class, machine), (1, 40), "a 32-bit Arm ELF");
    assert_eq!(
        flags & ARM_EABI5_HARD.0,
        ARM_EABI5_HARD.1,
        "EABI5 hard-float"
    );
    let out = Command::new("qemu-arm-static")
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    common::assert_success(&out, &"git --version under QEMU");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "git version 2.39.5\n");

    let out = build();
    common::assert_success(&out, &"the same build again");
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["cached"], true, "the second build is a lookup");
    assert_eq!(again["digest"], first["digest"]);

    // A build missing an input fails with its tail, keeps its scratch, and adds nothing.
    let entries_before = std::fs::read_dir(shared_store().join("v1"))
        .unwrap()
        .count();
    let out = dockerbuild(&shared_store(), &repo())
        .args(["build", "-p", "linux-armv7", "--keep-failed", "--script"])
        .arg(repo().join("recipes/git.sh"))
        .args(["-i", "git", "--name", "git-without-zlib"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("build `git-without-zlib` failed"), "{err}");
    assert!(
        err.contains("/inputs/zlib"),
        "the tail names the missing file: {err}"
    );
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("hint: its scratch directory was kept at "))
        .unwrap_or_else(|| panic!("no kept directory in {err}"));
    assert!(Path::new(kept.trim()).join("build").is_dir(), "{kept}");
    std::fs::remove_dir_all(kept.trim()).unwrap();
    let entries_after = std::fs::read_dir(shared_store().join("v1"))
        .unwrap()
        .count();
    assert_eq!(
        entries_before, entries_after,
        "a failed build adds no entry"
    );
}

/// `dockerbuild shell` in a real pseudo-terminal (util-linux `script`): a TTY in the
/// container, the toolchain's environment, /work, and the exit status of the shell.
#[test]
fn shell_runs_in_a_pseudo_terminal() {
    if !ready() {
        return;
    }
    image("linux-arm64");
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!(
        "{} --project {} --store {} --locked -q shell -p linux-arm64",
        env!("CARGO_BIN_EXE_dockerbuild"),
        repo().display(),
        shared_store().display()
    );
    let mut child = Command::new("timeout")
        .args(["120", "script", "-qec", &cmd, "/dev/null"])
        .current_dir(dir.path())
        .env(
            "DOCKERBUILD_CONFIG",
            shared_store().with_extension("config.toml"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    std::io::Write::write_all(&mut stdin, b"tty; echo triple=$CROSS_TRIPLE; pwd; exit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "no TTY:\n{text}");
    assert!(text.contains("triple=aarch64-linux-gnu"), "{text}");
    assert!(text.contains("\r\n/work\r\n"), "{text}");
    assert_eq!(
        out.status.code(),
        Some(5),
        "the shell's exit status:\n{text}"
    );
}

/// Runs an ad-hoc `build --script` in the shared store; returns the output directory.
fn script_build(platform: &str, name: &str, script: &str, inputs: &[&str]) -> PathBuf {
    image(platform);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.sh"));
    std::fs::write(&file, script).unwrap();
    let mut cmd = dockerbuild(&shared_store(), &repo());
    cmd.args([
        "--json", "build", "-p", platform, "--name", name, "--script",
    ])
    .arg(&file);
    for i in inputs {
        cmd.args(["-i", i]);
    }
    let out = cmd.output().unwrap();
    common::assert_success(&out, &format!("build {name} on {platform}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(v["path"].as_str().unwrap())
}

const HELLO_MATH: &str = "#include <stdio.h>\n#include <math.h>\nint main(int argc, char **argv) { volatile double x = argc * 1.5; printf(\"hello %.3f\\n\", sqrt(x)); return 0; }\n";

/// linux-armv6 makes ARMv6 code, proved three ways: the ELF attributes of glibc and static
/// (musl) binaries say `Tag_CPU_arch: v6`; the static binary runs under QEMU's ARM1176 CPU;
/// and Debian's armhf toolchain, even asked for ARMv6, makes a binary that QEMU's ARM1176
/// refuses (the ARMv7 startup files and libc leak in). It also shows the pre-warmed zig
/// cache (recipes/zig-cache) saves rebuilding libc pieces.
#[test]
fn armv6_code_is_armv6_three_ways() {
    if !ready() {
        return;
    }
    image("linux-armv6");
    let out = dockerbuild(&shared_store(), &repo())
        .args(["--json", "build", "zig-cache", "-p", "linux-armv6"])
        .output()
        .unwrap();
    common::assert_success(&out, &"build zig-cache for linux-armv6");
    let script = format!(
        "cat > hello.c <<'EOF'\n{HELLO_MATH}EOF\n\
         before=$(find /inputs/zig-cache -type f | wc -l)\n\
         $CC -O2 -o $DOCKERBUILD_OUT/hello hello.c -lm\n\
         arm-linux-musleabihf-gcc -O2 -static -o $DOCKERBUILD_OUT/hello-static hello.c\n\
         after=$(find \"$HOME/.cache/zig\" -type f | wc -l)\n\
         echo $((after - before)) > $DOCKERBUILD_OUT/new-cache-files\n\
         for b in hello hello-static; do $READELF -A $DOCKERBUILD_OUT/$b > $DOCKERBUILD_OUT/$b.attrs; done\n"
    );
    let dir = script_build(
        "linux-armv6",
        "armv6-proof",
        &script,
        &["zig-cache=zig-cache-linux-armv6"],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let new_files: u32 = read("new-cache-files").trim().parse().unwrap();
    assert!(
        new_files < 50,
        "the warmed cache was used ({new_files} new cache files; a cold one makes hundreds)"
    );
    for b in ["hello", "hello-static"] {
        let attrs = read(&format!("{b}.attrs"));
        assert!(attrs.contains("Tag_CPU_arch: v6"), "{b}:\n{attrs}");
        assert!(!attrs.contains("Tag_CPU_arch: v7"), "{b}:\n{attrs}");
        let (class, machine, flags) = elf_header(&dir.join(b));
        assert_eq!((class, machine), (1, 40), "{b}: 32-bit Arm");
        assert_eq!(
            flags & ARM_EABI5_HARD.0,
            ARM_EABI5_HARD.1,
            "{b}: EABI5 hard-float"
        );
    }
    assert!(read("hello-static.attrs").contains("Tag_ABI_VFP_args: VFP registers"));
    let arm1176 = |bin: &Path| {
        Command::new("qemu-arm-static")
            .args(["-cpu", "arm1176"])
            .arg(bin)
            .output()
            .unwrap()
    };
    let ran = arm1176(&dir.join("hello-static"));
    common::assert_success(&ran, &"the armv6 binary under qemu-arm -cpu arm1176");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello 1.225\n");

    // The negative control: Debian's armhf gcc, asked for ARMv6.
    let deb = script_build(
        "linux-armv7",
        "armv6-negative-control",
        &format!(
            "cat > hello.c <<'EOF'\n{HELLO_MATH}EOF\n\
             $CC -O2 -static -march=armv6 -mfpu=vfp -mfloat-abi=hard -marm -o $DOCKERBUILD_OUT/hello hello.c -lm\n"
        ),
        &[],
    );
    let bin = deb.join("hello");
    let ran = Command::new("qemu-arm-static").arg(&bin).output().unwrap();
    common::assert_success(
        &ran,
        &"Debian's binary on QEMU's default CPU (positive control)",
    );
    let refused = arm1176(&bin);
    assert!(
        !refused.status.success(),
        "Debian's armhf output must not run on an ARM1176: {refused:?}"
    );
}

/// The highest `GLIBC_x.y` symbol version an ELF file needs, from `readelf -V` text.
fn max_glibc(versions: &str) -> (u32, u32) {
    versions
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut p = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((p.next()??, p.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or((0, 0))
}

/// manylinux-x64 proves its floor: a program and a shared library using threads, time and
/// memory functions need at most GLIBC_2.17, and run here; Debian's gcc, for the same
/// source, needs newer symbols (so the check can fail).
#[test]
fn manylinux_x64_needs_at_most_glibc_2_17() {
    if !ready() {
        return;
    }
    let source = "#include <pthread.h>\n#include <stdio.h>\n#include <string.h>\n#include <time.h>\n\
        static void *run(void *p) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); char b[64]; memcpy(b, p, 6); b[6] = 0; printf(\"%s\\n\", b); return 0; }\n\
        int main(void) { pthread_t t; pthread_create(&t, 0, run, \"floor!\"); pthread_join(t, 0); return 0; }\n";
    let script = format!(
        "cat > floor.c <<'EOF'\n{source}EOF\n\
         $CC -O2 -o $DOCKERBUILD_OUT/floor floor.c -pthread\n\
         $CC -O2 -shared -fPIC -o $DOCKERBUILD_OUT/libfloor.so floor.c -pthread\n\
         for f in floor libfloor.so; do $READELF -V $DOCKERBUILD_OUT/$f > $DOCKERBUILD_OUT/$f.versions; done\n"
    );
    let zig = script_build("manylinux-x64", "manylinux-floor", &script, &[]);
    let deb = script_build("linux-x64", "debian-floor", &script, &[]);
    for f in ["floor", "libfloor.so"] {
        let v = std::fs::read_to_string(zig.join(format!("{f}.versions"))).unwrap();
        let max = max_glibc(&v);
        assert!(
            ((2, 2)..=(2, 17)).contains(&max),
            "{f} needs GLIBC_{max:?}:\n{v}"
        );
        let v = std::fs::read_to_string(deb.join(format!("{f}.versions"))).unwrap();
        assert!(
            max_glibc(&v) > (2, 17),
            "Debian's {f} needs {:?}",
            max_glibc(&v)
        );
    }
    let ran = Command::new(zig.join("floor")).output().unwrap();
    common::assert_success(&ran, &"the manylinux binary");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "floor!\n");
}

/// Builds a recipe in the shared store through the CLI; returns (path, cached).
fn recipe_build(name: &str, platform: Option<&str>) -> (PathBuf, bool) {
    let mut cmd = dockerbuild(&shared_store(), &repo());
    cmd.args(["--json", "build", name]);
    if let Some(p) = platform {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().unwrap();
    common::assert_success(&out, &format!("build {name}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        PathBuf::from(v["path"].as_str().unwrap()),
        v["cached"].as_bool().unwrap(),
    )
}

/// Python and Perl are store entries built from their pinned sources on linux-x64
/// (recipes/python-3.11.toml, recipes/perl.toml), self-contained and relocatable: an
/// arm64 build mounts them at /inputs and runs them there, and with the arm64 target
/// Python entry (recipes/python-3.11-target.toml) cross-compiles an extension module.
#[test]
fn python_and_perl_entries_run_in_an_arm64_build() {
    if !ready() {
        return;
    }
    image("linux-x64");
    let (python, _) = recipe_build("python-3.11", None);
    let (perl, _) = recipe_build("perl", None);
    let (target, _) = recipe_build("python-3.11-target", Some("linux-arm64"));
    for (entry, kind) in [(&python, "python"), (&perl, "perl")] {
        let out = dockerbuild(&shared_store(), &repo())
            .args(["--json", "store", "show"])
            .arg(entry)
            .output()
            .unwrap();
        common::assert_success(&out, &"store show");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], kind, "{v}");
    }
    // Only glibc is needed at run time: no libssl, libffi or libz of the build image.
    let ssl = std::fs::read_dir(python.join("lib/python3.11/lib-dynload"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("_ssl."))
        .expect("the _ssl extension was built");
    let needed = String::from_utf8_lossy(&std::fs::read(ssl.path()).unwrap()).into_owned();
    assert!(
        !needed.contains("libssl.so"),
        "_ssl links OpenSSL statically"
    );

    let script = "py=/inputs/python/bin/python3; pl=/inputs/perl/bin/perl\n\
        \"$py\" -c 'import ctypes, hashlib, ssl, sys, zlib; print(sys.version.split()[0], ssl.OPENSSL_VERSION.split()[1], zlib.compress(b\"x\") != b\"\", hashlib.sha256(b\"abc\").hexdigest()[:8])' > $DOCKERBUILD_OUT/python\n\
        \"$pl\" -e 'use POSIX (); use Digest::SHA qw(sha256_hex); printf \"%vd %s\\n\", $^V, substr(sha256_hex(\"abc\"), 0, 8)' > $DOCKERBUILD_OUT/perl\n\
        uname -m > $DOCKERBUILD_OUT/machine; echo $CROSS_TRIPLE >> $DOCKERBUILD_OUT/machine\n\
        # An extension module for arm64, through the target entry's sysconfig.\n\
        read -r suffix inc cc < <(_PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__linux_aarch64-linux-gnu PYTHONPATH=/inputs/target/lib/python3.11 \"$py\" -c 'import sysconfig as s; print(s.get_config_var(\"EXT_SUFFIX\"), s.get_config_var(\"INCLUDEPY\"), s.get_config_var(\"CC\").split()[0])')\n\
        echo \"$suffix $inc $cc\" > $DOCKERBUILD_OUT/sysconfig\n\
        printf '#include <Python.h>\\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"spam\"};\\nPyMODINIT_FUNC PyInit_spam(void) { return PyModule_Create(&m); }\\n' > spam.c\n\
        $cc -shared -fPIC -O2 -I\"$inc\" spam.c -o $DOCKERBUILD_OUT/spam$suffix\n";
    let py = format!("python={}", python.display());
    let pl = format!("perl={}", perl.display());
    let tg = format!("target={}", target.display());
    let out = script_build(
        "linux-arm64",
        "interpreters-in-arm64",
        script,
        &[&py, &pl, &tg],
    );
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("python"), "3.11.2 3.0.20 True ba7816bf\n");
    assert_eq!(read("perl"), "5.36.0 ba7816bf\n");
    assert_eq!(
        read("machine"),
        "x86_64\naarch64-linux-gnu\n",
        "run by an arm64 toolchain"
    );
}

/// What one store built and uploaded, an empty store substitutes: the build output comes
/// from a `file://` cache, verified; no build container runs, and neither the toolchain
/// image nor the sources are fetched, since the build's key follows from the lockfile.
#[test]
fn builds_are_substituted_from_a_file_cache() {
    if !ready() {
        return;
    }
    image("linux-armv7");
    let cache_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", cache_dir.path().display());
    let build = |store: &Path, extra: &[&str]| {
        let out = dockerbuild(store, &repo())
            .args(["--json", "--cache", &url])
            .args(extra)
            .args(["build", "git", "-p", "linux-armv7"])
            .output()
            .unwrap();
        common::assert_success(&out, &format!("build git with {extra:?}"));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = build(&shared_store(), &["--upload"]);
    let listed = dockerbuild(&shared_store(), &repo())
        .args(["--cache", &url, "cache", "ls"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("git-linux-armv7"), "{listed}");

    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = tempfile::tempdir().unwrap();
    let second = build(&fresh.path().join("store"), &[]);
    assert_eq!(second["cached"], true, "substituted, not built");
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["key"], first["key"]);
    let entries = dockerbuild(&fresh.path().join("store"), &repo())
        .args(["store", "ls"])
        .output()
        .unwrap();
    let entries = String::from_utf8_lossy(&entries.stdout).into_owned();
    assert!(entries.contains("git-linux-armv7"), "{entries}");
    assert!(
        !entries.contains("image-linux-armv7"),
        "no image needed: {entries}"
    );
    assert!(
        !entries.contains(".orig.tar"),
        "no source fetched: {entries}"
    );
    let key = first["key"].as_str().unwrap().trim_start_matches("blake3:");
    let events = Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until", "0s"])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args([
            "--filter",
            &format!("label=org.dockerbuild.build-key={key}"),
        ])
        .args(["--format", "{{.ID}}"])
        .output()
        .unwrap();
    common::assert_success(&events, &"docker events");
    assert_eq!(
        String::from_utf8_lossy(&events.stdout).trim(),
        "",
        "no build container was created"
    );
    // The binary is the one built in the first store, byte for byte.
    let a = std::fs::read(Path::new(first["path"].as_str().unwrap()).join("bin/git")).unwrap();
    let b = std::fs::read(Path::new(second["path"].as_str().unwrap()).join("bin/git")).unwrap();
    assert!(a == b, "identical bytes");
}
