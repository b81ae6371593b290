#!/usr/bin/env bash
# Make sure PostgreSQL and Redis are installed (for the CeleryExecutor test, tests/deploy/).
#
#   scripts/celery-stack.sh            # idempotent: returns at once when both are there
#
# As root, when `initdb`/`pg_ctl` (Debian: /usr/lib/postgresql/<N>/bin) or `redis-server` is
# missing: installs Debian's `postgresql` and `redis-server` with apt (scripts/lib/apt.sh), running
# `apt-get update` only when the package lists lack them. The packages' own services are NOT started (a
# policy-rc.d refuses them during the install when none is set): the test starts its own
# PostgreSQL cluster and Redis server on loopback, in a temp dir, on free ports.
#
# Prints the PostgreSQL bin directory and the redis-server path on stdout (two lines).
# Exit status 0: both are installed. Non-zero, with a message on stderr: they are not.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/apt.sh"
say() { echo "celery-stack: $*" >&2; }
die() { say "error: $*"; exit 1; }

pg_bin() {  # the newest PostgreSQL bin dir that has initdb and pg_ctl, else the PATH's
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}
installed() { pg_bin >/dev/null && command -v redis-server >/dev/null 2>&1; }
report() { pg_bin; command -v redis-server; }

if installed; then report; exit 0; fi

missing=()
pg_bin >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# no service starts during the install (no init system here, and the ports are the test's)
apt_install --no-services "${missing[@]}" || exit 1
installed || die "still missing after the install: initdb/pg_ctl ($(pg_bin || echo none)) or \
redis-server ($(command -v redis-server || echo none))"
report
