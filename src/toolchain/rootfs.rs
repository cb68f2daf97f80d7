//! Building a root filesystem tar with mmdebstrap from pinned `.deb` files, offline.
//!
//! The files are served by a local repository ([`super::deb`]) in a temporary directory
//! through apt's `copy://` method, so apt copies each one into the chroot's cache and no
//! directory of the host is mounted into the chroot (nor leaks into the tar). mmdebstrap
//! runs in `root` mode with `--variant=essential` and `--include` naming every pin exactly
//! (`PACKAGE:ARCH=VERSION`), so the installed set is the pinned set; merged /usr comes
//! from mmdebstrap's `merged-usr` hook. dpkg leaves out documentation, manual pages and
//! translations ([`DPKG_OPTIONS`]). A customize hook writes the CMake toolchain file
//! and removes what ties the tree to the build machine (apt sources, `resolv.conf`,
//! `hostname`); with `SOURCE_DATE_EPOCH` set mmdebstrap removes logs and caches and packs
//! the tree sorted, with clamped times and numeric owners.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tracing::info;

use super::{
    CMAKE_TOOLCHAIN_PATH, DebPin, Result, Toolchain, ToolchainError, deb, describe_command, tail,
};

/// dpkg options of the image (in `/etc/dpkg/dpkg.cfg.d/99mmdebstrap`, so they hold for
/// later installs too): no documentation, manual pages or translations (copyright files
/// stay), and no fsync per file, as in Debian's official container images.
const DPKG_OPTIONS: &[&str] = &[
    "force-unsafe-io",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// mmdebstrap's hook directory that sets up merged /usr without the usrmerge package.
const MERGED_USR_HOOK: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// Builds the root filesystem of `tc` from `debs` (each pin with its file, e.g. in the
/// store) into `out_tar` (an uncompressed tar, replaced atomically), with every time stamp
/// at most `epoch`. `overlays` are directories copied in (the unpacked `tc.unpack`
/// sources, each with its destination), and `tc.files` are written. Needs root,
/// `mmdebstrap`, and no network. The same inputs and `epoch` give the same bytes.
pub fn build_rootfs(
    tc: &Toolchain,
    debs: &[(DebPin, PathBuf)],
    overlays: &[(PathBuf, String)],
    out_tar: &Path,
    epoch: u64,
) -> Result<()> {
    let d = tc.debian()?;
    if !rustix::process::geteuid().is_root() {
        return Err(ToolchainError::NotRoot);
    }
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("dockerbuild-rootfs-")
        .tempdir()
        .map_err(ToolchainError::io(
            "create a temporary directory in",
            &std::env::temp_dir(),
        ))?;
    let repo = tmp.path().join("repo");
    deb::write_repo(&repo, &d.suite, &d.architectures, debs, epoch)?;
    let cmake = tmp.path().join("toolchain.cmake");
    std::fs::write(&cmake, tc.cmake_toolchain()).map_err(ToolchainError::io("write", &cmake))?;
    let mut copies: Vec<(PathBuf, String)> = overlays.to_vec();
    let mut files = Vec::new();
    for (i, (dest, text)) in tc.files.iter().enumerate() {
        let p = tmp.path().join(format!("file-{i}"));
        std::fs::write(&p, text).map_err(ToolchainError::io("write", &p))?;
        files.push((p, dest.clone()));
    }
    copies.sort();

    let out_dir = match out_tar.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".dockerbuild-rootfs-")
        .tempdir_in(&out_dir)
        .map_err(ToolchainError::io(
            "create a temporary directory in",
            &out_dir,
        ))?;
    let partial = staging.path().join("rootfs.tar");
    let log_path = tmp.path().join("mmdebstrap.log");
    let log = std::fs::File::create(&log_path).map_err(ToolchainError::io("create", &log_path))?;

    let mut include: Vec<String> = debs.iter().map(|(p, _)| p.apt_name()).collect();
    include.sort();
    include.dedup();
    let hook = customize_hook(&cmake, &copies, &files);
    let mirror = format!(
        "deb [trusted=yes] copy://{} {} main",
        repo.display(),
        d.suite
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| super::DEFAULT_PATH.into()),
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", "/root");
    if let Some(t) = std::env::var_os("TMPDIR") {
        cmd.env("TMPDIR", t);
    }
    cmd.arg("--mode=root")
        .arg("--variant=essential")
        .arg("--format=tar")
        .arg(format!("--architectures={}", d.architectures.join(",")))
        .arg(format!("--include={}", include.join(",")))
        .args(DPKG_OPTIONS.iter().map(|o| format!("--dpkgopt={o}")))
        .arg(format!("--hook-dir={MERGED_USR_HOOK}"))
        .arg(format!("--customize-hook={hook}"))
        .arg(&d.suite)
        .arg(&partial)
        .arg(&mirror)
        .stdin(Stdio::null())
        // When writing the tar fails (a full disk), mmdebstrap tears down its helpers with
        // SIGHUP to its whole process group, which would kill us and whoever ran us. Its
        // own group keeps that inside; the parent-death signal still stops it when we die.
        .process_group(0)
        .stdout(
            log.try_clone()
                .map_err(ToolchainError::io("open", &log_path))?,
        )
        .stderr(log);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    let status = cmd.status().map_err(|source| ToolchainError::Spawn {
        tool: "mmdebstrap".to_owned(),
        source,
    })?;
    if !status.success() {
        let output = std::fs::read(&log_path).unwrap_or_default();
        return Err(ToolchainError::Command {
            command: describe_command(&cmd),
            status: status.to_string(),
            output: tail(&output, 60),
        });
    }
    std::fs::rename(&partial, out_tar).map_err(ToolchainError::io("write", out_tar))?;
    info!(
        toolchain = tc.name,
        packages = include.len(),
        secs = started.elapsed().as_secs_f64(),
        out = %out_tar.display(),
        "built the root filesystem"
    );
    Ok(())
}

/// The customize hook (a shell script; `$1` is the chroot): the CMake toolchain file,
/// the overlays (directories copied to their destinations, owned by root), the files
/// (mode 0755), and no trace of the build machine.
fn customize_hook(
    cmake: &Path,
    copies: &[(PathBuf, String)],
    files: &[(PathBuf, String)],
) -> String {
    let mut s = format!(
        "set -eu; umask 022; \
         install -D -m 0644 {} \"$1{CMAKE_TOOLCHAIN_PATH}\"; ",
        shell_quote(&cmake.to_string_lossy())
    );
    for (dir, to) in copies {
        let to = shell_quote(to);
        s += &format!(
            "mkdir -p \"$1\"{to}; cp -R --preserve=mode {}/. \"$1\"{to}/; \
             chown -R 0:0 \"$1\"{to}; chmod -R u+w \"$1\"{to}; ",
            shell_quote(&dir.to_string_lossy())
        );
    }
    for (file, to) in files {
        s += &format!(
            "install -D -m 0755 {} \"$1\"{}; ",
            shell_quote(&file.to_string_lossy()),
            shell_quote(to)
        );
    }
    s += "rm -f \"$1/etc/apt/sources.list\" \"$1/etc/resolv.conf\" \"$1/etc/hostname\"; \
          find \"$1/etc/apt/sources.list.d\" -mindepth 1 -delete; \
          rm -f \"$1/var/cache/ldconfig/aux-cache\"";
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
