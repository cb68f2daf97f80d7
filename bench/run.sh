#!/usr/bin/env bash
# Benchmarks the container path, against baselines measured in the same run:
#   dockerbuild run -p linux-arm64 -- true   vs   docker run --rm --network none IMAGE true
#   docker-generate with the image already in the store (a lookup) and from nothing
#   (fetching the .debs, building the root filesystem and image; pass --cold).
# Usage: bench/run.sh [ROUNDS] [--cold]   Needs root, Docker and mmdebstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
cargo build --release --quiet
bin=$PWD/target/release/dockerbuild
store=${BENCH_STORE:-$PWD/target/bench-store}
docker_cli=/usr/bin/docker; [ -x $docker_cli ] || docker_cli=docker

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r() { echo "scale=2; $1 / $2" | bc; }

id=$("$bin" -q --store "$store" --locked docker-generate -p linux-arm64 | awk '{print $2}')
echo "image $id"
declare -a bare ours
for _ in $(seq "$rounds"); do
  bare+=("$(t $docker_cli run --rm --network none "$id" true)")
  ours+=("$(t "$bin" -q --store "$store" --locked run -p linux-arm64 -- true)")
done
b=$(printf '%s\n' "${bare[@]}" | median); o=$(printf '%s\n' "${ours[@]}" | median)
echo "median of $rounds (seconds): docker run $b, dockerbuild run $o"
echo "ratio dockerbuild run / docker run: $(r "$o" "$b")   (target <= 1.15)"

warm=$(t "$bin" -q --store "$store" --locked docker-generate -p linux-arm64)
echo "docker-generate, entry in the store: ${warm}s ($(r "$warm" "$b") x one bare docker run)"
if [ "${2:-}" = --cold ]; then
  cold_store=$(mktemp -d); trap 'chmod -R u+w "$cold_store"; rm -rf "$cold_store"' EXIT
  cold=$(t "$bin" -q --store "$cold_store" --locked docker-generate -p linux-arm64)
  echo "docker-generate from an empty store: ${cold}s ($(r "$cold" "$warm") x the cached case)"
fi
