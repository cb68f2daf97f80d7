//! `cipd`: helpers for publishing to CIPD; the library does the naming
//! (`dockerbuild::cache::cipd::names`), this file only reads arguments and writes files.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dockerbuild::cache::cipd::names::{self, Pin};

#[derive(Debug, Subcommand)]
pub enum CipdCommand {
    /// Print a CIPD ensure file for published packages (and write their $ResolvedVersions
    /// file with --versions-file)
    EnsureFile(EnsureFileArgs),
}

#[derive(Debug, Args)]
pub struct EnsureFileArgs {
    /// Packages as PACKAGE=VERSION[=INSTANCE_ID] (VERSION: a tag, ref or instance ID)
    #[arg(value_name = "PIN")]
    pub pins: Vec<String>,
    /// Wheels as NAME=VERSION[=INSTANCE_ID] (universal: infra/python/wheels/<name>-py3) or
    /// NAME/PLATFORM_ABI=VERSION[=INSTANCE_ID] (infra/python/wheels/<name>/<platform>_<abi>),
    /// pinned at version:VERSION
    #[arg(long = "wheel", value_name = "SPEC")]
    pub wheels: Vec<String>,
    /// Sources as NAME=VERSION[=INSTANCE_ID] (infra/third_party/source/<name>), pinned at
    /// version:VERSION
    #[arg(long = "source", value_name = "SPEC")]
    pub sources: Vec<String>,
    /// Also write the $ResolvedVersions file here (every pin needs its instance ID); the
    /// ensure file names it as given, so give it relative to where the ensure file goes
    #[arg(long, value_name = "FILE")]
    pub versions_file: Option<PathBuf>,
}

pub fn run(cmd: CipdCommand) -> Result<i32> {
    match cmd {
        CipdCommand::EnsureFile(a) => ensure_file(a),
    }
}

fn ensure_file(a: EnsureFileArgs) -> Result<i32> {
    let mut pins = Vec::new();
    for p in &a.pins {
        pins.push(Pin::parse(p)?);
    }
    for w in &a.wheels {
        pins.push(Pin::wheel(w)?);
    }
    for s in &a.sources {
        pins.push(Pin::source(s)?);
    }
    if pins.is_empty() {
        bail!(
            "no packages given\nhint: dockerbuild cipd ensure-file --wheel six=1.16.0 PACKAGE=VERSION ..."
        );
    }
    let versions = a
        .versions_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(path) = &a.versions_file {
        let text = names::versions_file(&pins)?;
        fs_err::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    print!("{}", names::ensure_file(&pins, versions.as_deref()));
    Ok(0)
}
