#!/usr/bin/env bash
# Build a relocatable host Perl (5.36) for x86-64 Linux, to run build tools (OpenSSL's
# Configure, autotools, ...) in dockerbuild toolchains.
#
# Contract: the Perl source tarball is the plain file $DOCKERBUILD_INPUTS/perl (default
# /inputs/perl). The current directory is writable scratch; Perl is installed to
# $DOCKERBUILD_OUT (default /out): bin/perl, lib/5.X.Y/ (the core library; lib/site_perl/
# for more). No network, no man pages.
# Works under `bash -euo pipefail FILE` and `bash -c`.
#
# Relocatable: -Duserelocatableinc makes every path in @INC and %Config relative to the
# running perl (".../" = the directory of $^X, found through /proc/self/exe), so the tree
# works read-only at any path. Scripts in bin/ get a relative launcher instead of an
# absolute #! line.
#
# Deterministic: Configure's host-dependent answers (host name, uname, kernel version, build
# time, user) are pinned, so Config.pm and Config_heavy.pl do not vary; binaries stripped.
set -euo pipefail

inputs=${DOCKERBUILD_INPUTS:-/inputs}
out=${DOCKERBUILD_OUT:-/out}
scratch=$(pwd -P)
src=$scratch/perl-src
stage=$scratch/stage      # DESTDIR for `make install`
prefix=/opt/dockerbuild/perl
jobs=$(nproc)

export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
cc=${CC:-gcc}
strip=${STRIP:-strip}

strip_elf() { # dir...: strip every ELF executable and shared object below them
  find "$@" -type f \( -name '*.so' -o -perm -u+x \) -print0 | sort -z |
    while IFS= read -r -d '' f; do
      case $(file -b "$f") in ELF*) chmod u+w "$f" && "$strip" --strip-unneeded "$f" ;; esac
    done
}
step() { echo "== [${SECONDS}s] $*"; }
quiet() { # log cmd...: run cmd with its output in log, shown (the end) only on failure
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
}

step "unpack"
rm -rf "$src" && mkdir -p "$src"
tar -xf "$inputs/perl" -C "$src" --strip-components=1 --no-same-owner --no-same-permissions
cd "$src"
version=$(sed -n 's/^#define PERL_REVISION[[:space:]]*\([0-9]*\).*/\1/p;
                   s/^#define PERL_VERSION[[:space:]]*\([0-9]*\).*/\1/p;
                   s/^#define PERL_SUBVERSION[[:space:]]*\([0-9]*\).*/\1/p' patchlevel.h |
  paste -sd.)

# -des: defaults, no questions. man dirs "none": no man pages. -Ud_crypt keeps libcrypt
# (not part of glibc) out of the binary's dependencies. The host name, uname and user
# answers replace what Configure would take from the build host.
step "Configure"
quiet "$scratch/configure.log" sh Configure -des \
  -Dprefix="$prefix" -Duserelocatableinc -Dcc="$cc" \
  -Dman1dir=none -Dman3dir=none -Dsiteman1dir=none -Dsiteman3dir=none \
  -Ud_crypt -Ui_crypt \
  -Dmyhostname=localhost -Dmydomain=.localdomain -Dcf_email=dockerbuild@localhost \
  -Dperladmin=dockerbuild@localhost -Dcf_by=dockerbuild \
  -Dmyuname="linux dockerbuild" -Dosvers=dockerbuild
# Configure stamps config.sh with the time it ran (cf_time and a comment that Config_heavy.pl
# copies), after applying -D and -A options: pin it to SOURCE_DATE_EPOCH, then regenerate
# what is made from config.sh (config.h, Makefile, ...).
cf_time=$(date -u -d "@$SOURCE_DATE_EPOCH")
sed -i -e "s/^cf_time=.*/cf_time='$cf_time'/" \
  -e "s/^# Configuration time: .*/# Configuration time: $cf_time/" config.sh
quiet "$scratch/configure.log" sh Configure -S

step "make"
quiet "$scratch/make.log" make -j"$jobs"

step "install"
quiet "$scratch/install.log" make install DESTDIR="$stage"
mv "$stage$prefix"/* "$out"/
cd "$out"
rm -rf man share

# bin/perl5.X.Y is a hard link to bin/perl: a relative symlink instead (one copy).
if [ -f "bin/perl$version" ]; then ln -sf perl "bin/perl$version"; fi
# Debug info is most of the binaries' size.
strip_elf bin lib

# Relative launchers instead of "#!/opt/dockerbuild/perl/bin/perl": sh execs the perl next
# to the script with -x, which skips to the "#!perl" line (keeping its switches, e.g. -w).
for f in bin/*; do
  [ -f "$f" ] && [ ! -L "$f" ] && head -1 "$f" | grep -q "^#!$prefix/bin/perl" || continue
  { echo '#!/bin/sh'
    echo 'exec "$(dirname -- "$(readlink -f -- "$0")")/perl" -x "$0" "$@"'
    head -1 "$f" | sed "s|^#!$prefix/bin/perl[0-9.]*|#!perl|"
    tail -n +2 "$f"; } >"$f.new"
  mv "$f.new" "$f" && chmod 0755 "$f"
done

step "smoke test"
bin/perl -e 'use POSIX; use Digest::SHA qw(sha1_hex); use Config;
  die "not relocated: $Config{privlibexp}\n" unless $Config{privlibexp} =~ m{^\Q'"$out"'\E/};
  print "perl $^V ", sha1_hex(""), "\n"'
