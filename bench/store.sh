#!/usr/bin/env bash
# Benchmarks `store add` and `store verify` against the work they cannot avoid, measured
# in the same run on the same filesystem:
#   add    vs  cp -a SRC DEST && sync            (copy + durability)
#   add    vs  cp -a ... && sync  +  tar -cf - SRC | b3sum   (copy + hash, done separately)
#   verify vs  tar -cf - ENTRY | b3sum           (read + hash)
# Usage: bench/store.sh [FILES] [TOTAL_MIB] [ROUNDS]   (default 20000 files, 1024 MiB, 3)
# Prints medians and ratios; needs b3sum (Debian package b3sum).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-20000}; mib=${2:-1024}; rounds=${3:-3}
command -v b3sum >/dev/null || { echo "bench: b3sum is missing (apt-get install b3sum)" >&2; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/dockerbuild
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

python3 - "$work/src" "$files" "$mib" <<'PY'
import os, random, sys
root, files, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
# Mixed sizes: most files small, a few large, like a toolchain tree.
weights = [rng.paretovariate(1.2) for _ in range(files)]
scale = mib * 2**20 / sum(weights)
chunk = os.urandom(1 << 20)
for i, w in enumerate(weights):
    d = os.path.join(root, f"d{i % 97}", f"s{i % 13}")
    os.makedirs(d, exist_ok=True)
    n = max(1, int(w * scale))
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        while n > 0:
            f.write(chunk[: min(n, len(chunk))]); n -= len(chunk)
    if i % 50 == 0:
        os.chmod(os.path.join(d, f"f{i}"), 0o755)
PY
actual=$(du -sb "$work/src" | cut -f1)
echo "tree: $files files, $((actual / 1048576)) MiB in $work"

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
clean() { chmod -R u+w "$work/$1" 2>/dev/null || true; rm -rf "${work:?}/$1"; }

# Warm the page cache so every contender reads from memory.
tar -cf - -C "$work" src | b3sum >/dev/null

declare -a cp_t hash_t add_t ver_t tarver_t
for r in $(seq "$rounds"); do
  clean copy; cp_t+=("$(t sh -c "cp -a '$work/src' '$work/copy' && sync")"); clean copy
  hash_t+=("$(t sh -c "tar -cf - -C '$work' src | b3sum")")
  clean store; sync
  add_t+=("$(t "$bin" -q --store "$work/store" store add "$work/src" --name bench)")
  entry=$("$bin" -q --store "$work/store" store path bench)
  ver_t+=("$(t "$bin" -q --store "$work/store" store verify)")
  tarver_t+=("$(t sh -c "tar -cf - -C '$(dirname "$entry")' '$(basename "$entry")' | b3sum")")
done
clean store

cp_m=$(printf '%s\n' "${cp_t[@]}" | median)
hash_m=$(printf '%s\n' "${hash_t[@]}" | median)
add_m=$(printf '%s\n' "${add_t[@]}" | median)
ver_m=$(printf '%s\n' "${ver_t[@]}" | median)
tarver_m=$(printf '%s\n' "${tarver_t[@]}" | median)
r() { echo "scale=2; $1 / $2" | bc; }
echo "median of $rounds rounds (seconds):"
echo "  cp -a && sync          $cp_m"
echo "  tar | b3sum            $hash_m"
echo "  store add              $add_m"
echo "  store verify           $ver_m"
echo "  tar entry | b3sum      $tarver_m"
echo "ratios:"
echo "  store add / (cp -a && sync)                 $(r "$add_m" "$cp_m")   (target <= 1.0)"
echo "  store add / (cp -a && sync + tar | b3sum)   $(r "$add_m" "$(echo "$cp_m + $hash_m" | bc)")"
echo "  store verify / (tar | b3sum)                $(r "$ver_m" "$tarver_m")   (target <= 1.2)"
