#!/usr/bin/env bash
# Cross-compile OpenSSL (1.1.1 or 3.x) as static, position-independent libraries, to be
# linked into extension modules so that wheels need no libssl.so or libcrypto.so.
#
# Contract: $DOCKERBUILD_INPUTS/openssl (default /inputs/openssl) is OpenSSL's source
# tarball. The current directory is writable scratch. The result goes to $DOCKERBUILD_OUT
# (default /out): include/openssl/, lib/libssl.a, lib/libcrypto.a and lib/pkgconfig/*.pc
# (prefix relative to the .pc file). The toolchain environment provides CROSS_TRIPLE, CC,
# AR and RANLIB; the image's perl runs Configure. No network.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
prefix=/opt/dockerbuild/openssl
: "${CROSS_TRIPLE:?CROSS_TRIPLE must be set by the toolchain}"
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

quiet() { # log cmd...: run cmd with its output in log, shown (the end) only on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
}

# OpenSSL's own name for each target.
extra=()
case "$CROSS_TRIPLE" in
  x86_64-linux-gnu) target=linux-x86_64 ;;
  aarch64-linux-gnu) target=linux-aarch64 ;;
  arm-linux-gnueabihf) target=linux-armv4 ;;
  i686-linux-gnu) target=linux-x86 ;;
  mipsel-linux-gnu) target=linux-mips32 ;;
  mips64el-linux-gnuabi64) target=linux64-mips64 ;;
  powerpc64le-linux-gnu) target=linux-ppc64le ;;
  riscv64-linux-gnu) target=linux-generic64 ;;
  *) echo "openssl.sh: no OpenSSL target known for $CROSS_TRIPLE" >&2; exit 1 ;;
esac
# zig's ARMv6 target: OpenSSL's ARM assembly picks code paths by __ARM_ARCH__ at run time
# and build time; plain C leaves no doubt that nothing newer than ARMv6 is emitted.
case "${ZIG_TARGET:-}" in arm*) extra+=(no-asm) ;; esac

rm -rf src && mkdir src
tar -xf "$inputs/openssl" -C src --strip-components=1 --no-same-owner --no-same-permissions
cd src
# CC and AR come from the environment; an empty cross prefix keeps Configure from adding one.
quiet "$scratch/configure.log" ./Configure "$target" --prefix="$prefix" --openssldir="$prefix/ssl" \
  --libdir=lib no-shared no-tests no-afalgeng no-ssl3 -fPIC \
  "-ffile-prefix-map=$scratch=." "${extra[@]}"
quiet "$scratch/make.log" make -j"$(nproc)" build_libs
quiet "$scratch/install.log" make install_dev DESTDIR="$scratch/stage"

mkdir -p "$out/lib/pkgconfig"
cp -r "$scratch/stage$prefix/include" "$out/"
cp "$scratch/stage$prefix/lib/"lib{ssl,crypto}.a "$out/lib/"
for pc in "$scratch/stage$prefix/lib/pkgconfig/"*.pc; do
  sed "s|^prefix=.*|prefix=\${pcfiledir}/../..|" "$pc" >"$out/lib/pkgconfig/$(basename "$pc")"
done
test -f "$out/include/openssl/ssl.h"
