//! The `dockerbuild` binary: parses arguments, sets up logging, runs a command and maps
//! failures to exit codes (1: the command failed, 2: usage error, from clap).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use dockerbuild::config::{self, Config};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    cli::output::set_quiet(cli.global.quiet);
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOCKERBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("dockerbuild={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    let config_path = g.config.clone().or_else(config::default_config_path);
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let store_dir: PathBuf = match (&g.store, &config.store) {
        (Some(s), _) | (None, Some(s)) => s.clone(),
        (None, None) => config::default_store_dir()?,
    };
    tracing::debug!(store = %store_dir.display(), "using store");
    match cli.command {
        Command::Store(cmd) => cli::store::run(cmd, g, &store_dir),
        Command::Lock(args) => cli::sources::lock(args, g, &store_dir),
        Command::Sources(args) => cli::sources::sources(args, g, &store_dir),
        Command::DockerGenerate(args) => cli::docker::generate(args, g, &store_dir),
        Command::Run(args) => cli::docker::run(args, g, &store_dir),
        Command::Build(args) => cli::build::run(args, g, &store_dir),
        Command::Shell(args) => cli::docker::shell(args, g, &store_dir),
        Command::Entrypoint(args) => cli::docker::entrypoint(args, g, &store_dir),
        Command::Clean => cli::docker::clean(g),
        Command::Cache(cmd) => cli::cache::run(cmd, g, &config, &store_dir),
        Command::Key(cmd) => cli::cache::key(cmd),
        Command::WheelBuild(args) => cli::wheel::build(args, g, &store_dir),
        Command::WheelDump(args) => cli::wheel::dump(args, g),
        Command::WheelJson(args) => cli::wheel::json(args, g),
        Command::WheelTag(args) => cli::wheel::tag(args, g),
        Command::Cipd(cmd) => cli::cipd::run(cmd),
        Command::DockerMirror(args) => cli::docker::mirror(args, g, &store_dir),
    }
}
