#!/usr/bin/env python3
"""Independent implementation of the dockerbuild entry address (see README.md here).

  python3 b3tree.py NAME PATH               print the address of the entry NAME whose root
                                            is PATH (a top-level symlink is followed)
  python3 b3tree.py --vectors FILE DIR      write every vector of FILE to DIR/<id>, hash it
                                            back from disk, exit 1 if any digest differs
Needs the `blake3` package (pip install blake3).
"""
import json, os, re, shutil, stat, sys

try:
    import blake3
except ImportError:
    sys.exit("b3tree: the `blake3` package is missing (pip install blake3)")

ENTRY_PREFIX = b"dockerbuild-entry-v1\0"
NAME_RE = re.compile(rb"[A-Za-z0-9+\-._?=]{1,200}")

def die(msg): sys.exit(f"b3tree: {msg}")
def show(path): return repr(os.fsdecode(path))
def u64(n): return n.to_bytes(8, "little")
def lp(b): return u64(len(b)) + b  # `bytes(b)` in the spec

# A node: ("file" | "exec", size, blake3(contents)) | ("symlink", target) | ("dir", {name: node})
def encode(node):
    kind = node[0]
    if kind in ("file", "exec"):
        return (b"f" if kind == "file" else b"x") + u64(node[1]) + node[2]
    if kind == "symlink":
        return b"l" + lp(node[1])
    children = node[1]
    h = blake3.blake3(u64(len(children)))
    for name in sorted(children):  # bytes sort bytewise
        h.update(lp(name) + encode(children[name]))
    return b"d" + h.digest()

def check_name(name):
    if not NAME_RE.fullmatch(name) or name.startswith(b"."):
        die(f"invalid entry name {show(name)}: 1-200 bytes of A-Z a-z 0-9 + - . _ ? =, "
            "not starting with `.`")
    return name

def address(name, root):
    return "blake3:" + blake3.blake3(ENTRY_PREFIX + lp(name) + encode(root)).hexdigest()

def walk(path, top=False):
    """The node for the tree at `path` (bytes); only the top-level symlink is followed."""
    st = os.stat(path) if top else os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        fd = os.open(path, os.O_RDONLY | (0 if top else os.O_NOFOLLOW))
        h, n = blake3.blake3(), 0
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        if n != st.st_size:
            die(f"{show(path)} changed while it was being hashed")
        return ("exec" if mode & 0o111 else "file", n, h.digest())
    if stat.S_ISLNK(mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISDIR(mode):
        return ("dir", {c: walk(os.path.join(path, c)) for c in os.listdir(path)})
    what = ("a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device node" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
            else "of an unknown type")
    die(f"cannot hash {show(path)}: it is {what}; an entry holds only regular files, "
        "symlinks and directories")

def check_component(name):
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        die(f"vector: child name {name!r} is not allowed")
    return name

def contents(v): return bytes.fromhex(v["contents_hex"]) * v.get("repeat", 1)

def from_json(v):
    """The node a vector's JSON tree describes, without touching the disk."""
    t = v["type"]
    if t in ("file", "exec"):
        data = contents(v)
        return (t, len(data), blake3.blake3(data).digest())
    if t == "symlink":
        return ("symlink", bytes.fromhex(v["target_hex"]))
    if t == "dir":
        kids = {}
        for c in v["children"]:
            name = check_component(bytes.fromhex(c["name_hex"]))
            if name in kids:
                die(f"vector: child name {name!r} appears twice")
            kids[name] = from_json(c["node"])
        return ("dir", kids)
    die(f"vector: unknown node type {t!r}")

def materialize(v, path):
    t = v["type"]
    if t in ("file", "exec"):
        with open(path, "xb") as f:
            f.write(contents(v))
        os.chmod(path, 0o755 if t == "exec" else 0o644)
    elif t == "symlink":
        os.symlink(bytes.fromhex(v["target_hex"]), path)
    else:
        os.mkdir(path)
        for c in v["children"]:
            materialize(c["node"], os.path.join(path, check_component(bytes.fromhex(c["name_hex"]))))

def run_vectors(vfile, outdir):
    with open(vfile) as f:
        vectors = json.load(f)["vectors"]
    os.makedirs(outdir, exist_ok=True)
    failed = 0
    for v in vectors:
        root = os.path.join(os.fsencode(outdir), check_component(v["id"].encode()))
        if os.path.isdir(root) and not os.path.islink(root):
            shutil.rmtree(root)
        elif os.path.lexists(root):
            os.unlink(root)
        name = check_name(v["name"].encode())
        in_memory = address(name, from_json(v["tree"]))
        materialize(v["tree"], root)
        on_disk = address(name, walk(root, top=True))
        print(v["id"], on_disk)
        if on_disk != v["digest"] or in_memory != v["digest"]:
            print(f"MISMATCH {v['id']}: expected {v['digest']}, from disk {on_disk}, "
                  f"from JSON {in_memory}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(vectors)} vectors differ", file=sys.stderr)
    return 1 if failed else 0

def main(argv):
    if len(argv) == 4 and argv[1] == "--vectors":
        return run_vectors(argv[2], argv[3])
    if len(argv) == 3 and not argv[1].startswith("-"):
        name, path = check_name(os.fsencode(argv[1])), os.fsencode(argv[2])
        try:
            print(address(name, walk(path, top=True)))
        except OSError as e:
            die(f"cannot hash {show(e.filename or path)}: {e.strerror}")
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2

if __name__ == "__main__":
    sys.exit(main(sys.argv))
