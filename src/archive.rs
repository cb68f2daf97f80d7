//! Unpacking source archives (tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip and wheels) into
//! the store, safely, from archives nobody vetted.
//!
//! [`unpack`] reads the archive once, front to back, and writes each member through a
//! [`TreeWriter`] into a staging directory of the store; only a complete, fully checked
//! tree is published ([`LocalStore::commit_tree`]). On any error the staged tree is
//! dropped, which deletes it: a refused archive leaves nothing in the store and has written
//! nothing anywhere else.
//!
//! # What is refused, and why
//!
//! An archive is data from the internet; unpacking it must never write, link or point
//! outside the entry it becomes, and must not exhaust the machine. So the whole archive is
//! refused, naming the archive and the member, when a member:
//!
//! - **has an absolute name** (`/etc/cron.d/x`), a **`..` component** anywhere
//!   (`../x`, `a/../../x`, even `a/../b`), or an **empty or `.` component** (`a//b`,
//!   `a/./b`): such names either escape the unpack root or are ambiguous between tools. A
//!   single leading `./` is the normal `tar -C dir .` form and is stripped. GNU long names
//!   and pax `path` records are checked like any other name;
//! - is a **symlink whose target is absolute, empty, or escapes the tree**, resolved from
//!   the link's own directory as the kernel would: lexically, and through the other
//!   symlinks of the tree (`sub/up -> ..` is fine, but `esc -> sub/up/..` is not). Every
//!   link is checked when it is added and again once the whole tree is known, so the order
//!   of members cannot hide an escape. Links that dangle inside the tree are allowed;
//! - is a **hard link whose target is not an earlier regular file** of the archive (an
//!   absolute or `..` target, a later member, a directory or a symlink). A valid hard link
//!   becomes a copy of the target's bytes (the store has no hard links);
//! - would be **written through a symlink or over another member** (`link -> ..` then
//!   `link/pwned`; the same name twice): the [`TreeWriter`] checks every path against the
//!   tree it has written, never the filesystem;
//! - is a **character or block device, fifo, socket** or any other special member;
//! - takes the **total of file bytes** over [`UnpackOptions::max_bytes`] (checked against
//!   the size the member declares before writing it, and against the bytes it actually
//!   produces while writing; hard-link copies count), or the **member count** over
//!   [`UnpackOptions::max_members`] (compression bombs, inode floods);
//! - in a tar, comes with **extension headers** (pax records, GNU long names) of more than
//!   1 MiB, which the tar reader would otherwise hold in memory;
//! - in a zip, has a **local header that disagrees with the central directory**, or
//!   **shares its name** with another central-directory record (readers disagree on which
//!   one wins).
//!
//! Only file type, names, link targets, contents and the executable bit (any of `0o111` in
//! the member's mode) are kept; owners, times and other mode bits are dropped, as in every
//! store entry ([`crate::tree`]). Decoders are bounded too: xz may use at most 1 GiB of
//! memory for its dictionary, zstd its default window limit.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tracing::debug;

use crate::progress::Progress;
use crate::store::{Entry, LocalStore, NewEntry, StoreError, TreeWriter, validate_name};
use crate::tree::Node;

/// Bytes of headers (pax records, GNU long names, the headers themselves) one tar member
/// may come with.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// The longest symlink target Linux accepts (`PATH_MAX` minus the NUL).
const MAX_LINK_TARGET: usize = 4095;
/// How many symlinks one path lookup may follow before the kernel gives up (`ELOOP`).
const MAX_SYMLINK_HOPS: usize = 40;
/// Memory the xz decoder may use (its dictionary); `xz -9` needs 65 MiB.
const XZ_MEMLIMIT: u64 = 1 << 30;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const EXEC_BITS: u32 = 0o111;

const MALICIOUS: &str = "hint: the archive is malformed or malicious; nothing was unpacked";

/// The container and compression of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    TarXz,
    TarBz2,
    TarZst,
    /// Zip archives, including Python wheels.
    Zip,
}

impl Format {
    /// The format of the archive at `path`: by its first bytes (gzip, xz, bzip2, zstd, zip,
    /// or a ustar header), else by its file name (`.tar.gz`/`.tgz`, `.tar.xz`/`.txz`,
    /// `.tar.bz2`/`.tbz2`, `.tar.zst`, `.zip`, `.whl`, `.tar`).
    pub fn detect(path: &Path) -> Result<Format, ArchiveError> {
        let open_err = |source| ArchiveError::Open {
            archive: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let mut head = [0u8; 262];
        let mut n = 0;
        while n < head.len() {
            match file.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        Self::from_magic(&head[..n])
            .or_else(|| Self::from_name(path))
            .ok_or_else(|| ArchiveError::Detect {
                archive: path.to_owned(),
            })
    }

    fn from_magic(head: &[u8]) -> Option<Format> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Format::TarGz)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Format::TarXz)
        } else if head.starts_with(b"BZh") {
            Some(Format::TarBz2)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Format::TarZst)
        } else if head.starts_with(b"PK\x03\x04") {
            Some(Format::Zip)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Format::Tar)
        } else {
            None
        }
    }

    fn from_name(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let table: [(&[&str], Format); 6] = [
            (&[".tar.gz", ".tgz"], Format::TarGz),
            (&[".tar.xz", ".txz"], Format::TarXz),
            (&[".tar.bz2", ".tbz2"], Format::TarBz2),
            (&[".tar.zst"], Format::TarZst),
            (&[".zip", ".whl"], Format::Zip),
            (&[".tar"], Format::Tar),
        ];
        table
            .iter()
            .find(|(suffixes, _)| suffixes.iter().any(|s| name.ends_with(s)))
            .map(|(_, f)| *f)
    }
}

/// Limits that protect the machine from compression bombs and floods of members.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Total bytes of file contents the unpacked tree may hold (hard-link copies count).
    pub max_bytes: u64,
    /// Members (files, directories, links) the archive may have.
    pub max_members: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_bytes: 8 << 30,
            max_members: 1_000_000,
        }
    }
}

/// Why an archive could not be unpacked. Every variant names the archive, and the member
/// where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot open `{}`", archive.display())]
    Open {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot tell what kind of archive `{}` is\nhint: dockerbuild unpacks .tar, .tar.gz/.tgz, .tar.xz/.txz, .tar.bz2/.tbz2, .tar.zst, .zip and .whl",
        archive.display()
    )]
    Detect { archive: PathBuf },
    #[error("cannot read `{}`: it is corrupt, truncated or not an archive", archive.display())]
    Read {
        archive: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read member `{member}` of `{}`: it is corrupt, truncated or unsupported", archive.display())]
    ReadMember {
        archive: PathBuf,
        member: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("refusing `{}`: member `{member}` has an absolute path\n{MALICIOUS}", archive.display())]
    AbsolutePath { archive: PathBuf, member: String },
    #[error("refusing `{}`: member `{member}` escapes the archive root\n{MALICIOUS}", archive.display())]
    Escape { archive: PathBuf, member: String },
    #[error("refusing `{}`: member `{member}` has a malformed name: {reason}", archive.display())]
    MalformedName {
        archive: PathBuf,
        member: String,
        reason: &'static str,
    },
    #[error(
        "refusing `{}`: symlink `{member}` -> `{target}` {reason}\nhint: links in an archive may only point inside it",
        archive.display()
    )]
    Symlink {
        archive: PathBuf,
        member: String,
        target: String,
        reason: &'static str,
    },
    #[error(
        "refusing `{}`: hard link `{member}` -> `{target}` {reason}\nhint: a hard link must name a regular file that comes earlier in the archive",
        archive.display()
    )]
    HardLink {
        archive: PathBuf,
        member: String,
        target: String,
        reason: &'static str,
    },
    #[error(
        "refusing `{}`: member `{member}` is a {what}\nhint: only regular files, directories, symlinks and hard links are unpacked",
        archive.display()
    )]
    UnsupportedType {
        archive: PathBuf,
        member: String,
        what: String,
    },
    #[error("refusing `{}`: member `{member}` conflicts with an earlier one: {reason}", archive.display())]
    Conflict {
        archive: PathBuf,
        member: String,
        reason: String,
    },
    #[error(
        "refusing `{}`: member `{member}` takes the unpacked size over the limit of {limit} bytes\nhint: this may be a compression bomb; raise the limit only for an archive you trust",
        archive.display()
    )]
    TooLarge {
        archive: PathBuf,
        member: String,
        limit: u64,
    },
    #[error(
        "refusing `{}`: member `{member}` is over the limit of {limit} members\nhint: raise the limit only for an archive you trust",
        archive.display()
    )]
    TooManyMembers {
        archive: PathBuf,
        member: String,
        limit: u64,
    },
    #[error(
        "refusing `{}`: a member's headers (pax records, long names) take more than {limit} bytes\n{MALICIOUS}",
        archive.display()
    )]
    HeadersTooLarge { archive: PathBuf, limit: u64 },
    #[error(
        "refusing `{}`: its central directory lists a member name more than once\n{MALICIOUS}",
        archive.display()
    )]
    DuplicateZipName { archive: PathBuf },
    #[error("cannot unpack member `{member}` of `{}`", archive.display())]
    Add {
        archive: PathBuf,
        member: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Unpacks `archive` (any [`Format`]) into a new store entry described by `new`, refusing
/// anything listed in the module documentation. Returns the entry (an existing one if the
/// same tree was already stored under that name).
pub fn unpack(
    store: &LocalStore,
    archive: &Path,
    new: &NewEntry,
    opts: &UnpackOptions,
    progress: &dyn Progress,
) -> Result<Entry, ArchiveError> {
    validate_name(&new.name).map_err(StoreError::from)?;
    let format = Format::detect(archive)?;
    let file = File::open(archive).map_err(|source| ArchiveError::Open {
        archive: archive.to_owned(),
        source,
    })?;
    let total = file.metadata().ok().map(|m| m.len());
    let mut tree = store.stage_tree()?;
    let mut u = Unpacker {
        archive,
        opts,
        writer: &mut tree.writer,
        bytes: 0,
        members: 0,
        links: Vec::new(),
    };
    progress.start("unpacking", total);
    let result = match format {
        Format::Zip => u.zip(file, progress),
        _ => decoder(format, archive, file, progress).and_then(|r| u.tar(r)),
    };
    progress.finish();
    result?;
    u.recheck_links()?;
    let (members, bytes) = (u.members, u.bytes);
    let entry = store.commit_tree(tree, new)?;
    debug!(
        archive = %archive.display(),
        ?format,
        members,
        bytes,
        digest = %entry.meta.digest,
        "unpacked"
    );
    Ok(entry)
}

/// The decompressed tar stream of a compressed tar.
fn decoder<'a>(
    format: Format,
    archive: &Path,
    file: File,
    progress: &'a dyn Progress,
) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let input = Counted {
        inner: file,
        progress,
    };
    let read_err = |e: Box<dyn std::error::Error + Send + Sync>| ArchiveError::Read {
        archive: archive.to_owned(),
        source: e,
    };
    Ok(match format {
        Format::Tar => Box::new(BufReader::with_capacity(1 << 16, input)),
        Format::TarGz => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Format::TarXz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| read_err(e.into()))?;
            Box::new(liblzma::read::XzDecoder::new_stream(input, stream))
        }
        Format::TarBz2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Format::TarZst => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| read_err(e.into()))?)
        }
        Format::Zip => unreachable!("zip archives are not streams"),
    })
}

/// Reports compressed bytes read as progress.
struct Counted<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// How many bytes the tar reader may consume while it looks for the next member; `None`
/// while a member's data is being read (that is bounded by `max_bytes`).
#[derive(Default)]
struct HeaderBudget {
    left: Cell<Option<u64>>,
    exceeded: Cell<bool>,
}

/// The tar stream, consuming [`HeaderBudget`] while the tar reader reads headers.
struct Budgeted<R> {
    inner: R,
    budget: Rc<HeaderBudget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            self.budget.exceeded.set(true);
            return Err(io::Error::other("member headers are too large"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.left.set(Some(left - n as u64));
        Ok(n)
    }
}

/// A member's data on its way to the store: counts it against the size limit, and keeps
/// the archive's own read error (the writer would blame the file it writes).
struct Meter<'r> {
    inner: &'r mut dyn Read,
    allowed: u64,
    used: u64,
    exceeded: bool,
    failed: Option<io::Error>,
}

impl<'r> Meter<'r> {
    fn new(inner: &'r mut dyn Read, allowed: u64) -> Self {
        Meter {
            inner,
            allowed,
            used: 0,
            exceeded: false,
            failed: None,
        }
    }
}

impl Read for Meter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(e);
                return Err(io::Error::other("reading the archive failed"));
            }
        };
        self.used += n as u64;
        if self.used > self.allowed {
            self.exceeded = true;
            return Err(io::Error::other("the size limit was exceeded"));
        }
        Ok(n)
    }
}

/// Why a member name was refused.
#[derive(Debug, PartialEq, Eq)]
enum NameError {
    Absolute,
    Escapes,
    Malformed(&'static str),
}

/// Splits an archive member name into checked components; `[]` is the archive root.
/// A trailing `/` (directories) and one leading `./` are allowed.
fn split_name(raw: &[u8]) -> Result<Vec<Vec<u8>>, NameError> {
    if raw.is_empty() {
        return Err(NameError::Malformed("it is empty"));
    }
    if raw[0] == b'/' {
        return Err(NameError::Absolute);
    }
    if raw.contains(&0) {
        return Err(NameError::Malformed("it contains a NUL byte"));
    }
    let mut s = raw.strip_suffix(b"/").unwrap_or(raw);
    if s == b"." {
        return Ok(Vec::new());
    }
    if let Some(rest) = s.strip_prefix(b"./") {
        s = rest;
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut dotdot = false;
    for c in s.split(|b| *b == b'/') {
        match c {
            b"" => return Err(NameError::Malformed("it has an empty component (`//`)")),
            b"." => return Err(NameError::Malformed("it has a `.` component")),
            b".." => {
                if out.pop().is_none() {
                    return Err(NameError::Escapes);
                }
                dotdot = true;
            }
            _ => out.push(c.to_vec()),
        }
    }
    if dotdot {
        return Err(NameError::Malformed("it has a `..` component"));
    }
    Ok(out)
}

/// Why a symlink target was refused, if it is.
fn check_link_target(
    writer: &TreeWriter,
    link: &[Vec<u8>],
    target: &[u8],
) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("has an empty target");
    }
    if target.contains(&0) {
        return Err("has a target with a NUL byte");
    }
    if target.len() > MAX_LINK_TARGET {
        return Err("has a target longer than 4095 bytes");
    }
    if target[0] == b'/' {
        return Err("is absolute");
    }
    if escapes(writer, link, target) {
        return Err("points outside the archive root");
    }
    Ok(())
}

/// Whether resolving `target` from the directory of the link at `link` leaves the tree,
/// following the tree's symlinks as the kernel would. Missing components are resolved
/// lexically (conservatively: the kernel would fail there). A chain of more than 40 links
/// cannot escape: the kernel refuses it (`ELOOP`).
fn escapes(writer: &TreeWriter, link: &[Vec<u8>], target: &[u8]) -> bool {
    let mut at: Vec<Vec<u8>> = link[..link.len().saturating_sub(1)].to_vec();
    let mut pending: Vec<Vec<u8>> = components_reversed(target);
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return true;
                }
            }
            _ => {
                at.push(c);
                if let Some(Node::Symlink { target }) = writer.get(&at) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return false;
                    }
                    if target.first() == Some(&b'/') {
                        return true;
                    }
                    at.pop();
                    pending.extend(components_reversed(target));
                }
            }
        }
    }
    false
}

fn components_reversed(path: &[u8]) -> Vec<Vec<u8>> {
    path.rsplit(|b| *b == b'/').map(<[u8]>::to_vec).collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a member is, once its format-specific header is understood.
enum Kind {
    File { executable: bool },
    Dir,
    Symlink,
    HardLink,
}

/// The state of one unpack.
struct Unpacker<'a> {
    archive: &'a Path,
    opts: &'a UnpackOptions,
    writer: &'a mut TreeWriter,
    /// File bytes written so far.
    bytes: u64,
    members: u64,
    /// Every symlink written, with its member name, for the final check.
    links: Vec<(Vec<Vec<u8>>, String)>,
}

impl Unpacker<'_> {
    fn archive(&self) -> PathBuf {
        self.archive.to_owned()
    }

    fn read_member_err(
        &self,
        member: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ArchiveError {
        ArchiveError::ReadMember {
            archive: self.archive(),
            member: member.to_owned(),
            source: source.into(),
        }
    }

    fn add_err(&self, member: &str, e: StoreError) -> ArchiveError {
        match e {
            StoreError::MalformedTree { reason } => ArchiveError::Conflict {
                archive: self.archive(),
                member: member.to_owned(),
                reason,
            },
            source => ArchiveError::Add {
                archive: self.archive(),
                member: member.to_owned(),
                source: Box::new(source),
            },
        }
    }

    fn name_err(&self, member: &str, e: NameError) -> ArchiveError {
        let (archive, member) = (self.archive(), member.to_owned());
        match e {
            NameError::Absolute => ArchiveError::AbsolutePath { archive, member },
            NameError::Escapes => ArchiveError::Escape { archive, member },
            NameError::Malformed(reason) => ArchiveError::MalformedName {
                archive,
                member,
                reason,
            },
        }
    }

    fn count_member(&mut self, member: &str) -> Result<(), ArchiveError> {
        self.members += 1;
        if self.members > self.opts.max_members {
            return Err(ArchiveError::TooManyMembers {
                archive: self.archive(),
                member: member.to_owned(),
                limit: self.opts.max_members,
            });
        }
        Ok(())
    }

    fn too_large(&self, member: &str) -> ArchiveError {
        ArchiveError::TooLarge {
            archive: self.archive(),
            member: member.to_owned(),
            limit: self.opts.max_bytes,
        }
    }

    /// Adds one member (its name already split and checked). `data` is the member's data
    /// for files and symlinks (whose target it holds in zips); `link` is the tar link name.
    fn add(
        &mut self,
        member: &str,
        path: &[Vec<u8>],
        kind: Kind,
        declared: u64,
        data: &mut dyn Read,
        link: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        if path.is_empty() && !matches!(kind, Kind::Dir) {
            return Err(ArchiveError::MalformedName {
                archive: self.archive(),
                member: member.to_owned(),
                reason: "only a directory can be the archive root",
            });
        }
        match kind {
            Kind::Dir => self
                .writer
                .add_dir(path)
                .map_err(|e| self.add_err(member, e)),
            Kind::File { executable } => self.add_file(member, path, executable, declared, data),
            Kind::Symlink => {
                let target = match link {
                    Some(t) => t.to_vec(),
                    None => {
                        if declared > MAX_LINK_TARGET as u64 {
                            return Err(ArchiveError::Symlink {
                                archive: self.archive(),
                                member: member.to_owned(),
                                target: format!("<{declared} bytes>"),
                                reason: "has a target longer than 4095 bytes",
                            });
                        }
                        let mut t = Vec::new();
                        data.take(MAX_LINK_TARGET as u64 + 1)
                            .read_to_end(&mut t)
                            .map_err(|e| self.read_member_err(member, e))?;
                        t
                    }
                };
                self.add_symlink(member, path, &target)
            }
            Kind::HardLink => {
                let target = link.unwrap_or_default();
                self.add_hard_link(member, path, target)
            }
        }
    }

    fn add_file(
        &mut self,
        member: &str,
        path: &[Vec<u8>],
        executable: bool,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let allowed = self.opts.max_bytes.saturating_sub(self.bytes);
        if declared > allowed {
            return Err(self.too_large(member));
        }
        let mut meter = Meter::new(data, allowed);
        let result = self.writer.add_file(path, executable, &mut meter);
        self.bytes += meter.used;
        match result {
            Ok(_) => Ok(()),
            Err(_) if meter.exceeded => Err(self.too_large(member)),
            Err(_) if meter.failed.is_some() => {
                Err(self.read_member_err(member, meter.failed.expect("checked")))
            }
            Err(e) => Err(self.add_err(member, e)),
        }
    }

    fn add_symlink(
        &mut self,
        member: &str,
        path: &[Vec<u8>],
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        check_link_target(self.writer, path, target).map_err(|reason| ArchiveError::Symlink {
            archive: self.archive(),
            member: member.to_owned(),
            target: lossy(target),
            reason,
        })?;
        self.writer
            .add_symlink(path, target)
            .map_err(|e| self.add_err(member, e))?;
        self.links.push((path.to_vec(), member.to_owned()));
        Ok(())
    }

    /// A hard link becomes a copy of the earlier regular file it names (tar link names are
    /// relative to the archive root, not to the link).
    fn add_hard_link(
        &mut self,
        member: &str,
        path: &[Vec<u8>],
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let refuse = |reason| ArchiveError::HardLink {
            archive: self.archive(),
            member: member.to_owned(),
            target: lossy(target),
            reason,
        };
        let to = split_name(target).map_err(|e| {
            refuse(match e {
                NameError::Absolute => "is absolute",
                NameError::Escapes => "escapes the archive root",
                NameError::Malformed(_) => "has a malformed target",
            })
        })?;
        let (executable, size) = match self.writer.get(&to) {
            Some(Node::File {
                executable, size, ..
            }) if !to.is_empty() => (*executable, *size),
            Some(Node::Directory(_)) => return Err(refuse("names a directory")),
            Some(Node::Symlink { .. }) => return Err(refuse("names a symlink")),
            _ => return Err(refuse("names no earlier member of the archive")),
        };
        // The tree holds only directories on the way to `to` (checked by `get` above), so
        // this opens the staged file itself; O_NOFOLLOW keeps it that way.
        let disk = self.writer.disk_path(&to);
        let fd = rustix::fs::open(
            &disk,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| StoreError::Io {
            action: "open",
            path: disk.clone(),
            source: e.into(),
        })?;
        let mut file = File::from(fd);
        self.add_file(member, path, executable, size, &mut file)
    }

    /// Checks every symlink again against the finished tree: a link added before the links
    /// it resolves through was only checked lexically.
    fn recheck_links(&self) -> Result<(), ArchiveError> {
        for (path, member) in &self.links {
            let Some(Node::Symlink { target }) = self.writer.get(path) else {
                continue;
            };
            if escapes(self.writer, path, target) {
                return Err(ArchiveError::Symlink {
                    archive: self.archive(),
                    member: member.clone(),
                    target: lossy(target),
                    reason: "points outside the archive root through other symlinks",
                });
            }
        }
        Ok(())
    }

    fn tar(&mut self, input: Box<dyn Read + '_>) -> Result<(), ArchiveError> {
        let budget = Rc::new(HeaderBudget::default());
        let mut ar = tar::Archive::new(Budgeted {
            inner: input,
            budget: budget.clone(),
        });
        let read_err = |archive: &Path, e: io::Error| ArchiveError::Read {
            archive: archive.to_owned(),
            source: e.into(),
        };
        let mut entries = ar.entries().map_err(|e| read_err(self.archive, e))?;
        loop {
            budget.left.set(Some(MAX_HEADER_BYTES));
            let next = entries.next();
            budget.left.set(None);
            let mut member = match next {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(_)) if budget.exceeded.get() => {
                    return Err(ArchiveError::HeadersTooLarge {
                        archive: self.archive(),
                        limit: MAX_HEADER_BYTES,
                    });
                }
                Some(Err(e)) => return Err(read_err(self.archive, e)),
            };
            let raw = member.path_bytes().into_owned();
            let name = lossy(&raw);
            let header = member.header();
            let ty = header.entry_type();
            if ty.is_pax_global_extensions() {
                // Archive-wide metadata (`git archive` writes the commit here); no member.
                io::copy(&mut member, &mut io::sink()).map_err(|e| read_err(self.archive, e))?;
                continue;
            }
            self.count_member(&name)?;
            let declared = member.size();
            let kind = match ty {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    if raw.ends_with(b"/") {
                        // Old (v7) tars mark directories only by the trailing slash.
                        Kind::Dir
                    } else {
                        let mode = header.mode().map_err(|e| self.read_member_err(&name, e))?;
                        Kind::File {
                            executable: mode & EXEC_BITS != 0,
                        }
                    }
                }
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                tar::EntryType::Link => Kind::HardLink,
                other => {
                    let what = match other {
                        tar::EntryType::Char => "character device".to_owned(),
                        tar::EntryType::Block => "block device".to_owned(),
                        tar::EntryType::Fifo => "fifo".to_owned(),
                        other => format!("tar member of type `{}`", other.as_byte().escape_ascii()),
                    };
                    return Err(ArchiveError::UnsupportedType {
                        archive: self.archive(),
                        member: name,
                        what,
                    });
                }
            };
            let path = split_name(&raw).map_err(|e| self.name_err(&name, e))?;
            let link = match kind {
                Kind::Symlink | Kind::HardLink => Some(
                    member
                        .link_name_bytes()
                        .ok_or_else(|| self.read_member_err(&name, "the link has no target"))?
                        .into_owned(),
                ),
                _ => None,
            };
            let is_file = matches!(kind, Kind::File { .. });
            if !is_file && declared > self.opts.max_bytes.saturating_sub(self.bytes) {
                return Err(self.too_large(&name));
            }
            self.add(&name, &path, kind, declared, &mut member, link.as_deref())?;
            if !is_file {
                // Data a directory or link carries is skipped, but counted.
                let skipped = io::copy(&mut member, &mut io::sink())
                    .map_err(|e| self.read_member_err(&name, e))?;
                self.bytes += skipped;
            }
        }
        Ok(())
    }

    fn zip(&mut self, file: File, progress: &dyn Progress) -> Result<(), ArchiveError> {
        let archive = self.archive;
        let read_err = |e: zip::result::ZipError| ArchiveError::Read {
            archive: archive.to_owned(),
            source: e.into(),
        };
        let mut za =
            zip::ZipArchive::new(BufReader::with_capacity(1 << 16, file)).map_err(read_err)?;
        if za.has_duplicate_names() {
            return Err(ArchiveError::DuplicateZipName {
                archive: self.archive(),
            });
        }
        for i in 0..za.len() {
            let (raw, mode, declared, compressed) = {
                let m = za.by_index_data(i).map_err(read_err)?;
                (
                    m.name_raw().to_vec(),
                    m.unix_mode().unwrap_or(0),
                    m.size(),
                    m.compressed_size(),
                )
            };
            let name = lossy(&raw);
            self.count_member(&name)?;
            let dir_name = raw.ends_with(b"/");
            let kind = match mode & S_IFMT {
                S_IFDIR => Kind::Dir,
                0 | S_IFREG if dir_name => Kind::Dir,
                0 | S_IFREG => Kind::File {
                    executable: mode & EXEC_BITS != 0,
                },
                S_IFLNK if !dir_name => Kind::Symlink,
                other => {
                    let what = match other {
                        S_IFLNK => "symlink with a directory's name",
                        S_IFCHR => "character device",
                        S_IFBLK => "block device",
                        S_IFIFO => "fifo",
                        S_IFSOCK => "socket",
                        _ => "member of unknown type",
                    };
                    return Err(ArchiveError::UnsupportedType {
                        archive: self.archive(),
                        member: name,
                        what: what.to_owned(),
                    });
                }
            };
            let path = split_name(&raw).map_err(|e| self.name_err(&name, e))?;
            if matches!(kind, Kind::Dir) {
                self.add(&name, &path, kind, 0, &mut io::empty(), None)?;
            } else {
                let options = zip::read::ZipReadOptions::new().enforce_header_consistency(true);
                let mut data = za
                    .by_index_with_options(i, options)
                    .map_err(|e| self.read_member_err(&name, e))?;
                self.add(&name, &path, kind, declared, &mut data, None)?;
            }
            progress.advance(compressed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parts(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn names_are_split_and_checked() {
        assert_eq!(split_name(b"a/b/c"), Ok(parts("a/b/c")));
        assert_eq!(split_name(b"./a/b/"), Ok(parts("a/b")));
        assert_eq!(split_name(b"./"), Ok(vec![]));
        assert_eq!(split_name(b"."), Ok(vec![]));
        assert_eq!(split_name(b"caf\xe9"), Ok(vec![b"caf\xe9".to_vec()]));
        assert_eq!(split_name(b"/etc/passwd"), Err(NameError::Absolute));
        assert_eq!(split_name(b"/"), Err(NameError::Absolute));
        assert_eq!(split_name(b"../x"), Err(NameError::Escapes));
        assert_eq!(split_name(b"./../x"), Err(NameError::Escapes));
        assert_eq!(split_name(b"a/../../x"), Err(NameError::Escapes));
        assert!(matches!(
            split_name(b"a/../b"),
            Err(NameError::Malformed(_))
        ));
        assert!(matches!(split_name(b""), Err(NameError::Malformed(_))));
        assert!(matches!(split_name(b"a//b"), Err(NameError::Malformed(_))));
        assert!(matches!(split_name(b"a/./b"), Err(NameError::Malformed(_))));
        assert!(matches!(split_name(b"././a"), Err(NameError::Malformed(_))));
        assert!(matches!(split_name(b"a\0b"), Err(NameError::Malformed(_))));
        assert!(matches!(split_name(b"a//"), Err(NameError::Malformed(_))));
    }

    #[test]
    fn formats_are_detected_by_magic_then_name() {
        assert_eq!(Format::from_magic(&[0x1f, 0x8b, 8]), Some(Format::TarGz));
        assert_eq!(Format::from_magic(b"\xfd7zXZ\0rest"), Some(Format::TarXz));
        assert_eq!(Format::from_magic(b"BZh91AY"), Some(Format::TarBz2));
        assert_eq!(
            Format::from_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Format::TarZst)
        );
        assert_eq!(Format::from_magic(b"PK\x03\x04"), Some(Format::Zip));
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(Format::from_magic(&tar), Some(Format::Tar));
        assert_eq!(Format::from_magic(b"hello"), None);
        for (name, f) in [
            ("x.tar.gz", Format::TarGz),
            ("X.TGZ", Format::TarGz),
            ("x.tar.xz", Format::TarXz),
            ("x.txz", Format::TarXz),
            ("x.tar.bz2", Format::TarBz2),
            ("x.tbz2", Format::TarBz2),
            ("x.tar.zst", Format::TarZst),
            ("x.zip", Format::Zip),
            ("numpy-2.0-cp312-manylinux_x86_64.whl", Format::Zip),
            ("x.tar", Format::Tar),
        ] {
            assert_eq!(Format::from_name(Path::new(name)), Some(f), "{name}");
        }
        assert_eq!(Format::from_name(Path::new("x.rar")), None);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("misnamed.zip");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&[0x1f, 0x8b, 8, 0])
            .unwrap();
        assert_eq!(Format::detect(&p).unwrap(), Format::TarGz, "magic wins");
        let p = dir.path().join("v7.tar");
        std::fs::write(&p, vec![0u8; 1024]).unwrap();
        assert_eq!(Format::detect(&p).unwrap(), Format::Tar, "name as fallback");
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, b"not an archive").unwrap();
        let e = Format::detect(&p).unwrap_err();
        assert!(matches!(e, ArchiveError::Detect { .. }));
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert!(matches!(
            Format::detect(&dir.path().join("missing.tar")),
            Err(ArchiveError::Open { .. })
        ));
    }

    #[test]
    fn meter_stops_at_the_limit_and_keeps_read_errors() {
        let data = vec![7u8; 100];
        let mut src: &[u8] = &data;
        let mut m = Meter::new(&mut src, 100);
        let mut out = Vec::new();
        assert!(m.read_to_end(&mut out).is_ok());
        assert_eq!(m.used, 100);

        let mut src: &[u8] = &data;
        let mut m = Meter::new(&mut src, 99);
        assert!(m.read_to_end(&mut Vec::new()).is_err());
        assert!(m.exceeded);

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate",
                ))
            }
        }
        let mut broken = Broken;
        let mut m = Meter::new(&mut broken, 10);
        assert!(m.read_to_end(&mut Vec::new()).is_err());
        assert_eq!(m.failed.unwrap().to_string(), "corrupt deflate");
    }

    #[test]
    fn header_budget_refuses_reads_past_it() {
        let budget = Rc::new(HeaderBudget::default());
        let data = [1u8; 100];
        let mut r = Budgeted {
            inner: &data[..],
            budget: budget.clone(),
        };
        budget.left.set(Some(60));
        let mut buf = [0u8; 50];
        assert_eq!(r.read(&mut buf).unwrap(), 50);
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert!(r.read(&mut buf).is_err());
        assert!(budget.exceeded.get());
        budget.left.set(None);
        assert_eq!(r.read(&mut buf).unwrap(), 40);
    }

    #[test]
    fn symlinks_resolve_through_the_tree() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(store_dir.path()).unwrap();
        let mut tree = store.stage_tree().unwrap();
        let w = &mut tree.writer;
        w.add_dir(&parts("sub/deep")).unwrap();
        w.add_symlink(&parts("sub/up"), b"..").unwrap();
        w.add_symlink(&parts("sub/self"), b"self").unwrap();
        w.add_symlink(&parts("abs"), b"/etc").unwrap();

        let ok = |link: &str, target: &[u8]| !escapes(w, &parts(link), target);
        assert!(ok("l", b"sub/deep"));
        assert!(ok("sub/deep/l", b"../../x"));
        assert!(ok("sub/deep/l", b"./..//../x"));
        assert!(ok("l", b"sub/up"), "resolves to the root");
        assert!(ok("l", b"missing/x"), "dangling inside");
        assert!(
            ok("l", b"sub/self"),
            "a loop fails with ELOOP; it cannot escape"
        );
        assert!(!ok("l", b".."));
        assert!(!ok("sub/deep/l", b"../../../x"));
        assert!(!ok("l", b"sub/up/.."), "root/.. through `sub/up`");
        assert!(!ok("sub/l", b"up/../x"));
        assert!(ok("sub/l", b"up/up/x"), "root/up does not exist");
        assert!(!ok("l", b"abs"), "through an absolute link");
        assert!(
            !ok("l", b"missing/../../x"),
            "lexical where the tree has nothing"
        );

        assert_eq!(
            check_link_target(w, &parts("l"), b"/etc/passwd"),
            Err("is absolute")
        );
        assert_eq!(
            check_link_target(w, &parts("l"), b""),
            Err("has an empty target")
        );
        assert!(check_link_target(w, &parts("l"), &vec![b'a'; 4096]).is_err());
        assert!(check_link_target(w, &parts("l"), &vec![b'a'; 4095]).is_ok());
    }
}
