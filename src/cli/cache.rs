//! `cache` and `key`: binary caches from the command line, and the `Caches` every
//! building command uses.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dockerbuild::cache::{self, Caches};
use dockerbuild::config::Config;
use dockerbuild::digest::Digest;
use dockerbuild::signing::{PublicKey, SecretKey};
use dockerbuild::store::{LocalStore, Store};

use super::GlobalArgs;
use super::output::{self, Bar};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Push entries (digest, prefix, name or path) to the first cache, under each build key
    /// that produced them and their own digest
    Push { entries: Vec<String> },
    /// Fetch entries by key or digest from the caches into the store, re-hashing them
    Pull { keys: Vec<String> },
    /// List what the caches hold
    Ls,
    /// Download and re-hash every entry the caches hold, without adding them to the store;
    /// exit 1 naming each bad one
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make an ed25519 key pair: the secret key goes to FILE (mode 0600), the public key
    /// (for `trusted-keys` in config.toml) to stdout
    Generate {
        /// The key's name, e.g. ci-1 (signatures say which key made them)
        name: String,
        /// Where to write the secret key [default: NAME.secret]
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
}

/// The caches a run uses: --cache, $DOCKERBUILD_CACHES (space- or comma-separated), the
/// config's `caches`, else the default directory; none with --offline.
pub fn caches(g: &GlobalArgs, config: &Config) -> Result<Caches> {
    let mut urls: Vec<String> = g.caches.clone();
    if let Ok(env) = std::env::var("DOCKERBUILD_CACHES") {
        urls.extend(
            env.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    urls.extend(config.caches.iter().cloned());
    if urls.is_empty()
        && let Some(d) = cache::default_dir()
    {
        urls.push(format!("file://{}", d.display()));
    }
    let mut c = Caches::none();
    if g.offline {
        return Ok(c);
    }
    for u in &urls {
        c.caches.push(
            cache::open_with_config(u, config)
                .with_context(|| format!("cannot open cache `{u}`"))?,
        );
    }
    for k in &config.trusted_keys {
        c.trusted.push(PublicKey::parse(k)?);
    }
    if let Some(path) = &config.signing_key {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signing key `{}`", path.display()))?;
        c.signer = Some(SecretKey::parse(&text)?);
    }
    c.substitute = !g.no_substitute;
    c.upload = g.upload;
    c.upload_sources = g.upload_sources;
    Ok(c)
}

/// Loads the config the way `main` does.
pub fn config(g: &GlobalArgs) -> Result<Config> {
    match g
        .config
        .clone()
        .or_else(dockerbuild::config::default_config_path)
    {
        Some(p) => Ok(Config::load(&p)?),
        None => Ok(Config::default()),
    }
}

/// Says what this run uploaded and, from the store's own records (no network), which
/// entries it built or used that the first cache was never given.
pub fn report_uploads(c: &Caches, store: &LocalStore) {
    let Some(first) = c.caches.first() else {
        return;
    };
    let up = c.uploaded();
    if !up.is_empty() {
        output::status(format!("uploaded {} entries to {}", up.len(), first.url()));
    }
    let missing = c.not_uploaded(store);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(5).map(|n| n.as_str()).collect();
        output::status(format!(
            "note: {} entries built or fetched by this run were never uploaded to {} ({}{}); \
             upload them with --upload or `dockerbuild cache push`",
            missing.len(),
            first.url(),
            names.join(", "),
            if missing.len() > names.len() {
                ", ..."
            } else {
                ""
            }
        ));
    }
}

pub fn key(cmd: KeyCommand) -> Result<i32> {
    match cmd {
        KeyCommand::Generate { name, out } => {
            let sk = SecretKey::generate(&name)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.secret")));
            write_secret(&out, &sk.to_text())?;
            output::status(format!("wrote the secret key to {}", out.display()));
            println!("{}", sk.public().to_text());
            Ok(0)
        }
    }
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}` (it must not exist)", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

pub fn run(cmd: CacheCommand, g: &GlobalArgs, config: &Config, store_dir: &Path) -> Result<i32> {
    let mut c = caches(g, config)?;
    if c.caches.is_empty() {
        bail!("no cache to use (--offline, or none configured)");
    }
    let store = LocalStore::open(store_dir)?;
    let bar = Bar::new(g.quiet);
    match cmd {
        CacheCommand::Push { entries } => {
            c.upload = true;
            for q in &entries {
                let e = store.resolve(q)?;
                let mut keys = store.keys_for(&e.meta.digest)?;
                keys.push(e.meta.digest);
                for k in &keys {
                    c.offer(&store, k, &e)?;
                }
                output::status(format!("{}: {} key(s)", e.meta.name, keys.len()));
            }
            report_uploads(&c, &store);
        }
        CacheCommand::Pull { keys } => {
            c.substitute = true;
            for k in &keys {
                let key: Digest = k
                    .parse()
                    .map_err(|e| anyhow::anyhow!("`{k}` is not a key or digest: {e}"))?;
                match c.substitute(&store, &key, &bar)? {
                    Some(hit) => {
                        output::status(format!("{} from {}", hit.entry.meta.name, hit.cache));
                        println!("{}", hit.entry.path.display());
                    }
                    None => bail!("no cache has {key}"),
                }
            }
        }
        CacheCommand::Ls => {
            let mut all = Vec::new();
            for cache in &c.caches {
                for claim in cache.list()? {
                    all.push((cache.url().to_owned(), claim));
                }
            }
            if g.json {
                output::json(
                    &all.iter()
                        .map(|(u, c)| serde_json::json!({"cache": u, "claim": c}))
                        .collect::<Vec<_>>(),
                )?;
            } else {
                for (u, claim) in &all {
                    println!(
                        "{}  {}  {:>10}  {:<9} {}  {}",
                        &claim.key.to_hex()[..16],
                        &claim.digest.to_hex()[..16],
                        output::bytes(claim.size),
                        claim.kind,
                        claim.name,
                        u
                    );
                }
            }
        }
        CacheCommand::Verify => {
            let mut bad = 0;
            for cache in &c.caches {
                for claim in cache.list()? {
                    let scratch = tempfile::tempdir()?;
                    let tmp = LocalStore::open(scratch.path())?;
                    match cache::fetch_into(cache.as_ref(), &tmp, &claim, &bar) {
                        Ok(_) => {}
                        Err(e) => {
                            bad += 1;
                            eprintln!("bad: {e}");
                        }
                    }
                }
            }
            if bad > 0 {
                return Ok(1);
            }
            output::status("every cached entry matches its claim");
        }
    }
    Ok(0)
}
