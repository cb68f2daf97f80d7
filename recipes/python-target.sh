#!/usr/bin/env bash
# Describe CPython for a target platform, so that a host Python can cross-compile extension
# modules for it: the target's headers (its own pyconfig.h) and its _sysconfigdata module.
# No interpreter is built: only CPython's configure runs, for the target.
#
# Contract: $DOCKERBUILD_INPUTS (default /inputs) holds `python`, the CPython source tarball
# (.tar.gz or .tar.xz), and `host-python`, a directory: the output of python.sh for the
# same CPython version (configure insists on it). The current directory is writable
# scratch; the result goes to $DOCKERBUILD_OUT (default /out):
#   include/python3.X/                          the headers, with the target's pyconfig.h
#   lib/python3.X/_sysconfigdata__linux_T.py    the target's sysconfig variables (T =
#                                               its multiarch triple, e.g. aarch64-linux-gnu)
# The toolchain environment provides CROSS_TRIPLE and CC (the cross compiler). No network.
# Works under `bash -euo pipefail FILE` and `bash -c`.
#
# Use (e.g. with setuptools), T being the entry's lib/python3.X:
#   _PYTHON_HOST_PLATFORM=linux-aarch64 \
#   _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__linux_aarch64-linux-gnu \
#   PYTHONPATH=T host-python/bin/python3 setup.py build_ext
# sysconfig then reports the target's CC, flags, EXT_SUFFIX and INCLUDEPY; the paths under
# the configured prefix follow the entry wherever it is mounted.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
src=$scratch/python-src
stage=$scratch/stage      # DESTDIR for `make inclinstall`
prefix=/opt/dockerbuild/python-target
host_python=$inputs/host-python/bin/python3

: "${CROSS_TRIPLE:?CROSS_TRIPLE must be set by the toolchain}"
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export PYTHONHASHSEED=0

quiet() { # log cmd...: run cmd with its output in log, shown (the end) only on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
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

rm -rf "$src" && mkdir -p "$src"
tar -xf "$inputs/python" -C "$src" --strip-components=1 --no-same-owner --no-same-permissions
cd "$src"
ver=$(sed -n "s/^PACKAGE_VERSION='\([0-9]*\.[0-9]*\)'$/\1/p" configure)

# Cross-compiling, configure cannot run test programs: answer as a native glibc Linux build
# finds (configure would otherwise guess the pessimistic way, or stop for getaddrinfo);
# ac_cv_aligned_required keeps its cautious cross default (armv6 and mips care). The
# optional-module probes do not matter, as no module is built.
quiet "$scratch/configure.log" ./configure --prefix="$prefix" \
  --build=x86_64-linux-gnu --host="$CROSS_TRIPLE" --with-build-python="$host_python" \
  --enable-ipv6 --without-ensurepip --disable-test-modules \
  ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no \
  ac_cv_broken_sem_getvalue=no ac_cv_working_tzset=yes ac_cv_pthread_system_supported=yes \
  ac_cv_computed_gotos=yes

# pybuilddir.txt runs the host Python on the target's Makefile and pyconfig.h to write the
# sysconfig data; inclinstall copies the headers. Nothing is compiled.
quiet "$scratch/make.log" make pybuilddir.txt
quiet "$scratch/make.log" make inclinstall DESTDIR="$stage"

mkdir -p "$out/lib/python$ver"
mv "$stage$prefix/include" "$out/"
cp "$(cat pybuilddir.txt)"/_sysconfigdata_*.py "$out/lib/python$ver/"
cd "$out"
relocate_sysconfigdata "lib/python$ver/_sysconfigdata_"*.py
"$host_python" -B -E -s -m compileall -q -f --invalidation-mode unchecked-hash \
  -d "$prefix/lib/python$ver" "lib/python$ver" >/dev/null

# Check: the host Python sees the target through it.
name=$(basename "lib/python$ver/_sysconfigdata_"*.py .py)
_PYTHON_SYSCONFIGDATA_NAME=$name PYTHONPATH=$out/lib/python$ver "$host_python" -s -c "
import sysconfig
cc, suffix, inc = (sysconfig.get_config_var(k) for k in ('CC', 'EXT_SUFFIX', 'INCLUDEPY'))
assert '$CROSS_TRIPLE' in cc and '$CROSS_TRIPLE' in suffix, (cc, suffix)
assert inc == '$out/include/python$ver', inc
print('$name:', cc, suffix)
"
