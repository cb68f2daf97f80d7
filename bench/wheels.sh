#!/usr/bin/env bash
# The wheel benchmarks, against baselines measured in the same run:
#   1. psutil for linux-arm64, cross-compiled by `wheel-build --rebuild` (what it needs
#      already built) versus built natively in an emulated arm64 container (Debian's own
#      gcc and Python under QEMU, cibuildwheel's approach, the same sdist): target >= 10x.
#   2. the whole matrix (`wheel-build --test`, every default spec, platform and Python),
#      built from whatever the store lacks and each wheel imported on its runner: its wall
#      time, then per spec the wheels built, failed (with why), imported on their runner
#      and failing there, and the seconds its build containers ran.
#   3. a no-op `wheel-build` of the whole matrix: wall time next to `dockerbuild --version`,
#      containers started (Docker events by label: 0), under `unshare -n` (no network).
# Usage: bench/wheels.sh [psutil] [matrix] [noop]   (default: all three)
# Needs root, Docker, mmdebstrap and qemu-user.
# BENCH_STORE picks the store (default target/bench-store).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/dockerbuild
store=${BENCH_STORE:-$PWD/target/bench-store}
db() { "$bin" -q --store "$store" --locked "$@"; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null || return 1; e=$(date +%s.%N); echo "$e - $s" | bc; }
r() { echo "scale=2; $1 / $2" | bc; }
# The best of three runs: both sides of a ratio get the same treatment.
best() { local b="" x; for _ in 1 2 3; do x=$(t "$@") || return 1; if [ -z "$b" ] || [ "$(echo "$x < $b" | bc)" = 1 ]; then b=$x; fi; done; echo "$b"; }
parts=" ${*:-psutil matrix noop} "
want() { [[ $parts == *" $1 "* ]]; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

if want psutil; then
echo "== 1. psutil 5.9.8 for arm64: cross-compiled vs emulated native"
db wheel-build -w psutil -p linux-arm64 --python 3.11 >/dev/null   # what it needs, once
cross=$(best db wheel-build -w psutil -p linux-arm64 --python 3.11 --rebuild)
sdist=$(db store path psutil-5.9.8.tar.gz)
cp "$sdist" "$work/psutil.tar.gz"
db docker-generate -p native-arm64 >/dev/null
native=$(best db run -p native-arm64 --workdir "$work" -- sh -c \
  'rm -rf /tmp/b /tmp/dist && mkdir -p /tmp/b && tar --no-same-owner -xzf psutil.tar.gz -C /tmp/b && cd /tmp/b/psutil-5.9.8 &&
   python3 -c "import setuptools.build_meta as b; print(b.build_wheel(\"/tmp/dist\"))"')
echo "best of 3: cross (wheel-build --rebuild): ${cross}s   emulated native: ${native}s"
echo "ratio emulated / cross: $(r "$native" "$cross")   (target >= 10)"
fi

if want matrix; then
  echo "== 2. the whole matrix"
  db wheel-json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)), "wheels in the matrix")'
  # Docker's daemon keeps only its last events: record them while the matrix runs.
  docker events --filter label=org.dockerbuild.managed=true --filter event=start \
    --filter event=die \
    --format '{{.TimeNano}} {{.Action}} {{index .Actor.Attributes "org.dockerbuild.build-key"}}' \
    >"$work/events" &
  events=$!
  s=$(date +%s.%N)
  "$bin" --store "$store" --locked --json wheel-build --test -o "$work/dist" >"$work/matrix.json" \
    2>"$work/matrix.log" || tail -n 20 "$work/matrix.log"
  echo "matrix: $(echo "$(date +%s.%N) - $s" | bc)s"
  sleep 1; kill "$events"
  # Per spec: wheels built (or already there) and failed, with each failure's first error, and
  # the seconds its build containers ran (Docker events by build key).
  python3 - "$work/matrix.json" "$work/events" <<'PY'
import collections, json, sys
report = json.load(open(sys.argv[1]))
start, secs = {}, collections.Counter()
for line in open(sys.argv[2]):
    t, action, key = (line.split() + [""])[:3]
    if action == "start":
        start[key] = int(t)
    elif key in start:
        secs[key] += (int(t) - start.pop(key)) / 1e9
specs = collections.defaultdict(lambda: {"ok": 0, "failed": [], "secs": 0.0, "imported": 0, "untested": 0})
for w in report["wheels"]:
    s = specs[w.get("spec", w["label"])]
    s["secs"] += secs.get((w.get("key") or "").removeprefix("blake3:"), 0.0)
    t = w.get("test")
    if t and t.get("error"):
        s["failed"].append(f'{w.get("platform")} {w.get("python") or ""} on {t.get("runner")}: {t["error"][:120]}')
    elif t:
        s["imported"] += 1
    elif w["status"] not in ("failed", "skipped"):
        s["untested"] += 1
    if w["status"] in ("failed", "skipped"):
        lines = (w.get("error") or "needs " + w.get("needs", "?")).strip().splitlines()
        # The compiler's own message, if there is one, else the last line.
        why = next((l for l in lines if "error:" in l and "failed with" not in l), lines[-1])
        s["failed"].append(f'{w.get("platform")} {w.get("python") or ""}: {why[:120]}')
    else:
        s["ok"] += 1
for name, s in sorted(specs.items()):
    print(f'{name:14} {s["ok"]:3} built {len(s["failed"]):3} failed (to build or import)'
          f' {s["imported"]:3} imported on a runner {s["untested"]:3} not tested (mac, windows)'
          f' {s["secs"]:7.1f}s in containers')
    for f in s["failed"]:
        print("    failed", f)
PY
fi

if want noop; then
echo "== 3. a no-op wheel-build of the whole matrix"
db wheel-build -o "$work/dist" >/dev/null
version=$(t "$bin" --version)
since=$(date +%s)
noop=$(t unshare -n "$bin" -q --store "$store" --locked wheel-build -o "$work/dist")
started=$(docker events --since "$since" --until "$(date +%s)" \
  --filter label=org.dockerbuild.managed=true --filter event=start | wc -l)
echo "no-op wheel-build (under unshare -n): ${noop}s   dockerbuild --version: ${version}s"
echo "ratio no-op / --version: $(r "$noop" "$version")   containers started: $started"
fi
