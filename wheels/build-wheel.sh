#!/usr/bin/env bash
# Build one wheel from an sdist, hermetically, cross-compiling its extension modules.
# dockerbuild runs this for every `source` wheel of the matrix (see wheels/README.md).
#
# Contract (everything under $DOCKERBUILD_INPUTS, default /inputs, read-only):
#   sdist           the sdist (.tar.gz, .tar.bz2, .tar.xz or .zip)
#   python          the host CPython (recipes/python.sh): it runs the build backend
#   target          for a cross build, the target's headers and _sysconfigdata
#                   (recipes/python-target.sh), so that sysconfig describes the target
#   host-site       the host build dependencies, unpacked and byte-compiled (site/): what
#                   the backend imports. This script makes it too: with WHEEL_MAKE_HOST_SITE
#                   set, it unpacks the inputs host-NAME (wheel files, or directories of
#                   .whl files) into $DOCKERBUILD_OUT/site and byte-compiles them.
#   target-NAME     target wheels, unpacked into $DOCKERBUILD_TARGET_SITE
#   lib-NAME        native libraries (include/, lib/, lib/pkgconfig/) for the target
#   patch-N         patches, applied in order with `patch -p1`
# and the environment: WHEEL_DIST, WHEEL_VERSION, WHEEL_PLATFORM_TAGS (dot-separated, or
# `any`), WHEEL_CROSS (non-empty for a cross build), WHEEL_HOST_PLATFORM (sysconfig's name
# of the target, e.g. linux-aarch64), WHEEL_EXTENSIONS (modules that must be compiled),
# WHEEL_ABI3 (the Python tag of a stable-ABI wheel, e.g. cp311),
# plus the toolchain's CC, CXX and CROSS_TRIPLE. No network: build dependencies are only
# what is mounted. The wheel goes to $DOCKERBUILD_OUT (default /out), retagged for the
# platform and repacked deterministically (sorted entries, SOURCE_DATE_EPOCH times).
#
# Cross-compiling: the host Python runs setuptools (or the sdist's PEP 517 backend) with
# _PYTHON_SYSCONFIGDATA_NAME naming the target's sysconfig data and
# _PYTHON_HOST_PLATFORM the target, so sysconfig reports the target's compiler, flags,
# include directory and EXT_SUFFIX (the original dockerbuild's approach).
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
py=$inputs/python/bin/python3
export LC_ALL=C.UTF-8 TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1

# Unpack wheels (files or directories of them) into a site directory; a wheel's
# .data/purelib and .data/platlib go to the top, like an install.
unpack_wheels() { # site wheel-or-dir...
  "$py" -I - "$@" <<'PY'
import os, sys, zipfile
site, paths = sys.argv[1], sys.argv[2:]
os.makedirs(site, exist_ok=True)
def wheels(p):
    if os.path.isdir(p):
        return sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".whl"))
    return [p]
for p in paths:
    for w in wheels(p):
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if ".." in parts or info.filename.startswith("/"):
                    sys.exit(f"build-wheel: {w} has a hostile member {info.filename!r}")
                if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
                    parts = parts[2:]
                elif parts[0].endswith(".data"):
                    continue
                dest = os.path.join(site, *parts)
                if info.is_dir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with z.open(info) as src, open(dest, "wb") as dst:
                    dst.write(src.read())
PY
}

shopt -s nullglob
if [ -n "${WHEEL_MAKE_HOST_SITE:-}" ]; then
  # Hash-based .pyc files that are never checked against their source, so they stay
  # valid read-only and whatever the mount's times; named as the wheel builds see them.
  host=("$inputs"/host-*)
  unpack_wheels "$out/site" "${host[@]}"
  "$py" -I -m compileall -q --invalidation-mode unchecked-hash \
    -s "$out/site" -p "$inputs/host-site/site" "$out/site" >/dev/null
  echo "build-wheel: host site of ${#host[@]} wheels"
  exit 0
fi
: "${WHEEL_DIST:?}" "${WHEEL_VERSION:?}" "${WHEEL_PLATFORM_TAGS:?}"

host_site=$inputs/host-site/site
target_site=$scratch/target-site
target_wheels=("$inputs"/target-*)
if [ ${#target_wheels[@]} -gt 0 ]; then
  unpack_wheels "$target_site" "${target_wheels[@]}"
fi
export DOCKERBUILD_TARGET_SITE=$target_site

# The sdist: exactly one top-level directory.
mkdir -p "$scratch/src"
case "$(head -c 4 "$inputs/sdist" | od -An -tx1 | tr -d ' ')" in
  504b0304) "$py" -I -m zipfile -e "$inputs/sdist" "$scratch/src" ;;
  *) tar -xf "$inputs/sdist" -C "$scratch/src" --no-same-owner --no-same-permissions ;;
esac
tops=("$scratch"/src/*)
if [ ${#tops[@]} -ne 1 ] || [ ! -d "${tops[0]}" ]; then
  echo "build-wheel: the sdist must hold exactly one top-level directory" >&2
  exit 1
fi
cd "${tops[0]}"
for p in "$inputs"/patch-*; do
  echo "build-wheel: applying $(basename "$p")"
  patch -p1 --no-backup-if-mismatch <"$p"
done

# Native libraries for the target.
for lib in "$inputs"/lib-*; do
  export CFLAGS="${CFLAGS:-} -I$lib/include" CXXFLAGS="${CXXFLAGS:-} -I$lib/include"
  export LDFLAGS="${LDFLAGS:-} -L$lib/lib"
  export PKG_CONFIG_PATH="$lib/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
done
# No build path in what is compiled.
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$scratch=/build"
export CXXFLAGS="${CXXFLAGS:-} -ffile-prefix-map=$scratch=/build"

pythonpath=$host_site
if [ -n "${WHEEL_CROSS:-}" ]; then
  tlib=("$inputs"/target/lib/python3.*)
  data=("${tlib[0]}"/_sysconfigdata_*.py)
  [ ${#data[@]} -eq 1 ] || { echo "build-wheel: the target entry needs one _sysconfigdata" >&2; exit 1; }
  export _PYTHON_HOST_PLATFORM=$WHEEL_HOST_PLATFORM
  export _PYTHON_SYSCONFIGDATA_NAME=$(basename "${data[0]}" .py)
  pythonpath=$host_site:${tlib[0]}
else
  # The host Python's own sysconfig, with the toolchain's compiler (zig's for manylinux).
  export LDSHARED="${CC:-cc} -shared" LDCXXSHARED="${CXX:-c++} -shared"
fi

mkdir -p "$scratch/dist"
echo "build-wheel: building $WHEEL_DIST $WHEEL_VERSION for $WHEEL_PLATFORM_TAGS"
PYTHONPATH=$pythonpath "$py" -s - "$scratch/dist" <<'PY'
# A PEP 517 frontend in a few lines: the sdist's backend (setuptools' legacy backend when
# pyproject.toml names none), with the build dependencies already on sys.path.
import importlib, os, sys
try:
    import tomllib
    with open("pyproject.toml", "rb") as f:
        system = tomllib.load(f).get("build-system", {})
except FileNotFoundError:
    system = {}
backend = system.get("build-backend", "setuptools.build_meta:__legacy__")
sys.path[:0] = [os.path.abspath(p) for p in system.get("backend-path", [])]
if backend.startswith("setuptools.build_meta"):
    sys.path.insert(0, os.getcwd())
module, _, attr = backend.partition(":")
hooks = importlib.import_module(module)

# Compile the sources of each extension in parallel (extensions stay one after another, so
# two that share a source never race for its object file); link order is unchanged.
# C++ sources are compiled with CXX: setuptools before 72 gives them to CC, which gcc's
# driver copes with but zig's `cc` does not (it finds no C++ headers).
try:
    from setuptools._distutils import ccompiler
except ImportError:
    ccompiler = None
if ccompiler is not None:
    import copy
    from concurrent.futures import ThreadPoolExecutor

    def for_cxx(self):
        if getattr(self, "compiler_so_cxx", None) or not getattr(self, "compiler_cxx", None):
            return self  # this setuptools compiles C++ with CXX itself (or knows no CXX)
        cc = getattr(self, "linker_exe", None) or self.compiler_so[:1]
        n = len(cc) if self.compiler_so[:len(cc)] == cc else 1
        cxx = copy.copy(self)
        cxx.compiler_so = list(self.compiler_cxx) + list(self.compiler_so[n:])
        return cxx

    def compile_parallel(self, sources, output_dir=None, macros=None, include_dirs=None,
                         debug=0, extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)
        cxx = for_cxx(self) if hasattr(self, "compiler_so") else self

        def one(obj):
            if obj in build:
                src, ext = build[obj]
                compiler = cxx if ext in (".cpp", ".cc", ".cxx", ".c++", ".C") else self
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(one, objects))
        return objects

    ccompiler.CCompiler.compile = compile_parallel
for a in filter(None, attr.split(".")):
    hooks = getattr(hooks, a)
print("build-wheel: wrote", hooks.build_wheel(sys.argv[1]))
PY

built=("$scratch"/dist/*.whl)
[ ${#built[@]} -eq 1 ] || { echo "build-wheel: expected one wheel, got ${#built[@]}" >&2; exit 1; }

# What the target's compiler makes (ELF class and machine), to check every extension.
printf 'int x;\n' >"$scratch/probe.c"
"${CC:-cc}" -c "$scratch/probe.c" -o "$scratch/probe.o"

"$py" -I - "${built[0]}" "$out" "$scratch/probe.o" <<'PY'
# Retag for the platform and repack deterministically; check the extensions.
import base64, hashlib, os, sys, zipfile
src, out, probe = sys.argv[1:4]
dist, version = os.environ["WHEEL_DIST"], os.environ["WHEEL_VERSION"]
platform = os.environ["WHEEL_PLATFORM_TAGS"]
epoch = max(int(os.environ["SOURCE_DATE_EPOCH"]), 315532800)
import time
stamp = time.gmtime(epoch)[:6]

def elf(head):
    return (head[4], int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))

with open(probe, "rb") as f:
    want = elf(f.read(20))
with zipfile.ZipFile(src) as z:
    infos = [i for i in z.infolist() if not i.is_dir()]
    files = {i.filename: (z.read(i), (i.external_attr >> 16) & 0o777) for i in infos}
info_dir = next(n.split("/")[0] for n in files if n.split("/")[0].endswith(".dist-info") and n.endswith("/WHEEL"))
wheel_meta = files[f"{info_dir}/WHEEL"][0].decode()
tags = [l.split(":", 1)[1].strip() for l in wheel_meta.splitlines() if l.startswith("Tag:")]
pys, abi, _ = tags[0].split("-")
if platform != "any":
    lines = [l for l in wheel_meta.splitlines() if not l.startswith("Tag:")]
    pyset = sorted({t.split("-")[0] for t in tags})
    lines += [f"Tag: {p}-{abi}-{plat}" for p in pyset for plat in platform.split(".")]
    files[f"{info_dir}/WHEEL"] = ("\n".join(lines) + "\n").encode(), files[f"{info_dir}/WHEEL"][1]
    pys = ".".join(pyset)
if os.environ.get("WHEEL_ABI3"):
    # The spec says the stable ABI: every extension must be built for it (`.abi3.so`),
    # and the wheel is tagged for the Python it was built with and every later one.
    for n in files:
        if n.endswith(".so") and not n.endswith(".abi3.so"):
            sys.exit(f"build-wheel: the spec says abi3, but {n} is not built for the stable ABI")
    pys, abi = os.environ["WHEEL_ABI3"], "abi3"
    wheel_meta = files[f"{info_dir}/WHEEL"][0].decode()
    lines = [l for l in wheel_meta.splitlines() if not l.startswith("Tag:")]
    lines += [f"Tag: {pys}-abi3-{plat}" for plat in platform.split(".")]
    files[f"{info_dir}/WHEEL"] = ("\n".join(lines) + "\n").encode(), files[f"{info_dir}/WHEEL"][1]
if platform == "any" and abi != "none":
    sys.exit(f"build-wheel: a universal wheel came out with ABI tag {abi}")

extensions = [n for n in files if n.endswith(".so") or ".so." in n]
for name in extensions:
    data = files[name][0]
    got = elf(data[:20]) if data[:4] == b"\x7fELF" else "not ELF"
    if got != want:
        sys.exit(f"build-wheel: {name} is not built for the target ({got}, want {want})")
for module in os.environ.get("WHEEL_EXTENSIONS", "").split():
    stem = module.replace(".", "/") + "."
    if not any(n.startswith(stem) for n in extensions):
        sys.exit(f"build-wheel: the wheel lacks the compiled extension {module} "
                 "(the build fell back to pure Python? see the log above)")

record = f"{info_dir}/RECORD"
files.pop(record, None)
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
rows = [f"{n},{digest(d)},{len(d)}" for n, (d, _) in sorted(files.items())]
files[record] = ("\n".join(rows + [f"{record},,"]) + "\n").encode(), 0o644
# dist-info last, as PEP 427 recommends; otherwise sorted.
order = sorted(files, key=lambda n: (n.startswith(info_dir + "/"), n))
name = f"{dist}-{version}-{pys}-{abi}-{platform}.whl"
tmp = os.path.join(out, name + ".part")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for n in order:
        data, mode = files[n]
        zi = zipfile.ZipInfo(n, stamp)
        zi.external_attr = ((0o755 if mode & 0o111 else 0o644) | 0o100000) << 16
        zi.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(zi, data)
os.rename(tmp, os.path.join(out, name))
print("build-wheel:", name, f"({len(extensions)} extension modules)")
PY
