#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, checks formatting and
# lints, runs the whole suite with nextest, and prints the slowest tests.
# Under CI=true a missing component fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_apt=()
command -v b3sum >/dev/null || need_apt+=(b3sum)
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
# tests/wheel_tags.rs: fixtures compiled by the host, auditwheel in a venv.
command -v gcc >/dev/null || need_apt+=(gcc)
command -v g++ >/dev/null || need_apt+=(g++)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${need_apt[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing ${need_apt[*]} (install them with apt-get)"
  fi
fi
if ! python3 -c 'import blake3' 2>/dev/null; then
  log "installing the blake3 Python package (store-format/b3tree.py cross-checks digests)"
  python3 -m pip install -q blake3 || log "pip could not install blake3"
fi

# Docker, QEMU user emulation, mmdebstrap (for toolchain images and builds).
if [ "$(id -u)" = 0 ]; then
  if ! bash tests/setup-docker.sh; then
    if [ "${CI:-}" = true ]; then log "Docker setup failed"; exit 1; fi
    log "Docker setup failed: Docker tests will be skipped"
  fi
else
  log "not root: Docker tests will be skipped unless a daemon is reachable"
fi

# A fresh machine gains nothing from incremental builds, and they take about 1 GB of disk.
export CARGO_INCREMENTAL=0
# The suite needs about 12 GB of free disk at its peak (toolchain images in the store and
# in Docker, the build tree); say what there is, so a full disk is recognised as one.
disk() { df -h --output=avail,target . /var/lib/docker 2>/dev/null | tail -n +2 | sed 's/^/    /'; }
log "free disk:"; disk >&2

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

log "tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --profile ci --no-tests fail || status=$?
  junit=target/nextest/ci/junit.xml
  if [ -f "$junit" ]; then
    echo "Slowest tests:"
    python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = [(float(c.get("time", 0)), c.get("classname", "") + "::" + c.get("name", ""))
         for c in ET.parse(sys.argv[1]).iter("testcase")]
total = sum(t for t, _ in cases)
for t, name in sorted(cases, reverse=True)[:12]:
    print(f"  {t:8.2f}s  {name}")
print(f"  {len(cases)} tests, {total:.1f}s of test time")
PY
  fi
else
  cargo test --quiet || status=$?
fi
log "free disk at the end:"; disk >&2
exit $status
