# shellcheck shell=bash
# Debian packages installed with apt, for the scripts that make sure of a tool (sourced, bash).
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
#   apt_install [--no-services] PACKAGE...
#
# apt_install returns 0 at once when every PACKAGE is installed (dpkg status "install ok
# installed"), whoever runs it. Otherwise, as root: takes the lock $APT_LOCK (one install at a time
# among these scripts), looks again, runs `apt-get update` only when the package lists have no
# candidate for a missing package, then `apt-get install -y -qq --no-install-recommends` of the
# missing ones; when that fails, it updates the lists and tries once more.
#   --no-services   the packages' own services do not start during the install (a policy-rc.d
#                   that refuses them, when none is set; removed afterwards)
# Not root: refuses, naming the missing packages and the command that installs them.
#
# Messages go to stderr as "<APT_WHO>: ..." (default: the calling script's name without .sh);
# nothing goes to stdout. Status 0: every PACKAGE is installed. 1: they are not (an error message
# says which and why). 2: a wrong call.
#
# Environment:
#   APT_LOCK           the lock file (default /var/lock/brain-tumor-apt.lock)
#   APT_LOCK_TIMEOUT   seconds to wait for it, and for dpkg's own lock (default 900)

_apt_say() { echo "${APT_WHO:-$(basename "$0" .sh)}: $*" >&2; }

# Every PACKAGE is installed.
apt_installed() {
  local p status
  for p in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" || return 1
    [ "$status" = "install ok installed" ] || return 1
  done
}

# Prints the PACKAGEs that are not installed, one a line.
apt_missing() {
  local p
  for p in "$@"; do
    apt_installed "$p" || echo "$p"
  done
}

# The package lists have an installation candidate for every PACKAGE.
_apt_have_candidates() {
  local p policy
  for p in "$@"; do
    policy="$(apt-cache policy "$p" 2>/dev/null || true)"
    [[ "$policy" == *"Candidate: "[0-9]* ]] || return 1
  done
}

# apt-get without prompts, waiting for dpkg's lock.
_apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT:-900}" \
    "$@" </dev/null
}

_apt_update() {  # PACKAGE... (named in the error)
  _apt_get update -qq >&2 && return 0
  _apt_say "error: apt-get update failed (needed to install $*)"
  return 1
}

_apt_install_now() {  # PACKAGE... (root, lock held)
  local t=$SECONDS
  if ! _apt_have_candidates "$@"; then
    _apt_say "apt-get update (package lists lack $*)"
    _apt_update "$@" || return 1
  fi
  _apt_say "apt-get install $*"
  if ! _apt_get install -y -qq --no-install-recommends "$@" >/dev/null; then
    _apt_say "install of $* failed; retrying after apt-get update"
    _apt_update "$@" || return 1
    if ! _apt_get install -y -qq --no-install-recommends "$@" >/dev/null; then
      _apt_say "error: apt-get install $* failed"
      return 1
    fi
  fi
  local still; still="$(apt_missing "$@" | tr '\n' ' ')"
  if [ -n "$still" ]; then
    _apt_say "error: still not installed after apt-get install: ${still% }"
    return 1
  fi
  _apt_say "installed $* in $((SECONDS - t))s"
}

# Installs the PACKAGEs that are not installed (see the header); idempotent.
apt_install() {
  local no_services=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --no-services) no_services=1; shift ;;
      --) shift; break ;;
      -*) _apt_say "error: apt_install: unknown option $1"; return 2 ;;
      *) break ;;
    esac
  done
  if [ $# -eq 0 ]; then
    _apt_say "error: apt_install: no package named"
    return 2
  fi
  local missing
  mapfile -t missing < <(apt_missing "$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    _apt_say "error: not installed: ${missing[*]}; this is not root (uid $(id -u)): run" \
      "\`sudo apt-get install -y --no-install-recommends ${missing[*]}\`, or run $0 as root"
    return 1
  fi

  local lock="${APT_LOCK:-/var/lock/brain-tumor-apt.lock}" wait="${APT_LOCK_TIMEOUT:-900}" fd
  if ! { mkdir -p "$(dirname "$lock")" && exec {fd}>"$lock"; }; then
    _apt_say "error: cannot open the lock $lock (to install ${missing[*]})"
    return 1
  fi
  local t=$SECONDS
  if ! flock -w "$wait" "$fd"; then
    exec {fd}>&-
    _apt_say "error: could not lock $lock within $((SECONDS - t))s to install ${missing[*]}" \
      "(another install holds it)"
    return 1
  fi
  mapfile -t missing < <(apt_missing "${missing[@]}")   # installed while we waited?
  local rc=0
  if [ "${#missing[@]}" -gt 0 ]; then
    local policy=/usr/sbin/policy-rc.d made_policy=0 exit_trap=""
    if [ "$no_services" = 1 ] && [ ! -e "$policy" ]; then
      exit_trap="$(trap -p EXIT)"
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
    fi
    # the lock stays ours: nothing the install starts inherits it
    _apt_install_now "${missing[@]}" {fd}>&- || rc=1
    if [ "$made_policy" = 1 ]; then
      rm -f "$policy"
      if [ -n "$exit_trap" ]; then eval "$exit_trap"; else trap - EXIT; fi
    fi
  fi
  exec {fd}>&-
  return "$rc"
}
