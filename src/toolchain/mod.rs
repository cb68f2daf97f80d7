//! Toolchains: what a platform's build image is made of, and how that image is built
//! reproducibly from pinned Debian packages.
//!
//! A toolchain is one typed TOML file in `toolchains/` (format in `toolchains/README.md`):
//! the target's triple, wheel tags and CIPD platform, the Debian suite, architectures and
//! packages of its root filesystem, and the environment builds see (dockcross-compatible:
//! `CROSS_TRIPLE`, `CC`, `CMAKE_TOOLCHAIN_FILE`, ...).
//!
//! From definition to image, in three steps that each take the previous one's output:
//! 1. [`resolve_closure`]: every `.deb` the root filesystem needs (the toolchain's packages,
//!    Debian's `Essential` and `required` ones, `apt`), pinned to version, suite, archive path,
//!    SHA-256 and size ([`DebPin`]). apt's solver runs in a throwaway apt root (a temporary
//!    directory) against the mirrors apt is configured with; nothing is installed.
//! 2. [`build_rootfs`]: the root filesystem as a tar, built by `mmdebstrap` (as root) from
//!    exactly those `.deb` files served by a local repository in a temporary directory, so
//!    no network is used. With the same `.deb` files and epoch the tar is byte-identical.
//! 3. [`write_image_archive`]: a `docker load`-compatible archive of one layer (the root
//!    filesystem normalized: sorted, fixed times, numeric owners) and a config carrying the
//!    toolchain's environment and labels. Its id is the SHA-256 of the config.
//!
//! A toolchain with `[base]` instead of `[debian]` is built on an upstream image pinned
//! by digest ([`crate::base_image`]): [`write_base_image_archive`] keeps its layers and
//! adds one of ours.
//!
//! The CMake toolchain file ([`Toolchain::cmake_toolchain`]) is generated from the
//! definition and written into the root filesystem at [`CMAKE_TOOLCHAIN_PATH`].

mod deb;
mod image;
mod resolve;
mod rootfs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use image::{
    ImageInfo, LABEL_MANAGED, LABEL_TOOLCHAIN, docker_architecture, write_base_image_archive,
    write_image_archive,
};
pub use resolve::{DebPin, base_packages, resolve_closure, suites};
pub use rootfs::build_rootfs;

use crate::source::debian::DebianError;

/// Where the generated CMake toolchain file is inside the root filesystem.
pub const CMAKE_TOOLCHAIN_PATH: &str = "/usr/lib/dockerbuild/toolchain.cmake";

/// `PATH` in the image (unless the toolchain's `env` sets one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One platform's build environment, as written in `toolchains/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// The platform's name, also the file's stem (`linux-arm64`).
    pub name: String,
    /// The GNU triple of the target (`aarch64-linux-gnu`); for `./configure --host`.
    pub cross_triple: String,
    /// Python wheel platform tags, preferred first (`linux_aarch64`).
    pub wheel_tags: Vec<String>,
    /// The CIPD platform packages for this target are published under (`linux-arm64`).
    pub cipd_platform: String,
    /// The `qemu-user` emulator that runs the target's binaries on an x86-64 host
    /// (`qemu-aarch64`); none when the target runs natively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    /// The root filesystem built from pinned Debian packages; exactly one of `debian` and
    /// `base` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianRootfs>,
    /// An upstream image (a dockcross one) the image is built on, pinned by digest in the
    /// lockfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseImage>,
    /// Pinned sources unpacked into the root filesystem (a compiler that is not a Debian
    /// package, such as zig from PyPI's `ziglang` wheel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpack: Vec<Unpack>,
    /// Small files written into the root filesystem, executable (compiler wrappers), by
    /// absolute path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// The environment of builds in the image (dockcross-compatible names). `PATH` is
    /// [`DEFAULT_PATH`] unless set here.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A runner: it runs what was built for its architecture (`wheel-build --test`) and
    /// builds nothing. Implied by an image that is not amd64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runner: bool,
}

/// A pinned source archive unpacked into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unpack {
    /// The source's name in `sources.toml` (pinned by the lockfile).
    pub source: String,
    /// Only this directory of the archive (`ziglang`); the whole archive when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
    /// Where its contents go (`/opt/zig`).
    pub to: String,
}

/// The Debian side of a toolchain: what its root filesystem is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianRootfs {
    /// The release (`bookworm`); its `-updates` and (see `security`) `-security` suites are
    /// used too.
    pub suite: String,
    /// dpkg architectures: the image's own (the host's) first, then the target's when its
    /// libraries come as multiarch packages (`["amd64", "arm64"]`). A cross toolchain built
    /// from Debian's `-cross` packages lists only the host's (`["amd64"]`).
    pub architectures: Vec<String>,
    /// Packages to install besides Debian's essential and required ones, as apt names them
    /// (`zlib1g-dev:arm64` for a foreign architecture).
    pub packages: Vec<String>,
    /// Whether the `-security` suite is used (default). Runner images, which only run
    /// tests, may do without it when a mirror's security index is unusable.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub security: bool,
}

/// An upstream image a toolchain's image is built on: its layers unchanged, plus one
/// layer of ours (the CMake toolchain file, `files`, `unpack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// `REPO:TAG` (`dockcross/linux-arm64:20240104-1a2b3c4`), fetched from the registry
    /// `DOCKERBUILD_BASE_REGISTRY` names, or `HOST[:PORT]/REPO:TAG`. `dockerbuild lock`
    /// pins the tag to a digest.
    pub image: String,
    /// The platform picked from a multi-platform index, `os/architecture[/variant]`.
    /// Default `linux/amd64`, not the host's: a lockfile must not depend on the machine
    /// that wrote it, and builds run x86-64 images.
    #[serde(
        default = "default_platform",
        skip_serializing_if = "is_default_platform"
    )]
    pub platform: String,
}

/// The platform a base image is taken for unless its toolchain names one.
pub const DEFAULT_BASE_PLATFORM: &str = "linux/amd64";

fn default_platform() -> String {
    DEFAULT_BASE_PLATFORM.to_owned()
}

fn is_default_platform(p: &str) -> bool {
    p == DEFAULT_BASE_PLATFORM
}

impl BaseImage {
    /// The dpkg architecture of the platform's (`linux/arm64` → `arm64`), for the
    /// architectures an image can have.
    pub fn dpkg_arch(&self) -> Option<&'static str> {
        Some(match self.platform.as_str() {
            "linux/amd64" => "amd64",
            "linux/arm64" | "linux/arm64/v8" => "arm64",
            "linux/386" => "i386",
            "linux/arm/v7" => "armhf",
            _ => return None,
        })
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Why a toolchain could not be loaded, resolved or built.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("cannot read toolchain `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("toolchain `{}` is malformed:\n{source}\nhint: the format is in toolchains/README.md", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("toolchain `{}`: {reason}\nhint: the format is in toolchains/README.md", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("toolchain `{name}` is defined twice: `{}` and `{}`", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot run `{tool}`{}", hint_for_tool(tool))]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("toolchain `{toolchain}`: {reason}")]
    Resolve { toolchain: String, reason: String },
    #[error("`{}` is not a usable .deb: {reason}", path.display())]
    BadDeb { path: PathBuf, reason: String },
    #[error("`{}` does not match its pin {pin}: expected {expected}, got {actual}", path.display())]
    DebMismatch {
        path: PathBuf,
        /// The pin, as apt names it (`PACKAGE:ARCH=VERSION`).
        pin: String,
        expected: String,
        actual: String,
    },
    #[error("the root filesystem tar `{}` is unusable: {reason}", path.display())]
    BadRootfs { path: PathBuf, reason: String },
    #[error(
        "building a root filesystem needs root (mmdebstrap --mode=root)\nhint: run as root, e.g. with sudo"
    )]
    NotRoot,
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Debian(Box<DebianError>),
}

impl From<DebianError> for ToolchainError {
    fn from(e: DebianError) -> Self {
        ToolchainError::Debian(Box::new(e))
    }
}

fn hint_for_tool(tool: &str) -> String {
    let package = match tool {
        "mmdebstrap" => "mmdebstrap",
        "apt-get" | "apt-cache" => "apt",
        _ => return String::new(),
    };
    format!("\nhint: install it with `apt-get install -y {package}`")
}

impl ToolchainError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| ToolchainError::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T, E = ToolchainError> = std::result::Result<T, E>;

impl Toolchain {
    /// Reads and validates one definition.
    pub fn load(path: &Path) -> Result<Toolchain> {
        let text = std::fs::read_to_string(path).map_err(|source| ToolchainError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tc = Toolchain::parse(&text, path)?;
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            && stem != tc.name
        {
            return Err(ToolchainError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "its name is `{}` but the file is named `{stem}.toml`",
                    tc.name
                ),
            });
        }
        Ok(tc)
    }

    /// Parses and validates a definition's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Toolchain> {
        let tc: Toolchain = toml::from_str(text).map_err(|source| ToolchainError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        tc.validate().map_err(|reason| ToolchainError::Invalid {
            path: origin.to_owned(),
            reason,
        })?;
        Ok(tc)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let word = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        if !word(&self.name, b"-_.") || !self.name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(format!(
                "name `{}` must be lowercase letters, digits, `-`, `_` and `.`",
                self.name
            ));
        }
        if !word(&self.cross_triple, b"-_") || self.cross_triple.split('-').count() < 3 {
            return Err(format!(
                "cross_triple `{}` is not a GNU triple like `aarch64-linux-gnu`",
                self.cross_triple
            ));
        }
        if self.wheel_tags.is_empty() {
            return Err("wheel_tags is empty; name at least one platform tag".to_owned());
        }
        if let Some(t) = self.wheel_tags.iter().find(|t| !word(t, b"_")) {
            return Err(format!("wheel tag `{t}` is not a wheel platform tag"));
        }
        if !word(&self.cipd_platform, b"-") {
            return Err(format!(
                "cipd_platform `{}` is not a CIPD platform like `linux-arm64`",
                self.cipd_platform
            ));
        }
        if let Some(q) = &self.qemu
            && !word(q, b"-_")
        {
            return Err(format!(
                "qemu `{q}` is not an emulator name like `qemu-aarch64`"
            ));
        }
        let d = match (&self.debian, &self.base) {
            (Some(d), None) => d,
            (None, Some(b)) => return self.validate_base(b),
            (Some(_), Some(_)) => {
                return Err(
                    "it has both [debian] and [base]; an image is built from one of them"
                        .to_owned(),
                );
            }
            (None, None) => {
                return Err(
                    "it has neither [debian] nor [base]; name what its image is built from"
                        .to_owned(),
                );
            }
        };
        if !word(&d.suite, b"-") {
            return Err(format!("debian.suite `{}` is not a suite name", d.suite));
        }
        if d.architectures.is_empty() {
            return Err("debian.architectures is empty; list the host's first".to_owned());
        }
        if host_triple(&d.architectures[0]).is_none() {
            return Err(format!(
                "debian.architectures: the image's own architecture `{}` comes first, and must be amd64, arm64, i386 or armhf",
                d.architectures[0]
            ));
        }
        let mut seen = BTreeSet::new();
        for a in &d.architectures {
            if !word(a, b"-") || a == "all" {
                return Err(format!(
                    "debian.architectures: `{a}` is not a dpkg architecture"
                ));
            }
            if !seen.insert(a) {
                return Err(format!("debian.architectures lists `{a}` twice"));
            }
        }
        if d.packages.is_empty() {
            return Err("debian.packages is empty".to_owned());
        }
        for p in &d.packages {
            let (name, arch) = match p.split_once(':') {
                Some((n, a)) => (n, Some(a)),
                None => (p.as_str(), None),
            };
            if !word(name, b"+-.") || !name.as_bytes()[0].is_ascii_alphanumeric() {
                return Err(format!("debian.packages: `{p}` is not a package name"));
            }
            if let Some(a) = arch
                && !d.architectures.iter().any(|x| x == a)
            {
                return Err(format!(
                    "debian.packages: `{p}` names architecture `{a}`, which debian.architectures lacks"
                ));
            }
        }
        self.validate_common()
    }

    fn validate_base(&self, b: &BaseImage) -> std::result::Result<(), String> {
        let reference = b
            .image
            .rsplit_once('/')
            .map_or(b.image.as_str(), |(_, r)| r);
        if !reference.contains(':') && !reference.contains('@') {
            return Err(format!(
                "base.image `{}` names no tag; write REPO:TAG (the lockfile pins it by digest)",
                b.image
            ));
        }
        if b.dpkg_arch().is_none() {
            return Err(format!(
                "base.platform `{}` must be linux/amd64, linux/arm64, linux/386 or linux/arm/v7",
                b.platform
            ));
        }
        self.validate_common()
    }

    /// What every toolchain is checked for, whatever its image is built from.
    fn validate_common(&self) -> std::result::Result<(), String> {
        let plain_abs = |p: &str| {
            p.starts_with('/')
                && p.len() > 1
                && p[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
        };
        for u in &self.unpack {
            if u.source.is_empty() {
                return Err("unpack: `source` is empty".to_owned());
            }
            if !plain_abs(&u.to) {
                return Err(format!(
                    "unpack: `to = \"{}\"` must be an absolute path without `.` or `..`",
                    u.to
                ));
            }
            if let Some(sub) = &u.subdir
                && !plain_abs(&format!("/{sub}"))
            {
                return Err(format!(
                    "unpack: `subdir = \"{sub}\"` must be a relative path inside the archive"
                ));
            }
        }
        for (path, text) in &self.files {
            if !plain_abs(path) {
                return Err(format!(
                    "files: `{path}` must be an absolute path without `.` or `..`"
                ));
            }
            if text.contains('\0') {
                return Err(format!("files: `{path}` has a NUL byte"));
            }
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!("env: `{k}` is not an environment variable name"));
            }
            if v.contains('\0') || v.contains('\n') {
                return Err(format!("env: the value of `{k}` has a NUL or newline"));
            }
        }
        Ok(())
    }

    /// A runner, not a build platform: `runner = true`, or an image of the target's own
    /// userland (not amd64), where everything runs under QEMU; wheels are imported in
    /// runners. Builds need an amd64 image (the x86-64 host Python and cross compilers).
    pub fn is_runner(&self) -> bool {
        self.runner || self.host_arch() != "amd64"
    }

    /// The image's own dpkg architecture (the first listed, or the base image's).
    pub fn host_arch(&self) -> &str {
        match (&self.debian, &self.base) {
            (Some(d), _) => &d.architectures[0],
            (None, Some(b)) => b.dpkg_arch().expect("validated"),
            (None, None) => unreachable!("validated: [debian] or [base]"),
        }
    }

    /// The target's dpkg architecture when its libraries come as multiarch packages (the
    /// last listed); the image's own otherwise.
    pub fn target_arch(&self) -> &str {
        match &self.debian {
            Some(d) => d.architectures.last().expect("validated"),
            None => self.host_arch(),
        }
    }

    /// The `[debian]` section, for the steps that build a root filesystem from it.
    pub fn debian(&self) -> Result<&DebianRootfs> {
        self.debian.as_ref().ok_or_else(|| ToolchainError::Resolve {
            toolchain: self.name.clone(),
            reason: "it has no [debian] section (its image is built on [base])".to_owned(),
        })
    }

    /// Whether the target differs from the image's own machine: its triple is not the
    /// image architecture's.
    pub fn is_cross(&self) -> bool {
        host_triple(self.host_arch()) != Some(self.cross_triple.as_str())
    }

    /// Whether the target's libraries are Debian multiarch packages (`libc6-dev:arm64`,
    /// in `/usr/lib/<triple>`), rather than Debian's `-cross` packages (`libc6-dev-armhf-cross`,
    /// architecture `all`, in `/usr/<triple>`) which need no foreign-architecture index.
    pub fn is_multiarch(&self) -> bool {
        self.debian
            .as_ref()
            .is_some_and(|d| d.architectures.len() > 1)
    }

    /// The environment of the image, `PATH` first then `env` sorted by name, as
    /// `NAME=VALUE`. On a base image, only `env`: the rest (its `PATH` too) is the base's.
    pub fn image_env(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.env.len() + 1);
        if self.base.is_none() && !self.env.contains_key("PATH") {
            out.push(format!("PATH={DEFAULT_PATH}"));
        }
        out.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        out
    }

    /// A tool of the target: `env[var]` when set, else `/usr/bin/<triple>-<tool>`.
    fn tool(&self, env: &BTreeMap<String, String>, var: &str, tool: &str) -> String {
        env.get(var)
            .cloned()
            .unwrap_or_else(|| format!("/usr/bin/{}-{tool}", self.cross_triple))
    }

    /// The CMake toolchain file written at [`CMAKE_TOOLCHAIN_PATH`]: the compilers, and
    /// for a cross target the system, processor and Debian multiarch library directory.
    pub fn cmake_toolchain(&self) -> String {
        self.cmake_toolchain_in(&self.env)
    }

    /// [`Self::cmake_toolchain`] for an image whose environment is `env` (on a base image,
    /// the base's merged with the toolchain's: dockcross names its compilers in `CC`).
    pub fn cmake_toolchain_in(&self, env: &BTreeMap<String, String>) -> String {
        let mut s = format!(
            "# Generated by dockerbuild for toolchain `{}` ({}). Do not edit.\n",
            self.name, self.cross_triple
        );
        if self.is_cross() {
            let processor = self.cross_triple.split('-').next().unwrap_or_default();
            s += "set(CMAKE_SYSTEM_NAME Linux)\n";
            s += &format!("set(CMAKE_SYSTEM_PROCESSOR {processor})\n");
        }
        s += &format!("set(CMAKE_C_COMPILER {})\n", self.tool(env, "CC", "gcc"));
        s += &format!("set(CMAKE_CXX_COMPILER {})\n", self.tool(env, "CXX", "g++"));
        if let Some(pc) = env.get("PKG_CONFIG") {
            s += &format!("set(PKG_CONFIG_EXECUTABLE {pc} CACHE FILEPATH \"pkg-config\")\n");
        }
        if self.is_cross() && self.is_multiarch() {
            // Debian's cross compilers and the foreign-architecture `-dev` packages share
            // the multiarch layout: libraries in /usr/lib/<triple>, headers in /usr/include.
            s += &format!("set(CMAKE_LIBRARY_ARCHITECTURE {})\n", self.cross_triple);
            s += "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)\n";
        } else if self.is_cross() {
            // `-cross` packages install the target's libraries and headers under
            // /usr/<triple>, which is then the only place to look for them.
            s += &format!("set(CMAKE_FIND_ROOT_PATH /usr/{})\n", self.cross_triple);
            s += "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)\n";
            s += "set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)\n";
            s += "set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)\n";
            s += "set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)\n";
        }
        s
    }
}

/// The GNU triple of a dpkg architecture's native compiler, for the architectures an image
/// can have.
pub fn host_triple(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" => "x86_64-linux-gnu",
        "arm64" => "aarch64-linux-gnu",
        "i386" => "i686-linux-gnu",
        // Only runner images (a target's userland under QEMU) are armhf.
        "armhf" => "arm-linux-gnueabihf",
        _ => return None,
    })
}

/// Every `*.toml` in `dir`, sorted by name; names must be unique.
pub fn load_all(dir: &Path) -> Result<Vec<Toolchain>> {
    let paths = crate::project::toml_files(dir).map_err(|source| ToolchainError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut by_name: BTreeMap<String, (PathBuf, Toolchain)> = BTreeMap::new();
    for p in paths {
        let tc = Toolchain::load(&p)?;
        if let Some((first, _)) = by_name.get(&tc.name) {
            return Err(ToolchainError::Duplicate {
                name: tc.name.clone(),
                first: first.clone(),
                second: p,
            });
        }
        by_name.insert(tc.name.clone(), (p, tc));
    }
    Ok(by_name.into_values().map(|(_, tc)| tc).collect())
}

/// A command's description for errors: the program and its first arguments, shell-quoted
/// where needed.
pub(crate) fn describe_command(cmd: &std::process::Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<_> = cmd.get_args().collect();
    for a in args.iter().take(12) {
        let a = a.to_string_lossy();
        if a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=./:,+@".contains(&b))
        {
            s += &format!(" {a}");
        } else {
            s += &format!(" '{}'", a.replace('\'', "'\\''"));
        }
    }
    if args.len() > 12 {
        s += &format!(" ... ({} more arguments)", args.len() - 12);
    }
    s
}

/// Runs `cmd`, returning its stdout; a failure carries the tail of its output.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<Vec<u8>> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ToolchainError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(ToolchainError::Command {
            command: describe_command(cmd),
            status: out.status.to_string(),
            output: tail(&[&out.stdout[..], &out.stderr[..]].concat(), 40),
        });
    }
    Ok(out.stdout)
}

/// The last `lines` lines of `bytes`, as text.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// RFC 3339 (`1970-01-01T00:00:00Z`) for Unix time `t`.
pub(crate) fn rfc3339(t: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// RFC 2822 as Debian's `Release` files write it (`Thu, 01 Jan 1970 00:00:00 UTC`).
pub(crate) fn rfc2822(t: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hh, mm, ss) = civil(t);
    let wd = DAYS[((t / 86_400) % 7) as usize];
    format!(
        "{wd}, {d:02} {} {y:04} {hh:02}:{mm:02}:{ss:02} UTC",
        MONTHS[(m - 1) as usize]
    )
}

/// (year, month, day, hour, minute, second) of Unix time `t`, UTC (Howard Hinnant's
/// days-to-civil algorithm).
fn civil(t: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = t / 86_400;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(rfc2822(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 UTC");
    }

    fn sample() -> Toolchain {
        Toolchain::parse(
            r#"
            name = "linux-arm64"
            cross_triple = "aarch64-linux-gnu"
            wheel_tags = ["linux_aarch64"]
            cipd_platform = "linux-arm64"
            qemu = "qemu-aarch64"
            [debian]
            suite = "bookworm"
            architectures = ["amd64", "arm64"]
            packages = ["gcc-aarch64-linux-gnu", "zlib1g-dev:arm64"]
            [env]
            CC = "/usr/bin/aarch64-linux-gnu-gcc"
            "#,
            Path::new("sample.toml"),
        )
        .unwrap()
    }

    #[test]
    fn validation_names_the_problem() {
        let tc = sample();
        assert!(tc.is_cross());
        assert_eq!(tc.target_arch(), "arm64");
        assert_eq!(tc.image_env()[0], format!("PATH={DEFAULT_PATH}"));
        let bad = |edit: &dyn Fn(&mut Toolchain), what: &str| {
            let mut t = sample();
            edit(&mut t);
            let e = t.validate().unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        bad(
            &|t| t.debian.as_mut().unwrap().packages.push("x:armhf".into()),
            "armhf",
        );
        bad(
            &|t| {
                t.debian
                    .as_mut()
                    .unwrap()
                    .architectures
                    .push("amd64".into())
            },
            "twice",
        );
        let base = BaseImage {
            image: "dockcross/linux-arm64:1".into(),
            platform: DEFAULT_BASE_PLATFORM.into(),
        };
        bad(&|t| t.base = Some(base.clone()), "both [debian] and [base]");
        bad(&|t| t.debian = None, "neither [debian] nor [base]");
        bad(
            &|t| {
                t.debian = None;
                t.base = Some(BaseImage {
                    image: "dockcross/linux-arm64".into(),
                    ..base.clone()
                })
            },
            "names no tag",
        );
        bad(
            &|t| {
                t.debian = None;
                t.base = Some(BaseImage {
                    platform: "linux/s390x".into(),
                    ..base.clone()
                })
            },
            "base.platform",
        );
        bad(&|t| t.wheel_tags.clear(), "wheel_tags");
        bad(&|t| t.cross_triple = "aarch64".into(), "triple");
        bad(&|t| drop(t.env.insert("A B".into(), "x".into())), "A B");
        let e = Toolchain::parse("name = \"x\"\nbogus = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn cmake_toolchain_file() {
        let t = sample().cmake_toolchain();
        assert!(t.contains("set(CMAKE_SYSTEM_PROCESSOR aarch64)"), "{t}");
        assert!(
            t.contains("set(CMAKE_C_COMPILER /usr/bin/aarch64-linux-gnu-gcc)"),
            "{t}"
        );
        assert!(
            t.contains("set(CMAKE_CXX_COMPILER /usr/bin/aarch64-linux-gnu-g++)"),
            "{t}"
        );
        assert!(
            t.contains("CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu"),
            "{t}"
        );
    }
}
