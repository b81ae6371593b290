"""The DAG files read only their parse-time settings: other BRAIN_TUMOR_* variables, unknown or
broken, never make a DAG disappear, and a bad parse-time value names its variable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brain_tumor.parse_settings import (
    FIELDS,
    load_parse_settings,
)
from brain_tumor.settings import Settings, SettingsError, load_settings

DAGS = Path(__file__).resolve().parents[2] / "dags"
RETRAIN = ("scoring_queue", "trainer", "train_pool", "train_timeout_minutes",
           "retrain_dagrun_timeout_minutes")
SCORING = ("scoring_schedule", "scoring_queue", "scoring_parallelism",
           "scoring_dagrun_timeout_minutes")


def parse(**variables: str) -> dict[str, Any]:
    """Parse dags/ in a fresh process with these variables set; DAG ids, errors, a few values."""
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "dags = bag.dags\n"
        "shape = {}\n"
        "if 'retrain_nightly' in dags:\n"
        "    train = dags['retrain_nightly'].get_task('train')\n"
        "    shape['train_timeout_s'] = train.execution_timeout.total_seconds()\n"
        "    shape['trainer'] = type(train).__name__\n"
        "if 'batch_score' in dags:\n"
        "    shape['parallelism'] = dags['batch_score'].get_task('score')"
        ".max_active_tis_per_dagrun\n"
        "print(json.dumps({'dags': sorted(dags), 'shape': shape,\n"
        "                  'errors': {k.rsplit('/', 1)[-1]: v for k, v in "
        "bag.import_errors.items()}}))\n"
    )
    env = {**os.environ, **variables}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variables", [
    {"BRAIN_TUMOR_NO_SUCH_SETTING": "1"},
    {"BRAIN_TUMOR_EPOCHS": "abc", "BRAIN_TUMOR_S3_MAX_ATTEMPTS": "-3"},
], ids=["unknown", "broken-unrelated"])
def test_other_variables_do_not_stop_the_dags_from_parsing(variables: dict[str, str]) -> None:
    # the tasks' full settings would refuse these
    with pytest.raises(SettingsError):
        load_settings(env=variables)

    result = parse(**variables)

    assert result["errors"] == {}
    assert result["dags"] == ["batch_score", "retrain_nightly"]


def test_parse_time_values_shape_the_dags() -> None:
    result = parse(BRAIN_TUMOR_TRAIN_TIMEOUT_MINUTES="90", BRAIN_TUMOR_SCORING_PARALLELISM="5",
                   BRAIN_TUMOR_TRAINER="docker")

    assert result["errors"] == {}
    assert result["shape"] == {"train_timeout_s": 5400.0, "trainer": "TrainerDockerOperator",
                               "parallelism": 5}


@pytest.mark.parametrize(("variable", "value", "broken", "intact"), [
    ("BRAIN_TUMOR_SCORING_SCHEDULE", "every ten minutes", "batch_score.py", "retrain_nightly"),
    ("BRAIN_TUMOR_SCORING_PARALLELISM", "-1", "batch_score.py", "retrain_nightly"),
    ("BRAIN_TUMOR_TRAINER", "k8s", "retrain_nightly.py", "batch_score"),
])
def test_a_bad_parse_time_value_fails_the_import_naming_the_variable(
        variable: str, value: str, broken: str, intact: str) -> None:
    result = parse(**{variable: value})

    assert list(result["errors"]) == [broken]
    assert f"{variable}: " in result["errors"][broken]
    assert f"received {value!r}" in result["errors"][broken]
    assert result["dags"] == [intact]  # a setting of the other DAG only breaks that one


def test_only_the_named_variables_are_read() -> None:
    env = {"BRAIN_TUMOR_SCORING_QUEUE": "ml", "BRAIN_TUMOR_SCORING_PARALLELISM": "oops",
           "BRAIN_TUMOR_NO_SUCH_SETTING": "1", "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY": "s3cr3t"}

    parsed = load_parse_settings(("scoring_queue", "train_pool"), env)

    assert (parsed.scoring_queue, parsed.train_pool) == ("ml", "brain_tumor_gpu")
    assert not hasattr(parsed, "scoring_parallelism")
    with pytest.raises(SettingsError) as caught:
        load_parse_settings(("scoring_queue", "scoring_parallelism"), env)
    assert "BRAIN_TUMOR_SCORING_PARALLELISM: " in str(caught.value)
    assert "'oops'" in str(caught.value) and "s3cr3t" not in str(caught.value)
    with pytest.raises(ValueError, match="not parse-time settings: \\['s3_bucket'\\]"):
        load_parse_settings(("s3_bucket",), env)


def test_the_config_file_counts_and_the_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "brain-tumor.toml"
    config.write_text('[brain_tumor]\nscoring_schedule = "@hourly"\nscoring_parallelism = 3\n'
                      'epochs = "not read here"\n')
    env = {"BRAIN_TUMOR_CONFIG": str(config), "BRAIN_TUMOR_SCORING_PARALLELISM": "4"}

    parsed = load_parse_settings(SCORING, env)

    assert (parsed.scoring_schedule, parsed.scoring_parallelism) == ("@hourly", 4)
    config.write_text('[brain_tumor]\nscoring_schedule = "hourly"\n')
    with pytest.raises(SettingsError, match=re.escape(f"scoring_schedule in {config}: not a")):
        load_parse_settings(SCORING, env)


def test_the_timeouts_have_defaults_and_the_run_outlasts_training() -> None:
    parsed = load_parse_settings(RETRAIN, {})
    assert (parsed.train_timeout_minutes, parsed.retrain_dagrun_timeout_minutes) == (720, 1320)
    assert load_parse_settings(SCORING, {}).scoring_dagrun_timeout_minutes == 180

    with pytest.raises(SettingsError, match="BRAIN_TUMOR_RETRAIN_DAGRUN_TIMEOUT_MINUTES must "
                                            "exceed BRAIN_TUMOR_TRAIN_TIMEOUT_MINUTES"):
        load_parse_settings(RETRAIN, {"BRAIN_TUMOR_TRAIN_TIMEOUT_MINUTES": "1440"})
    with pytest.raises(SettingsError, match="BRAIN_TUMOR_SCORING_DAGRUN_TIMEOUT_MINUTES: .* "
                                            "received '0'"):
        load_parse_settings(SCORING, {"BRAIN_TUMOR_SCORING_DAGRUN_TIMEOUT_MINUTES": "0"})


def test_shared_fields_are_the_settings_own_definitions() -> None:
    for name in set(FIELDS) & set(Settings.model_fields):
        annotation, info = FIELDS[name]
        assert info is Settings.model_fields[name] and annotation == info.annotation


