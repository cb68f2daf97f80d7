//! `build`: run a script hermetically in a platform's toolchain and store what it leaves
//! in /out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dockerbuild::build::{BuildOptions, BuildSpec};
use dockerbuild::digest::Digest;
use dockerbuild::lock::Lockfile;
use dockerbuild::project;
use dockerbuild::project::RECIPES;
use dockerbuild::recipe::{self, Builder};
use dockerbuild::store::{Kind, Store};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::GlobalArgs;
use super::docker::{Session, open};
use super::output::{self, Bars};
use super::sources::ensure_locked;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A recipe (recipes/NAME.toml) to build, with what it depends on; or give --script
    #[arg(required_unless_present = "script", conflicts_with = "script")]
    pub recipe: Option<String>,
    /// The platform (a toolchains/*.toml name), e.g. linux-armv7; a recipe with a fixed
    /// platform needs none
    #[arg(long, short = 'p', required_unless_present = "recipe")]
    pub platform: Option<String>,
    /// An ad-hoc build: the bash script to run (with `bash -euo pipefail`, in /build)
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// With --script, an input mounted read-only at /inputs/NAME: REF is a locked
    /// source's name (fetched when missing), or a store entry (digest, digest prefix, path
    /// or name); `source:REF` or `entry:REF` when both share a name; REF defaults to NAME
    /// (repeatable)
    #[arg(
        long = "input",
        short = 'i',
        value_name = "NAME[=REF]",
        requires = "script"
    )]
    pub inputs: Vec<String>,
    /// With --script, a variable for the script (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V", requires = "script")]
    pub env: Vec<String>,
    /// With --script, the output entry's name [default: the script's file stem and the
    /// platform]
    #[arg(long, requires = "script")]
    pub name: Option<String>,
    /// With --script, the output entry's kind: output, python, perl or wheel
    #[arg(long, default_value = "output", requires = "script")]
    pub kind: String,
    /// When the build fails, keep its scratch directory and say where
    #[arg(long)]
    pub keep_failed: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    platform: &'a str,
    key: Digest,
    digest: Digest,
    path: &'a Path,
    cached: bool,
}

pub fn run(args: BuildArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let c = open(g, store_dir)?;
    let lock = ensure_locked(g, &c.project, &c.store, &c.fetcher, &[])?;
    let recipes = recipe::load_all(&c.project.root.join(RECIPES))?;
    let bars = Bars::new(g.quiet);
    let bar = |n: &str| bars.bar(n);

    // The log streams to stderr with -v; otherwise a spinner shows its last line.
    let spinner = if g.quiet || g.verbose > 0 {
        ProgressBar::hidden()
    } else {
        let s = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        s.set_style(ProgressStyle::with_template("{spinner} {prefix} {wide_msg}").expect("valid"));
        s
    };
    let verbose = g.verbose > 0;
    let mut line = Vec::new();
    let mut on_output = |bytes: &[u8]| {
        if verbose {
            let _ = std::io::stderr().write_all(bytes);
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                spinner.set_message(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            } else {
                line.push(b);
            }
        }
    };
    let mut on_start = |name: &str| {
        spinner.set_prefix(name.to_owned());
        spinner.set_message("");
        spinner.enable_steady_tick(Duration::from_millis(200));
        tracing::info!(name, "building");
    };
    let mut builder = Builder {
        store: &c.store,
        fetcher: &c.fetcher,
        engine: Default::default(),
        project: &c.project,
        lock: &lock,
        recipes: &recipes,
        options: BuildOptions {
            keep_failed: args.keep_failed,
            rebuild: false,
        },
        caches: &c.caches,
        progress: &bar,
        on_start: &mut on_start,
        on_output: &mut on_output,
    };
    let started = std::time::Instant::now();
    let result = match (&args.recipe, &args.script) {
        (Some(r), _) => builder
            .spec(r, args.platform.as_deref())
            .and_then(|spec| builder.run(&spec).map(|b| (spec, b))),
        (None, Some(script)) => {
            let spec = script_spec(&args, script, g, &c, &lock)?;
            builder.run(&spec).map(|b| (spec, b))
        }
        (None, None) => unreachable!("clap requires a recipe or --script"),
    };
    spinner.finish_and_clear();
    let (spec, built) = result?;
    super::cache::report_uploads(&c.caches, &c.store);
    output::status(format!(
        "{}: {} ({:.1}s)",
        spec.name,
        if built.cached {
            "already built"
        } else {
            "built"
        },
        started.elapsed().as_secs_f64()
    ));
    if g.json {
        output::json(&Report {
            name: &spec.name,
            platform: &spec.platform,
            key: built.key,
            digest: built.entry.meta.digest,
            path: &built.entry.path,
            cached: built.cached,
        })?;
    } else {
        println!("{}", built.entry.path.display());
    }
    Ok(0)
}

/// The build `--script` describes.
fn script_spec(
    args: &BuildArgs,
    script_path: &Path,
    g: &GlobalArgs,
    c: &Session,
    lock: &Lockfile,
) -> Result<BuildSpec> {
    let platform = args.platform.clone().expect("clap requires --platform");
    let script = std::fs::read_to_string(script_path)
        .with_context(|| format!("cannot read the build script `{}`", script_path.display()))?;
    let kind: Kind = args.kind.parse().map_err(anyhow::Error::msg)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => format!(
            "{}-{platform}",
            script_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "build".to_owned()),
        ),
    };
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env `{kv}` is not K=V");
        };
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut inputs = BTreeMap::new();
    for spec in &args.inputs {
        let (input, reference) = spec.split_once('=').unwrap_or((spec, spec));
        let digest = input_digest(g, c, lock, reference)
            .with_context(|| format!("cannot provide input `{input}` (`{reference}`)"))?;
        if inputs.insert(input.to_owned(), digest).is_some() {
            bail!("--input `{input}` is given twice");
        }
    }
    Ok(BuildSpec {
        name,
        platform,
        inputs,
        script,
        env,
        kind,
        version: None,
    })
}

/// A locked source (fetched if missing) or an entry already in the store. `source:NAME`
/// and `entry:QUERY` say which when a source and an entry share a name; a bare name means
/// the locked source if there is one.
fn input_digest(g: &GlobalArgs, c: &Session, lock: &Lockfile, reference: &str) -> Result<Digest> {
    let (source, entry) = match reference.split_once(':') {
        Some(("source", n)) => (Some(n), None),
        Some(("entry", q)) => (None, Some(q)),
        _ => (lock.get(reference).map(|_| reference), Some(reference)),
    };
    if let Some(name) = source {
        let src = lock
            .get(name)
            .with_context(|| format!("the lockfile pins no source `{name}`"))?;
        let bars = Bars::new(g.quiet);
        let bar = |n: &str| bars.bar(n);
        project::fetch_one(&c.store, &c.fetcher, &c.caches, src, &bar)?;
        return Ok(src.blake3);
    }
    let query = entry.expect("one of the two");
    Ok(c.store.resolve(query)?.meta.digest)
}
