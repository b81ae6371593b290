#!/usr/bin/env bash
# Make sure Etsy's StatsD daemon (the npm `statsd` package) is installed (for the metrics test,
# tests/integration/test_statsd_metrics.py).
#
#   scripts/statsd.sh         # idempotent: returns at once when it is installed
#
# Installs the pinned package with npm into a cache folder (BT_STATSD_DIR, default
# ${XDG_CACHE_HOME:-~/.cache}/brain-tumor/statsd), without its optional native dependencies
# (syslog, hashring: not used). Needs node and npm on the PATH and the npm registry.
#
# Prints the path of the daemon's stats.js on stdout (run it as `node stats.js CONFIG`).
# Exit status 0: it is installed. Non-zero, with a message on stderr: it is not.
set -euo pipefail

VERSION="0.9.0"
DIR="${BT_STATSD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/brain-tumor/statsd}"
STATS_JS="$DIR/node_modules/statsd/stats.js"

say() { echo "statsd: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v node >/dev/null 2>&1 || die "node is not on the PATH (Debian: apt-get install nodejs)"
if [ -f "$STATS_JS" ] && grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/statsd/package.json"; then
  echo "$STATS_JS"
  exit 0
fi
command -v npm >/dev/null 2>&1 || die "npm is not on the PATH (Debian: apt-get install npm)"
mkdir -p "$DIR"
say "installing statsd@$VERSION into $DIR"
npm install --prefix "$DIR" --no-save --omit=optional --no-audit --no-fund --loglevel=error \
  "statsd@$VERSION" >&2 || die "npm install statsd@$VERSION failed"
[ -f "$STATS_JS" ] || die "$STATS_JS missing after npm install"
echo "$STATS_JS"
