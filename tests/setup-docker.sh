#!/usr/bin/env bash
# Prepares this machine for the Docker tests (tests/docker.rs) and hermetic builds:
# Debian's Docker engine and the tools that make base images without any registry,
# a running dockerd, and qemu binfmt handlers for foreign-architecture containers.
#
# Idempotent: installs only what is missing, starts dockerd only when `docker info` fails,
# mounts binfmt_misc only when it is not mounted. Prints what it did. Needs root for any
# change; exits non-zero with a message naming what could not be set up.
set -euo pipefail

log() { printf '==> setup-docker: %s\n' "$*" >&2; }
die() {
  printf 'setup-docker: error: %s\n' "$*" >&2
  exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

# Debian's client speaks the daemon's API; a newer client elsewhere on PATH may not.
docker_cli() {
  if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

# --- packages -------------------------------------------------------------------------
declare -A pkg_for_cmd=(
  [dockerd]=docker.io
  [qemu-aarch64-static]=qemu-user-static
  [update-binfmts]=binfmt-support
  [mmdebstrap]=mmdebstrap
  [dpkg-architecture]=dpkg-dev
)
missing=()
for cmd in "${!pkg_for_cmd[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for_cmd[$cmd]}")
done
# busybox-static: a bare `busybox` may be the dynamic one; check the package itself.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
  missing+=(busybox-static)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  is_root || die "missing ${missing[*]}; run this script as root (it uses apt-get) or install them"
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
else
  log "packages present: docker.io qemu-user-static binfmt-support mmdebstrap dpkg-dev busybox-static"
fi

# --- dockerd --------------------------------------------------------------------------
dockerd_log=/tmp/dockerbuild-dockerd.log
if docker_cli info >/dev/null 2>&1; then
  log "dockerd is running ($(docker_cli version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?'))"
else
  case "${DOCKER_HOST:-}" in
    "" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
    *) die "DOCKER_HOST=$DOCKER_HOST does not answer; start that daemon or unset DOCKER_HOST" ;;
  esac
  is_root || die "no Docker daemon answers and starting dockerd needs root (run: sudo dockerd &)"
  if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is starting (pid $(pgrep -x dockerd | head -1)); waiting for it"
  else
    log "starting dockerd in the background (log: $dockerd_log)"
    # setsid: keep it running after this script and its process group end.
    setsid dockerd >"$dockerd_log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    docker_cli info >/dev/null 2>&1 && break
    if ! pgrep -x dockerd >/dev/null 2>&1; then
      tail -n 20 "$dockerd_log" >&2 2>/dev/null || true
      die "dockerd exited while starting; see $dockerd_log"
    fi
    sleep 1
  done
  docker_cli info >/dev/null 2>&1 ||
    die "dockerd did not answer within 60 s; see $dockerd_log"
  log "dockerd is up ($(docker_cli version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'))"
fi

# --- binfmt_misc and qemu ---------------------------------------------------------------
binfmt=/proc/sys/fs/binfmt_misc
if [ -e "$binfmt/status" ]; then
  log "binfmt_misc is mounted"
else
  is_root || die "binfmt_misc is not mounted and mounting it needs root"
  log "mounting binfmt_misc on $binfmt"
  mount -t binfmt_misc binfmt_misc "$binfmt" || die "cannot mount binfmt_misc on $binfmt"
fi
for q in qemu-aarch64 qemu-arm; do
  if [ -e "$binfmt/$q" ] && head -n 1 "$binfmt/$q" | grep -qx enabled; then
    log "$q binfmt handler is enabled"
    continue
  fi
  is_root || die "the $q binfmt handler is not enabled and enabling it needs root"
  log "enabling the $q binfmt handler"
  update-binfmts --enable "$q" >/dev/null 2>&1 || true
  if ! { [ -e "$binfmt/$q" ] && head -n 1 "$binfmt/$q" | grep -qx enabled; }; then
    # A handler imported but not registered (e.g. after remounting binfmt_misc).
    update-binfmts --import "$q" >/dev/null 2>&1 || true
    update-binfmts --enable "$q" >/dev/null 2>&1 || true
  fi
  [ -e "$binfmt/$q" ] && head -n 1 "$binfmt/$q" | grep -qx enabled ||
    die "cannot enable the $q binfmt handler (update-binfmts --enable $q)"
done
log "ready"
