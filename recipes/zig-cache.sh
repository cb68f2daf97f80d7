#!/usr/bin/env bash
# Warm zig's global cache for a zig toolchain (linux-armv6, manylinux-x64), so later builds
# do not rebuild glibc stubs, startup files, compiler-rt and libc++ (tens of seconds each).
#
# Contract: runs in the toolchain's image; the cache is written to $DOCKERBUILD_OUT (default
# /out). Builds that mount the output at /inputs/zig-cache get it copied into a writable
# $ZIG_GLOBAL_CACHE_DIR by the toolchain's compiler wrappers on their first call.
#
# zig's cache is not byte-for-byte reproducible (manifests record inodes and mtimes), but
# what it builds from it is: keep the entry by its build key, never pin its digest.
set -euo pipefail

out=${DOCKERBUILD_OUT:-/out}
: "${CC:?CC must be set by the toolchain}" "${CXX:?CXX must be set by the toolchain}"
export ZIG_GLOBAL_CACHE_DIR=$out
unset DOCKERBUILD_ZIG_CACHE
work=$(mktemp -d)
export ZIG_LOCAL_CACHE_DIR=$work/local

printf '#include <stdio.h>\n#include <math.h>\nint main(int c, char **v) { printf("%%f\\n", sqrt(c)); return 0; }\n' > "$work/c.c"
printf '#include <iostream>\n#include <thread>\nint main() { std::thread t([]{ std::cout << "hi\\n"; }); t.join(); }\n' > "$work/c.cc"

# C at -O2 and without optimisation share their libc pieces; C++ at -O2 builds libc++.
"$CC" -O2 -o "$work/c" "$work/c.c" -lm
"$CC" -shared -fPIC -o "$work/c.so" "$work/c.c"
"$CXX" -O2 -o "$work/cc" "$work/c.cc"
# The musl wrapper, where the toolchain has one, makes static binaries.
for musl in /usr/local/bin/*-musl*-gcc; do
  [ -x "$musl" ] && "$musl" -O2 -static -o "$work/static" "$work/c.c"
done
rm -rf "$work" "$out/tmp"
