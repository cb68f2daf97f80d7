//! `wheel-build`, `wheel-dump` and `wheel-json`: the wheel matrix of `wheels/*.toml`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::Args;
use dockerbuild::build::BuildOptions;
use dockerbuild::cache::cipd::wheels::{Outcome, Published};
use dockerbuild::project::RECIPES;
use dockerbuild::recipe;
use dockerbuild::wheel::run::{self, Event, Plan};
use dockerbuild::wheel::{CATALOGUE_FILE, Catalogue, Filter, WHEELS, catalogue};
use dockerbuild::wheel::{publish, retag, tags, test};
use indicatif::ProgressBar;
use serde::Serialize;

use super::GlobalArgs;
use super::docker::open;
use super::output::{self, Bars};
use super::sources::ensure_locked;

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this wheel spec (its id, the file stem of wheels/ID.toml, or its PyPI name);
    /// repeatable [default: every spec marked default]
    #[arg(long = "wheel", short = 'w', value_name = "ID")]
    pub wheels: Vec<String>,
    /// Only this platform (linux-arm64, manylinux-x64, mac-x64, ...); repeatable
    #[arg(long = "platform", short = 'p', value_name = "P")]
    pub platforms: Vec<String>,
    /// Only this CPython version (3.11, 3.13); repeatable
    #[arg(long = "python", value_name = "VER")]
    pub pythons: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            wheels: self.wheels.clone(),
            platforms: self.platforms.clone(),
            pythons: self.pythons.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct WheelBuildArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Builds to run at once [default: the number of CPUs]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Build the selected wheels again even when the store has them (what they need is
    /// still looked up)
    #[arg(long)]
    pub rebuild: bool,
    /// Build each selected source wheel once more (outside the store, which is left as
    /// it is) and compare it byte for byte with the store's; name the first differing
    /// file, zip member and ELF section, and exit 1 if any differs (like Nix's --check)
    #[arg(long)]
    pub check: bool,
    /// Then install each wheel into a Python of its architecture (a runner of
    /// wheels/platforms.toml: Debian's own userland, under QEMU) and import each of its
    /// extension modules by dotted name; a wheel built from source without one fails
    #[arg(long)]
    pub test: bool,
    /// Copy the wheels out to DIR under their PEP 427 names, with their true tags (a
    /// manylinux tag added where the policy holds; WHEEL and RECORD rewritten to agree)
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// When a build fails, keep its scratch directory and say where
    #[arg(long)]
    pub keep_failed: bool,
}

#[derive(Debug, Args)]
pub struct WheelTagArgs {
    /// Wheel files to inspect
    #[arg(required = true, value_name = "FILE.whl")]
    pub wheels: Vec<PathBuf>,
    /// Judge them against this platform's promise (its first wheel tag and glibc floor)
    /// instead of the tag in each file name
    #[arg(long, short = 'p', value_name = "P")]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct WheelDumpArgs {
    /// Fail if wheels/wheels.md is not what the specs give, instead of writing it
    #[arg(long)]
    pub check: bool,
}

/// What `wheel-build --json` prints.
#[derive(Serialize)]
struct Report<'a> {
    /// The wheels asked for.
    wheels: Vec<&'a run::JobResult>,
    /// Everything the run needed (recipes, dependency wheels), wanted or not.
    jobs: &'a [run::JobResult],
    failed: usize,
    /// With `--upload` to a `cipd://` cache: the packages published under vpython's names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    published: Vec<Published>,
}

/// With `--upload` and a `cipd://` cache first, publishes the wanted wheels under the
/// names vpython expects, with a status line for each; returns them and the errors.
fn publish_cipd(
    g: &GlobalArgs,
    caches: &dockerbuild::cache::Caches,
    catalogue: &Catalogue,
    results: &[run::JobResult],
) -> Result<(Vec<Published>, Vec<String>)> {
    let (mut published, mut errors) = (Vec::new(), Vec::new());
    let first = caches.caches.first().map(|c| c.url());
    let Some(url) = first.filter(|u| caches.upload && u.starts_with("cipd://")) else {
        return Ok((published, errors));
    };
    let cache = dockerbuild::cache::open_cipd_with_config(url, &super::cache::config(g)?)?;
    for (label, r) in publish::publish(&cache, catalogue, results) {
        match r {
            Ok(p) => {
                let how = match p.outcome {
                    Outcome::Uploaded => "uploaded".to_owned(),
                    Outcome::Registered => "already there; refs set".to_owned(),
                    Outcome::Kept => "this version is another instance; left as it is".to_owned(),
                };
                let refs = if p.refs.is_empty() {
                    String::new()
                } else {
                    format!(", refs {}", p.refs.join(" "))
                };
                output::status(format!(
                    "published {} {} {} ({how}{refs})",
                    p.package, p.version, p.instance_id
                ));
                published.push(p);
            }
            Err(e) => errors.push(format!("{label}: {e}")),
        }
    }
    Ok((published, errors))
}

pub fn build(args: WheelBuildArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let c = open(g, store_dir)?;
    let lock = ensure_locked(g, &c.project, &c.store, &c.fetcher, &[])?;
    let recipes = recipe::load_all(&c.project.root.join(RECIPES))?;
    let catalogue = Catalogue::load(&c.project)?;
    let triples = catalogue.triples(&args.filter.filter())?;
    if triples.is_empty() {
        bail!("no wheel matches the given --wheel, --platform and --python");
    }
    let plan = Plan::new(&catalogue, &recipes, &triples)?;
    let bars = Bars::new(g.quiet);
    let bar = |n: &str| bars.bar(n);
    let lines: Mutex<HashMap<usize, (ProgressBar, Vec<u8>)>> = Mutex::default();
    let verbose = g.verbose > 0;
    let events = |e: Event| match e {
        Event::Started { job, label } => {
            tracing::info!(label, "starting");
            lines
                .lock()
                .expect("not poisoned")
                .insert(job, (bars.line(label), Vec::new()));
        }
        Event::Log { job, bytes } => {
            let mut l = lines.lock().expect("not poisoned");
            let Some((line, partial)) = l.get_mut(&job) else {
                return;
            };
            if verbose {
                let _ = std::io::stderr().write_all(bytes);
                return;
            }
            for &b in bytes {
                if b == b'\n' {
                    line.set_message(String::from_utf8_lossy(partial).into_owned());
                    partial.clear();
                } else {
                    partial.push(b);
                }
            }
        }
        Event::Finished { job, label, status } => {
            let line = lines.lock().expect("not poisoned").remove(&job);
            match line {
                Some((line, _)) => line.finish_with_message(status.describe()),
                None => output::status(format!("  {label}: {}", status.describe())),
            }
        }
    };
    let cx = run::Context {
        store: &c.store,
        fetcher: &c.fetcher,
        project: &c.project,
        lock: &lock,
        recipes: &recipes,
        catalogue: &catalogue,
        caches: &c.caches,
        options: BuildOptions {
            keep_failed: args.keep_failed,
            rebuild: false,
        },
        rebuild: args.rebuild,
        check: args.check,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        progress: &bar,
        events: &events,
    };
    let started = std::time::Instant::now();
    let mut results = run::run(&cx, &plan);
    if args.test {
        test_wheels(&cx, &catalogue, &plan, &mut results)?;
    }
    super::cache::report_uploads(&c.caches, &c.store);
    let (published, publish_errors) = publish_cipd(g, &c.caches, &catalogue, &results)?;

    let wanted: Vec<&run::JobResult> = results.iter().filter(|r| r.wanted).collect();
    let failures: Vec<&run::JobResult> = results.iter().filter(|r| !r.status.ok()).collect();
    let untested: Vec<&run::JobResult> = results
        .iter()
        .filter(|r| r.test.as_ref().is_some_and(|t| !t.ok()))
        .collect();
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory `{}`", dir.display()))?;
        for r in &wanted {
            retag::copy_out(r, dir)?;
        }
    }
    let built = results
        .iter()
        .filter(|r| matches!(r.status, run::Status::Built))
        .count();
    output::status(format!(
        "{} wheels ({} jobs): {} built, {} failed, in {:.1}s",
        wanted.len(),
        results.len(),
        built,
        failures.len(),
        started.elapsed().as_secs_f64()
    ));
    if g.json {
        output::json(&Report {
            wheels: wanted.clone(),
            jobs: &results,
            failed: failures.len(),
            published,
        })?;
    } else {
        for r in &wanted {
            for w in &r.wheels {
                println!("{}", w.display());
            }
        }
    }
    let mut differing = 0;
    for r in &wanted {
        match &r.check {
            Some(c) if !c.reproducible => {
                differing += 1;
                let d = c
                    .first_difference
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                eprintln!("not reproducible: {}: first difference: {d}", r.label);
            }
            Some(_) => output::status(format!("reproducible: {}", r.label)),
            None => {}
        }
    }
    if !failures.is_empty() {
        eprintln!("failed:");
        for f in &failures {
            eprintln!("  {}: {}", f.label, f.status.describe());
        }
    }
    if !untested.is_empty() {
        eprintln!("failed on their runner:");
        for r in &untested {
            let t = r.test.as_ref().expect("filtered");
            let on = t
                .runner
                .as_deref()
                .map(|r| format!(" on {r}"))
                .unwrap_or_default();
            eprintln!("  {}{on}: {}", r.label, t.error.as_deref().unwrap_or(""));
        }
    }
    if !publish_errors.is_empty() {
        eprintln!("not published:");
        for e in &publish_errors {
            eprintln!("  {e}");
        }
    }
    if !failures.is_empty() || !publish_errors.is_empty() || differing > 0 || !untested.is_empty() {
        return Ok(1);
    }
    Ok(0)
}

/// `--test`: imports the wanted wheels on their runners, one container per runner and
/// platform, with a status line each; records what each found in its result.
fn test_wheels(
    cx: &run::Context,
    catalogue: &Catalogue,
    plan: &Plan,
    results: &mut [run::JobResult],
) -> Result<()> {
    let (groups, untestable) = test::groups(catalogue, plan, results);
    for (i, t) in untestable {
        results[i].test = Some(t);
    }
    if groups.is_empty() {
        return Ok(());
    }
    let engine = dockerbuild::docker::Engine::connect()?;
    for g in &groups {
        let started = std::time::Instant::now();
        let found = test::run_group(cx, &engine, plan, results, g);
        let passed = found.iter().filter(|(_, t)| t.ok()).count();
        output::status(format!(
            "tested on {} ({} cp{}): {passed} of {} wheels imported, in {:.1}s",
            g.runner,
            g.platform,
            g.python.replace('.', ""),
            g.targets.len(),
            started.elapsed().as_secs_f64()
        ));
        for (i, t) in found {
            results[i].test = Some(t);
        }
    }
    Ok(())
}

/// `wheel-tag`: what each wheel's binaries need and the tag that follows; exit 1 when a
/// wheel's tag (or the platform's promise) would lie.
pub fn tag(args: WheelTagArgs, g: &GlobalArgs) -> Result<i32> {
    let promise = match &args.platform {
        Some(p) => {
            let project = dockerbuild::project::Project::discover(g.project.as_deref())?;
            let catalogue = Catalogue::load(&project)?;
            Some(catalogue.promise(&project, p).with_context(|| {
                format!("platform `{p}` is not a linux platform of this project")
            })?)
        }
        None => None,
    };
    let mut all = Vec::new();
    for w in &args.wheels {
        all.push(tags::examine(w, promise.as_ref())?);
    }
    if g.json {
        output::json(&all)?;
    } else {
        for e in &all {
            match (&e.tag, &e.lie) {
                (Some(t), _) => println!("{}\t{t}", e.wheel),
                (None, Some(lie)) => println!("{}\tLIE: {lie}", e.wheel),
                (None, None) => {}
            }
            for f in &e.files {
                let glibc = f.glibc.map(|(a, b)| format!("GLIBC_{a}.{b}"));
                let cxx = f.glibcxx.map(|(a, b, c)| format!("GLIBCXX_{a}.{b}.{c}"));
                let arm = f.arm_arch.map(|a| format!("Tag_CPU_arch {a}"));
                let needed = (!f.needed.is_empty()).then(|| f.needed.join(" "));
                let facts: Vec<String> = [glibc, cxx, arm, needed].into_iter().flatten().collect();
                output::status(format!(
                    "  {} (ELF machine {}): {}",
                    f.file,
                    f.machine,
                    facts.join(", ")
                ));
            }
        }
    }
    Ok(if all.iter().any(|e| e.lie.is_some()) {
        1
    } else {
        0
    })
}

pub fn dump(args: WheelDumpArgs, g: &GlobalArgs) -> Result<i32> {
    let project = dockerbuild::project::Project::discover(g.project.as_deref())?;
    let catalogue = Catalogue::load(&project)?;
    let text = catalogue::markdown(&catalogue)?;
    let path = project.root.join(WHEELS).join(CATALOGUE_FILE);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if args.check {
        if current != text {
            bail!(
                "{} is stale: it does not match wheels/*.toml\nhint: run `dockerbuild wheel-dump` and commit the result",
                path.display()
            );
        }
        output::status(format!("{} is up to date", path.display()));
        return Ok(0);
    }
    if current != text {
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        output::status(format!("wrote {}", path.display()));
    } else {
        output::status(format!("{} is up to date", path.display()));
    }
    Ok(0)
}

pub fn json(args: FilterArgs, g: &GlobalArgs) -> Result<i32> {
    let project = dockerbuild::project::Project::discover(g.project.as_deref())?;
    let catalogue = Catalogue::load(&project)?;
    output::json(&catalogue.triples(&args.filter())?)?;
    Ok(0)
}
