#!/usr/bin/env bash
# Make sure the Orthanc PACS and its DICOMweb plugin are installed (for the PACS tests,
# tests/integration/test_pacs_orthanc.py, and `brain_tumor.devtools.orthanc`).
#
#   scripts/orthanc.sh            # idempotent: returns at once when both are there
#
# As root, when the `Orthanc` binary or the DICOMweb plugin is missing: installs Debian's
# `orthanc` and `orthanc-dicomweb` with apt (scripts/lib/apt.sh), running `apt-get update` only
# when the package lists lack them. The package's own service is NOT started (a policy-rc.d
# refuses it during the install when none is set): the tests start their own Orthanc on loopback,
# with a configuration in a temp dir and a free port.
#
# Prints the Orthanc binary path and the DICOMweb plugin path (a .so) on stdout (two lines).
# Exit status 0: both are installed. Non-zero, with a message on stderr: they are not.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/apt.sh"
say() { echo "orthanc: $*" >&2; }
die() { say "error: $*"; exit 1; }

orthanc_bin() {  # the Orthanc server binary
  local b
  for b in /usr/sbin/Orthanc /usr/bin/Orthanc; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  command -v Orthanc 2>/dev/null && return 0
  return 1
}
dicomweb_plugin() {  # the DICOMweb plugin's shared library
  local d f
  for d in /usr/share/orthanc/plugins /usr/lib/orthanc/plugins /usr/lib/x86_64-linux-gnu/orthanc \
           /usr/lib/aarch64-linux-gnu/orthanc /usr/lib/orthanc; do
    [ -d "$d" ] || continue
    for f in "$d"/libOrthancDicomWeb.so*; do
      [ -e "$f" ] && { readlink -f "$f"; return 0; }
    done
  done
  f="$(dpkg-query -L orthanc-dicomweb 2>/dev/null | grep -E 'libOrthancDicomWeb\.so' | head -1)"
  [ -n "$f" ] && [ -e "$f" ] && { readlink -f "$f"; return 0; }
  return 1
}
installed() { orthanc_bin >/dev/null && dicomweb_plugin >/dev/null; }
report() { orthanc_bin; dicomweb_plugin; }

if installed; then report; exit 0; fi

# no service starts during the install (no init system here, and the ports are the tests')
apt_install --no-services orthanc orthanc-dicomweb || exit 1
installed || die "still missing after the install: Orthanc ($(orthanc_bin || echo none)) or \
the DICOMweb plugin ($(dicomweb_plugin || echo none))"
report
