#!/usr/bin/env bash
# Benchmarks the oci:// binary cache against a local docker-registry, with baselines
# measured in the same run on the same machine:
#   cache pull (empty store)  vs  curl BLOB | zstd -d | tar -x && sync
#   cache push (new repo)     vs  curl -T STREAM (monolithic upload of the same blob),
#                             and vs  store export + curl -T (what a push must also do)
# Usage: bench/cache-oci.sh [FILES] [TOTAL_MIB] [ROUNDS]   (default 4000 files, 300 MiB, 3)
# Needs docker-registry, curl, zstd (Debian packages of those names).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-4000}; mib=${2:-300}; rounds=${3:-3}
for tool in docker-registry curl zstd sha256sum bc; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release --quiet
bin=$PWD/target/release/dockerbuild
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
  chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
export DOCKERBUILD_CONFIG=$work/config.toml DOCKER_CONFIG=$work/docker
unset DOCKERBUILD_CACHES

python3 - "$work/src" "$files" "$mib" <<'PY'
import os, random, sys
root, files, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
# Mixed sizes (most small, a few large) and mixed compressibility, like a toolchain tree.
weights = [rng.paretovariate(1.2) for _ in range(files)]
scale = mib * 2**20 / sum(weights)
text = b"".join(b"line %d of a fairly compressible text file\n" % i for i in range(30000))[: 1 << 20]
for i, w in enumerate(weights):
    d = os.path.join(root, f"d{i % 97}", f"s{i % 13}")
    os.makedirs(d, exist_ok=True)
    n = max(1, int(w * scale))
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        while n > 0:
            # Odd files incompressible (fresh noise), even ones text.
            chunk = os.urandom(min(n, 1 << 20)) if i % 2 else text[: min(n, len(text))]
            f.write(chunk); n -= len(chunk)
PY
"$bin" -q --store "$work/store" store add "$work/src" --name bench >/dev/null
digest=$("$bin" -q --store "$work/store" --json store show bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
"$bin" -q --store "$work/store" store export bench -o "$work/stream.tar.zst" 2>/dev/null
size=$(stat -c %s "$work/stream.tar.zst")
sha=sha256:$(sha256sum "$work/stream.tar.zst" | cut -d' ' -f1)
echo "entry: $files files, $(du -sm "$work/src" | cut -f1) MiB; export stream $((size / 1048576)) MiB"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
base=http://127.0.0.1:$port/v2

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r() { echo "scale=2; $1 / $2" | bc; }
curl_upload() { # REPO FILE: the distribution spec's monolithic upload (POST, then PUT)
  local loc
  loc=$(curl -sSf -X POST -D - -o /dev/null "$base/$1/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
  case $loc in http*) ;; *) loc=http://127.0.0.1:$port$loc ;; esac
  curl -sSf -T "$2" -H 'Content-Type: application/octet-stream' "$loc&digest=$(sha256sum "$2" | sed 's/^\([0-9a-f]*\).*/sha256:\1/')" -o /dev/null
}
export -f curl_upload; export base port

declare -a push_t curl_t export_t pull_t base_t
for i in $(seq "$rounds"); do
  # Push into a new repository each round (so nothing is skipped as already there).
  sync
  push_t+=("$(t "$bin" -q --store "$work/store" --cache "oci://127.0.0.1:$port/push-$i" cache push bench)")
  curl_t+=("$(t bash -c "curl_upload curl-$i '$work/stream.tar.zst'")")
  export_t+=("$(t "$bin" -q --store "$work/store" store export bench -o "$work/again.tar.zst" 2>/dev/null)")
  # Pull into an empty store; the baseline unpacks the same blob from the same registry.
  rm -rf "$work/pulled" "$work/untar"; mkdir "$work/untar"; sync
  pull_t+=("$(t "$bin" -q --store "$work/pulled" --cache "oci://127.0.0.1:$port/push-1" cache pull "$digest")")
  base_t+=("$(t sh -c "curl -sSf '$base/push-1/blobs/$sha' | zstd -dq | tar -x -C '$work/untar' && sync")")
done
"$bin" -q --store "$work/pulled" store verify >/dev/null

push_m=$(printf '%s\n' "${push_t[@]}" | median)
curl_m=$(printf '%s\n' "${curl_t[@]}" | median)
export_m=$(printf '%s\n' "${export_t[@]}" | median)
pull_m=$(printf '%s\n' "${pull_t[@]}" | median)
base_m=$(printf '%s\n' "${base_t[@]}" | median)
echo "median of $rounds rounds (seconds):"
echo "  cache pull (empty store)               $pull_m"
echo "  curl | zstd -d | tar -x && sync        $base_m"
echo "  cache push (new repository)            $push_m"
echo "  curl -T (monolithic upload)            $curl_m"
echo "  store export (part of every push)      $export_m"
echo "ratios:"
echo "  cache pull / (curl | zstd -d | tar -x && sync)   $(r "$pull_m" "$base_m")   (target <= 1.1)"
echo "  cache push / curl -T                              $(r "$push_m" "$curl_m")"
echo "  cache push / (store export + curl -T)             $(r "$push_m" "$(echo "$export_m + $curl_m" | bc)")   (target <= 1.1)"
