# Sourced by scripts/demo and scripts/test: a virtual environment with the project installed.
# Needs only Python 3.11 (python3.11 or python3 on PATH) and access to PyPI.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BT_VENV:-$REPO/.venv}"
EXTRAS="${BT_EXTRAS:-dev}"

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$(find_python)" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv
fi
# Reinstall only when the project's dependencies changed.
STAMP="$VENV/.brain-tumor-installed"
WANT="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16)-$EXTRAS"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "installing brain-tumor[$EXTRAS] into $VENV" >&2
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -e "$REPO[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
