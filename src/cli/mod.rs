//! The command line: clap types only. Each subcommand's `run` lives in its own file and
//! calls the library; nothing below `src/cli` is used by the library.

pub mod build;
pub mod cache;
pub mod cipd;
pub mod docker;
pub mod output;
pub mod sources;
pub mod store;
pub mod wheel;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Hermetic, content-addressed toolchains and cross builds.
///
/// Everything dockerbuild uses (source archives, toolchains, interpreters, build outputs)
/// is an immutable entry in a local store, addressed by the BLAKE3 hash of its contents.
#[derive(Debug, Parser)]
#[command(name = "dockerbuild", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The store directory [default: from config.toml, else the platform data dir, e.g.
    /// ~/.local/share/dockerbuild/store]
    #[arg(long, global = true, env = "DOCKERBUILD_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// The config file [default: ~/.config/dockerbuild/config.toml]
    #[arg(long, global = true, env = "DOCKERBUILD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More logging on stderr (-v: info, -vv: debug, -vvv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr; no progress bars
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print data as JSON on stdout (for commands that print data)
    #[arg(long, global = true)]
    pub json: bool,

    /// Fail instead of changing the lockfile (as in CI)
    #[arg(long, global = true)]
    pub locked: bool,

    /// The project directory holding sources.toml [default: the nearest ancestor of the
    /// current directory that has one]
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,

    /// A binary cache to look things up in before building, ahead of the configured ones:
    /// file:///DIR, oci://HOST[:PORT]/REPO (a registry repository; credentials from
    /// $DOCKER_CONFIG/config.json, https unless loopback) or cipd://HOST[/PREFIX];
    /// repeatable
    #[arg(long = "cache", global = true, value_name = "URL")]
    pub caches: Vec<String>,

    /// Use only the store: no binary caches
    #[arg(long, global = true)]
    pub offline: bool,

    /// Do the work locally even when a cache has the result
    #[arg(long, global = true)]
    pub no_substitute: bool,

    /// Push what this run builds or uses and the first cache lacks to that cache
    /// (`wheel-build` with a `cipd://` first cache also publishes the wheels under the
    /// names vpython expects)
    #[arg(long, global = true)]
    pub upload: bool,

    /// Push the sources this run fetches or uses to the first cache (the original
    /// dockerbuild's flag; --upload includes it)
    #[arg(long, global = true)]
    pub upload_sources: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pin every source in sources.toml into lockfiles/dockerbuild.lock
    ///
    /// Sources whose catalogue entry is unchanged keep their pins (no network). New or
    /// changed ones are resolved (pypi:, debian: through their indexes) and fetched into
    /// the store, since a pin records the file's SHA-256, size and store address.
    Lock(sources::LockArgs),
    /// Fetch every locked source into the store
    ///
    /// Sources already in the store need no network. Each download is checked against its
    /// pinned SHA-256, size and store address; a mismatch adds nothing.
    Sources(sources::SourcesArgs),
    /// Generate toolchain images from their pinned .deb files and load them into Docker
    ///
    /// Reproducible: the same lockfile gives the same store entry and image ID anywhere.
    /// Needs root, mmdebstrap and a local Docker daemon.
    DockerGenerate(docker::GenerateArgs),
    /// Run a command in a platform's toolchain, with the current directory at /work
    ///
    /// The command runs as you (uid:gid), without network unless --network, and its exit
    /// code is returned. The toolchain image is generated first if needed.
    Run(docker::RunArgs),
    /// Build hermetically: a script in a platform's toolchain whose /out becomes an entry
    ///
    /// The script sees only its inputs (read-only under /inputs), a scratch directory
    /// (/build) and /out, without network, as an unprivileged user. The build is keyed
    /// by the image, inputs, script and environment: the same key again is a lookup.
    /// Prints the output entry's path.
    Build(build::BuildArgs),
    /// Open an interactive shell in a platform's toolchain
    Shell(docker::PlatformArg),
    /// Print a standalone script that runs commands in a platform's pinned image
    Entrypoint(docker::PlatformArg),
    /// Remove every container and image dockerbuild created (found by their labels)
    Clean,
    /// Add, inspect, verify, export and collect store entries
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Push entries to binary caches, pull them, list and verify what caches hold
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Make signing keys for binary caches
    #[command(subcommand)]
    Key(cache::KeyCommand),
    /// Build the wheel matrix of wheels/*.toml: every (wheel, platform, Python) selected
    ///
    /// Each source wheel is a hermetic build: the sdist, the host and target Pythons, the
    /// build dependencies and native libraries (built first, once per platform) come
    /// from the store; no network. Builds run in parallel, one line each; failures are
    /// reported at the end while the others finish. What the store or a binary cache has
    /// is not built again. Prints the wheel files (or JSON with --json).
    WheelBuild(wheel::WheelBuildArgs),
    /// Print the platform tag each wheel's binaries allow (glibc symbol versions,
    /// DT_NEEDED, ELF machine, ARM Tag_CPU_arch); exit 1 when a wheel's tag would lie
    WheelTag(wheel::WheelTagArgs),
    /// Write wheels/wheels.md, the catalogue of every wheel the specs make
    WheelDump(wheel::WheelDumpArgs),
    /// Print every (wheel, platform, Python) of the matrix as JSON, for CI
    WheelJson(wheel::FilterArgs),
    /// CIPD helpers: ensure files for published packages
    #[command(subcommand)]
    Cipd(cipd::CipdCommand),
    /// Copy an image from one registry to another by digest
    ///
    /// SRC is HOST[:PORT]/REPO:TAG or HOST[:PORT]/REPO@sha256:HEX; DST is
    /// HOST[:PORT]/REPO[:TAG] (default: SRC's tag). A multi-platform index, every manifest
    /// it lists and every blob they use are copied unchanged, so digests survive; blobs
    /// DST has are skipped. Prints the top digest. Credentials from
    /// $DOCKER_CONFIG/config.json; https unless loopback.
    ///
    /// With --to HOST[:PORT][/PREFIX] instead, every base image the lockfile pins (or
    /// those of --platform) is copied under PREFIX/REPO and the copy recorded in the
    /// lockfile, where image generation tries it before upstream.
    DockerMirror(docker::MirrorArgs),
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
