//! dockerbuild: a hermetic, content-addressed toolchain store and cross-build tool.
//!
//! # Map
//! - [`digest`]: the BLAKE3 [`digest::Digest`] type and its text forms.
//! - [`tree`]: the canonical form of an entry (file, executable, symlink, directory) and
//!   how its address is computed; specified in `store-format/README.md`.
//! - [`store`]: the [`store::Store`] interface and the local backend: atomic insertion,
//!   locking, verification, gc, export/import.
//! - [`archive`]: unpacking tar/zip archives into tree entries, refusing hostile members.
//! - [`fetch`]: HTTP downloads with retries, resumption, and hashing while streaming.
//! - [`source`]: source URLs (`https`, `file`, `pypi:`, `debian:`) and their resolvers.
//! - [`lock`]: the lockfile's schema and text.
//! - [`project`]: a project's catalogue (`sources.toml`), locking, and fetching sources.
//! - [`toolchain`]: platform definitions (`toolchains/*.toml`), apt closures, reproducible
//!   root filesystems and image archives.
//! - [`docker`]: the Docker engine through bollard: labelled, confined containers that
//!   are removed on errors and signals.
//! - [`image`]: toolchain images generated from the lockfile, kept in the store, loaded.
//! - [`build`]: hermetic builds in those images, keyed by everything that went in.
//! - [`cache`]: binary caches (`file://`, `cipd://`, `oci://`) that substitute entries instead of
//!   building them; [`signing`]: ed25519 keys and signed claims.
//! - [`mirror`]: `docker-mirror`, copying an image between registries by digest.
//! - [`base_image`]: upstream images `[base]` toolchains build on: pinned, mirrored,
//!   fetched by digest.
//! - [`registry`]: a blocking OCI distribution (registry API) client: resumable blob
//!   transfers, manifests checked against their digests, Docker credentials.
//! - [`recipe`]: named, checked-in builds (`recipes/*.toml`): interpreters, git, ...
//! - [`config`]: `config.toml` and where the store lives by default.
//! - [`progress`]: how long operations report progress without printing.
//!
//! The binary (`src/main.rs`, `src/cli/`) parses arguments, draws progress and prints;
//! nothing in this library prints.
//!
//! # Files dockerbuild owns
//! - the store (`--store`, `$DOCKERBUILD_STORE`, or `<data dir>/store`), laid out as
//!   drawn in [`store`];
//! - `<config dir>/config.toml` ([`config::Config`]);
//! - in a project: `sources.toml` (read) and `lockfiles/dockerbuild.lock` (written by
//!   `lock`).

pub mod archive;
pub mod base_image;
pub mod build;
pub mod cache;
pub mod config;
pub mod digest;
pub mod docker;
pub mod fetch;
pub mod image;
pub mod lock;
pub mod mirror;
pub mod progress;
pub mod project;
pub mod recipe;
pub mod registry;
pub mod signing;
pub mod source;
pub mod store;
#[cfg(test)]
mod testutil;
pub mod toolchain;
pub mod tree;
pub mod wheel;
