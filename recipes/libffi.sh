#!/usr/bin/env bash
# Cross-compile libffi as a static, position-independent library, to be linked into
# extension modules (cffi's _cffi_backend) so that wheels need no libffi.so at run time.
#
# Contract: $DOCKERBUILD_INPUTS/libffi (default /inputs/libffi) is libffi's source tarball.
# The current directory is writable scratch. The result goes to $DOCKERBUILD_OUT (default
# /out): include/ffi.h, include/ffitarget.h, lib/libffi.a and lib/pkgconfig/libffi.pc,
# whose prefix is relative to the .pc file, so the tree works wherever it is mounted.
# The toolchain environment provides CROSS_TRIPLE and CC. No network.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
prefix=/opt/dockerbuild/libffi
: "${CROSS_TRIPLE:?CROSS_TRIPLE must be set by the toolchain}"
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

quiet() { # log cmd...: run cmd with its output in log, shown (the end) only on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
}

# zig's clang is stricter than gcc about libffi 3.4.4's static trampolines (tramp.c calls
# a function closures.c declares only for some configurations): leave them out there.
extra=()
if [ -n "${ZIG_TARGET:-}" ]; then extra+=(--disable-exec-static-tramp); fi

rm -rf src && mkdir src
tar -xf "$inputs/libffi" -C src --strip-components=1 --no-same-owner --no-same-permissions
cd src
quiet "$scratch/configure.log" ./configure --build=x86_64-linux-gnu --host="$CROSS_TRIPLE" \
  --prefix="$prefix" --disable-shared --enable-static --with-pic --disable-docs \
  --disable-multi-os-directory "${extra[@]}" CFLAGS="-O2 -ffile-prefix-map=$scratch=."
quiet "$scratch/make.log" make -j"$(nproc)"
quiet "$scratch/install.log" make install DESTDIR="$scratch/stage"

mkdir -p "$out/lib/pkgconfig"
cp -r "$scratch/stage$prefix/include" "$out/"
cp "$scratch/stage$prefix/lib/libffi.a" "$out/lib/"
sed "s|^prefix=.*|prefix=\${pcfiledir}/../..|" "$scratch/stage$prefix/lib/pkgconfig/libffi.pc" \
  >"$out/lib/pkgconfig/libffi.pc"
test -f "$out/include/ffi.h"
