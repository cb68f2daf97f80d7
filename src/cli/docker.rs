//! `docker-generate`, `run`, `shell`, `entrypoint` and `clean`: toolchain images and
//! commands in them; `docker-mirror`: images copied between registries.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use dockerbuild::docker::{ContainerSpec, Engine, Mount};
use dockerbuild::fetch::{Http, HttpOptions};
use dockerbuild::image::{self, Image};
use dockerbuild::project::Project;
use dockerbuild::source::Fetcher;
use dockerbuild::store::LocalStore;

use super::GlobalArgs;
use super::output::{self, Bars};
use super::sources::ensure_locked;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The platform (a toolchains/*.toml name), e.g. linux-arm64; repeat for several
    #[arg(long = "platform", short = 'p', required = true)]
    pub platforms: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// HOST[:PORT]/REPO:TAG or HOST[:PORT]/REPO@sha256:HEX (without --to)
    #[arg(required_unless_present = "to", conflicts_with = "to")]
    pub src: Option<String>,
    /// HOST[:PORT]/REPO[:TAG] (without --to)
    #[arg(required_unless_present = "to", conflicts_with = "to")]
    pub dst: Option<String>,
    /// Copy every base image the lockfile pins to HOST[:PORT][/PREFIX] (under
    /// PREFIX/REPO) and record the copies in the lockfile
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    pub to: Option<String>,
    /// With --to: only this toolchain's base image (repeatable)
    #[arg(long = "platform", short = 'p', requires = "to")]
    pub platforms: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlatformArg {
    /// The platform (a toolchains/*.toml name), e.g. linux-arm64
    #[arg(long, short = 'p')]
    pub platform: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The platform (a toolchains/*.toml name), e.g. linux-arm64
    #[arg(long, short = 'p')]
    pub platform: String,
    /// The directory mounted at /work [default: the current directory]
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Set a variable in the container (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Prepend V to variable K, `:`-separated (e.g. --env-prefix PATH /work/bin)
    #[arg(long = "env-prefix", num_args = 2, value_names = ["K", "V"])]
    pub env_prefix: Vec<String>,
    /// Append V to variable K, `:`-separated
    #[arg(long = "env-suffix", num_args = 2, value_names = ["K", "V"])]
    pub env_suffix: Vec<String>,
    /// Give the container network access (off by default)
    #[arg(long)]
    pub network: bool,
    /// The command and its arguments
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What every command here opens.
pub(super) struct Session {
    pub project: Project,
    pub store: LocalStore,
    pub fetcher: Fetcher,
    pub caches: dockerbuild::cache::Caches,
}

pub(super) fn open(g: &GlobalArgs, store_dir: &Path) -> Result<Session> {
    Ok(Session {
        project: Project::discover(g.project.as_deref())?,
        store: LocalStore::open(store_dir)?,
        fetcher: Fetcher::new(Http::new(HttpOptions::from_env())),
        caches: super::cache::caches(g, &super::cache::config(g)?)?,
    })
}

pub(super) fn image_for(g: &GlobalArgs, c: &Session, platform: &str) -> Result<Image> {
    let lock = ensure_locked(g, &c.project, &c.store, &c.fetcher, &[])?;
    let bars = Bars::new(g.quiet);
    let bar = |n: &str| bars.bar(n);
    Ok(image::generate(
        &c.store, &c.fetcher, &c.project, &lock, platform, &c.caches, &bar,
    )?)
}

pub fn generate(args: GenerateArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let c = open(g, store_dir)?;
    let engine = Engine::connect()?;
    let mut images = Vec::new();
    for p in &args.platforms {
        let started = std::time::Instant::now();
        let img = image_for(g, &c, p)?;
        image::ensure_loaded(&engine, &img)?;
        output::status(format!(
            "{p}: image {} ({}, {:.1}s)",
            img.id,
            if img.cached {
                "from the store"
            } else {
                "generated"
            },
            started.elapsed().as_secs_f64()
        ));
        images.push(img);
    }
    super::cache::report_uploads(&c.caches, &c.store);
    if g.json {
        output::json(&images)?;
    } else {
        for i in &images {
            println!("{} {}", i.platform, i.id);
        }
    }
    Ok(0)
}

/// The image's `K=V` list as pairs.
fn pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Applies --env, then --env-prefix and --env-suffix, over the image's environment.
fn environment(image_env: &[String], args: &RunArgs) -> Result<Vec<(String, String)>> {
    let mut env = pairs(image_env);
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env `{kv}` is not K=V");
        };
        upsert(&mut env, k, |_| v.to_owned());
    }
    for pair in args.env_prefix.chunks(2) {
        let v = &pair[1];
        upsert(&mut env, &pair[0], |old| match old {
            Some(o) if !o.is_empty() => format!("{v}:{o}"),
            _ => v.clone(),
        });
    }
    for pair in args.env_suffix.chunks(2) {
        let v = &pair[1];
        upsert(&mut env, &pair[0], |old| match old {
            Some(o) if !o.is_empty() => format!("{o}:{v}"),
            _ => v.clone(),
        });
    }
    Ok(env)
}

fn upsert(env: &mut Vec<(String, String)>, k: &str, f: impl FnOnce(Option<&str>) -> String) {
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = f(Some(&e.1)),
        None => env.push((k.to_owned(), f(None))),
    }
}

fn caller() -> String {
    format!(
        "{}:{}",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    )
}

/// The work directory mount and the container's working directory for the caller's cwd.
fn work_mount(workdir: Option<&Path>) -> Result<(Mount, String)> {
    let cwd = std::env::current_dir()?;
    let dir = match workdir {
        Some(d) => std::path::absolute(d)?,
        None => cwd.clone(),
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot use `{}` as the work directory", dir.display()))?;
    let inner = match cwd
        .canonicalize()
        .ok()
        .and_then(|c| c.strip_prefix(&dir).ok().map(Path::to_owned))
    {
        Some(rel) if !rel.as_os_str().is_empty() => format!("/work/{}", rel.display()),
        _ => "/work".to_owned(),
    };
    Ok((Mount::read_write(dir, "/work"), inner))
}

/// The caller's environment in a platform's toolchain, shared by `run` and `shell`: the
/// image loaded, the work directory at /work, the caller's uid:gid, a tmpfs HOME.
fn caller_container(
    g: &GlobalArgs,
    store_dir: &Path,
    platform: &str,
    workdir: Option<&Path>,
    cmd: Vec<String>,
) -> Result<(Engine, ContainerSpec, Vec<String>)> {
    let c = open(g, store_dir)?;
    let engine = Engine::connect()?;
    let img = image_for(g, &c, platform)?;
    image::ensure_loaded(&engine, &img)?;
    let image_env = image::toolchain(&c.project, platform)?.image_env();
    let (mount, inner) = work_mount(workdir)?;
    let mut spec = ContainerSpec::new(img.id.clone(), cmd);
    spec.mounts.push(mount);
    spec.workdir = Some(inner);
    spec.user = Some(caller());
    spec.tmpfs.push("/tmp:rw,exec".into());
    Ok((engine, spec, image_env))
}

pub fn run(args: RunArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let (engine, mut spec, image_env) = caller_container(
        g,
        store_dir,
        &args.platform,
        args.workdir.as_deref(),
        args.command.clone(),
    )?;
    spec.env = environment(&image_env, &args)?;
    spec.env.push(("HOME".into(), "/tmp".into()));
    spec.network = args.network;
    spec.kind = "run".into();
    let mut stdout = std::io::stdout();
    let out = engine.run(&spec, &mut |bytes| {
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    })?;
    Ok(i32::try_from(out.exit_code).unwrap_or(1))
}

pub fn shell(args: PlatformArg, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let cmd = vec!["/bin/bash".to_owned(), "-l".to_owned()];
    let (engine, mut spec, image_env) = caller_container(g, store_dir, &args.platform, None, cmd)?;
    spec.env = pairs(&image_env);
    spec.env.push(("HOME".into(), "/tmp".into()));
    spec.env
        .push(("PS1".into(), format!("[{}] \\w \\$ ", args.platform)));
    spec.tty = true;
    spec.kind = "shell".into();
    let code = engine.run_interactive(&spec)?;
    Ok(i32::try_from(code).unwrap_or(1))
}

pub fn entrypoint(args: PlatformArg, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let c = open(g, store_dir)?;
    let img = image_for(g, &c, &args.platform)?;
    let tc = image::toolchain(&c.project, &args.platform)?;
    let mut env_flags = String::new();
    for kv in tc.image_env() {
        env_flags.push_str(&format!(" \\\n  -e '{}'", kv.replace('\'', "'\\''")));
    }
    print!(
        r#"#!/usr/bin/env bash
# Runs a command in dockerbuild's pinned `{platform}` toolchain image, with the current
# directory at /work, as the calling user, without network. Generated by
# `dockerbuild entrypoint --platform {platform}`.
#   ./script.sh make -j4
set -euo pipefail
IMAGE='{id}'
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "error: image $IMAGE ({platform}) is not loaded" >&2
  echo "hint: run \`dockerbuild docker-generate --platform {platform}\`, or \`docker load -i {entry}\` where that store entry exists" >&2
  exit 1
fi
tty=()
[ -t 0 ] && [ -t 1 ] && tty=(-t)
exec docker run --rm -i "${{tty[@]}}" --network none --pull never \
  --user "$(id -u):$(id -g)" -e HOME=/tmp --tmpfs /tmp:rw,exec \
  -v "$PWD":/work -w /work \
  --label org.dockerbuild.managed=true --label org.dockerbuild.kind=entrypoint{env} \
  "$IMAGE" "$@"
"#,
        platform = args.platform,
        id = img.id,
        entry = img.entry.display(),
        env = env_flags,
    );
    Ok(0)
}

pub fn clean(g: &GlobalArgs) -> Result<i32> {
    let engine = Engine::connect()?;
    let report = engine.clean()?;
    if g.json {
        output::json(&report)?;
    } else {
        for c in &report.containers {
            println!("removed container {c:?}");
        }
        for i in &report.images {
            println!("removed image {i:?}");
        }
        output::status(format!(
            "removed {} containers and {} images",
            report.containers.len(),
            report.images.len()
        ));
    }
    Ok(0)
}

pub fn mirror(args: MirrorArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    use dockerbuild::registry::{OciOptions, Repository, parse_reference};
    use std::sync::Arc;
    if let Some(to) = &args.to {
        return mirror_locked(to, &args.platforms, g, store_dir);
    }
    let (src, dst) = match (&args.src, &args.dst) {
        (Some(s), Some(d)) => (s, d),
        _ => bail!("docker-mirror takes SRC and DST, or --to"),
    };
    let (src_host, src_repo, reference) = parse_reference(src)?;
    let (dst_host, dst_repo, dst_ref) = parse_reference(dst)?;
    let reference = reference.with_context(|| format!("`{src}` names no tag or digest to copy"))?;
    if dst_ref.as_deref().is_some_and(|r| r.starts_with("sha256:")) {
        bail!("`{dst}`: the destination takes a tag, not a digest");
    }
    let tag = dst_ref.or_else(|| (!reference.starts_with("sha256:")).then(|| reference.clone()));
    let src = Arc::new(Repository::open(
        src,
        &src_host,
        &src_repo,
        OciOptions::default(),
    )?);
    let dst = Arc::new(Repository::open(
        dst,
        &dst_host,
        &dst_repo,
        OciOptions::default(),
    )?);
    let done = dockerbuild::mirror::mirror(&src, &reference, &dst, tag.as_deref())?;
    if g.json {
        output::json(&serde_json::json!({
            "digest": done.digest,
            "manifests": done.manifests,
            "blobs_copied": done.blobs_copied,
            "blobs_present": done.blobs_present,
            "bytes_copied": done.bytes_copied,
        }))?;
    } else {
        output::status(format!(
            "{} manifests, {} blobs copied ({} bytes), {} already there",
            done.manifests, done.blobs_copied, done.bytes_copied, done.blobs_present
        ));
        println!("{}", done.digest);
    }
    Ok(0)
}

/// `docker-mirror --to`: copies the lockfile's base images (or the named toolchains') to
/// a mirror by digest and records each copy in the lockfile; with --locked, a copy the
/// lockfile does not record yet is refused before anything is copied.
fn mirror_locked(to: &str, platforms: &[String], g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    use dockerbuild::lock::Change;
    use dockerbuild::project::ProjectError;
    let c = open(g, store_dir)?;
    let lock = ensure_locked(g, &c.project, &c.store, &c.fetcher, &[])?;
    for p in platforms {
        image::toolchain(&c.project, p)?;
        if lock.base_image(p).is_none() {
            bail!("toolchain `{p}` has no base image to mirror (it has no [base] section)");
        }
    }
    let chosen: Vec<_> = lock
        .base_images
        .iter()
        .filter(|b| platforms.is_empty() || platforms.contains(&b.toolchain))
        .collect();
    if chosen.is_empty() {
        output::status("the lockfile pins no base images ([base] toolchains): nothing to mirror");
    }
    if g.locked {
        let mut missing = Vec::new();
        for b in &chosen {
            if !b
                .mirrors
                .contains(&dockerbuild::base_image::mirror_reference(b, to)?)
            {
                missing.push(Change::Changed {
                    name: format!("base image of {}", b.toolchain),
                    fields: vec!["mirrors"],
                });
            }
        }
        if !missing.is_empty() {
            return Err(ProjectError::Locked {
                path: c.project.lock_path(),
                changes: missing,
            }
            .into());
        }
    }
    let mut new = lock.clone();
    let mut report = Vec::new();
    for b in chosen {
        let (reference, done) = dockerbuild::base_image::mirror_locked(b, to)?;
        output::status(format!(
            "{}: {reference} ({} manifests, {} blobs copied, {} bytes, {} already there)",
            b.toolchain, done.manifests, done.blobs_copied, done.bytes_copied, done.blobs_present
        ));
        new.add_mirror(&b.toolchain, &reference);
        // Recorded as soon as it is made, so a later failure loses no copy.
        if c.project.write_lock(&new)? {
            output::status(format!("wrote {}", c.project.lock_path().display()));
        }
        report.push(serde_json::json!({
            "toolchain": b.toolchain,
            "mirror": reference,
            "digest": done.digest,
            "manifests": done.manifests,
            "blobs_copied": done.blobs_copied,
            "blobs_present": done.blobs_present,
            "bytes_copied": done.bytes_copied,
        }));
    }
    if g.json {
        output::json(&report)?;
    } else {
        for r in &report {
            println!(
                "{} {}",
                r["toolchain"].as_str().unwrap_or_default(),
                r["mirror"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(0)
}
