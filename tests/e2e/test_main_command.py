"""The README's main command (scripts/demo) end to end, on a tiny profile, as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_env(tmp_path):
    from support import free_port, free_port_base

    base = free_port_base(41000, 49000)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_TUMOR_", "AIRFLOW"))}
    env.update({"BRAIN_TUMOR_HOME": str(tmp_path / "home"),
                "BRAIN_TUMOR_EMBEDDED_S3_PORT": str(port),
                "BRAIN_TUMOR_EMBEDDED_S3_PORT_BASE": str(base),
                "BRAIN_TUMOR_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "BT_VENV": str(Path(sys.executable).parent.parent)})
    yield env
    subprocess.run([sys.executable, "-m", "brain_tumor.cli", "storage", "down"], env=env,
                    check=False, capture_output=True, timeout=60)


def _demo(env: dict, *args: str) -> dict:
    out = subprocess.run([str(REPO / "scripts" / "demo"), "--profile", "tiny", *args], env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    return out


def test_main_command_runs_end_to_end_and_again(demo_env):
    out = _demo(demo_env)
    assert "dataset version ds-" in out.stdout
    cli = [sys.executable, "-m", "brain_tumor.cli", "--json"]
    record = json.loads(subprocess.run([*cli, "datasets"], env=demo_env, capture_output=True,
                                       text=True, check=True).stdout)
    assert record["counts"]["patients"] == 12 and record["counts"]["quarantined"] == 1
    events = json.loads(subprocess.run([*cli, "registry", "list"], env=demo_env,
                                       capture_output=True, text=True, check=True).stdout)
    assert events["events"] and events["events"][-1]["action"] in ("promoted", "rejected")
    assert "last decision" in out.stdout
    # progress while the DAGs run: each task with its state and duration, the training epochs
    assert re.search(r"^  task train started$", out.stdout, re.M)
    assert re.search(r"^    classifier epoch 1/12: loss \d", out.stdout, re.M)
    assert re.search(r"^    segmenter epoch 1/12: loss \d", out.stdout, re.M)
    assert re.search(r"^  task train finished: success in \d", out.stdout, re.M)
    assert re.search(r"^  DAG retrain_nightly finished: success in \d", out.stdout, re.M)
    assert re.search(r"^  DAG batch_score finished: success in \d", out.stdout, re.M)
    status = json.loads(subprocess.run([*cli, "storage", "status"], env=demo_env,
                                       capture_output=True, text=True, check=True).stdout)
    assert status["running"]  # the embedded server keeps serving after the demo
    log = Path(demo_env["BRAIN_TUMOR_HOME"], "demo-airflow.log").read_text()
    assert "DagRun Finished" in log and "state=success" in log
    assert "dag_id=batch_score" in log
    champion = events["champion"]  # the tiny profile's relaxed gate promotes the first model
    assert champion and f"scored with     {champion}" in out.stdout  # the job ends with scoring
    results = Path(demo_env["BRAIN_TUMOR_HOME"], "results", champion)
    scored = sorted(p.parent.name for p in results.glob("*/overview.png"))
    assert len(scored) == 2 and all(name in out.stdout for name in scored)
    assert out.stdout.count("QUARANTINED unreadable") == 1
    assert all((results / sid / "summary.json").exists() for sid in scored)
    again = _demo(demo_env)  # re-running is safe: nothing new, the DAG ends early and green
    assert record["version"] in again.stdout
    log = Path(demo_env["BRAIN_TUMOR_HOME"], "demo-airflow.log").read_text()
    assert "no new exports" in log
    assert again.stdout.count("QUARANTINED unreadable") == 1  # nothing scored twice or lost
    assert sorted(p.parent.name for p in results.glob("*/overview.png")) == scored
