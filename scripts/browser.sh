#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed (for the UI browser test).
#
#   scripts/browser.sh        # idempotent: returns at once when /usr/bin/chromium exists
#
# As root, when it is missing: installs Debian's `chromium` with apt (scripts/lib/apt.sh), running
# `apt-get update` only when the package lists lack it. Nothing downloads a browser from anywhere
# else (the test drives this binary with Playwright's `executable_path`; `playwright install` is
# never run).
#
# Exit status 0: chromium is there. Non-zero, with a message on stderr: it is not.
set -euo pipefail

BROWSER="${BT_CHROMIUM:-/usr/bin/chromium}"
# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/apt.sh"

say() { echo "browser: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$BROWSER" ]; then
  say "$BROWSER present ($("$BROWSER" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
apt_install chromium fonts-dejavu-core || exit 1
[ -x "$BROWSER" ] || die "$BROWSER not found with Debian's chromium installed (set BT_CHROMIUM)"
say "installed $("$BROWSER" --version 2>/dev/null || echo chromium)"
