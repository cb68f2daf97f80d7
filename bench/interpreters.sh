#!/usr/bin/env bash
# The interpreter matrix, too long for CI: host CPython 3.11 and 3.13 and Perl (built on
# linux-x64), then a target Python entry for every platform and Python version. Each is
# timed once from nothing (images generated on the way) and once more, which must be a
# lookup; the ratio second/first shows a rebuild costs nothing.
# Usage: bench/interpreters.sh [PLATFORM...]   (default: every toolchain)
# Needs root, Docker and mmdebstrap. BENCH_STORE picks the store (default target/bench-store).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/dockerbuild
store=${BENCH_STORE:-$PWD/target/bench-store}
if [ $# -gt 0 ]; then
  platforms=("$@")
else
  mapfile -t platforms < <(ls toolchains/*.toml | xargs -n1 basename | sed 's/\.toml$//')
fi

db() { "$bin" -q --offline --store "$store" --locked build "$@"; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null || return 1; e=$(date +%s.%N); echo "$e - $s" | bc; }

printf '%-28s %-16s %10s %10s %8s\n' recipe platform first_s again_s ratio
row() { # recipe [platform]
  local r=$1 p=${2:-} first again
  if ! first=$(t db "$r" ${p:+-p "$p"}); then
    printf '%-28s %-16s %10s\n' "$r" "${p:--}" FAILED
    return 0
  fi
  again=$(t db "$r" ${p:+-p "$p"})
  printf '%-28s %-16s %10.1f %10.2f %8.4f\n' "$r" "${p:--}" "$first" "$again" \
    "$(echo "scale=4; $again / $first" | bc)"
}
for r in python-3.11 python-3.13 perl; do row "$r"; done
for v in 3.11 3.13; do
  for p in "${platforms[@]}"; do row "python-$v-target" "$p"; done
done
