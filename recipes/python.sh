#!/usr/bin/env bash
# Build a self-contained, relocatable host CPython (3.11 or 3.13: whichever tarball is given)
# for x86-64 Linux, to run build tools and setuptools/pip in dockerbuild toolchains.
#
# Contract: the source tarballs are plain files in $DOCKERBUILD_INPUTS (default /inputs):
# `python` (a CPython .orig tarball, .tar.gz or .tar.xz), `openssl` (3.0.x), `libffi` and
# `zlib`. OpenSSL, libffi and zlib are built from them as static, position-independent
# archives and linked into the extension modules (their symbols hidden), so the result needs
# only glibc at run time. The current directory is writable scratch; the interpreter is
# installed to $DOCKERBUILD_OUT (default /out): bin/python3 (a relative symlink to
# bin/python3.X), lib/python3.X/, include/python3.X/. No network. Works under
# `bash -euo pipefail FILE` and `bash -c`.
#
# Relocatable: configured for a fixed prefix (/opt/dockerbuild/python), but CPython finds its
# real prefix from the executable's location (the lib/python3.X/os.py landmark), so the tree
# works read-only at any path. The sysconfig data (INCLUDEPY, LIBDIR, ... which build tools
# read) is made to follow the tree too, and scripts in bin/ get a relative launcher instead
# of an absolute #! line.
#
# Deterministic: no PGO/LTO, no test suite, binaries stripped; stdlib .pyc files are compiled
# once, in one process, as unchecked-hash pycs (no source mtimes inside; never re-validated,
# which is right for an immutable store entry), and only for optimization level 0 (-O/-OO
# would compile in memory, as a read-only tree cannot be written to).
#
# Not built, for lack of libraries (by design): _sqlite3, _tkinter, _lzma, _bz2, readline,
# _curses, _dbm/_gdbm, _uuid (the uuid module still works without it); in 3.11, _crypt and
# nis are turned off, as they would need libcrypt.so.1, libnsl and libtirpc beyond glibc.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
deps=$scratch/deps        # static OpenSSL, libffi and zlib
stage=$scratch/stage      # DESTDIR for `make install`
prefix=/opt/dockerbuild/python
jobs=$(nproc)

export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
# The Pythons run during the build (set and dict orders in generated files).
export PYTHONHASHSEED=0
# Only our own .pc files: never the toolchain's libz.so or libtirpc.
export PKG_CONFIG_LIBDIR=$deps/lib/pkgconfig PKG_CONFIG_PATH=
cc=${CC:-gcc}
strip=${STRIP:-strip}
depflags="-O2 -fPIC -ffile-prefix-map=$scratch=."

unpack() { # archive dir
  rm -rf "$2" && mkdir -p "$2"
  tar -xf "$1" -C "$2" --strip-components=1 --no-same-owner --no-same-permissions
}
strip_elf() { # dir...: strip every ELF executable and shared object below them
  find "$@" -type f \( -name '*.so' -o -perm -u+x \) -print0 | sort -z |
    while IFS= read -r -d '' f; do
      case $(file -b "$f") in ELF*) chmod u+w "$f" && "$strip" --strip-unneeded "$f" ;; esac
    done
}
relocate_sysconfigdata() { # file: let its paths under $prefix follow the tree
  cat >>"$1" <<EOF

# Added by dockerbuild: the tree is relocatable, so paths under its configured prefix
# follow this file (in <prefix>/lib/python3.X/) to wherever the tree is.
def _relocate(old='$prefix'):
    from os.path import abspath, dirname
    new = dirname(dirname(dirname(abspath(__file__))))
    def fix(value):
        head, *tail = value.split(old)
        return head + ''.join(
            (old if rest and (rest[0].isalnum() or rest[0] in '_.+-') else new) + rest
            for rest in tail)
    for key, value in build_time_vars.items():
        if isinstance(value, str) and old in value:
            build_time_vars[key] = fix(value)
_relocate()
del _relocate
EOF
}
step() { echo "== [${SECONDS}s] $*"; }
quiet() { # log cmd...: run cmd with its output in log, shown (the end) only on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
}

step "zlib (static)"
unpack "$inputs/zlib" "$scratch/zlib-src"
(cd "$scratch/zlib-src" &&
  CC=$cc CFLAGS=$depflags quiet ../zlib.log ./configure --static --prefix="$deps" &&
  quiet ../zlib.log make -j"$jobs" install)

# --disable-multi-os-directory keeps it in lib/, not lib64/.
step "libffi (static)"
unpack "$inputs/libffi" "$scratch/libffi-src"
(cd "$scratch/libffi-src" &&
  CC=$cc CFLAGS=$depflags quiet ../libffi.log ./configure --prefix="$deps" \
    --disable-shared --enable-static --with-pic --disable-docs --disable-multi-os-directory &&
  quiet ../libffi.log make -j"$jobs" install)

# Libraries only. no-module builds the legacy provider into libcrypto. OPENSSLDIR=/etc/ssl:
# the host's CA certificates (/etc/ssl/certs) and openssl.cnf are found where Debian and
# Ubuntu keep them; SSL_CERT_FILE and SSL_CERT_DIR override.
step "OpenSSL (static)"
unpack "$inputs/openssl" "$scratch/openssl-src"
# shellcheck disable=SC2086 # $depflags is several flags
(cd "$scratch/openssl-src" &&
  quiet ../openssl.log ./Configure linux-x86_64 no-shared no-module no-tests \
    --prefix="$deps" --libdir=lib --openssldir=/etc/ssl CC="$cc" $depflags &&
  quiet ../openssl.log make -j"$jobs" build_libs &&
  quiet ../openssl.log make install_dev)

step "CPython"
src=$scratch/python-src
unpack "$inputs/python" "$src"
cd "$src"
# "3.11" or "3.13", from configure's PACKAGE_VERSION.
ver=$(sed -n "s/^PACKAGE_VERSION='\([0-9]*\.[0-9]*\)'$/\1/p" configure)
case $ver in 3.1[1-9]) ;; *) echo "unsupported CPython version '$ver'" >&2; exit 1 ;; esac

# -l:libX.a plus --exclude-libs: link the archives (never the toolchain's libz.so) and keep
# their symbols out of the modules' dynamic symbol tables, so that a module cannot clash
# with another copy (say a wheel's own OpenSSL) in the same process;
# PY_UNSUPPORTED_OPENSSL_BUILD=static does the same for OpenSSL. 3.11 still builds _ctypes
# with setup.py, which finds libffi through LIBFFI_INCLUDEDIR (pkg-config) and the -L of
# LDFLAGS_NODIST. *_NODIST flags are not handed on to extensions built with this Python.
static() { echo "-L$deps/lib -l:lib$1.a -Wl,--exclude-libs,lib$1.a"; }
quiet "$scratch/python-configure.log" ./configure --prefix="$prefix" \
  --without-ensurepip --disable-test-modules --without-static-libpython \
  --with-openssl="$deps" --with-openssl-rpath=no PY_UNSUPPORTED_OPENSSL_BUILD=static \
  ZLIB_CFLAGS="-I$deps/include" ZLIB_LIBS="$(static z)" \
  LIBFFI_CFLAGS="-I$deps/include" LIBFFI_LIBS="$(static ffi)" \
  CFLAGS_NODIST="-ffile-prefix-map=$scratch=." \
  LDFLAGS_NODIST="-L$deps/lib -Wl,--exclude-libs,libffi.a" \
  py_cv_module__crypt=n/a py_cv_module_nis=n/a
quiet "$scratch/python-make.log" make -j"$jobs"
# What could not be built (missing libraries), failed, or failed to import (3.11 and 3.13
# word this differently).
sed -n '/necessary bits to build these optional modules were not found/,/^$/p
        /Following modules built successfully but were removed/,/^$/p
        /Failed to build these modules/,/^$/p
        /modules.*missing/,/^$/p' "$scratch/python-make.log"

step "install"
quiet "$scratch/python-install.log" make install DESTDIR="$stage"

# Move the tree into $out; man pages are not needed.
mv "$stage$prefix"/* "$out"/
cd "$out"
rm -rf share
find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Debug info is most of the binaries' size.
strip_elf bin lib

# Relative launchers instead of "#!/opt/dockerbuild/python/bin/python3.X": sh runs the first
# two lines and execs the python3.X next to the script, for which they are a string.
for f in bin/*; do
  [ -f "$f" ] && [ ! -L "$f" ] && head -1 "$f" | grep -q "^#!$prefix/bin/python" || continue
  { echo '#!/bin/sh'
    echo "'''exec' \"\$(dirname -- \"\$(readlink -f -- \"\$0\")\")/python$ver\" \"\$0\" \"\$@\""
    echo "' '''"
    tail -n +2 "$f"; } >"$f.new"
  mv "$f.new" "$f" && chmod 0755 "$f"
done
# sysconfig's paths (INCLUDEPY, LIBDIR, ...: what build tools ask for) follow the tree.
relocate_sysconfigdata "lib/python$ver/_sysconfigdata_"*.py
# pkg-config: the prefix relative to the .pc file.
sed -i 's|^prefix=.*|prefix=${pcfiledir}/../..|' lib/pkgconfig/python3*.pc

# Compile the stdlib in one process (deterministic marshal output). -B: the modules
# compileall itself imports must not get timestamp pycs on import (-f: nor keep them).
step "compile the stdlib"
"bin/python$ver" -B -E -s -m compileall -q -f -j1 --invalidation-mode unchecked-hash \
  -o 0 -d "$prefix/lib/python$ver" -x 'bad_coding|badsyntax|lib2to3/tests/data' \
  "lib/python$ver" >/dev/null

# The new tree on its own (no PYTHONHOME, no system Python).
step "smoke test"
"bin/python3" -B -E -c "
import ssl, ctypes, zlib, hashlib, json, venv, sys
assert ssl.OPENSSL_VERSION.startswith('OpenSSL 3.0.'), ssl.OPENSSL_VERSION
assert sys.prefix == '$out', sys.prefix
import sysconfig
assert sysconfig.get_config_var('INCLUDEPY') == '$out/include/python$ver'
print(sys.version.split()[0], ssl.OPENSSL_VERSION, 'zlib', zlib.ZLIB_RUNTIME_VERSION)
"
test "$(readlink bin/python3)" = "python$ver"
