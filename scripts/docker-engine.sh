#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine (for CI and local image builds).
#
#   scripts/docker-engine.sh            # idempotent: returns at once when `docker info` works
#
# As root, when no engine answers: installs Debian's `docker.io` (and `debootstrap`, which
# docker/build-cpu-base.sh needs) with apt (scripts/lib/apt.sh), running `apt-get update` only
# when the package lists lack them and keeping the package's own service from starting, then
# starts `dockerd --bridge=none --iptables=false` in the background and waits until `docker info`
# works. There is no bridge network: containers use `--network host` or `none`.
#
# Environment:
#   DOCKER_ENGINE_LOG_DIR   where dockerd.log goes (default /var/log)
#   DOCKER_ENGINE_TIMEOUT   seconds to wait for the engine (default 60)
#   DOCKERD_EXTRA_ARGS      more dockerd arguments (word-split)
#
# Exit status 0: an engine answers. Non-zero, with a message on stderr: it does not.
# The engine inherits this script's scheduling priority (run it under `nice` to start a nice one).
set -euo pipefail

LOG_DIR="${DOCKER_ENGINE_LOG_DIR:-/var/log}"
TIMEOUT="${DOCKER_ENGINE_TIMEOUT:-60}"
LOG="$LOG_DIR/dockerd.log"
LOCK="/var/lock/brain-tumor-docker-engine.lock"
# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/apt.sh"

say() { echo "docker-engine: $*" >&2; }
die() { say "error: $*"; exit 1; }

engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# debootstrap is only installed on the way (root); an engine that answers is enough otherwise
if engine_up && { command -v debootstrap >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; }; then
  say "engine already running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "no Docker engine answers and this is not root (uid $(id -u)): \
start one, or run this script as root"

# One starter at a time (CI may call this from parallel jobs).
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
tl=$SECONDS
flock -w "$((TIMEOUT + 600))" 9 \
  || die "could not lock $LOCK within $((SECONDS - tl))s (another docker-engine.sh holds it)"
if engine_up && command -v debootstrap >/dev/null 2>&1; then   # started while we waited
  say "engine already running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  exit 0
fi

# --- packages ------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# the package's own docker service stays off: the engine is started below, with our flags
if [ "${#missing[@]}" -gt 0 ]; then apt_install --no-services "${missing[@]}" || exit 1; fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"

if engine_up; then
  say "engine already running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  exit 0
fi

# --- start dockerd -------------------------------------------------------------------------
# alive = exists and not a zombie (a killed dockerd may linger unreaped as <defunct>)
pid_alive() {
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"; [ "${stat%% *}" != Z ] && [ "${stat%% *}" != X ]
}
start_dockerd() {
  rm -f /var/run/docker.pid /var/run/docker.sock
  # a containerd left by a killed dockerd (dead, or an unreaped zombie) makes the next dockerd
  # wait for its socket and give up: forget it
  local cpid; cpid="$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null || true)"
  if [ -n "$cpid" ] && ! pid_alive "$cpid"; then
    rm -f /var/run/docker/containerd/containerd.pid /var/run/docker/containerd/containerd.sock
  fi
  mkdir -p "$LOG_DIR"
  say "starting dockerd (log $LOG)"
  # shellcheck disable=SC2086
  setsid nohup dockerd --bridge=none --iptables=false \
    ${DOCKERD_EXTRA_ARGS:-} >>"$LOG" 2>&1 </dev/null 9>&- &   # 9: our lock, not its
  pid=$!
  started=1
}
started=0
pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
if pid_alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
  say "dockerd (pid $pid) is running but not answering yet; waiting"
else
  start_dockerd
fi

start=$SECONDS
until docker info >/dev/null 2>&1; do
  if ! pid_alive "$pid"; then
    if [ "$started" = 0 ]; then   # the dockerd we waited for went away: start our own
      say "dockerd (pid $pid) went away"
      start_dockerd
      continue
    fi
    tail -n 30 "$LOG" >&2 2>/dev/null || true
    die "dockerd exited (see $LOG)"
  fi
  if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
    tail -n 30 "$LOG" >&2 2>/dev/null || true
    die "dockerd (pid $pid) did not answer within ${TIMEOUT}s (see $LOG)"
  fi
  sleep 1
done
say "engine up after $((SECONDS - start))s: dockerd pid $pid, \
$(docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}')"
