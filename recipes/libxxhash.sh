#!/usr/bin/env bash
# Cross-compile xxHash as a static, position-independent library, to be linked into
# extension modules (python-xxhash's _xxhash) so that wheels need no libxxhash.so.
#
# Contract: $DOCKERBUILD_INPUTS/xxhash (default /inputs/xxhash) is xxHash's source
# tarball. The current directory is writable scratch. The result goes to $DOCKERBUILD_OUT
# (default /out): include/xxhash.h, include/xxh3.h, lib/libxxhash.a and
# lib/pkgconfig/libxxhash.pc, whose prefix is relative to the .pc file. The toolchain
# environment provides CC and AR. No network.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

rm -rf src && mkdir src
tar -xf "$inputs/xxhash" -C src --strip-components=1 --no-same-owner --no-same-permissions
cd src
version=$(sed -n 's/^#define XXH_VERSION_\(MAJOR\|MINOR\|RELEASE\) *\([0-9]*\)$/\2/p' xxhash.h | paste -sd.)
"${CC:-cc}" -O2 -fPIC -ffile-prefix-map="$scratch"=. -c xxhash.c -o xxhash.o

mkdir -p "$out/include" "$out/lib/pkgconfig"
"${AR:-ar}" rcD "$out/lib/libxxhash.a" xxhash.o
cp xxhash.h xxh3.h "$out/include/"
cat >"$out/lib/pkgconfig/libxxhash.pc" <<PC
prefix=\${pcfiledir}/../..
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: xxhash
Description: extremely fast hash algorithm
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lxxhash
PC
