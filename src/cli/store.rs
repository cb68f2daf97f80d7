//! `dockerbuild store ...`: the store's user interface.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dockerbuild::digest::Digest;
use dockerbuild::store::{Entry, Kind, LocalStore, NewEntry, Store, Verification, sanitize_name};

use super::GlobalArgs;
use super::output::{self, Bar};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a file or directory tree into the store and print its store path
    ///
    /// The entry's address is the BLAKE3 hash of its name and canonical contents (see
    /// store-format/README.md). Adding the same thing twice is a no-op.
    Add {
        /// The file or directory to add (a top-level symlink is followed)
        path: PathBuf,
        /// The entry's name [default: the file name of PATH]
        #[arg(long)]
        name: Option<String>,
        /// What the entry is for
        #[arg(long, default_value = "other", value_parser = ["source", "toolchain", "python", "perl", "wheel", "output", "other"])]
        kind: String,
        /// A version to record (descriptive; not part of the address)
        #[arg(long)]
        version: Option<String>,
        /// Where the contents came from (URL, path...), for people
        #[arg(long)]
        origin: Option<String>,
        /// An entry this one needs (digest); gc keeps it alive with this one
        #[arg(long = "reference", value_name = "DIGEST")]
        references: Vec<String>,
    },
    /// Print the store path of an entry
    Path {
        /// A digest (or a prefix of at least 8 hex digits) or an entry name
        entry: String,
    },
    /// List entries
    Ls {
        /// Only entries of this kind
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show an entry's metadata
    Show {
        /// A digest (or a prefix of at least 8 hex digits) or an entry name
        entry: String,
    },
    /// Re-hash entries and report corrupt ones (exit status 1 if any)
    Verify {
        /// Only these entries (digests or names) [default: all]
        entries: Vec<String>,
        /// Remove the corrupt entries
        #[arg(long)]
        repair: bool,
    },
    /// Delete every entry no root reaches (pins, registered lockfiles, and what they reference)
    Gc {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep an entry across gc
    Pin { entry: String },
    /// Stop keeping an entry across gc
    Unpin { entry: String },
    /// Register a file (a lockfile) whose digests are gc roots while it exists
    AddRoot { file: PathBuf },
    /// Unregister a file added with add-root
    RemoveRoot { file: PathBuf },
    /// List pins and registered root files
    Roots,
    /// Write one entry and its metadata as a .tar.zst stream
    Export {
        /// A digest or name
        entry: String,
        /// The output file (`-` for stdout); written only if the entry verifies
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Add an entry from a stream made by `store export`, after re-hashing it
    Import {
        /// The .tar.zst file (`-` for stdin)
        file: PathBuf,
    },
}

#[derive(serde::Serialize)]
struct EntryJson<'a> {
    path: &'a Path,
    #[serde(flatten)]
    meta: &'a dockerbuild::store::EntryMeta,
}

fn entry_json(e: &Entry) -> EntryJson<'_> {
    EntryJson {
        path: &e.path,
        meta: &e.meta,
    }
}

pub fn run(cmd: StoreCommand, g: &GlobalArgs, store_dir: &Path) -> Result<i32> {
    if let StoreCommand::Gc { dry_run } = cmd {
        return gc(g, store_dir, dry_run);
    }
    let store = LocalStore::open(store_dir)
        .with_context(|| format!("cannot open the store at `{}`", store_dir.display()))?;
    let bar = Bar::new(g.quiet);
    match cmd {
        StoreCommand::Add {
            path,
            name,
            kind,
            version,
            origin,
            references,
        } => {
            let name = match name {
                Some(n) => n,
                None => sanitize_name(
                    &std::path::absolute(&path)?
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
            };
            let references = references
                .iter()
                .map(|r| store.resolve(r).map(|e| e.meta.digest))
                .collect::<Result<Vec<_>, _>>()?;
            let new = NewEntry {
                name,
                kind: kind.parse::<Kind>().map_err(anyhow::Error::msg)?,
                version,
                origin,
                references,
                build: None,
            };
            let e = store
                .add_path(&path, &new, &bar)
                .with_context(|| format!("cannot add `{}` to the store", path.display()))?;
            print_entry_path(g, &e)?;
        }
        StoreCommand::Path { entry } => print_entry_path(g, &store.resolve(&entry)?)?,
        StoreCommand::Ls { kind } => {
            let kind = kind
                .map(|k| k.parse::<Kind>().map_err(anyhow::Error::msg))
                .transpose()?;
            let entries: Vec<Entry> = store
                .list()?
                .into_iter()
                .filter(|e| kind.is_none_or(|k| e.meta.kind == k))
                .collect();
            if g.json {
                output::json(&entries.iter().map(entry_json).collect::<Vec<_>>())?;
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(
                        out,
                        "{}  {:<9}  {:>10}  {} {}",
                        &e.meta.digest.to_hex()[..16],
                        e.meta.kind,
                        output::bytes(e.meta.size),
                        e.meta.name,
                        e.meta.version.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        StoreCommand::Show { entry } => {
            let e = store.resolve(&entry)?;
            if g.json {
                output::json(&entry_json(&e))?;
            } else {
                let m = &e.meta;
                println!("digest:     {}", m.digest);
                println!("name:       {}", m.name);
                println!("kind:       {}", m.kind);
                println!("version:    {}", m.version.as_deref().unwrap_or("-"));
                println!("origin:     {}", m.origin.as_deref().unwrap_or("-"));
                println!(
                    "size:       {} ({} bytes, {} nodes)",
                    output::bytes(m.size),
                    m.size,
                    m.nodes
                );
                println!("path:       {}", e.path.display());
                println!("pinned:     {}", store.pins()?.contains(&m.digest));
                if m.references.is_empty() {
                    println!("references: -");
                } else {
                    println!("references:");
                    for r in &m.references {
                        println!("  {r}");
                    }
                }
            }
        }
        StoreCommand::Verify { entries, repair } => {
            return verify(g, &store, &bar, entries, repair);
        }
        StoreCommand::Pin { entry } => {
            let e = store.resolve(&entry)?;
            store.pin(&e.meta.digest)?;
            output::status(format!("pinned {} ({})", e.meta.digest, e.meta.name));
        }
        StoreCommand::Unpin { entry } => {
            let d = match Digest::parse(&entry) {
                Ok(d) => d,
                Err(_) => store.resolve(&entry)?.meta.digest,
            };
            if !store.unpin(&d)? {
                bail!("{d} is not pinned");
            }
            output::status(format!("unpinned {d}"));
        }
        StoreCommand::AddRoot { file } => {
            let abs = store.add_root(&file)?;
            output::status(format!("registered gc root {}", abs.display()));
        }
        StoreCommand::RemoveRoot { file } => {
            if !store.remove_root(&file)? {
                bail!("`{}` is not a registered gc root", file.display());
            }
            output::status(format!("unregistered gc root {}", file.display()));
        }
        StoreCommand::Roots => {
            let pins = store.pins()?;
            let files = store.root_files()?;
            if g.json {
                output::json(&serde_json::json!({ "pins": pins, "files": files }))?;
            } else {
                for p in pins {
                    println!("pin   {p}");
                }
                for f in files {
                    let missing = if f.exists {
                        ""
                    } else {
                        "  (missing: roots nothing)"
                    };
                    println!("file  {}{missing}", f.path.display());
                }
            }
        }
        StoreCommand::Export { entry, output } => {
            let e = store.resolve(&entry)?;
            export(&store, &e, &output)?;
        }
        StoreCommand::Import { file } => {
            let e = if file.as_os_str() == "-" {
                store.import(&mut std::io::stdin().lock(), &bar)
            } else {
                let mut f = fs_err::File::open(&file)?;
                store.import(&mut f, &bar)
            }
            .with_context(|| format!("cannot import `{}`", file.display()))?;
            print_entry_path(g, &e)?;
        }
        StoreCommand::Gc { .. } => unreachable!("handled above"),
    }
    Ok(0)
}

fn print_entry_path(g: &GlobalArgs, e: &Entry) -> Result<()> {
    if g.json {
        output::json(&entry_json(e))
    } else {
        println!("{}", e.path.display());
        Ok(())
    }
}

/// Writes to a temporary file beside `output` and renames it, so a failed export leaves
/// no partial file behind.
fn export(store: &LocalStore, e: &Entry, output: &Path) -> Result<()> {
    if output.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        store.export(&e.meta.digest, &mut out)?;
        return Ok(out.flush()?);
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in `{}`", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        store.export(&e.meta.digest, &mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(output)
        .with_context(|| format!("cannot write `{}`", output.display()))?;
    eprintln!(
        "exported {} ({}) to {}",
        e.meta.digest,
        e.meta.name,
        output.display()
    );
    Ok(())
}

fn verify(
    g: &GlobalArgs,
    store: &LocalStore,
    bar: &Bar,
    only: Vec<String>,
    repair: bool,
) -> Result<i32> {
    let bad: Vec<(Digest, PathBuf, String)> = if only.is_empty() {
        store.verify_all(bar)?
    } else {
        let mut bad = Vec::new();
        for q in only {
            let e = store.resolve(&q)?;
            if let Verification::Corrupt { reason } = store.verify(&e.meta.digest, bar)? {
                bad.push((e.meta.digest, e.path, reason));
            }
        }
        bad
    };
    for (d, path, reason) in &bad {
        eprintln!("corrupt: {} ({}): {reason}", d, path.display());
        if repair {
            store.remove(d)?;
            eprintln!("  removed");
        }
    }
    if g.json {
        output::json(
            &bad.iter()
                .map(|(d, p, r)| serde_json::json!({"digest": d, "path": p, "reason": r, "removed": repair}))
                .collect::<Vec<_>>(),
        )?;
    }
    if bad.is_empty() {
        output::status("all entries verified");
        Ok(0)
    } else if repair {
        output::status(format!("{} corrupt entries removed", bad.len()));
        Ok(0)
    } else {
        eprintln!(
            "{} corrupt entries\nhint: `dockerbuild store verify --repair` removes them",
            bad.len()
        );
        Ok(1)
    }
}

fn gc(g: &GlobalArgs, store_dir: &Path, dry_run: bool) -> Result<i32> {
    tracing::info!("waiting for other dockerbuild processes to release the store");
    let store = LocalStore::open_exclusive(store_dir)
        .with_context(|| format!("cannot open the store at `{}`", store_dir.display()))?;
    let report = store.gc(dry_run)?;
    for p in &report.missing_roots {
        eprintln!(
            "warning: registered gc root `{}` no longer exists; it roots nothing",
            p.display()
        );
    }
    if g.json {
        return output::json(&report).map(|_| 0);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for (d, name) in &report.deleted {
        println!("{verb} {d} {name}");
    }
    output::status(format!(
        "{verb} {} entries, {} freed; {} kept",
        report.deleted.len(),
        output::bytes(report.freed_bytes),
        report.kept
    ));
    Ok(0)
}
