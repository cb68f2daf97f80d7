#!/usr/bin/env bash
# Cross-compile libyaml as a static, position-independent library, to be linked into
# extension modules (PyYAML's _yaml) so that wheels need no libyaml.so at run time.
#
# Contract: $DOCKERBUILD_INPUTS/libyaml (default /inputs/libyaml) is libyaml's source
# tarball (Debian's .orig: a release snapshot without a generated configure, so the eight
# C files are compiled directly, with the version defines CMakeLists.txt would write).
# The current directory is writable scratch. The result goes to $DOCKERBUILD_OUT (default
# /out): include/yaml.h, lib/libyaml.a and lib/pkgconfig/yaml-0.1.pc, whose prefix is
# relative to the .pc file. The toolchain environment provides CC and AR. No network.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

rm -rf src obj && mkdir src obj
tar -xf "$inputs/libyaml" -C src --strip-components=1 --no-same-owner --no-same-permissions
version=$(sed -n 's/^set (YAML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))$/\2/p' src/CMakeLists.txt | paste -sd.)
IFS=. read -r major minor patch <<<"$version"
[ -n "$patch" ] || { echo "libyaml: no version in CMakeLists.txt" >&2; exit 1; }
for c in src/src/*.c; do
  "${CC:-cc}" -O2 -fPIC -ffile-prefix-map="$scratch"=. -Isrc/include -DYAML_DECLARE_STATIC \
    -DYAML_VERSION_MAJOR="$major" -DYAML_VERSION_MINOR="$minor" -DYAML_VERSION_PATCH="$patch" \
    -DYAML_VERSION_STRING="\"$version\"" -c "$c" -o "obj/$(basename "$c" .c).o" &
done
wait
objs=(obj/*.o)
[ ${#objs[@]} -eq 8 ] || { echo "libyaml: expected 8 objects, got ${#objs[@]}" >&2; exit 1; }

mkdir -p "$out/include" "$out/lib/pkgconfig"
"${AR:-ar}" rcD "$out/lib/libyaml.a" "${objs[@]}"
cp src/include/yaml.h "$out/include/"
cat >"$out/lib/pkgconfig/yaml-0.1.pc" <<PC
prefix=\${pcfiledir}/../..
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: LibYAML
Description: Library to parse and emit YAML
Version: $version
Cflags: -I\${includedir} -DYAML_DECLARE_STATIC
Libs: -L\${libdir} -lyaml
PC
