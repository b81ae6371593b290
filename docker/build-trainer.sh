#!/usr/bin/env bash
# Build the trainer image from the current working tree.
#
#   docker/build-trainer.sh [--variant cpu|gpu] [--tag TAG] [--base IMAGE] [--network MODE]
#
#   cpu (default): makes sure of a Docker engine (scripts/docker-engine.sh, as root) and of the
#       local base image (docker/build-cpu-base.sh: no registry needed), then builds
#       brain-tumor-trainer:<git short commit> and brain-tumor-trainer:cpu-latest.
#   gpu: FROM NVIDIA's CUDA/cuDNN runtime image (needs a registry and PyPI), tags
#       brain-tumor-trainer:<git short commit>-gpu and brain-tumor-trainer:gpu-latest.
#
#   --tag TAG       the main tag instead of brain-tumor-trainer:<commit>[-gpu]
#   --base IMAGE    BASE_IMAGE build argument (cpu default: brain-tumor-trainer-base:cpu)
#   --network MODE  network of the build's RUN steps (cpu default: none; gpu: the engine's default;
#                   use host on an engine started with --bridge=none)
#   extra `--build-arg K=V` arguments are passed on to docker build.
#
# The build context is a temp dir with only what the package needs: pyproject.toml, README.md,
# brain_tumor/, the Dockerfile, docker/trainer_requirements.py and constraints.txt (the project
# venv's `pip freeze`, so the GPU image gets the versions the project was tested with). The project
# layer is rebuilt every time (BUILD_ID); the dependency layers are cached by the engine.
# Logs go to stderr; the last line on stdout is the main tag.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BT_VENV:-$REPO/.venv}"
IMAGE_REPO="${BT_TRAINER_REPO:-brain-tumor-trainer}"
VARIANT=cpu TAG="" BASE="" NETWORK="" EXTRA=()
say() { echo "build-trainer: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT="${2:?}"; shift 2 ;;
    --variant=*) VARIANT="${1#*=}"; shift ;;
    --tag) TAG="${2:?}"; shift 2 ;;
    --tag=*) TAG="${1#*=}"; shift ;;
    --base) BASE="${2:?}"; shift 2 ;;
    --base=*) BASE="${1#*=}"; shift ;;
    --network) NETWORK="${2:?}"; shift 2 ;;
    --network=*) NETWORK="${1#*=}"; shift ;;
    --build-arg) EXTRA+=(--build-arg "${2:?}"); shift 2 ;;
    -h|--help) usage ;;
    *) say "unknown argument $1"; usage ;;
  esac
done
case "$VARIANT" in cpu|gpu) ;; *) die "--variant must be cpu or gpu, got '$VARIANT'" ;; esac
t0=$SECONDS

# --- engine and base ---------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  "$REPO/scripts/docker-engine.sh" || die "no Docker engine"
fi
if [ "$VARIANT" = cpu ]; then
  if [ -z "$BASE" ]; then
    "$REPO/docker/build-cpu-base.sh" >/dev/null || die "docker/build-cpu-base.sh failed"
    BASE=brain-tumor-trainer-base:cpu
  fi
  NETWORK="${NETWORK:-none}"
  FETCH=0
else
  FETCH=1
fi

# --- versions and tags -------------------------------------------------------------------------
COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo nogit)"
FULL_COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
SUFFIX=""; [ "$VARIANT" = gpu ] && SUFFIX="-gpu"
TAG="${TAG:-$IMAGE_REPO:$COMMIT$SUFFIX}"
LATEST="$IMAGE_REPO:$VARIANT-latest"
FREEZE=""
[ -x "$VENV/bin/pip" ] && FREEZE="$("$VENV/bin/pip" freeze --exclude-editable 2>/dev/null | grep '==' || true)"
TF_VERSION="$(grep -iE '^tensorflow([-_]cpu)?==' <<<"$FREEZE" | head -n1 | cut -d= -f3 || true)"

# --- minimal build context -----------------------------------------------------------------------
CTX="$(mktemp -d "${TMPDIR:-/tmp}/brain-tumor-trainer-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
cp "$REPO/pyproject.toml" "$REPO/README.md" "$CTX/"
cp "$REPO/docker/trainer.Dockerfile" "$CTX/Dockerfile"
cp "$REPO/docker/trainer_requirements.py" "$CTX/"
tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' -c brain_tumor | tar -C "$CTX" -x
printf '%s\n' "$FREEZE" > "$CTX/constraints.txt"

# --- build ---------------------------------------------------------------------------------------
# Without the buildx plugin a recent docker CLI refuses BuildKit builds: use the classic builder.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
args=(--build-arg "VARIANT=$VARIANT" --build-arg "FETCH_IMAGENET=$FETCH"
      --build-arg "GIT_COMMIT=$FULL_COMMIT" --build-arg "BUILD_ID=$(date +%s%N)"
      --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
[ -n "$BASE" ] && args+=(--build-arg "BASE_IMAGE=$BASE")
[ -n "$TF_VERSION" ] && args+=(--build-arg "TF_VERSION=$TF_VERSION")
[ -n "$NETWORK" ] && args+=(--network "$NETWORK")
say "building $TAG (variant $VARIANT, base ${BASE:-Dockerfile default}, commit $COMMIT)"
tb=$SECONDS
docker build "${args[@]}" "${EXTRA[@]}" -t "$TAG" -t "$LATEST" "$CTX" >&2 \
  || die "docker build failed"
say "docker build: $((SECONDS - tb))s; total $((SECONDS - t0))s; tagged $TAG and $LATEST"
echo "$TAG"
