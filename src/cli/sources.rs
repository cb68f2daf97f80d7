//! `dockerbuild lock` and `dockerbuild sources`.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Args;
use dockerbuild::fetch::{Http, HttpOptions};
use dockerbuild::lock::Lockfile;
use dockerbuild::project::{self, Project, ProjectError};
use dockerbuild::source::Fetcher;
use dockerbuild::store::LocalStore;

use super::GlobalArgs;
use super::output::{self, Bars};

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Re-resolve these sources even if their catalogue entry did not change
    #[arg(long, value_name = "NAME")]
    pub update: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SourcesArgs {
    /// Downloads to run at once
    #[arg(short, long, default_value_t = 4)]
    pub jobs: usize,
}

fn open(g: &GlobalArgs, store_dir: &Path) -> Result<(Project, LocalStore, Fetcher)> {
    let project = Project::discover(g.project.as_deref())?;
    let store = LocalStore::open(store_dir)?;
    let fetcher = Fetcher::new(Http::new(HttpOptions::from_env()));
    Ok((project, store, fetcher))
}

/// Brings the lockfile up to date with the catalogue (or, with --locked, proves it is).
/// Returns the lockfile in force.
pub fn ensure_locked(
    g: &GlobalArgs,
    project: &Project,
    store: &LocalStore,
    fetcher: &Fetcher,
    update: &[String],
) -> Result<Lockfile> {
    project.check_update(update)?;
    let old = project.read_lock()?;
    let stale = project.stale(old.as_ref(), update);
    if g.locked && !stale.is_empty() {
        return Err(ProjectError::Locked {
            path: project.lock_path(),
            changes: stale,
        }
        .into());
    }
    if stale.is_empty()
        && let Some(old) = old
    {
        return Ok(old);
    }
    let bars = Bars::new(g.quiet);
    let new = project.lock(store, fetcher, old.as_ref(), update, &|n| bars.bar(n))?;
    let changes = old
        .as_ref()
        .map_or_else(|| Lockfile::empty().diff(&new), |o| o.diff(&new));
    if project.write_lock(&new)? {
        for c in &changes {
            output::status(format!("  {c}"));
        }
        output::status(format!("wrote {}", project.lock_path().display()));
    }
    Ok(new)
}

pub fn lock(args: LockArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let (project, store, fetcher) = open(g, store_dir)?;
    let lock = ensure_locked(g, &project, &store, &fetcher, &args.update)?;
    output::status(format!(
        "{} sources pinned in {}",
        lock.sources.len(),
        project::LOCKFILE
    ));
    Ok(0)
}

pub fn sources(args: SourcesArgs, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    let session = super::docker::open(g, store_dir)?;
    let (project, store, fetcher) = (&session.project, &session.store, &session.fetcher);
    let lock = ensure_locked(g, project, store, fetcher, &[])?;
    let bars = Bars::new(g.quiet);
    let bar = |n: &str| bars.bar(n);
    let outcomes = match project::fetch_all(store, fetcher, &session.caches, &lock, args.jobs, &bar)
    {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!(
                "{} of {} sources could not be fetched",
                errors.len(),
                lock.sources.len()
            );
        }
    };
    if g.json {
        output::json(&outcomes)?;
    } else {
        for o in &outcomes {
            println!("{}", o.path.display());
        }
    }
    let fetched: Vec<_> = outcomes.iter().filter(|o| !o.present).collect();
    output::status(format!(
        "{} sources: {} already in the store, {} fetched ({})",
        outcomes.len(),
        outcomes.len() - fetched.len(),
        fetched.len(),
        output::bytes(fetched.iter().map(|o| o.bytes).sum())
    ));
    super::cache::report_uploads(&session.caches, &session.store);
    Ok(0)
}
