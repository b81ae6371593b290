#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed (for the UI browser test).
#
#   scripts/browser.sh        # idempotent: returns at once when /usr/bin/chromium exists
#
# As root, when it is missing: installs Debian's `chromium` with apt, running `apt-get update`
# only when the package lists lack it. Nothing downloads a browser from anywhere else (the test
# drives this binary with Playwright's `executable_path`; `playwright install` is never run).
#
# Exit status 0: chromium is there. Non-zero, with a message on stderr: it is not.
set -euo pipefail

BROWSER="${BT_CHROMIUM:-/usr/bin/chromium}"
LOCK="/var/lock/brain-tumor-browser.lock"

say() { echo "browser: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$BROWSER" ]; then
  say "$BROWSER present ($("$BROWSER" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "$BROWSER is missing and this is not root (uid $(id -u)): \
install Debian's chromium (apt-get install chromium), or run this script as root"

mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -w 900 9 || die "could not lock $LOCK (another browser.sh holds it)"
if [ -x "$BROWSER" ]; then   # installed while we waited
  say "$BROWSER present"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
policy="$(apt-cache policy chromium 2>/dev/null || true)"
if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
  say "apt-get update (package lists lack chromium)"
  apt-get update -qq || die "apt-get update failed"
fi
say "apt-get install chromium"
if ! apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
  say "install failed; retrying after apt-get update"
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || die "apt-get install chromium failed"
fi
[ -x "$BROWSER" ] || die "$BROWSER not found after installing chromium"
say "installed $("$BROWSER" --version 2>/dev/null || echo chromium)"
