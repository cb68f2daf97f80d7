//! [`Engine`]: the synchronous facade over bollard.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount as DockerMount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, ImportImageOptionsBuilder, ListContainersOptions, ListImagesOptions,
    RemoveContainerOptions, RemoveImageOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tracing::{debug, instrument, warn};

use super::{
    CleanReport, CleanedContainer, CleanedImage, ContainerSpec, DockerError, EngineInfo,
    LABEL_KIND, LABEL_MANAGED, OutputTail, Result, RunOutput, TAIL_BYTES, signals,
};

/// Where the daemon listens when `$DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long connecting and negotiating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one request may wait for the daemon's response headers (loading a large
/// image sends the whole tar first).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes read from an image tar at a time.
const LOAD_CHUNK: usize = 256 * 1024;
/// Where the Docker socket may be, besides the one we talk to; never mounted.
const KNOWN_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
];

/// A connection to the local Docker daemon. Synchronous: each method drives the engine's
/// own current-thread tokio runtime, so it must not be called from inside an async runtime.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    info: EngineInfo,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
}

impl Engine {
    /// Connects to `$DOCKER_HOST`, else [`DEFAULT_HOST`].
    pub fn connect() -> Result<Engine> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Engine::connect_to(&host)
    }

    /// Connects to `host` (`unix:///path`, `tcp://host:port`) and negotiates the API
    /// version down to what the daemon speaks.
    #[instrument]
    pub fn connect_to(host: &str) -> Result<Engine> {
        let rt = new_runtime()?;
        let (docker, info) = rt.block_on(connect_async(host))?;
        debug!(?info, "connected to the Docker daemon");
        Ok(Engine { rt, docker, info })
    }

    /// The daemon's version and the negotiated API version.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// `docker load`: streams a `docker save`-format tar from `tar` into the daemon and
    /// returns the ID (`sha256:...`) of the one image it holds.
    #[instrument(skip(self), fields(tar = %tar.display()))]
    pub fn load_image(&self, tar: &Path) -> Result<String> {
        let file = std::fs::File::open(tar).map_err(|source| DockerError::Io {
            action: "open image tar",
            path: tar.to_owned(),
            source,
        })?;
        self.rt.block_on(async {
            let body = futures_util::stream::unfold(
                Some(tokio::fs::File::from_std(file)),
                |file| async move {
                    let mut file = file?;
                    let mut buf = vec![0u8; LOAD_CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(buf.into()), Some(file)))
                        }
                        Err(e) => Some((Err(e), None)),
                    }
                },
            );
            let options = ImportImageOptionsBuilder::default().quiet(true).build();
            let mut progress =
                self.docker
                    .import_image(options, bollard::body_try_stream(body), None);
            let mut refs = Vec::new();
            let mut said = String::new();
            while let Some(item) = progress.next().await {
                let item = item.map_err(api("load image", tar.display()))?;
                let Some(text) = item.stream else { continue };
                for line in text.lines() {
                    if let Some(r) = line
                        .strip_prefix("Loaded image ID: ")
                        .or_else(|| line.strip_prefix("Loaded image: "))
                    {
                        refs.push(r.trim().to_owned());
                    }
                }
                said.push_str(&text);
            }
            let mut ids = BTreeSet::new();
            for r in &refs {
                let image = self
                    .docker
                    .inspect_image(r)
                    .await
                    .map_err(api("inspect loaded image", r))?;
                ids.insert(image.id.unwrap_or_else(|| r.clone()));
            }
            let mut ids: Vec<String> = ids.into_iter().collect();
            match ids.len() {
                0 => Err(DockerError::LoadedNothing {
                    path: tar.to_owned(),
                    detail: if said.trim().is_empty() {
                        String::new()
                    } else {
                        format!(" (the daemon said: {})", said.trim())
                    },
                }),
                1 => {
                    let id = ids.remove(0);
                    debug!(%id, "loaded image");
                    Ok(id)
                }
                _ => Err(DockerError::LoadedSeveral {
                    path: tar.to_owned(),
                    ids,
                }),
            }
        })
    }

    /// Whether the daemon has this image (an ID or a tag).
    #[instrument(skip(self))]
    pub fn image_exists(&self, image: &str) -> Result<bool> {
        self.rt.block_on(async {
            match self.docker.inspect_image(image).await {
                Ok(_) => Ok(true),
                Err(e) if status(&e) == Some(404) => Ok(false),
                Err(e) => Err(api("inspect image", image)(e)),
            }
        })
    }

    /// Runs `spec` to completion: creates the container, streams its stdout and stderr to
    /// `output` as they arrive, waits for it, and removes it, always (on errors, on a panic
    /// in `output`, and on Ctrl-C or SIGTERM, which return [`DockerError::Interrupted`]).
    #[instrument(skip_all, fields(image = %spec.image, kind = %spec.kind))]
    pub fn run(&self, spec: &ContainerSpec, output: &mut dyn FnMut(&[u8])) -> Result<RunOutput> {
        let body = self.create_body(spec, false)?;
        self.rt.block_on(async {
            let mut tail = OutputTail::new(TAIL_BYTES);
            let exit_code = self
                .contained(&spec.image, body, async |id: &str| {
                    self.stream_output(id, output, &mut tail).await
                })
                .await?;
            debug!(exit_code, "container exited");
            Ok(RunOutput {
                exit_code,
                tail: tail.into_vec(),
            })
        })
    }

    /// Removes every container (running or not) and image labelled
    /// [`LABEL_MANAGED`]`=true`, including those of other dockerbuild processes. An image
    /// still used by a running container that is not ours is kept and reported.
    pub fn clean(&self) -> Result<CleanReport> {
        self.clean_where(None)
    }

    /// [`Engine::clean`], limited to what is also labelled [`LABEL_KIND`]`=kind`.
    pub fn clean_kind(&self, kind: &str) -> Result<CleanReport> {
        self.clean_where(Some(kind))
    }

    #[instrument(skip(self))]
    fn clean_where(&self, kind: Option<&str>) -> Result<CleanReport> {
        self.rt.block_on(async {
            let mut report = CleanReport::default();
            let mut labels = vec![format!("{LABEL_MANAGED}=true")];
            labels.extend(kind.map(|k| format!("{LABEL_KIND}={k}")));
            let filters = HashMap::from([("label".to_owned(), labels)]);
            let containers = self
                .docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .map_err(api("list containers labelled", LABEL_MANAGED))?;
            for c in containers {
                let Some(id) = c.id else { continue };
                if self.remove_container(&id).await? {
                    debug!(%id, "removed container");
                    report.containers.push(CleanedContainer {
                        name: c
                            .names
                            .and_then(|n| n.into_iter().next())
                            .map(|n| n.trim_start_matches('/').to_owned())
                            .unwrap_or_default(),
                        kind: c
                            .labels
                            .and_then(|mut l| l.remove(LABEL_KIND))
                            .unwrap_or_default(),
                        image: c.image.unwrap_or_default(),
                        id,
                    });
                }
            }
            let images = self
                .docker
                .list_images(Some(ListImagesOptions {
                    all: false,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .map_err(api("list images labelled", LABEL_MANAGED))?;
            for mut image in images {
                let options = RemoveImageOptions {
                    force: true,
                    ..Default::default()
                };
                match self
                    .docker
                    .remove_image(&image.id, Some(options), None)
                    .await
                {
                    Ok(_) => {
                        debug!(id = %image.id, "removed image");
                        report.images.push(CleanedImage {
                            kind: image.labels.remove(LABEL_KIND).unwrap_or_default(),
                            tags: image
                                .repo_tags
                                .into_iter()
                                .filter(|t| t != "<none>:<none>")
                                .collect(),
                            size: image.size,
                            id: image.id,
                        });
                    }
                    Err(e) if status(&e) == Some(404) => {}
                    Err(e) if status(&e) == Some(409) => {
                        warn!(id = %image.id, error = %e, "image kept");
                        report.kept_images.push((image.id, server_message(&e)));
                    }
                    Err(e) => return Err(api("remove image", &image.id)(e)),
                }
            }
            Ok(report)
        })
    }

    pub(super) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub(super) fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Checks `spec` and translates it into the daemon's terms, with the confined defaults.
    pub(super) fn create_body(
        &self,
        spec: &ContainerSpec,
        stdin: bool,
    ) -> Result<ContainerCreateBody> {
        let invalid = |reason: String| DockerError::InvalidSpec {
            image: spec.image.clone(),
            reason,
        };
        if spec.image.trim().is_empty() {
            return Err(invalid("no image".into()));
        }
        if spec.kind.is_empty() {
            return Err(invalid("no kind".into()));
        }
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(invalid(format!("bad environment variable `{k}`")));
            }
            env.push(format!("{k}={v}"));
        }
        let sockets = self.socket_paths();
        let mut mounts = Vec::with_capacity(spec.mounts.len());
        for m in &spec.mounts {
            if !m.host.is_absolute() || !m.container.starts_with('/') {
                return Err(invalid(format!(
                    "mount `{}` -> `{}`: both paths must be absolute",
                    m.host.display(),
                    m.container
                )));
            }
            let meta = std::fs::metadata(&m.host)
                .map_err(|e| invalid(format!("mount source `{}`: {e}", m.host.display())))?;
            let canonical = m
                .host
                .canonicalize()
                .map_err(|e| invalid(format!("mount source `{}`: {e}", m.host.display())))?;
            if meta.file_type().is_socket() || sockets.iter().any(|s| s.starts_with(&canonical)) {
                return Err(invalid(format!(
                    "mount source `{}` would expose the Docker socket to the container",
                    m.host.display()
                )));
            }
            let Some(source) = canonical.to_str() else {
                return Err(invalid(format!(
                    "mount source `{}` is not UTF-8",
                    m.host.display()
                )));
            };
            mounts.push(DockerMount {
                target: Some(m.container.clone()),
                source: Some(source.to_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            });
        }
        let mut tmpfs = HashMap::new();
        for t in &spec.tmpfs {
            let (path, options) = t.split_once(':').unwrap_or((t.as_str(), ""));
            if !path.starts_with('/') {
                return Err(invalid(format!("tmpfs `{t}`: the path must be absolute")));
            }
            tmpfs.insert(path.to_owned(), options.to_owned());
        }
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        labels.insert(LABEL_KIND.to_owned(), spec.kind.clone());

        Ok(ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(env),
            working_dir: spec.workdir.clone(),
            user: spec.user.clone(),
            tty: Some(spec.tty),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            stdin_once: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
                network_mode: Some(if spec.network { "default" } else { "none" }.to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Every path that is (or leads to) a Docker socket on this machine.
    fn socket_paths(&self) -> Vec<PathBuf> {
        let ours = self.info.host.strip_prefix("unix://").map(PathBuf::from);
        KNOWN_SOCKETS
            .iter()
            .map(PathBuf::from)
            .chain(ours)
            .flat_map(|p| {
                let canonical = p.canonicalize().ok();
                std::iter::once(p).chain(canonical)
            })
            .collect()
    }

    /// Creates a container from `body`, runs `work` on it, and removes it whatever
    /// happens: `work`'s error, a daemon error, Ctrl-C or SIGTERM (the container is
    /// removed, then [`DockerError::Interrupted`]), or a panic (the guard removes it).
    pub(super) async fn contained<T>(
        &self,
        image: &str,
        body: ContainerCreateBody,
        work: impl AsyncFnOnce(&str) -> Result<T>,
    ) -> Result<T> {
        // Before the container exists, so no SIGINT can leave it behind.
        let mut interrupts = signals::subscribe()?;
        let id = self.create_container(image, body).await?;
        let guard = RemoveOnDrop {
            host: self.info.host.clone(),
            id: Some(id.clone()),
        };
        let outcome = tokio::select! {
            r = work(&id) => r,
            sig = interrupts.recv() => Err(DockerError::Interrupted {
                signal: sig.map_or("a signal", |s| s.name()),
                container: id.clone(),
            }),
        };
        let removed = self.remove_container(&id).await;
        guard.disarm();
        let value = outcome?;
        removed?;
        Ok(value)
    }

    #[instrument(skip(self, body))]
    async fn create_container(&self, image: &str, body: ContainerCreateBody) -> Result<String> {
        match self.docker.create_container(None, body).await {
            Ok(created) => {
                for w in &created.warnings {
                    debug!(warning = %w, "creating the container");
                }
                debug!(id = %created.id, "created container");
                Ok(created.id)
            }
            Err(e) if status(&e) == Some(404) => Err(DockerError::ImageNotLoaded {
                image: image.to_owned(),
            }),
            Err(e) => Err(api("create a container of image", image)(e)),
        }
    }

    /// Attaches to `id`'s output, starts it, streams everything it prints, and waits for
    /// its exit code.
    async fn stream_output(
        &self,
        id: &str,
        output: &mut dyn FnMut(&[u8]),
        tail: &mut OutputTail,
    ) -> Result<i64> {
        let AttachContainerResults {
            output: mut out, ..
        } = self
            .docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(api("attach to container", id))?;
        self.start_container(id).await?;
        while let Some(chunk) = out.next().await {
            let bytes = chunk
                .map_err(api("read the output of container", id))?
                .into_bytes();
            tail.push(&bytes);
            output(&bytes);
        }
        self.wait_container(id).await
    }

    #[instrument(skip(self))]
    pub(super) async fn start_container(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(api("start container", id))
    }

    /// The exit code of `id` once it stops.
    pub(super) async fn wait_container(&self, id: &str) -> Result<i64> {
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        let mut waited = self.docker.wait_container(id, Some(options));
        match waited.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error; it is an answer.
            Some(Err(BollardError::DockerContainerWaitError { code, error })) => {
                if !error.is_empty() {
                    warn!(%id, %error, code, "waiting for the container");
                }
                Ok(code)
            }
            Some(Err(e)) => Err(api("wait for container", id)(e)),
            None => Err(api("wait for container", id)(BollardError::IOError {
                err: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the wait without an exit code",
                ),
            })),
        }
    }

    /// Force-removes `id` and its anonymous volumes. Returns false if it was already gone.
    #[instrument(skip(self))]
    async fn remove_container(&self, id: &str) -> Result<bool> {
        match self
            .docker
            .remove_container(id, Some(remove_options()))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            // "removal of container ... is already in progress"
            Err(e) if status(&e) == Some(409) => Ok(false),
            Err(e) => Err(api("remove container", id)(e)),
        }
    }
}

fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

/// Removes a container when dropped armed: the path out of a panic. It cannot use the
/// engine's runtime (which is unwinding), so it connects afresh from its own thread.
struct RemoveOnDrop {
    host: String,
    id: Option<String>,
}

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let host = self.host.clone();
        warn!(%id, "removing the container after an abandoned run");
        let removed = std::thread::spawn(move || -> Result<(), String> {
            let rt = new_runtime().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (docker, _) = connect_async(&host).await.map_err(|e| e.to_string())?;
                docker
                    .remove_container(&id, Some(remove_options()))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = removed {
            warn!(error = %e, "could not remove the container");
        }
    }
}

fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DockerError::Runtime {
            action: "start the async runtime for Docker",
            source,
        })
}

async fn connect_async(host: &str) -> Result<(Docker, EngineInfo)> {
    let unreachable = |e: BollardError| classify_connect_error(host, e);
    let docker = Docker::connect_with_host(host)
        .map_err(unreachable)?
        .with_timeout(CONNECT_TIMEOUT);
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    let v = docker.version().await.map_err(unreachable)?;
    let info = EngineInfo {
        host: host.to_owned(),
        version: v.version.unwrap_or_default(),
        server_api_version: v.api_version.unwrap_or_default(),
        min_api_version: v.min_api_version.unwrap_or_default(),
        api_version: docker.client_version().to_string(),
        os: v.os.unwrap_or_default(),
        arch: v.arch.unwrap_or_default(),
        kernel_version: v.kernel_version.unwrap_or_default(),
    };
    Ok((docker.with_timeout(REQUEST_TIMEOUT), info))
}

fn classify_connect_error(host: &str, e: BollardError) -> DockerError {
    if let BollardError::UnsupportedURISchemeError { .. } = e {
        return api("connect to the Docker daemon at", host)(e);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return DockerError::PermissionDenied {
                host: host.to_owned(),
                source: e,
            };
        }
        cause = c.source();
    }
    DockerError::NoDaemon {
        host: host.to_owned(),
        source: e,
    }
}

fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn server_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub(super) fn api(
    action: &'static str,
    subject: impl std::fmt::Display,
) -> impl FnOnce(BollardError) -> DockerError {
    let subject = subject.to_string();
    move |source| DockerError::Api {
        action,
        subject,
        source,
    }
}
