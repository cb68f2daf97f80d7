//! The canonical form of a store entry and its address.
//!
//! An entry is a regular file, an executable file, a symlink, or a directory of named
//! children. Nothing else is part of it: no timestamps, owners, or mode bits beyond
//! "executable". The address of an entry is the BLAKE3 digest of its canonical
//! serialization, specified (with test vectors) in `store-format/README.md`:
//!
//! ```text
//! u64(n)       = n as 8 bytes, little-endian
//! bytes(b)     = u64(len(b)) || b
//! node(file)   = "f" || u64(size) || blake3(contents)
//! node(exec)   = "x" || u64(size) || blake3(contents)
//! node(link)   = "l" || bytes(target)
//! node(dir)    = "d" || blake3( u64(count) || { bytes(name) || node(child) } sorted bytewise by name )
//! address      = blake3( "dockerbuild-entry-v1\0" || bytes(entry name) || node(root) )
//! ```
//!
//! Files enter by the BLAKE3 of their contents (what `b3sum` prints), so files hash in
//! parallel and a directory's digest is a Merkle hash of its children. The entry's name is
//! part of its address: the same bytes under two names are two entries.

use std::collections::BTreeMap;

use crate::digest::Digest;

/// The domain-separation prefix of an entry address.
pub const ENTRY_PREFIX: &[u8] = b"dockerbuild-entry-v1\0";

/// One node of an entry's tree, with file contents already reduced to their digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        executable: bool,
        size: u64,
        contents: Digest,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Children keyed by raw name bytes; `BTreeMap` keeps them sorted bytewise.
    Directory(BTreeMap<Vec<u8>, Node>),
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

impl Node {
    /// An empty directory.
    pub fn empty_dir() -> Self {
        Node::Directory(BTreeMap::new())
    }

    /// Feeds `node(self)` into a hasher.
    fn encode(&self, h: &mut blake3::Hasher) {
        match self {
            Node::File {
                executable,
                size,
                contents,
            } => {
                h.update(if *executable { b"x" } else { b"f" });
                h.update(&size.to_le_bytes());
                h.update(&contents.0);
            }
            Node::Symlink { target } => {
                h.update(b"l");
                put_bytes(h, target);
            }
            Node::Directory(_) => {
                h.update(b"d");
                h.update(&self.directory_digest().0);
            }
        }
    }

    /// The digest of a directory's listing. Panics on a non-directory (a programming error).
    fn directory_digest(&self) -> Digest {
        let Node::Directory(children) = self else {
            unreachable!("directory_digest on a non-directory")
        };
        let mut h = blake3::Hasher::new();
        h.update(&(children.len() as u64).to_le_bytes());
        for (name, child) in children {
            put_bytes(&mut h, name);
            child.encode(&mut h);
        }
        h.finalize().into()
    }

    /// The address of an entry named `name` whose root is this node.
    pub fn entry_digest(&self, name: &str) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(ENTRY_PREFIX);
        put_bytes(&mut h, name.as_bytes());
        self.encode(&mut h);
        h.finalize().into()
    }

    /// Total bytes of file contents in this tree.
    pub fn content_size(&self) -> u64 {
        match self {
            Node::File { size, .. } => *size,
            Node::Symlink { .. } => 0,
            Node::Directory(c) => c.values().map(Node::content_size).sum(),
        }
    }

    /// Number of nodes (files, links and directories) in this tree.
    pub fn count(&self) -> u64 {
        match self {
            Node::Directory(c) => 1 + c.values().map(Node::count).sum::<u64>(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8], executable: bool) -> Node {
        Node::File {
            executable,
            size: bytes.len() as u64,
            contents: Digest::of(bytes),
        }
    }

    #[test]
    fn exec_bit_changes_the_address() {
        assert_ne!(
            file(b"a", false).entry_digest("x"),
            file(b"a", true).entry_digest("x")
        );
    }

    #[test]
    fn name_changes_the_address() {
        assert_ne!(
            file(b"a", false).entry_digest("x"),
            file(b"a", false).entry_digest("y")
        );
    }

    #[test]
    fn plain_file_address_matches_the_spec() {
        let mut pre = Vec::new();
        pre.extend_from_slice(ENTRY_PREFIX);
        pre.extend_from_slice(&1u64.to_le_bytes());
        pre.extend_from_slice(b"n");
        pre.extend_from_slice(b"f");
        pre.extend_from_slice(&3u64.to_le_bytes());
        pre.extend_from_slice(blake3::hash(b"abc").as_bytes());
        assert_eq!(file(b"abc", false).entry_digest("n"), Digest::of(&pre));
    }

    #[test]
    fn empty_dir_differs_from_empty_file_and_link() {
        let d = Node::empty_dir().entry_digest("e");
        assert_ne!(d, file(b"", false).entry_digest("e"));
        assert_ne!(d, Node::Symlink { target: vec![] }.entry_digest("e"));
    }

    #[test]
    fn sizes_and_counts() {
        let mut c = BTreeMap::new();
        c.insert(b"a".to_vec(), file(b"12345", false));
        c.insert(
            b"l".to_vec(),
            Node::Symlink {
                target: b"a".to_vec(),
            },
        );
        let t = Node::Directory(c);
        assert_eq!(t.content_size(), 5);
        assert_eq!(t.count(), 3);
    }
}
