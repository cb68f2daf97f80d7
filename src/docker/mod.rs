//! The Docker engine layer: one local daemon, images loaded from tars, containers that
//! never outlive the call that made them.
//!
//! [`Engine`] talks to the daemon on the local socket (`$DOCKER_HOST`, else
//! `unix:///var/run/docker.sock`) through bollard, with the API version negotiated down to
//! what the daemon speaks (Debian bookworm's docker.io speaks 1.41). It is synchronous:
//! each method drives a current-thread tokio runtime the engine owns.
//!
//! # Promises
//!
//! - **Nothing comes from a registry.** Images enter only through [`Engine::load_image`]
//!   (a `docker save` tar); nothing here pulls, and creating a container from an image
//!   that is not loaded fails with [`DockerError::ImageNotLoaded`] (the daemon's create
//!   endpoint never pulls; only the `docker` CLI does).
//! - **Containers are removed.** [`Engine::run`] removes its container whether the command
//!   succeeds, fails, the daemon errors, the output callback panics, or the user presses
//!   Ctrl-C (the container is removed, then [`DockerError::Interrupted`] is returned).
//!   Only a SIGKILL of this process can leave one behind.
//! - **Everything is labelled.** Every container carries [`LABEL_MANAGED`]`=true` and
//!   [`LABEL_KIND`]; images we build should carry the same labels in their config
//!   ([`managed_labels`]). [`Engine::clean`] removes whatever carries them.
//! - **Builds are confined.** All capabilities dropped, `no-new-privileges`, no network
//!   unless asked ([`ContainerSpec::network`]), bind mounts read-only unless declared
//!   writable, and a mount that would expose the Docker socket is refused.
//!
//! # Ctrl-C
//!
//! While a container runs, SIGINT and SIGTERM are routed to its run (see `signals.rs`):
//! the container is removed and the call returns [`DockerError::Interrupted`]. The
//! handlers, once installed (at the first run), stay for the life of the process: a
//! signal that arrives while no container runs exits the process with status 130 (SIGINT)
//! or 143 (SIGTERM), as the default action would have ended it. A SIGKILL leaves the
//! container behind, labelled, for [`Engine::clean`].

mod engine;
mod interactive;
mod signals;
mod tail;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub use engine::{DEFAULT_HOST, Engine};
pub use tail::OutputTail;

/// The label every container and image dockerbuild creates carries, with value `true`.
pub const LABEL_MANAGED: &str = "org.dockerbuild.managed";
/// The label naming what a container or image is for (see the `KIND_*` constants).
pub const LABEL_KIND: &str = "org.dockerbuild.kind";

/// A container that runs one build step.
pub const KIND_BUILD: &str = "build";
/// An interactive `dockerbuild shell`.
pub const KIND_SHELL: &str = "shell";
/// A base or builder image.
pub const KIND_IMAGE: &str = "image";
/// Made by the test suite.
pub const KIND_TEST: &str = "test";

/// How much of a container's output [`RunOutput::tail`] keeps.
pub const TAIL_BYTES: usize = 64 * 1024;

/// The labels that mark something as dockerbuild's, for an image config or a container.
pub fn managed_labels(kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_KIND.to_owned(), kind.to_owned()),
    ])
}

/// A bind mount of a host path into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// An absolute, existing path on the host.
    pub host: PathBuf,
    /// An absolute path in the container.
    pub container: String,
    pub read_only: bool,
}

impl Mount {
    pub fn read_only(host: impl Into<PathBuf>, container: impl Into<String>) -> Self {
        Mount {
            host: host.into(),
            container: container.into(),
            read_only: true,
        }
    }

    pub fn read_write(host: impl Into<PathBuf>, container: impl Into<String>) -> Self {
        Mount {
            host: host.into(),
            container: container.into(),
            read_only: false,
        }
    }
}

/// What to run, where and how. [`ContainerSpec::new`] gives the confined defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// An image ID (`sha256:...`) or a tag of a loaded image.
    pub image: String,
    /// The command; empty runs the image's default command.
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// The working directory in the container; `None` keeps the image's.
    pub workdir: Option<String>,
    /// `uid:gid` (or `uid`) to run as; `None` keeps the image's user.
    pub user: Option<String>,
    /// `false` gives the container no network but loopback (`network_mode: none`).
    pub network: bool,
    /// Allocate a pseudo-terminal (stdout and stderr arrive merged).
    pub tty: bool,
    /// The value of [`LABEL_KIND`].
    pub kind: String,
    /// More labels; the `org.dockerbuild.` ones are set by the engine and cannot be overridden.
    pub labels: BTreeMap<String, String>,
    /// tmpfs mounts: `PATH` or `PATH:OPTIONS` (e.g. `/tmp:rw,size=64m`).
    pub tmpfs: Vec<String>,
}

impl ContainerSpec {
    /// A build container of `image` running `cmd`: no network, no TTY, the image's user
    /// and working directory.
    pub fn new(image: impl Into<String>, cmd: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ContainerSpec {
            image: image.into(),
            cmd: cmd.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            mounts: Vec::new(),
            workdir: None,
            user: None,
            network: false,
            tty: false,
            kind: KIND_BUILD.to_owned(),
            labels: BTreeMap::new(),
            tmpfs: Vec::new(),
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The command's exit status (128 + N when killed by signal N).
    pub exit_code: i64,
    /// The last [`TAIL_BYTES`] of stdout and stderr, interleaved as they arrived.
    pub tail: Vec<u8>,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// The tail as text (invalid UTF-8 replaced).
    pub fn tail_lossy(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// The daemon this engine talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// Where: `unix:///var/run/docker.sock`, `tcp://...`.
    pub host: String,
    /// The daemon's version, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The API version the daemon speaks at most.
    pub server_api_version: String,
    /// The oldest API version the daemon accepts.
    pub min_api_version: String,
    /// The API version this engine negotiated and uses.
    pub api_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
}

/// A container [`Engine::clean`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanedContainer {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub image: String,
}

/// An image [`Engine::clean`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanedImage {
    pub id: String,
    pub tags: Vec<String>,
    pub kind: String,
    pub size: i64,
}

/// What [`Engine::clean`] removed, and what it had to leave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanReport {
    pub containers: Vec<CleanedContainer>,
    pub images: Vec<CleanedImage>,
    /// Images that could not be removed (e.g. used by a container not ours), with why.
    pub kept_images: Vec<(String, String)>,
}

impl CleanReport {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.images.is_empty() && self.kept_images.is_empty()
    }
}

const NO_DAEMON_HINT: &str = "hint: start the daemon as root with `dockerd >/tmp/dockerbuild-dockerd.log 2>&1 &` \
     (or `systemctl start docker`); install it with `apt-get install docker.io`; \
     tests/setup-docker.sh does both";

/// Something that went wrong talking to Docker; each variant names the action and its subject.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to the Docker daemon at `{host}`\n{NO_DAEMON_HINT}")]
    NoDaemon {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "permission denied connecting to the Docker daemon at `{host}`\nhint: run as root, or add yourself to the `docker` group (`usermod -aG docker $USER`, then log in again)"
    )]
    PermissionDenied {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {action} `{subject}`")]
    Api {
        action: &'static str,
        subject: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action}")]
    Runtime {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "image `{image}` is not loaded in the Docker daemon\nhint: dockerbuild never pulls from a registry; load the image from its tar first"
    )]
    ImageNotLoaded { image: String },
    #[error("loading `{}` did not load an image{detail}", path.display())]
    LoadedNothing { path: PathBuf, detail: String },
    #[error("`{}` holds {} images ({}); expected one", path.display(), ids.len(), ids.join(", "))]
    LoadedSeveral { path: PathBuf, ids: Vec<String> },
    #[error("invalid container spec for image `{image}`: {reason}")]
    InvalidSpec { image: String, reason: String },
    #[error("interrupted by {signal}: container `{container}` was removed")]
    Interrupted {
        signal: &'static str,
        container: String,
    },
    #[error(
        "container `{container}` did not exit after its output ended (detached?); it was removed"
    )]
    Detached { container: String },
}

pub type Result<T, E = DockerError> = std::result::Result<T, E>;
